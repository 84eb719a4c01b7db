"""Parsers for the on-disk formats of the Twitter-2015/2017 (MNER) and MNRE (MRE) corpora.

The corpora come in the layout of the HVPNeT/MKGformer releases (see ``docs/data.md``). Everything in this
module is plain Python: it turns files into records and raises a ``DataFormatError`` (a ``ValueError``) that
names the file, the line and the problem when the input is malformed. Recoverable gaps (a missing image, an
unreadable crop) are not handled here but counted by the builders.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets


logger = logging.getLogger(__name__)

# Label order of the NER models: fixed, never derived from the data.
NER_LABELS: list[str] = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
NER_ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "MISC")
# Twitter-2015 names the miscellaneous type OTHER.
NER_TYPE_ALIASES: dict[str, str] = {"OTHER": "MISC"}

# The 23 MNRE relation names ordered by their id in ours_rel2id.json.
MNRE_RELATIONS: list[str] = [
    "None",
    "/per/per/parent",
    "/per/per/siblings",
    "/per/per/couple",
    "/per/per/neighbor",
    "/per/per/peer",
    "/per/per/charges",
    "/per/per/alumi",
    "/per/per/alternate_names",
    "/per/org/member_of",
    "/per/loc/place_of_residence",
    "/per/loc/place_of_birth",
    "/org/org/alternate_names",
    "/org/org/subsidiary",
    "/org/loc/locate_at",
    "/loc/loc/contain",
    "/per/misc/present_in",
    "/per/misc/awarded",
    "/per/misc/race",
    "/per/misc/religion",
    "/per/misc/nationality",
    "/misc/misc/part_of",
    "/misc/loc/held_on",
]


class DataFormatError(ValueError):
    """Malformed corpus input. The message reads ``<file>:<line>: <problem>``."""

    def __init__(self, path: str | os.PathLike, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


def _preview(text: str, limit: int = 60) -> str:
    """Short repr of a bad line for error messages."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------------------------------------------
# Twitter-2015 / Twitter-2017 (CoNLL-like, one token per line)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class NERSentence:
    """One tweet of a Twitter MNER file."""

    image_id: str
    tokens: list[str]
    tags: list[str]
    line: int  # 1-based line of the IMGID line (or of the first token when there is none)


@dataclass
class ParseStats:
    """What the parser had to fix or noticed; reported by the builders."""

    counts: Counter = field(default_factory=Counter)


def normalize_tag(tag: str, path: str | os.PathLike = "<input>", line: int | None = None) -> str:
    """Return the canonical form of a BIO tag (``OTHER`` becomes ``MISC``); raise on unknown tags."""
    tag = tag.strip()
    if tag == "O":
        return tag
    prefix, sep, entity_type = tag.partition("-")
    if not sep or prefix not in ("B", "I"):
        raise DataFormatError(path, line, f"unknown tag {tag!r} (expected O, B-<type> or I-<type>)")
    entity_type = NER_TYPE_ALIASES.get(entity_type, entity_type)
    if entity_type not in NER_ENTITY_TYPES:
        raise DataFormatError(path, line, f"unknown entity type in tag {tag!r} (expected one of {NER_ENTITY_TYPES})")
    return f"{prefix}-{entity_type}"


def find_orphan_tags(tags: Sequence[str]) -> list[int]:
    """Indices of ``I-X`` tags that do not continue a ``B-X``/``I-X`` (orphans)."""
    orphans = []
    previous = "O"
    for index, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            orphans.append(index)
        previous = tag
    return orphans


def repair_orphan_tags(tags: Sequence[str]) -> list[str]:
    """Turn every orphan ``I-X`` into ``B-X`` (the conlleval reading of such a tag)."""
    repaired = list(tags)
    for index in find_orphan_tags(tags):
        repaired[index] = "B-" + repaired[index][2:]
    return repaired


def read_twitter_file(
    path: str | os.PathLike, *, repair_orphan_i: bool = False, stats: ParseStats | None = None
) -> list[NERSentence]:
    """Parse one Twitter MNER split file.

    Each tweet is an ``IMGID:<id>`` line followed by ``token<TAB>label`` lines; tweets are separated by blank
    lines. The last tweet is kept when the file has no trailing blank line, ``OTHER`` is read as ``MISC`` and
    orphan ``I-`` tags are kept (or repaired to ``B-`` when ``repair_orphan_i``); their number is counted in
    ``stats.counts["orphan_i_tags"]``.
    """
    stats = stats if stats is not None else ParseStats()
    sentences: list[NERSentence] = []
    image_id: str | None = None
    tokens: list[str] = []
    tags: list[str] = []
    start_line = 0

    def close(end_line: int) -> None:
        nonlocal image_id, tokens, tags
        if image_id is not None and not tokens:
            raise DataFormatError(path, start_line, f"tweet IMGID:{image_id} has no tokens")
        if tokens:
            orphans = find_orphan_tags(tags)
            stats.counts["orphan_i_tags"] += len(orphans)
            final_tags = repair_orphan_tags(tags) if (repair_orphan_i and orphans) else tags
            sentences.append(NERSentence(image_id or "", tokens, final_tags, start_line))
        image_id, tokens, tags = None, [], []

    # utf-8-sig drops a byte-order mark; newline="" keeps "\r" so it can be stripped explicitly below.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lineno = 0
        for lineno, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                close(lineno)
                continue
            if line.startswith("IMGID:"):
                close(lineno)  # a new tweet without a blank line in between is unambiguous
                image_id = line[len("IMGID:") :].strip()
                if not image_id:
                    raise DataFormatError(path, lineno, "empty image id after 'IMGID:'")
                start_line = lineno
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataFormatError(path, lineno, f"expected 'token<TAB>label', got {_preview(line)}")
            token, tag = fields
            if token == "":
                raise DataFormatError(path, lineno, f"empty token in {_preview(line)}")
            if not tokens and image_id is None:
                start_line = lineno
            tokens.append(token)
            tags.append(normalize_tag(tag, path, lineno))
        close(lineno + 1)  # the last tweet of a file without trailing blank line
    return sentences


# ----------------------------------------------------------------------------------------------------------------
# MNRE (one Python dict literal per line)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Entity:
    """An entity mention: ``tokens[start:end]`` (end-exclusive word indices)."""

    name: str
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "start": self.start, "end": self.end}


@dataclass
class RERecord:
    """One line of an MNRE text file."""

    index: int  # 0-based line index: the key of the crop dictionary
    tokens: list[str]
    subject: Entity
    object: Entity
    image_id: str
    relation: str
    line: int  # 1-based


def read_relation_names(path: str | os.PathLike) -> list[str]:
    """Relation names of an ``ours_rel2id.json`` ordered by id; the ids must be 0..n-1."""
    try:
        with open(path, encoding="utf-8") as handle:
            mapping = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"not valid JSON: {error.msg}") from error
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise DataFormatError(path, None, "expected a JSON object {relation name: integer id}")
    ids = sorted(mapping.values())
    if ids != list(range(len(ids))):
        raise DataFormatError(path, None, f"relation ids must be 0..{len(ids) - 1} without gaps, got {ids}")
    return [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])]


def _parse_entity(value: Any, key: str, num_tokens: int, path: str | os.PathLike, line: int) -> Entity:
    """Validate an MNRE ``h``/``t`` entry ``{"name": str, "pos": [start, end]}``."""
    if not isinstance(value, dict) or "pos" not in value:
        raise DataFormatError(path, line, f"'{key}' must be a dict with 'name' and 'pos', got {_preview(repr(value))}")
    pos = value["pos"]
    if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and all(isinstance(p, int) for p in pos)):
        raise DataFormatError(path, line, f"'{key}.pos' must be [start, end] integers, got {pos!r}")
    start, end = pos
    if not 0 <= start < end <= num_tokens:
        raise DataFormatError(
            path, line, f"'{key}' span {list(pos)} outside tokens (need 0 <= start < end <= {num_tokens})"
        )
    name = value.get("name", "")
    if not isinstance(name, str):
        raise DataFormatError(path, line, f"'{key}.name' must be a string, got {name!r}")
    return Entity(name=name, start=start, end=end)


def parse_mnre_line(
    text: str, index: int, relation_names: Sequence[str], path: str | os.PathLike = "<input>", line: int = 1
) -> RERecord:
    """Parse one MNRE line (a Python dict literal, hence ``ast.literal_eval`` rather than JSON)."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise DataFormatError(path, line, f"not a Python literal ({type(error).__name__}): {_preview(text)}") from None
    if not isinstance(value, dict):
        raise DataFormatError(path, line, f"expected a dict literal, got {type(value).__name__}")
    missing = [key for key in ("token", "h", "t", "img_id", "relation") if key not in value]
    if missing:
        raise DataFormatError(path, line, f"missing key(s) {missing}")
    tokens = value["token"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise DataFormatError(path, line, "'token' must be a non-empty list of strings")
    relation = value["relation"]
    if relation not in relation_names:
        raise DataFormatError(path, line, f"unknown relation {relation!r} (not in the relation list)")
    image_id = value["img_id"]
    if not isinstance(image_id, str):
        raise DataFormatError(path, line, f"'img_id' must be a string, got {image_id!r}")
    return RERecord(
        index=index,
        tokens=tokens,
        subject=_parse_entity(value["h"], "h", len(tokens), path, line),
        object=_parse_entity(value["t"], "t", len(tokens), path, line),
        image_id=image_id,
        relation=relation,
        line=line,
    )


def read_mnre_file(path: str | os.PathLike, relation_names: Sequence[str]) -> list[RERecord]:
    """Parse an MNRE split file. Blank lines are skipped but still count for the line index."""
    records = []
    with open(path, encoding="utf-8-sig") as handle:
        for index, raw in enumerate(handle):
            if raw.strip():
                records.append(parse_mnre_line(raw.strip(), index, relation_names, path, index + 1))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Crop dictionaries (*.pth): a pickled {key: [crop file names]}
# ----------------------------------------------------------------------------------------------------------------


def load_crop_dict(path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a crop dictionary and normalise keys to strings and values to lists of file names.

    The HVPNeT releases write these with ``torch.save`` (a pickled dict, not tensors); plain pickles are
    accepted too. Raises ``DataFormatError`` when the file is not a dictionary of name lists.
    """
    try:
        import torch

        value = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # not a torch zip/legacy file: try a plain pickle next
        try:
            with open(path, "rb") as handle:
                value = pickle.load(handle)
        except Exception as error:
            raise DataFormatError(path, None, f"cannot unpickle crop dictionary ({error})") from None
    if not isinstance(value, dict):
        raise DataFormatError(path, None, f"crop dictionary must be a dict, got {type(value).__name__}")
    result: dict[str, list[str]] = {}
    for key, names in value.items():
        if isinstance(names, (str, os.PathLike)):
            names = [names]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, os.PathLike)) for n in names):
            raise DataFormatError(path, None, f"entry {key!r} must be a list of file names, got {names!r}")
        result[str(key)] = [os.fspath(n) for n in names]
    return result


def first_existing(candidates: Iterable[Path]) -> Path | None:
    """First path of ``candidates`` that exists."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------------------------
# Shared builder helpers: image files and counted gaps
# ----------------------------------------------------------------------------------------------------------------

GAP_REPORT_FILENAME = "rap_gap_report.json"


def check_image_file(path: Path) -> str:
    """Return ``"ok"``, ``"missing"`` or ``"unreadable"`` for an image file (decoded, not just opened)."""
    if not path.is_file():
        return "missing"
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG decodes at reduced scale: a full check at a fraction of the cost
            image.load()
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for broken files
        return "unreadable"
    return "ok"


def image_value(path: Path, kind: str, counts: Counter, embed: bool) -> dict[str, Any] | None:
    """A ``datasets.Image`` value for ``path`` or ``None``; missing/unreadable files are counted under ``kind``."""
    status = check_image_file(path)
    if status != "ok":
        counts[f"{status}_{kind}"] += 1
        return None
    return {"path": str(path), "bytes": path.read_bytes() if embed else None}


def crop_values(
    names: Sequence[str] | None, crops_dir: Path | None, max_crops: int, counts: Counter, embed: bool
) -> list[dict[str, Any]]:
    """Image values for the first ``max_crops`` crop files that can be read; gaps are counted."""
    if names is None:
        counts["no_crop_entry"] += 1
        return []
    if len(names) > max_crops:
        counts["crops_beyond_max_crops"] += len(names) - max_crops
    values = []
    for name in names[:max_crops]:
        path = Path(name) if Path(name).is_absolute() else (crops_dir or Path(".")) / name
        if not path.exists() and crops_dir is not None:
            path = crops_dir / Path(name).name  # some releases store paths relative to another root
        value = image_value(path, "crop", counts, embed)
        if value is not None:
            values.append(value)
    return values


def warn_if_missing_folder(folder: Path, what: str) -> None:
    """One warning for an absent image folder instead of one counted gap per example without explanation."""
    if not folder.is_dir():
        logger.warning("%s folder %s does not exist: every %s is counted as missing "
                       "(load with text_only=True for a text-only release)", what, folder, what)


def log_gap_summary(corpus: str, split: str, num_examples: int, counts: Counter) -> None:
    """One log record per split: the example count and every counted gap."""
    gaps = {key: value for key, value in sorted(counts.items()) if value}
    if gaps:
        details = ", ".join(f"{key}={value}" for key, value in gaps.items())
        logger.warning("%s/%s: %d examples; counted gaps/fixes: %s", corpus, split, num_examples, details)
    else:
        logger.info("%s/%s: %d examples; no gaps", corpus, split, num_examples)


# ----------------------------------------------------------------------------------------------------------------
# Shared builder pieces (config and gap report persistence)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class RAPBuilderConfig(datasets.BuilderConfig):
    """Options shared by the rap_hf builders.

    Args:
        text_only: do not look at images at all (``image`` is ``None`` and ``crops`` is ``[]`` everywhere).
        repair_orphan_i: NER only: rewrite orphan ``I-X`` tags as ``B-X`` (default: keep them as written).
        max_crops: keep at most this many object crops per example (the releases have up to 4; RAP uses 3).
        embed_images: store image bytes in the prepared dataset (self-contained, survives Parquet export and
            moving the corpus) instead of only their paths.
    """

    text_only: bool = False
    repair_orphan_i: bool = False
    max_crops: int = 3
    embed_images: bool = True


class GapReportMixin:
    """Keeps the per-split gap counts as ``self.gap_counts`` and next to the prepared data (cache reuse)."""

    gap_counts: dict[str, dict[str, int]]

    def _record_gaps(self, split: str, num_examples: int, counts: Counter) -> None:
        if not hasattr(self, "gap_counts"):
            self.gap_counts = {}
        self.gap_counts[split] = {key: value for key, value in sorted(counts.items()) if value}
        log_gap_summary(self.config.name, split, num_examples, counts)

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self.gap_counts = {}
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)
        # _output_dir is the temporary directory here; it is renamed to the final cache directory afterwards.
        with open(os.path.join(self._output_dir, GAP_REPORT_FILENAME), "w", encoding="utf-8") as handle:
            json.dump(self.gap_counts, handle, indent=2, sort_keys=True)

    def download_and_prepare(self, *args, **kwargs) -> None:
        try:
            super().download_and_prepare(*args, **kwargs)
        except datasets.exceptions.DatasetGenerationError as error:
            # datasets wraps generator errors; surface ours so callers see "<file>:<line>: <problem>"
            if isinstance(error.__cause__, (DataFormatError, FileNotFoundError)):
                raise error.__cause__ from None
            raise
        if not getattr(self, "gap_counts", None):
            report = os.path.join(self._output_dir, GAP_REPORT_FILENAME)
            if os.path.exists(report):
                with open(report, encoding="utf-8") as handle:
                    self.gap_counts = json.load(handle)
                for split, counts in self.gap_counts.items():
                    logger.info("%s/%s (cached): counted gaps/fixes: %s", self.config.name, split, counts or "none")
