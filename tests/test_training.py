"""End-to-end tests of scripts/run_rap.py (transformers.Trainer) on the bundled sample: reload, cut-off checkpoints,
Hub push, LoRA (two processes and resume: tests/test_training_runs.py)."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conftest import REPO_ROOT
from training_helpers import TINY_OVERRIDES, assert_complete_run_folder, make_tiny_text_model, run_script_in_process


@pytest.fixture(scope="session")
def tiny_text_model(minilm) -> Path:
    """A 2-layer random BERT with the real MiniLM (uncased WordPiece) tokenizer: fast, and a real tokenizer."""
    return make_tiny_text_model(minilm)


@pytest.mark.slow
def test_script_end_to_end_and_reload_reproduces_test_metrics(tmp_path, tiny_text_model):
    """RE through the script's parser and `run` in this interpreter (NER in a process of its own:
    tests/test_training_runs.py)."""
    dataset = "mnre"
    results = run_script_in_process(
        tmp_path / "run", tiny_text_model, "--dataset", dataset, "--num_train_epochs", "2", "--make_figures", "True"
    )
    best = tmp_path / "run"  # transformers' layout: the final (best) model in output_dir, no checkpoint left over
    assert not list(best.glob("checkpoint-*")) and not (best / "training_args.bin").exists()
    assert_complete_run_folder(best, results, dataset, epochs=2, machine_paths=(tmp_path, REPO_ROOT))


@pytest.mark.slow
def test_push_to_hub_uploads_model_processor_code_and_card(tmp_path, tiny_text_model, monkeypatch):
    """The only mock: the network calls of huggingface_hub.HfApi."""
    import huggingface_hub

    from rap_experiment.run import DataArguments, ModelArguments, RunArguments, run

    uploads = []
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_repo",
        lambda self, repo_id, **kw: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"),
    )

    def fake_upload(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        files = sorted(p.name for p in Path(folder_path).iterdir())
        uploads.append((repo_id, files, list(ignore_patterns)))
        return "https://huggingface.co/org/rap-mnre/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload)
    run(
        ModelArguments(text_model=str(tiny_text_model), vision_model=None, config_overrides=TINY_OVERRIDES),
        DataArguments(dataset="mnre"),
        RunArguments(
            output_dir=str(tmp_path / "run"),
            num_train_epochs=1,
            push_to_hub=True,
            feature_cache_dir=str(tmp_path / "features"),
            hub_model_id="org/rap-mnre",
            report_to="none",
        ),
    )
    assert len(uploads) == 1 and uploads[0][0] == "org/rap-mnre"
    assert {
        "config.json",
        "model.safetensors",
        "modeling_rap.py",
        "processing_rap.py",
        "README.md",
        "results.json",
    } <= set(uploads[0][1])
    assert "training_args.bin" not in uploads[0][1] and "checkpoint-*" in uploads[0][2]
    card = huggingface_hub.ModelCard((tmp_path / "run" / "README.md").read_text())
    assert card.data.to_dict()["model-index"][0]["name"]
    assert 'AutoModel.from_pretrained("org/rap-mnre", trust_remote_code=True)' in card.text


def test_latest_checkpoint_skips_one_cut_off_while_saving(tmp_path):
    from rap_experiment.run import RunArguments, latest_complete_checkpoint, resolve_resume

    for step, complete in ((5, True), (10, True), (15, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "rap_checkpoint_complete").write_text("")
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    args = RunArguments(output_dir=str(tmp_path), resume_from_checkpoint="latest")
    assert resolve_resume(args) == tmp_path / "checkpoint-10"
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-15")
    with pytest.raises(ValueError, match="not saved completely"):
        resolve_resume(args)
    args.resume_from_checkpoint = "latest"
    args.output_dir = str(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume(args)


@pytest.mark.slow
def test_lora_adapters_on_the_text_encoder_train_save_and_load_the_peft_way(tmp_path, tiny_text_model):
    """--lora_r: only the adapters of the encoder train (the RAP layers too); the saved model reloads with them, and
    the adapters alone load onto the pretrained encoder with peft."""
    from peft import PeftModel

    results = run_script_in_process(
        tmp_path / "run",
        tiny_text_model,
        "--dataset",
        "twitter2015",
        "--num_train_epochs",
        "1",
        "--lora_r",
        "4",
        "--lora_target_modules",
        "query,value",
    )
    assert results["config"]["text_encoder_lora"]["r"] == 4
    model = AutoModel.from_pretrained(tmp_path / "run", trust_remote_code=True).eval()
    encoder = model.rap.text_encoder
    trained = [n for n, p in encoder.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert trained, "the adapters did not train"
    base = AutoModel.from_pretrained(tiny_text_model, add_pooling_layer=False)
    frozen = {n.replace(".base_layer", ""): p for n, p in encoder.named_parameters() if "lora_" not in n}
    for name, parameter in base.named_parameters():  # the encoder's own weights did not move (the entity markers
        torch.testing.assert_close(frozen[name][: len(parameter)], parameter)  # only appended embedding rows)
    adapted = PeftModel.from_pretrained(base, tmp_path / "run" / "text_encoder_lora").eval()
    ids = torch.randint(5, 99, (2, 7))
    with torch.no_grad():
        expected = encoder(input_ids=ids).last_hidden_state
        torch.testing.assert_close(adapted(input_ids=ids).last_hidden_state, expected)
