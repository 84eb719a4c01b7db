"""VisualFeatureCache with a tiny real ResNet stand-in: computed once, resumable, invalidated on encoder change."""

import datasets
import pytest
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel

from rap_hf.data import VisualFeatureCache, image_key, load_dataset, vision_fingerprint
from rap_hf.processing_rap import RAPDataCollator, default_image_processor


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
