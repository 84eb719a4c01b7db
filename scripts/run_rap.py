#!/usr/bin/env python
"""Train and evaluate RAP: `accelerate launch scripts/run_rap.py [args]` (or plain `python scripts/run_rap.py`).

With no argument it trains on the bundled Twitter-2017-format sample with the offline MiniLM text encoder.
Arguments come from three dataclasses (see `--help`) or from a JSON/YAML file: `run_rap.py config.yaml`.
"""

import logging
import sys
from pathlib import Path

from transformers import HfArgumentParser

from rap_hf.data import DataFormatError

from rap_experiment.run import DataArguments, ModelArguments, RunArguments, run


def parse_arguments(argv: list[str] | None = None):
    """The three argument dataclasses from `argv` (default: the command line) or from one JSON/YAML file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments))
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0]).resolve()
        if path.suffix == ".json":
            return parser.parse_json_file(str(path))
        return parser.parse_yaml_file(str(path))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    model_args, data_args, training_args = parse_arguments(argv)
    try:
        results = run(model_args, data_args, training_args)
    except (DataFormatError, FileNotFoundError, ValueError) as error:  # a bad argument or corpus: one line
        logging.getLogger("run_rap").debug("traceback", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if results is None:
        return
    test = results["test"]
    out = Path(training_args.output_dir)
    print(f"\nTest ({data_args.dataset}): P {100 * test['precision']:.2f}  R {100 * test['recall']:.2f}  "
          f"F1 {100 * test['f1']:.2f}  (best epoch {results['best_epoch']})")
    print(f"Model:       {out}")
    print(f"Results:     {out / 'results.json'}")
    print(f"Model card:  {out / 'README.md'}")


if __name__ == "__main__":
    main()
