"""tests/warm_python.py: a call served by a fork of the warm interpreter behaves as `python ARGS` does."""

import json
import os
import subprocess
import sys

import pytest

from warm_python import differs_only_where_safe, run_python, warm_interpreter

PROBE = """
import json, os, sys
report = dict(argv=sys.argv, cwd=os.getcwd(), path0=sys.path[0], name=__name__, probe=os.environ.get("PROBE"),
              stdin=sys.stdin.read(), rap_hf="rap_hf" in sys.modules)
print(json.dumps(report))
print("to stderr", file=sys.stderr)
if sys.argv[1] == "raise":
    raise ValueError("probe failed")
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "work").mkdir()
    return tmp_path


def both(argv: list[str], cwd, **kwargs) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """The call through the warm interpreter and as a real `python`."""
    real = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=60, **kwargs)
    return run_python(argv, cwd=cwd, timeout=60, **kwargs), real


@pytest.mark.skipif(sys.platform != "linux", reason="forks only on Linux")
@pytest.mark.parametrize("outcome", ["0", "3", "raise"])
def test_a_script_sees_what_a_real_interpreter_gives_it(probe, outcome):
    env = dict(os.environ, PROBE="seen", OMP_NUM_THREADS="1")
    warm, real = both([str(probe / "probe.py"), outcome], probe / "work", env=env, input="from stdin\n")
    assert warm.returncode == real.returncode == (1 if outcome == "raise" else int(outcome))
    assert json.loads(warm.stdout) == json.loads(real.stdout)
    report = json.loads(warm.stdout)
    assert report["cwd"] == str(probe / "work") and report["path0"] == str(probe) and report["stdin"] == "from stdin\n"
    assert report["name"] == "__main__" and report["probe"] == "seen" and not report["rap_hf"]
    assert warm.stderr.splitlines()[-1] == real.stderr.splitlines()[-1]  # "to stderr", or the exception line
    if outcome == "raise":
        assert 'File "' + str(probe / "probe.py") in warm.stderr and "warm_python" not in warm.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="forks only on Linux")
def test_code_and_module_calls_and_threads(tmp_path):
    code = "import sys, torch; print(sys.argv, repr(sys.path[0]), torch.get_num_threads())"
    warm, real = both(["-c", code, "x"], tmp_path, env=dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2"))
    assert warm.returncode == 0 and warm.stdout == real.stdout == "['-c', 'x'] '' 2\n"
    module = run_python(["-m", "json.tool"], cwd=tmp_path, input='{"a": 1}')
    assert module.returncode == 0 and json.loads(module.stdout) == {"a": 1}


def test_settings_read_at_import_get_a_real_interpreter(tmp_path):
    """huggingface_hub reads HF_HUB_CACHE when imported: a call that changes it must not see the warm value."""
    assert not differs_only_where_safe(dict(os.environ, HF_HUB_CACHE=str(tmp_path)), dict(os.environ))
    assert differs_only_where_safe(dict(os.environ, OMP_NUM_THREADS="3", PYTEST_CURRENT_TEST="x"), dict(os.environ))
    unset = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    assert not differs_only_where_safe(unset, dict(os.environ, OMP_NUM_THREADS="1"))  # torch's default unknown
    code = "from huggingface_hub import constants; print(constants.HF_HUB_CACHE)"
    done = run_python(["-c", code], cwd=tmp_path, env=dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub")))
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "hub")


@pytest.mark.skipif(sys.platform != "linux", reason="forks only on Linux")
def test_a_timeout_kills_the_call_and_the_next_call_runs(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_python(["-c", "import time; time.sleep(60)"], cwd=tmp_path, timeout=1)
    assert run_python(["-c", "print('next')"], cwd=tmp_path).stdout == "next\n"
    assert warm_interpreter().process.poll() is None  # the warm interpreter itself lives on
