#!/usr/bin/env python
# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""How well the offline grounder finds objects, and what it costs per picture on CPU.

Pictures: the relevance corpus's design (`scripts/make_sample_data.py`, `shapes_image`): a topic's scene with 1-3
coloured shapes whose boxes are known; the shapes are what the corpus's precomputed crops show and what a grounder
should find in a user's picture. Each configuration of `rap_hf.grounding.VisionEncoderGrounder` (over the vision
encoder `--vision_model`, default the pretrained EfficientNet-Lite0) grounds every picture; a shape counts as

* found: a box overlaps it with IoU >= 0.5;
* covered: a box no more than 4x its area holds >= 70% of it (what a crop needs to show the object).

    python scripts/benchmarks/grounding.py                      # 300 pictures, 1 thread
    python scripts/benchmarks/grounding.py --pictures 100 --threads 2 --json grounding.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rap_hf.encoders import load_image_processor, resolve_vision_model
from rap_hf.grounding import Box, VisionEncoderGrounder, box_iou
from rap_hf.modeling_rap import load_pretrained_vision_encoder

SCRIPTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SCRIPTS))  # scripts/: the sample generator and the experiment helpers
import make_sample_data  # noqa: E402

from rap_experiment.reporting import markdown_table  # noqa: E402

# name -> VisionEncoderGrounder keyword arguments; the first is the default
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "feature contrast, stride 16, threshold 0.6 (default)": {},
    "channel norm of the last map, 2x input, threshold 0.7, half-cell margin (before)": {
        "saliency": "norm",
        "feature_stride": None,
        "threshold": 0.7,
        "margin": 0.5,
        "scale": 2.0,
    },
    "channel norm, stride 16": {"saliency": "norm"},
    "feature contrast, last map (stride 32)": {"feature_stride": None},
    "feature contrast, stride 8": {"feature_stride": 8},
    "feature contrast, stride 16, 2x input": {"scale": 2.0},
    "feature contrast, stride 16, threshold 0.5": {"threshold": 0.5},
    "feature contrast, stride 16, threshold 0.7": {"threshold": 0.7},
    "feature contrast, stride 16, half-cell margin": {"margin": 0.5},
}
TABLE_HEADING = "### Objects of the relevance corpus's pictures found by the offline grounder"
FOUND_IOU = 0.5
COVERED_SHARE, COVERED_MAX_AREA = 0.7, 4.0


def corpus_pictures(count: int, seed: int, size: int) -> tuple[list[Image.Image], list[list[tuple]]]:
    """`count` pictures of the relevance corpus's design with 1-3 shapes each, and the shapes' boxes."""
    rng = np.random.default_rng(seed)
    topics = list(make_sample_data.SCENES)
    pictures, boxes = [], []
    for index in range(count):
        types = list(rng.choice(make_sample_data.TYPES, int(rng.integers(1, 4)), replace=False))
        picture, shapes = make_sample_data.shapes_image(rng, types, topics[index % len(topics)], size)
        pictures.append(picture)
        boxes.append(shapes)
    return pictures, boxes


def covered(shape: tuple, boxes: list[Box]) -> bool:
    """Whether a box no more than COVERED_MAX_AREA times the shape's area holds COVERED_SHARE of it."""
    x0, y0, x1, y1 = shape
    area = (x1 - x0) * (y1 - y0)
    for b0, c0, b1, c1 in boxes:
        inside = max(0, min(x1, b1) - max(x0, b0)) * max(0, min(y1, c1) - max(y0, c0))
        if (b1 - b0) * (c1 - c0) <= COVERED_MAX_AREA * area and inside >= COVERED_SHARE * area:
            return True
    return False


def measure(grounder: VisionEncoderGrounder, pictures: list, shapes: list, batch_size: int) -> dict[str, float]:
    grounder.ground(pictures[:1])  # warm-up: first-call allocations are not the grounder's cost
    start = time.perf_counter()
    found_boxes: list[list[Box]] = []
    for begin in range(0, len(pictures), batch_size):
        found_boxes += grounder.ground(pictures[begin : begin + batch_size])
    seconds = time.perf_counter() - start
    pairs = [(shape, boxes) for truth, boxes in zip(shapes, found_boxes) for shape in truth]
    return {
        "found": float(np.mean([max((box_iou(s, b) for b in boxes), default=0.0) >= FOUND_IOU for s, boxes in pairs])),
        "covered": float(np.mean([covered(s, boxes) for s, boxes in pairs])),
        "boxes_per_picture": float(np.mean([len(boxes) for boxes in found_boxes])),
        "ms_per_picture": 1000 * seconds / len(pictures),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64, help="the corpus's picture size (make_sample_data)")
    parser.add_argument("--vision_model", default="efficientnet-lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--configurations", nargs="*", default=None, help="names to run (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = resolve_vision_model(args.vision_model)
    encoder, image_processor = load_pretrained_vision_encoder(folder).eval(), load_image_processor(folder)
    pictures, shapes = corpus_pictures(args.pictures, args.seed, args.image_size)
    names = args.configurations or list(CONFIGURATIONS)
    unknown = sorted(set(names) - set(CONFIGURATIONS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {list(CONFIGURATIONS)}")
    results = []
    for name in names:
        grounder = VisionEncoderGrounder(encoder, image_processor, num_objects=3, **CONFIGURATIONS[name])
        results.append({"configuration": name, **measure(grounder, pictures, shapes, args.batch_size)})
    rows = [
        [
            r["configuration"],
            f"{r['found']:.3f}",
            f"{r['covered']:.3f}",
            f"{r['boxes_per_picture']:.2f}",
            f"{r['ms_per_picture']:.1f}",
        ]
        for r in results
    ]
    header = [
        "grounder (VisionEncoderGrounder)",
        "shapes found (IoU >= 0.5)",
        "shapes covered",
        "boxes / picture",
        "ms / picture",
    ]
    print(TABLE_HEADING)
    print(
        f"{args.pictures} pictures ({sum(map(len, shapes))} shapes), {args.vision_model}, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}\n"
    )
    print(markdown_table(header, rows))
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None}, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
