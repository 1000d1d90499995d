"""`affbench run-benchmark ... --scheduler ADDRESS`: a suite's jobs on a real Dask cluster (a scheduler
and two single-threaded worker processes, see tests/conftest.py), against a local run."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness_fixtures import chained_suite

from affbench.benchmarks.harness import run_benchmark
from affbench.cli import app

pytest.importorskip("distributed")

# Three tiny jobs: EmotiRAM-f on CAER-S on its own; fan-au on DISFA, then EmotiRAM-FAU on CAER-S
# starting from fan-au's selected weights (it must wait for that job).
SUITE = chained_suite("cluster", solo="first")

#: What says which job a record is of, and with what: the same in both runs, exactly. (The numbers
#: may differ in the last float bits: Dask's workers run PyTorch with one thread.)
IDENTITY = ("suite", "dataset", "task", "encoder", "fold", "experiment", "config_hash", "job", "n", "excluded",
            "init_from", "epochs", "selected_epoch", "steps", "training", "encoder_options", "data", "mode")


#: Lists whose length depends on the floating-point noise of training: a Dask worker trains with one
#: thread, this process with two, so after one step a prediction that is exactly constant here (a
#: 0/0 ICC, one more degenerate-metric warning) may vary by 1e-11 there.
DATA_DEPENDENT_LISTS = {"metric_warnings", "validation_metric_warnings"}


def shape(value):
    """A record's structure: its nested keys and the types of its values (for the warning lists, only
    that they are lists of strings)."""
    if isinstance(value, dict):
        return {key: _text_list(item) if key in DATA_DEPENDENT_LISTS else shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def _text_list(value) -> str:
    return "list of str" if isinstance(value, list) and all(isinstance(i, str) for i in value) else shape(value)


def records(run_dir: Path) -> dict[str, dict]:
    return {path.relative_to(run_dir).as_posix(): json.loads(path.read_text())
            for path in sorted((run_dir / "results").rglob("*.json"))}


def test_every_job_runs_once_on_the_cluster_after_its_source_with_the_records_of_a_local_run(
        dask_scheduler, prepared_root, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(textwrap.dedent(SUITE))
    local = run_benchmark(suite, prepared_root, tmp_path / "local", device="cpu", progress=False, log=lambda m: None)
    assert local.cells_written == 3

    out = tmp_path / "dask"
    result = CliRunner().invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root), "--out",
                                      str(out), "--scheduler", dask_scheduler, "--no-plots"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "3 cell(s): 0 already finished, 3 written" in result.output
    lines = result.output.splitlines()
    trained = [line.split("] ", 1)[1].split(":")[0] for line in lines if "] train " in line]
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert sorted(key.removeprefix("train ") for key in trained) == jobs  # every job trained, each once
    finished = [line.split()[1] for line in lines if line.startswith("finished ")]
    fan, fau = (next(key for key in jobs if name in key) for name in ("-fan-au-", "-emotiram-fau-"))
    assert finished.index(fan) < finished.index(fau)  # the dependent job came back after its source
    # ... and was not even started before it: its worker would have waited on the source's lock.
    assert not [line for line in lines if "waiting for job" in line]

    ours, theirs = records(out), records(tmp_path / "local")
    assert ours.keys() == theirs.keys()
    for name, record in ours.items():
        assert shape(record) == shape(theirs[name]), name
        assert {k: record[k] for k in IDENTITY} == {k: theirs[name][k] for k in IDENTITY}, name

    again = CliRunner().invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root), "--out",
                                     str(out), "--scheduler", dask_scheduler, "--no-plots"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "3 cell(s): 3 already finished, 0 written" in again.output


def test_a_job_on_a_dask_worker_may_start_dataloader_worker_processes(dask_scheduler):
    import distributed

    def start_a_process() -> int:  # nested, so that Dask sends it by value: the workers cannot import this module
        """What a job's DataLoader does with --workers N: a fork of the worker process."""
        from affbench.benchmarks.cluster_jobs import _allow_child_processes

        # A daemon, as Dask starts its worker processes (an earlier job on this worker cleared it).
        multiprocessing.current_process().daemon = True
        _allow_child_processes()
        child = multiprocessing.get_context("fork").Process(target=os.getpid)
        child.start()
        child.join()
        return child.exitcode

    with distributed.Client(dask_scheduler) as client:
        assert client.submit(start_a_process, pure=False).result() == 0


def test_an_unreachable_scheduler_is_one_sentence_before_any_job(prepared_root, tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(textwrap.dedent(SUITE))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    result = CliRunner().invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root), "--out",
                                      str(tmp_path / "run"), "--scheduler", address])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Cannot reach the Dask scheduler at {address} (")
    assert "Traceback" not in result.output
    assert not (tmp_path / "run" / "jobs").exists()
