# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Relevance benchmark: does RAP use the image when it helps and ignore it when it misleads?

Models, each trained with `rap_hf.training` on the corpus as it is (every tweet with its own image):

  * RAP                  the default configuration (relevance reasoning, beta learnt by image-text matching, veto gate);
  * RAP as the paper     `RAPConfig.paper_architecture()`: every equation as written (beta = W_s r_g^N + b_s, gate
                         tanh(beta), m = 3 crops, shared E_t/E_v, no added normalisation), the paper's sizes, beta
                         trained through the task loss only (docs/design.md "Paper mode");
  * MRR ablation         `use_relevance_reasoning=False` (Table 5 "MRR"): the gate is always 1;
  * RAP at the paper's size  the default relevance training, but E_t from a second encoder pass, d = hidden size,
                         L = 4, m = 256: what the faster defaults give up (--variants rap-paper-size);
  * RAP with the paper's equations  the defaults, but the paper's m = 3 crop objects, shared E_t/E_v and Eq. 1-6, 23
                         without rap-hf's added normalisations (--variants rap-paper-equations);
  * text-only baseline   the same encoder + CRF without image (`multimodal=False`).

Test conditions of the same trained model: matched (own image), shuffled (another tweet's image: a seeded
derangement) and none (no image). The corpus (`scripts/make_sample_data.py --sizes ...`, docs/data.md "Signal
design") makes relevance matter: tweets name a topic (beach, snow, concert, ...) and a relevant image shows that
topic's scene; in *hard* tweets the name is ambiguous and only the image's shape tells the entity type; *easy* tweets
are unambiguous alone. Few training images are unrelated (8% of tweets: another scene, a quarter of them with a shape
of a random type), so a model that trusts every image learns to read shapes on easy tweets too; a shuffled test image
then contradicts easy tweets (misleading) and is useless for hard ones. Both shares are options.

Reported (mean ± sd over seeds): F1 per condition overall, on the image-only subset (hard tweets with an image) and
on the text-sufficient subset (easy tweets); beta's ROC AUC for matched above shuffled images on the tweets whose own
image is relevant; and the targets of the relevance issue (PASS/MISS).

Usage:
    python scripts/benchmarks/noise.py --jobs 2                      # 4 models x 3 seeds, 600/150/300 (~1 h, 2 CPUs)
    python scripts/benchmarks/noise.py --variants rap mrr --seeds 0
    python scripts/benchmarks/noise.py --smoke                       # 40/16/16 corpus, 1 epoch, 1 seed
    python scripts/benchmarks/noise.py --report results.json         # tables of a saved run

Results and their reading: docs/benchmarks_noise.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run from a checkout without relying on the editable install
    sys.path.insert(0, str(REPO_ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
from rap_experiment.reporting import markdown_table  # noqa: E402

DATASET = "twitter2017"
CONDITIONS = ("matched", "shuffled", "none")
# Visual objects at prediction (the grounding issue): (condition, its shuffled twin, what the model reads)
OBJECT_SOURCES = (
    ("matched", "shuffled", "the corpus's precomputed crops"),
    ("grounded", "grounded_shuffled", "objects of the offline default grounder (vision-encoder)"),
    ("alone", "alone_shuffled", "the picture alone (no crops, no grounding)"),
)
MAX_OBJECT_F1_GAP = 5.0  # image-only F1 with grounded objects / the picture alone within this of the corpus's crops
# name -> (label, ModelArguments fields, RAPConfig overrides)
VARIANTS = {
    "rap": ("RAP", {}, {}),
    "rap-paper": ("RAP as the paper (paper mode)", {"paper_architecture": True}, {}),
    "mrr": ("MRR ablation (gate = 1)", {"use_relevance_reasoning": False}, {}),
    "rap-paper-size": (
        "RAP at the paper's size (E_t=encoder, d=h, L=4, m=256)",
        {"paper_architecture": True},
        {
            "relevance_gate": "veto",
            "relevance_matching_weight": 2.0,
            "relevance_task_gradient": False,
            "relevance_activation": "sigmoid",
            "visual_objects": "image_and_crops",
            "relevance_own_projections": True,
            "relevance_feature_norm": True,
            "relevance_edge_scaling": True,
            "prompt_layer_norm": True,
            "crop_dropout": 0.5,
            "grounded_objects_share": 0.5,
        },
    ),  # every non-size field: default
    "rap-paper-equations": (
        "RAP with the paper's Eq. 1-6, 23 and m = 3 crops (default sizes and relevance training)",
        {},
        {
            "visual_objects": "crops",
            "relevance_own_projections": False,
            "relevance_feature_norm": False,
            "relevance_edge_scaling": False,
            "prompt_layer_norm": False,
        },
    ),
    "text": ("text-only baseline", {"text_only_baseline": True}, {}),
}
# Which visual objects training shows (RAPConfig.grounded_objects_share, crop_dropout), each for RAP and for MRR; both
# fields are named, so that a variant keeps its meaning when the defaults move (mixed objects since 2026-12-07).
TRAINING_OBJECTS = {  # name -> (label, grounded_objects_share, crop_dropout)
    "crops": ("trained on the corpus's crops", 0.0, 0.0),  # the defaults before mixed objects
    "crop-dropout": ("crops hidden for half the training tweets", 0.0, 0.5),
    "grounded-training": ("trained on grounded objects", 1.0, 0.0),
    "grounded-half": ("half the training pictures grounded", 0.5, 0.0),
    "mixed-objects": ("half the training pictures grounded, crops hidden for half the tweets", 0.5, 0.5),
}


def training_objects_variants() -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """`rap-<name>` and `mrr-<name>` for every entry of TRAINING_OBJECTS."""
    variants = {}
    for name, (label, share, dropout) in TRAINING_OBJECTS.items():
        objects = {"grounded_objects_share": share, "crop_dropout": dropout}
        variants[f"rap-{name}"] = (f"RAP, {label}", {}, objects)
        variants[f"mrr-{name}"] = (f"MRR ablation, {label}", {"use_relevance_reasoning": False}, objects)
    return variants


VARIANTS.update(training_objects_variants())
DEFAULT_VARIANTS = ["rap", "rap-paper", "mrr", "text"]
SUBSETS = {  # subset -> the sample kinds of make_sample_data.py it holds ("hard" tweets always have an image)
    "image-only (hard)": ("hard",),
    "text-sufficient (easy)": ("easy_relevant", "easy_unrelated", "easy_noimage"),
}
# Targets of the relevance issue.
MIN_AUC = 0.9
MIN_IMAGE_ONLY_GAIN = 20.0
MAX_TEXT_SUFFICIENT_LOSS = 1.0
# Corpus design: few unrelated and misleading training images (8% of tweets, a quarter of them with a contradicting
# shape), so that a gate-less model learns to trust shapes on easy tweets too and a shuffled image costs it there
# (docs/benchmarks_noise.md).
UNRELATED_SHARE = 8.0
MISLEADING_SHARE = 0.25
SMOKE_SIZES = (40, 16, 16)  # a generated corpus of the bundled sample's first size (seconds, not minutes)
SMOKE_OVERRIDES = {"fusion_num_heads": 4, "relevance_dim": 16, "routing_layers": 2}


@dataclass
class Settings:
    """Everything one benchmark run depends on (recorded in the JSON report)."""

    seeds: list[int]
    epochs: int
    sizes: list[int] | None  # train/valid/test of the generated corpus; None = use data_dir as is
    data_dir: str | None  # None with sizes=None: the bundled sample
    variants: list[str] = field(default_factory=lambda: list(DEFAULT_VARIANTS))
    corpus_seed: int = 13
    unrelated_share: float = UNRELATED_SHARE  # percent of tweets: easy, with an unrelated image
    misleading_share: float = MISLEADING_SHARE  # of those unrelated images: with a shape of a random type
    text_model: str = "minilm"
    vision_model: str = "efficientnet-lite0"
    batch_size: int = 8
    learning_rate: float | None = None  # None: the training default (3e-5 for NER)
    new_params_learning_rate: float | None = None  # None: the training default (= learning_rate)
    max_grad_norm: float | None = None  # None: the training default (1.0); 0 turns clipping off
    config_overrides: dict[str, Any] = field(default_factory=dict)
    shuffle_seed: int = 1234
    smoke: bool = False
    verbose: bool = False


# ======================================================================================================================
# One run: train a variant, score it under every condition
# ======================================================================================================================
def generate_corpus(out: Path, settings: Settings) -> Path:
    """A corpus in the sample's design with the benchmark's shares, written by `scripts/make_sample_data.py` (its
    `main`, in this process: the generator is seeded, so the corpus is the same as from the command line)."""
    import make_sample_data

    argv = ["--out", str(out), "--sizes", *map(str, settings.sizes), "--seed", str(settings.corpus_seed)]
    argv += ["--unrelated-share", str(settings.unrelated_share), "--misleading-share", str(settings.misleading_share)]
    with contextlib.redirect_stdout(io.StringIO()):  # its one line ("wrote ...") is not the benchmark's output
        make_sample_data.main(argv)
    return out


def variant_trainer(variant: str, seed: int, settings: Settings, data_dir: Path | None, work_dir: Path):
    """The project's Trainer for one variant on matched images (no checkpoints); building it fills the shared visual
    feature cache."""
    from transformers.trainer_callback import PrinterCallback

    from rap_experiment.run import DataArguments, ModelArguments, RunArguments, build_trainer

    _, model_fields, overrides = VARIANTS[variant]
    overrides = {**settings.config_overrides, **overrides}
    if not settings.vision_model:  # the smoke run: a tiny random vision encoder (its features take no time)
        from rap_hf.encoders import TINY_VISION_CONFIG

        overrides.setdefault("vision_config", TINY_VISION_CONFIG)
    model_args = ModelArguments(
        text_model=settings.text_model,
        vision_model=settings.vision_model,
        config_overrides=json.dumps(overrides) if overrides else None,
        **model_fields,
    )
    data_args = DataArguments(dataset=DATASET, data_dir=str(data_dir) if data_dir else None)
    args = RunArguments(
        output_dir=str(work_dir / "runs" / f"{variant}-seed{seed}"),
        num_train_epochs=settings.epochs,
        seed=seed,
        feature_cache_dir=str(work_dir / "visual_features"),
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        new_params_learning_rate=settings.new_params_learning_rate,
        **training_overrides(settings),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = build_trainer(model_args, data_args, args)
    if not settings.verbose:  # with tqdm off the Trainer prints every log dict to stdout, into the report
        trainer.remove_callback(PrinterCallback)
    return trainer


def training_overrides(settings: Settings) -> dict[str, Any]:
    """Training arguments the command line sets beyond the training defaults (gradient clipping)."""
    return {} if settings.max_grad_norm is None else {"max_grad_norm": settings.max_grad_norm}


def train_variant(variant: str, seed: int, settings: Settings, data_dir: Path | None, work_dir: Path):
    """Trains one variant; returns the trainer with its best validation weights loaded."""
    from rap_experiment.run import train_and_test

    trainer = variant_trainer(variant, seed, settings, data_dir, work_dir)
    train_and_test(trainer)
    return trainer


def fill_feature_cache(variant: str, settings: Settings, data_dir: Path | None, work_dir: Path, threads: int) -> None:
    """Computes every image's visual features once (in a worker, on all the runs' threads) before the runs start."""
    import torch

    torch.set_num_threads(threads)
    variant_trainer(variant, 0, settings, data_dir, work_dir)


def subset_f1(predictions, indices: Sequence[int]) -> float | None:
    """Entity-level F1 (%) of the samples at `indices`; None when the subset is empty."""
    from rap_hf.metrics import compute_ner_metrics

    if not indices:
        return None
    pred = [predictions.predictions[i] for i in indices]
    gold = [predictions.labels[i] for i in indices]
    return 100 * compute_ner_metrics(pred, gold)["f1"]


def run_one(variant: str, seed: int, settings: Settings, data_dir: Path | None, work_dir: Path) -> dict[str, Any]:
    """Train one (variant, seed); F1 overall and per subset under every condition, and beta per test sample."""
    from rap_experiment.relevance import find_manifest, image_holders, shuffled_images, test_manifest, without_images

    start = time.perf_counter()
    trainer = train_variant(variant, seed, settings, data_dir, work_dir)
    train_seconds = time.perf_counter() - start
    test = trainer.test_dataset
    text_only = variant == "text"
    holders = image_holders(test) if not text_only else []
    kinds, topics = test_manifest(find_manifest(data_dir), DATASET, len(test))
    subsets = {name: [i for i, kind in enumerate(kinds) if kind in members] for name, members in SUBSETS.items()}
    if text_only:  # no image is read: one evaluation stands for every condition
        predictions = trainer.evaluate_split(test, "test")
        splits = dict.fromkeys(CONDITIONS, predictions)
    else:
        # shuffled: each image goes to a tweet about another topic, so it is wrong for that tweet
        splits = {
            "matched": test,
            "shuffled": shuffled_images(test, settings.shuffle_seed, topics),
            "none": without_images(test),
        }
        splits = {condition: trainer.evaluate_split(dataset, condition) for condition, dataset in splits.items()}
        splits.update(object_conditions(trainer, settings.shuffle_seed, topics))
    conditions = {}
    for condition, predictions in splits.items():
        has_beta = not text_only and VARIANTS[variant][1].get("use_relevance_reasoning", True)
        conditions[condition] = {
            "f1": 100 * predictions.metrics["f1"],
            "subsets": {name: subset_f1(predictions, indices) for name, indices in subsets.items()},
            "beta": predictions.relevance if has_beta else None,
        }
    return {
        "variant": variant,
        "seed": seed,
        "best_epoch": trainer.best["epoch"],
        "validation_f1": 100 * trainer.best["validation"]["f1"],
        "train_seconds": train_seconds,
        "kinds": kinds,
        "holders": holders,
        "conditions": conditions,
    }


def object_conditions(trainer, shuffle_seed: int, topics: Sequence[str]) -> dict[str, Any]:
    """The test split without its crops, evaluated with the objects of the offline default grounder ("grounded")
    and with the picture alone ("alone"), each also with shuffled pictures: what a user's picture gets."""
    from rap_hf.data import load_dataset

    from rap_experiment.relevance import shuffled_images

    raw = load_dataset(DATASET, trainer.data_args.data_dir)["test"]
    without_crops = raw.map(lambda _: {"crops": []}, features=raw.features, desc="test without crops")
    config = trainer.accelerator.unwrap_model(trainer.model).config
    trained_with = config.grounding_model
    splits = {}
    try:
        for name, grounding in (("grounded", "vision-encoder"), ("alone", "none")):
            config.grounding_model = grounding
            splits[name] = trainer.evaluate_split(without_crops, name)
            prepared = trainer.scored_dataset  # with the grounded crops' (or no crops') features attached
            splits[f"{name}_shuffled"] = trainer.evaluate_split(
                shuffled_images(prepared, shuffle_seed, topics), f"{name}_shuffled"
            )
    finally:
        config.grounding_model = trained_with
    return splits


# ======================================================================================================================
# Aggregation
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


def runs_of(results: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    return [r for r in results if r["variant"] == variant]


def present_variants(results: list[dict[str, Any]]) -> list[str]:
    return [v for v in VARIANTS if runs_of(results, v)]


def f1_of(run: dict[str, Any], condition: str, subset: str | None = None) -> float | None:
    scores = run["conditions"][condition]
    return scores["f1"] if subset is None else scores["subsets"][subset]


def beta_auc(
    run: dict[str, Any], relevant_only: bool = True, own: str = "matched", other: str = "shuffled"
) -> float | None:
    """ROC AUC of beta, own above shuffled images (condition `own` vs `other`), over the image holders (whose own
    image is relevant)."""
    from rap_experiment.relevance import RELEVANT_KINDS, own_versus_other

    if own not in run["conditions"] or run["conditions"][own]["beta"] is None:
        return None
    members = [i for i in run["holders"] if not relevant_only or run["kinds"][i] in RELEVANT_KINDS]
    return own_versus_other(run["conditions"][own]["beta"], run["conditions"][other]["beta"], members)["auc"]


def objects_table(results: list[dict[str, Any]]) -> str:
    """Per model and source of visual objects: image-only F1, the text-sufficient loss under shuffled pictures and
    beta's AUC (own above shuffled)."""
    image_only, text_sufficient = list(SUBSETS)
    rows = []
    for variant in present_variants(results):
        runs = [r for r in runs_of(results, variant) if "grounded" in r["conditions"]]
        for condition, shuffled, label in OBJECT_SOURCES if runs else ():
            losses = [f1_of(r, condition, text_sufficient) - f1_of(r, shuffled, text_sufficient) for r in runs]
            rows.append(
                [
                    VARIANTS[variant][0],
                    label,
                    cell([f1_of(r, condition, image_only) for r in runs]),
                    cell([f1_of(r, condition) for r in runs]),
                    cell(losses),
                    cell([beta_auc(r, own=condition, other=shuffled) for r in runs], 3),
                ]
            )
    header = ["model", "visual objects at prediction", f"F1 {image_only}", "F1 all", "text-sufficient loss, shuffled"]
    return markdown_table([*header, "beta AUC (own > shuffled)"], rows)


def mean_beta(run: dict[str, Any], condition: str, kinds: Sequence[str]) -> float | None:
    beta = run["conditions"][condition]["beta"]
    values = [beta[i] for i in run["holders"] if run["kinds"][i] in kinds] if beta is not None else []
    return statistics.fmean(values) if values else None


def f1_table(results: list[dict[str, Any]], subset: str | None = None) -> str:
    rows = []
    for variant in present_variants(results):
        runs = runs_of(results, variant)
        f1s = [cell([f1_of(r, c, subset) for r in runs]) for c in CONDITIONS]
        drops = [cell([f1_of(r, "matched", subset) - f1_of(r, c, subset) for r in runs]) for c in ("shuffled", "none")]
        rows.append([VARIANTS[variant][0], *f1s, *drops])
    return markdown_table(["model", *CONDITIONS, "loss matched-shuffled", "loss matched-none"], rows)


def beta_table(results: list[dict[str, Any]]) -> str:
    rows = []
    all_kinds = ("hard", "easy_relevant", "easy_unrelated")
    for variant in present_variants(results):
        runs = [r for r in runs_of(results, variant) if r["conditions"]["matched"]["beta"] is not None]
        if not runs:
            continue
        cells = [cell([mean_beta(r, c, (k,)) for r in runs], 3) for k in all_kinds for c in ("matched", "shuffled")]
        rows.append(
            [
                VARIANTS[variant][0],
                *cells,
                cell([beta_auc(r) for r in runs], 3),
                cell([beta_auc(r, relevant_only=False) for r in runs], 3),
            ]
        )
    header = [f"{kind} {condition}" for kind in all_kinds for condition in ("matched", "shuffled")]
    return markdown_table(["model", *header, "AUC (relevant own image)", "AUC (all with image)"], rows)


def target_checks(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The relevance issue's four targets, each with the measured value and PASS/MISS."""
    image_only, text_sufficient = list(SUBSETS)
    rap, mrr, text = runs_of(results, "rap"), runs_of(results, "mrr"), runs_of(results, "text")
    checks = []

    def add(name: str, value: float | None, limit: str, passed: bool | None, note: str = "") -> None:
        checks.append({"target": name, "value": value, "limit": limit, "passed": passed, "note": note})

    auc = spread([beta_auc(r) for r in rap])
    add(
        "beta ranks matched above shuffled (ROC AUC, relevant own image)",
        auc and auc[0],
        f">= {MIN_AUC}",
        None if auc is None else auc[0] >= MIN_AUC,
    )
    if rap and mrr:
        rap_f1, mrr_f1 = spread([f1_of(r, "matched") for r in rap]), spread([f1_of(r, "matched") for r in mrr])
        allowed = max(rap_f1[1], mrr_f1[1])
        add(
            "matched images: RAP - MRR (F1)",
            rap_f1[0] - mrr_f1[0],
            f">= -{allowed:.2f} (seed spread)",
            rap_f1[0] - mrr_f1[0] >= -allowed,
        )
    if rap and text:
        gain = statistics.fmean(f1_of(r, "matched", image_only) for r in rap) - statistics.fmean(
            f1_of(r, "matched", image_only) for r in text
        )
        add(
            "image-only subset: RAP - text-only baseline (F1, matched)",
            gain,
            f">= {MIN_IMAGE_ONLY_GAIN:g}",
            gain >= MIN_IMAGE_ONLY_GAIN,
        )
    if rap:
        loss = statistics.fmean(
            f1_of(r, "matched", text_sufficient) - f1_of(r, "shuffled", text_sufficient) for r in rap
        )
        mrr_loss = (
            statistics.fmean(f1_of(r, "matched", text_sufficient) - f1_of(r, "shuffled", text_sufficient) for r in mrr)
            if mrr
            else None
        )
        note = f"MRR ablation loses {mrr_loss:.2f} there" if mrr_loss is not None else ""
        add(
            "text-sufficient subset: RAP loss under shuffled images (F1)",
            loss,
            f"<= {MAX_TEXT_SUFFICIENT_LOSS:g}",
            loss <= MAX_TEXT_SUFFICIENT_LOSS,
            note,
        )
    return checks


def object_checks(results: list[dict[str, Any]], variant: str = "rap") -> list[dict[str, Any]]:
    """The grounding issue's targets for `variant`: grounded objects and the picture alone within 5 F1 of the
    corpus's crops on the image-only subset, beta AUC >= 0.9 and the text-sufficient loss <= 1 F1 with each."""
    image_only, text_sufficient = list(SUBSETS)
    runs = [r for r in runs_of(results, variant) if "grounded" in r["conditions"]]
    checks = []
    for condition, shuffled, label in OBJECT_SOURCES[1:] if runs else ():
        gap = statistics.fmean(f1_of(r, "matched", image_only) - f1_of(r, condition, image_only) for r in runs)
        auc = spread([beta_auc(r, own=condition, other=shuffled) for r in runs])
        loss = statistics.fmean(
            f1_of(r, condition, text_sufficient) - f1_of(r, shuffled, text_sufficient) for r in runs
        )
        name = f"{VARIANTS[variant][0]}, {label}"
        checks += [
            {
                "target": f"{name}: image-only F1 below the corpus's crops",
                "value": gap,
                "limit": f"<= {MAX_OBJECT_F1_GAP:g}",
                "passed": gap <= MAX_OBJECT_F1_GAP,
                "note": "",
            },
            {
                "target": f"{name}: beta ROC AUC",
                "value": auc and auc[0],
                "limit": f">= {MIN_AUC}",
                "passed": None if auc is None else auc[0] >= MIN_AUC,
                "note": "",
            },
            {
                "target": f"{name}: text-sufficient loss under shuffled pictures (F1)",
                "value": loss,
                "limit": f"<= {MAX_TEXT_SUFFICIENT_LOSS:g}",
                "passed": loss <= MAX_TEXT_SUFFICIENT_LOSS,
                "note": "",
            },
        ]
    return checks


def target_table(checks: list[dict[str, Any]]) -> str:
    verdict = {True: "PASS", False: "MISS", None: "n/a"}
    rows = [
        [c["target"], "-" if c["value"] is None else f"{c['value']:.3f}", c["limit"], verdict[c["passed"]], c["note"]]
        for c in checks
    ]
    return markdown_table(["target", "measured", "limit", "result", "note"], rows)


def report(results: list[dict[str, Any]], settings: Settings, environment: dict[str, Any]) -> str:
    """The Markdown report (what docs/benchmarks_noise.md quotes)."""
    image_only, text_sufficient = list(SUBSETS)
    first = results[0]
    counts = {name: sum(kind in members for kind in first["kinds"]) for name, members in SUBSETS.items()}
    sections = [
        "### F1 on the test split (entity-level, %, mean ± sd over seeds)",
        f1_table(results),
        f"### F1 on the {image_only} subset ({counts[image_only]} tweets in the test split)",
        f1_table(results, image_only),
        f"### F1 on the {text_sufficient} subset ({counts[text_sufficient]} tweets)",
        f1_table(results, text_sufficient),
        "### Relevance beta (mean per sample kind) and its ROC AUC for matched above shuffled images",
        beta_table(results),
        "### Targets",
        target_table(target_checks(results)),
    ]
    if any("grounded" in r["conditions"] for r in results):
        object_targets = [check for v in present_variants(results) for check in object_checks(results, v)]
        sections += [
            "### Visual objects at prediction: the corpus's crops, grounded objects, the picture alone",
            objects_table(results),
            "### Targets for a user's picture (grounded objects, the picture alone)",
            target_table(object_targets),
        ]
    runs = [
        [
            VARIANTS[r["variant"]][0],
            str(r["seed"]),
            str(r["best_epoch"]),
            f"{r['validation_f1']:.1f}",
            f"{r['train_seconds']:.0f}",
        ]
        for r in results
    ]
    sections += ["### Runs", markdown_table(["model", "seed", "best epoch", "validation F1", "train s"], runs)]
    sections.append(
        f"Test split: {len(first['kinds'])} tweets. Seeds {settings.seeds}, {settings.epochs} epoch(s), batch "
        f"{settings.batch_size}, text {settings.text_model}, vision {settings.vision_model or 'tiny random ResNet'}. "
        f"Machine: "
        f"{environment['machine']}, device {environment['device']}; torch {environment['torch']} with "
        f"{environment['torch_threads']} intra-op threads, {environment['jobs']} run(s) at a time; total "
        f"{environment['total_seconds']:.0f} s."
    )
    return "\n\n".join(sections)


# ======================================================================================================================
# Command line
# ======================================================================================================================
def parse_arguments(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a 40/16/16 corpus, small RAP layers, 1 epoch, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        default=[600, 150, 300],
        metavar=("TRAIN", "VALID", "TEST"),
        help="size of the generated corpus (scripts/make_sample_data.py --sizes)",
    )
    parser.add_argument(
        "--data_dir", default=None, help="use this generated corpus (with manifest.json) instead of generating one"
    )
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=sorted(VARIANTS))
    parser.add_argument("--corpus_seed", type=int, default=13, help="seed of the generated corpus")
    parser.add_argument(
        "--unrelated_share",
        type=float,
        default=UNRELATED_SHARE,
        help="percent of tweets that are easy and carry an unrelated image",
    )
    parser.add_argument(
        "--misleading_share",
        type=float,
        default=MISLEADING_SHARE,
        help="fraction of those unrelated images that show a shape of a random type",
    )
    parser.add_argument("--shuffle_seed", type=int, default=1234, help="seed of the image permutation")
    parser.add_argument("--text_model", default="minilm")
    parser.add_argument(
        "--vision_model",
        default=None,
        help="default: efficientnet-lite0 (with --smoke: a tiny random ResNet, for speed)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the training default")
    parser.add_argument(
        "--new_params_learning_rate",
        type=float,
        default=1e-3,
        help="lr of the RAP layers (1e-3: they learn to read the images within the CPU budget; the encoders keep 3e-5)",
    )
    parser.add_argument(
        "--max_grad_norm", type=float, default=None, help="gradient clipping; default: the training default, 0: off"
    )
    parser.add_argument("--config_overrides", default=None, help="JSON of RAPConfig fields for every RAP variant")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes, one thread each)")
    parser.add_argument("--work_dir", type=Path, default=None, help="corpus, runs, caches (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    parser.add_argument("--report", type=Path, default=None, help="print the tables of a saved --json, no training")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per run")
    parser.add_argument("--verbose", action="store_true", help="training logs")
    args = parser.parse_args(argv)
    overrides = json.loads(args.config_overrides) if args.config_overrides else {}
    if args.smoke:
        settings = Settings(
            seeds=[0],
            epochs=1,
            sizes=list(SMOKE_SIZES),
            data_dir=None,
            variants=list(args.variants),
            config_overrides={**SMOKE_OVERRIDES, **overrides},
            smoke=True,
        )
    else:
        settings = Settings(
            seeds=args.seeds,
            epochs=args.epochs,
            sizes=None if args.data_dir else list(args.sizes),
            data_dir=args.data_dir,
            variants=list(args.variants),
            corpus_seed=args.corpus_seed,
            unrelated_share=args.unrelated_share,
            misleading_share=args.misleading_share,
            config_overrides=overrides,
        )
    settings.shuffle_seed, settings.batch_size = args.shuffle_seed, args.batch_size
    settings.text_model = args.text_model
    settings.vision_model = (
        args.vision_model if args.vision_model is not None else ("" if args.smoke else "efficientnet-lite0")
    )
    settings.learning_rate, settings.new_params_learning_rate = args.learning_rate, args.new_params_learning_rate
    settings.max_grad_norm = args.max_grad_norm
    settings.verbose = args.verbose
    return settings, args


def quiet_libraries(verbose: bool) -> None:
    """Info logs and `datasets` progress bars off unless --verbose (set before the libraries are imported)."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO if verbose else logging.WARNING
    )
    if not verbose:
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TQDM_DISABLE", "1")


def environment_info(total_seconds: float, jobs: int) -> dict[str, Any]:
    import torch

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.system()} {platform.release()}",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jobs": jobs,
        "torch_threads": torch.get_num_threads(),
        "total_seconds": total_seconds,
    }


def run_in_worker(
    variant: str, seed: int, settings: Settings, data_dir: Path | None, work_dir: Path, threads: int
) -> dict[str, Any]:
    """One run in a worker process (its own torch threads)."""
    import torch

    torch.set_num_threads(threads)
    return run_one(variant, seed, settings, data_dir, work_dir)


class InThisProcess:
    """`--jobs 1`: each run in this process, when its result is asked for (in plan order, so partial results are
    written after every run as with workers); a worker process would import everything again."""

    def __enter__(self) -> InThisProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def submit(self, function, *args) -> DeferredRun:
        return DeferredRun(function, args)


class DeferredRun:
    """The `Future.result()` of `InThisProcess`: runs the call on first use, restoring torch's thread count."""

    def __init__(self, function, args: tuple):
        self.function, self.args, self.value, self.done = function, args, None, False

    def result(self) -> Any:
        import torch

        if not self.done:
            threads = torch.get_num_threads()
            try:
                self.value, self.done = self.function(*self.args), True
            finally:
                torch.set_num_threads(threads)  # the runs set their own
        return self.value


def run_benchmark(
    settings: Settings, work_dir: Path, jobs: int, threads: int, json_path: Path | None = None
) -> list[dict[str, Any]]:
    """Corpus and feature cache once, then every (seed, variant) run; partial results go to `json_path`."""
    from rap_hf.data import load_dataset

    if settings.sizes:
        data_dir: Path | None = generate_corpus(work_dir / "corpus", settings)
    else:
        data_dir = Path(settings.data_dir).resolve() if settings.data_dir else None
    load_dataset(DATASET, str(data_dir) if data_dir else None)  # prepare the Arrow cache once, before the workers
    plan = [(variant, seed) for seed in settings.seeds for variant in settings.variants]
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else InThisProcess() as pool:
        multimodal = next((v for v, _ in plan if v != "text"), None)
        if multimodal is not None:  # every run reads the same visual features: compute them once, first
            pool.submit(fill_feature_cache, multimodal, settings, data_dir, work_dir, jobs * threads).result()
        futures = [pool.submit(run_in_worker, v, s, settings, data_dir, work_dir, threads) for v, s in plan]
        for (variant, seed), future in zip(plan, futures):
            results.append(future.result())
            scores = results[-1]["conditions"]
            print(
                f"[{VARIANTS[variant][0]}, seed {seed}] F1 matched {scores['matched']['f1']:.1f} / shuffled "
                f"{scores['shuffled']['f1']:.1f} / none {scores['none']['f1']:.1f} "
                f"({results[-1]['train_seconds']:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
            if json_path:
                json_path.write_text(json.dumps({"settings": asdict(settings), "partial": True, "runs": results}))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    settings, args = parse_arguments(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        partial = {"machine": "?", "device": "?", "torch": "?", "torch_threads": "?", "jobs": "?", "total_seconds": 0}
        environment = saved.get("environment", partial)  # a run still going has written its finished runs only
        print(report(saved["runs"], Settings(**saved["settings"]), environment))
        return
    quiet_libraries(args.verbose)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rap-noise-") as temporary:
        work_dir = (args.work_dir or Path(temporary)).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        # the datasets cache of the generated corpus lives and dies with the work folder
        os.environ.setdefault("HF_DATASETS_CACHE", str(work_dir / "hf_datasets"))
        results = run_benchmark(settings, work_dir, args.jobs, args.threads, args.json)
    environment = environment_info(time.perf_counter() - start, args.jobs)
    environment["torch_threads"] = args.threads
    print(report(results, settings, environment))
    if args.json:
        payload = {
            "settings": asdict(settings),
            "environment": environment,
            "targets": target_checks(results),
            "object_targets": [c for v in present_variants(results) for c in object_checks(results, v)],
            "runs": results,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
