"""The speed benchmark's --smoke mode runs end to end and prints the expected, well-formed tables."""

import math

import pytest

from benchmark_helpers import number, run_smoke, table_rows

EXPECTED_VARIANTS = [
    "floor (text-only)",
    "RAP cached features, E_t=encoder",
    "RAP cached features, E_t=embeddings",
    "RAP from pixels, E_t=encoder",
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    return run_smoke(tmp_path_factory.mktemp("speed"), "speed.py", "--device", "cpu", timeout=300)


def test_main_table_has_every_variant_with_positive_times(smoke):
    stdout, _ = smoke
    rows = table_rows(stdout, "### Time and memory per batch")
    keys = [(row[0], row[1], row[2]) for row in rows]
    expected = [(task, mode, variant) for task in ("NER", "RE") for mode in ("train", "infer")
                for variant in EXPECTED_VARIANTS]
    assert keys == expected
    for row in rows:
        median, repeats, ratio = number(row[3]), number(row[5]), number(row[6])
        assert math.isfinite(median) and median > 0, row
        assert repeats >= 1 and math.isfinite(ratio) and ratio > 0, row
        if row[2] == "floor (text-only)":
            assert ratio == pytest.approx(1.0)
        if row[2].startswith("RAP cached"):
            assert row[9].startswith(("PASS", "MISS")), row


def test_targets_scaling_and_breakdown_tables(smoke):
    stdout, _ = smoke
    targets = table_rows(stdout, "### Targets")
    assert len(targets) == 8 and all(row[5] in ("PASS", "MISS") for row in targets)
    scaling = table_rows(stdout, "### Scaling")
    assert [(row[0], row[1]) for row in scaling] == [("8", "1"), ("8", "2"), ("16", "1"), ("16", "2")]
    for row in scaling:
        assert all(number(cell) > 0 for cell in row)
    breakdown = table_rows(stdout, "**NER**")
    stages = {row[0]: row[1:] for row in breakdown}
    for stage in ("un-prompted text pass (no grad)", "dynamic fusion", "prefixed text encoder",
                  "bwd: dynamic fusion", "optimizer step (AdamW)", "total"):
        assert stage in stages, sorted(stages)
    assert all(number(cell) > 0 for cell in stages["total"])
    assert "intra-op threads" in stdout and "Peak memory:" in stdout


def test_json_holds_raw_repeats(smoke):
    _, report = smoke
    assert report["environment"]["torch_threads"] >= 1
    assert len(report["main"]) == 16
    for row in report["main"]:
        assert len(row["times_ms"]) == row["repeats"] >= 1
        assert all(math.isfinite(t) and t > 0 for t in row["times_ms"])
        assert row["memory"]["delta_mib"] >= 0
    assert {row["label"] for row in report["whatif"]} >= {"floor (text-only)", "E_t=embeddings"}
