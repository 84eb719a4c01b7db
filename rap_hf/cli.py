# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""The `rap-hf` command line: `rap-hf predict` (JSON / JSONL predictions), `rap-hf explain` (routing picture) and
`rap-hf demo` (a Gradio page, or its Hugging Face Space with `--export`).

```
rap-hf predict --model runs/ner --text "Kevin Durant visits Oracle Arena" --image tweet.jpg
rap-hf predict --model runs/re --text "Bill Cosby 's star on Hollywood Walk of Fame" \
    --subject "Bill Cosby" --object "Hollywood Walk of Fame"
rap-hf predict --model runs/ner --input tweets.jsonl --output predictions.jsonl
rap-hf explain --model runs/ner --text "..." --image tweet.jpg --out routing.png
rap-hf demo --model runs/ner                       # http://127.0.0.1:7860
rap-hf demo --model org/rap-ner --export space/    # app.py, requirements.txt, README.md of a Space
```
See docs/inference.md for the JSONL format.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

# Standard library only up here: `rap-hf --help` must not load torch; the commands import the model code themselves.
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
    parser.add_argument(
        "--grounding-model",
        default=None,
        help="visual objects for a picture given without crops: vision-encoder (offline, regions of the model's own "
        "vision encoder), none (the picture alone), or a detector's Hub id or folder (default: what the model was "
        "saved with)",
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
    predict.add_argument(
        "--on-error",
        "--on_error",
        dest="on_error",
        choices=("stop", "record"),
        default="stop",
        help="--input line that cannot be read or predicted: stop naming it, leaving --output untouched (default), "
        'or write {"line": N, "error": "..."} for it and predict the other lines',
    )
    predict.set_defaults(handler=run_predict)

    explain = commands.add_parser("explain", help="draw the routing paths (and relevance) of one input as a PNG")
    _add_model_arguments(explain)
    _add_example_arguments(explain, text_required=True)
    explain.add_argument("--out", required=True, help="PNG file to write")
    explain.set_defaults(handler=run_explain)

    demo = commands.add_parser(
        "demo", help="serve a Gradio page of the model (needs rap-hf[demo]), or write it as a Space (--export)"
    )
    _add_model_arguments(demo)
    demo.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: 7860 or the next free one)")
    demo.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    demo.add_argument(
        "--export",
        metavar="DIR",
        help="write the page as a Hugging Face Space (app.py, requirements.txt, README.md, a copy of rap_hf) into DIR "
        "instead of serving it; --model is then the Hub model id the Space loads",
    )
    demo.set_defaults(handler=run_demo)
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


def _check_device(args: argparse.Namespace) -> None:
    """`--device` names a device this machine has, checked before a model is loaded (torch's own failure on
    `--device cuda` without a GPU is a 40-line traceback)."""
    from .pipelines import device_problem

    problem = device_problem(args.device)
    if problem:
        raise CLIError(f"--device {args.device}: {problem}; use --device cpu")


def _load_pipeline(model: str, args: argparse.Namespace, batch_size: int = 8):
    from .pipelines import pipeline

    try:
        return pipeline(
            model,
            device=args.device,
            batch_size=batch_size,
            word_splitting=args.word_splitting,
            grounding_model=args.grounding_model,
        )
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


_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass
class LineError:
    """A `--input` line that could not be used (kept, with `--on-error record`, as an error record)."""

    message: str


def _check_not_wide(handle: BinaryIO, path: str) -> None:
    """A UTF-16/UTF-32 file is refused as a whole (every line would fail)."""
    start = handle.read(4)
    handle.seek(0)
    for bom, encoding in _WIDE_BOMS:
        if start.startswith(bom):
            raise CLIError(f"{path}: the file is {encoding}-encoded (byte-order mark); --input must be UTF-8")


def _decode_line(raw: bytes, path: str, number: int) -> str:
    """One JSONL line as text; a line that is not UTF-8 raises `CLIError` naming it."""
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    if b"\x00" in raw:
        raise CLIError(f"{path}:{number}: NUL bytes (UTF-16 without byte-order mark?); --input must be UTF-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CLIError(
            f"{path}:{number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1}); "
            "--input must be UTF-8"
        ) from None


def _parse_line(raw: bytes, path: str, number: int, base_dir: Path) -> dict[str, Any]:
    """The JSON object of one line, with picture paths resolved; `CLIError` naming the line otherwise."""
    try:
        example = json.loads(_decode_line(raw, path, number))
    except json.JSONDecodeError as error:
        raise CLIError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(example, dict):
        raise CLIError(f"{path}:{number}: expected a JSON object, got {type(example).__name__}")
    example["image"] = _resolve_path(example.get("image"), base_dir)
    if isinstance(example.get("crops"), list):
        example["crops"] = [_resolve_path(crop, base_dir) for crop in example["crops"]]
    return example


def read_jsonl(path: str, on_error: str = "stop") -> Iterator[tuple[int, dict[str, Any] | LineError]]:
    """`(line number, object)` for every non-blank line; a malformed line raises `CLIError` naming it, or with
    `on_error="record"` comes as a `LineError` (an encoding declared for the whole file always raises)."""
    base_dir = Path(path).resolve().parent
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed by the with below; open errors get their own message)
    except OSError as error:
        raise CLIError(f"cannot read --input {path!r}: {error}") from error
    with handle:
        _check_not_wide(handle, path)
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield number, _parse_line(raw, path, number, base_dir)
            except CLIError as error:
                if on_error != "record":
                    raise
                yield number, LineError(str(error))


def _where(source: str, number: int | None) -> str:
    return source if number is None else f"{source}:{number}"


@dataclass
class _Line:
    """One input: its line number (None for --text), the example, then its parsed form or its error."""

    number: int | None
    example: dict[str, Any] | None
    parsed: Any = None
    error: str | None = None


def _fail(line: _Line, message: str, on_error: str) -> None:
    """Stops the run (`CLIError`), or with `--on-error record` marks the line as failed."""
    if on_error != "record":
        raise CLIError(message)
    line.error = message


def _parse_all(pipe, lines: Sequence[_Line], source: str, on_error: str, **defaults) -> list[_Line]:
    """Parses every line not failed yet; returns the lines that parsed."""
    for line in lines:
        if line.error is None:
            try:
                line.parsed = pipe.parse_input(line.example, **defaults)
            except (ValueError, TypeError) as error:
                _fail(line, f"{_where(source, line.number)}: {error}", on_error)
    return [line for line in lines if line.error is None]


def _predict(pipe, lines: Sequence[_Line], source: str, on_error: str) -> list[Any]:
    """Predictions of parsed lines, in order; when the batch fails, the lines are run one by one so the failing one
    is named (`None` for a line failed with `--on-error record`)."""
    try:
        return pipe.predict_parsed([line.parsed for line in lines])
    except Exception:  # noqa: BLE001 -- rerun one by one below, so that the failure is reported against its line
        pass
    results = []
    for line in lines:
        try:
            results.extend(pipe.predict_parsed([line.parsed]))
        except Exception as error:  # noqa: BLE001 -- e.g. an image dict with text instead of bytes
            _fail(line, f"{_where(source, line.number)}: prediction failed ({type(error).__name__}: {error})", on_error)
            results.append(None)
    return results


def _with_entities(ner_pipe, lines: list[_Line], source: str, on_error: str) -> None:
    """Adds the NER model's entities to every example that has none."""
    todo = [line for line in lines if line.error is None and "entities" not in line.example]
    ner_lines = [
        _Line(line.number, {k: v for k, v in line.example.items() if k in ("text", "tokens", "image", "crops")})
        for line in todo
    ]
    parsed = _parse_all(ner_pipe, ner_lines, source, on_error)
    for ner_line, prediction in zip(parsed, _predict(ner_pipe, parsed, source, on_error) if parsed else []):
        if prediction is not None:
            ner_line.example["entities"] = prediction["entities"]
    for line, ner_line in zip(todo, ner_lines):
        line.error = ner_line.error
        line.example["entities"] = ner_line.example.get("entities", [])


def _output_record(number: int | None, parsed, result: Any) -> dict[str, Any]:
    record: dict[str, Any] = {} if number is None else {"line": number}
    record["text"] = parsed.text
    if isinstance(result, list):
        record["relations"] = result
    else:
        record.update(result)
    return record


def _file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp creates 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _check_output_is_not_input(output: str, inputs: dict[str, str | None]) -> None:
    """Refuses an `--output` that is one of the input files, however it is written (`dir/../in.jsonl`, a symbolic or
    hard link): the rename at the end would replace the input with the predictions."""
    for flag, path in inputs.items():
        if path is None:
            continue
        same = os.path.realpath(output) == os.path.realpath(path)
        if not same and os.path.exists(output) and os.path.exists(path):
            same = os.path.samefile(output, path)
        if same:
            raise CLIError(
                f"--output {output!r} is the {flag} file {path!r}: writing the predictions would replace "
                "it; choose another --output"
            )


class _AtomicOutput:
    """`--output` written to a temporary file beside it and renamed into place only when everything succeeded, so a
    failed run leaves an earlier file as it was and never a truncated one. A device or FIFO (`/dev/null`, a pipe) is
    written directly: a rename would replace it with a file. Failing writes (a full disk) end in one `CLIError`."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.tmp: str | None = None
        try:
            if self.path.is_dir():
                raise CLIError(f"--output {path!r} is a directory; give a file name")
            if self.path.exists() and not self.path.is_file():
                self.handle: TextIO = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            os.chmod(self.tmp, self.path.stat().st_mode & 0o777 if self.path.exists() else _file_mode())
        except OSError as error:
            raise CLIError(f"cannot write --output {path!r}: {error}") from None
        self.handle = os.fdopen(descriptor, "w", encoding="utf-8")

    def __enter__(self) -> TextIO:
        return self.handle

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            self.handle.close()  # flushes: a full disk may only show here
        except OSError as close_error:
            if error_type is None:
                error_type, error = type(close_error), close_error
        if self.tmp is not None:
            if error_type is None:
                try:
                    os.replace(self.tmp, self.path)
                    return
                except OSError as replace_error:
                    error_type, error = type(replace_error), replace_error
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
        if error_type is not None and issubclass(error_type, OSError):
            raise CLIError(f"cannot write --output {os.fspath(self.path)!r}: {error}") from None


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
    if args.output is not None:
        _check_output_is_not_input(args.output, {"--input": args.input})
    _check_device(args)
    pipe = _load_pipeline(args.model, args, args.batch_size)
    if pipe.rap_task == "ner" and (args.pairs or args.ner_model or args.subject or args.object):
        raise CLIError("--pairs/--ner-model/--subject/--object are for RE models; this is an NER model")
    ner_pipe = _load_pipeline(args.ner_model, args, args.batch_size) if args.ner_model else None
    if ner_pipe is not None and ner_pipe.rap_task != "ner":
        raise CLIError(f"--ner-model {args.ner_model!r} is not an NER model")
    defaults = {"pairs": "all"} if args.pairs else {}

    if args.text is not None:
        source, on_error = "--text", "stop"
        lines = [_Line(None, _example_from_arguments(args))]
    else:
        source, on_error = args.input, args.on_error
        lines = [
            _Line(number, None, error=example.message) if isinstance(example, LineError) else _Line(number, example)
            for number, example in read_jsonl(args.input, on_error)
        ]
    if args.pairs and ner_pipe is not None:
        _with_entities(ner_pipe, lines, source, on_error)
    _parse_all(pipe, lines, source, on_error, **defaults)

    if args.text is not None:
        result = _predict(pipe, lines, source, on_error)[0]
        print(json.dumps(result, indent=args.indent or None, ensure_ascii=False))
        return 0
    if args.output is None:
        _write_predictions(pipe, lines, source, on_error, sys.stdout, args.batch_size)
    else:
        with _AtomicOutput(args.output) as output:
            _write_predictions(pipe, lines, source, on_error, output, args.batch_size)
    failed = sum(line.error is not None for line in lines)
    if failed:
        logger.warning(f"{failed} of {len(lines)} input lines failed: written as error records (--on-error record)")
    errors = f" and {failed} error record{'s' * (failed != 1)}" if failed else ""
    target = args.output if args.output is not None else "standard output"
    print(f"wrote {len(lines) - failed} predictions{errors} to {target}", file=sys.stderr)
    return 0


def _write_predictions(pipe, lines: list[_Line], source: str, on_error: str, output: TextIO, batch_size: int) -> None:
    """One JSONL record per line, in input order: the prediction, or `{"line", "error"}` for a failed line. A progress
    bar over the lines goes to stderr."""
    from tqdm.auto import tqdm

    step = batch_size * _BATCHES_PER_WRITE
    with tqdm(total=len(lines), desc="predicting", unit="line", file=sys.stderr, dynamic_ncols=True) as bar:
        for first in range(0, len(lines), step):
            chunk = lines[first : first + step]
            results: dict[int, Any] = {}
            for start in range(0, len(chunk), batch_size):
                batch = chunk[start : start + batch_size]
                good = [line for line in batch if line.error is None]
                results.update(zip(map(id, good), _predict(pipe, good, source, on_error) if good else []))
                bar.update(len(batch))
            for line in chunk:
                if line.error is None:
                    record = _output_record(line.number, line.parsed, results[id(line)])
                else:
                    record = {"line": line.number, "error": line.error}
                output.write(json.dumps(record, ensure_ascii=False) + "\n")
            output.flush()


def run_explain(args: argparse.Namespace) -> int:
    _check_output_is_not_input(args.out, {"--image": args.image})
    _check_device(args)
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


def run_demo(args: argparse.Namespace) -> int:
    if args.export is not None:
        from .demo import export_space

        if os.path.isdir(args.model):
            logger.warning(
                f"--model {args.model!r} is a local folder: a Space loads its model from the Hub, so give the model's "
                "Hub id (org/name) before uploading"
            )
        try:
            written = export_space(args.model, args.export)
        except ValueError as error:
            raise CLIError(f"--model: {error}") from None
        except OSError as error:
            raise CLIError(f"cannot write --export {args.export!r}: {error}") from error
        names = ", ".join(path.name for path in written)
        print(f"wrote the Space of {args.model} into {args.export} ({names})", file=sys.stderr)
        return 0
    if args.port is not None and not 0 < args.port < 65536:
        raise CLIError(f"--port must be in 1..65535, got {args.port}")
    try:
        import gradio  # noqa: F401 -- checked before a model is loaded
    except ImportError:
        raise CLIError('the demo needs Gradio: pip install "rap-hf[demo]"') from None
    _check_device(args)
    pipe = _load_pipeline(args.model, args)
    from .demo import DemoModel, launch

    try:
        launch(DemoModel(pipe, name=args.model), port=args.port, share=args.share, host="127.0.0.1")
    except OSError as error:  # e.g. the port is taken
        raise CLIError(f"cannot serve the demo: {error}") from error
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
