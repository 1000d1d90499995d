"""Every registered variant can memorise a tiny training set through the harness's own path.

The standard sanity check of a training pipeline ("overfit one batch"): a few training crops, the
task(s) the suites train the variant on, the protocol's targets, ``affbench.training.fit.fit`` (its losses,
AdamW optimiser and data loader; augmentation off, no schedule), then the variant's score on those
same crops. A dead head, a loss wired to the wrong output, a frozen layer or a label read from the
wrong column keeps the score far from perfect.

**One batch holds the whole training set.** Every variant has batch norm. Trained on batches of 8
out of 16 crops, a network learns outputs that hold under the statistics of *those* batches; scored
on all 16 together (or in eval mode, on statistics re-estimated over the 16), the same weights compute
something else. Behind deep trunks whose last maps are 1x1 or 2x2 at these input sizes, that gap
alone kept ResNet-50, InceptionV3 and VGG variants below a perfect score after hundreds of steps
(the previous version of this test), while with the whole set in one batch they memorise in tens of
steps. So here ``batch_size`` is the number of training rows: every step sees the statistics the
score is computed with.

**Scoring: train mode without dropout.** Batch norm normalises with the batch's statistics, exactly
as in training (one batch of all training rows), and dropout is off (a memorised model is scored,
not a random sub-network). ``score_tasks`` then scores the training rows. Classification must be
perfect (accuracy 1.0: every AU of every crop, every expression). VA and AU intensity are
regressions, so they must reach a concordance of 0.95 (CCC) and an agreement of 0.95 (ICC): a dead,
constant or swapped output stays near 0.

**Reduced settings** (cost on two CPU cores; none removes a layer): inputs at the smallest size the
architecture allows (InceptionV3 75, Fan et al.'s network 64), 8 crops per task for the heavy trunks,
a learning rate per variant (1e-4 for the deep unnormalised FC bottleneck of EmotiRAM-FAU, which
diverges to a plateau at 1e-3) and a bound on the steps. Training stops as soon as the score is
perfect (checked every ``CHECK_EVERY`` steps). VGG-16 (138 M parameters) and fan-au (hundreds of
steps, see ``OPT_IN``) run only with ``AFFBENCH_LEARNABILITY=all``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from affbench.encoders.registry import create_encoder, list_encoders

CHECK_EVERY = 3

#: variant -> (dataset, tasks, encoder options, crops per task, max steps, learning rate).
VARIANTS = {
    "emotiram-f": ("caer-s", ("expression",), {"input_size": 64}, 16, 60, 3e-3),
    "fan-au": ("disfa", ("au-intensity",), {"input_size": 64}, 8, 300, 1e-3),
    "emotiram-fau": ("caer-s", ("expression",), {"input_size": 64}, 8, 45, 1e-4),
    "megraph-au": ("disfa", ("au-detection",), {"input_size": 32}, 8, 30, 1e-3),
    "emotiram-fau-megraph": ("caer-s", ("expression",), {"input_size": 32}, 8, 45, 1e-3),
    "smm-emotionnet": ("affwild2", ("au-detection", "expression", "va"), {"input_size": 75}, 4, 60, 1e-3),
    "inceptionv3-mtl": ("affwild2", ("au-detection", "expression", "va"), {"input_size": 75}, 4, 150, 1e-3),
    "vggface": ("affwild2", ("expression",), {"task": "expression", "input_size": 32}, 8, 120, 3e-5),
}

#: Left out of the default run (see the module docstring), each too slow for two CPU cores:
#: - VGG-16 (138 M parameters, no batch norm, dropout 0.5) learns slowly from scratch, about 1.3 s
#:   a full-batch step on a quiet machine: it memorised its 8 crops after 57 steps (bound 120;
#:   186 s for the test at load 5-7).
#: - fan-au learns, but its ICC approaches 0.95 slowly: an AU's intensity is the maximum of its
#:   heatmaps, so the whole 16x16 map must be accurate, not only its peak, and the MSE fits the
#:   crops with the largest intensities first. At lr 1e-3 (8 crops, 64 px) the ICC was 0.53 after
#:   60 steps, 0.72 after 90, 0.89 after 150 and 0.951 after 177, where the test stops (bound 300;
#:   213 s for the test at load 5-7), about 0.8 s a step on a quiet machine. It used to
#:   stall at the mean heatmap (ICC 0.05 after 60 steps at lr 3e-4, where it now reaches 0.43):
#:   the output convolution started at MSRA
#:   scale, six times the x1 targets, and Adam spent the steps shrinking that noise (fixed in
#:   affbench.encoders.fan: the start follows heatmap_scale, as in the reference code).
OPT_IN = {"vggface", "fan-au"}
RUN_ALL = os.environ.get("AFFBENCH_LEARNABILITY") == "all"

#: Known not to memorise within its bound (none at present).
KNOWN_FAILING: dict[str, str] = {}

#: Metric and threshold per task kind (see the module docstring).
REQUIRED = {"expression": ("accuracy", 1.0), "au-detection": ("accuracy", 1.0), "va": ("ccc", 0.95),
            "au-intensity": ("icc", 0.95)}


@pytest.fixture(scope="module")
def distinct_root(tmp_path_factory):
    """CAER-S, DISFA and Aff-Wild2 test data in which every crop is its own face: the shared fixtures
    reuse two faces per subject under changing labels, which no model can memorise."""
    from harness_fixtures import make_affwild2, make_caer, make_disfa

    root = tmp_path_factory.mktemp("distinct")
    make_caer(root / "caer-s")
    make_disfa(root / "disfa", distinct_faces=True)
    make_affwild2(root / "affwild2", distinct_faces=True)
    return root


def test_every_registered_variant_has_a_learnability_setting():
    assert set(VARIANTS) == set(list_encoders())


def _tiny_tasks(prepared_root, dataset, names, per_task):
    """The protocol's tasks of fold 1, their training rows cut to ``per_task`` annotated crops, no val/test."""
    from affbench.data.prepared import open_prepared
    from affbench.scoring.protocols import Protocol
    from affbench.training.tasks import TaskData

    protocol = Protocol.from_dict(open_prepared(prepared_root, dataset).protocol_dict)
    specs = [protocol.task(name) for name in names]
    columns = [c for spec in specs for c in (*spec.label_columns, *([spec.split_column] if spec.split_column else []))]
    group = getattr(protocol.split, "group_column", None)
    prepared = open_prepared(prepared_root, dataset, columns=columns + ([group] if group else []))
    empty = np.zeros(0, np.int64)
    tasks = []
    for name in names:
        split = protocol.split_indices(prepared.meta, name, 1)
        y, mask = protocol.targets(prepared.meta, name)
        train = np.concatenate([np.asarray(split[r], np.int64) for r in ("train", "val")])
        annotated = train[mask[train].reshape(len(train), -1).all(axis=1)]
        if protocol.task(name).kind == "va":
            # Evenly spread along the videos: a few random frames can hold nearly one valence (four
            # drawn rows held 0.727 and 0.746 only), and a CCC of targets that barely vary is no test.
            chosen = annotated[np.linspace(0, len(annotated) - 1, min(per_task, len(annotated))).round().astype(int)]
        else:
            chosen = np.random.default_rng(0).choice(annotated, min(per_task, len(annotated)), replace=False)
        chosen = np.sort(chosen)
        tasks.append(TaskData(protocol.task(name), y, mask, {"train": chosen, "val": empty, "test": empty}))
    return prepared, tasks


def train_mode_scores(model, tasks, images):
    """Scores on the training rows, all in one batch: batch norm on the batch's statistics, no dropout."""
    from affbench.training.evaluation import evaluation_loader, score_tasks
    from affbench.training.evaluation import forward as _forward

    rows = np.unique(np.concatenate([t.rows["train"] for t in tasks]))
    was_training = model.training
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    try:
        loader = evaluation_loader(images, rows, batch_size=len(rows), num_workers=0, device=torch.device("cpu"),
                                   persistent=False)
        with torch.no_grad():
            (batch,) = list(loader)
            outputs = _forward(model, batch["image"], model.spec, torch.device("cpu"), channels_last=False)
    finally:
        model.train(was_training)
    outputs = {k: v.float().numpy() for k, v in outputs.items()}
    return score_tasks(tasks, "train", outputs, batch["row"].numpy(), model.spec)


def memorised(tasks, scores) -> bool:
    return all(scores[t.name][REQUIRED[t.spec.kind][0]] >= REQUIRED[t.spec.kind][1] for t in tasks)


class _Memorised(Exception):
    """Raised from fit's epoch callback to stop training once the score is perfect."""


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[
        pytest.mark.skipif(name in OPT_IN and not RUN_ALL, reason="opt-in: set AFFBENCH_LEARNABILITY=all"),
        *([pytest.mark.xfail(reason=KNOWN_FAILING[name], strict=True)] if name in KNOWN_FAILING else []),
    ])
    for name in sorted(VARIANTS)
])
def test_variant_memorises_its_training_crops(name, distinct_root, tmp_path, monkeypatch):
    from affbench.data.loader import ShardImages
    from affbench.training.fit import fit, seed_everything
    from affbench.training.settings import TrainSettings
    from affbench.training.tasks import check_compatible

    dataset, task_names, options, per_task, max_steps, lr = VARIANTS[name]
    prepared, tasks = _tiny_tasks(distinct_root, dataset, task_names, per_task)
    n_rows = len(np.unique(np.concatenate([t.rows["train"] for t in tasks])))
    settings = TrainSettings(epochs=max_steps, batch_size=n_rows, optimizer="adamw", lr=lr, schedule="none", seed=0,
                             num_workers=0, augmentation={}, keep_weights=False)
    seed_everything(settings.seed)
    model = create_encoder(name, **options)
    for task in tasks:
        check_compatible(task.spec, model.spec)
    points = None
    if "heatmaps" in model.spec.heads:
        from affbench.data.loader import crop_landmarks

        points = crop_landmarks(prepared)
    images = ShardImages(prepared.folder, model.spec.input_size, settings.augmentation, points=points)
    # One step is one epoch here, and fit writes last.pt and best.pt after every epoch: for a
    # ResNet-50 with its AdamW state about 0.5 GB, more time than the step itself on two cores.
    # Checkpointing and resuming are tested in test_train.py; here the writes are skipped.
    monkeypatch.setattr("affbench.training.fit.save_checkpoint", lambda *args, **kwargs: None)
    scores = {}

    def check(epoch, _entry):
        nonlocal scores
        if epoch % CHECK_EVERY == 0 or epoch == max_steps:
            scores = train_mode_scores(model, tasks, images)
            if memorised(tasks, scores):
                print(f"{name}: memorised after {epoch} steps of {n_rows} crops: {scores}")  # shown with -s
                raise _Memorised

    try:
        fit(model, tasks, images, settings, workdir=tmp_path, progress=False, on_epoch_end=check)
    except _Memorised:
        pass
    assert memorised(tasks, scores), (name, scores)


def test_fan_au_perfect_heatmaps_read_back_as_the_training_labels(distinct_root):
    """The intensity task's loss target and its readout agree: heatmaps equal to the targets that
    the loss regresses on the DISFA crops score an ICC of 1.0 (so fan-au's stall is in learning)."""
    from affbench.data.augment import Augmentation
    from affbench.data.loader import ShardImages, crop_landmarks
    from affbench.encoders import fan
    from affbench.training.evaluation import evaluation_loader, score_tasks

    prepared, tasks = _tiny_tasks(distinct_root, "disfa", ("au-intensity",), 8)
    spec = create_encoder("fan-au", input_size=64).spec
    images = ShardImages(prepared.folder, spec.input_size, Augmentation(), points=crop_landmarks(prepared))
    (batch,) = list(evaluation_loader(images, tasks[0].rows["train"], batch_size=8, num_workers=0,
                                      device=torch.device("cpu"), persistent=False))
    y = torch.as_tensor(tasks[0].y[batch["row"].numpy()])
    assert (y > 0).any() and (y == 0).any()
    target = fan.heatmap_targets(fan.au_points(batch["points"], spec.aus), y, spec.heatmap_size, spec.input_size)
    scores = score_tasks(tasks, "train", {"au": fan.au_intensities(target).numpy()}, batch["row"].numpy(), spec)
    assert scores["au-intensity"]["icc"] == pytest.approx(1.0)
