#!/usr/bin/env python
# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Reproduce the paper's tables: each table expands into its grid of training runs (x seeds), every run goes through
scripts/run_rap.py, and one report puts the authors' numbers (labelled as theirs) beside ours (mean ± sd over seeds).

    python scripts/reproduce.py --table all --data_dir data/ --output_dir repro/ --gpus 0,1,2,3
    python scripts/reproduce.py --table 5 --dry_run                  # the commands, runs and estimated GPU hours
    python scripts/reproduce.py --table 5 --datasets twitter2017 --text_model minilm --vision_model "" \\
        --text_only_data True --num_train_epochs 2 --max_train_samples 500      # extra options go to run_rap.py
    python scripts/reproduce.py --smoke --table all                  # the whole grid on the bundled sample, CI-sized

Tables (Chen et al., 2025): 3 main results (RAP and the text-only baseline: BERT-CRF for NER, BERT for MRE); 4 the
number of routing layers L = 1..6; 5 ablations (without relevance reasoning "MRR", without each routing unit, without
path regularisation); 6 the path-regularisation weight gamma. Defaults are the paper's setting: bert-base-uncased,
ResNet-101, `--paper_architecture`, the Sec. 4.2 hyper-parameters (run_rap.py's defaults). Runs shared by tables
(e.g. Table 3's RAP is Table 4's L = 4 and Table 6's gamma = 1.5) are trained once.

Each run writes <output_dir>/<dataset>/<run>/seed<N>/ (model, results.json, card) and a log in <output_dir>/logs/.
A run whose results.json exists is skipped, one cut off resumes from its last complete checkpoint; the report
(report.md, runs.csv, runs.json in --output_dir) is written from whatever has finished.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

from rap_hf.configuration_rap import DEFAULT_ROUTING_LAYERS, FUSION_UNITS, PAPER_ROUTING_LAYERS, RAPConfig
from rap_hf.encoders import PAPER_TEXT_MODEL, PAPER_VISION_MODEL, TINY_VISION_CONFIG, save_tiny_text_model

from rap_experiment.reporting import markdown_table
from rap_experiment.run import TASK_OF_DATASET, latest_complete_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_RAP = REPO_ROOT / "scripts" / "run_rap.py"
DATASETS = ("twitter2015", "twitter2017", "mnre")
DATASET_TITLES = {"twitter2015": "Twitter-2015", "twitter2017": "Twitter-2017", "mnre": "MRE"}
PRF = ("precision", "recall", "f1")
# Training-set sizes (paper Table 2) and the paper's batch sizes and epochs (Sec. 4.2), for the GPU-hour estimate.
TRAIN_SIZES = {"twitter2015": 4000, "twitter2017": 3373, "mnre": 12247}
PAPER_BATCH = {"ner": 8, "re": 16}
PAPER_EPOCHS = {"ner": 30, "re": 15}
EVAL_OVERHEAD = 1.15  # validation after every epoch plus the test pass, relative to training steps alone
SMOKE_OPTIONS = [
    "--num_train_epochs",
    "1",
    "--max_train_samples",
    "8",
    "--max_eval_samples",
    "8",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--make_figures",
    "False",
    "--learning_rate",
    "1e-3",
    "--new_params_learning_rate",
    "1e-3",
    "--save_strategy",
    "no",
    "--max_length",
    "64",
]
SMOKE_OVERRIDES = {
    "vision_config": TINY_VISION_CONFIG,
    "fusion_num_heads": 4,
    "relevance_dim": 16,
    "prompt_source_length": 64,
}

# The authors' numbers, in percent: Table 3 and 4 as (P, R, F1), Tables 5 and 6 as F1.
PAPER_TABLE3 = {
    ("Text-only baseline", "twitter2015"): (69.22, 74.59, 71.81),  # BERT-CRF
    ("Text-only baseline", "twitter2017"): (83.32, 83.57, 83.44),  # BERT-CRF
    ("Text-only baseline", "mnre"): (75.39, 61.17, 57.03),  # BERT (as printed; F1 is not the mean of P and R)
    ("RAP", "twitter2015"): (74.38, 78.92, 76.58),
    ("RAP", "twitter2017"): (87.63, 87.89, 87.76),
    ("RAP", "mnre"): (83.59, 82.67, 83.13),
}
PAPER_TABLE4 = {
    (f"L = {layers}", dataset): values
    for layers, row in {
        2: ((74.35, 78.62, 76.42), (87.42, 87.79, 87.60), (83.49, 82.47, 82.97)),
        3: ((74.37, 78.67, 76.46), (87.55, 87.84, 87.69), (83.59, 82.67, 83.13)),
        4: ((74.38, 78.92, 76.58), (87.63, 87.89, 87.76), (83.57, 82.23, 82.89)),
        5: ((74.37, 78.82, 76.53), (87.65, 87.86, 87.75), (83.60, 81.55, 82.56)),
        6: ((74.40, 78.79, 76.53), (87.62, 87.84, 87.73), (83.55, 81.55, 82.54)),
    }.items()
    for dataset, values in zip(DATASETS, row)
}
ABLATIONS = {  # Table 5 column -> run_rap.py switches
    "MRR": {"use_relevance_reasoning": False},
    "RAU": {"fusion_units": "fsru,cfu"},
    "FSRU": {"fusion_units": "rau,cfu"},
    "CFU": {"fusion_units": "rau,fsru"},
    "path reg. (γ = 0)": {"path_regularization_weight": 0.0},
    "ALL": {},
}
PAPER_TABLE5 = {
    (DATASET_TITLES[dataset], column): (value,)
    for dataset, row in {
        "twitter2015": (74.56, 75.66, 75.15, 72.47, 75.98, 76.58),
        "twitter2017": (83.83, 86.68, 85.23, 84.55, 87.45, 87.76),
        "mnre": (81.45, 81.97, 78.81, 75.62, 82.71, 83.13),
    }.items()  # the gamma = 0 column is the paper's Table 6
    for column, value in zip(ABLATIONS, row)
}
GAMMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
PAPER_TABLE6 = {
    (DATASET_TITLES[dataset], f"γ = {gamma:g}"): (value,)
    for dataset, row in {
        "twitter2015": (75.98, 76.27, 76.45, 76.58, 76.52, 76.44, 76.48),
        "twitter2017": (87.45, 87.78, 87.81, 87.76, 87.79, 87.58, 87.48),
        "mnre": (82.71, 82.68, 82.74, 83.13, 82.87, 82.89, 82.63),
    }.items()
    for gamma, value in zip(GAMMAS, row)
}


@dataclass(frozen=True)
class PaperTable:
    """One table of the paper: which run fills each (row, column) cell, the metrics shown, the authors' numbers."""

    number: int
    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    metrics: tuple[str, ...]
    cell: Callable[[str, str], tuple[str, dict[str, Any]]]  # (row, column) -> (dataset, run_rap.py switches)
    paper: dict[tuple[str, str], tuple[float, ...]]


def _dataset_of_title(title: str) -> str:
    return next(dataset for dataset, name in DATASET_TITLES.items() if name == title)


TABLES = {
    3: PaperTable(
        3,
        "Main results (text-only baseline: BERT-CRF for NER, BERT for MRE)",
        ("Text-only baseline", "RAP"),
        DATASETS,
        PRF,
        lambda row, dataset: (dataset, {"text_only_baseline": True} if row != "RAP" else {}),
        PAPER_TABLE3,
    ),
    4: PaperTable(
        4,
        "Number of routing layers L",
        tuple(f"L = {n}" for n in range(1, 7)),
        DATASETS,
        PRF,
        lambda row, dataset: (dataset, {"routing_layers": int(row.split()[-1])}),
        PAPER_TABLE4,
    ),
    5: PaperTable(
        5,
        "Ablations: RAP without the module or unit named by the column (F1)",
        tuple(DATASET_TITLES.values()),
        tuple(ABLATIONS),
        ("f1",),
        lambda row, column: (_dataset_of_title(row), ABLATIONS[column]),
        PAPER_TABLE5,
    ),
    6: PaperTable(
        6,
        "Path-regularisation weight γ (F1)",
        tuple(DATASET_TITLES.values()),
        tuple(f"γ = {g:g}" for g in GAMMAS),
        ("f1",),
        lambda row, column: (_dataset_of_title(row), {"path_regularization_weight": float(column[4:])}),
        PAPER_TABLE6,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run: a dataset, the switches that differ from the default setting, a seed."""

    dataset: str
    switches: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def name(self) -> str:
        return "-".join(f"{key}={value}" for key, value in self.switches) or "default"

    def folder(self, root: Path) -> Path:
        return root / self.dataset / self.name / f"seed{self.seed}"


def canonical_switches(dataset: str, switches: dict[str, Any], paper_architecture: bool) -> tuple:
    """Switches without those equal to the default, so that one setting reached from two tables is one run."""
    task = TASK_OF_DATASET[dataset]
    defaults = {
        "path_regularization_weight": RAPConfig.path_regularization_weight,
        "use_relevance_reasoning": True,
        "fusion_units": ",".join(FUSION_UNITS),
        "text_only_baseline": False,
        "routing_layers": (PAPER_ROUTING_LAYERS if paper_architecture else DEFAULT_ROUTING_LAYERS)[task],
    }
    return tuple(sorted((key, value) for key, value in switches.items() if value != defaults[key]))


def expand_grid(tables: Sequence[int], datasets: Sequence[str], seeds: Sequence[int], paper: bool) -> list[RunSpec]:
    """The unique runs of the tables, in table order (shared runs once)."""
    runs: dict[RunSpec, None] = {}
    for number in tables:
        table = TABLES[number]
        for row in table.rows:
            for column in table.columns:
                dataset, switches = table.cell(row, column)
                if dataset in datasets:
                    for seed in seeds:
                        runs[RunSpec(dataset, canonical_switches(dataset, switches, paper), seed)] = None
    return list(runs)


@dataclass
class Plan:
    """Everything a run's command line needs besides the run itself."""

    root: Path
    text_model: str
    vision_model: str
    data_dir: str | None
    paper_architecture: bool
    extra: list[str] = field(default_factory=list)

    def arguments(self, spec: RunSpec) -> list[str]:
        """run_rap.py's arguments for `spec` (resuming a cut-off run, replacing one that left nothing usable)."""
        folder = spec.folder(self.root)
        argv = [
            "--dataset",
            spec.dataset,
            "--output_dir",
            str(folder),
            "--seed",
            str(spec.seed),
            "--text_model",
            self.text_model,
            "--vision_model",
            self.vision_model,
            "--report_to",
            "none",
        ]
        argv += ["--data_dir", self.data_dir] if self.data_dir else []
        argv += ["--paper_architecture", "True"] if self.paper_architecture else []
        for key, value in spec.switches:
            argv += [f"--{key}", str(value)]
        if folder.is_dir() and any(folder.iterdir()):
            cut_off = latest_complete_checkpoint(folder)
            argv += ["--resume_from_checkpoint", "latest"] if cut_off else ["--overwrite_output_dir", "True"]
        return argv + self.extra

    def command(self, spec: RunSpec, on_gpu: bool) -> list[str]:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
        return [*launcher, *([] if on_gpu else ["--cpu"]), str(RUN_RAP), *self.arguments(spec)]


def missing_corpora(data_dir: str | None, datasets: Sequence[str]) -> str | None:
    """What is missing of the corpora the runs need (the split files where run_rap.py will look, MNRE's relation list),
    in one line, or None: checked before anything is launched, since a wrong --data_dir otherwise fails every run,
    one after the other."""
    if data_dir is None:
        return None  # the bundled sample
    from rap_hf.data import resolve_mnre_layout, resolve_twitter_layout

    if not Path(data_dir).is_dir():
        return f"--data_dir {data_dir} is not a directory; nothing was started"
    problems = []
    for dataset in dict.fromkeys(datasets):
        try:
            if dataset == "mnre":
                layout = resolve_mnre_layout(data_dir)
                layout.rel2id_file()
            else:
                layout = resolve_twitter_layout(data_dir, dataset)
            for split in ("train", "validation", "test"):
                layout.split_file(split)
        except FileNotFoundError as error:  # the message names the corpus and where it was looked for
            problems.append(str(error))
    if problems:
        return f"--data_dir {data_dir} lacks corpora the runs need, nothing was started: " + "; ".join(problems)
    return None


def fail(message: str, status: int) -> None:
    """Ends the program with `error: <message>` on standard error and a non-zero exit status."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


def run_in_subprocesses(plan: Plan, specs: Sequence[RunSpec], jobs: int, gpus: Sequence[str]) -> list[RunSpec]:
    """`jobs` runs at a time, each its own `accelerate launch` (one GPU each when --gpus is given); returns the runs
    that failed."""
    slots: Queue[str | None] = Queue()
    for index in range(jobs):
        slots.put(gpus[index % len(gpus)] if gpus else None)
    (plan.root / "logs").mkdir(parents=True, exist_ok=True)
    failed: list[RunSpec] = []

    def one(spec: RunSpec) -> None:
        gpu = slots.get()
        try:
            env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {"OMP_NUM_THREADS": "1"}))
            log = plan.root / "logs" / f"{spec.dataset}-{spec.name}-seed{spec.seed}.log"
            start = time.perf_counter()
            with open(log, "w") as stream:
                done = subprocess.run(
                    plan.command(spec, gpu is not None), stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
                )
            status = "done" if done.returncode == 0 else f"FAILED (exit {done.returncode}, see {log})"
            if done.returncode != 0:
                failed.append(spec)
            logging.info(
                "%s %s seed %d: %s in %.0f s", spec.dataset, spec.name, spec.seed, status, time.perf_counter() - start
            )
        finally:
            slots.put(gpu)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, specs))
    return [spec for spec in specs if spec in failed]  # in grid order


def run_in_process(plan: Plan, specs: Sequence[RunSpec]) -> None:
    """The smoke grid: each run through the same argument parser and `run` as run_rap.py, in this process."""
    from transformers import HfArgumentParser

    from rap_experiment.run import DataArguments, ModelArguments, RunArguments, run

    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments))
    gc.freeze()  # the Trainer's gc.collect() per run then skips the import-time objects (~0.35 s a run)
    for spec in specs:
        run(*parser.parse_args_into_dataclasses(args=plan.arguments(spec)))


# ----------------------------------------------------------------------------------------------------------- report
def collect(plan: Plan, specs: Sequence[RunSpec]) -> list[dict[str, Any]]:
    """One record per finished run (its results.json); runs without one are left out."""
    records = []
    for spec in specs:
        results_file = spec.folder(plan.root) / "results.json"
        if results_file.exists():
            results = json.loads(results_file.read_text())
            records.append(
                {
                    "dataset": spec.dataset,
                    "run": spec.name,
                    "seed": spec.seed,
                    **{metric: 100 * results["test"][metric] for metric in PRF},
                    "best_epoch": results["best_epoch"],
                    "train_seconds": results["timings"]["train_seconds"],
                    "folder": str(spec.folder(Path("."))),
                }
            )
    return records


def ours(records: Sequence[dict[str, Any]], spec_name: str, dataset: str, metric: str) -> str:
    values = [r[metric] for r in records if r["run"] == spec_name and r["dataset"] == dataset]
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}"


def table_markdown(table: PaperTable, records: Sequence[dict[str, Any]], paper_architecture: bool) -> str:
    """The paper's layout, two lines per row: the authors' numbers, then ours (mean ± sd over seeds)."""
    header = ["", "source"] + [
        f"{DATASET_TITLES.get(column, column)} {metric[0].upper() if len(table.metrics) > 1 else 'F1'}"
        for column in table.columns
        for metric in table.metrics
    ]
    lines = []
    for row in table.rows:
        theirs, mine = [row, "paper (authors)"], ["", "rap-hf (ours)"]
        for column in table.columns:
            dataset, switches = table.cell(row, column)
            name = RunSpec(dataset, canonical_switches(dataset, switches, paper_architecture), 0).name
            authors = table.paper.get((row, column))
            for index, metric in enumerate(table.metrics):
                theirs.append(f"{authors[index]:.2f}" if authors else "–")
                mine.append(ours(records, name, dataset, metric))
        lines += [theirs, mine]
    return f"### Table {table.number}: {table.title}\n\n" + markdown_table(header, lines)


def write_report(plan: Plan, tables: Sequence[int], specs: Sequence[RunSpec], setting: str) -> str:
    records = collect(plan, specs)
    report = f"# Paper tables reproduced with rap-hf\n\n{setting}\n\nFinished runs: {len(records)} of {len(specs)}.\n"
    report += "".join(f"\n{table_markdown(TABLES[n], records, plan.paper_architecture)}\n" for n in tables)
    plan.root.mkdir(parents=True, exist_ok=True)
    (plan.root / "report.md").write_text(report)
    (plan.root / "runs.json").write_text(json.dumps(records, indent=2) + "\n")
    with open(plan.root / "runs.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(records[0]) if records else ["dataset", "run", "seed"])
        writer.writeheader()
        writer.writerows(records)
    return report


def gpu_hours(specs: Sequence[RunSpec], seconds_per_step: float) -> str:
    """Runs, optimizer steps and estimated GPU hours per dataset at the paper's batch sizes and epochs."""
    rows = []
    for dataset in DATASETS:
        runs = [spec for spec in specs if spec.dataset == dataset]
        task = TASK_OF_DATASET[dataset]
        steps = len(runs) * math.ceil(TRAIN_SIZES[dataset] / PAPER_BATCH[task]) * PAPER_EPOCHS[task]
        hours = steps * seconds_per_step * EVAL_OVERHEAD / 3600
        rows.append([DATASET_TITLES[dataset], str(len(runs)), f"{steps:,}", f"{hours:.1f}"])
    return markdown_table(["dataset", "runs", "optimizer steps", f"GPU hours at {seconds_per_step:g} s/step"], rows)


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", nargs="+", default=["all"], choices=["3", "4", "5", "6", "all"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--data_dir", default=None, help="folder holding NER_data/ and RE_data/ (with images)")
    parser.add_argument("--output_dir", default="reproduce")
    parser.add_argument("--text_model", default=PAPER_TEXT_MODEL)
    parser.add_argument("--vision_model", default=PAPER_VISION_MODEL)
    parser.add_argument(
        "--architecture",
        choices=["paper", "default"],
        default="paper",
        help="paper: RAPConfig.paper_fields (--paper_architecture); default: rap-hf's faster defaults",
    )
    parser.add_argument("--jobs", type=int, default=None, help="runs at once (default: one per --gpus entry, else 1)")
    parser.add_argument("--gpus", default="", help="comma list of GPU ids; each run gets one")
    parser.add_argument("--dry_run", action="store_true", help="print the commands and the GPU-hour estimate")
    parser.add_argument(
        "--seconds_per_step",
        type=float,
        default=0.15,
        help="GPU seconds per optimizer step for the estimate (an assumption: measure yours)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="bundled sample, tiny random encoders, 1 epoch, seed 0, in this process (CI)",
    )
    return parser.parse_known_args(argv)


def make_plan(args: argparse.Namespace, extra: list[str]) -> Plan:
    # absolute: the runs start in the repository root, and a --data_dir relative to where this was called must hold
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    plan = Plan(
        Path(args.output_dir), args.text_model, args.vision_model, data_dir, args.architecture == "paper", extra
    )
    if args.smoke and not args.dry_run:
        plan.text_model = save_tiny_text_model(plan.root / "tiny_text_model")
        plan.vision_model, plan.data_dir = "", None
        plan.extra = [
            *SMOKE_OPTIONS,
            "--config_overrides",
            json.dumps(SMOKE_OVERRIDES),
            "--feature_cache_dir",
            str(plan.root / "features"),
            *extra,
        ]
    return plan


def main(argv: Sequence[str] | None = None) -> str:
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    args, extra = parse_args(argv)
    tables = [3, 4, 5, 6] if "all" in args.table else sorted({int(n) for n in args.table})
    seeds = [0] if args.smoke else args.seeds
    specs = expand_grid(tables, args.datasets, seeds, args.architecture == "paper")
    plan = make_plan(args, extra)
    gpus = [gpu for gpu in args.gpus.split(",") if gpu]
    if args.dry_run:
        print("\n".join(" ".join(plan.command(spec, bool(gpus))) for spec in specs))
        print(
            f"\n{len(specs)} runs (estimate: paper batch sizes and epochs, full training sets, "
            f"{args.seconds_per_step:g} s per step, +{EVAL_OVERHEAD - 1:.0%} for evaluation)\n"
        )
        print(gpu_hours(specs, args.seconds_per_step))
        return ""
    missing = missing_corpora(plan.data_dir, [spec.dataset for spec in specs])
    if missing:
        fail(missing, 2)
    pending = [spec for spec in specs if not (spec.folder(plan.root) / "results.json").exists()]
    logging.info("%d runs, %d already finished", len(specs), len(specs) - len(pending))
    failed: list[RunSpec] = []
    if args.smoke:
        run_in_process(plan, pending)
    else:
        failed = run_in_subprocesses(plan, pending, args.jobs or max(1, len(gpus)), gpus)
    vision = "tiny random ResNet" if args.smoke else plan.vision_model or "random init (RAPConfig's vision_config)"
    setting = (
        f"Text encoder `{plan.text_model if not args.smoke else 'tiny random BERT'}`, vision encoder "
        f"`{vision}`, {args.architecture} architecture, seeds {seeds}"
        f"{', options ' + ' '.join(extra) if extra else ''}"
        f"{'; SMOKE run on the bundled sample' if args.smoke else ''}."
    )
    report = write_report(plan, tables, specs, setting)
    print(report)
    if failed:  # the report holds what finished; the exit status says that not everything did
        names = ", ".join(f"{spec.dataset} {spec.name} seed {spec.seed}" for spec in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        fail(f"{len(failed)} of {len(pending)} runs failed ({names}{more}); their logs are in {plan.root / 'logs'}", 1)
    return report


if __name__ == "__main__":
    main()
