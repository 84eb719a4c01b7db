"""Running scripts/run_rap.py as a user would, with a tiny random BERT and the real MiniLM tokenizer; shared by
tests/test_training*.py."""

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from rap_hf.data import load_dataset
from rap_hf.encoders import save_tiny_text_model
from rap_hf.metrics import compute_ner_metrics, compute_re_metrics
from rap_hf.processing_rap import RAPDataCollator, RAPProcessor

from conftest import REPO_ROOT, TINY_VISION, run_python, shared_folder

SCRIPT = REPO_ROOT / "scripts" / "run_rap.py"
TINY_OVERRIDES = json.dumps(
    {"vision_config": TINY_VISION, "fusion_num_heads": 4, "relevance_dim": 16, "prompt_source_length": 64}
)


def built_once(name: str, build) -> Path:
    """A folder of this test session that `build(folder)` fills once, for every module and pytest-xdist worker."""
    with shared_folder(name) as folder:
        if not (folder / "done").exists():
            build(folder)
            (folder / "done").write_text("")
    return folder


def make_tiny_text_model(minilm: Path) -> Path:
    """A 2-layer random BERT with the real MiniLM (uncased WordPiece) tokenizer: fast, and a real tokenizer."""
    return built_once("tiny_bert", lambda folder: save_tiny_text_model(folder, str(minilm)))


def make_learning_text_model(minilm: Path) -> Path:
    """The first 2 layers of the real MiniLM with its pretrained embeddings, its vocabulary cut to what the bundled
    corpora use (and every single character): nearly as fast as the random BERT, it learns the sample's entities within
    a few epochs (the tests that compare trained runs need F1 well above 0), and a checkpoint (model, optimizer, best
    weights) takes ~15 MB instead of ~240 MB. The corpora tokenize to the same pieces as with the full vocabulary."""

    def build(folder: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(minilm))
        keep = kept_token_ids(tokenizer)
        model = AutoModel.from_pretrained(str(minilm), add_pooling_layer=False)
        model.encoder.layer = model.encoder.layer[:2]
        model.config.num_hidden_layers = 2
        rows = model.embeddings.word_embeddings.weight.detach()[keep].clone()
        model.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=0)
        model.config.vocab_size = len(keep)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        cut_vocabulary(folder, [tokenizer.convert_ids_to_tokens(i) for i in keep])
        pruned = AutoTokenizer.from_pretrained(str(folder))
        sample = [load_dataset("twitter2015", text_only=True)["train"][0]["tokens"]]
        expected = [keep.index(i) for i in tokenizer(sample, is_split_into_words=True)["input_ids"][0]]
        assert pruned(sample, is_split_into_words=True)["input_ids"][0] == expected

    return built_once("minilm_2_layers", build)


def kept_token_ids(tokenizer) -> list[int]:
    """Ids below the last special token (so special ids stay as they are), every piece of the bundled corpora, and
    every single character with and without `##`, in vocabulary order."""
    keep = set(range(max(tokenizer.all_special_ids) + 1))
    for name in ("twitter2015", "twitter2017", "mnre"):
        for split in load_dataset(name, text_only=True).values():
            for ids in tokenizer([list(t) for t in split["tokens"]], is_split_into_words=True)["input_ids"]:
                keep.update(ids)
    keep.update(i for token, i in tokenizer.get_vocab().items() if len(token.removeprefix("##")) == 1)
    return sorted(keep)


def cut_vocabulary(folder: Path, tokens: list[str]) -> None:
    """The saved WordPiece tokenizer in `folder` with only `tokens` (new id = position)."""
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["vocab"] = {token: i for i, token in enumerate(tokens)}
    path.write_text(json.dumps(data))
    if (folder / "vocab.txt").exists():
        (folder / "vocab.txt").write_text("".join(token + "\n" for token in tokens))


def without_dropout(text_model: Path, folder: Path) -> Path:
    """A copy of a text-model folder whose config turns the encoder's dropout off (deterministic forward passes)."""
    shutil.copytree(text_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def script_arguments(output_dir: Path, text_model: Path, *extra: str) -> list[str]:
    """run_rap.py's arguments for a tiny run (tiny RAP layers, tiny random vision encoder, own feature cache, no
    figures unless `extra` asks: drawing them takes ~3 s of a ~10 s run)."""
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
        "--make_figures",
        "False",
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
    from safetensors.torch import load_file

    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


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


def assert_plain_transformers_predicts_as_rap_hf(folder: Path) -> None:
    """The run's folder works with plain transformers: the task from config.custom_pipelines, the code from the
    folder (a transformers_modules copy, not rap_hf's; tests/test_remote_code.py runs a saved pipeline in a Python
    without rap_hf), predicting what rap_hf's pipeline predicts."""
    import transformers

    from rap_hf import pipeline

    text = "Vela Motors announces new headquarters in Bellhaven"
    plain = transformers.pipeline(model=str(folder), trust_remote_code=True, device="cpu")
    assert type(plain).__name__ == "RAPPipeline" and type(plain).__module__.startswith("transformers_modules.")
    prediction, expected = plain(text), pipeline(folder, device="cpu")(text)
    spans = [[(e["type"], e["start_word"], e["end_word"]) for e in r["entities"]] for r in (prediction, expected)]
    assert spans[0] == spans[1]
    assert prediction["routing_weights"] == pytest.approx(expected["routing_weights"], abs=1e-5)


def assert_complete_run_folder(
    best: Path, results: dict, dataset: str, epochs: int, machine_paths, figures: bool = True
) -> None:
    """What a finished run leaves: model, remote code, card, results.json and (`figures`) the figures, no path of this
    machine in them, a copy-pasteable command, and a saved model that scores the test split as the run reported."""
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
    assert results["task"] == ("re" if dataset == "mnre" else "ner")
    splits = load_dataset(dataset)
    assert (results["num_train_examples"], results["num_test_examples"]) == (len(splits["train"]), len(splits["test"]))
    assert set(results["versions"]) >= {"torch", "transformers", "datasets", "accelerate", "rap_hf"}
    assert len(results["history"]) == epochs
    assert shlex.split(results["command"])[:3] == ["accelerate", "launch", "scripts/run_rap.py"]
    machine_paths = (*machine_paths, os.environ["RAP_HF_TEST_SESSION"])  # where the tests' text models are
    for name in ("results.json", "README.md", "config.json", "processor_config.json"):
        assert not any(str(path) in (best / name).read_text() for path in machine_paths), name
    expected_figures = {"routing_paths", "routing_map", "relevance_by_class"} if figures else set()
    assert expected_figures <= set(results["figures"]) and (figures or not results["figures"])
    for figure in results["figures"].values():
        assert (best / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = reevaluate(best, dataset)
    for key in ("precision", "recall", "f1"):
        assert again[key] == pytest.approx(results["test"][key], abs=1e-9), key
    assert f"{100 * results['test']['f1']:.2f}" in (best / "README.md").read_text()
