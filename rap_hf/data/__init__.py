"""Datasets for RAP: Twitter-2015/2017 (MNER) and MNRE (MRE) builders, the bundled sample and the feature cache.

>>> from rap_hf.data import load_dataset
>>> sample = load_dataset("twitter2017")                         # bundled synthetic sample
>>> mnre = load_dataset("mnre", data_dir="data", text_only=True)  # a real release (HVPNeT layout)
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from .features import VisualFeatureCache, image_key, vision_fingerprint
from .mnre import MNRE, re_features, resolve_mnre_layout
from .parsing import (
    MNRE_RELATIONS,
    NER_LABELS,
    DataFormatError,
    RAPBuilderConfig,
    load_crop_dict,
    read_mnre_file,
    read_relation_names,
    read_twitter_file,
)
from .twitter import TWITTER_CORPORA, TwitterNER, ner_features, resolve_twitter_layout

logger = logging.getLogger(__name__)

SAMPLE_DIR: Path = Path(__file__).resolve().parent / "sample"
DATASET_NAMES: tuple[str, ...] = (*TWITTER_CORPORA, "mnre")
# Bump when parsing changes what a prepared dataset contains, so caches from older code are not reused.
_PREPARE_VERSION = "2"  # 2: embedded images hold their bytes, not a path


def _is_image_folder(root: str) -> bool:
    name = Path(root).name
    return name == "crops" or "_images" in name or "img_org" in root or "img_vg" in root


def _input_fingerprint(data_dir: Path, with_images: bool = True) -> str:
    """Hash of the corpus files' names, sizes and mtimes: a changed file (an image edited, replaced or corrupted
    after preparation included) re-prepares the data instead of serving a stale cache. Image folders are skipped
    for a text-only load, which never reads them."""
    digest = hashlib.sha256(_PREPARE_VERSION.encode())
    seen: set[str] = set()
    for root, dirs, files in os.walk(data_dir, followlinks=True):  # image folders are often links to another disk
        dirs.sort()
        real = os.path.realpath(root)
        if real in seen or (_is_image_folder(root) and not with_images):
            dirs.clear()  # a link cycle; or a text-only load: image folders not even listed, so it stays fast
            continue
        seen.add(real)
        for name in sorted(files):
            try:
                stat = os.stat(os.path.join(root, name))
                digest.update(f"{root}/{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            except OSError:  # a dangling link: the builder counts it as missing
                digest.update(f"{root}/{name}:unreadable".encode())
    return digest.hexdigest()[:16]


def get_builder(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    text_only: bool = False,
    repair_orphan_i: bool = False,
    cache_dir: str | os.PathLike | None = None,
    **config_kwargs: Any,
) -> datasets.GeneratorBasedBuilder:
    """The builder for ``name`` (``twitter2015``, ``twitter2017`` or ``mnre``); ``data_dir=None`` is the sample."""
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
    data_dir = Path(data_dir).expanduser().resolve() if data_dir is not None else SAMPLE_DIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} is not a directory")
    kwargs: dict[str, Any] = dict(
        data_dir=str(data_dir),
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        hash=_input_fingerprint(data_dir, with_images=not text_only),
        text_only=text_only,
        **config_kwargs,
    )
    if name == "mnre":
        if repair_orphan_i:
            raise ValueError("repair_orphan_i applies to the NER corpora only")
        return MNRE(**kwargs)
    return TwitterNER(config_name=name, repair_orphan_i=repair_orphan_i, **kwargs)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    text_only: bool = False,
    repair_orphan_i: bool = False,
    cache_dir: str | os.PathLike | None = None,
    return_builder: bool = False,
    **config_kwargs: Any,
) -> datasets.DatasetDict | tuple[datasets.DatasetDict, datasets.GeneratorBasedBuilder]:
    """Prepare (once, cached) and load a corpus as a ``DatasetDict`` with train/validation/test.

    Args:
        name: ``"twitter2015"``, ``"twitter2017"`` or ``"mnre"``.
        data_dir: folder in the HVPNeT/MKGformer layout (see ``docs/data.md``); ``None`` = bundled sample.
        text_only: skip images and crops (``image`` is ``None``, ``crops`` is ``[]``).
        repair_orphan_i: NER only: rewrite orphan ``I-X`` tags as ``B-X`` (kept as written by default).
        cache_dir: ``datasets`` cache folder (default: the ``datasets`` cache).
        return_builder: also return the builder, whose ``gap_counts`` holds the counted gaps per split.
        **config_kwargs: other ``RAPBuilderConfig`` fields (``max_crops``, ``embed_images``).
    """
    builder = get_builder(
        name, data_dir, text_only=text_only, repair_orphan_i=repair_orphan_i, cache_dir=cache_dir, **config_kwargs
    )
    builder.download_and_prepare()
    dataset_dict = builder.as_dataset()
    return (dataset_dict, builder) if return_builder else dataset_dict


__all__ = [
    "DATASET_NAMES",
    "MNRE",
    "MNRE_RELATIONS",
    "NER_LABELS",
    "SAMPLE_DIR",
    "DataFormatError",
    "RAPBuilderConfig",
    "TwitterNER",
    "VisualFeatureCache",
    "get_builder",
    "image_key",
    "load_crop_dict",
    "load_dataset",
    "ner_features",
    "re_features",
    "read_mnre_file",
    "read_relation_names",
    "read_twitter_file",
    "resolve_mnre_layout",
    "resolve_twitter_layout",
    "vision_fingerprint",
]
