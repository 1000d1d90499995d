"""The training losses, one per task kind, each on the rows its task annotates.

Summed over tasks, unweighted, as SMM-EmotionNet's eq. 7:

* AU detection: binary cross-entropy with per-AU positive weights ``negatives / positives`` from the
  training rows; on logits (``BCEWithLogits``) or, for models that output probabilities
  (ME-GraphAU), the same weighted BCE on the probabilities, in float32;
* AU intensity: mean squared error on the heatmaps for the heatmap models (Fan et al.), else on the
  intensities;
* expression: cross-entropy, optionally weighted by inverse class frequency in the training rows;
* valence/arousal: ``(1 - CCC_V) + (1 - CCC_A)`` over the batch.

Unannotated labels are masked out of their task's loss only. Each loss is called with the model's
outputs, the batch's row positions in the label table, and the batch itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from affbench.errors import AffbenchError

if TYPE_CHECKING:
    from affbench.train import TaskData, TrainSettings

class _Loss:
    """One task's loss on a batch; ``rows`` index the full label table."""

    def __init__(self, task: TaskData, encoder_spec, settings: TrainSettings, device: torch.device):
        self.task = task
        self.key = task.spec.output_key
        self.device = device
        train = task.rows["train"]
        member = np.zeros(len(task.y), dtype=bool)
        member[train] = True
        self.member = torch.from_numpy(member).to(device)
        self.y = torch.from_numpy(np.ascontiguousarray(task.y)).to(device)
        self.mask = torch.from_numpy(np.ascontiguousarray(task.mask)).to(device)
        self.describe = ""

    def select(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keep = self.member[rows]
        return keep, self.y[rows], self.mask[rows]


class AUDetectionLoss(_Loss):
    def __init__(self, task, encoder_spec, settings, device):
        super().__init__(task, encoder_spec, settings, device)
        self.probabilities = encoder_spec.au_output == "probabilities" and self.key == "au"
        if encoder_spec.au_output == "intensities" and self.key == "au":
            raise AffbenchError(f"Encoder {encoder_spec.name!r} outputs AU intensities; train it on an intensity task.")
        train = task.rows["train"]
        y, mask = task.y[train], task.mask[train]
        positives = (y * mask).sum(axis=0)
        negatives = ((1 - y) * mask).sum(axis=0)
        if settings.pos_weight == "train":
            weight = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
        else:
            weight = np.ones(y.shape[1])
        self.pos_weight = torch.as_tensor(weight, dtype=torch.float32, device=device)
        form = "weighted BCE on probabilities" if self.probabilities else "BCE with logits"
        self.describe = f"{form}, pos_weight = negatives/positives per label: {np.round(weight, 3).tolist()}"

    def __call__(self, outputs, rows, batch):
        keep, y, mask = self.select(rows)
        if not keep.any():
            return None
        pred = outputs[self.key].float()[keep]
        y, mask = y[keep].float(), mask[keep].float()
        if self.probabilities:
            p = pred.clamp(1e-6, 1 - 1e-6)
            loss = -(self.pos_weight * y * torch.log(p) + (1 - y) * torch.log1p(-p))
        else:
            loss = F.binary_cross_entropy_with_logits(pred, y, pos_weight=self.pos_weight, reduction="none")
        return (loss * mask).sum() / mask.sum().clamp_min(1.0)


class ExpressionLoss(_Loss):
    def __init__(self, task, encoder_spec, settings, device):
        super().__init__(task, encoder_spec, settings, device)
        n_classes = task.spec.n_outputs
        train = task.rows["train"]
        classes = task.y[train][task.mask[train]].astype(np.int64)
        counts = np.bincount(classes, minlength=n_classes).astype(np.float64)
        if settings.class_weights == "balanced":
            weight = np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1)), 1.0)
        else:
            weight = np.ones(n_classes)
        self.weight = torch.as_tensor(weight, dtype=torch.float32, device=device)
        self.describe = (
            f"cross-entropy, class weights {np.round(weight, 3).tolist()}" if settings.class_weights == "balanced"
            else "cross-entropy, unweighted"
        )

    def __call__(self, outputs, rows, batch):
        keep, y, mask = self.select(rows)
        keep = keep & mask
        if not keep.any():
            return None
        return F.cross_entropy(outputs[self.key].float()[keep], y[keep].long(), weight=self.weight)


class VALoss(_Loss):
    def __init__(self, task, encoder_spec, settings, device):
        super().__init__(task, encoder_spec, settings, device)
        self.describe = "sum over targets of (1 - CCC) on the batch"

    def __call__(self, outputs, rows, batch):
        from affbench.metrics import torch_ccc

        keep, y, mask = self.select(rows)
        pred = outputs[self.key].float()
        total = None
        for j in range(y.shape[1]):
            rows_j = keep & mask[:, j]
            if int(rows_j.sum()) < 2:  # CCC needs two values
                continue
            term = 1.0 - torch_ccc(y[rows_j, j].float(), pred[rows_j, j])
            total = term if total is None else total + term
        return total


class IntensityLoss(_Loss):
    """MSE on AU intensities, or on Gaussian heatmaps for the heatmap models (Fan et al.)."""

    def __init__(self, task, encoder_spec, settings, device):
        super().__init__(task, encoder_spec, settings, device)
        self.heatmaps = "heatmaps" in encoder_spec.heads
        self.sigma = settings.heatmap_sigma
        self.encoder_spec = encoder_spec
        if self.heatmaps:
            from affbench.encoders import fan

            self._fan = fan
            self.describe = f"MSE on AU heatmaps (Gaussian targets, sigma {self.sigma:g}, scaled by intensity)"
        else:
            self.describe = "MSE on AU intensities"

    def __call__(self, outputs, rows, batch):
        keep, y, mask = self.select(rows)
        if not keep.any():
            return None
        if not self.heatmaps:
            pred = outputs[self.key].float()[keep]
            m = mask[keep].float()
            return (((pred - y[keep].float()) ** 2) * m).sum() / m.sum().clamp_min(1.0)
        predicted = outputs["heatmaps"].float()
        spec = self.encoder_spec
        points = batch["points"].to(predicted.device)
        usable = keep & torch.isfinite(points).flatten(1).all(dim=1)
        if not usable.any():
            return None
        au_points = self._fan.au_points(points[usable], spec.aus)
        # Unannotated AUs get no target and no weight (their two heatmaps leave the loss).
        intensities = torch.where(mask[usable], y[usable].float().clamp_min(0.0), 0.0)
        target = self._fan.heatmap_targets(au_points, intensities, spec.heatmap_size, spec.input_size, sigma=self.sigma)
        weight = mask[usable].float().repeat_interleave(2, dim=1)[..., None, None]
        error = ((predicted[usable] - target) ** 2) * weight
        return error.sum() / (weight.sum() * spec.heatmap_size**2).clamp_min(1.0)


LOSSES = {
    "au-detection": AUDetectionLoss,
    "au-intensity": IntensityLoss,
    "expression": ExpressionLoss,
    "va": VALoss,
}


def build_losses(tasks: Sequence[TaskData], encoder_spec, settings: TrainSettings, device) -> list[_Loss]:
    """One loss per task, in the order of ``tasks``."""
    device = device if isinstance(device, torch.device) else torch.device(device)
    return [LOSSES[t.spec.kind](t, encoder_spec, settings, device) for t in tasks]


