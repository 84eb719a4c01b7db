#!/usr/bin/env python
"""Renders the model cards in model_cards/ from the results.json of real runs.

Without --results, writes one card per dataset (twitter2015, twitter2017, mnre): from its run record
model_cards/runs/<dataset>_results.json where there is one, else a "no checkpoint published yet" card that shows
only the authors' reported scores. With --results (repeatable), writes one card per results.json, named after its
dataset:

    python scripts/render_model_cards.py
    python scripts/render_model_cards.py --results outputs/mnre/results.json --org my-org \
        --figure routing_paths=outputs/mnre/figures/routing_paths.png

Every card goes through the renderer that training uses (results.json -> rap_hf.model_card.RAPModelCardData ->
generate_model_card); the training arguments it lists are those that differ from the defaults of scripts/run_rap.py's
arguments class.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rap_hf.model_card import DATASETS, write_model_card

logger = logging.getLogger("render_model_cards")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ORG = "rap-hf"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", action="append", default=[], help="results.json of a run (repeatable).")
    parser.add_argument("--out-dir", default=str(REPO_ROOT / "model_cards"), help="Where the cards are written.")
    parser.add_argument(
        "--runs-dir",
        default=str(REPO_ROOT / "model_cards" / "runs"),
        help="Run records <dataset>_results.json of the cards written without --results.",
    )
    parser.add_argument("--org", default=DEFAULT_ORG, help="Hub organisation; the repo id is <org>/rap-<dataset>.")
    parser.add_argument("--repo-id", default=None, help="Full repo id (only with a single --results).")
    parser.add_argument(
        "--datasets", nargs="+", default=sorted(DATASETS), help="Datasets of the cards written without --results."
    )
    parser.add_argument("--figure", action="append", default=[], metavar="NAME=PATH", help="Figure to embed.")
    parser.add_argument("--base-model", action="append", default=None, help="Hub id of a pretrained encoder.")
    args = parser.parse_args(argv)
    if args.repo_id and len(args.results) != 1:
        parser.error("--repo-id needs exactly one --results.")
    return args


def parse_figures(items: list[str]) -> dict[str, str]:
    figures = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--figure expects NAME=PATH, got {item!r}")
        figures[name] = path
    return figures


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    figures = parse_figures(args.figure)
    # the arguments class of scripts/run_rap.py (and of the benchmarks that record runs): its defaults are the baseline
    from rap_experiment.run import RunArguments

    if args.results:
        runs = [(json.loads(Path(path).read_text(encoding="utf-8"))["dataset"], Path(path)) for path in args.results]
    else:
        runs = [(dataset, Path(args.runs_dir) / f"{dataset}_results.json") for dataset in args.datasets]
    for dataset, results_path in runs:
        repo_id = args.repo_id or f"{args.org}/rap-{dataset}"
        results = results_path if results_path.is_file() else None
        write_model_card(
            results,
            out_dir / f"{dataset}.md",
            repo_id,
            figures,
            dataset=dataset,
            base_model=args.base_model,
            arguments_class=RunArguments,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
