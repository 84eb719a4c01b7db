"""The repository is clean under the ruff configuration of pyproject.toml."""

import shutil
import subprocess

import pytest

from conftest import REPO_ROOT


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_the_formatter_owns_the_layout():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [ruff, "format", "--check", "--no-cache", "."], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-4000:]
    skips = subprocess.run(
        ["git", "grep", "-c", "fmt" + ": skip", "--", "*.py"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert skips.stdout == "", skips.stdout  # no hand layout (a table that truly needs it would be listed here)
