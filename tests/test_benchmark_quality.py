"""The quality benchmark's --smoke mode trains the baseline and RAP on both bundled corpora and prints their table."""

import json

import pytest

from benchmark_helpers import number, run_main_in_process, run_smoke, table_rows

pytestmark = pytest.mark.slow

VARIANTS = ["text-only baseline", "RAP (text only)"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, list[dict]]:
    return run_smoke(tmp_path_factory.mktemp("quality"), "quality.py")


def test_table_has_both_variants_for_both_tasks(smoke):
    stdout, _ = smoke
    rows = table_rows(stdout, "### Quality")
    assert [(row[0], row[1], row[2]) for row in rows] == [
        (task, dataset, variant) for task, dataset in (("ner", "twitter2017"), ("re", "mnre")) for variant in VARIANTS
    ]
    for row in rows:
        precision, recall, f1 = (number(cell) for cell in row[3:6])
        assert all(0 <= value <= 100 for value in (precision, recall, f1)), row
        assert f1 == pytest.approx(number(row[6]), abs=0.01)  # one seed: the mean is that seed's score


def test_table_reports_the_runs_in_the_json(smoke):
    stdout, runs = smoke
    assert len(runs) == 4 and {run["seed"] for run in runs} == {0}
    rows = {(row[0], row[2]): row for row in table_rows(stdout, "### Quality")}
    for run in runs:
        assert 0 <= run["test"]["f1"] <= 1 and run["seconds"] > 0
        assert number(rows[run["task"], run["variant"]][5]) == pytest.approx(100 * run["test"]["f1"], abs=0.01)


def test_target_verdict_per_task(smoke):
    stdout, runs = smoke
    for task in ("ner", "re"):
        line = next(line for line in stdout.splitlines() if line.startswith(f"{task}: baseline - RAP ="))
        f1 = {run["variant"]: run["test"]["f1"] for run in runs if run["task"] == task}
        gap = 100 * (f1["text-only baseline"] - f1["RAP (text only)"])
        assert number(line.split("=", 1)[1]) == pytest.approx(gap, abs=0.01)
        assert line.endswith("PASS" if gap <= 0 else "MISS")  # one seed: the spread is 0


def test_report_reprints_and_refuses_to_merge_different_settings(smoke, tmp_path):
    stdout, runs = smoke
    saved = tmp_path / "runs.json"
    saved.write_text(json.dumps(runs))
    status, reported, _ = run_main_in_process("quality.py", "--report", str(saved))
    assert status == 0 and table_rows(reported, "### Quality") == table_rows(stdout, "### Quality")
    other = tmp_path / "other.json"
    other.write_text(json.dumps([dict(run, train_examples=123) for run in runs]))
    status, _, stderr = run_main_in_process("quality.py", "--report", str(saved), str(other))
    assert status != 0 and "differ in 'train_examples'" in stderr
