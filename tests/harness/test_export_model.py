"""export-model: a finished job folder becomes one self-describing model file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

from affbench.benchmarks.harness import run_benchmark
from affbench.cli import app
from affbench.data.prepared import open_prepared
from affbench.faces.alignment import AlignmentTemplate
from affbench.inference.predict import load_model

SUITE = """
[suite]
name = "export"
description = "one tiny job whose weights are kept"

[training]
epochs = 1
max_steps = 2
batch_size = 8
num_workers = 0
seed = 3
keep_weights = true

[training.augmentation]
eval_crop = 0.875

[[experiment]]
id = "caer-f"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 48 }
"""


def test_export_model_writes_a_file_that_describes_the_job(tmp_path, prepared_root):
    suite = tmp_path / "export.toml"
    suite.write_text(SUITE)
    run_dir = tmp_path / "run"
    run_benchmark(suite, prepared_root, run_dir, device="cpu", progress=False, log=lambda m: None)
    job = next((run_dir / "jobs").iterdir())
    out = tmp_path / "model.pt"
    result = CliRunner().invoke(app, ["export-model", str(job), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "expression" in result.output and str(out) in result.output

    blob = torch.load(out, map_location="cpu", weights_only=True)
    description = blob["affbench_model"]
    prepared = open_prepared(prepared_root, "caer-s")
    protocol_task = next(t for t in prepared.manifest["protocol"]["tasks"] if t["name"] == "expression")
    assert description["tasks"][0]["label_names"] == list(protocol_task["label_names"])
    assert description["encoder"] == "emotiram-f" and description["options"]["input_size"] == 48
    done = json.loads((job / "done.json").read_text())
    assert description["metrics"] == done["metrics"]
    assert description["initialisation"] == done["initialisation"]
    assert description["eval_crop"] == 0.875
    alignment = prepared.manifest["parameters"]["alignment"]
    assert AlignmentTemplate.from_description(description["alignment"]) == AlignmentTemplate.from_description(alignment)
    assert description["crop_size"] == alignment["size"]
    best = torch.load(job / "best.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(blob["state_dict"][k], v) for k, v in best.items())

    model = load_model(out, device="cpu")
    crops = np.full((2, alignment["size"], alignment["size"], 3), 128, np.uint8)
    table = model.predict(crops)
    assert list(table.columns) == ["expression", *protocol_task["label_names"]]
    np.testing.assert_allclose(table[list(protocol_task["label_names"])].sum(axis=1), 1.0, atol=1e-6)


def test_export_model_explains_what_is_missing(tmp_path):
    job = tmp_path / "jobs" / "caer-s-emotiram-f-expression-fold1-abc"
    job.mkdir(parents=True)
    runner = CliRunner()
    result = runner.invoke(app, ["export-model", str(job), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code != 0 and "has not finished training" in result.output
    (job / "done.json").write_text("{}")
    result = runner.invoke(app, ["export-model", str(job), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code != 0 and "did not record model descriptions" in result.output
    result = runner.invoke(app, ["export-model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.pt")])
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not (tmp_path / "m.pt").exists() and not Path("m.pt").exists()
