# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""The `rap-hf` command line: `rap-hf predict` (JSON / JSONL predictions) and `rap-hf explain` (routing picture).

```
rap-hf predict --model runs/ner --text "Kevin Durant visits Oracle Arena" --image tweet.jpg
rap-hf predict --model runs/re --text "Bill Cosby 's star on Hollywood Walk of Fame" \
    --subject "Bill Cosby" --object "Hollywood Walk of Fame"
rap-hf predict --model runs/ner --input tweets.jsonl --output predictions.jsonl
rap-hf explain --model runs/ner --text "..." --image tweet.jpg --out routing.png
```
See docs/inference.md for the JSONL format.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger("rap_hf.cli")

# Inputs are parsed (and checked) for the whole file first, then predicted this many batches at a time.
_BATCHES_PER_WRITE = 16


class CLIError(Exception):
    """A user error: printed as `rap-hf: error: <message>` with exit status 2."""


# ----------------------------------------------------------------------------------------------------------------------
# Argument parsing
# ----------------------------------------------------------------------------------------------------------------------
def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="folder with the saved RAP model and processor (or a Hub id)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--word-splitting",
        choices=("punct", "tweet"),
        default=None,
        help="how raw text is split into words (default: punct for NER, tweet for RE)",
    )
    parser.add_argument("--verbose", action="store_true", help="show transformers' info messages and progress bars")


def _add_example_arguments(parser: argparse.ArgumentParser, text_required: bool) -> None:
    parser.add_argument("--text", required=text_required, help="the tweet text")
    parser.add_argument("--image", help="image file of the tweet (missing/unreadable: text-only, with a warning)")
    parser.add_argument("--crops", nargs="+", default=None, metavar="PATH", help="object crop files of the image")
    parser.add_argument("--subject", help="RE: subject entity, as it appears in the text")
    parser.add_argument("--object", help="RE: object entity, as it appears in the text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rap-hf", description="Multimodal NER / RE with RAP (Relevance-Aware Prompt-tuning) models."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict", help="predict entities or relations, printed as JSON (or written as JSONL)"
    )
    _add_model_arguments(predict)
    _add_example_arguments(predict, text_required=False)
    predict.add_argument("--input", help="JSONL file, one input object per line (instead of --text)")
    predict.add_argument("--output", help="JSONL file for --input results (default: standard output)")
    predict.add_argument(
        "--pairs",
        choices=("all",),
        help="RE: classify every ordered pair of entities found by --ner-model (or given as 'entities' in JSONL)",
    )
    predict.add_argument("--ner-model", help="RE with --pairs all: NER model folder that finds the entities first")
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--indent", type=int, default=2, help="JSON indentation of a single --text result")
    predict.set_defaults(handler=run_predict)

    explain = commands.add_parser("explain", help="draw the routing paths (and relevance) of one input as a PNG")
    _add_model_arguments(explain)
    _add_example_arguments(explain, text_required=True)
    explain.add_argument("--out", required=True, help="PNG file to write")
    explain.set_defaults(handler=run_explain)
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
def _configure_logging(verbose: bool) -> Callable[[], None]:
    """Warnings (e.g. unreadable images) go to stderr; transformers is quiet unless `--verbose`. Returns a function
    that restores transformers' settings (main() may run inside another program, e.g. a test session)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="rap-hf: %(levelname)s: %(message)s")
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    if not verbose:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


def _load_pipeline(model: str, args: argparse.Namespace, batch_size: int = 8):
    from .pipelines import pipeline

    try:
        return pipeline(model, device=args.device, batch_size=batch_size, word_splitting=args.word_splitting)
    except (OSError, ValueError, TypeError) as error:
        raise CLIError(f"cannot load model {model!r}: {error}") from error


def _example_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    example: dict[str, Any] = {"text": args.text}
    for key in ("image", "crops", "subject", "object"):
        if getattr(args, key) is not None:
            example[key] = getattr(args, key)
    return example


def _resolve_path(value: Any, base_dir: Path) -> Any:
    """A relative picture path of a JSONL line: next to the JSONL file if it exists there, else as given."""
    if not isinstance(value, str) or os.path.isabs(value):
        return value
    candidate = base_dir / value
    return str(candidate) if candidate.exists() else value


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(line number, object)` for every non-blank line; a malformed line raises `CLIError` naming it."""
    base_dir = Path(path).resolve().parent
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise CLIError(f"cannot read --input {path!r}: {error}") from error
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as error:
                raise CLIError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(example, dict):
                raise CLIError(f"{path}:{number}: expected a JSON object, got {type(example).__name__}")
            example["image"] = _resolve_path(example.get("image"), base_dir)
            if isinstance(example.get("crops"), list):
                example["crops"] = [_resolve_path(crop, base_dir) for crop in example["crops"]]
            yield number, example


def _where(source: str, number: int | None) -> str:
    return source if number is None else f"{source}:{number}"


def _parse_all(pipe, examples: Sequence[tuple[int, dict]], source: str, **defaults) -> list:
    parsed = []
    for number, example in examples:
        try:
            parsed.append(pipe.parse_input(example, **defaults))
        except (ValueError, TypeError) as error:
            raise CLIError(f"{_where(source, number)}: {error}") from None
    return parsed


def _with_entities(
    ner_pipe, examples: list[tuple[int, dict]], batch_size: int, source: str
) -> list[tuple[int, dict]]:
    """Adds the NER model's entities to every example that has none."""
    todo = [(number, example) for number, example in examples if "entities" not in example]
    ner_inputs = [
        (number, {k: v for k, v in example.items() if k in ("text", "tokens", "image", "crops")})
        for number, example in todo
    ]
    predictions = ner_pipe.predict_parsed(_parse_all(ner_pipe, ner_inputs, source), batch_size=batch_size)
    for (_, example), prediction in zip(todo, predictions):
        example["entities"] = prediction["entities"]
    return examples


def _output_record(number: int | None, parsed, result: Any) -> dict[str, Any]:
    record: dict[str, Any] = {} if number is None else {"line": number}
    record["text"] = parsed.text
    if isinstance(result, list):
        record["relations"] = result
    else:
        record.update(result)
    return record


def _open_output(path: str | None) -> TextIO:
    if path is None:
        return sys.stdout
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8")
    except OSError as error:
        raise CLIError(f"cannot write --output {path!r}: {error}") from error


# ----------------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.input is None):
        raise CLIError("give exactly one of --text or --input")
    if args.input is not None and any(getattr(args, k) is not None for k in ("image", "crops", "subject", "object")):
        raise CLIError("--image/--crops/--subject/--object go with --text; put them into the JSONL lines instead")
    if args.batch_size < 1:
        raise CLIError("--batch-size must be >= 1")
    pipe = _load_pipeline(args.model, args, args.batch_size)
    if pipe.rap_task == "ner" and (args.pairs or args.ner_model or args.subject or args.object):
        raise CLIError("--pairs/--ner-model/--subject/--object are for RE models; this is an NER model")
    ner_pipe = _load_pipeline(args.ner_model, args, args.batch_size) if args.ner_model else None
    if ner_pipe is not None and ner_pipe.rap_task != "ner":
        raise CLIError(f"--ner-model {args.ner_model!r} is not an NER model")
    defaults = {"pairs": "all"} if args.pairs else {}

    if args.text is not None:
        source = "--text"
        examples = [(None, _example_from_arguments(args))]
    else:
        source = args.input
        examples = list(read_jsonl(args.input))
    if args.pairs and ner_pipe is not None:
        examples = _with_entities(ner_pipe, examples, args.batch_size, source)
    parsed = _parse_all(pipe, examples, source, **defaults)

    if args.text is not None:
        result = pipe.predict_parsed(parsed)[0]
        print(json.dumps(result, indent=args.indent or None, ensure_ascii=False))
        return 0
    step = args.batch_size * _BATCHES_PER_WRITE
    output = _open_output(args.output)
    try:
        for first in range(0, len(parsed), step):
            chunk = parsed[first : first + step]
            for (number, _), item, result in zip(examples[first : first + step], chunk, pipe.predict_parsed(chunk)):
                output.write(json.dumps(_output_record(number, item, result), ensure_ascii=False) + "\n")
            output.flush()
    finally:
        if output is not sys.stdout:
            output.close()
    if args.output:
        logger.info(f"wrote {len(parsed)} predictions to {args.output}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    pipe = _load_pipeline(args.model, args)
    config = pipe.model.config
    if not config.multimodal:
        raise CLIError("this model is a text-only baseline (config.multimodal=False): it has no routing paths")
    try:
        parsed = pipe.parse_input(_example_from_arguments(args))
    except (ValueError, TypeError) as error:
        raise CLIError(str(error)) from None
    result = pipe.predict_parsed([parsed])[0]
    from . import visualization

    unit_names = [name.upper() for name in config.fusion_units]
    text = parsed.text if len(parsed.text) <= 60 else parsed.text[:57] + "..."
    figure = visualization.plot_routing_paths(
        result["routing_weights"],
        unit_names=unit_names,
        num_layers=config.routing_layers,
        relevance=result["relevance"] if result["relevance"] is not None else float("nan"),
        path=args.out,
        title=text,
    )
    print(json.dumps({"figure": figure.path, "prediction": result}, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `rap-hf` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    restore_logging = _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except CLIError as error:
        print(f"rap-hf: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `rap-hf predict ... | head`
        sys.stderr.close()
        return 1
    finally:
        restore_logging()


if __name__ == "__main__":
    sys.exit(main())
