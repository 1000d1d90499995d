"""The wheel installs one top-level name, ``affbench``, with the suites inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_only_the_affbench_namespace(tmp_path):
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("needs the source tree")
    # No build isolation: the build uses the setuptools already installed, so no network is needed.
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("affbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"affbench"}
    for expected in ("affbench/cli.py", "affbench/pipelines/disfa.py", "affbench/benchmarks/harness.py",
                     "affbench/benchmarks/suites/demo.toml", "affbench/encoders/fan.py"):
        assert expected in names
    assert not any(name.startswith(("tests/", "affbench/tests/")) for name in names)
