"""How a model is trained: :class:`TrainSettings` (a suite's ``[training]`` table) and the optimiser
and learning-rate schedule they build.

Settings that switch between the papers' readings and their public code's (``au_loss``,
``edge_loss_weight``, ``ccc_ddof``, ``schedule = "cosine-steps"``, ``weight_decay_on``,
``selection``) are listed with the option that switches each in docs/benchmarks.md's table "affbench vs
the reference code".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from affbench.data.augment import Augmentation
from affbench.errors import AffbenchError
from affbench.runtime.numbers import Range, check_number

OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULES = ("none", "cosine", "cosine-steps", "step")
CLASS_WEIGHTS = ("balanced", "none")
POS_WEIGHTS = ("train", "none")
AU_LOSSES = ("bce", "weighted-asymmetric")
WEIGHT_DECAY_ON = ("all", "weights")
#: Model selection: the best validation epoch (held-out training subjects), or the reference
#: protocol of ME-GraphAU (train on every training subject, keep the last epoch).
SELECTIONS = ("validation", "reference-last-epoch")


#: Every numeric training setting and the values it may take (checked by :class:`TrainSettings`):
#: finite, in range, and an integer where a count is meant.
NUMERIC_SETTINGS = {
    "epochs": Range(1, integer=True),
    "batch_size": Range(1, integer=True),
    "lr": Range(0, open_low=True),
    "weight_decay": Range(0),
    "momentum": Range(0, 1, open_high=True),
    "cosine_steps": Range(1, integer=True),
    "step_factor": Range(0, open_low=True),
    "seed": Range(0, integer=True),
    "edge_loss_weight": Range(0),
    "ccc_ddof": Range(0, 1, integer=True),
    "max_steps": Range(1, integer=True),
    "num_workers": Range(0, integer=True),
    "eval_batch_size": Range(1, integer=True),
    "grad_clip": Range(0, open_low=True),
    "heatmap_sigma": Range(0, open_low=True),
}
#: The numeric settings that may be left unset (None).
OPTIONAL_NUMBERS = ("max_steps", "num_workers", "eval_batch_size", "grad_clip")


# ----------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TrainSettings:
    """How one model is trained; suites set these per experiment (``[training]`` tables).

    Attributes
    ----------
    epochs, batch_size : int
    optimizer : {"sgd", "rmsprop", "adam", "adamw"}
    lr, weight_decay, momentum : float
        ``momentum`` is used by SGD and RMSprop.
    schedule : {"none", "cosine", "cosine-steps", "step"}
        ``cosine`` anneals per step to 0 over all epochs; ``cosine-steps`` is PyTorch's
        ``CosineAnnealingLR(T_max=cosine_steps)`` stepped per step (ABAW3's reference): the rate
        reaches 0 after ``cosine_steps`` steps and rises back over the next ``cosine_steps``;
        ``step`` divides the rate by ``step_factor`` at each epoch of ``step_epochs``.
    weight_decay_on : {"all", "weights"}
        Which parameters weight decay applies to: all, or only the weights of convolutions and
        linear layers (no biases, no normalisation layers; Fan et al.'s reference code).
    seed : int
        Model initialisation, data order and augmentation all follow from it.
    augmentation : Augmentation
    class_weights : {"balanced", "none"}
        Expression loss weights: inverse class frequency in the training rows, or none.
    pos_weight : {"train", "none"}
        AU loss positive weights: negatives / positives per AU in the training rows, or none.
    au_loss : {"bce", "weighted-asymmetric"}
        AU detection loss (:mod:`affbench.training.losses`): weighted BCE, or ME-GraphAU's weighted
        asymmetric loss (per-AU weights from occurrence; ``pos_weight`` then unused).
    edge_loss_weight : float
        lambda of ME-GraphAU's stage-2 edge cross-entropy (needs an ``au_edges`` output); 0: none.
    ccc_ddof : {0, 1}
        The VA loss's CCC divides variances by n - ccc_ddof (1: ABAW3's reference loss).
    selection : {"validation", "reference-last-epoch"}
        ``validation`` keeps the epoch with the best score on the held-out validation rows;
        ``reference-last-epoch`` trains on training and validation rows together and keeps the last
        epoch, as ME-GraphAU's code does (no held-out model selection; the record says so).
    max_steps : int, optional
        At most this many training batches per epoch (quick runs).
    num_workers : int, optional
        DataLoader worker processes; None chooses by device. Does not change results.
    eval_batch_size : int, optional
        Batch size for validation and test (default: twice ``batch_size``). Does not change results.
    grad_clip : float, optional
        Clip the gradient norm to this value.
    heatmap_sigma : float
        Standard deviation in heatmap pixels of the Gaussian AU targets (Fan et al.: 2).
    exclude_fallback_crops : bool
        Leave the rows with a fallback crop (``landmark_source`` interpolated or carried: no face
        was found in the frame) out of training, validation and testing. False (the published
        protocols' way) scores every frame; the records count the fallback rows either way.
    keep_weights : bool
        Keep the selected weights (``best.pt``) after the cell is scored. False deletes them unless
        another job of the run starts from or evaluates them (the demo: VGG-16 weighs 0.5 GB).
    guessed : tuple of str
        Names of the settings the source papers do not give (reported with every result).
    source : str
        Where the settings come from, in words.
    """

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "none"
    cosine_steps: int = 10000
    weight_decay_on: str = "all"
    step_epochs: tuple[int, ...] = ()
    step_factor: float = 10.0
    seed: int = 0
    augmentation: Augmentation = field(default_factory=Augmentation)
    class_weights: str = "balanced"
    pos_weight: str = "train"
    au_loss: str = "bce"
    edge_loss_weight: float = 0.0
    ccc_ddof: int = 0
    selection: str = "validation"
    max_steps: int | None = None
    num_workers: int | None = None
    eval_batch_size: int | None = None
    grad_clip: float | None = None
    heatmap_sigma: float = 2.0
    exclude_fallback_crops: bool = False
    keep_weights: bool = True
    guessed: tuple[str, ...] = ()
    source: str = ""

    #: Settings that cannot change a trained model's weights or scores.
    NON_RESULT_FIELDS = ("num_workers", "eval_batch_size", "keep_weights", "guessed", "source")
    #: Settings added after the first release: left out of the hashed settings at their default, so
    #: that jobs run before they existed keep their configuration hash.
    LATER_FIELDS = ("cosine_steps", "weight_decay_on", "au_loss", "edge_loss_weight", "ccc_ddof", "selection",
                    "exclude_fallback_crops")

    def __post_init__(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise AffbenchError(message)

        for name, allowed in NUMERIC_SETTINGS.items():
            value = getattr(self, name)
            if value is not None or name not in OPTIONAL_NUMBERS:
                object.__setattr__(self, name, check_number(f"training.{name}", value, allowed))
        if not isinstance(self.step_epochs, (list, tuple)):
            raise AffbenchError(f"training.step_epochs must be a list of epoch numbers; got {self.step_epochs!r}.")
        object.__setattr__(self, "step_epochs", tuple(check_number("training.step_epochs", e, Range(1, integer=True))
                                                      for e in self.step_epochs))
        check(self.optimizer in OPTIMIZERS, f"Unknown optimizer {self.optimizer!r}; valid optimizers are: {', '.join(OPTIMIZERS)}.")
        check(self.schedule in SCHEDULES, f"Unknown schedule {self.schedule!r}; valid schedules are: {', '.join(SCHEDULES)}.")
        check(self.class_weights in CLASS_WEIGHTS,
              f"training.class_weights must be one of {', '.join(CLASS_WEIGHTS)}; got {self.class_weights!r}.")
        check(self.pos_weight in POS_WEIGHTS, f"training.pos_weight must be one of {', '.join(POS_WEIGHTS)}; got {self.pos_weight!r}.")
        check(self.au_loss in AU_LOSSES, f"training.au_loss must be one of {', '.join(AU_LOSSES)}; got {self.au_loss!r}.")
        check(self.weight_decay_on in WEIGHT_DECAY_ON,
              f"training.weight_decay_on must be one of {', '.join(WEIGHT_DECAY_ON)}; got {self.weight_decay_on!r}.")
        check(self.selection in SELECTIONS, f"training.selection must be one of {', '.join(SELECTIONS)}; got {self.selection!r}.")
        object.__setattr__(self, "guessed", tuple(self.guessed))
        if isinstance(self.augmentation, Mapping):
            object.__setattr__(self, "augmentation", Augmentation.from_dict(self.augmentation))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainSettings:
        """Build from a suite's ``[training]`` table; unknown keys are an error naming the valid ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AffbenchError(f"Unknown training setting {unknown[0]!r}; the settings are: {', '.join(sorted(known))}.")
        values = dict(data)
        try:
            return cls(**values)
        except TypeError as exc:
            raise AffbenchError(f"Invalid training settings: {exc}.") from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["augmentation"] = self.augmentation.to_dict()
        data["step_epochs"] = list(self.step_epochs)
        data["guessed"] = list(self.guessed)
        return data

    def result_dict(self) -> dict[str, Any]:
        """The settings that determine the trained weights (for config hashes)."""
        data = self.to_dict()
        for name in self.NON_RESULT_FIELDS:
            data.pop(name, None)
        defaults = {f.name: f.default for f in fields(self)}
        for name in self.LATER_FIELDS:
            if data[name] == defaults[name]:
                data.pop(name)
        return data

    def merged(self, overrides: Mapping[str, Any]) -> TrainSettings:
        """These settings with some replaced (``augmentation`` is merged key by key)."""
        if not overrides:
            return self
        data = self.to_dict()
        for key, value in overrides.items():
            if key == "augmentation":
                data["augmentation"] = {**data["augmentation"], **dict(value)}
            else:
                data[key] = value
        return TrainSettings.from_dict(data)


# ----------------------------------------------------------------------------------------- optimiser


def decayed_parameters(model: torch.nn.Module, settings: TrainSettings) -> list[dict[str, Any]]:
    """Parameter groups: weight decay on every trainable parameter, or (``weight_decay_on =
    "weights"``) only on the weights of convolutions and linear layers."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if settings.weight_decay_on == "all":
        return [{"params": [p for _, p in trainable]}]
    layers = (torch.nn.modules.conv._ConvNd, torch.nn.Linear)
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, layers) and m.weight is not None}
    return [{"params": [p for _, p in trainable if id(p) in decayed]},
            {"params": [p for _, p in trainable if id(p) not in decayed], "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    params = decayed_parameters(model, settings)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler: constant, cosine to zero over all steps, cosine with a fixed period
    (``CosineAnnealingLR``'s closed form, unclamped), or step decay at epochs."""
    total = max(1, settings.epochs * steps_per_epoch)
    if settings.schedule == "cosine":
        factor = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))  # noqa: E731
    elif settings.schedule == "cosine-steps":
        period = settings.cosine_steps
        factor = lambda step: 0.5 * (1.0 + math.cos(math.pi * step / period))  # noqa: E731
    elif settings.schedule == "step":
        milestones = [e * steps_per_epoch for e in settings.step_epochs]
        factor = lambda step: settings.step_factor ** -sum(step >= m for m in milestones)  # noqa: E731
    else:
        factor = lambda step: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
