"""Visual features computed once: a resumable, content-addressed cache of ``model.get_image_features`` outputs.

RAP freezes its vision encoder by default (``RAPConfig.freeze_vision_encoder``), so the pooled feature of every
image and crop can be computed once and reused for all epochs and runs::

    cache = VisualFeatureCache("feature-cache", model, processor)
    dataset = cache.attach(dataset)    # adds visual_features [1+K, C_v] and image_mask [1+K]
    collator = RAPDataCollator(processor)  # stacks visual_features instead of pixel_values

Each image is keyed by a hash of its file bytes (``image_key``), so identical images are computed once and
the cache does not depend on paths. The cache lives in ``<cache_dir>/<fingerprint>/``, where the fingerprint
(`vision_fingerprint`) covers the vision config, the vision weights and the image processor settings: a
different encoder gets a different folder. Features are written in shards while extraction runs, so an
interrupted run resumes where it stopped.

Every shard carries a SHA-256 checksum of its ordered key list and its tensor (in the safetensors metadata, written
with it). Reading a shard verifies it: a readable header, one float32 ``features`` tensor as wide as the cache's
feature size, one row per key, only finite values and the checksum (which also catches a reordered key list). A shard
that fails (or one written without a checksum by an older rap_hf) is never used: one warning line names the file and
the reason, the file and its keys file are renamed to ``*.rejected``, and its pictures are recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..processing_rap import read_regular_file

logger = logging.getLogger(__name__)

_SHARD_PREFIX = "features-"
_META_FILE = "meta.json"
_REJECTED_SUFFIX = ".rejected"
_CHECKSUM_FIELD = "rap_hf_sha256"  # safetensors metadata: checksum of the ordered keys and the tensor
_TENSOR_NAME = "features"
# Keys of an image processor's dict that do not change the pixels it produces.
_IGNORED_PROCESSOR_KEYS = {"auto_map", "processor_class", "_processor_class"}


def image_key(value: Any) -> str | None:
    """Content key of an image: hash of its file bytes (``datasets`` dict or path) or of its pixels (PIL)."""
    if value is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None:
            if not value.get("path"):
                return None
            data = read_regular_file(value["path"])
        digest.update(data)
    elif isinstance(value, (str, os.PathLike)):
        digest.update(read_regular_file(value))
    elif isinstance(value, Image.Image):
        digest.update(f"pil:{value.mode}:{value.size}".encode())
        digest.update(value.tobytes())
    else:
        raise TypeError(f"cannot key an image given as {type(value).__name__}")
    return digest.hexdigest()


def shard_checksum(keys: Sequence[str], features: torch.Tensor) -> str:
    """SHA-256 of a shard's ordered key list, its tensor's shape and dtype and its bytes: binds each key to its row."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(keys)).encode())
    digest.update(f"\0{tuple(features.shape)}:{features.dtype}\0".encode())
    digest.update(features.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


class _RejectedShard(Exception):
    """A shard that fails verification (the message says why)."""


def find_vision_module(model: torch.nn.Module) -> torch.nn.Module:
    """The sub-module holding the vision encoder (its weights define the cache); the model itself if none."""
    if hasattr(model, "vision_encoder") and isinstance(model.vision_encoder, torch.nn.Module):
        return model.vision_encoder
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("vision_encoder", "vision_model"):
            return module
    return model


def find_image_feature_fn(model: torch.nn.Module):
    """``model.get_image_features``, or that of the first sub-module having one (task heads wrapping a backbone)."""
    if callable(getattr(model, "get_image_features", None)):
        return model.get_image_features
    for _, module in model.named_modules():
        if callable(getattr(module, "get_image_features", None)):
            return module.get_image_features
    raise TypeError(f"{type(model).__name__} has no get_image_features(pixel_values) method")


def _processor_settings(image_processor: Any) -> dict:
    settings = image_processor.to_dict() if hasattr(image_processor, "to_dict") else dict(vars(image_processor))
    return {k: v for k, v in settings.items() if k not in _IGNORED_PROCESSOR_KEYS}


def vision_fingerprint(vision_module: torch.nn.Module, image_processor: Any) -> str:
    """Hash of the vision config, every vision weight and the image processor settings."""
    digest = hashlib.sha256()
    config = getattr(vision_module, "config", None)
    if config is not None:
        text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
        digest.update(text.encode())
    digest.update(type(vision_module).__name__.encode())
    for name, tensor in sorted(vision_module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(_processor_settings(image_processor), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


class VisualFeatureCache:
    """Pooled vision features per image, computed once with ``model.get_image_features``.

    Args:
        cache_dir: root folder; features go to ``cache_dir/<fingerprint>/``.
        model: any module with ``get_image_features(pixel_values [N, 3, H, W]) -> [N, C_v]`` (a RAP model).
        processor: a `RAPProcessor` or a bare image processor.
        num_crops: crop slots K of the output (default: the processor's, else 3).
        batch_size: images per encoder call.
        device: where to run the encoder (default: CUDA when available, else CPU); the model is moved there
            for the extraction and moved back afterwards.
        vision_module: the module whose weights define the fingerprint (default: `find_vision_module`).
        flush_every: write a shard after this many new images (what an interruption can lose at most).
        show_progress: tqdm bar during extraction.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        model: torch.nn.Module,
        processor: Any,
        *,
        num_crops: int | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        vision_module: torch.nn.Module | None = None,
        flush_every: int = 2048,
        show_progress: bool = True,
    ):
        self.model = model
        self._image_features = find_image_feature_fn(model)
        self.image_processor = getattr(processor, "image_processor", processor)
        self.num_crops = num_crops if num_crops is not None else getattr(processor, "num_crops", 3)
        self.batch_size = batch_size
        self.device = (
            torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.flush_every = flush_every
        self.show_progress = show_progress
        self.fingerprint = vision_fingerprint(vision_module or find_vision_module(model), self.image_processor)
        self.directory = Path(cache_dir) / self.fingerprint
        self.encoder_calls = 0  # batches sent to the vision encoder by this object
        self._index: dict[str, tuple[int, int]] | None = None  # key -> (shard number, row)
        self._shards: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------------------------------------
    # storage
    # ------------------------------------------------------------------------------------------------------------

    def _load_index(self) -> dict[str, tuple[int, int]]:
        """Read and verify every complete shard of this fingerprint (partial progress of an earlier run included);
        a shard that fails is set aside (see `_reject`) and its pictures count as missing."""
        if self._index is None:
            self._index, self._shards = {}, []
            width = self._meta_feature_size()
            for path in sorted(self.directory.glob(f"{_SHARD_PREFIX}*.safetensors")):
                try:
                    keys, features = self._read_shard(path, width)
                except _RejectedShard as reason:
                    self._reject(path, str(reason))
                    continue
                width = int(features.shape[1])
                shard = len(self._shards)
                self._shards.append(features)
                self._index.update({key: (shard, row) for row, key in enumerate(keys)})
        return self._index

    def _meta_feature_size(self) -> int | None:
        """C_v recorded in ``meta.json`` when the first shard was written; None when absent or unreadable."""
        meta = self.directory / _META_FILE
        if not meta.exists():
            return None
        try:
            size = json.loads(meta.read_text())["feature_size"]
            if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                return size
            raise ValueError(f"feature_size {size!r}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("visual feature cache: %s is unreadable (%s); it is rewritten", meta, error)
            with contextlib.suppress(OSError):
                meta.unlink()
            return None

    @staticmethod
    def _read_shard(path: Path, width: int | None) -> tuple[list[str], torch.Tensor]:
        """The keys and features of a shard, verified; `_RejectedShard` says what is wrong."""
        keys_path = path.with_suffix(".json")
        try:
            keys = json.loads(keys_path.read_text())
        except FileNotFoundError:
            raise _RejectedShard(f"its keys file {keys_path.name} is missing") from None
        except (OSError, ValueError) as error:
            raise _RejectedShard(f"its keys file {keys_path.name} is unreadable ({error})") from None
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            raise _RejectedShard(f"its keys file {keys_path.name} is not a list of strings")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = list(handle.keys())
                if names != [_TENSOR_NAME]:
                    raise _RejectedShard(f"it holds the tensors {names}, not one {_TENSOR_NAME!r} tensor")
                features = handle.get_tensor(_TENSOR_NAME)
        except _RejectedShard:
            raise
        except Exception as error:  # SafetensorError, OSError, ...: a damaged header or truncated data
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise _RejectedShard(f"unreadable safetensors file ({message})") from None
        if features.dtype != torch.float32 or features.dim() != 2:
            raise _RejectedShard(f"the features are {features.dtype} {list(features.shape)}, not float32 [rows, C_v]")
        if width is not None and features.shape[1] != width:
            raise _RejectedShard(f"the features are {features.shape[1]} wide, the cache's are {width}")
        if features.shape[0] != len(keys):
            raise _RejectedShard(f"{features.shape[0]} feature rows for {len(keys)} keys")
        finite = torch.isfinite(features).all(dim=1)
        if not bool(finite.all()):
            raise _RejectedShard(f"{int((~finite).sum())} of its {len(keys)} rows hold NaN or infinite values")
        expected = metadata.get(_CHECKSUM_FIELD)
        if expected is None:
            raise _RejectedShard("it has no checksum (written by an older rap_hf), so it cannot be verified")
        if shard_checksum(keys, features) != expected:
            raise _RejectedShard("checksum mismatch: its bytes or the order of its keys changed since it was written")
        return keys, features

    def _reject(self, path: Path, reason: str) -> None:
        """One warning line naming the shard and the reason; the shard and its keys file are renamed ``*.rejected``
        (kept for inspection, never read again) so that its pictures are recomputed."""
        renamed = True
        for file in (path, path.with_suffix(".json")):
            try:
                os.replace(file, file.with_name(file.name + _REJECTED_SUFFIX))
            except FileNotFoundError:
                pass
            except OSError:
                renamed = False
        what = f"renamed to {path.name}{_REJECTED_SUFFIX}" if renamed else "could not be renamed"
        logger.warning("visual feature cache: shard %s not used: %s; %s, its pictures recomputed", path, reason, what)

    def _write_shard(self, keys: list[str], features: torch.Tensor) -> None:
        """Write one shard atomically (keys file first, tensor file renamed last marks it complete), with the
        checksum of its keys and tensor in its metadata."""
        index = self._load_index()  # before the new file exists, so it is not read twice
        features = features.float().contiguous()
        finite = torch.isfinite(features).all(dim=1)
        if not bool(finite.all()):
            raise FloatingPointError(
                f"the vision encoder returned NaN or infinite features for {int((~finite).sum())} of "
                f"{len(keys)} pictures; nothing was cached (check the vision weights and --fp16/--bf16)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = self.directory / _META_FILE
        if self._meta_feature_size() != features.shape[1]:
            meta.write_text(json.dumps({"fingerprint": self.fingerprint, "feature_size": features.shape[1]}))
        number = len(list(self.directory.glob(f"{_SHARD_PREFIX}*.safetensors")))
        stem = self.directory / f"{_SHARD_PREFIX}{number:05d}-{os.getpid()}"
        while stem.with_suffix(".safetensors").exists() or stem.with_suffix(".json").exists():
            number += 1  # a shard set aside earlier leaves a gap in the numbers: never overwrite another shard
            stem = self.directory / f"{_SHARD_PREFIX}{number:05d}-{os.getpid()}"
        stem.with_suffix(".json").write_text(json.dumps(keys))
        tmp = stem.with_suffix(".tmp")
        save_file({_TENSOR_NAME: features}, str(tmp), metadata={_CHECKSUM_FIELD: shard_checksum(keys, features)})
        os.replace(tmp, stem.with_suffix(".safetensors"))
        shard = len(self._shards)
        self._shards.append(features)
        index.update({key: (shard, row) for row, key in enumerate(keys)})

    def __len__(self) -> int:
        return len(self._load_index())

    def __contains__(self, key: str) -> bool:
        return key in self._load_index()

    @property
    def feature_size(self) -> int | None:
        """C_v, known once one feature is stored."""
        self._load_index()
        return int(self._shards[0].shape[1]) if self._shards else None

    def size_on_disk(self) -> int:
        """Bytes used by this fingerprint's folder."""
        return sum(p.stat().st_size for p in self.directory.glob("*") if p.is_file())

    # ------------------------------------------------------------------------------------------------------------
    # extraction
    # ------------------------------------------------------------------------------------------------------------

    def _encode(self, images: list[Any]) -> torch.Tensor:
        from ..processing_rap import load_image  # here: it imports transformers, which loading a dataset does not need

        loaded_images = [load_image(image) for image in images]
        pixel_values = self.image_processor(loaded_images, return_tensors="pt")["pixel_values"].to(self.device)
        self.encoder_calls += 1
        return self._image_features(pixel_values).float().cpu()

    @contextlib.contextmanager
    def _model_on_device(self):
        """Run the model in eval mode on ``self.device``; put it back where and how it was afterwards."""
        original_device = next(iter(self.model.parameters()), torch.empty(0)).device
        was_training = self.model.training
        self.model.to(self.device).eval()
        try:
            with torch.no_grad():  # not inference_mode: stored tensors may later meet autograd
                yield
        finally:
            self.model.to(original_device).train(was_training)

    def _probe_feature_size(self) -> int:
        """C_v for a dataset without any image (nothing stored): one encoder call on a blank image."""
        with self._model_on_device():
            return int(self._encode([Image.new("RGB", (32, 32))]).shape[1])

    def compute(self, pictures: dict[str, Any], description: str = "visual features") -> int:
        """Compute and store the features of ``{key: image}`` not in the cache yet; returns how many were new."""
        index = self._load_index()
        missing = [(key, value) for key, value in pictures.items() if key not in index]
        if not missing:
            return 0
        buffer_keys: list[str] = []
        buffer: list[torch.Tensor] = []
        with (
            self._model_on_device(),
            tqdm(total=len(missing), desc=description, unit="img", disable=not self.show_progress) as bar,
        ):
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start : start + self.batch_size]
                buffer.append(self._encode([value for _, value in chunk]))
                buffer_keys.extend(key for key, _ in chunk)
                bar.update(len(chunk))
                if len(buffer_keys) >= self.flush_every:
                    self._write_shard(buffer_keys, torch.cat(buffer))
                    buffer_keys, buffer = [], []
            if buffer_keys:
                self._write_shard(buffer_keys, torch.cat(buffer))
        logger.info("visual feature cache %s: %d new images, %d in total", self.directory, len(missing), len(index))
        return len(missing)

    @staticmethod
    def _images_of(dataset: datasets.Dataset) -> Iterable[tuple[Any, list[Any]]]:
        """(image, crops) of every row, undecoded (``{"bytes", "path"}`` dicts) so keys come from file bytes."""
        columns = [c for c in ("image", "crops") if c in dataset.column_names]
        view = dataset.select_columns(columns)
        if "image" in columns:
            view = view.cast_column("image", datasets.Image(decode=False))
        if "crops" in columns:
            view = view.cast_column("crops", datasets.List(datasets.Image(decode=False)))
        for row in view:
            yield row.get("image"), list(row.get("crops") or [])

    def extract(self, dataset: datasets.Dataset | datasets.DatasetDict) -> int:
        """Compute every image and crop of a dataset (all splits of a ``DatasetDict``); returns how many were new."""
        if isinstance(dataset, datasets.DatasetDict):
            return sum(self.extract(split) for split in dataset.values())
        images: dict[str, Any] = {}
        for image, crops in self._images_of(dataset):
            for value in [image, *crops[: self.num_crops]]:
                key = image_key(value)
                if key is not None:
                    images.setdefault(key, value)
        return self.compute(images)

    # ------------------------------------------------------------------------------------------------------------
    # lookup
    # ------------------------------------------------------------------------------------------------------------

    def get(self, key: str) -> torch.Tensor:
        """Feature ``[C_v]`` of a stored image."""
        shard, row = self._load_index()[key]
        return self._shards[shard][row]

    def lookup(
        self, images: Sequence[Any], crops: Sequence[Sequence[Any] | None] | None = None
    ) -> dict[str, torch.Tensor]:
        """``visual_features [B, 1+K, C_v]`` and ``image_mask [B, 1+K]`` for a batch; images not cached yet
        are computed first."""
        crops = crops if crops is not None else [None] * len(images)
        keys = [
            [image_key(v) for v in [image, *list(row_crops or [])[: self.num_crops]]]
            for image, row_crops in zip(images, crops)
        ]
        pending = {}
        for row_keys, image, row_crops in zip(keys, images, crops):
            for key, value in zip(row_keys, [image, *list(row_crops or [])[: self.num_crops]]):
                if key is not None:
                    pending.setdefault(key, value)
        self.compute(pending)
        size = self.feature_size or 0
        features = torch.zeros((len(images), 1 + self.num_crops, size))
        mask = torch.zeros((len(images), 1 + self.num_crops), dtype=torch.long)
        for row, row_keys in enumerate(keys):
            for slot, key in enumerate(row_keys):
                if key is not None:
                    features[row, slot] = self.get(key)
                    mask[row, slot] = 1
        return {"visual_features": features, "image_mask": mask}

    def attach(
        self, dataset: datasets.Dataset | datasets.DatasetDict, remove_images: bool = True
    ) -> datasets.Dataset | datasets.DatasetDict:
        """Add ``visual_features [1+K, C_v]`` (float32) and ``image_mask [1+K]`` columns (extracting first).

        With ``remove_images`` the ``image``/``crops`` columns are dropped so nothing decodes images later.
        """
        if isinstance(dataset, datasets.DatasetDict):
            return datasets.DatasetDict({name: self.attach(split, remove_images) for name, split in dataset.items()})
        self.extract(dataset)
        size = self.feature_size or self._probe_feature_size()
        slots = 1 + self.num_crops
        features = dataset.features.copy()
        for column in ("image", "crops"):
            if column in features:
                features[column] = (
                    datasets.Image(decode=False) if column == "image" else datasets.List(datasets.Image(decode=False))
                )
        undecoded = dataset.cast(features)

        def add_columns(batch: dict[str, list]) -> dict[str, list]:
            images = batch["image"] if "image" in batch else [None] * len(next(iter(batch.values())))
            crops = batch.get("crops")
            if self.feature_size:
                looked_up = self.lookup(images, crops)
            else:  # no image anywhere: every slot is empty
                looked_up = {
                    "visual_features": torch.zeros((len(images), slots, size)),
                    "image_mask": torch.zeros((len(images), slots), dtype=torch.long),
                }
            return {key: value.numpy() for key, value in looked_up.items()}

        new_features = undecoded.features.copy()
        new_features["visual_features"] = datasets.Array2D(shape=(slots, size), dtype="float32")
        new_features["image_mask"] = datasets.List(datasets.Value("int64"), length=slots)
        result = undecoded.map(
            add_columns,
            batched=True,
            batch_size=256,
            features=new_features,
            # the map function holds the model: fingerprint it by the encoder fingerprint instead of hashing it;
            # "verified": results attached before shards were verified (maybe from a damaged shard) are not reused
            new_fingerprint=hashlib.sha256(
                f"{dataset._fingerprint}:{self.fingerprint}:{slots}:verified".encode()
            ).hexdigest(),
            desc="attach visual features",
        )
        if remove_images:
            result = result.remove_columns([c for c in ("image", "crops") if c in result.column_names])
        else:
            added = {key: result.features[key] for key in ("visual_features", "image_mask")}
            result = result.cast(datasets.Features({**dataset.features, **added}))
        return result
