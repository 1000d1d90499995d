"""Shared fixtures. Everything is generated here; nothing is downloaded."""

from __future__ import annotations

import os

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
    from affbench.faces import DetectorSettings, shared_detector

    return shared_detector(DetectorSettings(), "cpu")
