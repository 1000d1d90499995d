"""The prepare runner's integrity rules: one process per output folder, workers that end with their
parent, collision-free unit files, redoing units whose inputs changed or whose items failed, and a
full disk that stops the run with one sentence."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from affbench.errors import AffbenchError
from affbench.preparation.units import OutputWriteError, UnitOutcome, run_units
from affbench.runtime.locks import LOCK_NAME, FolderBusyError
from affbench.shards.manifest import DatasetWriter
from affbench.shards.reader import ShardReader
from affbench.shards.schema import make_schema
from affbench.shards.writer import ShardWriter


class Unit:
    def __init__(self, key: str, size: int = 5, inputs: str | None = None):
        self.key, self.size, self.inputs = key, size, inputs


def open_writer(out: Path) -> DatasetWriter:
    return DatasetWriter(out, dataset="toy", parameters={"size": 32}, schema=make_schema())


def make_row(unit: str, i: int) -> dict:
    return {"sample_id": f"toy/{unit}/{i:06d}", "dataset": "toy", "subject": unit, "face_found": False}


def toy_process(out: Path, calls: list[str], rows: int = 5):
    """Writes ``rows`` rows for a unit (3 per shard) and notes which units it was called for."""

    def process(unit, tick):
        calls.append(unit.key)
        with ShardWriter(out, unit.key, make_schema(), rows_per_shard=3) as writer:
            writer.write_many(make_row(unit.key, i) for i in range(rows))
        return UnitOutcome(unit.key, writer.shards)

    return process


# ----------------------------------------------------------------------------------------- names


def test_unit_names_that_differ_only_in_other_characters_or_in_case_keep_their_own_shards(tmp_path):
    out = tmp_path / "prepared"
    names = ["clip 1", "clip-1", "vidéo7", "vid-o7", "视频", "Clip", "clip", "."]
    summary = run_units(open_writer(out), [Unit(n) for n in names], toy_process(out, []), progress=False)
    assert summary.ok and summary.units_done == len(names)

    manifest = json.loads((out / "manifest.json").read_text())
    files = [s["file"] for unit in manifest["units"].values() for s in unit["shards"]]
    assert len(files) == 2 * len(names)  # 5 rows at 3 per shard
    assert len({f.lower() for f in files}) == len(files)  # distinct even on a case-insensitive disk
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(Path(f).name for f in files)
    subjects = ShardReader(out).table(columns=["subject"]).column("subject").to_pylist()
    assert sorted(subjects) == sorted(n for n in names for _ in range(5))  # each unit's rows, once
    assert ShardReader(out).verify() == []


# ----------------------------------------------------------------------------------------- redo


def test_a_unit_whose_inputs_changed_is_redone_and_others_are_kept(tmp_path):
    out = tmp_path / "prepared"
    calls: list[str] = []
    run_units(open_writer(out), [Unit("A", inputs="a1"), Unit("B", inputs="b1")], toy_process(out, calls), progress=False)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}

    calls.clear()
    summary = run_units(open_writer(out), [Unit("A", inputs="a1"), Unit("B", inputs="b2")], toy_process(out, calls),
                        progress=False)
    assert calls == ["B"] and summary.units_changed == ["B"] and summary.units_skipped == 1
    assert "redone because their input files changed: 1 (B)" in summary.lines()
    assert json.loads((out / "manifest.json").read_text())["units"]["B"]["inputs"] == "b2"
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in (out / "shards").iterdir()) if n in kept
            and n.startswith("A-")} == {n: t for n, t in kept.items() if n.startswith("A-")}

    calls.clear()
    run_units(open_writer(out), [Unit("A", inputs="a1"), Unit("B", inputs="b2")], toy_process(out, calls), progress=False)
    assert calls == []


def test_a_finished_unit_with_item_failures_is_redone_on_the_next_run(tmp_path):
    out = tmp_path / "prepared"
    calls: list[str] = []
    broken = {"B"}

    def process(unit, tick):
        calls.append(unit.key)
        with ShardWriter(out, unit.key, make_schema()) as writer:
            writer.write(make_row(unit.key, 0))
        failures = [{"unit": unit.key, "item": f"{unit.key}/1.png", "reason": "unreadable"}] if unit.key in broken else []
        return UnitOutcome(unit.key, writer.shards, failures=failures)

    summary = run_units(open_writer(out), [Unit("A"), Unit("B")], process, progress=False)
    assert summary.units_done == 2 and not summary.ok
    calls.clear()
    broken.clear()
    summary = run_units(open_writer(out), [Unit("A"), Unit("B")], process, progress=False)
    assert calls == ["B"] and summary.units_retried == ["B"] and summary.ok
    assert json.loads((out / "manifest.json").read_text())["failures"] == []


# ----------------------------------------------------------------------------------------- disk full, bad --out


def test_a_full_disk_stops_the_run_with_one_sentence_and_the_unit_stays_unfinished(tmp_path):
    out = tmp_path / "prepared"
    calls: list[str] = []
    toy = toy_process(out, calls)

    def process(unit, tick):
        if unit.key == "B":
            calls.append(unit.key)
            raise OSError(errno.ENOSPC, "No space left on device", str(out / "shards" / "B-00000.parquet"))
        return toy(unit, tick)

    with pytest.raises(OutputWriteError, match=r"Writing .*B-00000.parquet failed \(No space left on device\) while preparing B; free some space, then run the same command again"):
        run_units(open_writer(out), [Unit("A"), Unit("B"), Unit("C")], process, progress=False)
    assert calls == ["A", "B"]  # C is not tried: it would fail the same way
    units = json.loads((out / "manifest.json").read_text())["units"]
    assert sorted(units) == ["A"]  # B is not recorded as failed: the next run simply does it

    calls.clear()
    summary = run_units(open_writer(out), [Unit("A"), Unit("B"), Unit("C")], toy, progress=False)
    assert calls == ["B", "C"] and summary.ok


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_manifest_that_cannot_be_written_is_one_sentence(tmp_path, monkeypatch, error):
    import affbench.shards.manifest

    def refuse(path, text):
        raise OSError(error, os.strerror(error), str(path))

    monkeypatch.setattr(affbench.shards.manifest, "write_text_atomic", refuse)
    with pytest.raises(AffbenchError, match=rf"Cannot write .*manifest.json: {os.strerror(error)}; .*run the same command"):
        open_writer(tmp_path / "prepared")
    assert not (tmp_path / "prepared" / LOCK_NAME).exists()


def test_an_out_that_is_a_file_is_one_sentence(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(AffbenchError, match="is a file, not a folder"):
        open_writer(tmp_path / "out")


# ----------------------------------------------------------------------------------------- one process per folder


def test_a_second_writer_in_the_same_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "prepared"
    first = open_writer(out)
    with pytest.raises(FolderBusyError, match=rf"{out} is in use by process {os.getpid()} "):
        open_writer(out)
    first.close()
    second = open_writer(out)  # free again, and a closed folder keeps no lock file
    second.close()
    assert not (out / LOCK_NAME).exists()
    assert json.loads((out / "manifest.json").read_text())["dataset"] == "toy"


def test_a_file_system_without_locks_still_prepares_with_a_warning(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot be locked"):
        writer = open_writer(tmp_path / "prepared")
    writer.close()
    assert (tmp_path / "prepared" / "manifest.json").is_file()


def test_a_killed_holder_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "prepared"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from affbench.shards.manifest import DatasetWriter
        from affbench.shards.schema import make_schema
        writer = DatasetWriter({str(out)!r}, dataset="toy", parameters={{}}, schema=make_schema())
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderBusyError, match=f"process {holder.pid}"):
        DatasetWriter(out, dataset="toy", parameters={}, schema=make_schema())
    holder.kill()
    holder.wait()
    DatasetWriter(out, dataset="toy", parameters={}, schema=make_schema()).close()


# ----------------------------------------------------------------------------------------- orphan workers


WORKER_SCRIPT = """
import os, sys, time
from pathlib import Path
from affbench.preparation.units import UnitOutcome, run_units
from affbench.shards.manifest import DatasetWriter
from affbench.shards.schema import make_schema

pids = Path(sys.argv[2])

class Unit:
    def __init__(self, key):
        self.key, self.size = key, 1

def work(unit, tick):
    (pids / unit.key).write_text(str(os.getpid()))
    for _ in range(600):  # a long unit: about a minute of "frames"
        time.sleep(0.1)
        tick(0)
    return UnitOutcome(unit.key)

with DatasetWriter(sys.argv[1], dataset="toy", parameters={}, schema=make_schema()) as writer:
    run_units(writer, [Unit("a"), Unit("b")], work, workers=2, progress=False)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_soon_after_their_parent_is_killed(tmp_path, sig):
    pids = tmp_path / "pids"
    pids.mkdir()
    script = tmp_path / "prepare_toy.py"
    script.write_text(WORKER_SCRIPT)
    main = subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(pids)], cwd=tmp_path)
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and main.poll() is None:
        time.sleep(0.1)
    workers = [int(p.read_text()) for p in pids.iterdir()]
    assert len(workers) == 2 and main.poll() is None, "the workers did not start"
    main.send_signal(sig)
    main.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if _alive(pid)]
    for pid in left:  # do not leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, "worker processes outlived their parent"


# ----------------------------------------------------------------------------------------- how many workers


def _write_one_row(unit, tick, *, out: str):
    with ShardWriter(out, unit.key, make_schema(), rows_per_shard=3) as writer:
        writer.write(make_row(unit.key, 0))
    return UnitOutcome(unit.key, writer.shards)


def test_auto_workers_use_every_core_of_this_process_and_say_so(tmp_path):
    import functools

    import cloudpickle  # what loky sends functions with (installed with the test extra, through dask)

    # pytest imports this file under a name the workers cannot import: send its code by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "prepared"
    cores = len(os.sched_getaffinity(0))
    units = [Unit(f"u{i}", size=1) for i in range(cores + 1)]
    with open_writer(out) as writer:
        summary = run_units(writer, units, functools.partial(_write_one_row, out=str(out)), workers="auto",
                            progress=False)
    assert summary.ok and summary.workers == cores
    assert json.loads((out / "manifest.json").read_text())["info"]["workers"] == cores
    worded = "1 worker process" if cores == 1 else f"{cores} worker processes"
    assert any(worded in line for line in summary.lines())


def test_no_more_workers_than_units_and_a_finished_folder_is_left_as_it_was(tmp_path):
    import functools

    out = tmp_path / "prepared"
    process = functools.partial(_write_one_row, out=str(out))
    with open_writer(out) as writer:
        assert run_units(writer, [Unit("only", size=1)], process, workers=8, progress=False).workers == 1
    before = (out / "manifest.json").read_bytes()
    with open_writer(out) as writer:
        run_units(writer, [Unit("only", size=1)], process, workers="auto", progress=False)
    assert (out / "manifest.json").read_bytes() == before


def test_auto_workers_follow_the_affinity_mask_a_scheduler_sets():
    # Slurm, taskset and containers narrow the cores a process may use; os.cpu_count() ignores that.
    script = ("import os; from affbench.runtime.devices import resolve_workers; "
              "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(resolve_workers('auto'))")
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip() == "1"


def test_auto_workers_on_cuda_fit_in_the_gpus_free_memory(monkeypatch):
    import torch

    from affbench.runtime import devices

    monkeypatch.setattr(devices, "available_cores", lambda: 16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(3.5 * 2**30), 80 * 2**30))
    assert devices.resolve_workers("auto", "cuda") == 3  # 3 whole GiB free
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**29, 80 * 2**30))
    assert devices.resolve_workers("auto", "cuda:0") == 1  # always at least one
    assert devices.resolve_workers("auto", "cpu") == 16


def test_a_prepare_command_imports_neither_pytorch_nor_scikit_learn_before_its_workers_need_them():
    # Issue 22: the command's own process imported PyTorch to tell that a machine without a GPU has
    # none, and every process imported scikit-learn with the protocols: 3 of the 21 s of a 2,400-frame
    # DISFA run. Here the GPU driver nodes are made absent, as on a machine without a GPU.
    script = textwrap.dedent("""
        import sys
        from affbench.runtime import devices
        devices.GPU_DEVICE_NODES = ("/nonexistent/nvidiactl",)
        import affbench.pipelines.disfa, affbench.pipelines.bp4d, affbench.pipelines.caer_s
        print(devices.resolve_device("auto"), devices.resolve_device("cpu"),
              "torch" in sys.modules, "sklearn" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["cpu", "cpu", "False", "False"]


@pytest.mark.parametrize("workers", [0, -2, "many", 2.5, True])
def test_a_worker_count_that_is_not_a_number_or_auto_is_one_sentence(workers):
    from affbench.runtime.devices import resolve_workers

    with pytest.raises(AffbenchError, match="--workers must be a whole number of at least 1 or 'auto'"):
        resolve_workers(workers)


def _note_pixel_limit(unit, tick, *, out: str):
    from affbench.runtime.pixels import max_pixels

    Path(out, f"{unit.key}.limit").write_text(str(max_pixels()))
    return UnitOutcome(unit.key)


def test_worker_processes_use_the_pixel_limit_of_the_run_even_when_reused(tmp_path, monkeypatch):
    # loky keeps its worker processes between runs, so a limit set after they started must travel
    # with the work rather than through the environment they were started with.
    import functools

    import cloudpickle

    from affbench.runtime.pixels import ENV_VAR, set_max_pixels

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setenv(ENV_VAR, "")
    for limit, name in ((5_000, "first"), (7_000, "second")):
        set_max_pixels(limit)
        out = tmp_path / name
        with open_writer(out) as writer:
            run_units(writer, [Unit("a", size=1), Unit("b", size=1)],
                      functools.partial(_note_pixel_limit, out=str(out)), workers=2, progress=False)
        assert {p.read_text() for p in out.glob("*.limit")} == {str(limit)}
