"""Every entry point answers `--help` (exit 0, its options listed) and `scripts/run_rap.py` reports a bad argument or
corpus in one line: each script's `main(argv)` called as its command line calls it; the installed console script in a
process of its own."""

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import call_main, run_python

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    "OMP_NUM_THREADS": "1",
}
# Options given to add_argument as string literals: what a script's --help must list.
OPTION = re.compile(r"""add_argument\(\s*["'](--[\w-]+)["']""")


def scripts_with_a_parser() -> list[Path]:
    scripts = REPO_ROOT / "scripts"
    candidates = [*sorted(scripts.glob("*.py")), *sorted((scripts / "benchmarks").glob("*.py"))]
    return [path for path in candidates if "ArgumentParser(" in path.read_text(encoding="utf-8")]


BAD_ARGUMENTS = [
    (["--dataset", "nope"], "error: --dataset must be one of ['mnre', 'twitter2015', 'twitter2017'], got 'nope'"),
    (["--data_dir", "/does/not/exist"], "error: data_dir /does/not/exist is not a directory"),
    (
        ["--dataset", "mnre", "--config_overrides", '{"task": "ner"}'],
        "error: --config_overrides sets task 'ner' but --dataset mnre is a re corpus",
    ),
]
CLI_HELP = [
    ([], ["predict", "explain", "demo"]),
    (["predict"], ["--model", "--input", "--output", "--on-error", "--batch-size", "--pairs", "--ner-model"]),
    (["explain"], ["--model", "--text", "--image", "--out"]),
    (["demo"], ["--model", "--port", "--share", "--export"]),
]


def script_main(path: Path):
    """The `main(argv)` of a script (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[tuple, dict]:
    """{(kind, case): {returncode, stdout, stderr}}: every script's and the CLI's `main(argv)` in this interpreter;
    the installed console script in a process of its own, as a user starts it."""
    from rap_hf import cli

    results = {
        ("script", str(path.relative_to(REPO_ROOT))): call_main(script_main(path), ["--help"], REPO_ROOT)
        for path in scripts_with_a_parser()
    }
    results.update(
        {("cli", tuple(arguments)): call_main(cli.main, [*arguments, "--help"], REPO_ROOT) for arguments, _ in CLI_HELP}
    )
    console = shutil.which("rap-hf")
    if console and "python" in Path(console).read_text(errors="replace").split("\n", 1)[0]:  # pip's Python wrapper
        done = run_python([console, "predict", "--help"], cwd=REPO_ROOT, env=ENV, timeout=300)
        results[("console",)] = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    run_rap = script_main(REPO_ROOT / "scripts" / "run_rap.py")
    for index, (arguments, _) in enumerate(BAD_ARGUMENTS):
        folder = tmp_path_factory.mktemp(f"bad{index}")
        results[("bad", index)] = call_main(run_rap, [*arguments, "--output_dir", str(folder / "out")], folder)
        results[("bad", index)]["folder"] = folder
    return results


def run_rap_options() -> list[str]:
    """The fields of run_rap.py's own argument dataclasses (HfArgumentParser takes the help from their metadata)."""
    from rap_experiment.run import DataArguments, ModelArguments

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
def test_script_help(outputs, script):
    completed = outputs[("script", str(script.relative_to(REPO_ROOT)))]
    assert completed["returncode"] == 0, completed["stderr"][-3000:]
    assert completed["stdout"].startswith("usage:")
    options = expected_options(script)
    assert options, f"{script.name}: no option found in its source"
    missing = [option for option in options if option not in completed["stdout"]]
    assert not missing, f"{script.name} --help does not list {missing}"


@pytest.mark.parametrize(
    "arguments, options", CLI_HELP, ids=["rap-hf", "rap-hf predict", "rap-hf explain", "rap-hf demo"]
)
def test_command_line_help(outputs, arguments, options):
    completed = outputs[("cli", tuple(arguments))]
    assert completed["returncode"] == 0, completed["stderr"][-3000:]
    assert completed["stdout"].startswith("usage: rap-hf") and all(option in completed["stdout"] for option in options)


def test_installed_console_script_help(outputs):
    executable = shutil.which("rap-hf")
    if executable is None:
        pytest.skip("the rap-hf console script is not installed")
    if ("console",) in outputs:
        completed = outputs[("console",)]
    else:  # not a Python file (a shell shim): start it as it is
        done = subprocess.run([executable, "predict", "--help"], capture_output=True, text=True, env=ENV, timeout=300)
        completed = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
    assert completed["returncode"] == 0 and "--input" in completed["stdout"], completed["stderr"][-3000:]


@pytest.mark.parametrize("index", range(len(BAD_ARGUMENTS)), ids=[message for _, message in BAD_ARGUMENTS])
def test_run_rap_reports_a_bad_argument_in_one_line(outputs, index):
    completed, message = outputs[("bad", index)], BAD_ARGUMENTS[index][1]
    assert completed["returncode"] == 2
    assert "Traceback" not in completed["stderr"]
    assert [line for line in completed["stderr"].splitlines() if line.startswith("error:")] == [message]
    assert completed["stderr"].strip().splitlines()[-1] == message
    assert not (completed["folder"] / "out").exists()
