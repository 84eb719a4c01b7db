"""Every entry point answers `--help` (exit 0, its options listed) and `scripts/run_rap.py` reports a bad argument or
corpus in one line; each runs in a subprocess from the repository root, as a user would start it."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}  # fmt: skip
# Options given to add_argument as string literals: what a script's --help must list.
OPTION = re.compile(r"""add_argument\(\s*["'](--[\w-]+)["']""")


def scripts_with_a_parser() -> list[Path]:
    scripts = REPO_ROOT / "scripts"
    candidates = [*sorted(scripts.glob("*.py")), *sorted((scripts / "benchmarks").glob("*.py"))]
    return [path for path in candidates if "ArgumentParser(" in path.read_text(encoding="utf-8")]


def run(command: list[str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def run_rap_options() -> list[str]:
    """The fields of run_rap.py's own argument dataclasses (HfArgumentParser takes the help from their metadata)."""
    from rap_hf.training import DataArguments, ModelArguments

    return [f"--{field.name}" for cls in (ModelArguments, DataArguments) for field in dataclasses.fields(cls)]


def expected_options(script: Path) -> list[str]:
    if script.name == "run_rap.py":
        return run_rap_options()
    source = script.read_text(encoding="utf-8")
    options = set()
    for match in OPTION.finditer(source):
        call = source[match.start() : source.find("add_argument(", match.end())]
        if "SUPPRESS" not in call:  # hidden on purpose (internal options)
            options.add(match.group(1))
    return sorted(options)


@pytest.mark.parametrize("script", scripts_with_a_parser(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_script_help(script):
    completed = run([sys.executable, str(script.relative_to(REPO_ROOT)), "--help"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("usage:")
    options = expected_options(script)
    assert options, f"{script.name}: no option found in its source"
    missing = [option for option in options if option not in completed.stdout]
    assert not missing, f"{script.name} --help does not list {missing}"


@pytest.mark.parametrize(
    "arguments, options",
    [
        ([], ["predict", "explain"]),
        (["predict"], ["--model", "--input", "--output", "--on-error", "--batch-size", "--pairs", "--ner-model"]),
        (["explain"], ["--model", "--text", "--image", "--out"]),
    ],
    ids=["rap-hf", "rap-hf predict", "rap-hf explain"],
)
def test_command_line_help(arguments, options):
    completed = run([sys.executable, "-m", "rap_hf.cli", *arguments, "--help"])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("usage: rap-hf") and all(option in completed.stdout for option in options)


def test_installed_console_script_help():
    executable = shutil.which("rap-hf")
    if executable is None:
        pytest.skip("the rap-hf console script is not installed")
    completed = run([executable, "predict", "--help"])
    assert completed.returncode == 0 and "--input" in completed.stdout, completed.stderr[-3000:]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dataset", "nope"], "error: --dataset must be one of ['mnre', 'twitter2015', 'twitter2017'], got 'nope'"),
        (["--data_dir", "/does/not/exist"], "error: data_dir /does/not/exist is not a directory"),
        (["--dataset", "mnre", "--config_overrides", '{"task": "ner"}'],
         "error: --config_overrides sets task 'ner' but --dataset mnre is a re corpus"),
    ],
)
def test_run_rap_reports_a_bad_argument_in_one_line(tmp_path, arguments, message):
    out = tmp_path / "out"
    completed = run([sys.executable, str(REPO_ROOT / "scripts" / "run_rap.py"), *arguments, "--output_dir", str(out)],
                    cwd=tmp_path)  # fmt: skip
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert [line for line in completed.stderr.splitlines() if line.startswith("error:")] == [message]
    assert completed.stderr.strip().splitlines()[-1] == message
    assert not out.exists()
