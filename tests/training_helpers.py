"""Running scripts/run_rap.py as a user would, with a tiny random BERT and the real MiniLM tokenizer; shared by
tests/test_training*.py."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from rap_hf.encoders import save_tiny_text_model

from conftest import REPO_ROOT, TINY_VISION, run_python

SCRIPT = REPO_ROOT / "scripts" / "run_rap.py"
TINY_OVERRIDES = json.dumps(
    {"vision_config": TINY_VISION, "fusion_num_heads": 4, "relevance_dim": 16, "prompt_source_length": 64}
)


def make_tiny_text_model(tmp_path_factory, minilm: Path) -> Path:
    """A 2-layer random BERT with the real MiniLM (uncased WordPiece) tokenizer: fast, and a real tokenizer."""
    return Path(save_tiny_text_model(tmp_path_factory.mktemp("tiny_bert"), str(minilm)))


def make_learning_text_model(tmp_path_factory, minilm: Path) -> Path:
    """The first 2 layers of the real MiniLM with its pretrained embeddings: nearly as fast as the random BERT, and it
    learns the sample's entities within a few epochs (the tests that compare trained runs need F1 well above 0)."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("minilm_2_layers")
    model = AutoModel.from_pretrained(str(minilm), add_pooling_layer=False)
    model.encoder.layer = model.encoder.layer[:2]
    model.config.num_hidden_layers = 2
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm)).save_pretrained(folder)
    return Path(folder)


def without_dropout(text_model: Path, folder: Path) -> Path:
    """A copy of a text-model folder whose config turns the encoder's dropout off (deterministic forward passes)."""
    shutil.copytree(text_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def script_arguments(output_dir: Path, text_model: Path, *extra: str) -> list[str]:
    """run_rap.py's arguments for a tiny run (tiny RAP layers, tiny random vision encoder, own feature cache)."""
    return [
        "--text_model",
        str(text_model),
        "--vision_model",
        "",
        "--output_dir",
        str(output_dir),
        "--config_overrides",
        TINY_OVERRIDES,
        "--per_device_eval_batch_size",
        "8",
        "--report_to",
        "none",
        "--new_params_learning_rate",
        "3e-3",
        "--learning_rate",
        "1e-3",
        "--feature_cache_dir",
        str(output_dir.parent / "features"),
        *extra,
    ]


def outcome(output_dir: Path, returncode: int, stdout: str, stderr: str, expect_failure: bool) -> dict:
    """results.json of a finished run, {"stdout"} of a run stopped early, {"stderr"} of an expected failure."""
    if expect_failure:
        assert returncode != 0
        return {"stderr": stderr}
    assert returncode == 0, stdout[-2000:] + stderr[-4000:]
    results_path = output_dir / "results.json"
    return json.loads(results_path.read_text()) if results_path.exists() else {"stdout": stdout}


def run_script(
    output_dir: Path, text_model: Path, *extra: str, processes: int = 1, launcher: bool = True, expect_failure=False
) -> dict:
    """Runs the training script in a process of its own, like a user would (`accelerate launch`, which starts the
    script in a fresh interpreter; `launcher=False`: `python scripts/run_rap.py`), and returns its results."""
    # Multi-process on CPU: torchrun-style launch (--multi_gpu) with ACCELERATE_USE_CPU, i.e. DDP over gloo.
    layout = ["--cpu"] if processes == 1 else ["--multi_gpu"]
    launch = ["-m", "accelerate.commands.launch", *layout, "--num_processes", str(processes)] if launcher else []
    command = [*launch, str(SCRIPT), *script_arguments(output_dir, text_model, *extra)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="true")
    result = run_python(command, cwd=REPO_ROOT, timeout=600, env=env)
    return outcome(output_dir, result.returncode, result.stdout, result.stderr, expect_failure)


def run_script_in_process(output_dir: Path, text_model: Path, *extra: str, expect_failure=False) -> dict:
    """The same single-process run as `run_script`, through the script's own parser and `run` in this interpreter:
    the script's code path without the ~10 s of starting two interpreters (launcher and script)."""
    import torch
    from transformers import HfArgumentParser

    from rap_experiment.run import DataArguments, ModelArguments, RunArguments, run

    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments))
    arguments = parser.parse_args_into_dataclasses(script_arguments(output_dir, text_model, *extra))
    threads, argv = torch.get_num_threads(), sys.argv
    torch.set_num_threads(1)
    sys.argv = [str(SCRIPT), *script_arguments(output_dir, text_model, *extra)]  # what results.json records
    try:
        if expect_failure:
            with pytest.raises((ValueError, FileNotFoundError)) as error:
                run(*arguments)
            return {"stderr": f"error: {error.value}"}
        run(*arguments)
    finally:
        torch.set_num_threads(threads)
        sys.argv = argv
    return outcome(output_dir, 0, "", "", expect_failure=False)


def assert_same_weights(first: Path, second: Path) -> None:
    """The saved (best) models of two runs hold the same tensors."""
    import torch
    from safetensors.torch import load_file

    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
