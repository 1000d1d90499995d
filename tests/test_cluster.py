"""`affbench prepare ... --scheduler ADDRESS` on a real Dask cluster: a scheduler and two worker
processes on this machine (`dask scheduler`, `dask worker`: see conftest.py), against a local run of
the same command."""

from __future__ import annotations

import shutil
import socket
import sys

import pytest
from click.testing import CliRunner

from affbench.cli import app
from affbench.pipelines import affwild2
from affbench.pipelines import sample_data as sd
from affbench.runtime.dask_cluster import ClusterError
from affbench.shards.manifest import read_manifest

distributed = pytest.importorskip("distributed")

@pytest.fixture(scope="module")
def bp4d_root(tmp_path_factory):
    """The sample BP4D layout cut to F001's two tasks (320x240 frames), one for each worker."""
    root = sd.write_bp4d(tmp_path_factory.mktemp("bp4d"))
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        if path.name.startswith(("F003", "F007")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return root


@pytest.fixture(scope="module")
def affwild2_root(sample_data):
    return sample_data["affwild2"]


def shard_bytes(out) -> dict[str, bytes]:
    """Every shard file of a prepared folder, by name, and the manifest's record of each unit's shards."""
    files = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    units = {key: unit["shards"] for key, unit in read_manifest(out)["units"].items()}
    return {"files": files, "units": units}


def prepare(*args: str):
    return CliRunner().invoke(app, ["prepare", *args, "--quiet"], catch_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bp4d_on_the_cluster_gives_the_shards_of_a_local_run_with_the_device_settled_on_each_worker(
        dask_scheduler, bp4d_root, tmp_path, monkeypatch):
    local = prepare("bp4d", str(bp4d_root), "--out", str(tmp_path / "local"), "--device", "cpu")
    assert local.exit_code == 0, local.output
    # This process claims a GPU: were "auto" settled here, the workers (which have none) would be
    # told to use CUDA and every task would fail.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "dask"
    result = prepare("bp4d", str(bp4d_root), "--out", str(out), "--device", "auto", "--scheduler", dask_scheduler)
    assert result.exit_code == 0, result.output
    assert "units: 2 (0 already done, 2 processed, 0 failed)" in result.output
    assert shard_bytes(out) == shard_bytes(tmp_path / "local")
    manifest = read_manifest(out)
    assert {unit["stats"]["device"] for unit in manifest["units"].values()} == {"cpu"}
    assert manifest["totals"]["rows"] == 2 * (sd.BP4D_FRAMES - sd.BP4D_UNCODED)


def test_an_interrupted_cluster_prepare_resumes_and_ends_with_the_shards_of_a_local_run(
        dask_scheduler, affwild2_root, tmp_path, monkeypatch):
    assert prepare("affwild2", str(affwild2_root), "--out", str(tmp_path / "local")).exit_code == 0
    from affbench.preparation import units as runner

    record = runner._record
    recorded = []

    def record_then_stop(writer, summary, outcome, inputs):
        record(writer, summary, outcome, inputs)
        recorded.append(outcome.key)
        raise KeyboardInterrupt  # Ctrl-C once the first video is in the manifest

    monkeypatch.setattr(runner, "_record", record_then_stop)
    out = tmp_path / "dask"
    stopped = prepare("affwild2", str(affwild2_root), "--out", str(out), "--scheduler", dask_scheduler)
    assert stopped.exit_code == 130, stopped.output
    assert [key for key, unit in read_manifest(out)["units"].items() if unit["status"] == "done"] == recorded
    monkeypatch.setattr(runner, "_record", record)

    resumed = prepare("affwild2", str(affwild2_root), "--out", str(out), "--scheduler", dask_scheduler)
    assert resumed.exit_code == 0, resumed.output
    videos = len(sd.AFFWILD2_VIDEOS)
    assert f"units: {videos} (1 already done, {videos - 1} processed, 0 failed)" in resumed.output
    assert shard_bytes(out) == shard_bytes(tmp_path / "local")


def test_the_python_recipe_takes_an_address_a_client_or_this_process_client(dask_scheduler, affwild2_root, tmp_path):
    local = affwild2.prepare(affwild2_root, tmp_path / "local", progress=False)
    by_address = affwild2.prepare(affwild2_root, tmp_path / "address", progress=True, scheduler=dask_scheduler)
    assert by_address.ok and by_address.units_done == local.units_done
    with distributed.Client(dask_scheduler) as client:
        assert affwild2.prepare(affwild2_root, tmp_path / "client", progress=False, scheduler=client).ok
        assert client.status == "running"  # a Client passed in stays the caller's to close
        # The recipe before: a Client made in this process, then backend="dask".
        assert affwild2.prepare(affwild2_root, tmp_path / "default", progress=False, backend="dask").ok
    for name in ("address", "client", "default"):
        assert shard_bytes(tmp_path / name) == shard_bytes(tmp_path / "local"), name


def test_an_unreachable_scheduler_is_one_sentence_before_any_work(affwild2_root, tmp_path):
    out = tmp_path / "out"
    address = f"tcp://127.0.0.1:{free_port()}"
    result = prepare("affwild2", str(affwild2_root), "--out", str(out), "--scheduler", address)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: Cannot reach the Dask scheduler at {address} (")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists()


def test_a_missing_dask_is_one_sentence_naming_the_extra(affwild2_root, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now fails
    result = prepare("affwild2", str(affwild2_root), "--out", str(tmp_path / "out"), "--scheduler",
                     "tcp://127.0.0.1:8786")
    assert result.exit_code == 1
    assert 'pip install "affbench[dask]"' in result.output and result.output.count("\n") == 1
    with pytest.raises(ClusterError, match=r"affbench\[dask\]"):
        affwild2.prepare(affwild2_root, tmp_path / "api", scheduler="tcp://127.0.0.1:8786", progress=False)


def test_prepare_help_names_the_scheduler_option():
    result = CliRunner().invoke(app, ["prepare", "bp4d", "--help"])
    assert "--scheduler ADDRESS" in result.output
