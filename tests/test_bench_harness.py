"""benchmarks/harness.py's commit label: MIMETIC_COMMIT, when set, is the label (git on the
device machine has named a commit other than the tree that ran)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("bench_harness", BENCH / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_environment_names_the_commit(harness, monkeypatch):
    monkeypatch.setenv("MIMETIC_COMMIT", "0123abc")
    assert harness.git_commit() == "0123abc"


def test_without_it_git_names_the_checkout(harness, monkeypatch):
    monkeypatch.delenv("MIMETIC_COMMIT", raising=False)
    label = harness.git_commit()
    if (BENCH.parent / ".git").exists():
        assert label is not None and label.split("-")[0].isalnum()
    else:
        assert label is None
