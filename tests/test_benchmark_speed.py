"""The speed benchmark's --smoke mode runs end to end and prints well-formed tables (times are not asserted)."""

import math

import pytest

from benchmark_helpers import number, run_smoke, table_rows

VARIANTS = ["floor (text-only)", "RAP (defaults)", "RAP, paper size (before)", "RAP (defaults), from pixels"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    return run_smoke(tmp_path_factory.mktemp("speed"), "speed.py", "--pixels", "--profile", timeout=300)


def test_main_table_has_every_variant_with_ratios_to_the_floor(smoke):
    stdout, report = smoke
    rows = table_rows(stdout, "### Time per batch")
    expected = [(task, mode, variant) for task in ("NER", "RE") for mode in ("train", "infer") for variant in VARIANTS]
    assert [(row[1], row[2], row[3]) for row in rows] == expected
    for row, raw in zip(rows, report["rows"]):
        milliseconds, ratio = number(row[4]), number(row[5])
        assert math.isfinite(milliseconds) and milliseconds == pytest.approx(1000 * raw["median_s"], abs=0.06)
        floor = next(r for r in report["rows"] if r["variant"] == "floor" and r["task"] == raw["task"]
                     and r["mode"] == raw["mode"])  # fmt: skip
        assert len(raw["round_s"]) == len(floor["round_s"]) == 2  # --smoke: 2 turns
        turns = sorted(mine / theirs for mine, theirs in zip(raw["round_s"], floor["round_s"]))
        assert ratio == pytest.approx(sum(turns) / 2, abs=0.006)  # median of the per-turn ratios
        assert row[6].startswith(("PASS", "MISS")) == (row[3] == "RAP (defaults)")


def test_profile_names_every_stage_of_rap(smoke):
    stdout, report = smoke
    rows = table_rows(stdout, "### RAP per stage")
    assert [(row[1], row[2]) for row in rows] == [("NER", "train"), ("NER", "infer"), ("RE", "train"), ("RE", "infer")]
    for profile in report["profiles"]:
        assert set(profile["stages_ms"]) == {"rap.text_features", "rap.relevance", "rap.fusion", "rap.prompts",
                                             "rap.prefixed_encoder"}  # fmt: skip
        assert profile["stages_ms"]["rap.prefixed_encoder"] > 0 and profile["stages_ms"]["rap.fusion"] > 0


def test_report_mode_reprints_the_same_tables(smoke, tmp_path):
    import json

    from benchmark_helpers import run_main_in_process

    stdout, report = smoke
    saved = tmp_path / "speed.json"
    saved.write_text(json.dumps(report))
    assert run_main_in_process("speed.py", "--report", str(saved)) == (0, stdout, "")
