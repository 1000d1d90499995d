"""Reference recipes: the losses against their formulas (expected values computed here with plain
numpy from the formulas, never by the code under test), the settings that switch each difference
from the reference code, and the suites that chain ME-GraphAU's two stages."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch

from affbench.training.evaluation import score_tasks
from affbench.training.losses import (
    AUDetectionLoss,
    VALoss,
    edge_loss,
    occurrence_weights,
    weighted_asymmetric_loss,
)
from affbench.training.settings import TrainSettings, build_optimizer, build_scheduler
from affbench.training.tasks import TaskData

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Spec:
    def __init__(self, au_output="probabilities", heads=None, name="toy", options=None):
        self.au_output, self.name, self.aus = au_output, name, None
        self.heads = heads or {"au": 3}
        self.options = options or {}


def _task(kind, y, mask, train, names, output_key, metrics=("f1",)):
    from affbench.scoring.protocols import TaskSpec

    n = len(names)
    spec = TaskSpec(name=kind, kind=kind, label_columns=tuple(names) if kind != "expression" else ("expression",),
                    output_key=output_key, n_outputs=n, label_names=tuple(names), metrics=metrics,
                    primary_metric=metrics[0], split_column=None)
    empty = np.zeros(0, np.int64)
    return TaskData(spec, np.asarray(y), np.asarray(mask, bool),
                    {"train": np.asarray(train), "val": empty, "test": np.asarray(train)})


# ----------------------------------------------------------------------------------------- losses

Y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 1]], dtype=np.float64)
P = np.array([[0.9, 0.2, 0.6], [0.3, 0.1, 0.8], [0.7, 0.55, 0.4], [0.05, 0.35, 0.95]])


def test_occurrence_weights_are_inverse_rates_normalised_to_mean_one():
    # Rates 2/4, 1/4, 3/4 -> inverses 2, 4, 4/3, sum 22/3 -> weights 3 * (6/22, 12/22, 4/22).
    np.testing.assert_allclose(occurrence_weights(Y, np.ones_like(Y, bool)), [18 / 22, 36 / 22, 12 / 22])


def test_weighted_asymmetric_loss_matches_the_formula_and_detaches_the_negative_factor():
    w = np.array([18 / 22, 36 / 22, 12 / 22])
    expected = np.mean(-w * (Y * np.log(P) + (1 - Y) * P * np.log(1 - P)))
    p = torch.tensor(P, requires_grad=True)
    value = weighted_asymmetric_loss(p, torch.tensor(Y), torch.tensor(w))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)
    value.backward()
    # d/dp of -(1/N) w (1 - y) c log(1 - p) with c = p held constant: w c / (N (1 - p)).
    grad_negative = w * P / (Y.size * (1 - P))
    grad_positive = -w / (Y.size * P)
    np.testing.assert_allclose(p.grad.numpy(), np.where(Y == 1, grad_positive, grad_negative), rtol=1e-10)


def test_au_loss_setting_switches_to_the_weighted_asymmetric_loss_with_training_weights():
    y = np.vstack([Y, [[1, 1, 1]]])  # the last row is not a training row: it must not change the weights
    task = _task("au-detection", y, np.ones_like(y, bool), [0, 1, 2, 3], ["au1", "au2", "au4"], "au")
    loss = AUDetectionLoss(task, _Spec(), TrainSettings(au_loss="weighted-asymmetric"), "cpu")
    w = np.array([18 / 22, 36 / 22, 12 / 22])
    np.testing.assert_allclose(loss.au_weight.numpy(), w, rtol=1e-6)
    value = loss({"au": torch.tensor(P, dtype=torch.float32)}, torch.arange(4), {})
    expected = np.mean(-w * (Y * np.log(P) + (1 - Y) * P * np.log(1 - P)))
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_edge_loss_is_cross_entropy_against_two_yi_plus_yj_over_every_ordered_pair():
    y = np.array([[1, 0], [1, 1]], dtype=np.float64)
    logits = np.random.default_rng(0).normal(size=(2, 4, 4))
    # Ordered pairs (i, j) -> row i * 2 + j; class 2 y_i + y_j, the pairs i = j included.
    classes = np.array([[3, 2, 1, 0], [3, 3, 3, 3]])
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean(np.take_along_axis(log_softmax, classes[..., None], -1))
    assert float(edge_loss(torch.tensor(logits), torch.tensor(y))) == pytest.approx(expected, rel=1e-12)
    # Pairs touching an unannotated AU leave the mean.
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    kept = [(0, 0)] + [(1, e) for e in range(4)]
    expected_masked = -np.mean([log_softmax[b, e, classes[b, e]] for b, e in kept])
    assert float(edge_loss(torch.tensor(logits), torch.tensor(y), mask)) == pytest.approx(expected_masked, rel=1e-12)


def test_edge_loss_weight_adds_lambda_times_the_edge_term_and_needs_an_edge_output():
    task = _task("au-detection", Y, np.ones_like(Y, bool), [0, 1, 2, 3], ["au1", "au2", "au4"], "au")
    spec = _Spec(heads={"au": 3, "au_edges": 4})
    edges = torch.randn(4, 9, 4)
    outputs = {"au": torch.tensor(P, dtype=torch.float32), "au_edges": edges}
    plain = AUDetectionLoss(task, spec, TrainSettings(au_loss="weighted-asymmetric"), "cpu")(outputs, torch.arange(4), {})
    with_edges = AUDetectionLoss(task, spec, TrainSettings(au_loss="weighted-asymmetric", edge_loss_weight=0.05),
                                 "cpu")(outputs, torch.arange(4), {})
    expected_edge = float(edge_loss(edges, torch.tensor(Y, dtype=torch.float32)))
    assert float(with_edges) == pytest.approx(float(plain) + 0.05 * expected_edge, rel=1e-6)
    from affbench.errors import AffbenchError

    with pytest.raises(AffbenchError, match="au_edges"):
        AUDetectionLoss(task, _Spec(), TrainSettings(edge_loss_weight=0.05), "cpu")


def _reference_ccc(x, y, ddof):
    """The ABAW3 training loss's CCC: Pearson's rho times standard deviations with ``ddof``."""
    vx, vy = x - x.mean(), y - y.mean()
    rho = np.sum(vx * vy) / (np.sqrt(np.sum(vx**2)) * np.sqrt(np.sum(vy**2)))
    sx, sy = np.std(x, ddof=ddof), np.std(y, ddof=ddof)
    return 2 * rho * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


def test_va_loss_with_ccc_ddof_1_matches_the_abaw3_reference_loss():
    rng = np.random.default_rng(4)
    truth = rng.uniform(-1, 1, (6, 2))
    pred = truth * 0.5 + 0.3 + rng.normal(0, 0.2, (6, 2))
    task = _task("va", truth, np.ones_like(truth, bool), np.arange(6), ["valence", "arousal"], "va", ("ccc",))
    outputs = {"va": torch.tensor(pred, dtype=torch.float32)}
    for ddof in (0, 1):
        value = VALoss(task, _Spec(heads={"va": 2}), TrainSettings(ccc_ddof=ddof), "cpu")(outputs, torch.arange(6), {})
        expected = sum(1 - _reference_ccc(truth[:, j], pred[:, j], ddof) for j in range(2))
        assert float(value) == pytest.approx(expected, rel=1e-5)
    # The two definitions differ on a batch this small (why the setting exists).
    assert abs(_reference_ccc(truth[:, 0], pred[:, 0], 1) - _reference_ccc(truth[:, 0], pred[:, 0], 0)) > 1e-3


# ----------------------------------------------------------------------------------------- optimiser


def test_cosine_steps_schedule_follows_cosine_annealing_lr_past_t_max():
    reference_model = torch.nn.Linear(1, 1)
    reference_opt = torch.optim.SGD(reference_model.parameters(), lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(reference_opt, T_max=10)
    ours_opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
    ours = build_scheduler(ours_opt, TrainSettings(schedule="cosine-steps", cosine_steps=10, lr=1.0), 7)
    for _ in range(25):  # past T_max: the rate rises again, as PyTorch's does
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(reference_opt.param_groups[0]["lr"], abs=1e-9)
        reference_opt.step(), ours_opt.step()
        reference.step(), ours.step()
    assert ours_opt.param_groups[0]["lr"] > 0.5  # step 25: 0.5 * (1 + cos(2.5 pi)) = 0.5, then rising


def test_weight_decay_on_weights_spares_biases_and_normalisation_layers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 5, 5))
    optimizer = build_optimizer(model, TrainSettings(optimizer="adam", weight_decay=1e-5, weight_decay_on="weights"))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 1e-5 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    everything = build_optimizer(model, TrainSettings(optimizer="adam", weight_decay=1e-5))
    assert sum(len(g["params"]) for g in everything.param_groups if g["weight_decay"] == 1e-5) == 6


def test_settings_added_later_keep_old_hashes_at_their_defaults():
    assert "au_loss" not in TrainSettings().result_dict()
    assert TrainSettings(au_loss="weighted-asymmetric").result_dict()["au_loss"] == "weighted-asymmetric"


# ----------------------------------------------------------------------------------------- scoring


def test_expression_macro_f1_leaves_out_classes_absent_from_truth_and_prediction():
    from sklearn.metrics import f1_score

    from affbench.scoring.protocols import TaskSpec
    from affbench.scoring.scorer import score_task

    names = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "other")
    task = TaskSpec(name="expression", kind="expression", label_columns=("expression",), output_key="expression",
                    n_outputs=8, label_names=names, metrics=("f1",), primary_metric="f1", split_column=None)
    truth = np.array([0, 0, 1, 1, 4, 4, 4, 7, 7, 0])
    predicted = np.array([0, 1, 1, 1, 4, 4, 0, 7, 4, 0])  # classes 2, 3, 5, 6 in neither
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = score_task(task, truth, predicted)
    assert scores["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert scores["f1"] > f1_score(truth, predicted, labels=range(8), average="macro", zero_division=0)
    assert math.isnan(scores["f1/fear"]) and scores["f1/anger"] == pytest.approx(0.8)
    assert any("neither the truth nor the prediction" in str(w.message) for w in caught)


def test_score_tasks_collects_degenerate_metric_warnings_instead_of_hiding_them():
    y = np.array([[1, 0], [1, 0], [0, 0], [1, 0]], dtype=np.float32)  # au2 never occurs
    task = _task("au-detection", y, np.ones_like(y, bool), np.arange(4), ["au1", "au2"], "au")
    notes: dict[str, list[str]] = {}
    outputs = {"au": np.array([[2.0, -1.0], [1.0, -2.0], [-1.0, -1.0], [3.0, 1.0]])}
    scores = score_tasks([task], "test", outputs, np.arange(4), _Spec("logits", heads={"au": 2}), notes=notes)
    assert scores["au-detection"]["f1/au2"] == 0.0
    assert any("au2" in note and "no positive" in note for note in notes["au-detection"])


# ----------------------------------------------------------------------------------------- Fan et al.


def test_reference_code_graph_nodes_are_blocks_of_nhwc_memory():
    from affbench.encoders.fan import SemanticCorrespondence

    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 3)
    outputs = {}
    for nodes in ("channels", "reference-code"):
        scc = SemanticCorrespondence(3, k=1, nodes=nodes).eval()  # k = 1: each node's own edge only
        weight = scc.edge_conv.weight.detach().flatten(1).numpy()[:, :9]  # the W x_i half ([x_i, x_j - x_i])
        outputs[nodes] = (scc(x).detach().numpy(), weight, scc.bn.eps)
    data = x.numpy()
    out, weight, eps = outputs["reference-code"]
    # numpy, as the TF code: NHWC memory read as (C, H*W), transformed, written back as NHWC.
    blocks = data.transpose(0, 2, 3, 1).reshape(2, 4, 9)
    expected = np.maximum(blocks @ weight.T / np.sqrt(1 + eps), 0).reshape(2, 3, 3, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    out, weight, eps = outputs["channels"]
    expected = np.maximum(data.reshape(2, 4, 9) @ weight.T / np.sqrt(1 + eps), 0).reshape(2, 4, 3, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_reference_code_input_is_bgr_minus_means_and_targets_scale_by_255():
    from affbench.data.loader import normalise
    from affbench.encoders.registry import create_encoder, get_encoder_spec

    spec = get_encoder_spec("fan-au", input_size=64, input_normalisation="reference-code")
    pixel = torch.tensor([200, 100, 50], dtype=torch.uint8).view(1, 3, 1, 1)  # R, G, B
    fed = normalise(pixel, spec.mean, spec.std).flip(1).flatten()  # what the trunk sees (the net flips)
    np.testing.assert_allclose(fed.numpy(), [50 - 123.68, 100 - 116.78, 200 - 103.94], atol=1e-3)
    model = create_encoder("fan-au", input_size=64, heatmap_scale=255.0)
    heatmaps = torch.zeros(1, 24, 16, 16)
    heatmaps[0, 0, 3, 3], heatmaps[0, 1, 5, 5] = 255.0 * 2.0, 255.0 * 3.0
    assert float(model.intensities(heatmaps)[0, 0]) == pytest.approx(2.5)


def test_fan_heatmap_output_starts_at_the_reference_scale_relative_to_its_targets():
    """The reference starts its output convolution at MSRA scale for targets x255: the first heatmaps
    are a few percent of the targets. With targets x1 the start is scaled down alike (an MSRA start
    there was 6x the targets, and the learnability run stalled at the mean heatmap)."""
    from affbench.encoders.registry import create_encoder

    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    spread = {}
    for scale in (1.0, 255.0):
        torch.manual_seed(0)  # the same draws: the two models differ in the head's scale only
        model = create_encoder("fan-au", input_size=64, heatmap_scale=scale).train()
        with torch.no_grad():
            spread[scale] = float(model(images)["heatmaps"].pow(2).mean().sqrt())
        fan_in = model.heatmap_net.heatmap_head.weight[0].numel()
        std = float(model.heatmap_net.heatmap_head.weight.detach().std())
        assert std == pytest.approx(math.sqrt(2 / fan_in) * scale / 255, rel=0.15)  # MSRA at 255
    # Targets peak at scale x intensity (0-5): the first outputs are about a hundredth of that, at either scale.
    assert spread[1.0] < 0.05 and spread[255.0] < 0.05 * 255
    assert spread[255.0] / spread[1.0] == pytest.approx(255, rel=0.05)
    # EmotiRAM-FAU's heatmaps are not regressed: they feed its bottleneck, from an MSRA start.
    head = create_encoder("emotiram-fau", input_size=64, heatmap_scale=1.0).heatmap_net.heatmap_head.weight.detach()
    assert float(head.std()) == pytest.approx(math.sqrt(2 / head[0].numel()), rel=0.15)


# ----------------------------------------------------------------------------------------- suites


def test_abaw3_suite_uses_the_reference_ccc_loss_and_schedule():
    from affbench.benchmarks.suite import load_suite

    training = load_suite("abaw3").training
    assert (training.ccc_ddof, training.schedule, training.cosine_steps) == (1, "cosine-steps", 10000)


def _tiny_disfa_suite(selection: str):
    """The shipped disfa-au suite's ME-GraphAU cells, shrunk to one step on the test data."""
    from affbench.benchmarks.suite import SUITES_DIR, parse_suite

    data = tomllib.loads((SUITES_DIR / "disfa-au.toml").read_text())
    data["experiment"] = [e for e in data["experiment"] if e["encoder"] == "megraph-au"]
    kept = {e["id"] for e in data["experiment"]}  # published values of dropped experiments go too
    data["published"] = [p for p in data.get("published", []) if p["experiment"] in kept]
    for experiment in data["experiment"]:
        experiment["options"] = {k: v for k, v in experiment["options"].items() if k != "pretrained"}
        experiment["options"]["input_size"] = 64
        experiment["folds"] = [1]
        experiment["training"].update(epochs=1, max_steps=1, batch_size=4, num_workers=0, selection=selection)
    return parse_suite(data)


def test_disfa_suite_chains_megraph_stage1_into_stage2_with_the_reference_losses(tmp_path, prepared_root):
    from affbench.benchmarks.harness import run_benchmark
    from affbench.benchmarks.suite import load_suite
    from affbench.reporting.records import load_records

    shipped = {e.id: e for e in load_suite("disfa-au").experiments}
    stage1, stage2 = shipped["megraph-stage1"], shipped["megraph"]
    assert stage1.options["stage"] == 1 and stage2.options["stage"] == 2 and stage2.options["edge_head"]
    assert stage2.init.experiment == "megraph-stage1" and stage2.init.option == "stage1_checkpoint"
    assert stage1.training.au_loss == stage2.training.au_loss == "weighted-asymmetric"
    assert stage1.training.edge_loss_weight == 0 and stage2.training.edge_loss_weight > 0
    assert stage1.training.selection == "validation"  # the honest default

    run_dir = tmp_path / "run"
    run_benchmark(_tiny_disfa_suite("reference-last-epoch"), prepared_root, run_dir, device="cpu", progress=False,
                  log=lambda message: None)
    records = {r["encoder"]: r for r in load_records(run_dir)}
    assert set(records) == {"megraph-au-stage1", "megraph-au"}
    first, second = records["megraph-au-stage1"], records["megraph-au"]
    assert second["init_from"]["experiment"] == "megraph-stage1"
    assert first["job"] in second["initialisation"] and "ANFL" in second["initialisation"]
    assert "weighted asymmetric" in first["loss"] and "edges" in second["loss"] and "edges" not in first["loss"]
    # The record says which selection protocol produced it.
    assert first["selection_protocol"] == second["selection_protocol"] == "reference-last-epoch"
    assert "reference protocol" in first["selection"] and first["n"]["val"] == 0
    # Stage 2 started from stage 1's weights: the trunk it loaded is stage 1's selected trunk.
    from affbench.encoders.registry import create_encoder
    from affbench.training.checkpoints import load_model_state

    stage1_state = load_model_state(run_dir / "jobs" / first["job"] / "best.pt")
    rebuilt = create_encoder("megraph-au", stage=2, edge_head=True, input_size=64,
                             stage1_checkpoint=str(run_dir / "jobs" / first["job"] / "best.pt"))
    assert torch.equal(rebuilt.state_dict()["backbone.conv1.weight"], stage1_state["backbone.conv1.weight"])


def test_the_reference_selection_protocol_is_its_own_job_and_trains_on_the_validation_subjects(prepared_root):
    from affbench.benchmarks.harness import _Runner
    from affbench.benchmarks.plan import DataCache, make_plan

    honest, reference = _tiny_disfa_suite("validation"), _tiny_disfa_suite("reference-last-epoch")
    plans = {name: make_plan(suite, prepared_root) for name, suite in (("honest", honest), ("reference", reference))}
    # Different protocols are different jobs (never one's checkpoint for the other).
    assert plans["honest"].jobs[0].config_hash != plans["reference"].jobs[0].config_hash
    rows = {}
    for name, suite in (("honest", honest), ("reference", reference)):
        runner = _Runner(plans[name], DataCache(prepared_root, suite), prepared_root / "unused", "cpu",
                         num_workers=0, progress=False, log=lambda m: None, on_epoch_end=None)
        rows[name] = runner.task_data(plans[name].jobs[0])[1][0].rows
    assert len(rows["honest"]["val"]) > 0 and len(rows["reference"]["val"]) == 0
    np.testing.assert_array_equal(rows["reference"]["train"],
                                  np.union1d(rows["honest"]["train"], rows["honest"]["val"]))
    np.testing.assert_array_equal(rows["reference"]["test"], rows["honest"]["test"])
