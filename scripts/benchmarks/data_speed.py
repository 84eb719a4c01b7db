#!/usr/bin/env python
"""Data pipeline speed: MNRE text loading, visual feature extraction throughput and what the feature cache costs.

    python scripts/benchmarks/data_speed.py                  # EfficientNet-Lite0 (default) next to ResNet-101 sizes
    python scripts/benchmarks/data_speed.py --threads 1 --images 32 --data-dir ../shared/data
    python scripts/benchmarks/data_speed.py --vision_model resnet-101-sized --compare none   # one encoder only

Vision encoders, each with its own image processor and reported in its own column:

* ``--vision_model`` (default ``efficientnet-lite0``, the package default: the ImageNet-pretrained EfficientNet-Lite0,
  1280-d features) and ``--compare`` (default ``resnet-101-sized``: a randomly initialised ``ResNetModel`` with the
  layout of the paper's ``microsoft/resnet-101``, 2048-d; weights do not change the speed; ``none`` skips it). Any
  other name or folder that ``rap_hf.encoders.resolve_vision_model`` accepts works for both.

Per encoder: images/s of feature extraction through ``VisualFeatureCache`` (decode + preprocess + encoder) and of the
encoder forward alone, on generated 320x256 pictures; the cache's bytes per image; and on the bundled sample
(``--sample``, images and crops of all splits) the time to fill the cache and attach the features, its size on disk,
and one training epoch over the sample's train split (MiniLM-L6 + RAP, NER) from the cached features vs from pixels.
Prints Markdown tables (the numbers quoted in docs/data.md and docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from rap_hf import RAPForMultimodalNER
from rap_hf.data import NER_LABELS, VisualFeatureCache, load_dataset
from rap_hf.encoders import (
    OFFLINE_TEXT_MODEL,
    VISION_LABELS,
    add_vision_model_arguments,
    benchmark_vision_path,
    load_image_processor,
    resolve_text_model,
)
from rap_hf.processing_rap import RAPDataCollator, RAPProcessor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.reporting import markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def encoder_label(name: str) -> str:
    return VISION_LABELS.get(name, name)


def build_model(text_model: str, vision_model: str) -> tuple[RAPForMultimodalNER, RAPProcessor]:
    """MiniLM-L6 (or `text_model`) + the vision encoder, RAP NER layers on top, and the matching processor."""
    torch.manual_seed(0)
    text_path = resolve_text_model(text_model)
    vision_path = benchmark_vision_path(vision_model)
    processor = RAPProcessor.from_text_model(text_path, image_processor=load_image_processor(vision_path))
    labels = dict(enumerate(NER_LABELS))
    model = RAPForMultimodalNER.from_text_vision_pretrained(
        text_path, vision_path, task="ner", id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    if len(processor.tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(processor.tokenizer))
    return model, processor


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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


def time_feature_extraction(model, processor, num_images: int, batch_size: int, device: str) -> dict[str, float]:
    """Images/s through the cache (decode + preprocess + encoder) and of the encoder alone; bytes per image."""
    rng = np.random.default_rng(0)
    pictures = {
        f"random-{i}": Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)) for i in range(num_images)
    }
    with tempfile.TemporaryDirectory() as folder:
        cache = VisualFeatureCache(folder, model, processor, batch_size=batch_size, device=device, show_progress=False)
        cache.compute({key: pictures[key] for key in list(pictures)[:batch_size]})  # warm-up batch
        rest = dict(list(pictures.items())[batch_size:])
        start = time.perf_counter()
        cache.compute(rest)
        synchronize(device)
        through_cache = len(rest) / (time.perf_counter() - start)
        bytes_per_image = cache.size_on_disk() / len(cache)
    model.to(device).eval()
    pixel_values = processor.image_processor(list(pictures.values())[:batch_size], return_tensors="pt")
    pixel_values = pixel_values["pixel_values"].to(device)
    with torch.no_grad():
        model.get_image_features(pixel_values)
        repeats = max(1, len(rest) // batch_size)
        start = time.perf_counter()
        for _ in range(repeats):
            model.get_image_features(pixel_values)
        synchronize(device)
        encoder_only = repeats * batch_size / (time.perf_counter() - start)
    model.cpu()
    return {"through_cache": through_cache, "encoder_only": encoder_only, "bytes_per_image": bytes_per_image}


def train_epoch(model, dataset: datasets.Dataset, processor, batch_size: int, device: str) -> float:
    """Seconds of one training epoch (forward, backward, AdamW step) after one warm-up step; the visual input is
    whatever the rows carry: `visual_features` (cached) or `image`/`crops` (processed and encoded every step)."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=RAPDataCollator(processor))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch: dict) -> None:
        loss = model(**{key: value.to(device) for key, value in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(next(iter(loader)))  # warm-up: allocations and optimizer state
    synchronize(device)
    start = time.perf_counter()
    for batch in loader:
        step(batch)
    synchronize(device)
    seconds = time.perf_counter() - start
    model.cpu().eval()
    return seconds


def time_sample_cache(
    model, processor, sample: str, batch_size: int, train_batch_size: int, device: str
) -> dict[str, float]:
    """The feature cache on the bundled sample: fill + attach (seconds), pictures, bytes on disk, and a training epoch
    over its train split from the cache vs from pixels (seconds). Everything lives in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        raw = load_dataset(sample, cache_dir=Path(folder) / "datasets")
        prepared = datasets.DatasetDict(
            {
                split: dataset.map(processor.preprocess, batched=True, fn_kwargs={"task": "ner"})
                for split, dataset in raw.items()
            }
        )
        cache = VisualFeatureCache(
            Path(folder) / "features", model, processor, batch_size=batch_size, device=device, show_progress=False
        )
        start = time.perf_counter()
        attached = cache.attach(prepared)
        fill = time.perf_counter() - start
        cached_epoch = train_epoch(model, attached["train"], processor, train_batch_size, device)
        pixel_epoch = train_epoch(model, prepared["train"], processor, train_batch_size, device)
        return {
            "fill": fill,
            "pictures": len(cache),
            "bytes": cache.size_on_disk(),
            "examples": len(raw["train"]),
            "cached_epoch": cached_epoch,
            "pixel_epoch": pixel_epoch,
        }


def measure_encoder(name: str, args: argparse.Namespace) -> dict[str, float]:
    model, processor = build_model(args.text_model, name)
    vision = model.base_model.vision_encoder
    result = {
        "feature_size": model.config.vision_feature_size,
        "vision_params": sum(p.numel() for p in vision.parameters()),
    }
    result.update(time_feature_extraction(model, processor, args.images, args.batch_size, args.device))
    if args.sample != "none":
        result.update(
            time_sample_cache(model, processor, args.sample, args.batch_size, args.train_batch_size, args.device)
        )
    return result


def encoder_rows(results: dict[str, dict[str, float]], args: argparse.Namespace) -> list[list[str]]:
    """One row per measurement, one column per encoder."""
    columns = list(results.values())

    def row(label: str, cell) -> list[str]:
        return [label, *(cell(result) for result in columns)]

    rows = [
        row("pooled feature size C_v", lambda r: f"{r['feature_size']}"),
        row("vision encoder parameters", lambda r: f"{r['vision_params'] / 1e6:.1f}M"),
        row(
            f"feature extraction via `VisualFeatureCache` (decode + preprocess + encoder), batch {args.batch_size}, "
            f"{args.images} pictures 320x256",
            lambda r: f"{r['through_cache']:.1f} images/s",
        ),
        row("vision encoder forward alone", lambda r: f"{r['encoder_only']:.1f} images/s"),
        row(
            "feature cache size per 1,000 images (float32)", lambda r: f"{r['bytes_per_image'] * 1000 / 2**20:.2f} MiB"
        ),
    ]
    if args.sample != "none":
        first = columns[0]
        rows += [
            row(
                f"bundled `{args.sample}` sample: fill the cache ({first['pictures']} pictures: images + crops, "
                "all splits) and attach the features",
                lambda r: f"{r['fill']:.1f} s",
            ),
            row("its cache on disk", lambda r: f"{r['bytes'] / 2**10:.0f} KiB"),
            row(
                f"training epoch over its train split ({first['examples']} examples, batch {args.train_batch_size}), "
                "cached features",
                lambda r: f"{r['cached_epoch']:.1f} s",
            ),
            row(
                "the same epoch from pixels (pictures decoded, processed and encoded every step)",
                lambda r: f"{r['pixel_epoch']:.1f} s ({r['pixel_epoch'] / r['cached_epoch']:.1f}x)",
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_vision_model_arguments(parser)
    parser.add_argument("--text-model", default=OFFLINE_TEXT_MODEL, help="RAP's text encoder (default: minilm)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="MNRE text loading is timed when this folder exists",
    )
    parser.add_argument("--images", type=int, default=64, help="generated pictures for the throughput measurement")
    parser.add_argument("--batch-size", type=int, default=16, help="pictures per encoder call")
    parser.add_argument(
        "--sample",
        default="twitter2015",
        choices=["twitter2015", "twitter2017", "none"],
        help="bundled sample for the cache cost and the cached vs from-pixels epoch ('none' skips)",
    )
    parser.add_argument("--train-batch-size", type=int, default=8, help="batch size of the timed training epoch")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images <= args.batch_size:
        parser.error("--images must be larger than --batch-size (the first batch is a warm-up)")
    datasets.disable_progress_bars()

    cpu = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu}), "
        f"device {args.device}; load average before: {os.getloadavg()[0]:.1f}"
    )
    print()
    if args.data_dir.is_dir():
        prepare, cached, count = time_mnre_load(args.data_dir)
        print(
            markdown_table(
                ["MNRE text", "seconds"],
                [
                    [f"prepare (parse + write Arrow), fresh cache ({count:,} examples)", f"{prepare:.2f} s"],
                    ["load again from the cache", f"{cached:.2f} s"],
                ],
            )
        )
    else:
        print(f"MNRE text load: skipped ({args.data_dir.name} not found)")
    print()

    names = [args.vision_model] + ([args.compare] if args.compare not in ("none", args.vision_model) else [])
    results = {name: measure_encoder(name, args) for name in names}
    print(markdown_table(["measurement", *(encoder_label(name) for name in names)], encoder_rows(results, args)))
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
