# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Inference pipeline for RAP models: raw tweet text (+ image) in, entities or relations out.

```python
import rap_hf

ner = rap_hf.pipeline("path/to/rap-ner")
ner("Kevin Durant visits Oracle Arena !", image="tweet.jpg")
# {"entities": [{"text": "Kevin Durant", "type": "PER", "start_word": 0, "end_word": 2, "start_char": 0,
#                "end_char": 12, "score": 0.97}, ...], "relevance": 0.41, "routing_weights": [...], "image_used": True}
```

The module imports only torch, transformers, PIL and its sibling remote-code files, so that it could travel next to
a checkpoint like `modeling_rap.py` does. See docs/inference.md for the full input and output formats.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex
import torch
from PIL import Image
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.base import ChunkPipeline
from transformers.utils import logging
from transformers.utils.hub import constants as hub_constants
from transformers.utils.hub import is_offline_mode, try_to_load_from_cache

from .configuration_rap import RAPConfig
from .grounding import VISION_ENCODER, VisualGrounder, grounding_name, load_grounder, same_grounding
from .modeling_rap import RAPForMultimodalExtraction
from .processing_rap import RAPProcessor, invalid_text, load_image

logger = logging.get_logger(__name__)

TASK_NAME = "rap-extraction"

# ----------------------------------------------------------------------------------------------------------------------
# Word splitting (the corpora are pre-tokenised; raw text must be split the same way)
# ----------------------------------------------------------------------------------------------------------------------
_URL = r"(?:https?://|www\.)\S+"
# Grapheme clusters (regex's \X), so "e" + combining accent or a ZWJ emoji sequence never splits into several words.
_WORD = r"(?:(?=\w)\X)+"
_SYMBOL = r"(?:(?![\w\s])\X)"
# Twitter-2015/2017 convention: every non-space, non-word character is its own token ("#", "NBA"; "Cosby", "'", "s").
_PUNCT_PATTERN = regex.compile(rf"{_URL}|{_WORD}|{_SYMBOL}")
# MNRE convention (tweet tokenizer): mentions and hashtags stay whole, clitics and abbreviations as in the PTB.
_TWEET_PATTERN = regex.compile(
    rf"{_URL}"
    rf"|[@#]{_WORD}"  # @mention, #hashtag
    r"|(?:[a-z]\.){2,}"  # U.S., e.g.
    r"|\d+(?:[.,:/]\d+)+"  # 3.5, 1,000, 10:30, 1/31
    rf"|{_WORD}(?=n['’]t\b)"  # "do" of "don't"
    r"|n['’]t\b|['’](?:s|m|re|ve|ll|d)\b"  # n't 's 'm 're 've 'll 'd
    rf"|{_WORD}"
    rf"|{_SYMBOL}",
    regex.IGNORECASE,
)
WORD_SPLITTERS = {"punct": _PUNCT_PATTERN, "tweet": _TWEET_PATTERN}
# Default per task: the convention of the corpus the models are trained on (Twitter-2015/2017 for NER, MNRE for RE).
DEFAULT_WORD_SPLITTING = {"ner": "punct", "re": "tweet"}


@dataclass(frozen=True)
class Word:
    """One word of the input and where it sits in the text (`text[start:end] == word`)."""

    text: str
    start: int
    end: int


def split_words(text: str, style: str = "punct") -> list[Word]:
    """Splits raw text into words with character offsets.

    `style="punct"` (Twitter-2015/2017): URLs stay whole, runs of letters/digits/underscores are words, every other
    non-space character is a word of its own. `style="tweet"` (MNRE) additionally keeps @mentions, #hashtags,
    dotted abbreviations and numbers like 3.5 whole and splits clitics ("do n't", "Cosby 's"). Whitespace of any kind
    and length only separates words. Splits fall on grapheme-cluster boundaries (NFD accents, ZWJ emoji and skin tones
    stay inside their word); offsets index the text as given, without normalising it.
    """
    if style not in WORD_SPLITTERS:
        raise ValueError(f"word_splitting must be one of {sorted(WORD_SPLITTERS)}, got {style!r}")
    return [Word(m.group(), m.start(), m.end()) for m in WORD_SPLITTERS[style].finditer(text)]


def words_from_tokens(tokens: Sequence[str]) -> tuple[str, list[Word]]:
    """Pre-split tokens as words of the text `" ".join(tokens)` (the text the character offsets refer to)."""
    if isinstance(tokens, str) or not all(isinstance(token, str) for token in tokens):
        raise TypeError("tokens must be a list of strings")
    words, cursor = [], 0
    for token in tokens:
        words.append(Word(token, cursor, cursor + len(token)))
        cursor += len(token) + 1
    return " ".join(tokens), words


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """A word span (end exclusive) of an input, with the entity type when it came from an NER result."""

    start: int
    end: int
    type: str | None = None


@dataclass
class RAPInput:
    """One normalised pipeline input (see `RAPPipeline.parse_input`)."""

    text: str
    words: list[Word]
    image: Any = None
    crops: list[Any] = field(default_factory=list)
    pairs: list[tuple[Span, Span]] | None = None  # RE only
    single_pair: bool = True  # RE: return one dict (subject/object given) rather than a list (pairs given)

    def span_info(self, span: Span) -> dict[str, Any]:
        """Output description of a word span: its text and word/character offsets."""
        start_char, end_char = self.words[span.start].start, self.words[span.end - 1].end
        info = {
            "text": self.text[start_char:end_char],
            "start_word": span.start,
            "end_word": span.end,
            "start_char": start_char,
            "end_char": end_char,
        }
        if span.type is not None:
            info["type"] = span.type
        return info


def _span_from_chars(words: list[Word], start_char: int, end_char: int, role: str) -> Span:
    covered = [i for i, word in enumerate(words) if word.start < end_char and word.end > start_char]
    if not covered:
        raise ValueError(f"{role} characters [{start_char}, {end_char}) cover no word of the text")
    return Span(covered[0], covered[-1] + 1)


def _span_from_string(text: str, words: list[Word], needle: str, role: str) -> Span:
    """First occurrence of `needle` in `text` that starts and ends on word boundaries (exact case first)."""
    needle = needle.strip()
    if not needle:
        raise ValueError(f"{role} is an empty string")
    starts = {word.start: i for i, word in enumerate(words)}
    ends = {word.end: i for i, word in enumerate(words)}
    for haystack, pattern in ((text, needle), (text.casefold(), needle.casefold())):
        if len(haystack) != len(text):  # casefolding changed the length: offsets no longer line up
            continue
        position = haystack.find(pattern)
        while position != -1:
            end = position + len(pattern)
            if position in starts and end in ends:
                return Span(starts[position], ends[end] + 1)
            position = haystack.find(pattern, position + 1)
    raise ValueError(f"{role} {needle!r} does not occur as whole words in the text {text!r}")


def _offset(value: Any, name: str, role: str) -> int:
    """An integer offset of a span; booleans (`True` is 1 to Python), floats and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{role} {name} must be an integer, got {value!r}")
    return int(value)


def resolve_span(spec: Any, text: str, words: list[Word], role: str) -> Span:
    """Word span of a subject/object given as a `(start, end)` word span, a string to find in the text, or an entity
    dict as the NER pipeline returns it (its character offsets are used, so it may come from another word split).
    Offsets must be integers (not booleans) inside the text."""
    if isinstance(spec, Span):
        start, end, entity_type = spec.start, spec.end, spec.type
    elif isinstance(spec, str):
        return _span_from_string(text, words, spec, role)
    elif isinstance(spec, Mapping):
        entity_type = spec.get("type")
        if "start_char" in spec and "end_char" in spec:
            start_char, end_char = (_offset(spec[key], key, role) for key in ("start_char", "end_char"))
            if not 0 <= start_char < end_char <= len(text):
                raise ValueError(
                    f"{role} characters [{start_char}, {end_char}) are not inside the {len(text)} "
                    "characters of the text"
                )
            if "text" in spec and text[start_char:end_char] != spec["text"]:
                raise ValueError(
                    f"{role} {spec['text']!r} is not at characters [{start_char}, {end_char}) of the text "
                    f"(found {text[start_char:end_char]!r}); was it predicted for another text?"
                )
            span = _span_from_chars(words, start_char, end_char, role)
            return Span(span.start, span.end, entity_type)
        if "start_word" in spec and "end_word" in spec:
            start, end = _offset(spec["start_word"], "start_word", role), _offset(spec["end_word"], "end_word", role)
        elif "start" in spec and "end" in spec:  # the data builders' {"name", "start", "end"} entities
            start, end = _offset(spec["start"], "start", role), _offset(spec["end"], "end", role)
        elif "text" in spec:
            span = _span_from_string(text, words, str(spec["text"]), role)
            return Span(span.start, span.end, entity_type)
        else:
            raise ValueError(f"{role} dict needs start_char/end_char, start_word/end_word or text, got {dict(spec)}")
    elif isinstance(spec, Sequence) and len(spec) == 2 and all(isinstance(v, numbers.Integral) for v in spec):
        (start, end), entity_type = (_offset(v, "word span", role) for v in spec), None
    else:
        raise TypeError(f"{role} must be a (start, end) word span, a string or an entity dict, got {spec!r}")
    if not 0 <= start < end <= len(words):
        raise ValueError(f"{role} word span ({start}, {end}) is outside the {len(words)} words of the text")
    return Span(start, end, entity_type)


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------
def read_picture(value: Any, role: str = "image") -> Image.Image | None:
    """An RGB image from a path, PIL image, `datasets` dict or array; `None` (with a warning) when it cannot be read.

    A missing or broken file is an expected situation with tweets (deleted images): the caller predicts text-only.
    """
    if value is None:
        return None
    try:
        image = load_image(value)
        if image is not None:
            image.load()  # decode now, so that a truncated file fails here and not inside the image processor
        return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        where = os.fspath(value) if isinstance(value, (str, os.PathLike)) else type(value).__name__
        logger.warning(f"could not read {role} {where!r} ({type(error).__name__}: {error}); predicting without it")
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Decoding helpers
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def crf_marginals(crf: torch.nn.Module, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Posterior marginals P(y_i = k | x) of a linear-chain CRF (forward-backward in log space).

    Args:
        crf: a `torchcrf.CRF` (reads `start_transitions`, `end_transitions`, `transitions[from, to]`).
        emissions: `(batch, words, tags)` scores.
        mask: `(batch, words)` bool, real words first (left-aligned).

    Returns:
        `(batch, words, tags)` probabilities; rows of padding words are zero.
    """
    emissions = emissions.float()
    mask = mask.bool()
    batch, length, _ = emissions.shape
    if length == 0:
        return emissions.new_zeros(emissions.shape)
    start, end, transitions = crf.start_transitions.float(), crf.end_transitions.float(), crf.transitions.float()
    alphas = [start + emissions[:, 0]]
    for t in range(1, length):
        step = torch.logsumexp(alphas[-1].unsqueeze(2) + transitions, dim=1) + emissions[:, t]
        alphas.append(torch.where(mask[:, t, None], step, alphas[-1]))
    betas = [end.expand(batch, -1)]
    for t in range(length - 2, -1, -1):
        step = torch.logsumexp(transitions + (emissions[:, t + 1] + betas[0]).unsqueeze(1), dim=2)
        betas.insert(0, torch.where(mask[:, t + 1, None], step, end.expand(batch, -1)))
    alpha, beta = torch.stack(alphas, dim=1), torch.stack(betas, dim=1)
    last = (mask.sum(1) - 1).clamp(min=0)
    log_partition = torch.logsumexp(alpha[torch.arange(batch), last] + end, dim=-1)
    marginals = torch.exp(alpha + beta - log_partition[:, None, None])
    return marginals * mask.unsqueeze(-1)


# Not seqeval's get_entities (same spans on BIO tags): as Hub remote code this file may import only torch/transformers.
def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """`(type, start, end)` word spans of a BIO tag sequence. An `I-X` that does not continue an `X` entity starts a
    new one (as conlleval does); a tag without `B-`/`I-` prefix (other than `O`) is a one-word entity of that type."""
    entities: list[list] = []
    open_type = None
    for index, tag in enumerate(tags):
        if tag == "O" or not tag:
            open_type = None
            continue
        prefix, _, entity_type = tag.partition("-") if tag[:2] in ("B-", "I-") else ("S", "", tag)
        if prefix == "I" and open_type == entity_type:
            entities[-1][2] = index + 1
            continue
        entities.append([entity_type, index, index + 1])
        open_type = entity_type if prefix in ("B", "I") else None
    return [tuple(entity) for entity in entities]


# ----------------------------------------------------------------------------------------------------------------------
# Model loading
# ----------------------------------------------------------------------------------------------------------------------
_CONFIG_KWARGS = ("revision", "token", "local_files_only", "cache_dir", "subfolder")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def _looks_local(path: str) -> bool:
    """Whether `path` means a folder on this machine rather than a Hub id: absolute, starting with `.` or `~`,
    existing, not of the Hub's `name` / `org/name` form (`a/b/c`, `runs/model/`, a backslash), or an `org/name` whose
    `org` is a folder here (`runs/rap-ner` where `runs/` exists)."""
    if os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path) or not _HUB_ID.match(path):
        return True
    return "/" in path and os.path.isdir(path.split("/")[0])


def check_model_location(
    model_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, revision: str | None = None
) -> str:
    """Fails early, with a one-line message saying what was looked for where, on a local model folder that does not
    exist or is not a checkpoint, and (offline: `HF_HUB_OFFLINE` set) on a Hub id that is not in the local Hub cache.
    A Hub id online is left to `from_pretrained`."""
    path = os.path.expanduser(os.fspath(model_path))
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"{path!r} has no config.json: it is not a folder written by `save_pretrained` (model and processor)"
            )
        return path
    where = os.path.abspath(path)
    if _looks_local(path):
        found = "it is a file, not a folder" if os.path.exists(path) else "no such folder"
        raise FileNotFoundError(f"RAP model directory not found: {path!r} (looked for the folder {where}: {found})")
    if is_offline_mode() and try_to_load_from_cache(path, "config.json", cache_dir, revision) is None:
        raise FileNotFoundError(
            f"RAP model directory not found: {path!r} is neither a folder here ({where}) nor, with the Hub offline "
            f"(HF_HUB_OFFLINE set), a model in the Hub cache ({cache_dir or hub_constants.HF_HUB_CACHE}); pass the "
            "path of the folder written by `save_pretrained`, or download the model first"
        )
    return path


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _safetensors_shapes(file: str) -> dict[str, list[int]]:
    """Tensor shapes from the header of a safetensors file; `OSError` naming the file when it is damaged (truncated,
    not safetensors), checked before anything is allocated."""
    size = os.path.getsize(file)
    with open(file, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else None
        if length is None or length > size - 8:
            raise OSError(f"{file!r} is damaged: its {size} bytes cannot hold the safetensors header (truncated?)")
        try:
            header = json.loads(handle.read(length))
            tensors = {name: info for name, info in header.items() if name != "__metadata__"}
            shapes = {name: [int(n) for n in info["shape"]] for name, info in tensors.items()}
            end = max((int(info["data_offsets"][1]) for info in tensors.values()), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise OSError(f"{file!r} is damaged: its header is not a safetensors header") from None
    if 8 + length + end != size:
        raise OSError(
            f"{file!r} is damaged: its header describes {8 + length + end} bytes but the file has {size} "
            "(truncated, or cut off while copying?)"
        )
    return shapes


def _saved_shapes(folder: str) -> tuple[str, dict[str, list[int]]] | None:
    """`(file, {weight: shape})` of a folder's safetensors weights (one file or an index of shards); None without."""
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        return single, _safetensors_shapes(single)
    if not os.path.isfile(index):
        return None
    try:
        with open(index, encoding="utf-8") as handle:
            shards = sorted(set(json.load(handle)["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise OSError(f"{index!r} is damaged: not a JSON index with a weight_map") from None
    shapes: dict[str, list[int]] = {}
    for shard in shards:
        shard_file = os.path.join(folder, shard)
        if not os.path.isfile(shard_file):
            raise OSError(f"{shard_file!r} is missing (listed in {index!r})")
        shapes.update(_safetensors_shapes(shard_file))
    return index, shapes


def check_weights(folder: str, config: RAPConfig) -> None:
    """Compares the saved weights' shapes (safetensors headers only) with the model `config` builds (on the meta
    device, nothing allocated): a damaged file or a config that does not match the weights (`num_labels` edited, sizes
    of another model) fails here in one line naming the file and the field, not deep inside `from_pretrained`."""
    saved = _saved_shapes(folder)
    if saved is None:
        return  # no safetensors: from_pretrained looks for other formats and reports what it does not find
    file, shapes = saved
    try:
        with torch.device("meta"):  # a copy: _from_config writes dtypes into the config it is given
            model = RAPForMultimodalExtraction._from_config(copy.deepcopy(config))
        built = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    except Exception:  # noqa: BLE001 -- e.g. an optional dependency of the config (peft): from_pretrained will say
        return
    differing = [name for name in shapes if name in built and shapes[name] != built[name]]
    if not differing:
        return
    config_file = os.path.join(folder, "config.json")
    heads = [name for name in differing if name.split(".")[0] in ("classifier", "crf")]
    labels = [name for name in heads if shapes[name][:1] != built[name][:1]]  # the label dimension differs
    if labels:
        name = labels[0]
        raise ValueError(
            f"{config_file!r}: num_labels is {config.num_labels} (its id2label) but {file!r} holds {shapes[name][0]} "
            f"labels ({name!r} has shape {shapes[name]}, the config builds {built[name]})"
        )
    encoders = (("text_config", ".text_encoder."), ("vision_config", ".vision_encoder."))
    # the encoders' sizes first: every RAP layer built on them differs too, and the sub-config is the field to name
    found = [(key, name) for key, marker in encoders for name in differing if marker in f".{name}"]
    part, name = (f" ({found[0][0]})", found[0][1]) if found else ("", differing[0])
    raise ValueError(
        f"{config_file!r} does not describe the weights in {file!r}{part}: {name!r} has shape {shapes[name]} there "
        f"but the config builds {built[name]} ({len(differing)} weights differ; an edited config.json, or another "
        "model's weights?)"
    )


def load_model_and_processor(model_path: str | os.PathLike, **model_kwargs) -> tuple[torch.nn.Module, RAPProcessor]:
    """The RAP task model and the `RAPProcessor` saved in one folder (or Hub repository). Every failure is one line
    naming the file or field: a missing folder, a damaged or mismatched `config.json` / `model.safetensors`, a
    processor that does not belong to the model."""
    path = check_model_location(model_path, model_kwargs.get("cache_dir"), model_kwargs.get("revision"))
    config_kwargs = {k: model_kwargs[k] for k in _CONFIG_KWARGS if k in model_kwargs}
    local = os.path.isdir(path)
    folder = os.path.join(path, config_kwargs.get("subfolder") or "")
    config_name = os.path.join(folder, "config.json") if local else f"{path}/config.json"
    try:
        config_dict, _ = RAPConfig.get_config_dict(path, **config_kwargs)
        if config_dict.get("model_type") != RAPConfig.model_type:
            raise ValueError(
                f"{path!r} does not hold a RAP model: not a RAP model (model_type {config_dict.get('model_type')!r})"
            )
        config = RAPConfig.from_pretrained(path, **config_kwargs)
    except OSError as error:
        hint = "" if local else f" (no local folder {os.path.abspath(path)} either)"
        raise OSError(f"could not load a RAP model from {path!r}: {_first_line(error)}{hint}") from None
    except (ValueError, TypeError) as error:
        message = _first_line(error)
        raise ValueError(message if "does not hold a RAP model" in message else f"{config_name!r}: {message}") from None
    if local:
        check_weights(folder, config)
    try:
        model = RAPForMultimodalExtraction.from_pretrained(path, config=config, **model_kwargs)
    except Exception as error:  # noqa: BLE001 -- torch, transformers and safetensors each raise their own types
        raise OSError(f"could not load the weights of {path!r}: {type(error).__name__}: {_first_line(error)}") from None
    processor = load_processor(path)
    # A folder without tokenizer.json still loads a tokenizer: special tokens only, every word [UNK].
    tokens, rows = len(processor.tokenizer), model.get_input_embeddings().num_embeddings
    if tokens != rows:
        raise ValueError(
            f"{os.fspath(path)!r}: the saved tokenizer has {tokens} tokens but the model's text embeddings have {rows} "
            "rows: its files are incomplete (tokenizer.json missing?) or belong to another model; save this model's "
            "processor next to it with `processor.save_pretrained(folder)`"
        )
    return model, processor


def load_processor(path: str | os.PathLike) -> RAPProcessor:
    """The `RAPProcessor` saved with a model. When this file runs as the remote code of a checkpoint (loaded by
    `transformers.pipeline(..., trust_remote_code=True)`), the checkpoint's own code is trusted for the tokenizer's
    config too; installed as `rap_hf`, no remote code is needed."""
    as_remote_code = __name__.startswith("transformers_modules.")
    try:
        return RAPProcessor.from_pretrained(path, **({"trust_remote_code": True} if as_remote_code else {}))
    except Exception as error:  # noqa: BLE001 -- the tokenizers library raises its own types on damaged files
        damaged = _damaged_json_file(path)
        detail = f"{damaged!r} is not valid JSON (truncated?)" if damaged else _first_line(error)
        raise OSError(
            f"could not load the RAPProcessor from {os.fspath(path)!r} ({detail}); save it next to the model with "
            "`processor.save_pretrained(folder)`"
        ) from None


_PROCESSOR_FILES = ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _damaged_json_file(folder: str | os.PathLike) -> str | None:
    """The first of a local folder's processor files that does not parse as JSON (a truncated copy), if any."""
    for name in _PROCESSOR_FILES:
        file = os.path.join(folder, name)
        if os.path.isfile(file):
            try:
                with open(file, encoding="utf-8") as handle:
                    json.load(handle)
            except (OSError, ValueError):
                return file
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------------------------------
_INPUT_KEYS = {"text", "tokens", "image", "crops", "subject", "object", "pairs", "entities"}
_IMAGE_TYPES = (str, os.PathLike, Image.Image, Mapping)


def save_pipeline_code(pipe: RAPPipeline, save_directory: str | os.PathLike) -> None:
    """Writes what `transformers.pipeline(model=save_directory, trust_remote_code=True)` needs next to a saved model:
    this file (and the remote-code files it imports) and the config's `custom_pipelines` entry naming `AutoModel`,
    which resolves to the task head through the checkpoint's auto_map."""
    from transformers.dynamic_module_utils import custom_object_save

    os.makedirs(save_directory, exist_ok=True)
    pipe.model.config.custom_pipelines = {
        TASK_NAME: {
            "impl": f"{type(pipe).__module__.split('.')[-1]}.{type(pipe).__name__}",
            "pt": ("AutoModel",),
            "type": "multimodal",
        }
    }
    custom_object_save(pipe, save_directory)
    pipe.model.config.save_pretrained(save_directory)


def describe_input(item: Any, width: int = 40) -> str:
    """A short name of an input for error messages: the start of its text, or its type."""
    text = item.get("text") or " ".join(item.get("tokens") or []) if isinstance(item, Mapping) else item
    if isinstance(item, RAPInput):
        text = item.text
    if not isinstance(text, str):
        return type(item).__name__
    return repr(text if len(text) <= width else text[: width - 3] + "...")


class RAPPipeline(ChunkPipeline):
    """Multimodal NER / RE with a RAP model (the task comes from `model.config.task`).

    Call it on one input or a list of inputs. An input is a string (raw text, split into words by `word_splitting`)
    or a dict with `text` or `tokens` (pre-split words) and optionally `image`, `crops`, and for RE `subject` and
    `object` or `pairs`/`entities`. Keyword arguments of the call are defaults for every input (a dict's own keys
    win). A list of strings is a list of texts; pass pre-split words as `{"tokens": [...]}`.

    A `ChunkPipeline`: an RE input fans out into one chunk per subject/object pair, and chunks of all inputs are
    batched `batch_size` at a time (padding by the tokenizer); the model encodes the real image slots itself.

    Args:
        model: a `RAPForMultimodalNER` or `RAPForMultimodalRE`.
        processor: the `RAPProcessor` saved with the model (loaded from `model.name_or_path` when omitted).
        batch_size: chunks per forward pass (NER: inputs; RE: subject/object pairs).
        word_splitting: `"punct"` or `"tweet"` (see `split_words`); defaults to `"punct"` for NER and `"tweet"` for
            RE, the conventions of Twitter-2015/2017 and MNRE.
        grounding_model: where the crops of a picture given without crops come from (`rap_hf/grounding.py`):
            `"vision-encoder"` (regions of the model's own vision encoder), a detector's Hub id or folder, `"none"`,
            or a `VisualGrounder`; default the processor's `grounding_model` (what the model was trained with).
            Crops given with an input are used as they are.
        device: as for any transformers pipeline (`-1`/`"cpu"`, `0`/`"cuda:0"`, a `torch.device`).

    Returns:
        NER, per input: `{"entities": [{"text", "type", "start_word", "end_word", "start_char", "end_char",
        "score"}], "relevance", "routing_weights", "image_used"}`. `score` is the mean over the entity's words of the
        CRF posterior marginal probability of the decoded tag.
        RE, per subject/object pair: `{"relation", "score", "distribution", "subject", "object", "relevance",
        "routing_weights", "image_used"}`; with `pairs` a list of those per input.
    """

    _load_processor = False
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(
        self,
        model: torch.nn.Module,
        processor: RAPProcessor | None = None,
        batch_size: int = 8,
        word_splitting: str | None = None,
        grounding_model: str | VisualGrounder | None = None,
        **kwargs,
    ):
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) != "rap" or not hasattr(model, "classifier"):
            raise TypeError(
                f"RAPPipeline needs a RAPForMultimodalNER or RAPForMultimodalRE model, got {type(model).__name__}"
            )
        if processor is None:
            if not model.name_or_path:
                raise ValueError("pass processor= (the RAPProcessor of this model) for a model built in memory")
            processor = load_processor(model.name_or_path)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        kwargs.setdefault("task", TASK_NAME)
        for unused in ("tokenizer", "feature_extractor", "image_processor", "video_processor"):
            kwargs.pop(unused, None)
        # transformers' pad_collate_fn batches the chunks: tokenizer padding, images concatenated
        super().__init__(
            model=model,
            processor=processor,
            tokenizer=processor.tokenizer,
            image_processor=processor.image_processor,
            batch_size=batch_size,
            **kwargs,
        )
        self.model.eval()
        self.rap_task = config.task
        self.word_splitting = word_splitting or DEFAULT_WORD_SPLITTING[self.rap_task]
        if self.word_splitting not in WORD_SPLITTERS:
            raise ValueError(f"word_splitting must be one of {sorted(WORD_SPLITTERS)}, got {self.word_splitting!r}")
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.grounder = self._load_grounder(grounding_model)

    def _load_grounder(self, grounding_model: str | VisualGrounder | None) -> VisualGrounder | None:
        """The grounder of `grounding_model` (default: the processor's); a warning when the model was trained with
        objects from another source (its config's `grounding_model`)."""
        config = self.model.config
        if not config.multimodal or config.num_crops < 1:
            return None
        spec = grounding_model if grounding_model is not None else getattr(self.processor, "grounding_model", None)
        spec = VISION_ENCODER if spec is None else spec
        try:
            grounder = load_grounder(
                spec,
                vision_model=self.model,
                image_processor=self.processor.image_processor,
                num_objects=config.num_crops,
                device=None if spec == VISION_ENCODER else self.device,
            )
        except OSError as error:  # a detector's weights not at hand (offline): say how to predict without them
            raise OSError(
                f"{error}; pass grounding_model={VISION_ENCODER!r} (offline, the model's own vision encoder) or "
                "'none' (no objects for a picture without crops)"
            ) from None
        trained = getattr(config, "grounding_model", VISION_ENCODER)
        used = grounding_name(grounder)
        if not same_grounding(trained, used):
            logger.warning(
                f"this model was trained with visual objects from {trained!r} for pictures without crops, but the "
                f"pipeline grounds them with {used!r}: predictions on such pictures may be worse (pass "
                f"grounding_model={trained!r} to predict as trained)"
            )
        return grounder

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Saves model, processor and this pipeline's code, so that a fresh Python without `rap_hf` can run
        `transformers.pipeline(model=save_directory, trust_remote_code=True)` (task read from `custom_pipelines`)."""
        self.model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        save_pipeline_code(self, save_directory)

    # -------------------------------------------------------------------------------------------- transformers API
    def _sanitize_parameters(self, **kwargs):
        unknown = set(kwargs) - _INPUT_KEYS - {"word_splitting"}
        if unknown:
            raise TypeError(f"unexpected pipeline argument(s): {sorted(unknown)}")
        return kwargs, {}, {}

    @property
    def is_multimodal(self) -> bool:
        return bool(self.model.config.multimodal)

    def predict_parsed(self, inputs: list[RAPInput], batch_size: int | None = None) -> list[Any]:
        """Results for inputs already parsed (validated) with `parse_input`, in order."""
        return self(list(inputs), batch_size=batch_size or self._batch_size)

    def preprocess(self, inputs: Any, **defaults):
        """The chunks of one input: one for NER, one per subject/object pair for RE (each a model input of batch 1)."""
        try:
            parsed = self.parse_input(inputs, **defaults)
        except (ValueError, TypeError) as error:  # name the input: in a list, the error surfaces without its index
            raise type(error)(f"input {describe_input(inputs)}: {error}") from error
        words = [word.text for word in parsed.words]
        visual = self._visual_inputs(parsed) if self.is_multimodal else {}
        if self.rap_task == "ner":
            encoded = self.processor.pad(self.processor.encode_ner([words]))
            encoded["word_ids"] = encoded["word_ids"][0]
            yield {**encoded, **visual, "rap_input": parsed, "pair": None, "is_last": True}
            return
        pairs = parsed.pairs or []
        # an input without any pair still yields one chunk (a placeholder pair, dropped in postprocess)
        spans = [((s.start, s.end), (o.start, o.end)) for s, o in pairs] or [((0, 1), (0, 1))]
        encoded = self.processor.encode_re([words or ["."]] * len(spans), *zip(*spans))
        for row in range(len(spans)):
            single = self.processor.pad({key: values[row : row + 1] for key, values in encoded.items()})
            yield {
                **single,
                **visual,
                "rap_input": parsed,
                "pair": row if pairs else None,
                "is_last": row == len(spans) - 1,
            }

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        passed = {
            key: model_inputs.pop(key) for key in ("rap_input", "pair", "is_last", "word_ids") if key in model_inputs
        }
        outputs = self.model(**model_inputs)
        batch = model_inputs["input_ids"].shape[0]
        mask = model_inputs.get("image_mask")
        result = {  # placeholders where the model has no such output: postprocess turns them into None
            "relevance": outputs.relevance if outputs.relevance is not None else torch.zeros(batch),
            "routing_weights": torch.zeros(batch, 0) if outputs.routing_weights is None else outputs.routing_weights,
            "image_used": mask.any(-1) if mask is not None else torch.zeros(batch, dtype=torch.bool),
            **passed,
        }
        if self.rap_task == "ner":
            result["predictions"] = outputs.predictions
            result["marginals"] = crf_marginals(self.model.crf, outputs.logits, outputs.word_mask)
            result["word_start_mask"] = model_inputs["word_start_mask"]
        else:
            result["probabilities"] = torch.softmax(outputs.logits.float(), dim=-1)
        return result

    def postprocess(self, all_outputs: list[dict[str, Any]]) -> Any:
        """NER: the entities of the input. RE: the relation of the pair (subject/object given), or the list of the
        pairs' relations (`pairs`)."""
        first = all_outputs[0]
        rap_input = first["rap_input"]

        config = self.model.config
        has_beta, routed = config.multimodal and config.use_relevance_reasoning, config.multimodal

        def common(output: dict[str, Any]) -> dict[str, Any]:  # tensors keep the chunk's batch dimension of 1
            return {
                "relevance": float(output["relevance"][0]) if has_beta else None,
                "routing_weights": [float(v) for v in output["routing_weights"][0].tolist()] if routed else None,
                "image_used": bool(output["image_used"][0]) and routed,
            }

        if self.rap_task == "ner":
            return {"entities": self._entities(first, rap_input), **common(first)}
        relations = [
            {**self._relation(output, rap_input), **common(output)}
            for output in all_outputs
            if output["pair"] is not None
        ]
        return relations[0] if rap_input.single_pair else relations

    def _relation(self, output: dict[str, Any], rap_input: RAPInput) -> dict[str, Any]:
        probabilities = output["probabilities"][0].tolist()
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        subject, obj = rap_input.pairs[output["pair"]]
        return {
            "relation": self.id2label[best],
            "score": float(probabilities[best]),
            "distribution": {self.id2label[i]: float(p) for i, p in enumerate(probabilities)},
            "subject": rap_input.span_info(subject),
            "object": rap_input.span_info(obj),
        }

    # -------------------------------------------------------------------------------------------- input parsing
    def parse_input(self, item: Any, **defaults) -> RAPInput:
        """Normalises one input (string, dict or `RAPInput`): splits the text into words and resolves RE spans.

        Raises `ValueError`/`TypeError` naming the problem (used by the CLI to report the line of a bad input).
        """
        if isinstance(item, RAPInput):
            return item
        if isinstance(item, str):
            item = {"text": item}
        elif not isinstance(item, Mapping):
            raise TypeError(
                f"an input must be a string or a dict with 'text' or 'tokens', got {type(item).__name__} "
                "(pass pre-split words as {'tokens': [...]})"
            )
        unknown = set(item) - _INPUT_KEYS
        if unknown:
            raise ValueError(f"unknown input key(s) {sorted(unknown)}; expected some of {sorted(_INPUT_KEYS)}")
        fields = {**defaults, **item}
        style = fields.pop("word_splitting", None) or self.word_splitting
        text, words = self._words(fields, style)
        crops = fields.get("crops") or []
        if not isinstance(crops, (list, tuple)):
            raise TypeError(f"crops must be a list of images, got {type(crops).__name__}")
        for role, value in [("image", fields.get("image"))] + [(f"crop {i}", c) for i, c in enumerate(crops)]:
            if value is not None and not isinstance(value, _IMAGE_TYPES) and not hasattr(value, "__array__"):
                raise TypeError(f"{role} must be a path, a PIL image or None, got {type(value).__name__}")
        parsed = RAPInput(text=text, words=words, image=fields.get("image"), crops=list(crops))
        if self.rap_task == "re":
            parsed.pairs, parsed.single_pair = self._pairs(fields, text, words)
        return parsed

    @staticmethod
    def _words(fields: dict[str, Any], style: str) -> tuple[str, list[Word]]:
        has_text, has_tokens = fields.get("text") is not None, fields.get("tokens") is not None
        if has_text == has_tokens:
            raise ValueError("give exactly one of 'text' (a string) or 'tokens' (a list of words)")
        if has_tokens:
            text, words = words_from_tokens(fields["tokens"])
            problem = invalid_text(text)
            if problem:  # name the token: the offset in the joined text means little to the caller
                bad = next(i for i, word in enumerate(words) if invalid_text(word.text))
                raise ValueError(
                    f"tokens[{bad}] ({words[bad].text!r}) holds an invalid character: {invalid_text(words[bad].text)}"
                )
            return text, words
        if not isinstance(fields["text"], str):
            raise TypeError(f"text must be a string, got {type(fields['text']).__name__}")
        problem = invalid_text(fields["text"])
        if problem:
            raise ValueError(f"text holds an invalid character: {problem}")
        return fields["text"], split_words(fields["text"], style)

    @staticmethod
    def _pairs(fields: dict[str, Any], text: str, words: list[Word]) -> tuple[list[tuple[Span, Span]], bool]:
        pairs, entities = fields.get("pairs"), fields.get("entities")
        has_pair = fields.get("subject") is not None or fields.get("object") is not None
        if has_pair and pairs is not None:
            raise ValueError("give either subject/object or pairs, not both")
        if has_pair:
            if fields.get("subject") is None or fields.get("object") is None:
                raise ValueError("relation extraction needs both a subject and an object")
            subject = resolve_span(fields["subject"], text, words, "subject")
            obj = resolve_span(fields["object"], text, words, "object")
            return [(subject, obj)], True
        if pairs == "all":
            if isinstance(entities, Mapping):  # a whole NER pipeline result
                entities = entities.get("entities")
            if entities is None:
                raise ValueError("pairs='all' needs entities= (the entity list the NER pipeline returned)")
            spans: dict[tuple[int, int], Span] = {}  # an entity listed twice is one entity (never its own pair)
            for i, entity in enumerate(entities):
                span = resolve_span(entity, text, words, f"entity {i}")
                spans.setdefault((span.start, span.end), span)
            unique = list(spans.values())
            return [(s, o) for i, s in enumerate(unique) for j, o in enumerate(unique) if i != j], False
        if isinstance(pairs, (list, tuple)):
            resolved = []
            for i, pair in enumerate(pairs):
                if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise ValueError(f"pairs[{i}] must be a (subject, object) pair, got {pair!r}")
                resolved.append(
                    (
                        resolve_span(pair[0], text, words, f"pairs[{i}] subject"),
                        resolve_span(pair[1], text, words, f"pairs[{i}] object"),
                    )
                )
            return resolved, False
        if pairs is not None:
            raise ValueError(f"pairs must be 'all' or a list of (subject, object) pairs, got {pairs!r}")
        raise ValueError("relation extraction needs subject= and object=, or pairs='all' with entities=")

    # -------------------------------------------------------------------------------------------- internals
    def _visual_inputs(self, input_: RAPInput) -> dict[str, torch.Tensor]:
        """`pixel_values [1, 1+K, 3, H, W]` and `image_mask [1, 1+K]` of one input; zero when the image is unusable."""
        image = read_picture(input_.image, "image")
        crops = []
        if image is not None:
            crops = [crop for crop in (read_picture(c, f"crop {i}") for i, c in enumerate(input_.crops)) if crop]
        elif input_.crops:
            logger.warning("crops given without a readable image are ignored; predicting text-only")
        return self.processor.process_images(
            [image], [crops], num_crops=self.model.config.num_crops, texts=[input_.text], grounder=self.grounder
        )

    def _entities(self, outputs: dict[str, Any], input_: RAPInput) -> list[dict[str, Any]]:
        word_ids, starts = outputs["word_ids"], outputs["word_start_mask"][0].tolist()
        kept = [word for word, start in zip(word_ids, starts) if start]  # word index of each predicted position
        tags = self.processor.post_process_ner(
            outputs["predictions"], [word_ids], [len(input_.words)], id2label=self.id2label
        )[0]
        confidence = [1.0] * len(input_.words)
        for position, word in enumerate(kept):  # the marginal probability of each kept word's decoded tag
            confidence[word] = float(outputs["marginals"][0, position, int(outputs["predictions"][0, position])])
        if len(kept) < len(input_.words):
            logger.warning(
                f"only the first {len(kept)} of {len(input_.words)} words fit into the processor's max_length "
                f"({self.processor.max_length} tokens); the rest are tagged O"
            )
        entities = []
        for entity_type, start, end in bio_entities(tags):
            span = input_.span_info(Span(start, end))
            entities.append(
                {
                    "text": span["text"],
                    "type": entity_type,
                    "start_word": start,
                    "end_word": end,
                    "start_char": span["start_char"],
                    "end_char": span["end_char"],
                    "score": math.fsum(confidence[start:end]) / (end - start),
                }
            )
        return entities


# ----------------------------------------------------------------------------------------------------------------------
# Factory and transformers registration
# ----------------------------------------------------------------------------------------------------------------------
def device_problem(device: int | str | torch.device | None) -> str | None:
    """Why `device` cannot run a model here (not a device name, no usable CUDA GPU, a GPU index beyond those
    present), or None. Checked before a model is loaded: torch's own failure is a long traceback."""
    if device is None or (isinstance(device, int) and not isinstance(device, bool) and device < 0):
        return None  # the default, or transformers' -1 for the CPU
    try:
        resolved = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        return f"not a device name such as cpu, cuda or cuda:1 ({_first_line(error)})"
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            return (
                "no usable CUDA GPU here (torch.cuda.is_available() is False: no GPU, no driver, or a CPU-only "
                "build of torch)"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            return f"this machine has {count} CUDA GPU(s), numbered from 0"
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        return "the Apple MPS backend is not available here"
    return None


def pipeline(
    model_or_path: str | os.PathLike | torch.nn.Module,
    device: int | str | torch.device | None = None,
    batch_size: int = 8,
    processor: RAPProcessor | None = None,
    word_splitting: str | None = None,
    grounding_model: str | VisualGrounder | None = None,
    **model_kwargs,
) -> RAPPipeline:
    """A `RAPPipeline` for a saved RAP model folder (model + processor) or an in-memory model and its processor.

    Args:
        model_or_path: folder written by `model.save_pretrained` and `processor.save_pretrained` (or a Hub id), or
            a `RAPForMultimodalNER`/`RAPForMultimodalRE` instance (then pass `processor`).
        device: `None` (first GPU when there is one, else CPU), `"cpu"`, `"cuda:0"`, `-1`, `0` or a `torch.device`.
        batch_size: examples per forward pass.
        processor: the `RAPProcessor`; loaded from the folder when omitted.
        word_splitting: see `RAPPipeline`.
        grounding_model: where a picture given without crops gets its crops: `"vision-encoder"`, a detector's Hub id
            or folder, `"none"` or a `VisualGrounder`; default the one saved with the processor (see `RAPPipeline`).
        model_kwargs: passed to `from_pretrained` (e.g. `dtype=torch.bfloat16`, `revision=...`).

    Raises:
        FileNotFoundError: a local folder that does not exist or holds no `config.json`; offline (`HF_HUB_OFFLINE`),
            a Hub id that is not in the Hub cache.
        ValueError / OSError: a device this machine lacks; a damaged or mismatched `config.json`, `model.safetensors`
            or processor (one line naming the file or field).
    """
    problem = device_problem(device)
    if problem:
        raise ValueError(f"device={device!r}: {problem}; use device='cpu'")
    if isinstance(model_or_path, (str, os.PathLike)):
        model, saved_processor = load_model_and_processor(model_or_path, **model_kwargs)
        processor = processor or saved_processor
    elif isinstance(model_or_path, torch.nn.Module):
        model = model_or_path
    else:
        raise TypeError(f"model_or_path must be a folder, a Hub id or a RAP model, got {type(model_or_path).__name__}")
    return RAPPipeline(
        model=model,
        processor=processor,
        batch_size=batch_size,
        word_splitting=word_splitting,
        grounding_model=grounding_model,
        device=device,
    )


# As remote code (a checkpoint's copy of this file) the pipeline is found through config.custom_pipelines; it must not
# replace the installed package's registration.
if not (__name__.startswith("transformers_modules.") and TASK_NAME in PIPELINE_REGISTRY.get_supported_tasks()):
    PIPELINE_REGISTRY.register_pipeline(
        TASK_NAME, pipeline_class=RAPPipeline, pt_model=RAPForMultimodalExtraction, type="multimodal"
    )

__all__ = [
    "RAPPipeline",
    "RAPInput",
    "Word",
    "Span",
    "pipeline",
    "split_words",
    "words_from_tokens",
    "resolve_span",
    "read_picture",
    "crf_marginals",
    "bio_entities",
    "device_problem",
]
