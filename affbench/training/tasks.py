"""The tasks one model learns: each task's targets over the label table and its rows per role.

Shared by the fit loop, the losses, the step and the evaluation, which all read a
:class:`TaskData`; it imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from affbench.errors import AffbenchError
from affbench.training.settings import TrainSettings

if TYPE_CHECKING:
    from affbench.encoders.registry import EncoderSpec
    from affbench.scoring.protocols import TaskSpec

# ----------------------------------------------------------------------------------------- tasks


@dataclass
class TaskData:
    """One task's targets over the whole label table, and its rows per role.

    Attributes
    ----------
    spec : affbench.scoring.protocols.TaskSpec
    y : ndarray
        Targets for every row of the label table: (n_rows, n_labels) float32, or (n_rows,) class
        indices for expression.
    mask : ndarray of bool
        True where ``y`` is annotated; same shape as ``y``.
    rows : dict
        ``"train"``, ``"val"``, ``"test"``: row positions (any may be empty).
    """

    spec: Any
    y: np.ndarray
    mask: np.ndarray
    rows: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return self.spec.name


def apply_selection(tasks: Sequence[TaskData], settings: TrainSettings) -> list[TaskData]:
    """The tasks as ``settings.selection`` trains them: under ``reference-last-epoch`` the validation
    rows join the training rows (ME-GraphAU trains on every training subject); otherwise unchanged."""
    if settings.selection != "reference-last-epoch":
        return list(tasks)
    empty = np.zeros(0, np.int64)
    return [TaskData(t.spec, t.y, t.mask, {**t.rows, "train": np.union1d(t.rows["train"], t.rows["val"]), "val": empty})
            for t in tasks]


def check_compatible(task_spec: TaskSpec, encoder_spec: EncoderSpec) -> None:
    """Raise one clear sentence when an encoder cannot be trained or scored on a task."""
    key = task_spec.output_key
    heads = dict(encoder_spec.heads)
    if key not in heads:
        raise AffbenchError(
            f"Encoder {encoder_spec.name!r} has no {key!r} output (it has {', '.join(heads) or 'none'}), "
            f"so it cannot be used for task {task_spec.name!r}."
        )
    if heads[key] != task_spec.n_outputs:
        raise AffbenchError(
            f"Encoder {encoder_spec.name!r} outputs {heads[key]} {key} values but task {task_spec.name!r} "
            f"has {task_spec.n_outputs}; set the encoder's head size in the suite."
        )
    aus = getattr(encoder_spec, "aus", None)
    if key == "au" and aus is not None and all(str(n).startswith("au") for n in task_spec.label_names):
        names = tuple(f"au{a}" for a in aus)
        if names != tuple(task_spec.label_names):
            raise AffbenchError(
                f"Encoder {encoder_spec.name!r} predicts {', '.join(names)} but task {task_spec.name!r} scores "
                f"{', '.join(task_spec.label_names)}; set the encoder's AUs to the task's, in the same order."
            )
    if task_spec.kind == "au-intensity" and encoder_spec.au_output != "intensities":
        raise AffbenchError(
            f"Encoder {encoder_spec.name!r} outputs AU {encoder_spec.au_output}, not intensities, so it cannot "
            f"be scored on the intensity task {task_spec.name!r}."
        )
