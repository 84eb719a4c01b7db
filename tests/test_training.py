"""End-to-end tests of scripts/run_rap.py (transformers.Trainer) on the bundled sample: reload, cut-off checkpoints,
Hub push, LoRA (two processes and resume: tests/test_training_runs.py)."""

import json
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from rap_hf.data import load_dataset
from rap_hf.metrics import compute_ner_metrics, compute_re_metrics
from rap_hf.processing_rap import RAPDataCollator, RAPProcessor

from conftest import REPO_ROOT, run_python
from training_helpers import TINY_OVERRIDES, make_tiny_text_model, run_script, run_script_in_process


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory, minilm) -> Path:
    """A 2-layer random BERT with the real MiniLM (uncased WordPiece) tokenizer: fast, and a real tokenizer."""
    return make_tiny_text_model(tmp_path_factory, minilm)


def reevaluate(model_dir: Path, dataset: str) -> dict:
    """Scores the saved model on the test split with a plain loop: AutoModel + remote code, pixels, no cache."""
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = RAPProcessor.from_pretrained(model_dir)
    test = load_dataset(dataset)["test"]
    task = model.config.task
    encoded = test.map(processor.preprocess, batched=True, fn_kwargs={"task": task})
    collator = RAPDataCollator(processor=processor, return_word_ids=True)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    predictions, references = [], []
    for start in range(0, len(encoded), 8):
        rows = [encoded[i] for i in range(start, min(start + 8, len(encoded)))]
        batch = collator(
            [
                {k: v for k, v in r.items() if k not in ("id", "tokens", "ner_tags", "relation", "subject", "object")}
                for r in rows
            ]
        )
        word_ids = batch.pop("word_ids", None)
        batch.pop("labels", None)
        with torch.no_grad():
            out = model(**batch)
        for j, row in enumerate(rows):
            if task == "ner":
                references.append([labels[t] for t in row["ner_tags"]])
                predictions += processor.post_process_ner(
                    out.predictions[j : j + 1], word_ids[j : j + 1], [len(row["tokens"])], model.config.id2label
                )
            else:
                references.append(labels[row["relation"]])
                predictions.append(labels[int(out.logits[j].argmax())])
    if task == "ner":
        return compute_ner_metrics(predictions, references)
    return compute_re_metrics(predictions, references, labels)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["twitter2015", "mnre"])
def test_script_end_to_end_and_reload_reproduces_test_metrics(tmp_path, tiny_text_model, dataset):
    # NER through `accelerate launch` (the user's command: the script in a fresh interpreter), RE through the same
    # script in-process
    launch = run_script if dataset == "twitter2015" else run_script_in_process
    results = launch(tmp_path / "run", tiny_text_model, "--dataset", dataset, "--num_train_epochs", "2")
    best = tmp_path / "run"  # transformers' layout: the final (best) model in output_dir, no checkpoint left over
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_rap.py",
        "configuration_rap.py",
        "processing_rap.py",
        "README.md",
        "results.json",
    ):
        assert (best / name).exists(), name
    assert not list(best.glob("checkpoint-*")) and not (best / "training_args.bin").exists()
    assert results["task"] == ("ner" if dataset == "twitter2015" else "re")
    splits = load_dataset(dataset)
    assert (results["num_train_examples"], results["num_test_examples"]) == (len(splits["train"]), len(splits["test"]))
    assert set(results["versions"]) >= {"torch", "transformers", "datasets", "accelerate", "rap_hf"}
    assert len(results["history"]) == 2
    # copy-pasteable from the repository root, and no path of this machine anywhere in the outputs
    assert shlex.split(results["command"])[:3] == ["accelerate", "launch", "scripts/run_rap.py"]
    for name in ("results.json", "README.md", "config.json", "processor_config.json"):
        assert str(tmp_path) not in (best / name).read_text() and str(REPO_ROOT) not in (best / name).read_text()
    for figure in results["figures"].values():
        assert (best / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = reevaluate(best, dataset)
    for key in ("precision", "recall", "f1"):
        assert again[key] == pytest.approx(results["test"][key], abs=1e-9), key
    card = (best / "README.md").read_text()
    assert f"{100 * results['test']['f1']:.2f}" in card
    # the run's folder works with plain transformers, in a process that never imported rap_hf
    code = (
        "import json, sys, transformers\n"
        f"pipe = transformers.pipeline(model={str(best)!r}, trust_remote_code=True, device='cpu')\n"
        "text = 'Vela Motors announces new headquarters in Bellhaven'\n"
        "kwargs = dict(subject='Vela Motors', object='Bellhaven') if pipe.model.config.task == 're' else {}\n"
        "print(json.dumps([pipe(text, **kwargs), sorted(m for m in sys.modules if m.startswith('rap_hf'))]))"
    )
    fresh = run_python(["-c", code], cwd=tmp_path, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    prediction, rap_modules = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert rap_modules == [] and ("entities" in prediction if dataset == "twitter2015" else "relation" in prediction)


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
