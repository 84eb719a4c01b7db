"""Parsers for the on-disk formats of the Twitter-2015/2017 (MNER) and MNRE (MRE) corpora.

The corpora come in the layout of the HVPNeT/MKGformer releases (see ``docs/data.md``). This module turns files
into records (no model is involved; torch only reads the ``torch.save`` crop dictionaries) and raises a
``DataFormatError`` (a ``ValueError``) that names the file, the line and the problem when the input is malformed.
Recoverable gaps (a missing image, an unreadable crop) are not handled here but counted by the builders.
"""

from __future__ import annotations

import ast
import codecs
import io
import json
import logging
import os
import pickle
import struct
import zipfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

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


_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),  # before UTF-16: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 corpus file (a UTF-8 byte-order mark is dropped).

    Raises ``DataFormatError`` naming the file (and the line of the first bad byte) for UTF-16/UTF-32 files and
    anything that is not valid UTF-8, instead of a bare ``UnicodeDecodeError``.
    """
    data = Path(path).read_bytes()
    for bom, encoding in _WIDE_BOMS:
        if data.startswith(bom):
            raise DataFormatError(path, None, f"the file is {encoding}-encoded (byte-order mark); convert it to UTF-8")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    nul = data.find(b"\x00")
    if nul >= 0:  # UTF-16 without byte-order mark decodes as "valid" UTF-8 full of NUL characters
        line = data.count(b"\n", 0, nul) + 1
        raise DataFormatError(path, line, "NUL byte in the text (UTF-16 without byte-order mark?); convert it to UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        raise DataFormatError(
            path,
            data.count(b"\n", 0, error.start) + 1,
            f"not valid UTF-8 (byte 0x{data[error.start]:02x} at column {error.start - line_start + 1}); "
            "the corpus files must be UTF-8",
        ) from None


def require_examples(path: str | os.PathLike, count: int) -> None:
    """An empty split file is an error naming it (``datasets`` would only say a split "corresponds to no data")."""
    if count == 0:
        raise DataFormatError(path, None, "the file holds no examples (empty or only blank lines)")


# ----------------------------------------------------------------------------------------------------------------
# Twitter-2015 / Twitter-2017 (CoNLL-like, one token per line)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class NERSentence:
    """One tweet of a Twitter MNER file."""

    image_id: str
    tokens: list[str]
    tags: list[str]
    line: int  # 1-based line of the IMGID line


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
    """Indices of ``I-X`` tags that do not continue a ``B-X``/``I-X`` (orphans): the ``I-`` tags that begin an entity
    in seqeval's (conlleval's) reading."""
    from seqeval.metrics.sequence_labeling import get_entities  # here: seqeval loads scikit-learn, slow to import

    return [start for _, start, _ in get_entities(list(tags)) if tags[start].startswith("I-")]


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
    ``stats.counts["orphan_i_tags"]``. Token lines without an ``IMGID:`` line before them (a tweet without image
    id, or a blank or whitespace-only line inside a tweet splitting it) raise ``DataFormatError``.
    """
    stats = stats if stats is not None else ParseStats()
    sentences: list[NERSentence] = []
    image_id: str | None = None
    tokens: list[str] = []
    tags: list[str] = []
    start_line = 0
    separator: tuple[int, str] | None = None  # last blank line: (number, text)

    def close() -> None:
        nonlocal image_id, tokens, tags
        if image_id is not None and not tokens:
            raise DataFormatError(path, start_line, f"tweet IMGID:{image_id} has no tokens")
        if tokens:
            orphans = find_orphan_tags(tags)
            stats.counts["orphan_i_tags"] += len(orphans)
            final_tags = repair_orphan_tags(tags) if (repair_orphan_i and orphans) else tags
            sentences.append(NERSentence(image_id, tokens, final_tags, start_line))
        image_id, tokens, tags = None, [], []

    # newline="" keeps "\r" so it can be stripped explicitly below (and splits lines only at \n, \r, \r\n).
    lineno = 0
    for lineno, raw in enumerate(io.StringIO(read_text(path), newline=""), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            close()
            separator = (lineno, line)
            continue
        if line.startswith("IMGID:"):
            close()  # a new tweet without a blank line in between is unambiguous
            image_id = line[len("IMGID:") :].strip()
            if not image_id:
                raise DataFormatError(path, lineno, "empty image id after 'IMGID:'")
            start_line = lineno
            continue
        if image_id is None:
            raise _tweet_without_imgid(path, lineno, separator)
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataFormatError(path, lineno, f"expected 'token<TAB>label', got {_preview(line)}")
        token, tag = fields
        if token == "":
            raise DataFormatError(path, lineno, f"empty token in {_preview(line)}")
        tokens.append(token)
        tags.append(normalize_tag(tag, path, lineno))
    close()  # the last tweet of a file without trailing blank line
    return sentences


def _tweet_without_imgid(path: str | os.PathLike, lineno: int, separator: tuple[int, str] | None) -> DataFormatError:
    """The error for a token line that belongs to no ``IMGID:`` line, pointing at the likely cause."""
    if separator is not None and separator[1]:
        return DataFormatError(
            path,
            separator[0],
            f"a line holding only whitespace ({separator[1]!r}) inside a tweet splits it in two; "
            "remove it (tweets are separated by empty lines)",
        )
    hint = f" (does the blank line {separator[0]} split a tweet?)" if separator is not None else ""
    return DataFormatError(path, lineno, f"token line without an 'IMGID:<id>' line before it{hint}")


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
        mapping = json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise DataFormatError(path, error.lineno, f"not valid JSON: {error.msg}") from error
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise DataFormatError(path, None, "expected a JSON object {relation name: integer id}")
    ids = sorted(mapping.values())
    if ids != list(range(len(ids))):
        raise DataFormatError(path, None, f"relation ids must be 0..{len(ids) - 1} without gaps, got {ids}")
    return [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])]


def _parse_entity(value: Any, key: str, tokens: Sequence[str], path: str | os.PathLike, line: int) -> Entity:
    """Validate an MNRE ``h``/``t`` entry ``{"name": str, "pos": [start, end]}``."""
    if not isinstance(value, dict) or "pos" not in value or "name" not in value:
        raise DataFormatError(path, line, f"'{key}' must be a dict with 'name' and 'pos', got {_preview(repr(value))}")
    pos = value["pos"]
    # type() rather than isinstance: True/False are ints to isinstance but never a word index
    if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and all(type(p) is int for p in pos)):
        raise DataFormatError(path, line, f"'{key}.pos' must be [start, end] integers, got {pos!r}")
    start, end = pos
    if not 0 <= start < end <= len(tokens):
        raise DataFormatError(
            path, line, f"'{key}' span {list(pos)} outside tokens (need 0 <= start < end <= {len(tokens)})"
        )
    name = value["name"]
    if not isinstance(name, str):
        raise DataFormatError(path, line, f"'{key}.name' must be a string, got {name!r}")
    return Entity(name=name, start=start, end=end)


# Name/pos mismatches logged one by one per file before only the count goes on.
_MISMATCH_WARNINGS = 3


def _check_entity_names(record: RERecord, path: str | os.PathLike, stats: ParseStats | None) -> None:
    """Count (``entity_name_mismatch``) and warn about an entity whose ``name`` is not its words joined by a space.

    The spans (``pos``) are what the model uses; a different name means the line was edited or built by hand.
    """
    for key, entity in (("h", record.subject), ("t", record.object)):
        words = " ".join(record.tokens[entity.start : entity.end])
        if entity.name == words:
            continue
        count = 1
        if stats is not None:
            stats.counts["entity_name_mismatch"] += 1
            count = stats.counts["entity_name_mismatch"]
        if count <= _MISMATCH_WARNINGS:
            logger.warning(
                "%s:%d: '%s.name' %r does not match the tokens at pos [%d, %d]: %r (the pos is used)",
                path,
                record.line,
                key,
                entity.name,
                entity.start,
                entity.end,
                words,
            )


def parse_mnre_line(
    text: str,
    index: int,
    relation_names: Sequence[str],
    path: str | os.PathLike = "<input>",
    line: int = 1,
    stats: ParseStats | None = None,
) -> RERecord:
    """Parse one MNRE line (a Python dict literal, hence ``ast.literal_eval`` rather than JSON).

    An entity ``name`` that differs from its words at ``pos`` is warned about and counted in
    ``stats.counts["entity_name_mismatch"]``; everything else malformed raises ``DataFormatError``.
    """
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
    if not isinstance(image_id, str) or not image_id:
        raise DataFormatError(path, line, f"'img_id' must be a non-empty string, got {image_id!r}")
    record = RERecord(
        index=index,
        tokens=tokens,
        subject=_parse_entity(value["h"], "h", tokens, path, line),
        object=_parse_entity(value["t"], "t", tokens, path, line),
        image_id=image_id,
        relation=relation,
        line=line,
    )
    _check_entity_names(record, path, stats)
    return record


def read_mnre_file(
    path: str | os.PathLike, relation_names: Sequence[str], stats: ParseStats | None = None
) -> list[RERecord]:
    """Parse an MNRE split file. Blank lines are skipped but still count for the line index."""
    stats = stats if stats is not None else ParseStats()
    records = []
    for index, raw in enumerate(io.StringIO(read_text(path), newline=None)):
        if raw.strip():
            records.append(parse_mnre_line(raw.strip(), index, relation_names, path, index + 1, stats))
    return records


# ----------------------------------------------------------------------------------------------------------------
# Crop dictionaries (*.pth): {key: [crop file names]} written by torch.save, read without running any code
# ----------------------------------------------------------------------------------------------------------------


class _RefusedPickle(pickle.UnpicklingError):
    """A pickle that names a Python object (the only way a pickle can run code): never loaded."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    """The `pickle` docs' "restricting globals" recipe with nothing allowed: plain data loads, any class or function
    reference is refused (torch's weights-only unpickler cannot read pickles of protocol 4 and above)."""

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedPickle(f"it refers to the Python object {module}.{name}")


def _weights_only_refusal(error: pickle.UnpicklingError) -> str:
    """The part of torch's weights-only error that names what was refused (the rest suggests `weights_only=False`)."""
    message = str(error)
    detail = message.partition("WeightsUnpickler error:")[2].strip() or message
    return detail.splitlines()[0].split(". ")[0]


def _read_crop_pickle(path: str | os.PathLike) -> Any:
    """The object of a ``torch.save`` file (zip or legacy format: ``torch.load(weights_only=True)``) or of a plain
    pickle (`_NoGlobalsUnpickler`)."""
    try:
        with open(path, "rb") as handle:
            if not zipfile.is_zipfile(handle):
                handle.seek(0)
                first = _NoGlobalsUnpickler(handle).load()
                # torch.save's legacy format opens with torch's magic number; a plain pickle is the object itself
                if not (type(first) is int and first == torch.serialization.MAGIC_NUMBER):
                    return first
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise _RefusedPickle(_weights_only_refusal(error)) from None
    except _RefusedPickle as error:
        raise DataFormatError(
            path,
            None,
            f"refused to load the crop dictionary: {error}; it must hold only a dict of lists of "
            "file names (loading other objects could run code)",
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        MemoryError,
        RuntimeError,
        struct.error,
    ) as error:
        problem = f"not a pickle or torch.save file ({type(error).__name__}: {error})"
        raise DataFormatError(path, None, f"cannot unpickle crop dictionary: {problem}") from None


def load_crop_dict(path: str | os.PathLike) -> dict[str, list[str]]:
    """Load a crop dictionary and normalise keys to strings and values to lists of file names.

    The HVPNeT releases write these with ``torch.save`` (a pickled dict, not tensors), read here with
    ``torch.load(weights_only=True)``; plain pickles are accepted too, read with an unpickler that refuses every class
    or function reference. Neither runs code from a crafted file. Raises ``DataFormatError`` naming the file when it
    cannot be read or is not a dict {str or int: list of strings}.
    """
    value = _read_crop_pickle(path)
    if not isinstance(value, dict):
        raise DataFormatError(path, None, f"crop dictionary must be a dict, got {type(value).__name__}")
    result: dict[str, list[str]] = {}
    for key, names in value.items():
        if type(key) not in (str, int):
            raise DataFormatError(path, None, f"crop dictionary key {key!r} must be a string or an integer")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            got = _preview(repr(names))
            raise DataFormatError(path, None, f"entry {key!r} must be a list of file names, got {got}")
        result[str(key)] = list(names)
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


def file_inside(folder: Path, name: str) -> Path | None:
    """``folder/name`` resolved (``..`` and symbolic links followed), or ``None`` when that leaves ``folder``.

    Image ids and crop names come from corpus files: an absolute name or one with ``..`` must not reach files
    elsewhere on the machine.
    """
    if not name or "\x00" in name:
        return None
    root = folder.resolve()
    path = (root / name).resolve()
    return path if path != root and path.is_relative_to(root) else None


def _decodes(data: bytes) -> bool:
    """Whether ``data`` is an image PIL can decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))  # JPEG decodes at reduced scale: a full check at a fraction of the cost
            image.load()
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for broken files
        return False
    return True


def image_value(path: Path, kind: str, counts: Counter, embed: bool) -> dict[str, Any] | None:
    """A ``datasets.Image`` value for ``path`` or ``None``; missing/unreadable files are counted under ``kind``.

    With ``embed`` the value holds the bytes that were checked and no path (``datasets`` keeps only the path of a
    value that has both while the file exists, and that breaks once the corpus moves).
    """
    if not path.is_file():
        counts[f"missing_{kind}"] += 1
        return None
    data = path.read_bytes()
    if not _decodes(data):
        counts[f"unreadable_{kind}"] += 1
        return None
    return {"path": None, "bytes": data} if embed else {"path": str(path), "bytes": None}


def crop_values(
    names: Sequence[str] | None, crops_dir: Path, max_crops: int, counts: Counter, embed: bool
) -> list[dict[str, Any]]:
    """Image values for the first ``max_crops`` crop files that can be read; gaps are counted.

    A name is looked up in ``crops_dir`` (and by its last part there when it holds folders of another root); a name
    leading outside ``crops_dir`` (absolute, ``..``, a symbolic link) is left out and counted as
    ``crop_outside_folder``.
    """
    if names is None:
        counts["no_crop_entry"] += 1
        return []
    if len(names) > max_crops:
        counts["crops_beyond_max_crops"] += len(names) - max_crops
    values = []
    for name in names[:max_crops]:
        path = file_inside(crops_dir, name)
        if path is None:
            counts["crop_outside_folder"] += 1
            continue
        if not path.exists():
            path = file_inside(crops_dir, Path(name).name) or path  # some releases store paths of another root
        value = image_value(path, "crop", counts, embed)
        if value is not None:
            values.append(value)
    return values


def warn_if_missing_folder(folder: Path, what: str) -> None:
    """One warning for an absent image folder instead of one counted gap per example without explanation."""
    if not folder.is_dir():
        logger.warning(
            "%s folder %s does not exist: every %s is counted as missing "
            "(load with text_only=True for a text-only release)",
            what,
            folder,
            what,
        )


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
