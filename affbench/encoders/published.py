"""Published models by tag: what a released checkpoint is, where it comes from, what it was trained on.

timm gives each pretrained variant a tag (``resnet50.a1_in1k``) that carries its mean, std, crop
fraction and classes; affbench does the same for the checkpoints the seed papers' authors released.
A :class:`PublishedModel` says, for one released file:

- its name as published and the page that publishes it (text only: affbench downloads nothing);
- the encoder and options it loads into, and the checkpoint layout it must have;
- what its outputs are (tasks and label names), the face crop it expects (crop size, evaluation
  framing) -- input size and normalisation follow from the encoder's spec;
- the dataset, protocol and fold it was trained for, and the subjects it was trained on (which it
  must never be tested on);
- its citation and the numbers its paper reports, each with the place the fact was read.

``create_encoder("megraph-au/resnet50-disfa-fold1", pretrained=PATH)`` builds the tag's encoder with
its options and refuses, in one sentence, a file whose layout is not the tag's
(:func:`affbench.encoders.registry.create_encoder`). ``affbench list models`` prints the registry.

Each tag is declared once, below, by :func:`register_published`; the per-fold files of one release
share a *group* (``megraph-au/resnet50-disfa``) whose folds :func:`group_tags` lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from affbench.errors import UnknownNameError


@dataclass(frozen=True)
class ReportedNumber:
    """A number the model's paper (or release page) reports, in the paper's units.

    Attributes
    ----------
    task : str
        The protocol task it scores (``au-detection``, ``expression``, ``va``...).
    metric : str
        A registered metric name (``affbench list metrics``).
    value : float or None
        The overall value as printed (None when only per-label values are printed).
    labels : mapping of str to float
        Per-label values as printed.
    scale : float
        Multiply the printed values by it to get affbench's units (0.01 for percent).
    source : str
        Where it is printed.
    notes : str
        What it covers (e.g. the mean over the three fold files, not one file).
    """

    task: str
    metric: str
    value: float | None
    source: str
    labels: Mapping[str, float] = field(default_factory=dict)
    scale: float = 1.0
    notes: str = ""


@dataclass(frozen=True)
class PublishedTask:
    """One output of a published model: the protocol task it answers and its label names, in order."""

    name: str
    kind: str
    output_key: str
    label_names: tuple[str, ...]


@dataclass(frozen=True)
class PublishedModel:
    """A released checkpoint, by tag (see the module docstring).

    Attributes
    ----------
    tag : str
        ``<family>/<variant>``, e.g. ``megraph-au/resnet50-disfa-fold1``.
    group : str
        The release it belongs to (the tag without ``-fold<k>`` for per-fold files).
    encoder : str
        The registered encoder it loads into; ``options`` its architecture options.
    layouts : tuple of str
        The checkpoint layouts a file of this tag may have, as the family's key-mapping hook names them
        (a layout name that starts with one of them matches).
    file_name : str
        The file's name as published (or, where ``file_name_published`` is false, what the release
        says of it in words).
    published_at : str
        The page that publishes it, and how (text; nothing is downloaded).
    tasks : tuple of PublishedTask
        What its outputs mean; empty for a trunk released for another purpose (VGG-Face identities).
    crop_size : int
        Side of the aligned face crop it expects; ``eval_crop`` the centre fraction given to the network.
    dataset : str or None
        The affbench dataset it was trained on (None: not an affbench dataset).
    protocol : str
        The protocol in words; ``fold`` the fold it was trained for (None: no folds).
    trained_subjects : tuple of str
        The subjects of ``dataset`` it was trained on (for fold files: the other folds' test subjects).
    test_split : str or None
        For given-split protocols: the split it was scored on.
    citation : str
        The paper to cite.
    reported : tuple of ReportedNumber
        The numbers its paper reports.
    sources : mapping of str to str
        Fact -> where it was read (the reference repository's file, a README section, a paper table).
    notes : tuple of str
        Caveats.
    """

    tag: str
    group: str
    encoder: str
    options: Mapping[str, Any]
    layouts: tuple[str, ...]
    file_name: str
    published_at: str
    tasks: tuple[PublishedTask, ...]
    crop_size: int
    eval_crop: float
    dataset: str | None
    protocol: str
    citation: str
    fold: int | None = None
    file_name_published: bool = True
    trained_subjects: tuple[str, ...] = ()
    test_split: str | None = None
    reported: tuple[ReportedNumber, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        """Every output label, task after task."""
        return tuple(label for task in self.tasks for label in task.label_names)


_PUBLISHED: dict[str, PublishedModel] = {}


def register_published(model: PublishedModel) -> PublishedModel:
    """Add a tag to the registry (each tag once).

    Parameters
    ----------
    model : PublishedModel

    Returns
    -------
    PublishedModel
        The model itself.
    """
    if model.tag in _PUBLISHED:
        raise ValueError(f"published model {model.tag!r} is registered twice")
    _PUBLISHED[model.tag] = model
    return model


def list_published() -> list[str]:
    """Every registered tag, in registration order.

    Examples
    --------
    >>> "megraph-au/resnet50-disfa-fold1" in list_published()
    True
    """
    return list(_PUBLISHED)


def is_published_tag(name: str) -> bool:
    """Whether ``name`` is written as a tag (``family/variant``) rather than an encoder name."""
    return "/" in name


def get_published(tag: str) -> PublishedModel:
    """The published model of ``tag``.

    Raises
    ------
    UnknownNameError
        Listing the registered tags.

    Examples
    --------
    >>> get_published("megraph-au/resnet50-disfa-fold1").fold
    1
    """
    try:
        return _PUBLISHED[tag]
    except KeyError:
        raise UnknownNameError("published model", tag, list_published()) from None


def tag_of_file(name: str) -> str | None:
    """The tag whose released file has this name (``MEFARG_resnet50_DISFA_fold2.pth``), or None.

    Examples
    --------
    >>> tag_of_file("MEFARG_resnet50_DISFA_fold2.pth")
    'megraph-au/resnet50-disfa-fold2'
    """
    return next((m.tag for m in _PUBLISHED.values() if m.file_name == name), None)


def group_tags(group: str) -> dict[int, str]:
    """The fold tags of a release (``megraph-au/resnet50-disfa`` -> ``{1: ..., 2: ..., 3: ...}``).

    A tag gives itself, under its fold (fold 1 where it has none: given-split protocols have one
    fold). Raises UnknownNameError for an unknown group.

    Examples
    --------
    >>> sorted(group_tags("megraph-au/resnet50-bp4d"))
    [1, 2, 3]
    """
    if group in _PUBLISHED:  # one file: its fold, or fold 1 (the only fold of a given-split protocol)
        return {_PUBLISHED[group].fold or 1: group}
    found = {m.fold: m.tag for m in _PUBLISHED.values() if m.group == group and m.fold is not None}
    if not found:
        names = sorted({m.group for m in _PUBLISHED.values()} | set(_PUBLISHED))
        raise UnknownNameError("published model or release", group, names)
    return dict(sorted(found.items()))


def describe_published(tag: str) -> list[str]:
    """What ``affbench list models`` prints for one tag, one fact a line (no network is built).

    Parameters
    ----------
    tag : str
        A registered tag.

    Returns
    -------
    list of str

    Examples
    --------
    >>> describe_published("megraph-au/resnet50-disfa-fold1")[0]
    'megraph-au/resnet50-disfa-fold1'
    """
    from affbench.encoders.registry import get_encoder_spec

    model = get_published(tag)
    spec = get_encoder_spec(model.encoder, **model.options)
    options = ", ".join(f"{k}={v!r}" for k, v in model.options.items()) or "defaults (structure read from the file)"
    lines = [
        model.tag,
        f"  file         {model.file_name}",
        f"  published    {model.published_at}",
        f"  encoder      {model.encoder} ({options})",
        f"  layout       {' or '.join(model.layouts)}",
    ]
    lines += [f"  outputs      {t.name}: {', '.join(t.label_names)}" for t in model.tasks] or [
        "  outputs      none usable on their own (a starting point for training)"]
    lines += [
        f"  input        {spec.input_size} px from a {model.crop_size} px aligned crop (eval crop {model.eval_crop:g}); "
        f"normalisation mean {tuple(round(m, 4) for m in spec.mean)}, std {tuple(round(s, 4) for s in spec.std)}",
        f"  trained for  {model.dataset or '-'}: {model.protocol}",
    ]
    if model.trained_subjects:
        lines.append(f"  trained on   {len(model.trained_subjects)} subjects, never test it on them: "
                     f"{' '.join(model.trained_subjects)}")
    for number in model.reported:
        shown = f"{number.value:g}" if number.value is not None else ""
        if number.labels:
            shown += (" " if shown else "") + "(" + ", ".join(f"{k} {v:g}" for k, v in number.labels.items()) + ")"
        lines.append(f"  reported     {number.task} {number.metric} {shown} [{number.source}]"
                     + (f"; {number.notes}" if number.notes else ""))
    lines.append(f"  cite         {model.citation}")
    lines += [f"  source       {fact}: {where}" for fact, where in model.sources.items()]
    lines += [f"  note         {note}" for note in model.notes]
    return lines


# ----------------------------------------------------------------------------------------- ME-GraphAU

_MEGRAPH_REPO = "https://github.com/CVI-SZU/ME-GraphAU"
_MEGRAPH_CITATION = (
    "Luo, C., Song, S., Xie, W., Shen, L., Gunes, H. Learning Multi-dimensional Edge Feature-based AU "
    "Relation Graph for Facial Action Unit Recognition. IJCAI-ECAI 2022."
)
_MEGRAPH_DRIVE = {
    "disfa": "https://drive.google.com/file/d/1V-imbmhg-OgcP2d9SETT5iswNtCA0f8_/view",
    "bp4d": "https://drive.google.com/file/d/1gYVHRjIj6ounxtTdXMje4WNHFMfCTVF9/view",
}
#: Test subjects of each fold, from the reference's list files (data/<DATASET>/list/<DATASET>_test_img_path_fold<k>.txt).
MEGRAPH_TEST_SUBJECTS: dict[str, dict[int, tuple[str, ...]]] = {
    "disfa": {
        1: ("SN003", "SN004", "SN005", "SN007", "SN008", "SN017", "SN023", "SN025", "SN029"),
        2: ("SN006", "SN011", "SN012", "SN013", "SN018", "SN021", "SN024", "SN028", "SN031"),
        3: ("SN001", "SN002", "SN009", "SN010", "SN016", "SN026", "SN027", "SN030", "SN032"),
    },
    "bp4d": {
        1: ("F004", "F006", "F007", "F012", "F014", "F015", "F017", "F019", "F021", "M003", "M006", "M009", "M015"),
        2: ("F003", "F005", "F011", "F013", "F020", "F022", "M002", "M005", "M010", "M011", "M013", "M016", "M017",
            "M018"),
        3: ("F001", "F002", "F008", "F009", "F010", "F016", "F018", "F023", "M001", "M004", "M007", "M008", "M012",
            "M014"),
    },
}
_MEGRAPH_AUS = {"disfa": (1, 2, 4, 6, 9, 12, 25, 26), "bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)}
#: The README's "Main Results" rows "Ours (ResNet-50)" (the paper's Tables 1 and 2): F1 in percent, mean over folds.
_MEGRAPH_F1 = {
    "disfa": (63.1, (54.6, 47.1, 72.9, 54.0, 55.7, 76.7, 91.1, 53.0)),
    "bp4d": (64.7, (53.7, 46.9, 59.0, 78.5, 80.0, 84.4, 87.8, 67.3, 52.5, 63.2, 50.6, 52.4)),
}
_MEGRAPH_DATASET_NAME = {"disfa": "DISFA", "bp4d": "BP4D"}


def _megraph_resnet50(dataset: str, fold: int) -> PublishedModel:
    name = _MEGRAPH_DATASET_NAME[dataset]
    aus = _MEGRAPH_AUS[dataset]
    overall, per_au = _MEGRAPH_F1[dataset]
    trained = tuple(sorted(s for k, subjects in MEGRAPH_TEST_SUBJECTS[dataset].items() if k != fold for s in subjects))
    labels = tuple(f"au{a}" for a in aus)
    return PublishedModel(
        tag=f"megraph-au/resnet50-{dataset}-fold{fold}",
        group=f"megraph-au/resnet50-{dataset}",
        encoder="megraph-au",
        options={"n_aus": len(aus), "stage": 2},
        layouts=("MEFL (stage 2)",),
        file_name=f"MEFARG_resnet50_{name}_fold{fold}.pth",
        published_at=f"{_MEGRAPH_REPO} README, 'Pretrained models', {name} row 'Ours (ResNet-50)': a Google Drive "
                     f"archive ME-GraphAU_resnet50_{name}.zip with the three fold files ({_MEGRAPH_DRIVE[dataset]})",
        tasks=(PublishedTask("au-detection", "au-detection", "au", labels),),
        crop_size=256,
        eval_crop=0.875,
        dataset=dataset,
        protocol=f"{name} 3-fold subject-exclusive protocol of JAA-Net / ME-GraphAU; fold {fold} file trained "
                 f"on the other two folds' subjects",
        fold=fold,
        trained_subjects=trained,
        citation=_MEGRAPH_CITATION,
        reported=(ReportedNumber(
            task="au-detection", metric="f1", value=overall, labels=dict(zip(labels, per_au)), scale=0.01,
            source=f"Luo et al. 2022, {name} F1 table, row 'Ours (ResNet-50)'; repeated in the {_MEGRAPH_REPO} README "
                   "'Main Results'",
            notes="mean over the three fold files, each scored on its own fold's test subjects",
        ),),
        sources={
            "file_name": "the reference's test command in CVI-SZU/ME-GraphAU issue #9 "
                         f"(results/ME-GraphAU_resnet50_{name}/MEFARG_resnet50_{name}_fold1.pth; BP4D by the same "
                         "pattern) and the README's archive naming (ME-GraphAU_swin_base_BP4D.zip)",
            "folds": f"{_MEGRAPH_REPO} data/{name}/list/{name}_test_img_path_fold<k>.txt",
            "layout": f"{_MEGRAPH_REPO} model/MEFL.py (stage 2), saved by train_stage2.py",
            "labels": f"{_MEGRAPH_REPO} config/{name}_config.yaml (num_classes) and the README's result table",
            "framing": f"{_MEGRAPH_REPO} utils.py image_test: Resize(256), PlaceCrop(224) at the centre, ImageNet "
                   "mean and std",
            "numbers": f"{_MEGRAPH_REPO} README 'Main Results'",
        },
        notes=("the faces of the reference were aligned by its own preprocessing; affbench aligns with its 5-point "
               "template at 256 px",),
    )


for _dataset in ("disfa", "bp4d"):
    for _fold in (1, 2, 3):
        register_published(_megraph_resnet50(_dataset, _fold))


# ----------------------------------------------------------------------------------------- ABAW3

_ABAW3_REPO = "https://github.com/wtomin/ABAW3_MultiEmotionNet"
_AFFWILD2_AUS = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
_AFFWILD2_EXPRESSIONS = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other")

register_published(PublishedModel(
    tag="abaw3-men/smm",
    group="abaw3-men/smm",
    encoder="smm-emotionnet",
    options={},
    layouts=("ABAW3 MultiEmotionNet",),
    file_name="a PyTorch Lightning checkpoint (.ckpt); the release page does not print its name",
    file_name_published=False,
    published_at=f"{_ABAW3_REPO} README, 'Pretrained Model': a OneDrive (hkustconnect-my.sharepoint.com) link",
    tasks=(
        PublishedTask("au-detection", "au-detection", "au", tuple(f"au{a}" for a in _AFFWILD2_AUS)),
        PublishedTask("expression", "expression", "expression", _AFFWILD2_EXPRESSIONS),
        PublishedTask("va", "va", "va", ("valence", "arousal")),
    ),
    crop_size=112,
    eval_crop=1.0,
    dataset="affwild2",
    protocol="ABAW3 multi-task challenge: trained on Train_Set, scored on Validation_Set",
    test_split="Validation_Set",
    citation="Deng, D. Multiple Emotion Descriptors Estimation at the ABAW3 Challenge. arXiv:2203.12845, 2022.",
    reported=(
        ReportedNumber("au-detection", "f1", 0.548, f"{_ABAW3_REPO} README, validation metrics of the released model"),
        ReportedNumber("expression", "f1", 0.518, f"{_ABAW3_REPO} README, validation metrics of the released model"),
        ReportedNumber("va", "ccc", None, f"{_ABAW3_REPO} README, validation metrics of the released model",
                       labels={"valence": 0.447, "arousal": 0.499}),
    ),
    sources={
        "layout": f"{_ABAW3_REPO} MTL/models/static_linear_model.py (Lightning state_dict)",
        "labels": "the ABAW3 annotation files' AU, EXPR and VA headers (docs/datasets.md, Aff-Wild2)",
        "framing": "the challenge's 112x112 cropped_aligned faces, resized to the InceptionV3 input (299)",
        "numbers": f"{_ABAW3_REPO} README",
    },
    notes=("the README does not say whether the released file is the static (SMM-EmotionNet) or the temporal "
           "model; affbench loads the static layout and refuses any other",),
))


# ----------------------------------------------------------------------------------------- CAER-Net-S

_CAER_REPO = "https://github.com/ndkhanh360/CAER"

register_published(PublishedModel(
    tag="caer-net-s/face",
    group="caer-net-s/face",
    encoder="emotiram-f",
    options={},
    layouts=("CAER repository model.py, face configuration", "CAER repository orig_model.py"),
    file_name="the trainer's checkpoint (pytorch-template: model_best.pth); the release page does not print its name",
    file_name_published=False,
    published_at=f"{_CAER_REPO} README, last section: a Google Drive link "
                 "(https://drive.google.com/file/d/1HxHZQmWnXbhYV0_HU2q-2fcC3twtGJZp/view)",
    tasks=(PublishedTask("expression", "expression", "expression",
                         ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise")),),
    crop_size=96,
    eval_crop=1.0,
    dataset="caer-s",
    protocol="CAER-S given split: trained on train/, scored on test/",
    test_split="test",
    citation="Lee, J., Kim, S., Kim, S., Park, J., Sohn, K. Context-Aware Emotion Recognition Networks. ICCV 2019 "
             "(implementation: ndkhanh360/CAER).",
    reported=(ReportedNumber("expression", "accuracy", 76.81, f"{_CAER_REPO} README (test accuracy of the released "
                             "model)", scale=0.01,
                             notes="the released model's configuration is not printed; with the context stream "
                                   "its accuracy is not the face stream's"),),
    sources={
        "layout": f"{_CAER_REPO} model/model.py (face configuration) and model/orig_model.py",
        "labels": "the CAER-S class order (docs/datasets.md, CAER-S)",
        "framing": "96x96 face crops, the EmotiRAM face stream's input (docs/datasets.md, CAER-S)",
    },
    notes=("affbench's emotiram-f is the face stream alone: a file trained with the context stream is refused",),
))


# ----------------------------------------------------------------------------------------- VGG-Face

register_published(PublishedModel(
    tag="vggface/dag",
    group="vggface/dag",
    encoder="vggface",
    options={"normalization": "vggface"},
    layouts=("VGG-Face vgg_face_dag",),
    file_name="vgg_face_dag.pth",
    published_at="https://www.robots.ox.ac.uk/~albanie/pytorch-models.html (S. Albanie's PyTorch conversion of "
                 "the MatConvNet VGG-Face model)",
    tasks=(),
    crop_size=224,
    eval_crop=1.0,
    dataset=None,
    protocol="face identification on the VGG-Face data set (2,622 identities); no affect labels",
    citation="Parkhi, O. M., Vedaldi, A., Zisserman, A. Deep Face Recognition. BMVC 2015.",
    sources={
        "layout": "affbench/encoders/vgg.py (the dag conversion's layer names conv1_1 ... fc8)",
        "use": "ABAW baselines (Kollias & Zafeiriou) start their VGG-Face network from these weights",
    },
    notes=("a starting point, not an affect model: fc8 (identities) is not used and the task head starts fresh, so "
           "it cannot be exported or scored on its own",),
))
