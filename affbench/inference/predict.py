"""Run saved models on new videos and images: one table row per frame or image.

Every frame goes through what ``prepare`` does to a dataset (:mod:`affbench.faces`): videos through
:class:`~affbench.faces.tracking.FaceTracker`, still images through the full MTCNN cascade and the same face
choice, then the similarity alignment onto the model's own template at its own crop size, and the
evaluation framing of training (:func:`affbench.data.augment.transform_crop`). Then the model, in batches.

Columns are named the way OpenFace users read them:

* ``AU12_c``: probability that AU12 is present (AU-detection tasks, in [0, 1]);
* ``AU12_r``: intensity on the FACS 0-5 scale, the model's regression output unclipped;
* ``expression``: the most probable class, and one probability column per class name;
* ``valence``, ``arousal``: the model's regression outputs (trained on [-1, 1]), unclipped.

A frame or image without a face keeps its row (``face_found`` false). In a video, such a frame is
cropped from the landmarks of its nearest frames with a face, interpolated in time, as ``prepare``
does (:func:`~affbench.faces.tracking.fill_gaps`): it gets predictions and its ``landmark_source``
says ``interpolated`` or ``carried``; with ``fill_gaps=False`` (and for still images) its
predictions stay empty. ``n_faces`` is how many faces the full detector saw (empty where only the
tracker ran), so that rows with a second face in view can be filtered.

Examples
--------
>>> import affbench
>>> model = affbench.load_model("model.pt")                # doctest: +SKIP
>>> table = model.predict_video("interview.mp4")           # doctest: +SKIP
>>> model.predict(aligned_crops)                            # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from affbench.errors import AffbenchError
from affbench.faces.alignment import align_face
from affbench.faces.detection import DetectorSettings, Face, FaceDetector, select_face, shared_detector
from affbench.faces.sources import FALLBACK_SOURCES
from affbench.faces.tracking import FaceTracker, TrackerSettings
from affbench.faces.tracking import fill_gaps as fill_tracking_gaps
from affbench.inference.bundle import ModelDescription, TaskOutput, build_model, read_model_file
from affbench.runtime.devices import resolve_device
from affbench.runtime.run_folder import WEIGHTS_FILE

if TYPE_CHECKING:
    import torch
    from tqdm.auto import tqdm

    from affbench.encoders.registry import EncoderSpec

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: The columns every table starts with, before the predictions.
BOX_COLUMNS = ("box_x1", "box_y1", "box_x2", "box_y2")
FACE_COLUMNS = ("source", "frame", "time", "face_found", "landmark_source", "n_faces", "det_score", *BOX_COLUMNS)


def task_columns(task: TaskOutput) -> list[str]:
    """The output columns of one task, OpenFace style (``au12`` -> ``AU12_c`` / ``AU12_r``)."""
    if task.kind in ("au-detection", "au-intensity"):
        suffix = "c" if task.kind == "au-detection" else "r"
        return [_au_name(name, suffix) for name in task.label_names]
    if task.kind == "expression":
        return ["expression", *task.label_names]
    return list(task.label_names)


def _au_name(label: str, suffix: str) -> str:
    match = re.fullmatch(r"au(\d+)", label, flags=re.IGNORECASE)
    return f"AU{int(match.group(1)):02d}_{suffix}" if match else f"{label}_{suffix}"


class LoadedModel:
    """A model file ready for inference (see :func:`load_model`).

    Attributes
    ----------
    description : ModelDescription
    name : str
        The model file's stem (or the description's name); prefixes columns that clash with those
        of another model predicting alongside.
    columns : list of str
        The prediction columns this model fills, in order.
    device : torch.device
    origin : Path or None
        The model file it was loaded from.
    """

    def __init__(self, description: ModelDescription, state_dict: Mapping[str, Any], *, device: str = "auto",
                 batch_size: int = 32, name: str | None = None, origin: str | os.PathLike | None = None):
        import torch

        self.device = torch.device(resolve_device(device))
        self.network = build_model(description, state_dict).to(self.device)
        self._describe(description, self.network.spec, batch_size=batch_size, name=name, origin=origin)

    def _describe(self, description: ModelDescription, spec: EncoderSpec, *, batch_size: int, name: str | None,
                  origin: str | os.PathLike | None) -> None:
        """What every runner of a model file shares: its description, spec, face framing and columns."""
        from affbench.data.augment import Augmentation

        self.description = description
        self.name = name or description.name
        self.origin = Path(origin) if origin is not None else None  # the model file, when loaded from one
        self.spec = spec
        self.template = description.template
        self.crop_size = description.crop_size
        self.batch_size = max(1, int(batch_size))
        self._framing = Augmentation(eval_crop=description.eval_crop)
        self._task_columns = _unique_task_columns(description.tasks)
        self.columns = [c for columns in self._task_columns for c in columns]

    def __repr__(self) -> str:
        tasks = ", ".join(f"{t.name} ({len(t.label_names)})" for t in self.description.tasks)
        return f"LoadedModel({self.name!r}: {self.description.encoder}, {tasks}, crop {self.crop_size}, {self.device})"

    # -- crops

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The aligned crop of ``face`` in ``image`` exactly as the training data was cut.

        Parameters
        ----------
        image : ndarray
            RGB uint8, (height, width, 3).
        face : Face
            A face of ``image`` as the model's detector finds it: :meth:`find_face` gives the one
            the model's face-choice rule picks (what ``predict_images`` uses), and
            ``model.detector.detect([image])[0]`` lists them all.

        Examples
        --------
        >>> face = model.find_face(image)                        # doctest: +SKIP
        >>> table = model.predict(model.align(image, face))      # doctest: +SKIP
        """
        return align_face(image, face.landmarks, self.crop_size, self.template)[0]

    @property
    def detector(self) -> FaceDetector:
        """The MTCNN detector with the settings the training faces were found with."""
        return shared_detector(self.description.detector_settings, str(self.device))

    def find_face(self, image: np.ndarray) -> Face | None:
        """The face of an RGB uint8 image that the model's face-choice rule picks; None without one."""
        faces = self.detector.detect([image])[0]
        return select_face(faces, self.description.face_selection, image_shape=image.shape)

    def _inputs(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        import torch

        from affbench.data.augment import transform_crop

        size = self.spec.input_size
        batch = np.empty((len(crops), 3, size, size), np.uint8)
        for i, crop in enumerate(crops):
            crop = np.asarray(crop)
            if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
                raise AffbenchError(f"predict takes RGB uint8 crops of shape (H, W, 3); crop {i} is "
                                    f"{crop.shape} {crop.dtype}.")
            framed, _ = transform_crop(crop, size, self._framing, train=False)
            batch[i] = framed.transpose(2, 0, 1)
        return torch.from_numpy(batch)

    def outputs(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """The raw model outputs (float32) for aligned crops, by output key."""
        keys = sorted({t.output_key for t in self.description.tasks})
        collected: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        for start in range(0, len(crops), self.batch_size):
            result = self._run(self._inputs(crops[start : start + self.batch_size]), keys)
            for key in keys:
                collected[key].append(result[key])
        return {k: np.concatenate(v) if v else np.zeros((0, self.spec.heads[k]), np.float32)
                for k, v in collected.items()}

    def _run(self, images: torch.Tensor, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The network's float32 outputs ``keys`` for a uint8 (B, 3, S, S) batch of framed crops."""
        import torch

        from affbench.data.loader import normalise

        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            x = normalise(images.to(self.device, non_blocking=True), self.spec.mean, self.spec.std)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                result = self.network(x)
            return {key: result[key].float().cpu().numpy() for key in keys}

    def predict_columns(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Prediction columns (see the module docstring) for aligned crops: ``{column: array}``."""
        from affbench.scoring.scorer import task_scores

        outputs = self.outputs(list(crops))
        columns: dict[str, np.ndarray] = {}
        for task, names in zip(self.description.tasks, self._task_columns):
            values = task_scores(task, self.spec, outputs[task.output_key])
            if task.kind == "expression":
                labels = np.asarray(task.label_names, dtype=object)
                columns[names[0]] = labels[values.argmax(axis=1)] if len(values) else labels[:0]
                names = names[1:]
            for j, column in enumerate(names):
                columns[column] = values[:, j].astype(np.float64)
        return columns

    def column_kinds(self) -> list[tuple[str, list[str]]]:
        """``(task kind, numeric columns)`` per task (expression: its class probabilities)."""
        return [(task.kind, names[1:] if task.kind == "expression" else list(names))
                for task, names in zip(self.description.tasks, self._task_columns)]

    # -- public API

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> pd.DataFrame:
        """Predictions for aligned face crops (RGB uint8, H x W x 3, cut like the training crops:
        :meth:`align`, ``crop_size`` square); one row per crop, the columns of :attr:`columns`."""
        crops = list(images) if not isinstance(images, np.ndarray) or images.ndim == 4 else [images]
        return pd.DataFrame(self.predict_columns(crops), columns=self.columns)

    def predict_video(self, path: str | os.PathLike, *, progress: bool = False, fill_gaps: bool = True) -> pd.DataFrame:
        """One row per frame of a video: face columns then predictions (as ``affbench predict``)."""
        return predict_table([self], [path], progress=progress, fill_gaps=fill_gaps).table

    def predict_images(self, paths: Sequence[str | os.PathLike], *, progress: bool = False) -> pd.DataFrame:
        """One row per image file (or image of a folder), faces detected and aligned as in training."""
        return predict_table([self], list(paths), progress=progress).table


def _unique_task_columns(tasks: Sequence[TaskOutput]) -> list[list[str]]:
    """Each task's columns; a task whose columns repeat an earlier task's gets its name as prefix."""
    seen: set[str] = set()
    result = []
    for task in tasks:
        names = task_columns(task)
        if seen & set(names):
            names = [f"{task.name}_{n}" for n in names]
        seen.update(names)
        result.append(names)
    return result


def load_model(path: str | os.PathLike, *, device: str = "auto", batch_size: int = 32) -> LoadedModel:
    """Load a model file written by ``affbench export-model``: a PyTorch model file
    (``torch.load(weights_only=True)``) or an ONNX model (``.onnx``, run with onnxruntime).

    Parameters
    ----------
    path : path-like
        The model file; a name ending in ``.onnx`` is read as ONNX (:mod:`affbench.inference.portable`).
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
    batch_size : int
        Crops per forward pass.

    Returns
    -------
    LoadedModel
        ``predict(crops)`` -> DataFrame for aligned crops; ``predict_video(path)`` and
        ``predict_images(paths)`` -> DataFrame with one row per frame or image.
    """
    if Path(path).suffix.lower() == ".onnx":
        from affbench.inference.portable import OnnxModel

        return OnnxModel(path, device=device, batch_size=batch_size)
    description, state = read_model_file(path)
    path = Path(path)
    # A job folder or its best.pt is named after the job, which is what tells two of them apart.
    name = path.name if path.is_dir() else path.parent.name if path.name == WEIGHTS_FILE else path.stem
    origin = path / WEIGHTS_FILE if path.is_dir() else path  # the file whose change makes finished rows stale
    return LoadedModel(description, state, device=device, batch_size=batch_size, name=name, origin=origin)


# ----------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Source:
    """One input: a video, or a list of images (a folder's, or one given image)."""

    kind: str  # "video" | "images"
    path: Path
    images: tuple[Path, ...] = ()


def collect_inputs(inputs: Sequence[str | os.PathLike], skipped: list[str] | None = None) -> list[Source]:
    """Expand the user's inputs (video files, image files, folders of them, searched recursively).

    Inside a folder, a symbolic link that leads out of it or loops is not followed; each is
    described in ``skipped`` when a list is given.
    """
    if not inputs:
        raise AffbenchError("Give at least one input: a video file, an image file or a folder of them.")
    sources: list[Source] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = _folder_files(path, skipped if skipped is not None else [])
            videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if not videos and not images:
                raise AffbenchError(f"Folder {path} holds no video ({', '.join(VIDEO_SUFFIXES)}) or image "
                                    f"({', '.join(IMAGE_SUFFIXES)}) files.")
            sources += [Source("video", v) for v in videos]
            if images:
                sources.append(Source("images", path, tuple(images)))
        elif path.is_file():
            suffix = path.suffix.lower()
            if suffix in VIDEO_SUFFIXES:
                sources.append(Source("video", path))
            elif suffix in IMAGE_SUFFIXES:
                sources.append(Source("images", path, (path,)))
            else:
                raise AffbenchError(f"{path} is neither a video ({', '.join(VIDEO_SUFFIXES)}) nor an image "
                                    f"({', '.join(IMAGE_SUFFIXES)}) by its suffix.")
        else:
            raise AffbenchError(f"Input {path} does not exist.")
    return sources


def _folder_files(folder: Path, skipped: list[str]) -> list[Path]:
    """The visible regular files under ``folder``, sorted, without following links out of it."""
    from affbench.runtime.files import link_problem

    files = []
    for top, folders, names in os.walk(folder):  # links to folders are listed, never entered
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in names:
            path = Path(top) / name
            if name.startswith("."):
                continue
            if problem := link_problem(path, folder):
                skipped.append(f"{path} is not read: it is {problem}")
            elif path.is_file():
                files.append(path)
        for name in folders:
            if problem := link_problem(Path(top) / name, folder):
                skipped.append(f"{Path(top) / name} is not read: it is {problem}")
    return sorted(files)


@dataclass
class FrameFace:
    """One frame or image and the face the pipeline chose in it (for a fallback crop, the face its
    neighbours in time give it: ``found`` is false)."""

    source: str
    frame: int | None
    time: float | None
    image: np.ndarray | None
    face: Face | None
    landmark_source: str
    n_faces: int | None = None

    @property
    def found(self) -> bool:
        """A face was found in this frame or image itself."""
        return self.face is not None and self.landmark_source not in FALLBACK_SOURCES


def video_faces(path: Path, tracker: FaceTracker, batch_size: int = 16, *, fill_gaps: bool = True) -> Iterator[FrameFace]:
    """Every frame of a video with its tracked face (as ``prepare`` tracks DISFA's videos), faceless
    frames filled from their neighbours unless ``fill_gaps`` is false; a
    :class:`~affbench.faces.video.VideoError` at the end when the video decoded fewer frames than it declares."""
    from affbench.faces.video import VideoReader

    tracker.reset()
    with VideoReader(path) as video:
        fps = video.info.fps
        stream = tracker.follow(video, batch_size)
        for index, frame, result in fill_tracking_gaps(stream) if fill_gaps else stream:
            yield FrameFace(str(path), index, index / fps if fps > 0 else None, frame, result.face, result.method,
                            result.n_faces)
        video.check_complete()


def image_faces(paths: Sequence[Path], detector: FaceDetector, selection: str, failures: list[dict[str, str]],
                chunk: int = 32) -> Iterator[FrameFace]:
    """Every image with its chosen face (full cascade, as ``prepare caer-s``); an unreadable image
    keeps its row without a face and is listed in ``failures``."""
    from affbench.shards.codec import read_image_file

    for start in range(0, len(paths), chunk):
        names = paths[start : start + chunk]
        images: list[np.ndarray | None] = []
        for path in names:
            try:
                images.append(read_image_file(path))
            except (OSError, ValueError) as exc:
                failures.append({"source": str(path), "reason": f"unreadable image ({exc})"})
                images.append(None)
        found, errors = detector.detect_each(images)
        failures.extend({"source": str(names[i]), "reason": f"face detection failed ({error})"} for i, error in errors.items())
        for i, (path, image) in enumerate(zip(names, images)):
            shape = image.shape if image is not None else None
            face = select_face(found.get(i, []), selection, image_shape=shape)
            n_faces = len(found[i]) if i in found else None  # None: unreadable, or the detector failed
            yield FrameFace(str(path), None, None, image, face, "detected" if face is not None else "none", n_faces)


# ----------------------------------------------------------------------------------------- tables


def output_columns(models: Sequence[LoadedModel]) -> list[dict[str, str]]:
    """Per model, its column -> the table's column: prefixed with the model's name where two models
    would otherwise write the same column."""
    counts: dict[str, int] = {}
    for model in models:
        for column in model.columns:
            counts[column] = counts.get(column, 0) + 1
    mappings = []
    for model, prefix in zip(models, _distinct_names([m.name for m in models])):
        clash = any(counts[c] > 1 for c in model.columns)
        mappings.append({c: f"{prefix}_{c}" if clash else c for c in model.columns})
    return mappings


def _distinct_names(names: Sequence[str]) -> list[str]:
    """Model names made distinct in the order given (``model``, ``model-2``...), so that two model
    files of one name (``a/model.pt``, ``b/model.pt``) never write the same column."""
    taken = set(names)
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            number = seen[name]
            while f"{name}-{number}" in taken:
                number += 1
            name = f"{name}-{number}"
            taken.add(name)
        result.append(name)
    return result


def _located(item: FrameFace) -> tuple[np.ndarray, Face]:
    """The image and face of a row that has a face (a face is only ever found in an image that was read)."""
    assert item.image is not None and item.face is not None
    return item.image, item.face


def _rows_of(
    batch: Sequence[FrameFace], models: Sequence[LoadedModel], mappings: Sequence[Mapping[str, str]]
) -> dict[str, Any]:
    n = len(batch)
    boxes = np.full((n, 4), np.nan)
    for i, item in enumerate(batch):
        if item.face is not None:
            boxes[i] = np.asarray(item.face.box[:4], dtype=np.float64)
    columns: dict[str, Any] = {
        "source": [b.source for b in batch],
        "frame": [b.frame for b in batch],
        "time": [b.time if b.time is not None else np.nan for b in batch],
        "face_found": [b.found for b in batch],
        "landmark_source": [b.landmark_source for b in batch],
        "n_faces": pd.array([b.n_faces for b in batch], dtype="Int16"),
        "det_score": [float(b.face.score) if b.found and b.face is not None else np.nan for b in batch],
        **{name: boxes[:, j].tolist() for j, name in enumerate(BOX_COLUMNS)},
    }
    with_face = [i for i, b in enumerate(batch) if b.face is not None]
    located = [_located(batch[i]) for i in with_face]
    for model, mapping in zip(models, mappings):
        crops = [model.align(image, face) for image, face in located]
        predicted = model.predict_columns(crops) if crops else {}
        for column, out in mapping.items():
            values: list[Any] = [None if column == "expression" else np.nan] * n
            for k, i in enumerate(with_face):
                values[i] = predicted[column][k]
            columns[out] = values
    return columns


@dataclass
class PredictResult:
    """The table, the inputs that could not be read whole, each video's rows, the numeric
    prediction columns by task kind (what :func:`write_plots` draws), and notes for the user."""

    table: pd.DataFrame
    failures: list[dict[str, str]]
    tables_by_video: dict[str, pd.DataFrame]
    groups: dict[str, list[list[str]]]
    notes: list[str] = field(default_factory=list)


def column_groups(models: Sequence[LoadedModel], mappings: Sequence[Mapping[str, str]]) -> dict[str, list[list[str]]]:
    """The table's numeric prediction columns, by task kind (what :func:`write_plots` draws).

    Parameters
    ----------
    models : sequence of LoadedModel
        The models of the table, in order.
    mappings : sequence of mappings
        Per model, its column -> the table's column (:func:`output_columns`).

    Returns
    -------
    dict[str, list[list[str]]]
        Task kind -> one list of table columns per task of that kind (an expression task's: its
        class probabilities).
    """
    groups: dict[str, list[list[str]]] = {}
    for model, mapping in zip(models, mappings):
        for kind, columns in model.column_kinds():
            groups.setdefault(kind, []).append([mapping[c] for c in columns])
    return groups


def write_plots(result: PredictResult, out: str | os.PathLike) -> list[Path]:
    """One timeline PNG per video, beside ``out``: ``<out stem>-<video stem>.png`` (``-2``,
    ``-3``... where that name is taken by another video's plot or by a file predict did not write,
    which is never replaced)."""
    from affbench.inference.timeline import is_timeline_plot, plot_timeline

    out = Path(out)
    written: list[Path] = []
    for source, table in result.tables_by_video.items():
        path = out.with_name(f"{out.stem}-{Path(source).stem}.png")
        k = 1
        while path in written or (path.exists() and not is_timeline_plot(path)):
            k += 1
            path = out.with_name(f"{out.stem}-{Path(source).stem}-{k}.png")
        written.append(plot_timeline(table, result.groups, path, title=source))
    return written


def predict_table(
    models: Sequence[LoadedModel],
    inputs: Sequence[str | os.PathLike],
    *,
    progress: bool = False,
    batch_size: int = 32,
    resume: str | os.PathLike | None = None,
    fill_gaps: bool = True,
) -> PredictResult:
    """Run every model on every frame or image of ``inputs``; one table, sources in input order.

    The face pipeline (detector, tracker, still-image face choice) is the first model's; each
    model aligns the chosen face onto its own template and crop size. Videos that cannot be read
    whole are listed in ``failures`` (their decoded frames keep their rows).

    ``resume``: a folder where each input's rows are saved once it is finished, and read back
    instead of redone by a later call with the same inputs and model files (an interrupted run).
    ``fill_gaps``: crop a video's faceless frames from their neighbours in time (see the module
    docstring) instead of leaving their predictions empty.
    """
    from tqdm.auto import tqdm

    from affbench.faces.video import VideoError, probe_video

    if not models:
        raise AffbenchError("Give at least one model file.")
    resume = Path(resume) if resume is not None else None
    skipped: list[str] = []
    sources = collect_inputs(inputs, skipped)
    first = models[0].description
    notes = skipped + [f"{m.name} was trained on faces found with other detector, tracker or face-choice settings than "
             f"{models[0].name}'s, which this run uses for all models"
             for m in models[1:] if _face_settings(m.description) != _face_settings(first)]
    detector = shared_detector(first.detector_settings, str(models[0].device))
    tracker = FaceTracker(detector, first.tracker_settings)
    mappings = output_columns(models)
    failures: list[dict[str, str]] = []
    parts: list[pd.DataFrame] = []
    by_video: dict[str, pd.DataFrame] = {}
    totals: list[int] = []
    for source in sources:
        if source.kind == "video":
            try:
                totals.append(probe_video(source.path).frames or 0)
            except VideoError as exc:
                totals.append(0)
                failures.append({"source": str(source.path), "reason": str(exc)})
        else:
            totals.append(len(source.images))
    broken = {f["source"] for f in failures}
    with tqdm(total=sum(totals), unit="frame", disable=not progress, dynamic_ncols=True, desc="predict") as bar:
        for source, total in zip(sources, totals):
            if str(source.path) in broken and source.kind == "video":
                continue
            key = _source_key(source, models, batch_size, fill_gaps)
            part = None if resume is None else resume / f"{key}.parquet"
            if part is not None and part.is_file():  # finished by an earlier, interrupted run
                table = pd.read_parquet(part)
                bar.update(total)
            else:
                stream = (video_faces(source.path, tracker, fill_gaps=fill_gaps) if source.kind == "video"
                          else image_faces(list(source.images), detector, first.face_selection, failures))
                before = len(failures)
                table = _source_table(stream, models, mappings, batch_size, bar, failures, str(source.path))
                if source.kind == "video" and table is None and len(failures) == before:
                    failures.append({"source": str(source.path), "reason": "the video has no frame that can be read"})
                if part is not None and table is not None and len(failures) == before:
                    _write_part(table, part)
            if table is not None:
                parts.append(table)
                if source.kind == "video":
                    by_video[str(source.path)] = table
    columns = list(FACE_COLUMNS) + [c for mapping in mappings for c in mapping.values()]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    table["frame"] = table["frame"].astype("Int64")
    table["n_faces"] = table["n_faces"].astype("Int16")
    table["face_found"] = table["face_found"].astype(bool)
    return PredictResult(table[columns], failures, by_video, column_groups(models, mappings), notes)


def _face_settings(description: ModelDescription) -> tuple[DetectorSettings, TrackerSettings, str]:
    detector = replace(description.detector_settings, batch_size=0)  # the batch size changes no face
    return detector, description.tracker_settings, description.face_selection


def _source_table(
    stream: Iterable[FrameFace],
    models: Sequence[LoadedModel],
    mappings: Sequence[Mapping[str, str]],
    batch_size: int,
    bar: tqdm,
    failures: list[dict[str, str]],
    name: str,
) -> pd.DataFrame | None:
    from affbench.faces.video import VideoError

    chunks: list[pd.DataFrame] = []
    batch: list[FrameFace] = []
    try:
        for item in stream:
            batch.append(item)
            if len(batch) == batch_size:
                chunks.append(pd.DataFrame(_rows_of(batch, models, mappings)))
                bar.update(len(batch))
                batch = []
    except VideoError as exc:
        failures.append({"source": name, "reason": str(exc)})
    if batch:
        chunks.append(pd.DataFrame(_rows_of(batch, models, mappings)))
        bar.update(len(batch))
    return pd.concat(chunks, ignore_index=True) if chunks else None


def _source_key(source: Source, models: Sequence[LoadedModel], batch_size: int, fill_gaps: bool) -> str:
    """Names a source's finished rows: the input files and model files as they are on disk now, and
    the options that change the rows."""
    import hashlib
    import json

    def stamp(path: Path) -> list[str | int]:
        info = path.stat()
        return [str(path.resolve()), info.st_size, info.st_mtime_ns]

    files = [source.path] if source.kind == "video" else list(source.images)
    key = {"kind": source.kind, "files": [stamp(p) for p in files], "batch": batch_size, "fill_gaps": fill_gaps,
           "models": [[m.name, *(stamp(m.origin) if m.origin else [id(m)])] for m in models]}
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]


def _write_part(table: pd.DataFrame, path: Path) -> None:
    from affbench.runtime.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        table.assign(frame=table["frame"].astype("Int64")).to_parquet(tmp, index=False)


def resume_folder(out: str | os.PathLike) -> Path:
    """Where ``affbench predict --out FILE`` keeps each finished input's rows until FILE is written."""
    out = Path(out)
    return out.with_name(f".{out.name}.parts")


def write_table(table: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write a predictions table as CSV or Parquet (by suffix), atomically."""
    from affbench.runtime.files import atomic_write

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise AffbenchError(f"{out} must end in .csv or .parquet (the format follows the suffix).")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            table.to_parquet(tmp, index=False)
    return out


def check_output_path(out: str | os.PathLike, *, force: bool = False) -> Path:
    """The output path, when its suffix names a format and writing it replaces nothing but an
    earlier predictions table (or anything, with ``force``); checked before any work starts."""
    from affbench.runtime.outputs import check_output

    out = Path(out)
    if out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise AffbenchError(f"--out {out} must end in .csv or .parquet (the format follows the suffix).")
    return check_output(out, is_predictions_table, what="affbench predictions table", force=force)


def is_predictions_table(path: Path) -> bool:
    """Whether ``path`` is a table that ``affbench predict`` wrote: its first columns are :data:`FACE_COLUMNS`."""
    from affbench.runtime.outputs import first_line_starts

    if path.suffix.lower() == ".csv":
        return first_line_starts(path, (",".join(FACE_COLUMNS) + ",",))
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except pa.ArrowException:
        return False
    return tuple(names[: len(FACE_COLUMNS)]) == FACE_COLUMNS


@dataclass
class PredictRun:
    """What ``affbench predict`` did: the models, the result, the file written and its summary."""

    models: list[LoadedModel]
    result: PredictResult
    out: Path
    plots: list[Path] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: rows, faces (and fallback crops) and sources written."""
        table = self.result.table
        filled = int(table["landmark_source"].isin(FALLBACK_SOURCES).sum())
        more = f" ({filled} more cropped from their neighbours)" if filled else ""
        return (f"{len(table)} row(s), {int(table['face_found'].sum())} with a face{more}, from "
                f"{table['source'].nunique()} source(s) written to {self.out}")

    @property
    def exit_code(self) -> int:
        """The command's exit status: 1 where an input could not be read whole, else 0."""
        return 1 if self.result.failures else 0


def predict_to_file(
    model_paths: Sequence[str | os.PathLike],
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    device: str = "auto",
    batch_size: int = 32,
    plot: bool = False,
    fill_gaps: bool = True,
    progress: bool = False,
    on_model: Callable[[LoadedModel], None] | None = None,
    force: bool = False,
) -> PredictRun:
    """``affbench predict``: run every model on every input and write one table to ``out``.

    Everything a user can get wrong (the output path, an input, a missing matplotlib for ``plot``)
    is said before any model loads. Finished inputs are kept beside ``out`` until the table is
    written, so an interrupted run resumes without redoing them.

    Examples
    --------
    >>> run = predict_to_file(["model.pt"], ["interview.mp4"], "predictions.csv")  # doctest: +SKIP
    >>> print(run.summary)                                                        # doctest: +SKIP
    """
    from affbench.runtime.outputs import writing

    check_output_path(out, force=force)
    collect_inputs(inputs)
    if plot:
        from affbench.reporting.plots import require_pyplot

        require_pyplot()
    with writing(out):
        return _predict_to_file(model_paths, inputs, Path(out), device=device, batch_size=batch_size, plot=plot,
                                fill_gaps=fill_gaps, progress=progress, on_model=on_model)


def _predict_to_file(model_paths: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike], out: Path, *,
                     device: str, batch_size: int, plot: bool, fill_gaps: bool, progress: bool,
                     on_model: Callable[[LoadedModel], None] | None) -> PredictRun:
    """:func:`predict_to_file` once the output is checked and locked."""
    import shutil

    models = []
    for path in model_paths:
        models.append(load_model(path, device=device, batch_size=batch_size))
        if on_model is not None:
            on_model(models[-1])
    parts = resume_folder(out)
    result = predict_table(models, inputs, progress=progress, batch_size=batch_size, resume=parts,
                           fill_gaps=fill_gaps)
    written = write_table(result.table, out)
    shutil.rmtree(parts, ignore_errors=True)
    run = PredictRun(models=models, result=result, out=written)
    if plot:
        run.plots = write_plots(result, written)
    return run
