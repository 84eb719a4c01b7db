"""Running the benchmark scripts (smoke mode, or imported as modules) and reading the Markdown tables they print;
shared by tests/test_benchmark_*.py."""

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

from conftest import REPO_ROOT, call_main, run_forked
from rap_experiment.reporting import table_rows  # noqa: F401  (re-exported for the benchmark tests)

BENCHMARKS = REPO_ROOT / "scripts" / "benchmarks"


def number(cell: str) -> float:
    """First number in a table cell ("1,234.5", "2.31x", "12.3 ± 1.0", "-4.0")."""
    match = re.search(r"-?[\d,]*\.?\d+", cell)
    assert match, f"no number in cell {cell!r}"
    return float(match.group().replace(",", ""))


# speed.py tunes the process's allocator and threads for its timings: it runs in a forked child of its own
OWN_PROCESS = {"speed.py"}


def run_benchmark(script: str, *args: str) -> str:
    """Runs `main(args)` of scripts/benchmarks/<script> from the repository root in this interpreter (one torch
    thread; `OWN_PROCESS` scripts in a forked child); returns stdout, fails on error."""
    if script in OWN_PROCESS:
        module = load_benchmark(script, f"benchmark_{Path(script).stem}_forked")
        done = run_forked(module.main, list(args))
        assert done["returncode"] == 0, done["stderr"][-3000:]
        return done["stdout"]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        status, stdout, stderr = run_main_in_process(script, *args)
    finally:
        torch.set_num_threads(threads)
    assert status == 0, stderr[-3000:]
    return stdout


def load_benchmark(script: str, module_name: str):
    """Imports scripts/benchmarks/<script> as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def run_main_in_process(script: str, *args: str) -> tuple[int, str, str]:
    """Calls `main(args)` of scripts/benchmarks/<script> in this interpreter (for modes that only read and print, such
    as --report); returns the exit status, stdout and stderr as the command line would give them."""
    module = load_benchmark(script, f"benchmark_{Path(script).stem}_main")
    done = call_main(module.main, list(args))
    return done["returncode"], done["stdout"], done["stderr"]


def run_smoke(tmp_folder: Path, script: str, *args: str) -> tuple[str, Any]:
    """Runs `script --smoke *args --json FILE`; returns stdout and the parsed JSON report."""
    report = tmp_folder / f"{Path(script).stem}.json"
    stdout = run_benchmark(script, "--smoke", *args, "--json", str(report))
    return stdout, json.loads(report.read_text())
