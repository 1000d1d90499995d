"""Self-describing model files: the weights plus everything inference needs to use them.

A ``best.pt`` alone says neither which labels its outputs are nor how its input faces were cut. A
*model file* (``affbench export-model``) holds one dictionary of plain types and tensors, readable
with ``torch.load(path, weights_only=True)``::

    {"affbench_model": <description>, "state_dict": {name: tensor}}

The description (:class:`ModelDescription`, plain JSON types) records the encoder and its
architecture options, each task with its label names and output kind, the detector, tracker and
alignment template plus crop size the training faces were cut with, the evaluation framing
(``eval_crop``), the initialisation and the test metrics of the run. The harness writes it beside
``best.pt`` as ``model.json`` when a job finishes, so that a job folder is self-describing too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from affbench.errors import AffbenchError
from affbench.faces.alignment import AlignmentTemplate
from affbench.faces.detection import DetectorSettings
from affbench.faces.tracking import TrackerSettings
from affbench.runtime.files import json_default
from affbench.runtime.run_folder import DESCRIPTION_FILE, WEIGHTS_FILE, JobFolder

if TYPE_CHECKING:
    from affbench.encoders.registry import Encoder, EncoderSpec
    from affbench.scoring.protocols import TaskSpec

#: The face-pipeline settings a description records as plain dicts.
_Settings = TypeVar("_Settings", DetectorSettings, TrackerSettings)

FORMAT = "affbench-model"
FORMAT_VERSION = 1
#: The still-image face choice of the image pipelines (CAER-S), used where a model records none.
DEFAULT_FACE_SELECTION = "largest"
#: The face choices :func:`affbench.faces.detection.select_face` knows.
FACE_SELECTIONS = ("largest", "prob")


def face_selection_of(recorded: Any) -> str:
    """The face-choice rule of a manifest's ``select`` parameter or a description's
    ``face_selection``: a rule name, or the manifest's ``{"strategy": name, ...}``.

    Model files written before this was read correctly hold that dictionary as its Python text;
    :func:`ast.literal_eval` reads it back (it evaluates literals only, never code).
    """
    import ast

    if isinstance(recorded, str) and recorded.startswith("{"):
        try:
            recorded = ast.literal_eval(recorded)
        except (ValueError, SyntaxError):
            pass
    if isinstance(recorded, Mapping):
        recorded = recorded.get("strategy")
    if recorded is None or recorded == "":
        return DEFAULT_FACE_SELECTION
    if recorded not in FACE_SELECTIONS:
        raise AffbenchError(f"The face selection {recorded!r} is not one affbench knows ({', '.join(FACE_SELECTIONS)}).")
    return str(recorded)


@dataclass(frozen=True)
class TaskOutput:
    """What one task's slice of the model output means (the fields of a protocol's TaskSpec that
    inference needs; :func:`affbench.scoring.scorer.task_scores` reads exactly these)."""

    name: str
    kind: str  # au-detection | au-intensity | expression | va
    output_key: str  # au | expression | va
    label_names: tuple[str, ...]
    binarize_at: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))

    @classmethod
    def from_spec(cls, spec: TaskSpec) -> TaskOutput:
        """The inference fields of a protocol's task."""
        return cls(spec.name, spec.kind, spec.output_key, tuple(spec.label_names), spec.binarize_at)


@dataclass(frozen=True)
class ModelDescription:
    """Everything that turns a state dict back into a usable model.

    Attributes
    ----------
    name : str
        A short name for tables and column prefixes (the job key for exported jobs).
    encoder : str
        Registry name; ``options`` are the architecture options (``create_encoder(encoder,
        **options)`` rebuilds the network without weights).
    tasks : tuple of TaskOutput
    crop_size : int
        Side of the aligned face crop the model was trained on (before ``input_size`` framing).
    alignment : dict
        :meth:`AlignmentTemplate.describe` of the training crops (read back with
        :meth:`AlignmentTemplate.from_description`).
    eval_crop : float
        Centre fraction of the crop the evaluation framing keeps (``Augmentation.eval_crop``).
    detector, tracker : dict
        :class:`DetectorSettings` / :class:`TrackerSettings` fields of the data it was trained on.
    face_selection : str
        Which face a still image keeps when it shows several (``largest`` or ``prob``).
    encoder_spec : dict
        Input size, normalisation, heads and AU output kind, for readers without affbench.
    initialisation, metrics, trained_on, notes
        Provenance: how the weights started, test metrics per task, the job and data, caveats.
    """

    name: str
    encoder: str
    options: dict[str, Any]
    tasks: tuple[TaskOutput, ...]
    crop_size: int
    alignment: dict[str, Any]
    eval_crop: float = 1.0
    detector: dict[str, Any] = field(default_factory=dict)
    tracker: dict[str, Any] = field(default_factory=dict)
    face_selection: str = DEFAULT_FACE_SELECTION
    encoder_spec: dict[str, Any] = field(default_factory=dict)
    initialisation: str = "unknown"
    metrics: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def template(self) -> AlignmentTemplate:
        """The alignment template of the training crops."""
        return AlignmentTemplate.from_description(self.alignment)

    @property
    def detector_settings(self) -> DetectorSettings:
        """The detector settings of the training data (defaults for the fields it does not record)."""
        return _settings(DetectorSettings, self.detector)

    @property
    def tracker_settings(self) -> TrackerSettings:
        """The tracker settings of the training data (defaults for the fields it does not record)."""
        return _settings(TrackerSettings, self.tracker)

    def to_dict(self) -> dict[str, Any]:
        """The description as plain JSON types, with the format and its version."""
        data = asdict(self)
        data["tasks"] = [asdict(t) for t in self.tasks]
        # Through JSON so that only plain types remain (torch.load(weights_only=True) reads them).
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                **json.loads(json.dumps(data, default=json_default))}

    def summary_lines(self) -> list[str]:
        """What the model is, one line per fact: encoder and input, tasks and labels, test metrics, notes."""
        lines = [f"model      {self.name}: {self.encoder} "
                 f"(input {self.encoder_spec.get('input_size')}, crop {self.crop_size})"]
        for task in self.tasks:
            lines.append(f"task       {task.name} ({task.kind}): {', '.join(task.label_names)}")
        for task_name, values in self.metrics.items():
            shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items() if isinstance(v, float) and "/" not in k)
            lines.append(f"test       {task_name}: {shown}")
        lines += [f"note       {note}" for note in self.notes]
        return lines

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the model file") -> ModelDescription:
        """The description :meth:`to_dict` wrote; ``where`` names its file in the errors.

        Parameters
        ----------
        data : mapping
            The dictionary read from a model file or ``model.json``.
        where : str
            What the errors call its file.

        Returns
        -------
        ModelDescription

        Raises
        ------
        AffbenchError
            When ``data`` is no affbench model description, a newer format's, or lacks a field.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise AffbenchError(f"{where} is not an affbench model description (no format {FORMAT!r}).")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise AffbenchError(f"{where} was written by a newer affbench (model format "
                                f"{data['format_version']}); upgrade affbench to read it.")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = sorted({"name", "encoder", "options", "tasks", "crop_size", "alignment"} - set(values))
        if missing:
            raise AffbenchError(f"{where} lacks {', '.join(missing)} in its model description.")
        try:
            values["tasks"] = tuple(TaskOutput(**t) for t in values["tasks"])
        except TypeError as exc:
            raise AffbenchError(f"{where} has a malformed task description ({exc}).") from None
        values["notes"] = tuple(values.get("notes", ()))
        values["face_selection"] = face_selection_of(values.get("face_selection"))
        return cls(**values)


def _settings(cls: type[_Settings], recorded: Mapping[str, Any]) -> _Settings:
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items() if k in names}
    return cls(**values)


# ----------------------------------------------------------------------------------------- describing


def describe_trained_model(
    name: str,
    encoder_spec: EncoderSpec,
    task_specs: Sequence[TaskSpec],
    preprocessing: Mapping[str, Any],
    *,
    eval_crop: float = 1.0,
    metrics: Mapping[str, Any] | None = None,
    trained_on: Mapping[str, Any] | None = None,
) -> ModelDescription:
    """The description of a model trained on a prepared dataset.

    ``preprocessing`` is the dataset manifest's ``parameters``: its alignment template and crop
    size, detector and tracker settings are what the model's inputs looked like. A dataset whose
    faces affbench did not align (Aff-Wild2's challenge crops) records no template: the default one
    is used at its crop size, and a note says so.
    """
    from affbench.data.prepared import alignment_from_parameters

    notes: list[str] = []
    found = alignment_from_parameters(preprocessing)
    if found is None:
        size = int(preprocessing.get("size") or preprocessing.get("crop", {}).get("size") or encoder_spec.input_size)
        template = AlignmentTemplate()
        notes.append("the training faces were not aligned by affbench (the dataset's own crops); predict aligns "
                     "new faces with affbench's default template at the same crop size, which may frame them "
                     "differently")
    else:
        template, size = found
    detector = dict(preprocessing.get("detector") or asdict(DetectorSettings()))
    tracker = dict(preprocessing.get("tracker") or asdict(TrackerSettings()))
    return ModelDescription(
        name=name,
        encoder=encoder_spec.name,
        options=dict(encoder_spec.options),
        tasks=tuple(TaskOutput.from_spec(s) for s in task_specs),
        crop_size=int(size),
        alignment=template.describe(int(size)),
        eval_crop=float(eval_crop),
        detector={k: v for k, v in detector.items() if k in {f.name for f in fields(DetectorSettings)}},
        tracker={k: v for k, v in tracker.items() if k in {f.name for f in fields(TrackerSettings)}},
        face_selection=face_selection_of(preprocessing.get("select")),
        encoder_spec=spec_summary(encoder_spec),
        initialisation=encoder_spec.init,
        metrics=dict(metrics or {}),
        trained_on=dict(trained_on or {}),
        notes=tuple(notes),
    )


def spec_summary(spec: EncoderSpec) -> dict[str, Any]:
    """What a model file records of an encoder spec, in plain types, for readers without affbench.

    Parameters
    ----------
    spec : EncoderSpec
        The spec of the built encoder.

    Returns
    -------
    dict
        ``family``, ``input_size``, ``mean``, ``std``, ``heads``, ``au_output`` and ``aus``.
    """
    return {"family": spec.family, "input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
            "heads": dict(spec.heads), "au_output": spec.au_output,
            "aus": list(spec.aus) if spec.aus is not None else None}


# ----------------------------------------------------------------------------------------- files


def save_model_file(path: str | os.PathLike, description: ModelDescription, state_dict: Mapping[str, Any]) -> Path:
    """Write a model file atomically (a killed export never leaves a half file)."""
    from affbench.training.checkpoints import save_checkpoint

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_checkpoint({"affbench_model": description.to_dict(), "state_dict": state}, path)
    return path


def read_model_file(path: str | os.PathLike) -> tuple[ModelDescription, dict[str, Any]]:
    """The description and weights of a model, read with ``weights_only=True`` (no code runs).

    ``path`` is a model file from ``export-model``, a finished job folder (``RUNDIR/jobs/<job>``,
    as run-benchmark leaves it) or that folder's ``best.pt``: the last two are read through the
    job's ``model.json``.
    """
    from affbench.training.checkpoints import DamagedCheckpointError, load_training_checkpoint

    path = Path(path)
    if path.is_dir():
        return read_job(path)
    if not path.exists():
        raise AffbenchError(f"Model file {path} does not exist.")
    if not path.is_file():
        raise AffbenchError(f"Model {path} is neither a model file nor a job folder.")
    if path.name == WEIGHTS_FILE and (path.parent / DESCRIPTION_FILE).is_file():
        return read_job(path.parent)
    try:
        blob = load_training_checkpoint(path)
    except DamagedCheckpointError as exc:
        raise AffbenchError(f"{path} is not an affbench model file: PyTorch cannot read it as plain types and "
                            f"tensors ({exc.reason}).") from None
    if not isinstance(blob, Mapping) or "affbench_model" not in blob or "state_dict" not in blob:
        hint = " (it looks like a bare checkpoint: wrap it with affbench export-model)" if isinstance(blob, Mapping) else ""
        raise AffbenchError(f"{path} is not an affbench model file{hint}.")
    return ModelDescription.from_dict(blob["affbench_model"], where=str(path)), dict(blob["state_dict"])


def read_job(job_dir: str | os.PathLike) -> tuple[ModelDescription, dict[str, Any]]:
    """A finished job folder's ``model.json`` and ``best.pt``, read as plain types and tensors."""
    from affbench.training.checkpoints import load_model_state

    job_dir = Path(job_dir)
    if not job_dir.is_dir():
        raise AffbenchError(f"Job folder {job_dir} does not exist (expected RUNDIR/jobs/<job>).")
    described, weights = job_dir / DESCRIPTION_FILE, job_dir / WEIGHTS_FILE
    if not described.is_file():
        done = JobFolder(job_dir).done
        why = ("it has not finished training" if not done.is_file()
               else "it was trained by an affbench that did not record model descriptions; re-run it")
        if job_dir.name.startswith("eval-"):
            why = "it is an evaluation-only job; use the job whose model it evaluates"
        raise AffbenchError(f"{job_dir} is not a finished job folder with a model: it holds no "
                            f"{DESCRIPTION_FILE} ({why}).")
    if not weights.is_file():
        raise AffbenchError(f"{job_dir} holds no {WEIGHTS_FILE}: its weights were not kept "
                            "(set keep_weights = true in the suite's [training] and re-run that job).")
    try:
        data = json.loads(described.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AffbenchError(f"{described} is damaged (not JSON); run the job's run-benchmark command again.") from None
    description = ModelDescription.from_dict(data, where=str(described))
    return description, load_model_state(weights)  # tensors only; damage is one sentence


def build_model(description: ModelDescription, state_dict: Mapping[str, Any]) -> Encoder:
    """The encoder of a description with these weights loaded (strictly: every key must fit)."""
    from affbench.encoders.registry import create_encoder

    model = create_encoder(description.encoder, **description.options)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AffbenchError(f"The weights of model {description.name!r} do not fit encoder "
                            f"{description.encoder!r} with its recorded options ({first}).") from None
    return model.eval()


# ----------------------------------------------------------------------------------------- jobs


def write_job_description(job_dir: str | os.PathLike, description: ModelDescription) -> Path:
    """``model.json`` beside a job's ``best.pt`` (what :func:`export_job` reads)."""
    from affbench.runtime.files import write_text_atomic

    path = Path(job_dir) / DESCRIPTION_FILE
    write_text_atomic(path, json.dumps(description.to_dict(), indent=2) + "\n")
    return path


def export_job(job_dir: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, ModelDescription]:
    """Combine a finished job's ``model.json`` and ``best.pt`` into one model file at ``out``."""
    description, state = job_model(job_dir)
    return save_model_file(out, description, state), description


def job_model(job_dir: str | os.PathLike) -> tuple[ModelDescription, dict[str, Any]]:
    """A finished job's description (with its ``best.pt``'s SHA-256) and weights, checked to fit."""
    description, state = read_job(job_dir)
    weights = Path(job_dir) / WEIGHTS_FILE
    build_model(description, state)  # refuse to write a file whose weights do not fit
    return replace(description, trained_on={**description.trained_on, **_file_provenance(weights)}), state


# ----------------------------------------------------------------------------------------- published


def wrap_checkpoint(
    encoder: str,
    pretrained: str | os.PathLike,
    labels: Sequence[str],
    *,
    options: Mapping[str, Any] | None = None,
    crop_size: int = 256,
    eval_crop: float = 1.0,
    template: AlignmentTemplate | None = None,
) -> tuple[ModelDescription, dict[str, Any]]:
    """Describe a published checkpoint that loads through ``pretrained=PATH`` once the user names
    its outputs.

    ``labels`` name the outputs of the encoder's first head among ``au`` (AU names such as
    ``au1``; presence, or intensities where the encoder outputs intensities), ``expression``
    (class names) and ``va`` (``valence,arousal``). The faces are cut with affbench's alignment
    (``template``, default the prepare pipelines'); the description notes that the checkpoint's
    own training crops may have been cut otherwise. ``trained_on`` records the file and its SHA-256.
    """
    from affbench.encoders.registry import create_encoder

    model = create_encoder(encoder, **dict(options or {}), pretrained=str(pretrained))
    spec = model.spec
    key = next((k for k in ("au", "expression", "va") if k in spec.heads), None)
    if key is None:
        raise AffbenchError(f"Encoder {encoder!r} has no au, expression or va output to name.")
    labels = [str(n).strip() for n in labels if str(n).strip()]
    if len(labels) != spec.heads[key]:
        raise AffbenchError(f"Encoder {encoder!r} outputs {spec.heads[key]} {key} values, but {len(labels)} "
                            f"label(s) were given ({', '.join(labels)}); name each output once, in order.")
    if key == "au":
        kind = "au-intensity" if spec.au_output == "intensities" else "au-detection"
    else:
        kind = "expression" if key == "expression" else "va"
    task = TaskOutput(name=kind, kind=kind, output_key=key, label_names=tuple(labels),
                      binarize_at=1.0 if kind == "au-detection" and spec.au_output == "intensities" else None)
    description = _wrapped_description(
        Path(pretrained).stem, spec, (task,), crop_size, eval_crop, template, _file_provenance(pretrained),
        ("wrapped from a published checkpoint: faces are aligned with affbench's template at the crop size "
         "given, which may differ from how the checkpoint's training faces were cut",),
    )
    return description, model.state_dict()


def wrap_published(tag: str, pretrained: str | os.PathLike) -> tuple[ModelDescription, dict[str, Any]]:
    """Describe a released checkpoint by its tag (``affbench list models``): encoder, options, labels,
    crop and framing come from the tag, and the file must have the tag's layout.

    Parameters
    ----------
    tag : str
        A published model's tag, e.g. ``megraph-au/resnet50-disfa-fold1``.
    pretrained : path
        The user's copy of the released file.

    Returns
    -------
    (ModelDescription, dict)
        ``trained_on`` records the tag, the dataset, protocol, fold and training subjects, the
        numbers the paper reports and the file's SHA-256.

    Raises
    ------
    AffbenchError
        For an unknown tag, a file of another layout, or a tag that has no outputs of its own.
    """
    from affbench.encoders.published import get_published
    from affbench.encoders.registry import create_encoder

    published = get_published(tag)
    if not published.tasks:
        raise AffbenchError(f"{tag} has no outputs of its own to predict with ({published.notes[0] if published.notes else ''}); "
                            "train a model from it and export that job.")
    model = create_encoder(tag, pretrained=str(pretrained))
    tasks = tuple(TaskOutput(t.name, t.kind, t.output_key, t.label_names) for t in published.tasks)
    for task in tasks:
        if model.spec.heads.get(task.output_key) != len(task.label_names):
            raise AffbenchError(f"{pretrained} gives {model.spec.heads.get(task.output_key)} {task.output_key} outputs, "
                                f"where {tag} names {len(task.label_names)}; is it the file of another release?")
    reported = [{"task": n.task, "metric": n.metric, "value": n.value, "labels": dict(n.labels), "scale": n.scale,
                 "source": n.source} for n in published.reported]
    trained_on = {**_file_provenance(pretrained), "published": tag, "dataset": published.dataset,
                  "protocol": published.protocol, "fold": published.fold,
                  "trained_subjects": list(published.trained_subjects), "citation": published.citation,
                  "reported": reported}
    description = _wrapped_description(tag, model.spec, tasks, published.crop_size, published.eval_crop, None,
                                       trained_on, ("faces are aligned with affbench's template; the reference "
                                                    "may have cut its training faces otherwise", *published.notes))
    return description, model.state_dict()


def _file_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint file a model file was made from: its path and SHA-256."""
    from affbench.runtime.files import file_sha256

    return {"checkpoint": str(path), "checkpoint_sha256": file_sha256(path)}


def _wrapped_description(name: str, spec: EncoderSpec, tasks: tuple[TaskOutput, ...], crop_size: int,
                         eval_crop: float, template: AlignmentTemplate | None, trained_on: Mapping[str, Any],
                         notes: Sequence[str]) -> ModelDescription:
    template = template or AlignmentTemplate()
    return ModelDescription(
        name=name, encoder=spec.name, options=dict(spec.options), tasks=tasks,
        crop_size=int(crop_size), alignment=template.describe(int(crop_size)), eval_crop=float(eval_crop),
        detector=asdict(DetectorSettings()), tracker=asdict(TrackerSettings()), encoder_spec=spec_summary(spec),
        initialisation=spec.init, trained_on=dict(trained_on), notes=tuple(notes),
    )


def export_model(
    out: str | os.PathLike,
    job_dir: str | os.PathLike | None = None,
    *,
    encoder: str | None = None,
    published: str | None = None,
    pretrained: str | os.PathLike | None = None,
    labels: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    crop_size: int = 256,
    eval_crop: float = 1.0,
    format: str = "pt",
    force: bool = False,
) -> tuple[Path, ModelDescription]:
    """``affbench export-model``: a finished job's model (``job_dir``), a released checkpoint by its tag
    (``published`` with ``pretrained``), or any checkpoint the encoder reads (``encoder`` with
    ``pretrained`` and ``labels``), as one self-describing model file at ``out``: a PyTorch model
    file (``format="pt"``) or an ONNX model with the description in its metadata (``format="onnx"``,
    :mod:`affbench.inference.portable`). An existing ``out`` is replaced only when it is an earlier
    model file of that format, or with ``force``.

    Examples
    --------
    >>> path, description = export_model("model.pt", "runs/demo/jobs/caer-s__expression__emotiram-f__fold1")  # doctest: +SKIP
    >>> path, description = export_model("m.pt", published="megraph-au/resnet50-disfa-fold1",
    ...                                  pretrained="MEFARG_resnet50_DISFA_fold1.pth")  # doctest: +SKIP
    """
    from affbench.inference.portable import is_onnx_model_file
    from affbench.runtime.outputs import check_output, writing

    if format not in ("pt", "onnx"):
        raise AffbenchError(f"--format must be pt or onnx, got {format!r}.")
    check_output(out, is_model_file if format == "pt" else is_onnx_model_file,
                 what="affbench model file" if format == "pt" else "affbench ONNX model", force=force)
    with writing(out):
        return _export_model(out, job_dir, published=published, encoder=encoder, pretrained=pretrained,
                             labels=labels, options=options, crop_size=crop_size, eval_crop=eval_crop, format=format)


def is_model_file(path: Path) -> bool:
    """Whether ``path`` is a model file ``export-model`` wrote: a torch.save archive whose pickle
    names ``affbench_model`` (looked up in the archive's bytes; nothing is unpickled)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        return len(pickles) == 1 and b"affbench_model" in archive.read(pickles[0])


def _export_model(
    out: str | os.PathLike,
    job_dir: str | os.PathLike | None,
    *,
    published: str | None,
    encoder: str | None,
    pretrained: str | os.PathLike | None,
    labels: Sequence[str] | None,
    options: Mapping[str, Any] | None,
    crop_size: int,
    eval_crop: float,
    format: str,
) -> tuple[Path, ModelDescription]:
    """:func:`export_model` once the output is checked and locked."""
    if published is not None:
        if job_dir is not None or encoder is not None or pretrained is None or labels or options:
            raise AffbenchError("--published TAG takes --pretrained PATH (the released file) and nothing else: "
                                "the tag gives the encoder, its options, labels and framing.")
        description, state = wrap_published(published, pretrained)
    elif encoder is None:
        if job_dir is None or pretrained or labels or options:
            raise AffbenchError("Give a job folder (RUNDIR/jobs/<job>), --published TAG with --pretrained, or "
                                "--encoder with --pretrained and --labels to wrap another checkpoint.")
        description, state = job_model(job_dir)
    else:
        if job_dir is not None or pretrained is None or not labels:
            raise AffbenchError("--encoder wraps a published checkpoint: give --pretrained PATH and --labels, "
                                "and no job folder.")
        description, state = wrap_checkpoint(encoder, pretrained, labels, options=options, crop_size=crop_size,
                                             eval_crop=eval_crop)
    if format == "onnx":
        from affbench.inference.portable import export_onnx

        return export_onnx(out, description, state), description
    return save_model_file(out, description, state), description
