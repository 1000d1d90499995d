"""Several run-benchmark processes on one run folder (benchmarks/claims.py): each job trains once,
a dependent job waits for its source, a killed holder's lock is taken over, shared files lose no
update; and --list-jobs / --job for job arrays."""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from harness_fixtures import chained_suite

from affbench.benchmarks.claims import JobClaims, append_run
from affbench.benchmarks.harness import run_benchmark
from affbench.benchmarks.plan import list_jobs
from affbench.cli import app
from affbench.reporting.records import load_records

# fan-au on DISFA (A); EmotiRAM-FAU on CAER-S starting from A's weights (B); EmotiRAM-f on CAER-S (C).
CHAINED = chained_suite("chained", solo="last")

ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def suite_file(tmp_path: Path, text: str = CHAINED) -> Path:
    path = tmp_path / "chained.toml"
    path.write_text(textwrap.dedent(text))
    return path


def command(suite: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-P", "-m", "affbench.cli", "run-benchmark", "--suite", str(suite), "--data", str(data),
            "--out", str(out), "--device", "cpu", "--no-plots", *extra]


def job_ids(suite: Path, data: Path) -> tuple[str, str, str]:
    ids = list_jobs(suite, data)
    fan = next(k for k in ids if "-fan-au-" in k)
    fau = next(k for k in ids if "-emotiram-fau-" in k)
    plain = next(k for k in ids if "-emotiram-f-" in k)
    return fan, fau, plain


def trained(output: str) -> list[str]:
    """The jobs a run-benchmark output says it trained (or resumed, or evaluated)."""
    return re.findall(r"^(?:train|resume) (\S+):", output, flags=re.MULTILINE)


# ----------------------------------------------------------------------------------------- many processes


@pytest.mark.slow
def test_two_processes_on_one_run_folder_train_every_job_once(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    both = [subprocess.Popen(command(suite, prepared_root, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=ENV) for _ in range(2)]
    outputs = [p.communicate()[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], "\n---\n".join(outputs)

    counts = collections.Counter(trained(outputs[0]) + trained(outputs[1]))
    assert counts == {key: 1 for key in list_jobs(suite, prepared_root)}, "\n---\n".join(outputs)
    records = load_records(out)
    assert sorted(r["encoder"] for r in records) == ["emotiram-f", "emotiram-fau", "fan-au"]
    fan, fau, _ = job_ids(suite, prepared_root)
    assert next(r for r in records if r["job"] == fau)["init_from"]["job"] == fan
    # Both processes' summaries are in run.json, and no lock file is left behind.
    assert len(json.loads((out / "run.json").read_text())["runs"]) == 2
    assert list((out / "locks").iterdir()) == []
    assert not list(out.glob(".*.lock"))


@pytest.mark.slow
def test_a_dependent_job_waits_for_the_process_that_trains_its_source(tmp_path, prepared_root):
    """While this process trains A, `--job B` in another process waits for A instead of training it."""
    suite, out = suite_file(tmp_path), tmp_path / "run"
    fan, fau, _ = job_ids(suite, prepared_root)
    other: list[subprocess.Popen] = []
    other_lines: list[str] = []

    def start_the_other_while_training(job, epoch, entry):
        process = subprocess.Popen(command(suite, prepared_root, out, "--job", fau), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=ENV)
        other.append(process)
        for line in process.stdout:  # until it says that it waits (or ends, and the assertion shows why)
            other_lines.append(line)
            if line.startswith("waiting for job"):
                break

    messages: list[str] = []
    run_benchmark(suite, prepared_root, out, device="cpu", progress=False, log=messages.append, job=fan,
                  on_epoch_end=start_the_other_while_training)
    assert other_lines and other_lines[-1].strip() == f"waiting for job {fan}, which process {os.getpid()} runs", \
        "".join(other_lines)
    rest = other[0].communicate()[0]
    output = "".join(other_lines) + rest
    assert other[0].returncode == 0, output
    assert trained("\n".join(messages)) == [fan] and trained(output) == [fau]
    assert {r["job"] for r in load_records(out)} == {fan, fau}


# Forked, not started afresh: a new interpreter would spend seconds importing torch for a few file operations.
FORK = multiprocessing.get_context("fork")


def _claim_and_sleep(run_dir: Path, held) -> None:
    assert JobClaims(run_dir).try_claim("job-a")
    held.set()
    time.sleep(120)


def test_a_killed_holders_claim_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    held = FORK.Event()
    holder = FORK.Process(target=_claim_and_sleep, args=(run_dir, held))
    holder.start()
    assert held.wait(120)
    claims = JobClaims(run_dir)
    assert claims.holder("job-a") == holder.pid
    assert not claims.try_claim("job-a")
    assert claims.try_claim("job-b")  # one lock per job: another job is free
    holder.kill()  # SIGKILL: no clean-up at all
    holder.join()
    assert claims.holder("job-a") is None  # the kernel dropped the dead holder's lock; its file is still there
    assert claims.path("job-a").is_file()
    assert claims.try_claim("job-a")
    claims.release("job-a")
    claims.release("job-b")
    assert list(claims.folder.iterdir()) == []


def _append_runs(run_dir: Path, writer: int, start) -> None:
    start.wait()
    for i in range(25):
        append_run(run_dir, {"writer": writer, "i": i})


def test_concurrent_run_summaries_are_all_kept(tmp_path):
    """run.json is read, extended and written by every process that ends: none may lose another's entry."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    start = FORK.Event()
    writers = [FORK.Process(target=_append_runs, args=(run_dir, n, start)) for n in range(4)]
    for process in writers:
        process.start()
    start.set()  # all start writing together
    for process in writers:
        process.join()
        assert process.exitcode == 0
    runs = json.loads((run_dir / "run.json").read_text())["runs"]
    assert sorted((r["writer"], r["i"]) for r in runs) == [(n, i) for n in range(4) for i in range(25)]


def test_verified_shards_of_another_process_are_kept(tmp_path, prepared_root, monkeypatch):
    """Two processes verify different datasets into one run folder's verified-shards.json; the one
    that finishes hashing last must not drop the other's entries."""
    from affbench.shards import integrity
    from affbench.shards.reader import ShardReader

    cache = tmp_path / "run" / "verified-shards.json"
    caer, disfa = ShardReader(prepared_root / "caer-s"), ShardReader(prepared_root / "disfa")
    real = integrity.file_sha256
    interleaved: list[int] = []
    calls = []

    def hash_while_the_other_process_finishes(path):
        calls.append(path)
        if len(calls) == 1:  # the other process reads, hashes and writes while we hash our first shard
            interleaved.append(integrity.verify_shards(disfa, cache))
        return real(path)

    monkeypatch.setattr(integrity, "file_sha256", hash_while_the_other_process_finishes)
    integrity.verify_shards(caer, cache)
    remembered = json.loads(cache.read_text())
    monkeypatch.setattr(integrity, "file_sha256", real)
    assert len(remembered) == len(caer.shards) + len(disfa.shards) and interleaved[0] == len(disfa.shards)
    assert integrity.verify_shards(disfa, cache) == 0 and integrity.verify_shards(caer, cache) == 0


# ----------------------------------------------------------------------------------------- job arrays


def test_list_jobs_prints_the_ids_in_dependency_order_and_trains_nothing(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    result = CliRunner().invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root),
                                      "--out", str(out), "--list-jobs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    fan, fau, plain = job_ids(suite, prepared_root)
    assert sorted(lines) == sorted([fan, fau, plain])
    assert lines.index(fan) < lines.index(fau)  # the source before the job that starts from it
    assert not out.exists()

    narrowed = CliRunner().invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root),
                                        "--out", str(out), "--list-jobs", "--encoders", "emotiram-fau"])
    assert narrowed.output.splitlines() == [fan, fau]  # what a job starts from is listed with it


def test_job_runs_exactly_that_job_and_refuses_what_it_cannot(tmp_path, prepared_root):
    suite, out = suite_file(tmp_path), tmp_path / "run"
    fan, fau, plain = job_ids(suite, prepared_root)

    def run(*extra):
        return CliRunner().invoke(app, ["run-benchmark", "--suite", str(suite), "--data", str(prepared_root), "--out",
                                        str(out), "--device", "cpu", "--no-plots", *extra])

    result = run("--job", plain, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert trained(result.output) == [plain] and [r["job"] for r in load_records(out)] == [plain]

    unknown = run("--job", "caer-s-nope-fold1-0123456789")
    assert unknown.exit_code == 1 and "Traceback" not in unknown.output
    assert unknown.output.strip() == (
        "Error: Suite chained has no job 'caer-s-nope-fold1-0123456789' with these options; --list-jobs lists its "
        "jobs (give it the same --encoders, --folds, --epochs and --max-steps).")

    too_early = run("--job", fau)  # its source has not run, and no process runs it
    assert too_early.exit_code == 1 and "Traceback" not in too_early.output
    assert too_early.output.strip() == (f"Error: Job {fau} starts from job {fan}, which has not run; "
                                        f"run that job first (--job {fan}).")
    assert [r["job"] for r in load_records(out)] == [plain]


@pytest.mark.slow
def test_a_narrowed_run_keeps_weights_that_another_encoders_run_starts_from(tmp_path, prepared_root):
    """keep_weights = false: the run of --encoders fan-au alone must not delete the weights that
    a run of --encoders emotiram-fau (another process, or later) starts from, or A trains twice."""
    suite = suite_file(tmp_path, chained_suite("chained", solo="last", training="keep_weights = false\n"))
    out = tmp_path / "run"
    fan, fau, _ = job_ids(suite, prepared_root)
    first: list[str] = []
    run_benchmark(suite, prepared_root, out, encoders=["fan-au"], device="cpu", progress=False, log=first.append)
    second: list[str] = []
    run_benchmark(suite, prepared_root, out, encoders=["emotiram-fau"], device="cpu", progress=False,
                  log=second.append)
    assert trained("\n".join(first)) == [fan] and trained("\n".join(second)) == [fau], second
