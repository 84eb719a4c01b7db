"""Runs several command lines of the project's entry points in ONE process of their own, each as `__main__` with its
own argv and working folder, and prints {returncode, stdout, stderr} per call as JSON: a user's start of each script
without paying the torch/transformers import once per call (tests/test_help.py).

    python tests/entry_points.py < calls.json     # [{"argv": ["scripts/x.py", "--help"], "cwd": "..."}, ...]
    argv[0] is a script path, or "-m" followed by a module name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from collections.abc import Callable

from warm_python import execute_as_main, exit_status


def captured(call: Callable[[], object]) -> dict:
    """Runs `call` as a command line would: its exit status (from SystemExit, 1 for an uncaught exception, reported
    with its traceback on stderr), stdout and stderr."""
    stdout, stderr, returncode = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            call()
        except SystemExit as exit_:
            returncode = exit_status(exit_)
        except Exception:  # reported, as the interpreter would
            traceback.print_exc()
            returncode = 1
    return {"returncode": returncode, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def run_call(argv: list[str], cwd: str) -> dict:
    """One command line: a script path, or "-m" and a module, run as `__main__` with `argv` in folder `cwd`."""
    previous = os.getcwd(), list(sys.argv)
    os.chdir(cwd)
    try:
        return captured(lambda: execute_as_main(argv))
    finally:
        os.chdir(previous[0])
        sys.argv = previous[1]


def main() -> None:
    calls = json.load(sys.stdin)
    results = [run_call(call["argv"], call["cwd"]) for call in calls]
    sys.__stdout__.write(json.dumps(results))


if __name__ == "__main__":
    main()
