#!/usr/bin/env python
"""Data pipeline speed: MNRE text loading, visual feature extraction throughput and feature cache size.

    python scripts/benchmarks/data_speed.py [--data-dir ../shared/data] [--images 64] [--device cpu]

Prints a markdown table (the numbers quoted in docs/data.md). The vision encoder is a randomly initialised
ResNet-101-sized ``ResNetModel`` (weights do not change the speed), fed 224x224 crops by the default processor.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ResNetConfig, ResNetModel

from rap_hf.data import VisualFeatureCache, load_dataset
from rap_hf.processing_rap import default_image_processor

REPO = Path(__file__).resolve().parents[2]


class ResNetFeatures(torch.nn.Module):
    """ResNet-101 layout behind ``get_image_features`` (pooled, flattened: [N, 2048])."""

    def __init__(self):
        super().__init__()
        config = ResNetConfig(depths=[3, 4, 23, 3], layer_type="bottleneck", hidden_sizes=[256, 512, 1024, 2048])
        self.vision_encoder = ResNetModel(config)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_encoder(pixel_values=pixel_values).pooler_output.flatten(1)


def time_mnre_load(data_dir: Path) -> tuple[float, float, int]:
    """Seconds to prepare MNRE text (fresh cache) and to load it again (cached); number of examples."""
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        dataset = load_dataset("mnre", data_dir=data_dir, text_only=True, cache_dir=cache)
        prepare = time.perf_counter() - start
        start = time.perf_counter()
        load_dataset("mnre", data_dir=data_dir, text_only=True, cache_dir=cache)
        cached = time.perf_counter() - start
    return prepare, cached, sum(len(split) for split in dataset.values())


def time_feature_extraction(num_images: int, batch_size: int, device: str) -> tuple[float, float, float]:
    """Images/s through the cache (decode + resize + encoder), images/s of the encoder alone, bytes per image."""
    torch.manual_seed(0)
    model = ResNetFeatures()
    processor = default_image_processor(224)
    rng = np.random.default_rng(0)
    pictures = {
        f"random-{i}": Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)) for i in range(num_images)
    }
    with tempfile.TemporaryDirectory() as folder:
        cache = VisualFeatureCache(folder, model, processor, batch_size=batch_size, device=device, show_progress=False)
        cache.compute({key: pictures[key] for key in list(pictures)[:batch_size]})  # warm-up batch
        warm = set(list(pictures)[:batch_size])
        rest = {k: v for k, v in pictures.items() if k not in warm}
        start = time.perf_counter()
        cache.compute(rest)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        through_cache = len(rest) / (time.perf_counter() - start)
        bytes_per_image = cache.size_on_disk() / len(cache)
    model.to(device).eval()
    pixel_values = processor(list(pictures.values())[:batch_size], return_tensors="pt")["pixel_values"].to(device)
    with torch.no_grad():
        model.get_image_features(pixel_values)
        start = time.perf_counter()
        repeats = max(1, len(rest) // batch_size)
        for _ in range(repeats):
            model.get_image_features(pixel_values)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        encoder_only = repeats * batch_size / (time.perf_counter() - start)
    return through_cache, encoder_only, bytes_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=64, help="pictures for the throughput measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rows = []
    if args.data_dir.is_dir():
        prepare, cached, count = time_mnre_load(args.data_dir)
        rows.append(("MNRE text, prepare (parse + write Arrow), fresh cache", f"{prepare:.2f} s ({count} examples)"))
        rows.append(("MNRE text, load again from cache", f"{cached:.2f} s"))
    else:
        rows.append(("MNRE text load", f"skipped: {args.data_dir} not found"))
    through_cache, encoder_only, bytes_per_image = time_feature_extraction(args.images, args.batch_size, args.device)
    rows.append((f"feature extraction via VisualFeatureCache ({args.device}, batch {args.batch_size}, 224x224)",
                 f"{through_cache:.1f} images/s"))  # fmt: skip
    rows.append((f"ResNet-101 forward alone ({args.device})", f"{encoder_only:.1f} images/s"))
    rows.append(("feature cache size per 1,000 images (float32, 2048-d)", f"{bytes_per_image * 1000 / 2**20:.2f} MiB"))

    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}")
    print("| measurement | value |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
