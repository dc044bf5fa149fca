"""The repository itself: nothing tracked that only works on one machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked() -> list[str]:
    try:
        res = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available")
    if res.returncode != 0:
        pytest.skip("not a git checkout")
    return res.stdout.splitlines()


def test_no_tracked_symlinks():
    """A tracked link into one machine's /tmp (.venv-deepsparse once) breaks ./dev peers on
    every fresh clone ("File exists")."""
    links = [line.split("\t", 1)[1] for line in tracked() if line.startswith("120000")]
    assert links == []

