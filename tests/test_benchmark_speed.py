"""The speed benchmark's --smoke mode runs end to end and prints well-formed tables (times are not asserted)."""

import math
import platform
import statistics
import time

import pytest

from benchmark_helpers import load_benchmark, number, run_smoke, table_rows

VARIANTS = ["floor (text-only)", "RAP (defaults)", "RAP, paper size (before)", "RAP (defaults), from pixels"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    return run_smoke(tmp_path_factory.mktemp("speed"), "speed.py", "--pixels", "--profile")


def test_main_table_has_every_variant_with_ratios_to_the_floor(smoke):
    stdout, report = smoke
    rows = table_rows(stdout, "### Time per batch")
    expected = [(task, mode, variant) for task in ("NER", "RE") for mode in ("train", "infer") for variant in VARIANTS]
    assert [(row[1], row[2], row[3]) for row in rows] == expected
    for row, raw in zip(rows, report["rows"]):
        milliseconds, ratio = number(row[4]), number(row[5])
        assert math.isfinite(milliseconds) and milliseconds == pytest.approx(1000 * raw["median_s"], abs=0.06)
        floor = next(
            r
            for r in report["rows"]
            if r["variant"] == "floor" and r["task"] == raw["task"] and r["mode"] == raw["mode"]
        )
        assert len(raw["round_s"]) == len(floor["round_s"]) == 2  # --smoke: 2 turns
        turns = sorted(mine / theirs for mine, theirs in zip(raw["round_s"], floor["round_s"]))
        assert ratio == pytest.approx(sum(turns) / 2, abs=0.006)  # median of the per-turn ratios
        assert row[6].startswith(("PASS", "MISS")) == (row[3] == "RAP (defaults)")
        assert number(row[7]) == pytest.approx(100 * raw["kernel_share"], abs=0.5) and 0 <= raw["kernel_share"] <= 1


def test_cpu_runs_record_how_malloc_was_set(smoke):
    stdout, report = smoke
    allocator = report["environment"]["allocator"]
    if platform.libc_ver()[0] == "glibc":  # keep_freed_memory: mallopt took both settings
        assert allocator.startswith("glibc keeping freed memory")
    assert f"malloc: {allocator}" in stdout


def test_variants_take_turns_in_abba_order_and_long_steps_are_timed_once():
    speed = load_benchmark("speed.py", "benchmark_speed_measure")
    calls = []

    def step(name, seconds):
        def run():  # busy, so the step has CPU time to share between user and kernel
            calls.append(name)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        return run

    results = speed.measure(
        {"floor": step("floor", 0.02), "rap": step("rap", 0.02)}, "cpu", min_run_time=0.04, rounds=4
    )  # 0.01 s per round: every step is longer, so each is timed once
    assert calls == ["floor", "rap"] + ["floor", "rap", "rap", "floor"] * 2  # warm-up, then ABBA turns
    for result in results.values():
        assert result["runs"] == len(result["round_s"]) == 4
        assert all(0.02 <= seconds < 0.5 for seconds in result["round_s"])
        assert result["median_s"] == statistics.median(result["round_s"]) and 0 <= result["kernel_share"] <= 1


def test_short_steps_are_timed_with_autorange_at_the_threads_set():
    import torch

    speed = load_benchmark("speed.py", "benchmark_speed_threads")
    seen, threads = [], torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = speed.measure(
            {"floor": lambda: seen.append(torch.get_num_threads())}, "cpu", min_run_time=0.2, rounds=2
        )
    finally:
        torch.set_num_threads(threads)
    assert len(seen) > 1 + 2 * 10 and results["floor"]["runs"] >= 2  # many calls per turn (blocks of them), not one
    assert set(seen) == {2}  # torch.utils.benchmark.Timer would have pinned 1 thread


def test_profile_names_every_stage_of_rap(smoke):
    stdout, report = smoke
    rows = table_rows(stdout, "### RAP per stage")
    assert [(row[1], row[2]) for row in rows] == [("NER", "train"), ("NER", "infer"), ("RE", "train"), ("RE", "infer")]
    for profile in report["profiles"]:
        assert set(profile["stages_ms"]) == {
            "rap.text_features",
            "rap.relevance",
            "rap.fusion",
            "rap.prompts",
            "rap.prefixed_encoder",
        }
        assert profile["stages_ms"]["rap.prefixed_encoder"] > 0 and profile["stages_ms"]["rap.fusion"] > 0


def test_report_mode_reprints_the_same_tables(smoke, tmp_path):
    import json

    from benchmark_helpers import run_main_in_process

    stdout, report = smoke
    saved = tmp_path / "speed.json"
    saved.write_text(json.dumps(report))
    assert run_main_in_process("speed.py", "--report", str(saved)) == (0, stdout, "")
