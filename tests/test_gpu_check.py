"""benchmarks/speed/gpu_check.py: refuses without CUDA in one sentence; its --tiny CPU mode runs every step.

The CUDA path itself needs a GPU machine; here only the script's logic is checked.
"""

from __future__ import annotations

import math

import torch

from affbench.benchmarks.speed import gpu_check


def test_without_cuda_it_refuses_in_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--work", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "has none" in error and error.count("\n") == 1
    assert gpu_check.main(["--device", "cpu", "--work", str(tmp_path)]) == 2  # a CPU run only with --tiny
    assert gpu_check.main(["--device", "cpu", "--tiny", "--families", "nope", "--work", str(tmp_path)]) == 2
    assert "Unknown encoder family 'nope'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_tiny_mode_runs_prepare_a_training_epoch_from_the_cache_and_predict(tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--frames", "2", "--families", "caer",
                           "--work", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    table = [line.split("|")[1:-1] for line in output[output.index("| step |"):].splitlines()
             if line.startswith("| ") and not line.startswith("| step")]
    steps = {cells[0].strip().split(" (")[0]: [c.strip() for c in cells] for cells in table}
    assert set(steps) == {"prepare", "train caer", "predict"}
    assert float(steps["prepare"][2].split()[0]) > 0
    rate, wait = float(steps["train caer"][2].split()[0]), float(steps["train caer"][3])
    assert math.isfinite(rate) and rate > 0 and 0.0 <= wait <= 1.0
    assert steps["train caer"][1] == "emotiram-f (48)"
    assert float(steps["predict"][2].split()[0]) > 0
    # Training read the decoded cache beside the prepared shards.
    assert any((tmp_path / "prepared-2-cpu" / "disfa" / "cache").glob("decoded-*/pixels.npy"))
