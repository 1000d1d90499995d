"""Fixtures of the harness tests: prepared DISFA, CAER-S and Aff-Wild2 folders (see harness_fixtures)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test modules import harness_fixtures

from harness_fixtures import make_affwild2, make_bp4d, make_caer, make_disfa  # noqa: E402


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory) -> Path:
    """``--data`` folder with caer-s, disfa, affwild2 and bp4d sub-folders (read-only for tests)."""
    root = tmp_path_factory.mktemp("prepared")
    make_caer(root / "caer-s")
    make_disfa(root / "disfa")
    make_affwild2(root / "affwild2")
    make_bp4d(root / "bp4d")
    return root


@pytest.fixture
def data_copy(prepared_root, tmp_path) -> Path:
    """A private copy of the prepared data, for tests that change it."""
    target = tmp_path / "prepared"
    shutil.copytree(prepared_root, target)
    return target
