"""Runs several command lines of the project's entry points in ONE fresh interpreter, each as `__main__` with its own
argv and working folder, and prints {returncode, stdout, stderr} per call as JSON: a user's start of each script
without paying the torch/transformers import once per call (tests/test_help.py).

    python tests/entry_points.py < calls.json     # [{"argv": ["scripts/x.py", "--help"], "cwd": "..."}, ...]
    argv[0] is a script path, or "-m" followed by a module name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import sys


def run_call(argv: list[str], cwd: str) -> dict:
    """One call: exit status and what it wrote; an uncaught exception is reported as a traceback on stderr."""
    import traceback

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = os.getcwd(), list(sys.argv)
    returncode = 0
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                if argv[0] == "-m":
                    sys.argv = [argv[1], *argv[2:]]
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = list(argv)
                    runpy.run_path(argv[0], run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code
                returncode = code if isinstance(code, int) else (0 if code is None else 1)
                if isinstance(code, str):
                    print(code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 (reported, as the interpreter would)
                traceback.print_exc()
                returncode = 1
    finally:
        os.chdir(previous[0])
        sys.argv = previous[1]
    return {"returncode": returncode, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def main() -> None:
    calls = json.load(sys.stdin)
    results = [run_call(call["argv"], call["cwd"]) for call in calls]
    sys.__stdout__.write(json.dumps(results))


if __name__ == "__main__":
    main()
