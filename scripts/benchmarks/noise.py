# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Robustness to mismatched images: RAP against RAP without relevance reasoning (Table 5 "MRR", gate = 1).

Both variants are trained with `rap_hf.training` on the corpus as it is (every sample with its own image) and then
tested on the test split under three image conditions:

  * matched    each tweet with its own image and crops;
  * shuffled   the image and crops of every test sample that has an image are handed to another such sample (a fixed,
               seeded derangement: no sample keeps its own picture; samples without image stay without);
  * none       no image at all (text-only input: beta = 0 for RAP, the CFU adds nothing for either variant).

Reported per cell: entity-level F1 (mean and spread over seeds), the drops matched - shuffled and matched - none, the
harm of a wrong image against no image (none - shuffled), the target check "under shuffled images, RAP loses at most
half of what RAP-without-relevance loses" (PASS/MISS; MISS "uninformative" when the models do not read the images at
all), and RAP's mean relevance beta for matched and shuffled images. Where the corpus ships a `manifest.json` (the synthetic
corpora of `scripts/make_sample_data.py` do) F1 and beta are also broken down by sample kind.

The corpus is a larger copy of the bundled Twitter-2017-format sample, generated with the same generator
(`scripts/make_sample_data.py --sizes ...`) into a temporary folder. The text encoder is the offline MiniLM-L6. The
vision encoder is a small ResNet (4 basic stages of one block, widths 32-256) with random weights (nothing pretrained
is reachable offline), fixed by `--vision_seed` and shared by every run, so all runs see the same visual features;
such a network keeps colour and shape statistics, which is where the sample images carry their signal.

Usage:
    python scripts/benchmarks/noise.py                       # 3 seeds x 15 epochs, 500/100/250 (~8 min on one GPU)
    python scripts/benchmarks/noise.py --epochs 3 --sizes 300 60 150   # what fits in ~20 min on 2 CPU cores
    python scripts/benchmarks/noise.py --smoke               # bundled sample, tiny ResNet, 1 epoch, 1 seed (< 60 s)

Results and their reading: docs/benchmarks_noise.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without relying on the editable install
    sys.path.insert(0, str(REPO_ROOT))

DATASET = "twitter2017"
CONDITIONS = ("matched", "shuffled", "none")
# (label, use_relevance_reasoning)
VARIANTS = (("RAP", True), ("RAP w/o relevance (MRR)", False))
VISUAL_COLUMNS = ["visual_features", "image_mask"]
# Sample kinds written by make_sample_data.py (manifest.json), as groups of the per-kind tables.
KIND_GROUPS = {
    "hard (image decides the type)": ("hard",),
    "easy, relevant image": ("easy_relevant",),
    "easy, unrelated image": ("easy_noise",),
    "without image": ("hard_noimage", "easy_noimage"),
}
# Random-init ResNets: small enough for CPU, deep enough to be a real conv net (C_v = last width).
VISION_CONFIG = {"depths": [1, 1, 1, 1], "layer_type": "basic", "hidden_sizes": [32, 64, 128, 256],
                 "embedding_size": 32}  # fmt: skip
SMOKE_VISION_CONFIG = {"depths": [1, 1], "layer_type": "basic", "hidden_sizes": [8, 16], "embedding_size": 8}
TARGET_SHARE = 0.5  # RAP may lose at most this share of what MRR loses under shuffled images
MIN_DROP = 1.0  # F1 points the images must be worth (see target_check) for the check to mean anything


@dataclass
class Settings:
    """Everything one benchmark run depends on (recorded in the JSON report)."""

    seeds: list[int]
    epochs: int
    sizes: list[int] | None  # train/valid/test of the generated corpus; None = use data_dir as is
    data_dir: str | None  # None with sizes=None: the bundled sample
    corpus_seed: int = 13
    vision_seed: int = 0
    vision_config: dict[str, Any] = field(default_factory=lambda: dict(VISION_CONFIG))
    text_model: str = "minilm"
    batch_size: int = 8
    learning_rate: float | None = None  # None: the training default (3e-5 for NER)
    new_params_learning_rate: float = 1e-3
    shuffle_seed: int = 1234
    smoke: bool = False


# ======================================================================================================================
# Setup: corpus, vision encoder
# ======================================================================================================================
def generate_corpus(out: Path, sizes: Sequence[int], seed: int) -> Path:
    """A synthetic corpus in the sample's design, written by `scripts/make_sample_data.py`."""
    command = [sys.executable, str(REPO_ROOT / "scripts" / "make_sample_data.py"), "--out", str(out),
               "--sizes", *map(str, sizes), "--seed", str(seed)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    return out


def save_random_resnet(out: Path, config: dict[str, Any], seed: int) -> Path:
    """A randomly initialised `ResNetModel`, saved so that every run loads the very same vision weights."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(seed)
    ResNetModel(ResNetConfig(**config)).save_pretrained(out)
    return out


def sample_kinds(data_dir: Path | None, num_test: int) -> list[str] | None:
    """Kind of every test sample (from the generator's manifest), or None for a corpus without one."""
    from rap_hf.data import SAMPLE_DIR

    manifest_path = (data_dir or SAMPLE_DIR) / "manifest.json"
    if not manifest_path.exists():
        return None
    entries = json.loads(manifest_path.read_text())[DATASET]["test"]
    return [entry["kind"] for entry in entries] if len(entries) == num_test else None


# ======================================================================================================================
# Training and the three test conditions
# ======================================================================================================================
def benchmark_trainer_class():
    """`RAPTrainer` without per-epoch resumable checkpoints (a benchmark run is never resumed; saves disk and time)."""
    from rap_hf.training import RAPTrainer

    class BenchmarkTrainer(RAPTrainer):
        def save_checkpoint(self, epoch: int) -> None:
            self.accelerator.wait_for_everyone()

    return BenchmarkTrainer


def train_variant(use_relevance: bool, seed: int, settings: Settings, data_dir: Path | None, vision_dir: Path,
                  work_dir: Path):  # fmt: skip
    """Trains one variant on matched images with the project's training loop; returns the finished trainer."""
    from rap_hf.training import DataArguments, ModelArguments, RAPTrainingArguments

    name = f"{'rap' if use_relevance else 'mrr'}-seed{seed}"
    model_args = ModelArguments(
        text_model=settings.text_model, vision_model=str(vision_dir), use_relevance_reasoning=use_relevance
    )
    data_args = DataArguments(
        dataset=DATASET, data_dir=str(data_dir) if data_dir else None,
        feature_cache_dir=str(work_dir / "visual_features"),
    )  # fmt: skip
    args = RAPTrainingArguments(
        output_dir=str(work_dir / "runs" / name), num_train_epochs=settings.epochs, seed=seed,
        per_device_train_batch_size=settings.batch_size, learning_rate=settings.learning_rate,
        new_params_learning_rate=settings.new_params_learning_rate, report_to="none", make_figures=False,
    )  # fmt: skip
    trainer = benchmark_trainer_class()(model_args, data_args, args)
    trainer.train()
    return trainer


def image_holders(test) -> list[int]:
    """Indices of the test samples with at least one real visual slot."""
    return [i for i, mask in enumerate(test["image_mask"]) if any(mask)]


def derangement(indices: Sequence[int], seed: int) -> dict[int, int]:
    """A seeded permutation of `indices` without fixed points: a random order, each taking its successor's item."""
    if len(indices) < 2:
        raise ValueError("shuffling images needs at least two test samples with an image")
    order = list(indices)
    random.Random(seed).shuffle(order)
    return dict(zip(order, order[1:] + order[:1]))


def shuffled_images(test, seed: int):
    """The test split with image+crops (their features and mask) moved between samples by a fixed derangement."""
    import datasets

    source = derangement(image_holders(test), seed)
    rows = [source.get(i, i) for i in range(len(test))]
    visual = test.select_columns(VISUAL_COLUMNS).select(rows).flatten_indices()
    return datasets.concatenate_datasets([test.remove_columns(VISUAL_COLUMNS), visual], axis=1)


def without_images(test):
    """The test split with no visual input at all (the model sees zero features and an all-zero image mask)."""
    return test.remove_columns([c for c in VISUAL_COLUMNS if c in test.column_names])


def evaluate_condition(trainer, dataset, desc: str):
    """`rap_hf.training.evaluate` of the trainer's best model on `dataset` (a variant of the test split)."""
    from rap_hf.training import TrainingCollator, evaluate, make_loader

    config = trainer.accelerator.unwrap_model(trainer.model).config
    collator = TrainingCollator(processor=trainer.processor, num_crops=config.num_crops)
    loader = make_loader(dataset, collator, trainer.args.per_device_eval_batch_size, False, trainer.args.seed)
    # prepared, so that gather_for_metrics knows this loader's length (and no other loader's remainder applies)
    loader = trainer.accelerator.prepare(loader)
    return evaluate(trainer.model, loader, dataset, "ner", trainer.accelerator, desc=desc)


# ======================================================================================================================
# Scoring one run
# ======================================================================================================================
def subset_f1(predictions, indices: Sequence[int]) -> float | None:
    """Entity-level F1 (%) of the samples at `indices`; None when the subset is empty."""
    from rap_hf.metrics import compute_ner_metrics

    if not indices:
        return None
    pred = [predictions.predictions[i] for i in indices]
    gold = [predictions.labels[i] for i in indices]
    return 100 * compute_ner_metrics(pred, gold)["f1"]


def mean_or_none(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def score_condition(predictions, holders: Sequence[int], kinds: list[str] | None) -> dict[str, Any]:
    """F1 (%) overall and per kind group, and mean beta over the samples that hold an image (overall, per group)."""
    with_image = set(holders)
    groups = {}
    for group, members in (KIND_GROUPS.items() if kinds else ()):
        indices = [i for i, kind in enumerate(kinds) if kind in members]
        groups[group] = {
            "n": len(indices),
            "f1": subset_f1(predictions, indices),
            "beta": mean_or_none([predictions.relevance[i] for i in indices if i in with_image]),
        }
    return {
        "f1": 100 * predictions.metrics["f1"],
        "beta": mean_or_none([predictions.relevance[i] for i in holders]),
        "groups": groups,
    }


def run_one(use_relevance: bool, seed: int, settings: Settings, data_dir: Path | None, vision_dir: Path,
            work_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Train one (variant, seed) and score it under every image condition."""
    start = time.perf_counter()
    trainer = train_variant(use_relevance, seed, settings, data_dir, vision_dir, work_dir)
    train_seconds = time.perf_counter() - start
    test = trainer.prepared["test"]
    holders = image_holders(test)
    kinds = sample_kinds(data_dir, len(test))
    splits = {"matched": test, "shuffled": shuffled_images(test, settings.shuffle_seed), "none": without_images(test)}
    scores = {}
    for condition, dataset in splits.items():
        predictions = evaluate_condition(trainer, dataset, desc=condition)
        scores[condition] = score_condition(predictions, holders, kinds)
    if not use_relevance:  # no relevance reasoning: beta is not defined (evaluate reports zeros)
        for condition in scores.values():
            condition["beta"] = None
            for group in condition["groups"].values():
                group["beta"] = None
    return {"seed": seed, "use_relevance_reasoning": use_relevance, "best_epoch": trainer.best["epoch"],
            "validation_f1": 100 * trainer.best["validation"]["f1"], "train_seconds": train_seconds,
            "num_test": len(test), "num_test_with_image": len(holders), "conditions": scores}  # fmt: skip


# ======================================================================================================================
# Aggregation and Markdown tables
# ======================================================================================================================
def spread(values: Sequence[float | None]) -> tuple[float, float] | None:
    """(mean, sample standard deviation) of the non-missing values; sd is 0 for a single value."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.fmean(present), (statistics.stdev(present) if len(present) > 1 else 0.0)


def cell(values: Sequence[float | None], digits: int = 1) -> str:
    stats = spread(values)
    if stats is None:
        return "-"
    mean, sd = stats
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def runs_of(results: list[dict[str, Any]], use_relevance: bool) -> list[dict[str, Any]]:
    return [r for r in results if r["use_relevance_reasoning"] == use_relevance]


def drops(runs: list[dict[str, Any]], condition: str) -> list[float]:
    """Per-seed F1 loss (points) from matched images to `condition`."""
    return [r["conditions"]["matched"]["f1"] - r["conditions"][condition]["f1"] for r in runs]


def f1_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for label, use_relevance in VARIANTS:
        runs = runs_of(results, use_relevance)
        f1s = [cell([r["conditions"][c]["f1"] for r in runs]) for c in CONDITIONS]
        harm = [r["conditions"]["none"]["f1"] - r["conditions"]["shuffled"]["f1"] for r in runs]
        rows.append([label, *f1s, cell(drops(runs, "shuffled")), cell(drops(runs, "none")), cell(harm)])
    header = ["model", "matched", "shuffled", "none", "drop matched-shuffled", "drop matched-none",
              "harm none-shuffled"]  # fmt: skip
    return table(header, rows)


def target_check(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean shuffled-image drops of both variants and the verdict.

    PASS needs RAP's drop <= TARGET_SHARE x MRR's drop, and the comparison must be informative: MRR must lose at least
    MIN_DROP F1 points under shuffled images and RAP at least MIN_DROP without images. A model that does not read the
    images loses nothing when they are shuffled, which says nothing about relevance reasoning.
    """
    rap_runs, mrr_runs = runs_of(results, True), runs_of(results, False)
    rap_drops, mrr_drops = drops(rap_runs, "shuffled"), drops(mrr_runs, "shuffled")
    rap_uses = drops(rap_runs, "none")
    rap, mrr = statistics.fmean(rap_drops), statistics.fmean(mrr_drops)
    informative = mrr >= MIN_DROP and statistics.fmean(rap_uses) >= MIN_DROP
    per_seed = [b >= MIN_DROP and u >= MIN_DROP and a <= TARGET_SHARE * b
                for a, b, u in zip(rap_drops, mrr_drops, rap_uses)]  # fmt: skip
    return {"rap_drop": rap, "mrr_drop": mrr, "rap_drop_without_images": statistics.fmean(rap_uses),
            "ratio": rap / mrr if mrr > 0 else None, "informative": informative,
            "passed": informative and rap <= TARGET_SHARE * mrr, "seeds_passed": sum(per_seed),
            "seeds": len(per_seed)}  # fmt: skip


def target_table(check: dict[str, Any]) -> str:
    ratio = f"{check['ratio']:.2f}" if check["ratio"] is not None else "n/a"
    verdict = "PASS" if check["passed"] else "MISS"
    if not check["informative"]:
        verdict += (f" (uninformative: needs MRR to lose >= {MIN_DROP:g} F1 under shuffled images and RAP "
                    f">= {MIN_DROP:g} without images)")  # fmt: skip
    row = [f"{check['rap_drop']:.1f}", f"{check['mrr_drop']:.1f}", ratio, f"<= {TARGET_SHARE}", verdict,
           f"{check['seeds_passed']}/{check['seeds']}"]  # fmt: skip
    return table(["RAP drop (shuffled)", "MRR drop (shuffled)", "RAP / MRR", "target", "result", "seeds passing"],
                 [row])  # fmt: skip


def beta_table(results: list[dict[str, Any]]) -> str:
    runs = runs_of(results, True)
    groups = [g for g in KIND_GROUPS if g != "without image" and g in runs[0]["conditions"]["matched"]["groups"]]
    rows = []
    for condition in ("matched", "shuffled"):
        values = [cell([r["conditions"][condition]["beta"] for r in runs], 3)]
        values += [cell([r["conditions"][condition]["groups"][g]["beta"] for r in runs], 3) for g in groups]
        rows.append([condition, *values])
    shift = [r["conditions"]["matched"]["beta"] - r["conditions"]["shuffled"]["beta"] for r in runs]
    rows.append(["matched - shuffled", cell(shift, 3), *([""] * len(groups))])
    return table(["images", "all samples with image", *groups], rows)


def kind_table(results: list[dict[str, Any]]) -> str | None:
    first = results[0]["conditions"]["matched"]["groups"]
    if not first:
        return None
    rows = []
    for label, use_relevance in VARIANTS:
        runs = runs_of(results, use_relevance)
        for group in KIND_GROUPS:
            values = [cell([r["conditions"][c]["groups"][group]["f1"] for r in runs]) for c in CONDITIONS]
            rows.append([label, group, str(first[group]["n"]), *values])
    return table(["model", "test samples", "n", *CONDITIONS], rows)


def report(results: list[dict[str, Any]], settings: Settings, environment: dict[str, Any]) -> str:
    """The Markdown report (also what docs/benchmarks_noise.md quotes)."""
    check = target_check(results)
    sections = [
        "### F1 on the test split (entity-level, %, mean ± sd over seeds)",
        f1_table(results),
        "### Target: under shuffled images RAP loses at most half of what RAP w/o relevance loses",
        target_table(check),
        "### Relevance beta of RAP (mean over test samples that hold an image)",
        beta_table(results),
    ]
    kinds = kind_table(results)
    if kinds:
        sections += ["### F1 by sample kind (%)", kinds]
    runs = [[("RAP" if r["use_relevance_reasoning"] else "MRR"), str(r["seed"]), str(r["best_epoch"]),
             f"{r['validation_f1']:.1f}", f"{r['train_seconds']:.0f}"] for r in results]  # fmt: skip
    sections += ["### Runs", table(["model", "seed", "best epoch", "validation F1", "train s"], runs)]
    first = results[0]
    sections.append(
        f"Test samples: {first['num_test']} ({first['num_test_with_image']} with an image). "
        f"Seeds {settings.seeds}, {settings.epochs} epoch(s), batch {settings.batch_size}. "
        f"Machine: {environment['machine']}, device {environment['device']}; torch {environment['torch']} with "
        f"{environment['torch_threads']} intra-op threads; total {environment['total_seconds']:.0f} s."
    )
    return "\n\n".join(sections)


# ======================================================================================================================
# Command line
# ======================================================================================================================
def parse_arguments(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="bundled sample, tiny ResNet, 1 epoch, seed 0 (< 60 s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15, help="15: the models learn to read the images (GPU)")
    parser.add_argument("--sizes", type=int, nargs=3, default=[500, 100, 250], metavar=("TRAIN", "VALID", "TEST"),
                        help="size of the generated corpus (scripts/make_sample_data.py --sizes)")
    parser.add_argument("--data_dir", default=None,
                        help="use this Twitter-2017-layout corpus instead of generating one ('sample': the bundled one)")
    parser.add_argument("--corpus_seed", type=int, default=13, help="seed of the generated corpus")
    parser.add_argument("--vision_seed", type=int, default=0, help="seed of the random ResNet weights")
    parser.add_argument("--shuffle_seed", type=int, default=1234, help="seed of the image permutation")
    parser.add_argument("--text_model", default="minilm")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=None, help="encoder lr (default: training default)")
    parser.add_argument("--new_params_learning_rate", type=float, default=1e-3)
    parser.add_argument("--work_dir", type=Path, default=None, help="runs, corpus, caches (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--report", type=Path, default=None,
                        help="only print the tables of a JSON written by --json earlier (no training)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: robust on a shared machine, where more threads can thrash)")
    parser.add_argument("--verbose", action="store_true", help="training logs")
    args = parser.parse_args(argv)
    if args.smoke:
        settings = Settings(seeds=[0], epochs=1, sizes=None, data_dir=None, vision_config=dict(SMOKE_VISION_CONFIG),
                            smoke=True)  # fmt: skip
    else:
        bundled = args.data_dir == "sample"
        settings = Settings(
            seeds=args.seeds, epochs=args.epochs, sizes=None if args.data_dir else list(args.sizes),
            data_dir=None if bundled else args.data_dir, corpus_seed=args.corpus_seed,
        )  # fmt: skip
    settings.vision_seed, settings.shuffle_seed = args.vision_seed, args.shuffle_seed
    settings.text_model, settings.batch_size = args.text_model, args.batch_size
    settings.learning_rate, settings.new_params_learning_rate = args.learning_rate, args.new_params_learning_rate
    return settings, args


def quiet_libraries(verbose: bool) -> None:
    """Info logs and `datasets` progress bars off unless --verbose (set before the libraries are imported)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if verbose else logging.WARNING)  # fmt: skip
    if not verbose:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def environment_info(total_seconds: float) -> dict[str, Any]:
    import torch

    return {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                       f"{platform.system()} {platform.release()}",
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "total_seconds": total_seconds}  # fmt: skip


def run_benchmark(settings: Settings, work_dir: Path, json_path: Path | None = None) -> list[dict[str, Any]]:
    """Corpus and vision encoder once, then every (seed, variant) run; partial results go to `json_path` as they come."""
    if settings.sizes:
        data_dir: Path | None = generate_corpus(work_dir / "corpus", settings.sizes, settings.corpus_seed)
    else:
        data_dir = Path(settings.data_dir).resolve() if settings.data_dir else None
    vision_dir = save_random_resnet(work_dir / "vision_resnet", settings.vision_config, settings.vision_seed)
    results: list[dict[str, Any]] = []
    for seed in settings.seeds:
        for label, use_relevance in VARIANTS:
            start = time.perf_counter()
            results.append(run_one(use_relevance, seed, settings, data_dir, vision_dir, work_dir))
            scores = results[-1]["conditions"]
            print(f"[{label}, seed {seed}] F1 matched {scores['matched']['f1']:.1f} / shuffled "
                  f"{scores['shuffled']['f1']:.1f} / none {scores['none']['f1']:.1f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
            if json_path:
                json_path.write_text(json.dumps({"settings": asdict(settings), "partial": True, "runs": results}))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = parse_arguments(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(report(saved["runs"], Settings(**saved["settings"]), saved["environment"]))
        return
    quiet_libraries(args.verbose)
    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rap-noise-") as temporary:
        work_dir = (args.work_dir or Path(temporary)).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        # the datasets cache of the generated corpus lives and dies with the work folder
        os.environ.setdefault("HF_DATASETS_CACHE", str(work_dir / "hf_datasets"))
        results = run_benchmark(settings, work_dir, args.json)
    environment = environment_info(time.perf_counter() - start)
    print(report(results, settings, environment))
    if args.json:
        check = target_check(results)
        payload = {"settings": asdict(settings), "environment": environment, "target": check, "runs": results}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
