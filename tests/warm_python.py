"""`python ARGS` for the tests, without paying the ~9 s torch/transformers import per call.

A warm interpreter (one per pytest worker) imports the third-party stack once and NEVER rap_hf. Each call forks it:
the child is a separate process (own pid, process group, working folder, environment, argv, stdin/stdout/stderr files,
exit status) that runs the script, `-c` code or `-m` module as `__main__`, then exits as the interpreter would (atexit
handlers, flushed streams). What a fresh interpreter would do differently is only what the preloaded modules read
from the environment at import time; calls whose environment differs from the warm one's in anything but the names in
FORK_SAFE_ENVIRONMENT run as a real `python` instead, so no test can pass on a stale setting.

    from warm_python import run_python
    done = run_python(["scripts/x.py", "--help"], cwd=REPO_ROOT)      # subprocess.CompletedProcess, text mode
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Imported once by the warm interpreter: what rap_hf, its scripts and the tests' snippets import at the top.
PRELOAD = (
    "torch", "torch._dynamo", "transformers", "transformers.modeling_utils", "transformers.processing_utils",
    "transformers.trainer", "transformers.models.bert.modeling_bert", "datasets", "accelerate", "seqeval.metrics",
    "PIL.Image", "safetensors.torch", "timm",
)  # fmt: skip
# Read at run time (or applied by the child itself), never at import by a preloaded module: these may differ per call.
FORK_SAFE_ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "ACCELERATE_USE_CPU",
                         "PYTHONPATH")  # fmt: skip
FORK_SAFE_PREFIXES = ("PYTEST_", "RAP_HF_")  # pytest's own bookkeeping; rap_hf is never preloaded


def differs_only_where_safe(env: dict, warm_env: dict) -> bool:
    """Whether a call's environment can be served by a fork of an interpreter started with `warm_env`."""
    changed = {key for key in env.keys() | warm_env.keys() if env.get(key) != warm_env.get(key)}
    if {"OMP_NUM_THREADS", "MKL_NUM_THREADS"} & (changed - env.keys()):  # unset: torch's default is not known here
        return False
    return all(key in FORK_SAFE_ENVIRONMENT or key.startswith(FORK_SAFE_PREFIXES) for key in changed)


# ----------------------------------------------------------------------------------------------- the warm interpreter
def exit_status(error: SystemExit) -> int:
    """The status `python` exits with for an uncaught SystemExit (a message goes to stderr, status 1)."""
    if error.code is None or isinstance(error.code, int):
        return error.code or 0
    print(error.code, file=sys.stderr)
    return 1


def open_standard_streams(stdin: str, stdout: str, stderr: str) -> None:
    """Points fds 0-2 and sys.std* (and sys.__std*__) at the call's files, as a started interpreter has them."""
    for fd, path, flags in ((0, stdin, os.O_RDONLY), (1, stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = sys.__stdin__ = open(0, closefd=False)  # noqa: SIM115 (the interpreter's own streams)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, errors="backslashreplace")  # noqa: SIM115


def execute_as_main(argv: list[str]) -> None:
    """Runs a script path, `-c` code or `-m` module as `__main__`, with sys.argv as the interpreter sets it."""
    import runpy
    import types

    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(argv[1], "<string>", "exec"), main.__dict__)
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


def run_as_main(argv: list[str], base_path: list[str]) -> None:
    """`python *argv` from the current folder: sys.path as the interpreter sets it, then the code."""
    extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    if argv[0] == "-c":
        first = ""
    elif argv[0] == "-m":
        first = os.getcwd()
    else:
        first = str(Path(argv[0]).resolve().parent)  # the script's folder
    sys.path[:] = [first, *extra, *base_path]
    execute_as_main(argv)


def child(request: dict, base_path: list[str]) -> None:
    """The forked side of one call; never returns."""
    import atexit as child_atexit
    import runpy
    import traceback

    status = 1
    try:
        os.setpgid(0, 0)  # a process group of its own: a timeout kills the call and whatever it started
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        open_standard_streams(request["stdin"], request["stdout"], request["stderr"])
        threads = os.environ.get("MKL_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")  # torch's start-up rule
        if threads:  # read by MKL/libgomp when the warm interpreter loaded torch: applied here instead
            import torch

            torch.set_num_threads(int(threads))
        run_as_main(request["argv"], base_path)
        status = 0
    except SystemExit as error:
        status = exit_status(error)
    except BaseException as error:  # reported as the interpreter would, without this file's frames
        frames = error.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename in (__file__, runpy.__file__):
            frames = frames.tb_next
        traceback.print_exception(type(error), error, frames)
    finally:
        try:
            child_atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def serve() -> None:
    """Imports PRELOAD, says `ready`, then forks one child per JSON request line and reports its pid and status."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    assert "rap_hf" not in sys.modules, "a preloaded module imported rap_hf: children would not start without it"
    base_path = sys.path[1:]  # without this file's folder, as every child sets its own first entry
    requests, replies = sys.stdin.buffer, os.dup(1)
    os.write(replies, b"ready\n")
    for line in iter(requests.readline, b""):
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(replies)
            child(request, base_path)
        os.write(replies, f"{pid}\n".encode())
        _, wait_status = os.waitpid(pid, 0)
        os.write(replies, f"{os.waitstatus_to_exitcode(wait_status)}\n".encode())
    os._exit(0)  # nothing to finalise: skipping the teardown of torch & co. saves seconds per pytest worker


# --------------------------------------------------------------------------------------------------------- the client
class WarmInterpreter:
    """The client side: starts the warm interpreter with the current environment and sends it calls."""

    def __init__(self) -> None:
        self.env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        self.log = tempfile.NamedTemporaryFile(prefix="warm_python_", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, env=self.env, cwd=tempfile.gettempdir())  # fmt: skip
        self.ready, self.pending = False, b""

    def read_line(self, timeout: float | None) -> str:
        """One reply line; TimeoutError after `timeout` s, RuntimeError (with the log's tail) if the server died."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.process.stdout], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(self.process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"the warm interpreter died:\n{Path(self.log.name).read_text()[-3000:]}")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def run(self, argv: list[str], cwd: Path | str, env: dict, stdin: str, timeout: float) -> int:
        """Runs one call with stdin from file `stdin`; its output goes to files; returns the exit status."""
        if not self.ready:
            assert self.read_line(600) == "ready"
            self.ready = True
        with tempfile.TemporaryDirectory(prefix="warm_python_call_") as folder:
            streams = {name: str(Path(folder) / name) for name in ("stdout", "stderr")}
            request = dict(argv=argv, cwd=str(cwd), env=env, stdin=stdin, **streams)
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
            pid = int(self.read_line(60))
            try:
                status = int(self.read_line(timeout))
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                self.read_line(60)
                raise
            self.output = {name: Path(path).read_text(errors="backslashreplace") for name, path in streams.items()}
        return status

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        os.unlink(self.log.name)


_warm: WarmInterpreter | None = None


def warm_interpreter() -> WarmInterpreter:
    """This process's warm interpreter, started on first use and closed at exit."""
    global _warm
    if _warm is None:
        _warm = WarmInterpreter()
        atexit.register(_warm.close)
    return _warm


def run_python(argv: list[str], cwd: Path | str, env: dict | None = None, input: str | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    """`subprocess.run([sys.executable, *argv], capture_output=True, text=True, ...)`, served by a fork of the warm
    interpreter where `env` allows it (see the module docstring)."""
    env = dict(os.environ if env is None else env)
    warm = warm_interpreter() if sys.platform == "linux" else None  # fork after importing torch: Linux only
    if warm is None or not differs_only_where_safe(env, warm.env):
        return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, input=input, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
    with tempfile.NamedTemporaryFile("w", prefix="warm_python_stdin_", delete=False) as stdin:
        stdin.write(input or "")
    try:
        status = warm.run(argv, cwd, env, stdin.name, timeout)
    except TimeoutError:
        raise subprocess.TimeoutExpired([sys.executable, *argv], timeout) from None
    finally:
        os.unlink(stdin.name)
    return subprocess.CompletedProcess([sys.executable, *argv], status, warm.output["stdout"], warm.output["stderr"])


if __name__ == "__main__":
    serve()
