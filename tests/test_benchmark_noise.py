"""The image-noise benchmark's --smoke mode trains both variants end to end and prints well-formed tables."""

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "benchmarks" / "noise.py"
MODELS = ["RAP", "RAP w/o relevance (MRR)"]

pytestmark = pytest.mark.slow


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Body rows of the first Markdown table after `heading` (cells stripped)."""
    lines = markdown.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[start + 2 : end]]


def number(cell: str) -> float:
    """First number in a cell ("12.3", "12.3 ± 1.0", "-4.0")."""
    match = re.search(r"-?\d+(?:\.\d+)?", cell)
    assert match, f"no number in cell {cell!r}"
    return float(match.group())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("noise") / "noise.json"
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return process.stdout, json.loads(out.read_text())


def test_f1_table_has_both_models_and_finite_scores(smoke):
    stdout, _ = smoke
    rows = table_rows(stdout, "### F1 on the test split")
    assert [row[0] for row in rows] == MODELS
    for row in rows:
        f1s = [number(c) for c in row[1:4]]  # matched, shuffled, none
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in f1s), row
        drop_shuffled, drop_none = number(row[4]), number(row[5])
        assert drop_shuffled == pytest.approx(f1s[0] - f1s[1], abs=0.11)
        assert drop_none == pytest.approx(f1s[0] - f1s[2], abs=0.11)


def test_target_verdict_and_relevance_rows(smoke):
    stdout, _ = smoke
    target = table_rows(stdout, "### Target")
    assert len(target) == 1 and target[0][4].startswith(("PASS", "MISS"))
    beta = {row[0]: row[1:] for row in table_rows(stdout, "### Relevance beta")}
    assert {"matched", "shuffled"} <= set(beta)
    for condition in ("matched", "shuffled"):
        value = number(beta[condition][0])
        assert math.isfinite(value) and 0 <= value <= 1


def test_json_report_is_complete(smoke):
    _, report = smoke
    assert report["settings"]["smoke"] and report["settings"]["epochs"] == 1
    assert {(r["use_relevance_reasoning"], r["seed"]) for r in report["runs"]} == {(True, 0), (False, 0)}
    for run in report["runs"]:
        assert set(run["conditions"]) == {"matched", "shuffled", "none"}
        assert run["num_test_with_image"] >= 2
        for scores in run["conditions"].values():
            assert math.isfinite(scores["f1"]) and 0 <= scores["f1"] <= 100
    assert report["target"]["passed"] in (True, False)


def test_shuffle_is_a_seeded_derangement():
    spec = importlib.util.spec_from_file_location("noise_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    derangement = module.derangement
    indices = [0, 2, 3, 5, 8, 9]
    mapping = derangement(indices, seed=7)
    assert sorted(mapping) == indices and sorted(mapping.values()) == indices
    assert all(source != target for source, target in mapping.items())
    assert mapping == derangement(indices, seed=7)
    with pytest.raises(ValueError):
        derangement([4], seed=0)
