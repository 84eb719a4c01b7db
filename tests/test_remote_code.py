"""Hub packaging: save_pretrained -> AutoModel.from_pretrained(trust_remote_code=True) without rap_hf, offline."""

import ast
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from rap_hf import RAPForMultimodalNER, RAPForMultimodalRE

from conftest import REPO_ROOT, run_python, tiny_batch, tiny_config

# Runs in a fresh interpreter that never imported rap_hf, from a neutral folder: rap_hf must not be
# importable by accident. Loads every (kind, reference, inputs, output) of argv in turn: "model" runs the model on a
# saved batch, "processor" (AutoProcessor) encodes saved keyword arguments, "pipeline" (transformers.pipeline with no
# task: it comes from config.custom_pipelines) runs on saved keyword arguments.
LOADER = """
import sys, torch
sys.path = [p for p in sys.path if p not in ("", ".")]
from transformers import AutoModel, AutoProcessor, pipeline
for kind, reference, inputs_path, out_path in zip(*[iter(sys.argv[1:])] * 4):
    if kind == "model":
        loaded = AutoModel.from_pretrained(reference, trust_remote_code=True).eval()
        with torch.no_grad():
            output = {"logits": loaded(**torch.load(inputs_path)).logits}
    elif kind == "processor":
        loaded = AutoProcessor.from_pretrained(reference, trust_remote_code=True)
        output = dict(loaded(**torch.load(inputs_path)))
    else:
        loaded = pipeline(model=reference, trust_remote_code=True, device="cpu")
        output = {"result": loaded(**torch.load(inputs_path))}
    assert "rap_hf" not in sys.modules, "the remote code imported the rap_hf package"
    torch.save({**output, "class": type(loaded).__name__, "module": type(loaded).__module__}, out_path)
"""


def assert_package_imports_are_optional(source: str) -> None:
    """Remote code may use rap_hf only where it is installed: every import of it sits in a `try` that falls back on
    ImportError (the loader below then proves the file works without it)."""
    tree = ast.parse(source)
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            guarded.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if any(name.split(".")[0] == "rap_hf" for name in names):
            assert id(node) in guarded, f"line {node.lineno}: rap_hf imported outside a try/except ImportError"


def run_loader(loads: list[tuple[str, str, Path, Path]], folder: Path) -> list[dict]:
    """Runs LOADER once over `loads` ((kind, reference, inputs file, output file), ...); returns each output."""
    script = folder / "load_remote.py"
    script.write_text(LOADER)
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    arguments = [str(item) for load in loads for item in load]
    result = run_python([str(script), *arguments], cwd=folder, env=clean_env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out_path) for *_, out_path in loads]


def save_tiny(task: str, folder: Path):
    model = (RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE)(tiny_config(task)).eval()
    batch = tiny_batch(task)
    batch.pop("labels")
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(folder)
    torch.save(batch, folder.parent / f"batch_{folder.name}.pt")
    return expected, folder.parent / f"batch_{folder.name}.pt"


def hub_cache_snapshot(saved: Path, hub_cache: Path, repo_id: str) -> None:
    """Lays `saved` out as the offline Hugging Face cache holds a downloaded `repo_id` at its main revision."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in saved.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


PROCESSOR_CALL = dict(tokens=[["Bill", "Cosby", "in", "LA"]], subject_spans=[(0, 2)], object_spans=[(3, 4)])


def save_processor(folder: Path):
    """The MiniLM processor saved to `folder`, its encoding of PROCESSOR_CALL, and the saved call."""
    from rap_hf import RAPProcessor

    from conftest import minilm_path

    processor = RAPProcessor.from_text_model(str(minilm_path()))
    processor.save_pretrained(folder)
    torch.save(PROCESSOR_CALL, folder.parent / "processor_call.pt")
    return dict(processor(**PROCESSOR_CALL)), folder.parent / "processor_call.pt"


PIPELINE_CALL = dict(inputs="Vela Motors announces new headquarters in Bellhaven")  # the tiny model finds ORG, LOC


def save_pipeline(model_folder: Path, folder: Path):
    """The tiny trained NER model (conftest's `folders`) as a saved pipeline, its rap_hf result, and the saved call."""
    from rap_hf import pipeline

    pipe = pipeline(model_folder, device="cpu")
    pipe.save_pretrained(folder)
    torch.save(PIPELINE_CALL, folder.parent / "pipeline_call.pt")
    return pipe(PIPELINE_CALL["inputs"]), folder.parent / "pipeline_call.pt"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, minilm, folders) -> dict:
    """Tiny NER and RE models saved to folders, the RE model as the Hub id "org/rap-mnre" in an offline HF cache, and
    a saved processor, each loaded with trust_remote_code in one process without rap_hf: {name: (expected, loaded,
    folder)}."""
    folder = tmp_path_factory.mktemp("remote")
    saved = {
        "ner": save_tiny("ner", folder / "model_ner"),
        "re": save_tiny("re", folder / "model_re"),
        "processor": save_processor(folder / "processor"),
        "pipeline": save_pipeline(folders["ner"], folder / "pipeline"),
    }
    hub_cache_snapshot(folder / "model_re", Path(os.environ["HF_HUB_CACHE"]), "org/rap-mnre")  # tests' own, offline
    saved["hub"] = saved["re"]
    references = {"ner": folder / "model_ner", "re": folder / "model_re", "hub": "org/rap-mnre"}
    references.update(processor=folder / "processor", pipeline=folder / "pipeline")
    kinds = {"processor": "processor", "pipeline": "pipeline"}
    loads = [
        (kinds.get(name, "model"), str(reference), saved[name][1], folder / f"out_{name}.pt")
        for name, reference in references.items()
    ]
    outputs = dict(zip(references, run_loader(loads, folder)))
    return {name: (saved[name][0], outputs[name], folder) for name in references}


@pytest.mark.parametrize("task,cls", [("ner", "RAPForMultimodalNER"), ("re", "RAPForMultimodalRE")])
def test_save_and_load_with_remote_code_in_fresh_process(loaded, task, cls):
    expected, output, folder = loaded[task]
    model = folder / f"model_{task}"
    files = sorted(p.name for p in model.iterdir())
    assert {"config.json", "configuration_rap.py", "modeling_rap.py", "model.safetensors"} <= set(files)
    config = json.loads((model / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == f"modeling_rap.{cls}"
    assert config["auto_map"]["AutoConfig"] == "configuration_rap.RAPConfig"
    assert_package_imports_are_optional((model / "modeling_rap.py").read_text())
    assert output["class"] == cls
    torch.testing.assert_close(output["logits"], expected)


def test_auto_processor_with_remote_code_in_fresh_process(loaded):
    expected, output, _ = loaded["processor"]
    assert output["class"] == "RAPProcessor" and output["module"].startswith("transformers_modules.")
    assert torch.equal(output["input_ids"], expected["input_ids"])
    assert torch.equal(output["entity_positions"], expected["entity_positions"])


def test_saved_pipeline_runs_from_plain_transformers_in_fresh_process(loaded):
    """`pipe.save_pretrained` + `transformers.pipeline(model=folder, trust_remote_code=True)`: the task from
    config.custom_pipelines, the code from the folder; it predicts what rap_hf's pipeline predicts."""
    expected, output, folder = loaded["pipeline"]
    assert json.loads((folder / "pipeline" / "config.json").read_text())["custom_pipelines"] == {
        "rap-extraction": {"impl": "pipelines.RAPPipeline", "pt": ["AutoModel"], "type": "multimodal"}
    }
    assert output["class"] == "RAPPipeline" and output["module"].startswith("transformers_modules.")
    result = output["result"]
    assert [(e["type"], e["start_word"], e["end_word"]) for e in result["entities"]] == [
        (e["type"], e["start_word"], e["end_word"]) for e in expected["entities"]
    ]
    assert expected["entities"] and result["routing_weights"] == pytest.approx(expected["routing_weights"], abs=1e-5)


def test_exact_user_call_from_offline_hub_cache(loaded):
    """`AutoModel.from_pretrained("org/rap-mnre", trust_remote_code=True)` from a laid-out HF cache snapshot."""
    expected, output, _ = loaded["hub"]
    assert output["class"] == "RAPForMultimodalRE"
    torch.testing.assert_close(output["logits"], expected)


def test_missing_pytorch_crf_names_the_pip_package(monkeypatch):
    """modeling_rap.py imported where pytorch-crf is missing (None in sys.modules makes `import torchcrf` fail):
    RE models still build, NER names the pip package."""
    import importlib.util

    monkeypatch.setitem(sys.modules, "torchcrf", None)
    source = REPO_ROOT / "rap_hf" / "modeling_rap.py"
    spec = importlib.util.spec_from_file_location("rap_hf.modeling_without_crf", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.CRF is None
    module.RAPForMultimodalRE(tiny_config("re"))  # RE needs no CRF
    with pytest.raises(ImportError, match=r"pip install pytorch-crf"):
        module.RAPForMultimodalNER(tiny_config("ner"))


def test_minilm_rap_learns_a_handful_of_samples(minilm):
    """Real pretrained MiniLM as text encoder: a few AdamW steps reduce the loss on a fixed batch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    model = RAPForMultimodalNER.from_text_vision_pretrained(
        str(minilm),
        None,
        task="ner",
        vision_config=tiny_config().vision_config,
        num_crops=3,
        id2label={0: "O", 1: "B-PER", 2: "I-PER"},
        prompt_length=4,
        prompt_source_length=32,
    )
    texts = [["Obama", "visits", "Paris"], ["John", "Smith", "smiles"], ["hello", "world"], ["Anna", "waves"]]
    tags = [[1, 0, 0], [1, 2, 0], [0, 0], [1, 0]]
    encoded = tokenizer(texts, is_split_into_words=True, padding=True, return_tensors="pt")
    labels = torch.full(encoded["input_ids"].shape, -100)
    for row, words in enumerate(tags):
        seen = set()
        for position, word in enumerate(encoded.word_ids(row)):
            if word is not None and word not in seen:
                seen.add(word)
                labels[row, position] = words[word]
    batch = dict(
        encoded,
        labels=labels,
        word_start_mask=labels.ne(-100),
        visual_features=torch.randn(4, 4, 16),
        image_mask=torch.ones(4, 4),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        outputs = model(**batch)
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(outputs.task_loss.item())  # the CRF loss (the total adds the routing and matching terms)
    assert losses[-1] < 0.5 * losses[0], losses
    # The pretrained encoder weights were really loaded (not random): they equal the checkpoint's.
    from safetensors.torch import load_file

    state = load_file(str(minilm / "model.safetensors"))
    key = next(k for k in state if k.endswith("embeddings.word_embeddings.weight"))
    fresh = RAPForMultimodalNER.from_text_vision_pretrained(str(minilm), None, task="ner", id2label={0: "O"})
    torch.testing.assert_close(fresh.rap.text_encoder.embeddings.word_embeddings.weight, state[key])
