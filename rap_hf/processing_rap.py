# Copyright 2025 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Processor for RAP (Relevance-Aware Prompt-tuning) multimodal NER and RE.

This file is self-contained (torch, transformers, PIL, numpy and the standard library only) so that it can be
copied next to a checkpoint on the Hub and loaded with ``AutoProcessor.from_pretrained(..., trust_remote_code=True)``.

* NER: word-level tags are put on the first sub-token of each word (``-100`` elsewhere), ``word_start_mask`` marks
  those positions and ``word_ids`` maps every token back to its word.
* RE: the entity markers ``<s> </s> <o> </o>`` (special tokens added to the tokenizer) are inserted around the
  subject and the object; truncation moves the window so both entities stay inside; ``entity_positions`` holds the
  indices of ``<s>`` and ``<o>``.
* Images: the whole image and up to ``num_crops`` object crops become ``pixel_values [B, 1+K, 3, H, W]`` with
  ``image_mask [B, 1+K]`` (1 = real image, 0 = empty slot). A picture without crops gets the crops of
  ``processor.grounder`` when one is set (`set_grounder`; ``grounding.py``); crops a corpus or a caller gives win.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AddedToken, BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

logger = logging.get_logger(__name__)

IGNORE_INDEX = -100
DEFAULT_ENTITY_MARKERS = ("<s>", "</s>", "<o>", "</o>")
# ImageNet statistics, as used by microsoft/resnet-101.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Tensor-valued fields that are padded along the sequence dimension, with their padding value (None = pad id).
_SEQUENCE_FIELDS = {"input_ids": None, "attention_mask": 0, "token_type_ids": 0, "word_start_mask": 0}
_TOKENIZER_FIELDS = ("input_ids", "attention_mask", "token_type_ids")  # padded by the tokenizer itself
DEFAULT_GROUNDING_MODEL = "vision-encoder"  # grounding.VISION_ENCODER (this file imports no sibling module)
_OWN_GROUNDER = object()  # process_images' default: the processor's own grounder


def default_image_processor(image_size: int = 224):
    """An image processor configured like ``microsoft/resnet-101``: resize to ``image_size/0.875``, centre crop
    ``image_size``, ImageNet mean/std. Uses the PIL backend (no torchvision needed)."""
    from transformers import ConvNextImageProcessorPil

    return ConvNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_pct=224 / 256,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )


def load_image(value: Any) -> Image.Image | None:
    """Open an image given as PIL image, path, ``datasets`` dict (``{"bytes", "path"}``), array or ``None``, as RGB.

    An array is ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` of a type ``Image.fromarray`` reads
    (``uint8``...) or of floats in [0, 1] (scaled to 0..255, as ``torchvision``'s ``ToTensor`` makes them); other
    arrays raise ``ValueError`` saying what was found. 16-bit pictures (16-bit greyscale PNG/TIFF files, ``uint16``
    arrays: modes ``I;16*``) are scaled from 0..65535 to 0..255 rather than clipped to white (see `to_rgb`).

    A file is decoded here, completely, and closed before this returns (also when it is truncated or animated); a
    path that is not a regular file (a FIFO, a device, a directory) raises ``OSError`` without reading it, since
    reading a FIFO would wait for a writer forever.
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, (str, os.PathLike)):
        return _read_image_file(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return _decoded_rgb(Image.open(io.BytesIO(value["bytes"])))
        if value.get("path"):
            return _read_image_file(value["path"])
        return None
    if isinstance(value, np.ndarray):
        return to_rgb(_array_image(value))
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a picture file; a path that is not a regular file (a FIFO, a device, a directory) raises
    ``OSError`` naming it without reading it, since reading a FIFO would wait for a writer forever."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer opens it (no effect on files)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
    except OSError:
        os.close(descriptor)
        raise
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
        raise OSError(f"{os.fspath(path)!r} is {kind}, not an image file")
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read()


def _read_image_file(path: str | os.PathLike) -> Image.Image:
    """The RGB picture of an image file, decoded and with the file closed; only regular files are read."""
    return _decoded_rgb(Image.open(io.BytesIO(read_regular_file(path))))


def _decoded_rgb(image: Image.Image) -> Image.Image:
    """`to_rgb` of an image opened from a file object, decoded now (first frame) so that the file may be closed."""
    image.load()
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB. 16-bit greyscale (modes ``I;16``, ``I;16B``, ...; also a 32-bit ``I`` picture read from a PNG
    file, as older Pillow opens 16-bit PNGs, or with values above 255) is scaled from 0..65535 to 0..255: PIL's own
    conversion clips it, so mid-grey 32768 would become white 255. Values outside 0..65535 raise ``ValueError``."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if image.mode.startswith("I;16") or high > 255 or getattr(image, "format", None) == "PNG":
            if low < 0 or high > 65535:
                raise ValueError(f"a 32-bit integer image (mode I) must hold values in 0..65535, got {low}..{high}")
            image = Image.fromarray(np.round(array.astype(np.float32) / 257.0).astype(np.uint8))
    return image.convert("RGB")


def _array_image(array: np.ndarray) -> Image.Image:
    """``Image.fromarray`` for the arrays it refuses: floats (in [0, 1], scaled to 0..255) and ``[H, W, 1]``."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if np.issubdtype(array.dtype, np.floating):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (low >= 0 and high <= 1):  # NaN fails both comparisons
            raise ValueError(f"a float image array must hold values in [0, 1], got {array.dtype} in [{low}, {high}]")
        array = np.round(array * 255).astype(np.uint8)
    try:
        return Image.fromarray(array)
    except TypeError as error:  # PIL's message names neither the shape nor what would work
        raise ValueError(
            f"cannot read an image from a {array.dtype} array of shape {array.shape} ({error}); use [H, W] or "
            "[H, W, 3] with uint8 values in 0..255 or floats in [0, 1]"
        ) from None


def invalid_text(text: str) -> str | None:
    """Why `text` is not valid Unicode text (a lone surrogate, e.g. from JSON ``"\\ud800"``), or ``None``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"lone surrogate U+{ord(text[error.start]):04X} at character {error.start}: not valid Unicode text"
    return None


def invalid_word(words_batch: Sequence[Sequence[Any]]) -> str | None:
    """The first word a tokenizer cannot take (not a string, or invalid Unicode), named by example and position."""
    for row, words in enumerate(words_batch):
        for index, word in enumerate(words):
            problem = invalid_text(word) if isinstance(word, str) else f"not a string but {type(word).__name__}"
            if problem:
                return f"example {row}, word {index} ({word!r}): {problem}"
    return None


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    value: int,
    pad_to_multiple_of: int | None = None,
    length: int | None = None,
    side: str = "right",
) -> torch.Tensor:
    """Pad integer sequences to a ``[B, T]`` long tensor: ``T`` = ``length`` or the longest rounded up to
    ``pad_to_multiple_of``; on the tokenizer's padding ``side``."""
    if length is None:
        length = max((len(s) for s in sequences), default=0)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if len(sequence):
            values = torch.as_tensor(list(sequence), dtype=torch.long)
            if side == "left":
                out[row, length - len(sequence) :] = values
            else:
                out[row, : len(sequence)] = values
    return out


def marker_order(subject: tuple[int, int], obj: tuple[int, int], num_words: int) -> list[tuple[int, str]]:
    """Where the four markers go: a list of ``(boundary, marker)`` in output order, ``boundary`` = index of the
    word the marker precedes (``num_words`` = after the last word).

    At one boundary, closing markers come before opening markers (adjacent entities read ``</s> <o>``); the
    longer entity opens first and the later-opened one closes first, so nested spans stay well nested; for
    identical spans the subject is the outer one (``<s> <o> ... </o> </s>``). Crossing spans keep this rule
    (``<s> a <o> b </s> c </o>``).
    """
    for name, (start, end) in (("subject", subject), ("object", obj)):
        if not 0 <= start < end <= num_words:
            raise ValueError(f"{name} span ({start}, {end}) outside the {num_words} words")
    events = []
    for rank, (start, end), (open_marker, close_marker) in (
        (0, subject, ("<s>", "</s>")),
        (1, obj, ("<o>", "</o>")),
    ):
        # sort key: boundary, closing (0) before opening (1), then the nesting rules above
        events.append(((end, 0, -start, -rank), end, close_marker))
        events.append(((start, 1, -end, rank), start, open_marker))
    return [(boundary, marker) for _, boundary, marker in sorted(events)]


class RAPProcessor(ProcessorMixin):
    r"""Tokenizer + image processor for RAP models.

    Args:
        image_processor: a transformers image processor (see `default_image_processor`).
        tokenizer: a fast tokenizer; the entity markers are added to it as special tokens (resize the model's
            embeddings to ``len(processor.tokenizer)``).
        max_length: maximum number of tokens, special tokens and markers included.
        num_crops: number of object-crop slots K (``pixel_values`` has ``1+K`` slots).
        entity_markers: the four marker strings (subject start/end, object start/end).
        grounding_model: where the crops of a picture without crops come from at prediction (saved with the
            processor, so a model predicts as it was trained): ``"vision-encoder"`` (regions of the model's own vision
            encoder), a detector's Hub id or folder, or ``"none"``. The pipeline builds the grounder from it; a bare
            processor grounds only once `set_grounder` gave it one (``processor.grounder``, not saved).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_length: int = 128,
        num_crops: int = 3,
        entity_markers: Sequence[str] = DEFAULT_ENTITY_MARKERS,
        grounding_model: str = DEFAULT_GROUNDING_MODEL,
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        self.max_length = int(max_length)
        self.num_crops = int(num_crops)
        self.grounding_model = str(grounding_model) if grounding_model is not None else "none"
        self.grounder = None
        self.entity_markers = list(entity_markers)
        if len(self.entity_markers) != 4 or len(set(self.entity_markers)) != 4:
            raise ValueError(f"entity_markers must be 4 distinct strings, got {entity_markers}")
        self._image_shape: tuple[int, int, int] | None = None
        self.add_entity_markers()

    # ------------------------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_text_model(
        cls, text_model_name_or_path: str | os.PathLike, image_size: int = 224, image_processor=None, **kwargs
    ) -> RAPProcessor:
        """Processor with the tokenizer of a text backbone and `image_processor` (the vision encoder's own; default:
        the ResNet-style one at `image_size`)."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        return cls(image_processor or default_image_processor(image_size), tokenizer, **kwargs)

    def add_entity_markers(self) -> int:
        """Add the entity markers as special tokens (idempotent). Returns how many tokens were new."""
        named = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
        reserved = {str(getattr(self.tokenizer, name, None)) for name in named}
        clashes = [m for m in self.entity_markers if m in reserved]
        if clashes:
            raise ValueError(
                f"entity markers {clashes} are already special tokens of this tokenizer (e.g. RoBERTa's <s>); "
                "pass entity_markers=('<subj>', '</subj>', '<obj>', '</obj>') or similar"
            )
        vocab = self.tokenizer.get_vocab()
        new = [AddedToken(m, special=True, normalized=False) for m in self.entity_markers if m not in vocab]
        if not new:
            return 0
        return self.tokenizer.add_tokens(new, special_tokens=True)

    def set_grounder(self, grounder) -> RAPProcessor:
        """Sets (or, with ``None``, removes) the grounder that gives a picture without crops its crops in
        `process_images`: any object with ``ground(images, texts) -> [[(x0, y0, x1, y1), ...], ...]``, such as
        ``grounding.load_grounder(processor.grounding_model, vision_model=model, image_processor=...)``. It is not
        saved (`grounding_model` is). Returns the processor."""
        if grounder is not None and not callable(getattr(grounder, "ground", None)):
            raise TypeError(f"a grounder needs a ground(images, texts) method, got {type(grounder).__name__}")
        self.grounder = grounder
        return self

    def to_dict(self) -> dict[str, Any]:
        """`ProcessorMixin.to_dict` without the grounder (it holds a model: neither copied nor saved)."""
        grounder = self.__dict__.pop("grounder", None)
        try:
            return super().to_dict()
        finally:
            self.__dict__["grounder"] = grounder

    @property
    def marker_ids(self) -> dict[str, int]:
        """Token id of each entity marker, e.g. ``{"<s>": 30522, "</s>": 30523, "<o>": 30524, "</o>": 30525}``."""
        return dict(zip(self.entity_markers, self.tokenizer.convert_tokens_to_ids(self.entity_markers)))

    @property
    def vocab_size(self) -> int:
        """Size the model's word embeddings must have (markers included)."""
        return len(self.tokenizer)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "token_type_ids",
            "word_start_mask",
            "entity_positions",
            "pixel_values",
            "visual_features",
            "image_mask",
        ]

    # ------------------------------------------------------------------------------------------------------------
    # text
    # ------------------------------------------------------------------------------------------------------------

    def encode_words(
        self, words_batch: Sequence[Sequence[str]], max_length: int | None = None, add_special_tokens: bool = True
    ):
        """The tokenizer's encoding of pre-split words (`is_split_into_words`; special tokens and truncation at
        `max_length` by the tokenizer). A word that tokenizes to nothing (e.g. a zero-width character) is encoded as
        the unknown token, so that every word keeps a first sub-token (and its label)."""
        words_batch = [list(words) for words in words_batch]
        kwargs = dict(
            is_split_into_words=True,
            add_special_tokens=add_special_tokens,
            truncation=max_length is not None,
            max_length=max_length,
        )
        try:
            encoding = self.tokenizer(words_batch, **kwargs)
        except TypeError:  # the tokenizer's message names neither the example nor the word
            problem = invalid_word(words_batch)
            if problem:
                raise ValueError(problem) from None
            raise
        empty = [self._empty_words(encoding, row, len(words)) for row, words in enumerate(words_batch)]
        if any(empty):
            words_batch = [
                [self.tokenizer.unk_token if i in gone else word for i, word in enumerate(words)]
                for words, gone in zip(words_batch, empty)
            ]
            encoding = self.tokenizer(words_batch, **kwargs)
        return encoding

    @staticmethod
    def _empty_words(encoding, row: int, num_words: int) -> set[int]:
        """Words of `row` that produced no sub-token (words after a truncation cut are cut, not empty)."""
        seen = {w for w in encoding.word_ids(row) if w is not None}
        end = max(seen, default=-1) + 1 if encoding.encodings[row].overflowing else num_words
        return set(range(end)) - seen

    def encode_ner(
        self,
        tokens: Sequence[Sequence[str]],
        ner_tags: Sequence[Sequence[int]] | None = None,
        max_length: int | None = None,
    ) -> dict[str, list]:
        """Unpadded NER encoding (lists per example): ``input_ids``, ``attention_mask``, ``token_type_ids``,
        ``word_start_mask``, ``word_ids`` and, with tags, ``labels`` (tag id on first sub-tokens, -100 elsewhere).
        Words that do not fit into ``max_length`` are dropped by the tokenizer (``word_ids`` shows which were kept;
        a warning counts them)."""
        max_length = max_length or self.max_length
        if ner_tags is not None and len(ner_tags) != len(tokens):
            raise ValueError(f"{len(tokens)} token lists but {len(ner_tags)} tag lists")
        for index, tags in enumerate(ner_tags or []):
            if len(tags) != len(tokens[index]):
                raise ValueError(f"example {index}: {len(tokens[index])} words but {len(tags)} tags")
            if tags and not all(isinstance(t, (int, np.integer)) for t in tags):
                raise TypeError(f"example {index}: ner_tags must be label ids (ints), got {list(tags)[:3]}...")
        encoding = self.encode_words(tokens, max_length)
        out: dict[str, list] = {
            k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "word_start_mask", "word_ids")
        }
        if ner_tags is not None:
            out["labels"] = []
        cut_examples = cut_words = 0
        for index, words in enumerate(tokens):
            ids, word_ids = encoding["input_ids"][index], encoding.word_ids(index)
            first = [int(w is not None and (i == 0 or word_ids[i - 1] != w)) for i, w in enumerate(word_ids)]
            kept = sum(first)
            if kept < len(words):
                cut_examples, cut_words = cut_examples + 1, cut_words + len(words) - kept
            out["input_ids"].append(list(ids))
            out["attention_mask"].append([1] * len(ids))
            out["token_type_ids"].append([0] * len(ids))
            out["word_start_mask"].append(first)
            out["word_ids"].append(list(word_ids))
            if ner_tags is not None:
                tags = ner_tags[index]
                out["labels"].append([int(tags[w]) if f else IGNORE_INDEX for w, f in zip(word_ids, first)])
        if cut_examples:
            logger.warning(
                f"NER: {cut_examples} of {len(tokens)} texts longer than max_length={max_length} were "
                f"truncated; {cut_words} words lost (their predictions are 'O')"
            )
        return out

    def _marked_words(self, words: Sequence[str], subject: tuple[int, int], obj: tuple[int, int]) -> list[str]:
        """The words with the four entity markers inserted as words of their own (see `marker_order`)."""
        marker = dict(zip(DEFAULT_ENTITY_MARKERS, self.entity_markers))
        placements = marker_order(subject, obj, len(words))
        marked, cursor = [], 0
        for boundary in range(len(words) + 1):
            while cursor < len(placements) and placements[cursor][0] == boundary:
                marked.append(marker[placements[cursor][1]])
                cursor += 1
            if boundary < len(words):
                marked.append(words[boundary])
        return marked

    @staticmethod
    def _window(lengths: Sequence[int], budget: int, markers: Sequence[int], entities: Sequence[range]) -> list[int]:
        """Words to keep (indices into the marked words): all when they fit; else the head when it holds every
        marker, or a contiguous window grown around the entities. When the entities' region exceeds the budget: the
        markers, each entity's words from its start, then the context nearest a marker (no longer contiguous)."""
        if sum(lengths) <= budget:
            return list(range(len(lengths)))
        first, last = min(markers), max(markers)
        if sum(lengths[first : last + 1]) <= budget:
            start, end = (0, 0) if sum(lengths[: last + 1]) <= budget else (first, last + 1)
            used = sum(lengths[start:end])
            grew = True
            while grew:  # alternately to the right and to the left, while the next word fits
                grew = False
                for side in (1, -1) if start == 0 else (-1, 1):
                    if side == 1 and end < len(lengths) and used + lengths[end] <= budget:
                        used, end, grew = used + lengths[end], end + 1, True
                    elif side == -1 and start > 0 and used + lengths[start - 1] <= budget:
                        used, start, grew = used + lengths[start - 1], start - 1, True
            return list(range(start, end))
        depth = {i: d for entity in entities for d, i in enumerate(entity)}  # the first words of each entity first
        nearest = {i: min(abs(i - m) for m in markers) for i in range(len(lengths))}
        keep, used = set(markers), sum(lengths[i] for i in markers)
        for i in sorted(set(range(len(lengths))) - keep, key=lambda i: (i not in depth, depth.get(i, nearest[i]), i)):
            if used + lengths[i] <= budget:  # entity words, then the context nearest a marker
                keep.add(i)
                used += lengths[i]
        return sorted(keep)

    def encode_re(
        self,
        tokens: Sequence[Sequence[str]],
        subject_spans: Sequence[Sequence[int]],
        object_spans: Sequence[Sequence[int]],
        relations: Sequence[int] | None = None,
        max_length: int | None = None,
    ) -> dict[str, list]:
        """Unpadded RE encoding with entity markers: ``input_ids``, ``attention_mask``, ``token_type_ids``,
        ``entity_positions`` ([index of <s>, index of <o>]) and, with relations, ``labels``. Texts longer than
        ``max_length`` keep a window of words that holds both entities (the tokenizer's truncation could cut them)."""
        max_length = max_length or self.max_length
        budget = max_length - self.tokenizer.num_special_tokens_to_add()
        if budget < 6:
            raise ValueError(
                f"max_length={max_length} has no room for the 4 entity markers and one token of each "
                f"entity (needs at least {self.tokenizer.num_special_tokens_to_add() + 6})"
            )
        if not len(tokens) == len(subject_spans) == len(object_spans):
            raise ValueError("tokens, subject_spans and object_spans must have the same length")
        marked = []
        for index, (words, subject, obj) in enumerate(zip(tokens, subject_spans, object_spans)):
            try:
                marked.append(self._marked_words(list(words), tuple(map(int, subject)), tuple(map(int, obj))))
            except ValueError as error:
                raise ValueError(f"example {index}: {error}") from None
        pieces = self.encode_words(marked, add_special_tokens=False)
        windows, cut = [], 0
        for index, words in enumerate(marked):
            lengths = [0] * len(words)
            for word in pieces.word_ids(index):
                lengths[word] += 1
            markers = [i for i, word in enumerate(words) if word in self.entity_markers]
            opened = {words[i]: i for i in markers}
            names = self.entity_markers
            entities = [range(opened[names[0]] + 1, opened[names[1]]), range(opened[names[2]] + 1, opened[names[3]])]
            keep = self._window(lengths, budget, markers, entities)
            cut += any(i not in keep for entity in entities for i in entity)
            windows.append([words[i] for i in keep])
        if cut:
            logger.warning(
                f"RE: in {cut} of {len(tokens)} texts the entities alone exceed max_length={max_length}; "
                "their ends were cut"
            )
        encoding = self.encode_words(windows)
        subject_id, object_id = self.tokenizer.convert_tokens_to_ids([self.entity_markers[0], self.entity_markers[2]])
        out = {"input_ids": [list(ids) for ids in encoding["input_ids"]]}
        out["attention_mask"] = [[1] * len(ids) for ids in out["input_ids"]]
        out["token_type_ids"] = [[0] * len(ids) for ids in out["input_ids"]]
        out["entity_positions"] = [[ids.index(subject_id), ids.index(object_id)] for ids in out["input_ids"]]
        if relations is not None:
            out["labels"] = [int(r) for r in relations]
        return out

    # ------------------------------------------------------------------------------------------------------------
    # images
    # ------------------------------------------------------------------------------------------------------------

    def _image_chw(self) -> tuple[int, int, int]:
        """Shape of one processed image (found once by processing a blank image)."""
        if self._image_shape is None:
            blank = Image.new("RGB", (32, 32))
            self._image_shape = tuple(self.image_processor(blank, return_tensors="pt")["pixel_values"].shape[1:])
        return self._image_shape

    def process_images(
        self,
        images: Sequence[Any] | None,
        crops: Sequence[Sequence[Any] | None] | None = None,
        num_crops: int | None = None,
        texts: Sequence[str | None] | None = None,
        grounder: Any = _OWN_GROUNDER,
    ) -> dict[str, torch.Tensor]:
        """``pixel_values [B, 1+K, 3, H, W]`` (slot 0 image, slots 1..K crops, empty slots zero) and
        ``image_mask [B, 1+K]``. Images and crops may be PIL images, paths, ``datasets`` dicts or ``None``.

        A row with a picture and no crops gets the crops of `grounder` (default: ``self.grounder``; ``None``: none),
        which may read the row's text (`texts`, one per row); crops given for a row always win."""
        num_crops = self.num_crops if num_crops is None else num_crops
        grounder = self.grounder if grounder is _OWN_GROUNDER else grounder
        batch = len(images) if images is not None else len(crops or [])
        images = list(images) if images is not None else [None] * batch
        crops = list(crops) if crops is not None else [None] * batch
        texts = list(texts) if texts is not None else [None] * batch
        if len(crops) != batch or len(texts) != batch:
            raise ValueError(f"{batch} images but {len(crops)} crop lists and {len(texts)} texts")
        loaded_images, slots, to_ground = [], [], []
        for row in range(batch):
            row_images = [images[row]] + list(crops[row] or [])[:num_crops]
            for slot, value in enumerate(row_images):
                image = load_image(value)
                if image is not None:
                    loaded_images.append(image)
                    slots.append((row, slot))
                    if slot == 0 and len(row_images) == 1 and grounder is not None and num_crops > 0:
                        to_ground.append((row, image))
        if to_ground:
            found = grounder.ground([image for _, image in to_ground], [texts[row] for row, _ in to_ground])
            for (row, image), boxes in zip(to_ground, found):
                for slot, box in enumerate(list(boxes)[:num_crops], start=1):
                    loaded_images.append(image.crop(tuple(int(v) for v in box)))
                    slots.append((row, slot))
        pixel_values = torch.zeros((batch, 1 + num_crops, *self._image_chw()), dtype=torch.float32)
        image_mask = torch.zeros((batch, 1 + num_crops), dtype=torch.long)
        if loaded_images:
            processed = self.image_processor(loaded_images, return_tensors="pt")["pixel_values"]
            for (row, slot), values in zip(slots, processed):
                pixel_values[row, slot] = values
                image_mask[row, slot] = 1
        return {"pixel_values": pixel_values, "image_mask": image_mask}

    # ------------------------------------------------------------------------------------------------------------
    # main entry points
    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        tokens: Sequence[Sequence[str]] | None = None,
        images: Sequence[Any] | None = None,
        crops: Sequence[Sequence[Any]] | None = None,
        ner_tags: Sequence[Sequence[int]] | None = None,
        subject_spans: Sequence[Sequence[int]] | None = None,
        object_spans: Sequence[Sequence[int]] | None = None,
        relations: Sequence[int] | None = None,
        max_length: int | None = None,
        return_images: bool = True,
        pad_to_multiple_of: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Encode a batch of pre-tokenized examples (see module docstring and ``docs/interfaces.md``).

        NER when ``subject_spans`` is ``None``, RE otherwise. ``images``/``crops`` may be omitted (text only,
        or pass ``return_images=False``). A single example (a list of strings) is accepted as a batch of one.
        """
        if tokens is None:
            raise ValueError("tokens (a batch of word lists) is required")
        if tokens and isinstance(tokens[0], str):
            tokens = [tokens]
            ner_tags = [ner_tags] if ner_tags is not None else None
            subject_spans = [subject_spans] if subject_spans is not None else None
            object_spans = [object_spans] if object_spans is not None else None
            relations = [relations] if relations is not None and not isinstance(relations, (list, tuple)) else relations
            images = [images] if images is not None and not isinstance(images, (list, tuple)) else images
            crops = [crops] if crops is not None and (not crops or not isinstance(crops[0], (list, tuple))) else crops
        if subject_spans is None:
            encoded = self.encode_ner(tokens, ner_tags, max_length)
        else:
            if object_spans is None:
                raise ValueError("object_spans is required with subject_spans")
            encoded = self.encode_re(tokens, subject_spans, object_spans, relations, max_length)
        data = self.pad(encoded, pad_to_multiple_of=pad_to_multiple_of)
        if return_images and (images is not None or crops is not None):
            data.update(self.process_images(images, crops, texts=[" ".join(words) for words in tokens]))
        return BatchFeature(data=data)

    def pad(self, encoded: dict[str, list], pad_to_multiple_of: int | None = None) -> dict[str, Any]:
        """Pad per-example lists (as returned by `encode_ner`/`encode_re`) into tensors; ``word_ids`` stays a
        python list."""
        return pad_batch(
            [dict(zip(encoded, values)) for values in zip(*encoded.values())],
            tokenizer=self.tokenizer,
            pad_to_multiple_of=pad_to_multiple_of,
            keep_word_ids=True,
        )

    def preprocess(
        self,
        examples: dict[str, list],
        task: str | None = None,
        max_length: int | None = None,
        with_images: bool = False,
    ) -> dict[str, list]:
        """``datasets.map(batched=True)`` glue for the rap_hf builders' columns.

        NER uses ``tokens`` (+ ``ner_tags``), RE ``tokens``, ``subject``, ``object`` (+ ``relation``). The output
        is unpadded (pad with `RAPDataCollator`). Images are left to the collator unless ``with_images``
        (``pixel_values``/``image_mask`` per example: large, only for small in-memory datasets).
        """
        task = task or ("re" if "subject" in examples else "ner")
        if task == "ner":
            out = self.encode_ner(examples["tokens"], examples.get("ner_tags"), max_length)
        elif task == "re":
            subject_spans = [(e["start"], e["end"]) for e in examples["subject"]]
            object_spans = [(e["start"], e["end"]) for e in examples["object"]]
            out = self.encode_re(examples["tokens"], subject_spans, object_spans, examples.get("relation"), max_length)
        else:
            raise ValueError(f"task must be 'ner' or 're', got {task!r}")
        if with_images:
            texts = [" ".join(words) for words in examples["tokens"]]
            visual = self.process_images(examples.get("image"), examples.get("crops"), texts=texts)
            out["pixel_values"] = [values.numpy() for values in visual["pixel_values"]]
            out["image_mask"] = visual["image_mask"].tolist()
        return out

    # ------------------------------------------------------------------------------------------------------------
    # mapping predictions back to words
    # ------------------------------------------------------------------------------------------------------------

    def post_process_ner(
        self,
        predictions: Any,
        word_ids: Sequence[Sequence[int | None]],
        num_words: Sequence[int] | None = None,
        id2label: dict[int, str] | None = None,
        fill: int = 0,
    ) -> list[list]:
        """Per-word predictions from the model's word-level ``predictions [B, W]`` (one value per kept word, in
        order, -100 padded); words cut by truncation get ``fill`` (``O``). Labels are names when ``id2label``."""
        if isinstance(predictions, torch.Tensor):
            predictions = predictions.tolist()
        results = []
        for row, ids in enumerate(word_ids):
            kept = sorted({w for w in ids if w is not None})
            total = num_words[row] if num_words is not None else (kept[-1] + 1 if kept else 0)
            words = [fill] * total
            for word, value in zip(kept, predictions[row]):
                words[word] = int(value)
            results.append([id2label[v] for v in words] if id2label else words)
        return results


def pad_batch(
    examples: Sequence[dict[str, Any]],
    tokenizer: Any = None,
    pad_token_id: int = 0,
    pad_to_multiple_of: int | None = None,
    keep_word_ids: bool = False,
) -> dict[str, Any]:
    """Pad/stack a list of single encoded examples into model inputs.

    ``input_ids``, ``attention_mask`` and ``token_type_ids`` are padded by ``tokenizer.pad`` (its pad id and side;
    without a tokenizer: right, with ``pad_token_id``); ``word_start_mask`` (0) and sequence ``labels`` (-100) to the
    same length and side. ``entity_positions``, ``pixel_values``, ``visual_features`` and ``image_mask`` are stacked;
    other keys are dropped except ``word_ids`` (kept as a python list when ``keep_word_ids``).
    """
    if not examples:
        return {}
    first = examples[0]
    side = getattr(tokenizer, "padding_side", "right")
    if tokenizer is not None:
        text = [{key: list(e[key]) for key in _TOKENIZER_FIELDS if key in first} for e in examples]
        batch: dict[str, Any] = dict(tokenizer.pad(text, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt"))
    else:
        batch = {
            key: pad_sequences([e[key] for e in examples], pad_token_id if value is None else value, pad_to_multiple_of)
            for key, value in _SEQUENCE_FIELDS.items()
            if key in first and key in _TOKENIZER_FIELDS
        }
    length = batch["input_ids"].shape[1] if "input_ids" in batch else None
    if "word_start_mask" in first:
        batch["word_start_mask"] = pad_sequences(
            [e["word_start_mask"] for e in examples], 0, pad_to_multiple_of, length, side
        )
    if "labels" in first:
        if isinstance(first["labels"], (int, np.integer)) or (
            isinstance(first["labels"], torch.Tensor) and first["labels"].dim() == 0
        ):
            batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        else:
            batch["labels"] = pad_sequences(
                [e["labels"] for e in examples], IGNORE_INDEX, pad_to_multiple_of, length, side
            )
    if "entity_positions" in first:
        positions = torch.tensor([list(e["entity_positions"]) for e in examples], dtype=torch.long)
        if side == "left":  # the markers moved right by the padding put in front
            positions += torch.tensor([length - len(e["input_ids"]) for e in examples])[:, None]
        batch["entity_positions"] = positions
    for key, dtype in (("pixel_values", torch.float32), ("visual_features", torch.float32), ("image_mask", torch.long)):
        if key in first:
            batch[key] = torch.stack([torch.as_tensor(np.asarray(e[key]), dtype=dtype) for e in examples])
    if keep_word_ids and "word_ids" in first:
        batch["word_ids"] = [list(e["word_ids"]) for e in examples]
    return batch


@dataclass
class RAPDataCollator:
    """Dynamic padding for lists of examples encoded by `RAPProcessor.preprocess` (or single `encode_*` rows).

    Visual inputs, in order of preference: ``visual_features`` (from the feature cache) or ``pixel_values``
    already in the examples are stacked; otherwise, when the examples carry ``image``/``crops`` columns, the
    images are processed on the fly (needs ``processor``). ``image_mask`` comes along.

    Args:
        processor: the `RAPProcessor` (pad id, image processing).
        pad_token_id: used when no processor is given.
        pad_to_multiple_of: round the padded length up (e.g. 8 for tensor cores).
        return_word_ids: keep ``word_ids`` (python lists) in the batch, for mapping NER predictions back.
        num_crops: crop slots when processing images on the fly (default: the processor's).
    """

    processor: RAPProcessor | None = None
    pad_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    return_word_ids: bool = False
    num_crops: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer if self.processor is not None else None
        batch = pad_batch(
            features, tokenizer, self.pad_token_id or 0, self.pad_to_multiple_of, keep_word_ids=self.return_word_ids
        )
        first = features[0]
        has_visual = "visual_features" in first or "pixel_values" in first
        if not has_visual and ("image" in first or "crops" in first):
            if self.processor is None:
                raise ValueError("RAPDataCollator needs a processor to turn image/crops columns into pixel_values")
            texts = [" ".join(f["tokens"]) if f.get("tokens") else None for f in features]
            batch.update(
                self.processor.process_images(
                    [f.get("image") for f in features], [f.get("crops") for f in features], self.num_crops, texts
                )
            )
        return batch


RAPProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "RAPProcessor",
    "RAPDataCollator",
    "default_image_processor",
    "load_image",
    "marker_order",
    "pad_batch",
    "to_rgb",
]
