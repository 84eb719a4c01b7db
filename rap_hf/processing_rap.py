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
  ``image_mask [B, 1+K]`` (1 = real picture, 0 = empty slot).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Sequence

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
    """Open an image given as PIL image, path, ``datasets`` dict (``{"bytes", "path"}``), array or ``None``.

    An array is ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` of a type ``Image.fromarray`` reads
    (``uint8``...) or of floats in [0, 1] (scaled to 0..255, as ``torchvision``'s ``ToTensor`` makes them); other
    arrays raise ``ValueError`` saying what was found.
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, (str, os.PathLike)):
        image = Image.open(value)
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            return None
    elif isinstance(value, np.ndarray):
        image = _array_image(value)
    else:
        raise TypeError(f"cannot read an image from a {type(value).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_image(array: np.ndarray) -> Image.Image:
    """``Image.fromarray`` for the arrays it refuses: floats (in [0, 1], scaled to 0..255) and ``[H, W, 1]``."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if np.issubdtype(array.dtype, np.floating):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (0 <= low and high <= 1):  # NaN fails both comparisons
            raise ValueError(f"a float image array must hold values in [0, 1], got {array.dtype} in [{low}, {high}]")
        array = np.round(array * 255).astype(np.uint8)
    try:
        return Image.fromarray(array)
    except TypeError as error:  # PIL's message names neither the shape nor what would work
        raise ValueError(
            f"cannot read an image from a {array.dtype} array of shape {array.shape} ({error}); use [H, W] or "
            "[H, W, 3] with uint8 values in 0..255 or floats in [0, 1]"
        ) from None


def pad_sequences(
    sequences: Sequence[Sequence[int]], value: int, pad_to_multiple_of: int | None = None
) -> torch.Tensor:
    """Right-pad integer sequences to a ``[B, T]`` long tensor (``T`` rounded up to ``pad_to_multiple_of``)."""
    length = max((len(s) for s in sequences), default=0)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if len(sequence):
            out[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
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
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        max_length: int = 128,
        num_crops: int = 3,
        entity_markers: Sequence[str] = DEFAULT_ENTITY_MARKERS,
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        self.max_length = int(max_length)
        self.num_crops = int(num_crops)
        self.entity_markers = list(entity_markers)
        if len(self.entity_markers) != 4 or len(set(self.entity_markers)) != 4:
            raise ValueError(f"entity_markers must be 4 distinct strings, got {entity_markers}")
        self._template: tuple[list[int], list[int]] | None = None
        self._image_shape: tuple[int, int, int] | None = None
        self.add_entity_markers()

    # ------------------------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_text_model(
        cls, text_model_name_or_path: str | os.PathLike, image_size: int = 224, image_processor=None, **kwargs
    ) -> "RAPProcessor":
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
        return ["input_ids", "attention_mask", "token_type_ids", "word_start_mask", "entity_positions",
                "pixel_values", "visual_features", "image_mask"]  # fmt: skip

    # ------------------------------------------------------------------------------------------------------------
    # text
    # ------------------------------------------------------------------------------------------------------------

    def _special_template(self) -> tuple[list[int], list[int]]:
        """Ids the tokenizer puts before and after a single sequence (``[CLS]``/``[SEP]``, ``<s>``/``</s>``...)."""
        if self._template is None:
            encoding = self.tokenizer(["x"], is_split_into_words=True, add_special_tokens=True)
            ids, word_ids = encoding["input_ids"], encoding.word_ids()
            first = word_ids.index(0)
            last = len(word_ids) - 1 - word_ids[::-1].index(0)
            self._template = (ids[:first], ids[last + 1 :])
        return self._template

    def _flat_pieces(self, words_batch: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int]]]:
        """Per example: the sub-token ids of all words and ``starts`` (``starts[w]`` = index of word ``w``'s first
        sub-token, plus a final end offset). A word that tokenizes to nothing (e.g. a zero-width character)
        becomes the unknown token, so every word keeps a first sub-token (and its label)."""
        unk = [self.tokenizer.unk_token_id] if self.tokenizer.unk_token_id is not None else []
        words_batch = [list(words) for words in words_batch]
        non_empty = [i for i, words in enumerate(words_batch) if words]
        result: list[tuple[list[int], list[int]]] = [([], [0]) for _ in words_batch]
        if not non_empty:
            return result
        encoding = self.tokenizer(
            [words_batch[i] for i in non_empty], is_split_into_words=True, add_special_tokens=False
        )
        all_ids = encoding["input_ids"]
        for row, index in enumerate(non_empty):
            ids: list[int] = []
            starts: list[int] = []
            next_word = 0
            for token_id, word in zip(all_ids[row], encoding.word_ids(row)):
                if word is None:
                    continue
                while next_word <= word:  # opens `word`, and fills any empty word skipped before it
                    starts.append(len(ids))
                    if next_word < word:
                        ids.extend(unk)
                    next_word += 1
                ids.append(token_id)
            while next_word < len(words_batch[index]):  # empty words at the end
                starts.append(len(ids))
                ids.extend(unk)
                next_word += 1
            starts.append(len(ids))
            result[index] = (ids, starts)
        return result

    def word_pieces(self, words_batch: Sequence[Sequence[str]]) -> list[list[list[int]]]:
        """Sub-token ids per word (see `_flat_pieces`; empty words become the unknown token)."""
        return [[ids[a:b] for a, b in zip(starts, starts[1:])] for ids, starts in self._flat_pieces(words_batch)]

    def _wrap(self, ids: list[int], word_ids: list[int | None]) -> tuple[list[int], list[int | None]]:
        prefix, suffix = self._special_template()
        return prefix + ids + suffix, [None] * len(prefix) + word_ids + [None] * len(suffix)

    def _budget(self, max_length: int | None, extra: int = 0) -> int:
        prefix, suffix = self._special_template()
        budget = (max_length or self.max_length) - len(prefix) - len(suffix)
        if budget < 1 + extra:
            raise ValueError(f"max_length={max_length or self.max_length} leaves no room for text")
        return budget

    def encode_ner(
        self,
        tokens: Sequence[Sequence[str]],
        ner_tags: Sequence[Sequence[int]] | None = None,
        max_length: int | None = None,
    ) -> dict[str, list]:
        """Unpadded NER encoding (lists per example): ``input_ids``, ``attention_mask``, ``token_type_ids``,
        ``word_start_mask``, ``word_ids`` and, with tags, ``labels`` (tag id on first sub-tokens, -100 elsewhere).
        Words that do not fit into ``max_length`` are dropped (``word_ids`` shows which words were kept)."""
        budget = self._budget(max_length)
        if ner_tags is not None and len(ner_tags) != len(tokens):
            raise ValueError(f"{len(tokens)} token lists but {len(ner_tags)} tag lists")
        out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "word_start_mask",
                                                 "word_ids")}  # fmt: skip
        if ner_tags is not None:
            out["labels"] = []
        for index, (ids, starts) in enumerate(self._flat_pieces(tokens)):
            num_words = len(starts) - 1
            tags = None
            if ner_tags is not None:
                tags = list(ner_tags[index])
                if len(tags) != num_words:
                    raise ValueError(f"example {index}: {num_words} words but {len(tags)} tags")
                if tags and not all(isinstance(t, (int, np.integer)) for t in tags):
                    raise TypeError(f"example {index}: ner_tags must be label ids (ints), got {tags[:3]}...")
            word_ids: list[int | None] = []
            for word in range(num_words):
                word_ids.extend([word] * (starts[word + 1] - starts[word]))
            if len(ids) > budget:
                logger.warning_once("NER input longer than max_length was truncated; cut words get no label")
                ids, word_ids = ids[:budget], word_ids[:budget]
            ids, word_ids = self._wrap(ids, word_ids)
            first = [int(w is not None and (i == 0 or word_ids[i - 1] != w)) for i, w in enumerate(word_ids)]
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["token_type_ids"].append([0] * len(ids))
            out["word_start_mask"].append(first)
            out["word_ids"].append(word_ids)
            if tags is not None:
                out["labels"].append([int(tags[w]) if f else IGNORE_INDEX for w, f in zip(word_ids, first)])
        return out

    def _insert_markers(
        self, ids: list[int], starts: list[int], subject: tuple[int, int], obj: tuple[int, int], marker_ids: list[int]
    ) -> tuple[list[int], dict[str, int]]:
        """Sub-token ids with the four markers inserted (see `marker_order`) and the markers' positions."""
        marker_id = dict(zip(DEFAULT_ENTITY_MARKERS, marker_ids))
        out: list[int] = []
        positions: dict[str, int] = {}
        previous = 0
        for boundary, marker in marker_order(subject, obj, len(starts) - 1):
            out.extend(ids[previous : starts[boundary]])
            previous = starts[boundary]
            positions[marker] = len(out)
            out.append(marker_id[marker])
        out.extend(ids[previous:])
        return out, positions

    @staticmethod
    def _window(num_tokens: int, budget: int, positions: dict[str, int]) -> list[int]:
        """Indices to keep: a contiguous window holding every marker (the plain head when it already does);
        when the entities alone exceed the budget, all four markers, then the first sub-tokens of each entity,
        then the context nearest the markers (no longer contiguous; rare: entities longer than the window)."""
        if num_tokens <= budget:
            return list(range(num_tokens))
        first, last = min(positions.values()), max(positions.values())
        span = last - first + 1
        if span <= budget:
            if last < budget:
                start = 0
            else:  # centre the entities, clamped to the sequence
                start = min(max(first - (budget - span) // 2, last + 1 - budget), first, num_tokens - budget)
            return list(range(start, start + budget))
        marker_positions = sorted(positions.values())
        keep = set(marker_positions)
        spans = [(positions["<s>"], positions["</s>"]), (positions["<o>"], positions["</o>"])]

        def priority(i: int) -> tuple[int, int, int]:
            # entity tokens first, the beginning of each entity first; then context nearest any marker
            inside = [i - start for start, end in spans if start < i < end]
            if inside:
                return (0, min(inside), i)
            return (1, min(abs(i - p) for p in marker_positions), i)

        others = [i for i in range(num_tokens) if i not in keep]
        keep.update(sorted(others, key=priority)[: budget - len(keep)])
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
        ``entity_positions`` ([index of <s>, index of <o>]) and, with relations, ``labels``."""
        budget = self._budget(max_length, extra=3)
        if not len(tokens) == len(subject_spans) == len(object_spans):
            raise ValueError("tokens, subject_spans and object_spans must have the same length")
        out: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "entity_positions")}
        prefix_length = len(self._special_template()[0])
        marker_ids = self.tokenizer.convert_tokens_to_ids(self.entity_markers)
        for index, (ids, starts) in enumerate(self._flat_pieces(tokens)):
            subject = (int(subject_spans[index][0]), int(subject_spans[index][1]))
            obj = (int(object_spans[index][0]), int(object_spans[index][1]))
            try:
                ids, positions = self._insert_markers(ids, starts, subject, obj, marker_ids)
            except ValueError as error:
                raise ValueError(f"example {index}: {error}") from None
            keep = self._window(len(ids), budget, positions)
            new_index = {old: new for new, old in enumerate(keep)}
            ids, _ = self._wrap([ids[i] for i in keep], [None] * len(keep))
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["token_type_ids"].append([0] * len(ids))
            out["entity_positions"].append(
                [prefix_length + new_index[positions["<s>"]], prefix_length + new_index[positions["<o>"]]]
            )
        if relations is not None:
            out["labels"] = [int(r) for r in relations]
        return out

    # ------------------------------------------------------------------------------------------------------------
    # images
    # ------------------------------------------------------------------------------------------------------------

    def _image_chw(self) -> tuple[int, int, int]:
        """Shape of one processed picture (found once by processing a blank image)."""
        if self._image_shape is None:
            blank = Image.new("RGB", (32, 32))
            self._image_shape = tuple(self.image_processor(blank, return_tensors="pt")["pixel_values"].shape[1:])
        return self._image_shape

    def process_images(
        self,
        images: Sequence[Any] | None,
        crops: Sequence[Sequence[Any] | None] | None = None,
        num_crops: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``pixel_values [B, 1+K, 3, H, W]`` (slot 0 image, slots 1..K crops, empty slots zero) and
        ``image_mask [B, 1+K]``. Pictures may be PIL images, paths, ``datasets`` dicts or ``None``."""
        num_crops = self.num_crops if num_crops is None else num_crops
        batch = len(images) if images is not None else len(crops or [])
        images = list(images) if images is not None else [None] * batch
        crops = list(crops) if crops is not None else [None] * batch
        if len(crops) != batch:
            raise ValueError(f"{batch} images but {len(crops)} crop lists")
        pictures, slots = [], []
        for row in range(batch):
            row_pictures = [images[row]] + list(crops[row] or [])[:num_crops]
            for slot, value in enumerate(row_pictures):
                picture = load_image(value)
                if picture is not None:
                    pictures.append(picture)
                    slots.append((row, slot))
        pixel_values = torch.zeros((batch, 1 + num_crops, *self._image_chw()), dtype=torch.float32)
        image_mask = torch.zeros((batch, 1 + num_crops), dtype=torch.long)
        if pictures:
            processed = self.image_processor(pictures, return_tensors="pt")["pixel_values"]
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
            data.update(self.process_images(images, crops))
        return BatchFeature(data=data)

    def pad(self, encoded: dict[str, list], pad_to_multiple_of: int | None = None) -> dict[str, Any]:
        """Pad per-example lists (as returned by `encode_ner`/`encode_re`) into tensors; ``word_ids`` stays a
        python list."""
        return pad_batch(
            [dict(zip(encoded, values)) for values in zip(*encoded.values())],
            pad_token_id=self.tokenizer.pad_token_id or 0,
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
            visual = self.process_images(examples.get("image"), examples.get("crops"))
            out["pixel_values"] = [values.numpy() for values in visual["pixel_values"]]
            out["image_mask"] = visual["image_mask"].tolist()
        return out

    # ------------------------------------------------------------------------------------------------------------
    # mapping predictions back to words
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def token_to_word_labels(
        token_values: Sequence[int], word_ids: Sequence[int | None], num_words: int | None = None, fill: int = 0
    ) -> list[int]:
        """Word-level values read at each word's first sub-token; words cut by truncation get ``fill``."""
        num_words = num_words if num_words is not None else 1 + max((w for w in word_ids if w is not None), default=-1)
        values = [fill] * num_words
        previous = None
        for value, word in zip(token_values, word_ids):
            if word is not None and word != previous:
                values[word] = int(value)
            previous = word
        return values

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
    pad_token_id: int = 0,
    pad_to_multiple_of: int | None = None,
    keep_word_ids: bool = False,
) -> dict[str, Any]:
    """Pad/stack a list of single encoded examples into model inputs (right padding).

    Sequence fields are padded (``labels`` with -100 when they are sequences), ``entity_positions``,
    ``pixel_values``, ``visual_features`` and ``image_mask`` are stacked; other keys are dropped except
    ``word_ids`` (kept as a python list when ``keep_word_ids``).
    """
    if not examples:
        return {}
    first = examples[0]
    batch: dict[str, Any] = {}
    for key, value in _SEQUENCE_FIELDS.items():
        if key in first:
            batch[key] = pad_sequences(
                [e[key] for e in examples], pad_token_id if value is None else value, pad_to_multiple_of
            )
    if "labels" in first:
        if isinstance(first["labels"], (int, np.integer)) or (
            isinstance(first["labels"], torch.Tensor) and first["labels"].dim() == 0
        ):
            batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        else:
            batch["labels"] = pad_sequences([e["labels"] for e in examples], IGNORE_INDEX, pad_to_multiple_of)
    if "entity_positions" in first:
        batch["entity_positions"] = torch.tensor([list(e["entity_positions"]) for e in examples], dtype=torch.long)
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
    pictures are processed on the fly (needs ``processor``). ``image_mask`` comes along.

    Args:
        processor: the `RAPProcessor` (pad id, image processing).
        pad_token_id: used when no processor is given.
        pad_to_multiple_of: round the padded length up (e.g. 8 for tensor cores).
        return_word_ids: keep ``word_ids`` (python lists) in the batch, for mapping NER predictions back.
        num_crops: crop slots when processing pictures on the fly (default: the processor's).
    """

    processor: RAPProcessor | None = None
    pad_token_id: int | None = None
    pad_to_multiple_of: int | None = None
    return_word_ids: bool = False
    num_crops: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        pad_id = self.pad_token_id
        if pad_id is None:
            pad_id = (self.processor.tokenizer.pad_token_id or 0) if self.processor is not None else 0
        batch = pad_batch(features, pad_id, self.pad_to_multiple_of, keep_word_ids=self.return_word_ids)
        first = features[0]
        has_visual = "visual_features" in first or "pixel_values" in first
        if not has_visual and ("image" in first or "crops" in first):
            if self.processor is None:
                raise ValueError("RAPDataCollator needs a processor to turn image/crops columns into pixel_values")
            batch.update(
                self.processor.process_images(
                    [f.get("image") for f in features], [f.get("crops") for f in features], self.num_crops
                )
            )
        return batch


RAPProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["RAPProcessor", "RAPDataCollator", "default_image_processor", "load_image", "marker_order", "pad_batch"]
