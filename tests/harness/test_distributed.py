"""affbench.training.ddp and torchrun: each rank's slice of the batches, the gather before scoring, and
``torchrun --nproc_per_node=2 affbench run-benchmark`` on the CPU (gloo), killed and resumed."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from affbench.data.loader import RowGroupBatchSampler
from affbench.errors import AffbenchError
from affbench.training.ddp import Distribution, RankBatches

# ----------------------------------------------------------------------------------------- per-rank data


@pytest.mark.parametrize("world", [2, 3, 4])
def test_each_rank_takes_a_disjoint_equal_slice_of_every_batch(world):
    rows = np.arange(5, 150, 2)  # 73 rows, 10 row groups
    groups = np.arange(200) // 16
    batch = 12
    one_process = RowGroupBatchSampler(rows, groups, batch, shuffle=True, seed=3, drop_last=True)
    ranks = [RankBatches(RowGroupBatchSampler(rows, groups, batch, shuffle=True, seed=3, drop_last=True),
                         Distribution(world, rank, rank)) for rank in range(world)]
    first_slices = {}
    for epoch in (0, 1):
        one_process.set_epoch(epoch)
        for sampler in ranks:
            sampler.set_epoch(epoch)
        per_rank = [list(sampler) for sampler in ranks]
        whole = list(one_process)
        # Equal steps on every rank, as many as one process takes with the global batch.
        assert [len(s) for s in ranks] == [len(b) for b in per_rank] == [len(whole)] * world
        for step, batch_keys in enumerate(whole):
            slices = [per_rank[rank][step] for rank in range(world)]
            flat = [key for piece in slices for key in piece]
            assert flat == batch_keys  # together the slices are the batch: disjoint, covering, in order
            sizes = {len(piece) for piece in slices}
            assert sizes == {batch // world} if batch % world == 0 else max(sizes) - min(sizes) <= 1
        first_slices[epoch] = per_rank[0]
    assert first_slices[0] != first_slices[1]  # another epoch, another order


def test_fewer_rows_than_ranks_still_give_every_rank_a_batch():
    rows = np.arange(1)
    for rank in range(2):
        sampler = RankBatches(RowGroupBatchSampler(rows, np.zeros(1, int), 8, shuffle=True, drop_last=True),
                              Distribution(2, rank, rank))
        assert [len(b) for b in sampler] == [1]


def test_evaluation_shares_are_contiguous_disjoint_and_cover_the_rows():
    rows = np.arange(100, 111)  # 11 rows over 2 and 3 ranks
    for world in (2, 3):
        shares = [Distribution(world, r, r).share(rows) for r in range(world)]
        assert np.array_equal(np.concatenate(shares), rows)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_global_batch_must_divide_among_the_ranks():
    assert Distribution(4, 0, 0).per_rank_batch(32) == 8
    with pytest.raises(AffbenchError, match="batch_size 30 does not divide among 4 processes"):
        Distribution(4, 1, 1).per_rank_batch(30)


def test_each_rank_draws_its_own_dropout_masks():
    def masks(distribution):
        torch.manual_seed(0)  # what seed_everything leaves on every rank
        distribution.seed_rank(0)
        return torch.nn.functional.dropout(torch.ones(1000), p=0.5, training=True)

    rank0, rank1 = masks(Distribution(2, 0, 0)), masks(Distribution(2, 1, 1))
    assert not torch.equal(rank0, rank1)
    torch.manual_seed(0)
    alone = torch.nn.functional.dropout(torch.ones(1000), p=0.5, training=True)
    assert torch.equal(masks(Distribution()), alone)  # one process: the generator is left as seeded


def test_torchrun_environment():
    assert Distribution.from_environment({}) == Distribution(1, 0, 0)
    assert Distribution.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Distribution(4, 3, 1)
    with pytest.raises(AffbenchError, match="RANK 4 does not fit WORLD_SIZE 4"):
        Distribution.from_environment({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(AffbenchError, match="whole numbers"):
        Distribution.from_environment({"WORLD_SIZE": "two"})


def test_data_loader_workers_share_the_cores_among_the_ranks_of_a_machine(monkeypatch):
    import torch

    from affbench.training.evaluation import choose_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert choose_workers(torch.device("cuda", 0), None) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert choose_workers(torch.device("cuda", 0), None) == 3  # 4 cores each, one for the training loop
    assert choose_workers(torch.device("cuda", 0), 6) == 6


# ----------------------------------------------------------------------------------------- gather


def _gather_on_rank(rank: int, store: str, out: str) -> None:
    """Runs in a forked process: rank ``rank`` of two (gloo); writes what it gathered to ``out``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    distribution = Distribution(2, rank, rank)
    results = {}
    # 11 rows: rank 0 predicts 6, rank 1 five; outputs are made from the row ids to be checked.
    rows = np.arange(40, 51)
    mine = distribution.share(rows)
    outputs = {"au": (mine[:, None] * np.array([1, 2, 3])).astype(np.float32),
               "expression": np.repeat(mine[:, None], 7, axis=1).astype(np.float32)}
    gathered = distribution.gather(mine, outputs, keys=["au", "expression"], expected=rows)
    results.update(au=gathered["au"], expression=gathered["expression"])
    # One row: rank 1 has none and sends nothing but the size of nothing.
    mine = distribution.share(rows[:1])
    lonely = distribution.gather(mine, {"au": np.full((len(mine), 3), 7.0, np.float32)} if len(mine) else {},
                                 keys=["au"], expected=rows[:1])
    results["lonely"] = lonely["au"]
    try:  # rows that are not the ones shared out are refused
        distribution.gather(distribution.share(rows), outputs, keys=["au"], expected=rows[::-1])
        results["refused"] = np.array(False)
    except RuntimeError:
        results["refused"] = np.array(True)
    results["sum"] = np.array(distribution.sum([rank + 1.0]))
    try:  # a decision that fails on rank 0 fails on every rank with its sentence
        distribution.decide(lambda: (_ for _ in ()).throw(AffbenchError("no such suite")))
        results["decided"] = np.array("")
    except AffbenchError as exc:
        results["decided"] = np.array(str(exc))
    dist.destroy_process_group()
    np.savez(out, **results)


def test_gathered_outputs_hold_every_row_once(tmp_path):
    context = multiprocessing.get_context("fork")  # no re-import of torch: a second or two
    processes = [context.Process(target=_gather_on_rank, args=(r, str(tmp_path / "store"), str(tmp_path / f"{r}.npz")))
                 for r in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    rows = np.arange(40, 51)
    for rank in range(2):
        got = np.load(tmp_path / f"{rank}.npz")
        assert got["au"].shape == (11, 3) and np.array_equal(got["au"][:, 0], rows)  # no padding row, no repeat
        assert np.array_equal(got["au"], rows[:, None] * np.array([1, 2, 3]))
        assert np.array_equal(got["expression"][:, 3], rows)
        assert got["lonely"].shape == (1, 3)
        assert bool(got["refused"])
        assert got["sum"].tolist() == [3.0]
        assert str(got["decided"]) == "no such suite"


# ----------------------------------------------------------------------------------------- claims


def _claim_on_rank(rank: int, store: str, run_dir: str, out: str) -> None:
    """Runs in a forked process: rank ``rank`` of two asks RankZeroClaims about jobs "a" and "b"."""
    import torch.distributed as dist

    from affbench.benchmarks.claims import JobClaims, RankZeroClaims

    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    claims = RankZeroClaims(JobClaims(run_dir), Distribution(2, rank, rank), poll_seconds=0.05)
    seen = {"a": claims.try_claim("a"), "a_holder": claims.holder("a"), "b": claims.try_claim("b")}
    claims.release("a")
    seen["a_after"] = claims.holder("a")
    claims.wait("b")  # a poll: the test process lets go of "b" after a second
    seen["b_later"] = claims.try_claim("b")
    claims.release("b")
    seen["pid"] = os.getpid()
    dist.destroy_process_group()
    Path(out).write_text(json.dumps(seen))


def test_rank_0_claims_each_job_for_every_rank(tmp_path):
    from affbench.benchmarks.claims import JobClaims

    other = JobClaims(tmp_path / "run")  # another run-benchmark process on the same folder
    assert other.try_claim("b")
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_claim_on_rank,
                                 args=(r, str(tmp_path / "store"), str(tmp_path / "run"), str(tmp_path / f"{r}.json")))
                 for r in range(2)]
    for process in processes:
        process.start()
    time.sleep(1.0)
    other.release("b")
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    seen = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for answers in seen:
        # Both ranks get rank 0's answers: "a" claimed (held by rank 0), "b" held elsewhere, then free.
        assert answers["a"] is True and answers["a_holder"] == seen[0]["pid"]
        assert answers["b"] is False and answers["a_after"] is None and answers["b_later"] is True


# ----------------------------------------------------------------------------------------- torchrun

SUITE = """
[suite]
name = "ddp"
description = "two processes on the CPU"

[training]
batch_size = 8
optimizer = "adamw"
lr = 1e-3
num_workers = 0
seed = 1

[[experiment]]
id = "quick"
variant = "quick"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 32 }
training = { epochs = 1, max_steps = 1 }

[[experiment]]
id = "long"
variant = "long"
dataset = "caer-s"
tasks = ["expression"]
encoder = "emotiram-f"
options = { input_size = 32 }
training = { epochs = 8, seed = 2, keep_weights = true }
"""


def torchrun_command(*args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=2 --no-python affbench ...`` with this Python's torchrun
    (``python -m torch.distributed.run`` is the ``torchrun`` script) and console script."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    script = Path(sys.executable).parent / "affbench"
    if script.is_file():
        return [*torchrun, "--no-python", str(script), *args]
    return [*torchrun, "-m", "affbench.cli", *args]  # installed elsewhere (pip --user): the same program


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's reaper may be slow)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _single_process_test_metrics(data: Path, weights: Path):
    """The test metrics of ``weights`` scored in this one process, as the harness builds the task."""
    from affbench.data.augment import Augmentation
    from affbench.data.cache import images_with_cache
    from affbench.data.prepared import open_prepared
    from affbench.encoders.registry import create_encoder
    from affbench.scoring.protocols import Protocol
    from affbench.training.checkpoints import load_model_state
    from affbench.training.evaluation import evaluate_tasks
    from affbench.training.tasks import TaskData

    prepared = open_prepared(data, "caer-s", columns=["expression"])
    protocol = Protocol.from_dict(prepared.protocol_dict)
    split = protocol.split_indices(prepared.meta, "expression", 1)
    y, mask = protocol.targets(prepared.meta, "expression")
    task = TaskData(protocol.task("expression"), y, mask,
                    {r: np.asarray(split[r], dtype=np.int64) for r in ("train", "val", "test")})
    model = create_encoder("emotiram-f", input_size=32)
    model.load_state_dict(load_model_state(weights))
    images, _ = images_with_cache(prepared.folder, 32, Augmentation())  # as the harness reads them
    return evaluate_tasks(model, [task], images, batch_size=5), len(task.rows["test"])


@pytest.mark.slow
def test_torchrun_trains_each_job_with_ddp_scores_every_test_row_once_and_resumes_after_a_kill(
        tmp_path, prepared_root):
    suite = tmp_path / "ddp.toml"
    suite.write_text(textwrap.dedent(SUITE))
    run_dir = tmp_path / "run"
    command = torchrun_command("run-benchmark", "--suite", str(suite), "--data", str(prepared_root),
                               "--out", str(run_dir), "--device", "cpu", "--no-plots")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}

    # First run: "quick" finishes, then the whole torchrun process group is killed inside "long".
    log = tmp_path / "first.log"
    with log.open("wb") as sink:  # a file, not a pipe that could fill up and stall the run
        first = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline, checkpoint = time.monotonic() + 240, None
    results = run_dir / "results" / "ddp"
    while time.monotonic() < deadline and first.poll() is None and checkpoint is None:
        # "long" is training once "quick" has its record and another job has a last.pt.
        if any(results.glob("*.json")):
            checkpoint = next((p for p in run_dir.glob("jobs/*/last.pt") if not (p.parent / "done.json").exists()),
                              None)
        time.sleep(0.05)
    ranks = _children(first.pid)
    # torchrun starts each rank in a session of its own: killing torchrun's group leaves the ranks,
    # which must notice that their launcher is gone and stop.
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert checkpoint is not None, log.read_text()[-3000:]
    assert len(ranks) == 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(pid) for pid in ranks):
        time.sleep(0.05)
    assert not any(_running(pid) for pid in ranks)
    (quick,) = results.glob("*.json")
    assert not (checkpoint.parent / "done.json").exists()
    stamp = quick.stat().st_mtime_ns

    # Second run: "quick" is skipped, "long" resumes from its last epoch.
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert second.stdout.count("skip caer-s-emotiram-f") == 1 and "resuming after epoch" in second.stdout
    assert second.stdout.count("cell(s):") == 1  # rank 0 reports, rank 1 does not
    records = sorted(results.glob("*.json"))
    assert len(records) == 2  # one record per cell
    assert quick.stat().st_mtime_ns == stamp  # not retrained, not even rewritten
    long = next(json.loads(p.read_text()) for p in records if p != quick)
    assert long["world_size"] == 2 and long["global_batch_size"] == 8
    assert long["resumed_from"] >= 1 and long["epochs"] == 8
    # Steps as one process takes with the global batch: 34 training rows // 8 = 4 per epoch.
    assert long["steps"] == 8 * 4
    assert json.loads((run_dir / "run.json").read_text())["runs"][-1]["world_size"] == 2

    # Every test row scored once: the record's metrics are those of the same weights scored here.
    metrics, n_test = _single_process_test_metrics(prepared_root, run_dir / "jobs" / long["job"] / "best.pt")
    assert long["n"]["test"] == n_test == 21
    assert long["metrics"] == pytest.approx(metrics["expression"], abs=1e-9)
