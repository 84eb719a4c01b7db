"""The prefix-attention probe: exact on a case with a closed form, and its --smoke mode prints one row per layer."""

import pytest
import torch

from rap_hf import RAPForMultimodalNER

from benchmark_helpers import load_benchmark, number, run_benchmark, table_rows
from conftest import tiny_batch, tiny_config


def test_recorder_equals_uniform_share_when_queries_are_zero():
    """With zero queries every key gets the same weight: the prefix holds m_p / (m_p + real tokens) exactly."""
    probe = load_benchmark("prefix_attention.py", "prefix_attention_benchmark")
    torch.manual_seed(0)
    model = RAPForMultimodalNER(tiny_config(prompt_length=3)).eval()
    encoder = model.base_model.text_encoder
    encoder.set_attn_implementation("eager")
    first = encoder.encoder.layer[0].attention.self.query
    torch.nn.init.zeros_(first.weight)
    torch.nn.init.zeros_(first.bias)
    batch = tiny_batch("ner")
    recorder = probe.PrefixAttentionRecorder(encoder, model.base_model.prompt_projection, prompt_length=3)
    recorder.query_mask = batch["attention_mask"]
    with torch.no_grad():
        model(**batch)
    real_tokens = batch["attention_mask"].sum(-1).double()
    assert recorder.mass[0] == pytest.approx((3 / (3 + real_tokens)).tolist(), abs=1e-6)
    assert len(recorder.mass[1]) == len(real_tokens)  # the un-prompted E_t pass is not counted
    assert all(0 < value < 1 for value in recorder.mass[1])
    assert len(recorder.value_ratio[0]) == len(real_tokens) and all(value > 0 for value in recorder.value_ratio[0])


@pytest.mark.slow
def test_smoke_prints_a_row_per_layer(minilm):
    stdout = run_benchmark("prefix_attention.py", "--smoke")
    rows = table_rows(stdout, "### Attention mass")
    assert [row[0] for row in rows] == [str(layer) for layer in range(6)]  # MiniLM-L6
    for row in rows:
        mean, low, high, value_ratio = (number(cell) for cell in row[1:5])
        assert 0 < low <= mean <= high < 1 and value_ratio > 0, row
    assert "16 examples" in stdout
