#!/usr/bin/env python
"""Train and evaluate RAP: `accelerate launch scripts/run_rap.py [args]` (or plain `python scripts/run_rap.py`).

With no argument it trains on the bundled Twitter-2017-format sample with the offline MiniLM text encoder.
Arguments come from three dataclasses (see `--help`) or from a JSON/YAML file: `run_rap.py config.yaml`.
"""

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
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
    *arguments, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:  # argparse's usage line and exit status 2, not HfArgumentParser's ValueError traceback
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(arguments)


def check_hub_access(args) -> None:
    """`--push_to_hub` needs a token and the network: refused before anything is built or trained, in one line (a
    failing Hub request, e.g. no network or a token the Hub rejects, as `hub_errors_as_value_errors` words it)."""
    if not args.push_to_hub:
        return
    from huggingface_hub import HfApi, constants, get_token

    token = args.hub_token or get_token()
    if not token:
        raise ValueError(
            "--push_to_hub needs a Hugging Face token with write access: run `hf auth login`, or set "
            "HF_TOKEN (or pass --hub_token)"
        )
    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            "--push_to_hub cannot upload while HF_HUB_OFFLINE is set: unset it (and check the network "
            "connection), or leave out --push_to_hub"
        )
    HfApi().whoami(token=token)  # the Hub reachable and the token known to it, before minutes of training


def _hub_error_types() -> tuple[type[BaseException], ...]:
    """huggingface_hub's HTTP errors and those of the HTTP client it uses (httpx2/httpx, or requests)."""
    from huggingface_hub import errors

    types: list[type[BaseException]] = [errors.HfHubHTTPError, errors.OfflineModeIsEnabled]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        with contextlib.suppress(ImportError, AttributeError):
            types.append(getattr(importlib.import_module(module), name))
    return tuple(types)


@contextlib.contextmanager
def hub_errors_as_value_errors(args) -> Iterator[None]:
    """With `--push_to_hub`, a failing Hub request (the check before anything is built, creating the repository when
    the trainer starts, the upload at the end) becomes one `ValueError` naming the cause and the fix, instead of a
    long traceback."""
    if not args.push_to_hub:
        yield
        return
    try:
        yield
    except _hub_error_types() as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(
            f"--push_to_hub: the Hugging Face Hub request failed ({type(error).__name__}: {first}); check the network "
            f"connection and that your token (`hf auth login` or HF_TOKEN) may write to {args.hub_model_id}"
        ) from None


def use_every_core_of_a_lone_cpu_process() -> None:
    """`accelerate launch` sets OMP_NUM_THREADS=1 for every process; one process on a CPU machine then leaves all but
    one core idle (the main job took 3:13 instead of ~2 minutes on 2 cores). Multi-process runs keep their share."""
    import torch

    launched = "ACCELERATE_MIXED_PRECISION" in os.environ and os.environ.get("OMP_NUM_THREADS") == "1"
    alone = launched and int(os.environ.get("WORLD_SIZE", "1")) == 1 and not torch.cuda.is_available()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if alone and torch.get_num_threads() < cores:
        logging.getLogger("run_rap").info("one CPU process: %d torch threads (was %d)", cores, torch.get_num_threads())
        torch.set_num_threads(cores)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for noisy in ("httpx", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    model_args, data_args, training_args = parse_arguments(argv)
    try:
        with hub_errors_as_value_errors(training_args):
            check_hub_access(training_args)
            results = run(model_args, data_args, training_args)
    except (DataFormatError, FileNotFoundError, ValueError) as error:  # a bad argument or corpus: one line
        logging.getLogger("run_rap").debug("traceback", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if results is None:
        return
    test = results["test"]
    out = Path(training_args.output_dir)
    print(
        f"\nTest ({data_args.dataset}): P {100 * test['precision']:.2f}  R {100 * test['recall']:.2f}  "
        f"F1 {100 * test['f1']:.2f}  (best epoch {results['best_epoch']})"
    )
    relevance = results.get("relevance")
    if relevance and relevance["auc"] is not None:
        print(
            f"Image relevance (beta), {relevance['num_tweets']} test tweets: own picture {relevance['own_mean']:.3f}, "
            f"{relevance['other_pictures']}'s picture {relevance['other_mean']:.3f}, ROC AUC {relevance['auc']:.3f}"
        )
    print(f"Model:       {out}")
    print(f"Results:     {out / 'results.json'}")
    print(f"Model card:  {out / 'README.md'}")


if __name__ == "__main__":
    use_every_core_of_a_lone_cpu_process()
    main()
