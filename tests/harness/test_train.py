"""affbench.training.fit: losses against their formulas, settings, and a seeded, resumable fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from affbench.errors import AffbenchError
from affbench.scoring.scorer import task_scores
from affbench.training.evaluation import evaluate_tasks
from affbench.training.fit import fit, seed_everything
from affbench.training.losses import AUDetectionLoss, ExpressionLoss, VALoss
from affbench.training.settings import TrainSettings, build_optimizer, build_scheduler
from affbench.training.tasks import TaskData, check_compatible


class _Spec:
    """The parts of an EncoderSpec the losses read."""

    def __init__(self, au_output="logits", heads=None, name="toy", aus=None):
        self.au_output, self.name, self.aus = au_output, name, aus
        self.heads = heads or {"au": 3}


def _au_task(y, mask, train):
    from affbench.scoring.protocols import TaskSpec

    spec = TaskSpec(name="au-detection", kind="au-detection", label_columns=("au1", "au2", "au4"), output_key="au",
                    n_outputs=3, label_names=("au1", "au2", "au4"), metrics=("f1",), primary_metric="f1",
                    split_column=None, binarize_at=2)
    empty = np.zeros(0, np.int64)
    return TaskData(spec, y.astype(np.float32), mask, {"train": np.asarray(train), "val": empty, "test": empty})


def test_au_loss_uses_negatives_over_positives_from_training_rows_only():
    y = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 0], [1, 1, 1], [1, 1, 1]])
    mask = np.ones_like(y, bool)
    mask[1, 2] = False  # unannotated: not counted
    task = _au_task(y, mask, train=[0, 1, 2])  # rows 3 and 4 are not training rows
    loss = AUDetectionLoss(task, _Spec("logits"), TrainSettings(), "cpu")
    # au1: 1 positive, 2 negatives; au2: 1 and 2; au4: 1 positive (row 1 masked), 1 negative.
    np.testing.assert_allclose(loss.pos_weight.numpy(), [2.0, 2.0, 1.0])

    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.2, -0.7], [-0.4, 0.9, 0.1], [0.0, 0.0, 0.0]])
    rows = torch.tensor([0, 1, 2, 3])
    value = float(loss({"au": logits}, rows, {}))
    # By hand: weighted BCE over annotated entries of training rows (row 3 is not one).
    terms = []
    for r in range(3):
        for j in range(3):
            if not mask[r, j]:
                continue
            p = 1 / (1 + math.exp(-float(logits[r, j])))
            w = float(loss.pos_weight[j])
            terms.append(-(w * y[r, j] * math.log(p) + (1 - y[r, j]) * math.log(1 - p)))
    assert value == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_au_loss_on_probabilities_matches_the_logit_form():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    task = _au_task(y, np.ones_like(y, bool), train=[0, 1, 2])
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.2, -0.7], [-0.4, 0.9, 0.1]])
    rows = torch.arange(3)
    on_logits = AUDetectionLoss(task, _Spec("logits"), TrainSettings(), "cpu")({"au": logits}, rows, {})
    on_probabilities = AUDetectionLoss(task, _Spec("probabilities"), TrainSettings(), "cpu")(
        {"au": torch.sigmoid(logits)}, rows, {})
    assert float(on_probabilities) == pytest.approx(float(on_logits), rel=1e-5)


def test_expression_loss_balanced_weights_are_inverse_frequency():
    from affbench.scoring.protocols import TaskSpec

    spec = TaskSpec(name="expression", kind="expression", label_columns=("expression",), output_key="expression",
                    n_outputs=3, label_names=("a", "b", "c"), metrics=("accuracy",), primary_metric="accuracy")
    y = np.array([0, 0, 0, 1, 2, 2])
    task = TaskData(spec, y, np.ones(6, bool), {"train": np.arange(6), "val": np.zeros(0, int), "test": np.zeros(0, int)})
    loss = ExpressionLoss(task, _Spec(heads={"expression": 3}), TrainSettings(class_weights="balanced"), "cpu")
    np.testing.assert_allclose(loss.weight.numpy(), [6 / 9, 6 / 3, 6 / 6], rtol=1e-6)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.cross_entropy(logits, torch.as_tensor(y), weight=loss.weight)
    assert float(loss({"expression": logits}, torch.arange(6), {})) == pytest.approx(float(expected))
    plain = ExpressionLoss(task, _Spec(heads={"expression": 3}), TrainSettings(class_weights="none"), "cpu")
    np.testing.assert_array_equal(plain.weight.numpy(), [1, 1, 1])


def test_va_loss_is_two_minus_the_two_cccs():
    from affbench.scoring.metrics import ccc
    from affbench.scoring.protocols import TaskSpec

    spec = TaskSpec(name="va", kind="va", label_columns=("valence", "arousal"), output_key="va", n_outputs=2,
                    label_names=("valence", "arousal"), metrics=("ccc",), primary_metric="ccc", missing_values=())
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
    mask = np.ones_like(y, bool)
    mask[2, 1] = False  # arousal of row 2 unannotated
    task = TaskData(spec, y, mask, {"train": np.arange(8), "val": np.zeros(0, int), "test": np.zeros(0, int)})
    predicted = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
    value = float(VALoss(task, _Spec(heads={"va": 2}), TrainSettings(), "cpu")({"va": torch.from_numpy(predicted)},
                                                                               torch.arange(8), {}))
    keep = mask[:, 1]
    expected = (1 - ccc(y[:, 0], predicted[:, 0])) + (1 - ccc(y[keep, 1], predicted[keep, 1]))
    assert value == pytest.approx(expected, rel=1e-4)


def test_task_scores_turn_outputs_into_probabilities():
    from affbench.scoring.protocols import TaskSpec

    au = _au_task(np.zeros((1, 3)), np.ones((1, 3), bool), [0]).spec
    np.testing.assert_allclose(task_scores(au, _Spec("logits"), np.array([[0.0, 100.0, -100.0]])), [[0.5, 1.0, 0.0]], atol=1e-12)
    # Intensities: 0.5 falls at the occurrence threshold (2), so >= 2 means detected.
    np.testing.assert_allclose(task_scores(au, _Spec("intensities"), np.array([[2.0, 1.0, 5.0]])), [[0.5, 0.25, 1.0]])
    expression = TaskSpec(name="e", kind="expression", label_columns=("e",), output_key="expression", n_outputs=2,
                          label_names=("a", "b"), metrics=("accuracy",), primary_metric="accuracy")
    np.testing.assert_allclose(task_scores(expression, _Spec(), np.array([[0.0, math.log(3)]])), [[0.25, 0.75]])


def test_compatibility_errors_are_clear():
    au = _au_task(np.zeros((1, 3)), np.ones((1, 3), bool), [0]).spec
    with pytest.raises(AffbenchError, match="has no 'au' output"):
        check_compatible(au, _Spec(heads={"expression": 7}))
    with pytest.raises(AffbenchError, match="outputs 8 au values but task 'au-detection' has 3"):
        check_compatible(au, _Spec(heads={"au": 8}))
    with pytest.raises(AffbenchError, match="predicts au1, au2, au6 but task 'au-detection' scores au1, au2, au4"):
        check_compatible(au, _Spec(heads={"au": 3}, aus=(1, 2, 6)))


def test_settings_errors_name_the_valid_values():
    with pytest.raises(AffbenchError, match="Unknown training setting 'learning_rate'; the settings are: .*lr"):
        TrainSettings.from_dict({"learning_rate": 0.1})
    with pytest.raises(AffbenchError, match="Unknown optimizer 'lbfgs'; valid optimizers are: sgd, rmsprop, adam, adamw"):
        TrainSettings.from_dict({"optimizer": "lbfgs"})
    merged = TrainSettings.from_dict({"augmentation": {"hflip": 0.5}}).merged({"augmentation": {"crop": 0.9}, "lr": 1})
    assert merged.augmentation.hflip == 0.5 and merged.augmentation.crop == 0.9 and merged.lr == 1.0


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedules(schedule):
    model = torch.nn.Linear(2, 2)
    settings = TrainSettings(lr=1.0, epochs=4, schedule=schedule, step_epochs=(2,), optimizer="sgd")
    optimizer = build_optimizer(model, settings)
    scheduler = build_scheduler(optimizer, settings, steps_per_epoch=5)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    if schedule == "cosine":
        assert rates[0] == 1.0 and rates[10] == pytest.approx(0.5) and rates[-1] < 0.01
    else:
        assert rates[9] == 1.0 and rates[10] == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------- fit


def _caer_tasks(prepared_root):
    from affbench.data.prepared import open_prepared
    from affbench.scoring.protocols import Protocol

    prepared = open_prepared(prepared_root, "caer-s", columns=["expression"])
    protocol = Protocol.from_dict(prepared.protocol_dict)
    split = protocol.split_indices(prepared.meta, "expression", 1)
    y, mask = protocol.targets(prepared.meta, "expression")
    rows = {r: np.asarray(split[r]) for r in ("train", "val", "test")}
    return prepared, [TaskData(protocol.task("expression"), y, mask, rows)]


SETTINGS = TrainSettings(epochs=3, batch_size=8, optimizer="adamw", lr=1e-3, schedule="cosine", seed=5,
                         num_workers=0, augmentation={"hflip": 0.5, "crop": 0.9, "rotate": 5})


def _train(prepared_root, workdir, on_epoch_end=None):
    from affbench.data.loader import ShardImages
    from affbench.encoders.registry import create_encoder

    prepared, tasks = _caer_tasks(prepared_root)
    seed_everything(SETTINGS.seed)
    model = create_encoder("emotiram-f", input_size=48)
    images = ShardImages(prepared.folder, 48, SETTINGS.augmentation)
    result = fit(model, tasks, images, SETTINGS, workdir=workdir, progress=False, on_epoch_end=on_epoch_end)
    return model, result, tasks, images


@pytest.mark.slow
def test_fit_is_repeatable_and_resumes_exactly(prepared_root, tmp_path):
    model_a, result_a, tasks, images = _train(prepared_root, tmp_path / "a")
    assert result_a.epochs_run == 3 and result_a.resumed_from is None
    assert (tmp_path / "a" / "best.pt").is_file() and (tmp_path / "a" / "last.pt").is_file()
    assert result_a.best_epoch == 1 + int(np.nanargmax([h["val_score"] for h in result_a.history]))

    model_b, result_b, _, _ = _train(prepared_root, tmp_path / "b")
    assert [h["train_loss"] for h in result_b.history] == [h["train_loss"] for h in result_a.history]

    def interrupt(epoch, entry):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(prepared_root, tmp_path / "c", on_epoch_end=interrupt)
    model_c, result_c, _, _ = _train(prepared_root, tmp_path / "c")
    assert result_c.resumed_from == 2 and result_c.epochs_run == 3
    assert [h["train_loss"] for h in result_c.history] == [h["train_loss"] for h in result_a.history]
    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), name

    test = evaluate_tasks(model_a, tasks, images)
    assert set(test["expression"]) >= {"accuracy", "f1", "f1/happy"}
    assert 0.0 <= test["expression"]["accuracy"] <= 1.0


def test_validation_warnings_are_kept_in_the_epoch_history(prepared_root, tmp_path):
    """A validation F1 averaged over classes that neither truth nor prediction has is qualified by a
    warning: fit keeps it with the epoch (the harness copies the selected epoch's into the record)."""
    from affbench.data.loader import ShardImages
    from affbench.encoders.registry import create_encoder

    prepared, (task,) = _caer_tasks(prepared_root)
    val = task.rows["val"]
    one_class = val[task.y[val] == task.y[val][0]][:3]  # 3 rows of one class: at most 4 of 7 classes appear
    task = TaskData(task.spec, task.y, task.mask, {**task.rows, "val": one_class})
    settings = TrainSettings(epochs=1, max_steps=1, batch_size=8, optimizer="adamw", lr=1e-3, schedule="none", seed=0,
                             num_workers=0, augmentation={})
    seed_everything(0)
    model = create_encoder("emotiram-f", input_size=48)
    result = fit(model, [task], ShardImages(prepared.folder, 48, settings.augmentation), settings, workdir=tmp_path, progress=False)
    (entry,) = result.history
    assert any("neither the truth nor the prediction" in note for note in entry["val_warnings"]["expression"])


def test_excluding_fallback_crops_is_a_result_setting_that_leaves_earlier_hashes_alone():
    default = TrainSettings()
    strict = TrainSettings.from_dict({"exclude_fallback_crops": True})
    assert "exclude_fallback_crops" not in default.result_dict()  # records made before it keep their hash
    assert strict.result_dict()["exclude_fallback_crops"] is True
    assert default.merged({"exclude_fallback_crops": True}) == strict


@pytest.mark.parametrize("setting, value, message", [
    ("weight_decay", float("inf"), "training.weight_decay must be a finite number of at least 0; got inf."),
    ("lr", float("nan"), "training.lr must be a finite number above 0; got nan."),
    ("lr", "fast", "training.lr must be a finite number above 0; got 'fast'."),
    ("momentum", 1.5, "training.momentum must be a finite number in [0, 1); got 1.5."),
    ("grad_clip", float("inf"), "training.grad_clip must be a finite number above 0; got inf."),
    ("heatmap_sigma", 0.0, "training.heatmap_sigma must be a finite number above 0; got 0.0."),
    ("step_factor", float("-inf"), "training.step_factor must be a finite number above 0; got -inf."),
    ("edge_loss_weight", float("nan"), "training.edge_loss_weight must be a finite number of at least 0; got nan."),
    ("epochs", 2.5, "training.epochs must be an integer of at least 1; got 2.5."),
    ("batch_size", True, "training.batch_size must be an integer of at least 1; got True."),
    ("seed", -1, "training.seed must be an integer of at least 0; got -1."),
    ("eval_batch_size", 0, "training.eval_batch_size must be an integer of at least 1; got 0."),
    ("step_epochs", [2, "x"], "training.step_epochs must be an integer of at least 1; got 'x'."),
])
def test_every_numeric_setting_must_be_finite_and_in_range(setting, value, message):
    with pytest.raises(AffbenchError) as caught:
        TrainSettings.from_dict({setting: value})
    assert str(caught.value) == message


def test_numeric_settings_keep_their_types_and_defaults_pass():
    settings = TrainSettings.from_dict({"lr": 1, "weight_decay": 0, "grad_clip": 5, "step_epochs": [3, 6]})
    assert settings.lr == 1.0 and isinstance(settings.lr, float) and isinstance(settings.weight_decay, float)
    assert settings.grad_clip == 5.0 and settings.step_epochs == (3, 6) and settings.max_steps is None
    assert TrainSettings().result_dict() == TrainSettings.from_dict({}).result_dict()
