"""scripts/reproduce.py: the paper's grids, shared runs, commands, resume, and the --smoke report of every table."""

import csv
import json
import logging

import pytest

from benchmark_helpers import load_benchmark, run_main_in_process
from rap_experiment.reporting import table_rows


@pytest.fixture(scope="module")
def reproduce():
    return load_benchmark("../reproduce.py", "reproduce")


def test_grid_shares_runs_between_tables_and_follows_the_paper(reproduce):
    paper = reproduce.expand_grid([3, 4, 5, 6], reproduce.DATASETS, [0, 1, 2], paper=True)
    # per dataset: RAP + text baseline (T3), L = 1,2,3,5,6 beyond the default (T4), 4 ablations (T5), 5 more gammas
    assert len(paper) == 3 * 3 * (2 + 5 + 5 + 5) == len(set(paper))
    names = {spec.name for spec in paper if spec.dataset == "twitter2017"}
    assert "default" in names and "routing_layers=4" not in names  # Table 3's RAP is Table 4's L = 4 (NER)
    assert "routing_layers=3" in names and "path_regularization_weight=1.5" not in names
    assert "routing_layers=3" not in {spec.name for spec in paper if spec.dataset == "mnre"}  # L = 3 is RE's default
    assert {
        "use_relevance_reasoning=False",
        "fusion_units=fsru,cfu",
        "path_regularization_weight=0.0",
        "text_only_baseline=True",
    } <= names
    ours = reproduce.expand_grid([4], ["twitter2017"], [0], paper=False)
    assert "routing_layers=2" not in {spec.name for spec in ours}  # rap-hf's default L = 2


def test_commands_carry_the_setting_and_resume_cut_off_runs(reproduce, tmp_path):
    plan = reproduce.Plan(tmp_path, "bert-base-uncased", "microsoft/resnet-101", "data", True, ["--bf16", "True"])
    spec = reproduce.RunSpec("mnre", (("fusion_units", "rau,cfu"),), 1)
    command = plan.command(spec, on_gpu=True)
    assert "--cpu" not in command and command[command.index("--fusion_units") + 1] == "rau,cfu"
    argv = command[command.index(str(reproduce.RUN_RAP)) + 1 :]
    assert argv[argv.index("--output_dir") + 1] == str(tmp_path / "mnre" / "fusion_units=rau,cfu" / "seed1")
    assert "--paper_architecture" in argv and argv[-2:] == ["--bf16", "True"]
    folder = spec.folder(tmp_path)
    (folder / "checkpoint-7").mkdir(parents=True)
    assert "--overwrite_output_dir" in plan.arguments(spec)  # nothing usable left: start again
    (folder / "checkpoint-7" / "rap_checkpoint_complete").write_text("")
    assert plan.arguments(spec)[-4:-2] == ["--resume_from_checkpoint", "latest"]


def test_dry_run_prints_commands_and_the_gpu_hour_estimate(tmp_path):
    status, stdout, stderr = run_main_in_process(
        "../reproduce.py",
        "--table",
        "5",
        "--datasets",
        "twitter2017",
        "--seeds",
        "0",
        "--dry_run",
        "--output_dir",
        str(tmp_path),
    )
    assert status == 0, stderr[-2000:]
    commands = [line for line in stdout.splitlines() if "run_rap.py" in line]
    assert len(commands) == 6 and all("--dataset twitter2017" in line for line in commands)
    rows = {row[0]: row for row in table_rows(stdout, "6 runs")}
    assert rows["Twitter-2017"][1:3] == ["6", f"{6 * 422 * 30:,}"]  # ceil(3373 / 8) steps x 30 epochs
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.slow
def test_smoke_runs_every_table_and_reports_paper_beside_ours(tmp_path, caplog):
    """Every table on the RE corpus (17 tiny runs; the grid of all three corpora is checked above)."""
    command = ("--smoke", "--table", "all", "--datasets", "mnre", "--output_dir", str(tmp_path))
    status, stdout, stderr = run_main_in_process("../reproduce.py", *command)
    assert status == 0, stderr[-4000:]
    report = (tmp_path / "report.md").read_text()
    assert report.strip() == stdout.strip().split("\n# Paper tables", 1)[-1].join(["# Paper tables", ""]).strip()
    assert "Finished runs: 17 of 17." in report
    expected_rows = {3: 2, 4: 6, 5: 3, 6: 3}
    for number, rows in expected_rows.items():
        body = table_rows(report, f"### Table {number}:")
        assert len(body) == 2 * rows
        assert all(line[1] == "paper (authors)" for line in body[::2])
        assert all(line[1] == "rap-hf (ours)" for line in body[1::2])
        for theirs, mine in zip(body[::2], body[1::2]):  # the Twitter corpora (not run) stay empty, MNRE is filled
            cells = mine[2:]
            if number in (3, 4):  # corpora are columns (P, R, F each), MNRE the last third
                empty, filled = cells[: 2 * len(cells) // 3], cells[2 * len(cells) // 3 :]
            else:  # corpora are rows
                empty, filled = (cells, []) if theirs[0].startswith("Twitter") else ([], cells)
            assert empty == ["–"] * len(empty)
            assert all(0.0 <= float(cell) <= 100.0 for cell in filled)
    assert table_rows(report, "### Table 3:")[2][:5] == ["RAP", "paper (authors)", "74.38", "78.92", "76.58"]
    with open(tmp_path / "runs.csv") as stream:
        runs = list(csv.DictReader(stream))
    assert len(runs) == 17 == len(json.loads((tmp_path / "runs.json").read_text()))
    assert {run["dataset"] for run in runs} == {"mnre"}
    assert not any(str(tmp_path) in line for line in (tmp_path / "runs.csv").read_text().splitlines())
    caplog.set_level(logging.INFO)  # reproduce.py logs to the root logger; pytest's handler holds it here
    status, _, stderr = run_main_in_process("../reproduce.py", *command)
    assert status == 0 and "17 runs, 17 already finished" in caplog.text
