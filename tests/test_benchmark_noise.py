"""The image-noise benchmark's --smoke mode trains both variants end to end and prints well-formed tables."""

import math

import pytest

from benchmark_helpers import load_benchmark, number, run_smoke, table_rows

MODELS = ["RAP", "RAP w/o relevance (MRR)"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    return run_smoke(tmp_path_factory.mktemp("noise"), "noise.py")


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
    derangement = load_benchmark("noise.py", "noise_benchmark").derangement
    indices = [0, 2, 3, 5, 8, 9]
    mapping = derangement(indices, seed=7)
    assert sorted(mapping) == indices and sorted(mapping.values()) == indices
    assert all(source != target for source, target in mapping.items())
    assert mapping == derangement(indices, seed=7)
    with pytest.raises(ValueError):
        derangement([4], seed=0)
