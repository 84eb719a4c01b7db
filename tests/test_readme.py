"""README's "Train from Python" block runs as written and trains a model that finds entities."""

import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in README.md."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8").split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_train_from_python_example_runs_and_learns(tmp_path, monkeypatch, capsys):
    code = readme_block("### Train from Python")
    assert len(code.strip().splitlines()) <= 12  # the README promises a short example
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the documented example, as a user runs it
    metrics = namespace["trainer"].evaluate(namespace["corpus"]["test"], metric_key_prefix="test")
    assert metrics["test_f1"] > 0.1, metrics  # it learned entities, not all-O
    assert f"'test_f1': {metrics['test_f1']}" in capsys.readouterr().out  # what the example printed
    saved = Path("outputs/python")
    assert {"config.json", "model.safetensors", "modeling_rap.py", "processor_config.json"} <= {
        path.name for path in saved.iterdir()
    }
