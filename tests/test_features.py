"""VisualFeatureCache with a tiny real ResNet stand-in: computed once, resumable, invalidated on encoder change."""

import io
import json
import logging
import os
import threading
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import ResNetConfig, ResNetModel

from rap_hf.data import VisualFeatureCache, image_key, load_dataset, vision_fingerprint
from rap_hf.processing_rap import RAPDataCollator, default_image_processor

pytestmark = pytest.mark.usefixtures("one_thread")  # a tiny model on a shared machine: one thread is fastest


class TinyVisionModel(torch.nn.Module):
    """Stand-in for a RAP model: a real (tiny) ResNet behind ``get_image_features``, counting its calls."""

    def __init__(self, seed: int = 0, fail_after: int | None = None):
        super().__init__()
        torch.manual_seed(seed)
        config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic")
        self.vision_encoder = ResNetModel(config)
        self.text_head = torch.nn.Linear(4, 4)  # not part of the vision fingerprint
        self.calls = 0
        self.pictures = 0
        self.fail_after = fail_after

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.pictures += pixel_values.shape[0]
        return self.vision_encoder(pixel_values=pixel_values).pooler_output.flatten(1)


@pytest.fixture(scope="module")
def image_processor():
    return default_image_processor(32)  # small pictures keep the tests fast


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return load_dataset("mnre", cache_dir=tmp_path_factory.mktemp("cache"))


def distinct_pictures(split):
    keys = set()
    for row in split.cast_column("image", datasets.Image(decode=False)).cast_column(
        "crops", datasets.List(datasets.Image(decode=False))
    ):
        keys.update(image_key(v) for v in [row["image"], *row["crops"][:3]] if v is not None)
    return keys


def test_second_pass_does_not_call_the_encoder(sample, image_processor, tmp_path):
    model = TinyVisionModel()
    cache = VisualFeatureCache(tmp_path, model, image_processor, batch_size=16, show_progress=False)
    assert cache.extract(sample["train"]) == len(distinct_pictures(sample["train"])) == model.pictures
    calls = model.calls
    assert calls == -(-model.pictures // 16)
    # same object, new object on the same folder, and attach(): no further encoder call
    assert cache.extract(sample["train"]) == 0
    again = VisualFeatureCache(tmp_path, model, image_processor, show_progress=False)
    assert again.fingerprint == cache.fingerprint and len(again) == model.pictures
    attached = again.attach(sample["train"])
    assert model.calls == calls and again.encoder_calls == 0
    assert attached.column_names[-2:] == ["visual_features", "image_mask"] and "image" not in attached.column_names


def test_features_equal_direct_encoder_output(sample, image_processor, tmp_path):
    model = TinyVisionModel()
    cache = VisualFeatureCache(tmp_path, model, image_processor, num_crops=3, show_progress=False)
    attached = cache.attach(sample["train"]).with_format("torch")
    model.eval()
    for index in (0, 1, 5):
        row, original = attached[index], sample["train"][index]
        pictures = ([original["image"]] if original["image"] is not None else []) + original["crops"][:3]
        expected_mask = [int(original["image"] is not None)] + [1] * len(original["crops"][:3])
        expected_mask += [0] * (4 - len(expected_mask))
        assert row["image_mask"].tolist() == expected_mask
        assert row["visual_features"].shape == (4, 12)
        if pictures:
            pixel_values = image_processor([p.convert("RGB") for p in pictures], return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                direct = model.get_image_features(pixel_values)
            real = row["visual_features"][torch.tensor(expected_mask, dtype=torch.bool)]
            assert torch.allclose(real, direct, atol=1e-5)
        assert row["visual_features"][torch.tensor(expected_mask) == 0].abs().sum() == 0


def test_invalidated_when_encoder_or_processor_changes(sample, image_processor, tmp_path):
    first = TinyVisionModel(seed=0)
    cache = VisualFeatureCache(tmp_path, first, image_processor, show_progress=False)
    count = cache.extract(sample["validation"])
    assert count > 0

    retrained = TinyVisionModel(seed=0)
    with torch.no_grad():
        retrained.vision_encoder.pooler.register_buffer("unused", torch.zeros(1))  # changes the state dict
    other_weights = TinyVisionModel(seed=1)
    bigger_input = default_image_processor(48)
    text_changed = TinyVisionModel(seed=0)
    with torch.no_grad():
        text_changed.text_head.weight.add_(1.0)

    assert vision_fingerprint(text_changed.vision_encoder, image_processor) == cache.fingerprint
    for model, processor in ((retrained, image_processor), (other_weights, image_processor), (first, bigger_input)):
        changed = VisualFeatureCache(tmp_path, model, processor, show_progress=False)
        assert changed.fingerprint != cache.fingerprint and len(changed) == 0
        calls = model.calls
        assert changed.extract(sample["validation"]) == count and model.calls > calls
    # text-side weights do not invalidate: nothing recomputed
    unchanged = VisualFeatureCache(tmp_path, text_changed, image_processor, show_progress=False)
    assert unchanged.extract(sample["validation"]) == 0 and text_changed.calls == 0
    assert len(list(tmp_path.iterdir())) == 4


def test_interrupted_extraction_resumes(sample, image_processor, tmp_path):
    total = len(distinct_pictures(sample["train"]))
    failing = TinyVisionModel(fail_after=3)
    cache = VisualFeatureCache(tmp_path, failing, image_processor, batch_size=8, flush_every=8, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        cache.extract(sample["train"])
    assert failing.training  # the model is put back in its mode even after an interruption
    kept = len(VisualFeatureCache(tmp_path, TinyVisionModel(), image_processor, show_progress=False))
    assert kept == 24  # three flushed shards of 8 survive
    resumed_model = TinyVisionModel()
    resumed = VisualFeatureCache(tmp_path, resumed_model, image_processor, batch_size=8, show_progress=False)
    assert resumed.extract(sample["train"]) == total - kept == resumed_model.pictures


def test_lookup_and_collator(sample, image_processor, tmp_path):
    model = TinyVisionModel()
    cache = VisualFeatureCache(tmp_path, model, image_processor, num_crops=2, show_progress=False)
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    out = cache.lookup([red, None], [[red, red, red], []])
    assert out["visual_features"].shape == (2, 3, 12) and out["image_mask"].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert model.pictures == 1  # the same picture four times is computed once
    assert torch.equal(out["visual_features"][0, 0], out["visual_features"][0, 2])
    attached = cache.attach(sample["test"], remove_images=False)
    assert attached.features["image"] == sample["test"].features["image"]
    batch = RAPDataCollator(pad_token_id=0)([dict(r, input_ids=[1, 2, 3]) for r in attached.select(range(4))])
    assert batch["visual_features"].shape == (4, 3, 12) and batch["visual_features"].dtype == torch.float32
    assert "pixel_values" not in batch and batch["image_mask"].shape == (4, 3)


def test_text_only_dataset_gets_empty_slots(tmp_path, image_processor):
    text_only = load_dataset("mnre", cache_dir=tmp_path / "ds", text_only=True)["validation"]
    model = TinyVisionModel()
    attached = VisualFeatureCache(tmp_path / "f", model, image_processor, show_progress=False).attach(text_only)
    assert torch.tensor(list(attached["image_mask"])).sum() == 0 and len(attached) == 16
    assert attached.features["visual_features"].shape == (4, 12)


# ---------------------------------------------------------------------------------------------------------------------
# A damaged cache is never used: each shard is verified on read, a bad one is named, set aside and recomputed
# ---------------------------------------------------------------------------------------------------------------------
def generated_pictures(rows: int = 6, crops: int = 2, seed: int = 3) -> datasets.Dataset:
    """An in-memory dataset (its map results are never cached on disk) of random PNG pictures, all distinct."""
    generator = np.random.default_rng(seed)

    def png() -> dict:
        buffer = io.BytesIO()
        Image.fromarray(generator.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    features = datasets.Features({"image": datasets.Image(), "crops": datasets.List(datasets.Image())})
    data = {"image": [png() for _ in range(rows)], "crops": [[png() for _ in range(crops)] for _ in range(rows)]}
    return datasets.Dataset.from_dict(data, features=features)


@pytest.fixture(scope="module")
def pictures():
    return generated_pictures()


@pytest.fixture(scope="module")
def fresh_features(pictures, image_processor, tmp_path_factory):
    """The visual features of `pictures` from a fresh cache: what a damaged cache must give again."""
    cache = VisualFeatureCache(
        tmp_path_factory.mktemp("fresh"), TinyVisionModel(), image_processor, show_progress=False
    )
    return torch.tensor(numpy_features(cache.attach(pictures)))


def numpy_features(attached: datasets.Dataset) -> np.ndarray:
    return np.asarray(attached.with_format("numpy")["visual_features"])


def rewrite(path: Path, tensors: dict, metadata: dict | None) -> None:
    save_file(tensors, str(path), metadata=metadata)


def overwrite_bytes(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def damage(kind: str, path: Path) -> None:
    """Damage one shard as a failing disk, a bad copy or a careless edit would."""
    with safe_open(str(path), framework="pt") as handle:
        metadata, features = handle.metadata(), handle.get_tensor("features")
    keys_path = path.with_suffix(".json")
    if kind == "overwritten bytes":  # inside the tensor data, well after the header: the file still loads
        overwrite_bytes(path, path.stat().st_size - 30, bytes(range(1, 13)))
    elif kind == "NaN rows":
        features[[0, 2]] = float("nan")
        rewrite(path, {"features": features}, metadata)
    elif kind == "reversed keys":
        keys_path.write_text(json.dumps(json.loads(keys_path.read_text())[::-1]))
    elif kind == "wrong width":
        rewrite(path, {"features": features[:, :-1].contiguous()}, metadata)
    elif kind == "fewer rows than keys":
        rewrite(path, {"features": features[:-1].contiguous()}, metadata)
    elif kind == "renamed tensor":
        rewrite(path, {"feats": features}, metadata)
    elif kind == "damaged header":
        overwrite_bytes(path, 8, b'{"features":{"dty')  # the JSON header, cut short
    elif kind == "no checksum (older rap_hf)":
        rewrite(path, {"features": features}, None)
    else:
        raise ValueError(kind)


DAMAGES = {
    "overwritten bytes": "checksum mismatch",
    "NaN rows": "2 of its 6 rows hold NaN or infinite values",
    "reversed keys": "checksum mismatch",
    "wrong width": "11 wide, the cache's are 12",
    "fewer rows than keys": "5 feature rows for 6 keys",
    "renamed tensor": "holds the tensors ['feats'], not one 'features' tensor",
    "damaged header": "unreadable safetensors file",
    "no checksum (older rap_hf)": "no checksum (written by an older rap_hf)",
}


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_a_damaged_shard_is_named_set_aside_and_recomputed(
    kind, pictures, fresh_features, image_processor, tmp_path, caplog
):
    writer = VisualFeatureCache(
        tmp_path, TinyVisionModel(), image_processor, batch_size=6, flush_every=6, show_progress=False
    )
    assert writer.extract(pictures) == 18
    shards = sorted(writer.directory.glob("features-*.safetensors"))
    assert len(shards) == 3
    damaged = shards[1]
    damage(kind, damaged)

    model = TinyVisionModel()
    with caplog.at_level(logging.WARNING, logger="rap_hf.data.features"):
        attached = VisualFeatureCache(tmp_path, model, image_processor, show_progress=False).attach(pictures)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert str(damaged) in warnings[0] and DAMAGES[kind] in warnings[0], warnings[0]
    assert model.pictures == 6  # only the damaged shard's pictures are computed again
    assert torch.allclose(torch.tensor(numpy_features(attached)), fresh_features, atol=1e-6)
    assert not damaged.exists() and damaged.with_name(damaged.name + ".rejected").exists()

    # healed: a later run reads every picture from verified shards, without a warning or an encoder call
    caplog.clear()
    later_model = TinyVisionModel()
    later = VisualFeatureCache(tmp_path, later_model, image_processor, show_progress=False)
    with caplog.at_level(logging.WARNING, logger="rap_hf.data.features"):
        assert len(later) == 18 and later.extract(pictures) == 0
    assert later_model.pictures == 0 and not caplog.records


def test_the_training_path_never_sees_a_damaged_shard(tmp_path, minilm, caplog):
    """RAPTrainer.prepare (what train() feeds the model) on a cache whose shard was overwritten in place."""
    from rap_hf import RAPForMultimodalNER, RAPProcessor, RAPTrainer, RAPTrainingArguments

    from conftest import tiny_config

    split = load_dataset("twitter2017", cache_dir=tmp_path / "data")["validation"]
    labels = split.features["ner_tags"].feature.names
    label_maps = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    config = tiny_config("ner", grounded_objects_share=0.0, **label_maps)  # the corpus's crops, as the cache holds
    torch.manual_seed(0)
    model = RAPForMultimodalNER(config)
    processor = RAPProcessor.from_text_model(str(minilm), image_size=32)
    args = RAPTrainingArguments(
        output_dir=str(tmp_path / "run"), feature_cache_dir=str(tmp_path / "features"), eval_strategy="no"
    )
    trainer = RAPTrainer(model=model, args=args, processing_class=processor)

    filled = VisualFeatureCache(
        tmp_path / "features", model.base_model, processor, flush_every=8, batch_size=8, show_progress=False
    )
    filled.extract(split)
    damaged = sorted(filled.directory.glob("features-*.safetensors"))[0]
    damage("overwritten bytes", damaged)
    with caplog.at_level(logging.WARNING, logger="rap_hf.data.features"):
        prepared = trainer.prepare(split, "validation")
    assert any(str(damaged) in r.getMessage() and "checksum mismatch" in r.getMessage() for r in caplog.records)

    fresh = VisualFeatureCache(tmp_path / "fresh", model.base_model, processor, show_progress=False)
    undecoded = split.cast_column("image", datasets.Image(decode=False)).cast_column(
        "crops", datasets.List(datasets.Image(decode=False))
    )
    expected = fresh.lookup(list(undecoded["image"]), list(undecoded["crops"]))["visual_features"]
    assert torch.allclose(torch.tensor(numpy_features(prepared)), expected, atol=1e-6)


def test_non_finite_encoder_output_is_refused_and_not_cached(pictures, image_processor, tmp_path):
    model = TinyVisionModel()
    with torch.no_grad():
        model.vision_encoder.embedder.embedder.convolution.weight[0, 0, 0, 0] = float("nan")
    cache = VisualFeatureCache(tmp_path, model, image_processor, show_progress=False)
    with pytest.raises(FloatingPointError, match="NaN or infinite features for 6 of 6 pictures; nothing was cached"):
        cache.extract(pictures.select(range(2)))
    assert not list(tmp_path.glob("*/features-*"))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_given_as_a_picture_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "picture.jpg"
    os.mkfifo(fifo)
    outcomes = []

    def key(value):
        try:
            outcomes.append(image_key(value))
        except OSError as error:
            outcomes.append(error)

    for value in (str(fifo), fifo, {"bytes": None, "path": str(fifo)}):
        thread = threading.Thread(target=key, args=(value,), daemon=True)
        thread.start()
        thread.join(5)
        assert not thread.is_alive(), "image_key blocked on a FIFO"
    assert [str(o) for o in outcomes] == [f"{str(fifo)!r} is a FIFO (named pipe), not an image file"] * 3
