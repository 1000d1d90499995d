"""The training losses, one per task kind, each on the rows its task annotates.

Summed over tasks, unweighted, as SMM-EmotionNet's eq. 7:

* AU detection (``au_loss = "bce"``): binary cross-entropy with per-AU positive weights
  ``negatives / positives`` from the training rows; on logits (``BCEWithLogits``) or, for models
  that output probabilities (ME-GraphAU), the same weighted BCE on the probabilities, in float32;
* AU detection (``au_loss = "weighted-asymmetric"``, ME-GraphAU's reference loss): for AU j with
  occurrence rate r_j in the training rows, weight w_j = (1 / r_j) / sum_k (1 / r_k) * n_AUs, and
  ``-w_j [y log p + (1 - y) p log(1 - p)]`` with the negative term's factor p held constant
  (no gradient through it), log arguments clamped at 1e-8; mean over annotated entries;
* AU relation edges (``edge_loss_weight = lambda > 0``, ME-GraphAU stage 2): lambda times the
  cross-entropy of the ``au_edges`` output against class 2 y_i + y_j for every ordered AU pair
  (i, j), the pair i = i included, as the reference derives its relation labels;
* AU intensity: mean squared error on the heatmaps for the heatmap models (Fan et al.; targets
  scaled by the encoder's ``heatmap_scale``), else on the intensities;
* expression: cross-entropy, optionally weighted by inverse class frequency in the training rows;
* valence/arousal: ``(1 - CCC_V) + (1 - CCC_A)`` over the batch, the CCC's variances and
  covariance divided by ``n - ccc_ddof`` (0: the metric's definition; 1: the ABAW3 reference's
  ``torch.std``).

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
    from affbench.training.settings import TrainSettings
    from affbench.training.tasks import TaskData

#: Clamp of the weighted asymmetric loss's log arguments (ME-GraphAU's eps).
ASYMMETRIC_EPS = 1e-8


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
        self.asymmetric = settings.au_loss == "weighted-asymmetric"
        if self.asymmetric:
            self.au_weight = torch.as_tensor(occurrence_weights(y, mask), dtype=torch.float32, device=device)
            self.describe = ("weighted asymmetric loss (ME-GraphAU), AU weights from occurrence: "
                             f"{np.round(self.au_weight.cpu().numpy(), 3).tolist()}")
        else:
            form = "weighted BCE on probabilities" if self.probabilities else "BCE with logits"
            self.describe = f"{form}, pos_weight = negatives/positives per label: {np.round(weight, 3).tolist()}"
        self.edge_weight = settings.edge_loss_weight
        if self.edge_weight:
            if "au_edges" not in encoder_spec.heads or self.key != "au":
                raise AffbenchError(
                    f"training.edge_loss_weight needs an encoder with an au_edges output; {encoder_spec.name!r} has "
                    f"none (megraph-au builds it with stage=2, edge_head=true)."
                )
            self.describe += f"; + {self.edge_weight:g} x cross-entropy of the AU-pair edges (class 2*y_i + y_j)"

    def __call__(self, outputs, rows, batch):
        keep, y, mask = self.select(rows)
        if not keep.any():
            return None
        pred = outputs[self.key].float()[keep]
        y, mask = y[keep].float(), mask[keep].float()
        if self.asymmetric:
            p = pred if self.probabilities else torch.sigmoid(pred)
            loss = weighted_asymmetric_loss(p, y, self.au_weight, reduction="none")
        elif self.probabilities:
            p = pred.clamp(1e-6, 1 - 1e-6)
            loss = -(self.pos_weight * y * torch.log(p) + (1 - y) * torch.log1p(-p))
        else:
            loss = F.binary_cross_entropy_with_logits(pred, y, pos_weight=self.pos_weight, reduction="none")
        total = (loss * mask).sum() / mask.sum().clamp_min(1.0)
        if self.edge_weight:
            total = total + self.edge_weight * edge_loss(outputs["au_edges"].float()[keep], y, mask)
        return total


def occurrence_weights(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ME-GraphAU's per-AU weights: inverse occurrence rate, normalised to average 1 over the AUs.

    The rate counts annotated rows only; an AU that never occurs is given the rate of one
    occurrence, so that its weight stays finite (the reference would divide by zero).
    """
    annotated = np.maximum(mask.sum(axis=0), 1)
    rate = np.maximum((y * mask).sum(axis=0), 1) / annotated
    inverse = 1.0 / rate
    return inverse / inverse.sum() * len(inverse)


def weighted_asymmetric_loss(p: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, *, reduction: str = "mean"):
    """ME-GraphAU's weighted asymmetric loss on probabilities ``p`` (B, n) and 0/1 targets ``y``.

    ``-w_j [y log p + (1 - y) p log(1 - p)]`` with the factor p of the negative term detached;
    ``reduction="mean"`` averages over every entry (the reference's mean over AUs, then batch).
    """
    positive = y * torch.log(p.clamp_min(ASYMMETRIC_EPS))
    negative = (1 - y) * p.detach() * torch.log((1 - p).clamp_min(ASYMMETRIC_EPS))
    loss = -(positive + negative) * weight.view(1, -1)
    return loss.mean() if reduction == "mean" else loss


def edge_loss(edge_logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ME-GraphAU's edge classifier: (B, n*n, 4) logits, class 2 y_i + y_j of pair i*n + j.

    Pairs with an unannotated AU are left out (the reference has no missing labels).
    """
    targets = (2 * y[:, :, None] + y[:, None, :]).long().reshape(-1)
    logits = edge_logits.reshape(-1, edge_logits.shape[-1])
    if mask is None:
        return F.cross_entropy(logits, targets)
    valid = (mask[:, :, None] * mask[:, None, :]).reshape(-1) > 0
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid], targets[valid])


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
        self.ddof = settings.ccc_ddof
        self.describe = f"sum over targets of (1 - CCC) on the batch (variances over n - {self.ddof})"

    def __call__(self, outputs, rows, batch):
        from affbench.scoring.metrics import torch_ccc

        keep, y, mask = self.select(rows)
        pred = outputs[self.key].float()
        total = None
        for j in range(y.shape[1]):
            rows_j = keep & mask[:, j]
            if int(rows_j.sum()) < 2:  # CCC needs two values
                continue
            term = 1.0 - torch_ccc(y[rows_j, j].float(), pred[rows_j, j], ddof=self.ddof)
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
            self.scale = float(encoder_spec.options.get("heatmap_scale", 1.0))
            self.describe = (f"MSE on AU heatmaps (Gaussian targets, sigma {self.sigma:g}, peak = "
                             f"{self.scale:g} x intensity)")
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
        target = self._fan.heatmap_targets(au_points, intensities * self.scale, spec.heatmap_size, spec.input_size, sigma=self.sigma)
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


