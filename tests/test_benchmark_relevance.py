"""The relevance diagnostic (scripts/benchmarks/relevance.py): beta's distribution under matched / shuffled images,
the per-module gradient table and the training curve, for fresh RAP layers and for a saved model."""

import math

import pytest

from benchmark_helpers import number, run_smoke, table_rows
from pipeline_helpers import saved_models


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return run_smoke(tmp_path_factory.mktemp("relevance"), "relevance.py", "--train_steps", "4")


def test_beta_table_matches_the_json_and_depends_on_the_image(fresh):
    stdout, report = fresh
    rows = {row[0]: row for row in table_rows(stdout, "### beta on")}
    assert set(rows) == {"matched", "shuffled", "one text, every image"}
    for name, row in rows.items():
        assert number(row[2]) == pytest.approx(report["beta"][name]["mean"], abs=6e-5)
        assert 0.0 < report["beta"][name]["mean"] < 1.0
    assert report["beta"]["one text, every image"]["sd"] > 0  # the image alone moves beta
    assert 0.0 <= report["beta"]["auc"] <= 1.0


def test_gradient_table_reaches_every_relevance_module(fresh):
    stdout, report = fresh
    norms = report["gradients"]["norms"]
    fusion = (norms["FSRU units (Eq. 11-12)"]["norm"] + norms["CFU units (Eq. 13-16)"]["norm"]) / 2
    for group in ("attention pooling (u-bar, v-bar)", "W_g (Eq. 2)", "graph W_src, W_tgt (Eq. 6)", "W_s, b_s (beta)"):
        assert norms[group]["norm"] > 0 and math.isfinite(norms[group]["norm"])
        assert report["gradients"]["fusion_over_group"][group] == pytest.approx(fusion / norms[group]["norm"], rel=1e-6)
    rows = {row[0]: row for row in table_rows(stdout, "### Gradient after one backward")}
    assert float(rows["W_g (Eq. 2)"][2]) == pytest.approx(norms["W_g (Eq. 2)"]["norm"], rel=1e-3)
    assert [point["step"] for point in report["curve"]] == [2, 4]


def test_a_saved_model_is_diagnosed(tmp_path):
    stdout, report = run_smoke(tmp_path, "relevance.py", "--model", str(saved_models()["ner"]))
    assert report["model"] == "saved model ner"
    assert report["beta"]["matched"]["n"] > 0 and "### Gradient after one backward" in stdout
