"""Running scripts/run_rap.py as a user would, with a tiny random BERT and the real MiniLM tokenizer; shared by
tests/test_training*.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

from rap_hf.encoders import save_tiny_text_model

from conftest import REPO_ROOT, TINY_VISION

SCRIPT = REPO_ROOT / "scripts" / "run_rap.py"
TINY_OVERRIDES = json.dumps(
    {"vision_config": TINY_VISION, "fusion_num_heads": 4, "relevance_dim": 16, "prompt_source_length": 64}
)


def make_tiny_text_model(tmp_path_factory, minilm: Path) -> Path:
    """A 2-layer random BERT with the real MiniLM (uncased WordPiece) tokenizer: fast, and a real tokenizer."""
    return Path(save_tiny_text_model(tmp_path_factory.mktemp("tiny_bert"), str(minilm)))


def run_script(output_dir: Path, text_model: Path, *extra: str, processes: int = 1, expect_failure=False) -> dict:
    """Runs the training script like a user would and returns its results.json."""
    # Multi-process on CPU: torchrun-style launch (--multi_gpu) with ACCELERATE_USE_CPU, i.e. DDP over gloo.
    layout = ["--cpu"] if processes == 1 else ["--multi_gpu"]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", *layout, "--num_processes", str(processes)]
    command = [
        *launcher, str(SCRIPT), "--text_model", str(text_model), "--vision_model", "", "--output_dir", str(output_dir),
        "--config_overrides", TINY_OVERRIDES, "--per_device_eval_batch_size", "8", "--report_to", "none",
        "--new_params_learning_rate", "3e-3", "--learning_rate", "1e-3", "--feature_cache_dir",
        str(output_dir.parent / "features"), *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", ACCELERATE_USE_CPU="true")
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    if expect_failure:
        assert result.returncode != 0
        return {"stderr": result.stderr}
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    results_path = output_dir / "results.json"
    return json.loads(results_path.read_text()) if results_path.exists() else {"stdout": result.stdout}
