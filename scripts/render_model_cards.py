#!/usr/bin/env python
"""Renders the model cards in model_cards/ from the results.json of real runs.

Without --results, writes the three "no checkpoint published yet" cards (twitter2015, twitter2017, mnre), which
show only the authors' reported scores. With --results (repeatable), writes one card per results.json, named after
its dataset:

    python scripts/render_model_cards.py
    python scripts/render_model_cards.py --results outputs/mnre/results.json --org my-org \
        --figure routing_paths=outputs/mnre/figures/routing_paths.png
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
    parser.add_argument("--org", default=DEFAULT_ORG, help="Hub organisation; the repo id is <org>/rap-<dataset>.")
    parser.add_argument("--repo-id", default=None, help="Full repo id (only with a single --results).")
    parser.add_argument(
        "--datasets", nargs="+", default=sorted(DATASETS), help="Datasets of the placeholder cards (no --results)."
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

    if args.results:
        for results_path in args.results:
            dataset = json.loads(Path(results_path).read_text(encoding="utf-8"))["dataset"]
            repo_id = args.repo_id or f"{args.org}/rap-{dataset}"
            write_model_card(results_path, out_dir / f"{dataset}.md", repo_id, figures, base_model=args.base_model)
        return 0

    for dataset in args.datasets:
        repo_id = f"{args.org}/rap-{dataset}"
        write_model_card(None, out_dir / f"{dataset}.md", repo_id, figures, dataset=dataset, base_model=args.base_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
