"""Shared fixtures. Everything is generated here; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

# Two cores are shared by the whole suite; more threads only add contention, and OpenMP threads
# that spin while they wait made CPU convolutions about 10x slower on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    """The three sample datasets (DISFA, CAER-S, Aff-Wild2 layouts), written once per session."""
    from affbench.pipelines.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("sample-data"))


@pytest.fixture(scope="session")
def detector():
    """The MTCNN the pipelines share in this process (default settings, CPU), loaded once."""
    from affbench.faces.detection import DetectorSettings, shared_detector

    return shared_detector(DetectorSettings(), "cpu")


@pytest.fixture(scope="session")
def dask_scheduler(tmp_path_factory):
    """The address of a Dask scheduler with two single-threaded worker processes, started as a user
    would (`dask scheduler`, `dask worker`), in processes of their own; once per session."""
    distributed = pytest.importorskip("distributed")
    folder = tmp_path_factory.mktemp("dask")
    address_file = folder / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    log = (folder / "log.txt").open("w")
    quiet = {"stdout": log, "stderr": log, "cwd": folder}
    started = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(address_file)], **quiet)]
    try:
        started.append(subprocess.Popen([*dask, "worker", "--scheduler-file", str(address_file), "--nworkers", "2",
                                         "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"], **quiet))
        deadline = time.monotonic() + 60
        while not address_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        with distributed.Client(scheduler_file=str(address_file), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            address = client.scheduler.address
        yield address
    finally:
        for process in reversed(started):  # workers first: they leave the scheduler cleanly
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
