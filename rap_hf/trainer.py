"""`RAPTrainer`: `transformers.Trainer` for RAP models, used like SpanMarker's trainer.

    trainer = RAPTrainer(model=model, args=RAPTrainingArguments(output_dir="out"), processing_class=processor,
                         train_dataset=ds["train"], eval_dataset=ds["validation"])
    trainer.train()

The task (NER or RE) is read from the model. Datasets are the `rap_hf.load_dataset` builders' splits or any dataset
with the same columns (`tokens` + `ner_tags`, or `tokens`, `subject`, `object` + `relation`; `image`/`crops`
optional): the trainer tokenises them with the processor and, for a frozen vision encoder, attaches the cached
visual features. What RAP adds to the Trainer: the paper's schedule (`RAPTrainingArguments`), an optimizer group for
the new layers (`new_params_learning_rate`), CRF/relation metrics by seqeval, and the weights of the best validation
F1 kept in memory (written only into the checkpoints the save strategy asks for, not one per improvement).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from .grounding import VisionEncoderGrounder, VisualGrounder, find_vision_encoder, load_grounder, no_grounding
from .metrics import compute_ner_metrics, compute_re_metrics
from .model_card import RAPModelCardCallback, RAPModelCardData, save_model_card
from .modeling_rap import RAPPreTrainedModel
from .pipelines import RAPPipeline, save_pipeline_code
from .processing_rap import RAPDataCollator, RAPProcessor, load_image

logger = logging.getLogger(__name__)

# Sec. 4.2 of the paper: (batch size, epochs, learning rate) per task.
PAPER_DEFAULTS = {"ner": (8, 30, 3e-5), "re": (16, 15, 2e-5)}
BEST_WEIGHTS = "rap_best_model.safetensors"  # in a checkpoint: the best weights so far, for an exact resume
BEST_STATE = "rap_best.json"
RESUME_ARGUMENTS = "rap_training_arguments.json"  # in a checkpoint: the arguments that change training, for a resume
# Arguments that change what training computes: a resume must keep them (everything else is run-time: logging, saving,
# evaluation batch size, epochs to extend, Hub options, ...).
TRAINING_FIELDS = (
    "learning_rate",
    "new_params_learning_rate",
    "relevance_learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "warmup_steps",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "optim",
    "optim_args",
    "seed",
    "data_seed",
    "best_model_on_tie",
    "label_smoothing_factor",
    "bf16",
    "fp16",
    "eval_strategy",
    "metric_for_best_model",
    "greater_is_better",
)
NEGATIVE_MEMORY = "rap_negative_memory-{}.safetensors"  # in a checkpoint, per process: the matching loss's memory
COMPLETE_MARKER = "rap_checkpoint_complete"  # written last: a checkpoint without it was cut off while saving
TEXT_ENCODER_ADAPTER = "text_encoder_lora"  # peft-format copy of the text encoder's LoRA adapters in the final folder


@dataclass
class RAPTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's schedule (Sec. 4.2: AdamW, linear warm-up over the first 10% of the
    updates, then linear decay), validation F1 after every epoch, and RAP's own options. `paper_defaults(task)` gives
    the paper's batch size, epochs and learning rate."""

    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: a share of the updates if < 1 (paper: 0.1), else a count"}
    )
    per_device_eval_batch_size: int = field(default=32)
    weight_decay: float = field(default=0.01)
    eval_strategy: str = field(default="epoch", metadata={"help": "Validation F1 after every epoch picks the best"})
    logging_strategy: str = field(default="epoch")
    save_strategy: str = field(
        default="steps", metadata={"help": "Resumable checkpoints (model, optimizer, RNG); see --save_steps"}
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept (newest first)"})
    metric_for_best_model: str | None = field(default="f1")
    greater_is_better: bool | None = field(default=True)
    new_params_learning_rate: float | None = field(
        default=None,
        metadata={"help": "lr of the RAP layers and heads (not in the pretrained encoders); default: --learning_rate"},
    )
    relevance_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "lr of beta's relevance reasoning (Algorithm 1) and its own projections, which learn from the "
            "image-text matching loss; default: --new_params_learning_rate"
        },
    )
    best_model_on_tie: str = field(
        default="later",
        metadata={
            "help": "Which epoch a tie in validation F1 keeps: 'later' (trained longer, beta included, which F1 does "
            "not see) or 'earlier' (transformers' rule)",
            "choices": ["later", "earlier"],
        },
    )
    feature_cache: bool = field(
        default=True, metadata={"help": "Compute a frozen vision encoder's features once and cache them on disk"}
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where cached visual features go (shared by runs, keyed by encoder and image content); "
            "default: $RAP_HF_CACHE/visual_features or ~/.cache/huggingface/rap_hf/visual_features"
        },
    )

    # Fields this class and its subclasses add to `TrainingArguments` and RAP's code reads (not dataclass fields).
    own_fields = frozenset(
        {
            "new_params_learning_rate",
            "relevance_learning_rate",
            "best_model_on_tie",
            "feature_cache",
            "feature_cache_dir",
        }
    )

    def __post_init__(self):
        check_training_argument_fields(type(self))
        if self.best_model_on_tie not in ("later", "earlier"):
            raise ValueError(f"best_model_on_tie={self.best_model_on_tie!r}: use 'later' or 'earlier'")
        super().__post_init__()
        check_warmup_schedule(self)

    @classmethod
    def paper_defaults(cls, task: str, **kwargs: Any) -> RAPTrainingArguments:
        """Arguments with the paper's batch size, epochs and learning rate for `task` (Sec. 4.2); `kwargs` win."""
        batch, epochs, lr = PAPER_DEFAULTS[task]
        return cls(**{"per_device_train_batch_size": batch, "num_train_epochs": epochs, "learning_rate": lr, **kwargs})


def check_training_argument_fields(arguments_class: type) -> None:
    """Refuses, at start-up, a field that `arguments_class` sets and the installed `TrainingArguments` does not read:
    a transformers release that drops a field (5.25 dropped `warmup_ratio`) would otherwise ignore it silently."""
    import transformers

    declared, own = set(), set()
    for klass in arguments_class.__mro__:
        if klass is TrainingArguments or not issubclass(klass, TrainingArguments):
            break
        declared |= set(vars(klass).get("__annotations__", {}))
        own |= set(vars(klass).get("own_fields", ()))
    unread = sorted(declared - own - {f.name for f in dataclasses.fields(TrainingArguments)})
    if unread:
        raise TypeError(
            f"{arguments_class.__name__} sets {', '.join(unread)}, which transformers {transformers.__version__}'s "
            "TrainingArguments no longer has: the setting would be ignored silently. Use a tested transformers "
            "(pyproject.toml) or port the field."
        )


def check_warmup_schedule(args: TrainingArguments, updates: int = 1000) -> None:
    """The warm-up the arguments ask for is the one the Trainer will run (a share < 1 of the updates, or a count)."""
    asked = args.warmup_steps
    expected = math.ceil(updates * asked) if 0 < asked < 1 else int(asked)
    if args.get_warmup_steps(updates) != expected:
        raise ValueError(
            f"warmup_steps={asked} gives {args.get_warmup_steps(updates)} warm-up steps of {updates} updates in this "
            f"transformers release, not {expected}: the paper's warm-up (Sec. 4.2) would not run"
        )


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------
RELEVANCE_MODULES = (".relevance_reasoning.", ".relevance_features.")  # beta's reasoning and its own projections


def parameter_groups(model: RAPPreTrainedModel, args: TrainingArguments) -> list[dict[str, Any]]:
    """Encoder parameters at the encoder lr; the new RAP layers and heads at their own lr (beta's reasoning at
    `relevance_learning_rate` where set); no decay on norms/biases."""
    new_lr = getattr(args, "new_params_learning_rate", None) or args.learning_rate
    relevance_lr = getattr(args, "relevance_learning_rate", None) or new_lr
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        # LoRA adapters are new weights too, even inside the encoder
        pretrained = (".text_encoder." in name or ".vision_encoder." in name) and "lora_" not in name
        relevance = any(part in f".{name}" for part in RELEVANCE_MODULES)
        lr = args.learning_rate if pretrained else relevance_lr if relevance else new_lr
        decay = parameter.dim() > 1 and "norm" not in name.lower()
        groups.setdefault((lr, decay), []).append(parameter)
    return [
        {"params": params, "lr": lr, "weight_decay": args.weight_decay if decay else 0.0}
        for (lr, decay), params in groups.items()
    ]


def hash_text(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def grounded_instead_of_crops(picture_key: str, share: float) -> bool:
    """Whether a picture with corpus crops is one of the `share` trained on grounded objects instead: fixed by its
    content, so every epoch, run and process picks the same pictures (and their cached features)."""
    return share >= 1 or int(hash_text("grounded", picture_key)[:8], 16) < share * 16**8


def tokenization_fingerprint(processor: RAPProcessor, task: str) -> str:
    """What tokenising depends on (tokenizer, markers, the processing code, max_length), hashed in milliseconds:
    datasets' own fingerprint pickles the tokenizer with dill, ~0.7 s per split and run."""
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    code = Path(sys.modules[RAPProcessor.__module__].__file__).read_text()
    markers = json.dumps(processor.entity_markers)
    return hash_text(vocabulary, markers, code, task, str(processor.max_length), type(tokenizer).__name__)


def tokenize_split(dataset: datasets.Dataset, processor: RAPProcessor, task: str, name: str) -> datasets.Dataset:
    """Tokenises a builder split (`word_ids` kept for NER, images left for the collator) and numbers its examples."""
    if "example_index" not in dataset.column_names:
        dataset = dataset.map(lambda _, i: {"example_index": i}, with_indices=True)
    if "input_ids" in dataset.column_names:
        return dataset
    return dataset.map(
        processor.preprocess,
        batched=True,
        fn_kwargs={"task": task},
        desc=f"Tokenising {name}",
        new_fingerprint=hash_text(dataset._fingerprint, tokenization_fingerprint(processor, task)),
    )


MODEL_COLUMNS = {
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "word_start_mask",
    "entity_positions",
    "labels",
    "example_index",
    "image",
    "crops",
    "visual_features",
    "image_mask",
}


class TrainingCollator(RAPDataCollator):
    """`RAPDataCollator` over the model columns of a tokenised split, also carrying `example_index` (to map gathered
    predictions back to examples)."""

    def __call__(self, features):
        features = [{k: v for k, v in f.items() if k in MODEL_COLUMNS} for f in features]
        batch = super().__call__(features)
        batch["example_index"] = torch.tensor([f["example_index"] for f in features], dtype=torch.long)
        return batch


def save_text_encoder_adapter(model: RAPPreTrainedModel, folder: Path) -> None:
    """The text encoder's LoRA adapters in peft's own format (adapter_config.json + adapter_model.safetensors), so
    `peft.PeftModel.from_pretrained(text_encoder, folder)` puts them on the pretrained encoder."""
    from peft import LoraConfig, get_peft_model_state_dict

    encoder = model.base_model.text_encoder
    config = LoraConfig(**model.config.text_encoder_lora, base_model_name_or_path=encoder.config._name_or_path)
    config.save_pretrained(str(folder))
    # keys as a PeftModel around the encoder names them (the adapters were injected into the encoder in place)
    state = {f"base_model.model.{k}": v.contiguous() for k, v in get_peft_model_state_dict(encoder).items()}
    save_file(state, str(folder / "adapter_model.safetensors"))


GROUNDING_CACHE = "grounding"  # under the feature cache folder: the boxes of each grounder, one JSON file per grounder
GROUNDING_BATCH = 16  # pictures per grounder call


class BoxCache:
    """Boxes a grounder found, per picture (and text, where the grounder reads it): ``{key: [[x0, y0, x1, y1]]}``
    in one JSON file per grounder, written atomically; computed once, reused by every later run and split."""

    def __init__(self, path: Path, grounder: dict[str, Any]):
        self.path, self.grounder = path, grounder
        self.boxes: dict[str, list[list[int]]] = {}
        if path.is_file():
            try:
                self.boxes = json.loads(path.read_text())["boxes"]
            except (ValueError, KeyError, TypeError):  # a damaged file is recomputed, not trusted
                logger.warning("grounding cache %s is damaged; computing its boxes again", path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"grounder": self.grounder, "boxes": self.boxes}))
        os.replace(temporary, self.path)


def png_bytes(image) -> dict[str, Any]:
    """A PIL picture as the ``{"bytes", "path"}`` value of a ``datasets.Image`` column (lossless PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def undecoded(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its image/crops columns as undecoded ``{"bytes", "path"}`` values."""
    features = dataset.features.copy()
    if "image" in features:
        features["image"] = datasets.Image(decode=False)
    if "crops" in features:
        features["crops"] = datasets.List(datasets.Image(decode=False))
    return dataset.cast(features) if features != dataset.features else dataset


def feature_cache_dir(args: TrainingArguments) -> Path:
    from .encoders import cache_root

    folder = getattr(args, "feature_cache_dir", None)
    return Path(folder) if folder else cache_root() / "visual_features"


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Everything one evaluation pass produced, in dataset order."""

    metrics: dict[str, Any]
    labels: list[Any]
    predictions: list[Any]
    relevance: list[float]
    routing_weights: list[list[float]]
    image_used: list[bool]


def score_predictions(predictions, indices, dataset, task: str, processor: RAPProcessor, id2label) -> Predictions:
    """Word-level (NER, through the processor's one mapping from sub-tokens to words) or relation predictions of
    every example, in dataset order, and their metrics."""
    values, relevance, routing, image_used = predictions
    order = np.argsort(indices, kind="stable")
    indices = np.asarray(indices)[order]
    labels = [id2label[i] for i in range(len(id2label))]
    rows = dataset.select(indices.tolist())
    if task == "ner":
        gold = [[labels[t] for t in tags] for tags in rows["ner_tags"]]
        pred = processor.post_process_ner(
            np.asarray(values)[order].tolist(),
            rows["word_ids"],
            [len(g) for g in gold],
            id2label=dict(enumerate(labels)),
        )
        metrics = compute_ner_metrics(pred, gold)
    else:
        gold = [labels[r] for r in rows["relation"]]
        pred = [labels[int(v)] for v in np.asarray(values)[order]]
        metrics = compute_re_metrics(pred, gold, labels)
    routing = np.asarray(routing)[order]
    return Predictions(
        metrics,
        gold,
        pred,
        [float(b) for b in np.asarray(relevance)[order]],
        routing.tolist() if routing.size else [[] for _ in order],
        [bool(u) for u in np.asarray(image_used)[order]],
    )


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("precision", "recall", "f1") if k in metrics}


# ---------------------------------------------------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------------------------------------------------
class RAPTrainer(Trainer):
    """`Trainer` for RAP models: task from the model, builder datasets tokenised (and their frozen-encoder visual
    features cached) on the way in, RAP's optimizer groups, CRF/relation metrics, best-by-validation-F1 weights.

    Args:
        model: a `RAPForMultimodalNER` / `RAPForMultimodalRE`.
        args: `RAPTrainingArguments` (or plain `TrainingArguments`; then without warm-up unless asked).
        processing_class: the model's `RAPProcessor` (default: loaded from the model's folder, `model.name_or_path`).
        train_dataset, eval_dataset: builder splits or datasets with the same columns, raw or already tokenised.
        model_card_data: what the model card (README.md, written by `save_model`) should say beyond what training
            shows (repo id, dataset, command, ...); `RAPModelCardCallback` fills the rest while training.
        Every other argument as `transformers.Trainer`.
    """

    def __init__(
        self,
        model: RAPPreTrainedModel,
        args: TrainingArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: RAPProcessor | None = None,
        data_collator=None,
        model_card_data: RAPModelCardData | None = None,
        **kwargs: Any,
    ) -> None:
        self.task = model.config.task
        # Trainer pins loader memory by default; without a GPU torch then warns at every loader (30 times a run)
        warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")
        processing_class = processing_class or RAPProcessor.from_pretrained(model.name_or_path)
        self.processing_class = processing_class
        args = args if args is not None else RAPTrainingArguments(output_dir="rap_trainer_output")
        self.args, self.model = args, model  # read by `prepare` before Trainer's own init
        train_dataset = self.prepare(train_dataset, "train")
        eval_dataset = self.prepare(eval_dataset, "validation")
        data_collator = data_collator or TrainingCollator(processor=processing_class, num_crops=model.config.num_crops)
        if isinstance(args, TrainingArguments):
            args.remove_unused_columns = False  # the collator picks the model columns
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=data_collator,
            **kwargs,
        )
        self.compute_metrics = self._compute_metrics
        self.scored_dataset: datasets.Dataset | None = None
        self.last_predictions: Predictions | None = None
        self.best: dict[str, Any] = {"f1": -1.0, "epoch": None, "validation": None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_losses: list[float] = []
        self.add_callback(BestModelCallback(self))
        self.model_card_data = model_card_data if model_card_data is not None else RAPModelCardData()
        self.add_callback(RAPModelCardCallback(self))

    # -- data ----------------------------------------------------------------------------------------------------------
    def prepare(self, dataset: datasets.Dataset | None, name: str = "split") -> datasets.Dataset | None:
        """A split as the model reads it: tokenised, numbered (`example_index`), pictures without crops given the
        crops of `config.grounding_model`'s grounder (`_ground_pictures`) and, for a frozen vision encoder with the
        feature cache on, with cached `visual_features` instead of pictures; prepared splits pass through. The
        processor records `config.grounding_model`, so the saved model predicts with the objects it was trained on."""
        config = self.model.config
        if config.multimodal:  # the saved processor predicts with the objects the model was trained with
            self.processing_class.grounding_model = getattr(config, "grounding_model", "none") or "none"
        if dataset is None or "example_index" in dataset.column_names and "input_ids" in dataset.column_names:
            return dataset
        dataset = tokenize_split(dataset, self.processing_class, self.task, name)
        pictures = [c for c in ("image", "crops") if c in dataset.column_names]
        if not config.multimodal:  # nothing to look at: no pictures decoded
            return dataset.remove_columns(pictures)
        if "image" in pictures:
            dataset = self._ground_pictures(dataset, name)
            pictures = [c for c in ("image", "crops") if c in dataset.column_names]
        if pictures and getattr(self.args, "feature_cache", True) and config.freeze_vision_encoder:
            dataset = self._attach_visual_features(dataset)
        return dataset

    def grounder(self) -> VisualGrounder | None:
        """The grounder of `config.grounding_model` (built once; None for "none")."""
        if not hasattr(self, "_grounder"):
            config = self.model.config
            spec = getattr(config, "grounding_model", None)
            self._grounder = load_grounder(
                spec,
                vision_model=self.model,
                image_processor=self.processing_class.image_processor,
                num_objects=config.num_crops,
                device=None if spec == "vision-encoder" else self.args.device,
            )
        return self._grounder

    def _grounding_id(self, grounder: VisualGrounder) -> str:
        """What the boxes depend on: the grounder's settings and, for the vision-encoder grounder, the encoder."""
        parts = [grounder.cache_id]
        if isinstance(grounder, VisionEncoderGrounder):
            from .data.features import vision_fingerprint

            parts.append(vision_fingerprint(grounder.encoder, self.processing_class.image_processor))
        return hash_text(*parts)

    def _ground_pictures(self, dataset: datasets.Dataset, name: str) -> datasets.Dataset:
        """Crops for the pictures that come without any (a corpus without `img_vg`), from the grounder of
        `config.grounding_model`, so that training sees the objects the pipeline will give a user's picture. The boxes
        are computed once and cached (`BoxCache`, keyed by the picture's content, its text where the grounder reads
        it, and the grounder); the crops join the `crops` column, where the feature cache encodes them like a
        corpus's. Pictures that have crops keep them, except a `config.grounded_objects_share` of them in the training
        and validation splits, so that the model also learns from the objects a user's picture gets."""
        from .data.features import image_key

        config = self.model.config
        if config.num_crops < 1 or no_grounding(getattr(config, "grounding_model", None)):
            return dataset
        share = getattr(config, "grounded_objects_share", 0.0) if name in ("train", "validation") else 0.0
        view = undecoded(dataset.select_columns([c for c in ("image", "crops", "tokens") if c in dataset.column_names]))
        needed: dict[int, tuple[str, str | None]] = {}  # row -> (picture key, text)
        for row, example in enumerate(view):
            if example["image"] is None or example.get("crops") and share <= 0:
                continue  # hashing a picture's content costs: only for those that may be grounded
            picture = image_key(example["image"])
            if not example.get("crops") or grounded_instead_of_crops(picture, share):
                needed[row] = (picture, " ".join(example.get("tokens") or []))
        if not needed:
            return dataset
        grounder = self.grounder()
        if grounder is None:
            return dataset
        grounding_id = self._grounding_id(grounder)
        cache = BoxCache(feature_cache_dir(self.args) / GROUNDING_CACHE / f"{grounding_id}.json", grounder.settings)

        def key_of(row: int) -> str:
            picture, text = needed[row]
            return hash_text(picture, text) if grounder.uses_text else picture

        with self.args.main_process_first(desc="grounding"):  # rank 0 fills the cache, the others read it
            cache = BoxCache(cache.path, grounder.settings)
            first_rows = {key_of(row): row for row in reversed(needed)}  # a picture seen twice is grounded once
            missing = [row for key, row in first_rows.items() if key not in cache.boxes][::-1]
            if missing:
                logger.info("%s: grounding %d pictures (%s)", name, len(missing), grounder.name)
                self._compute_boxes(grounder, view, missing, [needed[row][1] for row in missing], key_of, cache)
        return self._add_crops(dataset, {row: cache.boxes[key_of(row)] for row in needed}, grounding_id)

    def _compute_boxes(self, grounder, view, rows, texts, key_of, cache: BoxCache) -> None:
        encoder = find_vision_encoder(self.model) if isinstance(grounder, VisionEncoderGrounder) else None
        original = next(encoder.parameters()).device if encoder is not None else None
        if encoder is not None:
            encoder.to(self.args.device)  # back where it was afterwards
        try:
            for start in range(0, len(rows), GROUNDING_BATCH):
                chunk = rows[start : start + GROUNDING_BATCH]
                pictures = [load_image(view[row]["image"]) for row in chunk]
                found = grounder.ground(pictures, texts[start : start + GROUNDING_BATCH])
                cache.boxes.update({key_of(row): [list(box) for box in boxes] for row, boxes in zip(chunk, found)})
        finally:
            if encoder is not None:
                encoder.to(original)
        cache.save()

    @staticmethod
    def _add_crops(dataset: datasets.Dataset, boxes: dict[int, list[list[int]]], grounding_id: str) -> datasets.Dataset:
        """`dataset` with the crops of `boxes` (row -> boxes) in its `crops` column (added where it has none)."""
        features = dataset.features.copy()
        raw = undecoded(dataset)
        if "crops" not in raw.column_names:
            raw = raw.add_column("crops", [[] for _ in range(len(raw))])
        new_features = raw.features.copy()
        new_features["crops"] = datasets.List(datasets.Image(decode=False))

        def add(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            crops = []
            for row, image, given in zip(indices, batch["image"], batch["crops"]):
                if row in boxes:
                    picture = load_image(image)
                    given = [png_bytes(picture.crop(tuple(box))) for box in boxes[row]]
                crops.append(given or [])
            return {"crops": crops}

        grounded = raw.map(
            add,
            with_indices=True,
            batched=True,
            batch_size=64,
            features=new_features,
            # the rows grounded are part of the result: a grounded share changes them on the same split
            new_fingerprint=hash_text(dataset._fingerprint, GROUNDING_CACHE, grounding_id, json.dumps(sorted(boxes))),
            desc="crops of the grounder",
        )
        features["crops"] = datasets.List(datasets.Image())
        return grounded.cast(features)

    def _attach_visual_features(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """Runs the frozen vision encoder once per picture and stores its features with the dataset."""
        from .data.features import VisualFeatureCache

        cache = VisualFeatureCache(
            feature_cache_dir(self.args),
            model=self.model.base_model,
            processor=self.processing_class,
            device=self.args.device,
        )
        with self.args.main_process_first(desc="visual features"):  # rank 0 fills the cache, the others read it
            return cache.attach(dataset)

    # -- optimisation --------------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """AdamW (or `--optim`) over `parameter_groups`: the new RAP layers may take their own learning rate."""
        if self.optimizer is None:
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = optimizer_class(parameter_groups(self.model, self.args), **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs.pop("example_index", None)
        outputs = model(**inputs)
        if model.training:
            loss = float(outputs.loss.detach())
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"update {self.state.global_step + 1}: {non_finite_terms(outputs)}; "
                    "training stopped, nothing saved (lower the learning rate, check the inputs)"
                )
            self.epoch_losses.append(loss)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    # -- evaluation ----------------------------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """(no loss, (predictions, beta, routing vector, image used), example indices): gathered and padded by the
        Trainer."""
        inputs = self._prepare_inputs(inputs)
        indices = inputs.pop("example_index")
        inputs.pop("labels", None)
        with torch.no_grad():
            out = model(**inputs)
        values = out.predictions if self.task == "ner" else out.logits.argmax(-1)
        relevance = out.relevance if out.relevance is not None else torch.zeros(len(indices), device=values.device)
        routing = out.routing_weights if out.routing_weights is not None else values.new_zeros(len(indices), 0).float()
        mask = inputs.get("image_mask")
        image_used = mask.bool().any(-1) if mask is not None else torch.zeros(len(indices), dtype=torch.bool)
        return None, (values, relevance, routing, image_used.to(values.device)), indices

    def _compute_metrics(self, evaluation) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        self.last_predictions = score_predictions(
            evaluation.predictions,
            evaluation.label_ids,
            self.scored_dataset,
            self.task,
            self.processing_class,
            model.config.id2label,
        )
        return summary(self.last_predictions.metrics)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Precision, recall and F1 on the validation split (or any split, raw or prepared)."""
        eval_dataset = self.prepare(eval_dataset, metric_key_prefix)
        self.scored_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if eval_dataset is None and metric_key_prefix == "eval":  # the validation split: keep the best weights
            self._keep_if_best(metrics)
        return metrics

    def evaluate_split(self, dataset: datasets.Dataset, description: str = "test") -> Predictions:
        """Predictions, beta, routing and metrics of the current model on any split (test, or a variant of it)."""
        self.scored_dataset = self.prepare(dataset, description)
        self.predict(self.scored_dataset, metric_key_prefix=description)
        return self.last_predictions

    # -- the best validation weights -----------------------------------------------------------------------------------
    def _keep_if_best(self, metrics: dict[str, float]) -> None:
        f1 = metrics.get("eval_f1")
        # A tie keeps the later epoch by default: a small validation split ties often (one entity apart), and the
        # later model has trained beta longer (the main job's beta AUC came from epoch 3 of 7 on a tie otherwise).
        later_wins = getattr(self.args, "best_model_on_tie", "later") == "later"
        if f1 is None or f1 < self.best["f1"] or (f1 == self.best["f1"] and not later_wins):
            return
        self.best = {"f1": f1, "epoch": round(self.state.epoch or 0), "validation": self.last_predictions.metrics}
        model = self.accelerator.unwrap_model(self.model)
        self.best_state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}

    def load_best(self) -> None:
        """Puts the best validation weights back into the model (after training)."""
        if self.best_state is not None:
            self.accelerator.unwrap_model(self.model).load_state_dict(self.best_state)

    def save_best_into(self, folder: Path) -> None:
        """Writes the best weights and their scores into a checkpoint folder, then marks the checkpoint complete."""
        if self.best_state is not None:
            save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(folder / BEST_WEIGHTS))
        # the losses of the epoch so far: a resume inside an epoch logs that epoch's mean over all its updates
        (folder / BEST_STATE).write_text(json.dumps({**self.best, "epoch_losses": self.epoch_losses}))
        arguments = self.args.to_dict()
        (folder / RESUME_ARGUMENTS).write_text(json.dumps({k: arguments.get(k) for k in TRAINING_FIELDS}, default=str))
        (folder / COMPLETE_MARKER).write_text("")

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`; a resume first checks that the model configuration and the arguments that change training
        are the checkpoint's (one line listing the differences otherwise), then restores the best weights so far."""
        if resume_from_checkpoint:
            folder = Path(
                resume_from_checkpoint
                if isinstance(resume_from_checkpoint, str)
                else latest_complete_checkpoint(Path(self.args.output_dir)) or ""
            )
            check_resume(self, folder)
            if (folder / BEST_STATE).exists():
                self.restore_best_from(folder)
            resume_from_checkpoint = str(folder)
        self.restore_negative_memory(Path(resume_from_checkpoint) if resume_from_checkpoint else None)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _negative_memory(self) -> Any:
        model = self.accelerator.unwrap_model(self.model)
        return getattr(getattr(model, "rap", model), "negative_memory", None)

    def save_negative_memory(self, folder: Path) -> None:
        """This process's pictures of the matching loss's memory (`RAPConfig.relevance_negative_memory`)."""
        memory = self._negative_memory()
        if memory is not None and len(memory):
            folder.mkdir(parents=True, exist_ok=True)
            save_file(memory.state(), str(folder / NEGATIVE_MEMORY.format(self.args.process_index)))

    def restore_negative_memory(self, folder: Path | None) -> None:
        """The memory as the checkpoint `folder` left it (empty for a fresh run, or a checkpoint without one)."""
        memory = self._negative_memory()
        path = folder / NEGATIVE_MEMORY.format(self.args.process_index) if folder else None
        if memory is not None:
            memory.load(load_file(str(path)) if path is not None and path.exists() else {})

    def summed_epoch_losses(self) -> tuple[float, int]:
        """(sum, count) of this epoch's training losses over all processes (each process records its own batches)."""
        local = torch.tensor([sum(self.epoch_losses), len(self.epoch_losses)], dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.reduce(local.to(self.args.device), reduction="sum").cpu()
        return float(local[0]), int(local[1])

    def restore_best_from(self, folder: Path) -> None:
        """Reads the best weights and scores a checkpoint holds (resume)."""
        self.best = json.loads((folder / BEST_STATE).read_text())
        # the first process carries the epoch's losses so far of all processes (`BestModelCallback.on_save`)
        self.epoch_losses = list(self.best.pop("epoch_losses", [])) if self.is_world_process_zero() else []
        if (folder / BEST_WEIGHTS).exists():
            self.best_state = load_file(str(folder / BEST_WEIGHTS))

    # -- saving --------------------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; in the final folder without the pickled arguments and with the pipeline code and the
        model card (README.md, from `model_card_data`); then the Hub push it would do."""
        check_finite_weights(self.accelerator.unwrap_model(self.model))
        super().save_model(output_dir, _internal_call=True)
        folder = Path(output_dir or self.args.output_dir)
        if folder.resolve() == Path(self.args.output_dir).resolve() and self.is_world_process_zero():
            # the pickled arguments would carry this machine's paths
            (folder / "training_args.bin").unlink(missing_ok=True)
            model = self.accelerator.unwrap_model(self.model)  # + what transformers.pipeline(model=folder) needs
            save_pipeline_code(RAPPipeline(model, self.processing_class, device=model.device), folder)
            if model.config.text_encoder_lora:
                save_text_encoder_adapter(model, folder / TEXT_ENCODER_ADAPTER)
            save_model_card(self.model_card_data, folder / "README.md")
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Upload RAP model", blocking=True)

    def create_model_card(self, *args, **kwargs) -> None:
        """RAP's card is written by `save_model` from `model_card_data`; the generic Trainer card would replace it."""


class BestModelCallback(TrainerCallback):
    """Epoch losses into the log history and the best weights into each checkpoint (an exact resume)."""

    def __init__(self, trainer: RAPTrainer):
        self.trainer = trainer

    def _log_epoch_loss(self, state) -> None:
        total, count = self.trainer.summed_epoch_losses()
        if count:  # logged into trainer_state.json, so a resumed run keeps the losses of the epochs before
            state.log_history.append(
                {"epoch": round(state.epoch), "epoch_loss": total / count, "step": state.global_step}
            )
        self.trainer.epoch_losses = []

    def on_step_end(self, args, state, control, **kwargs):
        # transformers saves once more at the last step; a finished run has nothing to resume, so skip that write
        regular = args.save_strategy == "steps" and args.save_steps and state.global_step % args.save_steps == 0
        if state.global_step >= state.max_steps and args.save_strategy == "steps" and not regular:
            control.should_save = False
        # A save on an epoch's last update would precede that epoch's evaluation: save after it instead.
        epoch_end = state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-6
        if control.should_save and epoch_end and args.eval_strategy == "epoch" and state.global_step < state.max_steps:
            control.should_save, self.save_after_evaluation = False, True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        self._log_epoch_loss(state)
        if getattr(self, "save_after_evaluation", False):  # the Trainer evaluates, then saves
            control.should_save, self.save_after_evaluation = True, False
        return control

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        gradients = [p.grad for p in model.parameters() if p.grad is not None]
        if gradients and not torch.isfinite(torch.nn.utils.get_total_norm(gradients)):
            names = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
            raise FloatingPointError(
                f"update {state.global_step + 1}: non-finite gradient in {names[:3]}; training "
                "stopped, nothing saved (lower the learning rate, check the inputs)"
            )

    def on_save(self, args, state, control, **kwargs):
        # each process's memory before the collective below, so it is on disk before the completion marker
        self.trainer.save_negative_memory(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        total, count = self.trainer.summed_epoch_losses()  # every process: a collective under DDP
        # from here the first process carries the epoch's losses of all processes (what the checkpoint stores)
        self.trainer.epoch_losses = [total / count] * count if count and state.is_world_process_zero else []
        if state.is_world_process_zero:
            self.trainer.save_best_into(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Fields where two config dicts differ (nested sub-configs included; versions and source paths ignored)."""
    ignored = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype"}
    differences = []
    for key in sorted(set(saved) | set(current)):
        if key in ignored:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            differences += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            differences.append(f"{prefix}{key} ({old!r} -> {new!r})")
    return differences


def check_resume(trainer: RAPTrainer, folder: Path) -> None:
    """Refuses a resume whose model configuration or training arguments differ from the checkpoint's."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint (no config.json)")
    model = trainer.accelerator.unwrap_model(trainer.model)
    saved = json.loads((folder / "config.json").read_text())
    differences = config_differences(saved, json.loads(model.config.to_json_string()))
    if (folder / RESUME_ARGUMENTS).is_file():
        arguments = json.loads((folder / RESUME_ARGUMENTS).read_text())
        current = json.loads(json.dumps({k: trainer.args.to_dict().get(k) for k in TRAINING_FIELDS}, default=str))
        differences += [
            f"--{k} ({arguments.get(k)!r} -> {current[k]!r})"
            for k in TRAINING_FIELDS
            if k in arguments and arguments.get(k) != current[k]
        ]
    if differences:
        raise ValueError(
            f"cannot resume from {folder}: the run differs from the checkpoint in {'; '.join(differences)}"
            " (resume with the checkpoint's settings, or start a new run in another --output_dir)"
        )


def non_finite_terms(outputs) -> str:
    """Which loss terms of a RAP output are not finite (the task loss, L_router, the matching loss)."""
    terms = {name: getattr(outputs, name, None) for name in ("task_loss", "router_loss", "relevance_matching_loss")}
    values = {name: float(value.detach()) for name, value in terms.items() if value is not None}
    bad = [f"{name} = {value}" for name, value in values.items() if not math.isfinite(value)]
    return "non-finite loss: " + (", ".join(bad) if bad else f"loss = {float(outputs.loss.detach())}")


def check_finite_weights(model: torch.nn.Module) -> None:
    """Refuses to save a model with non-finite weights."""
    state = model.state_dict()
    bad = [name for name, value in state.items() if value.is_floating_point() and not value.isfinite().all()]
    if bad:
        raise FloatingPointError(f"{len(bad)} weight tensors hold NaN or infinite values (e.g. {bad[:3]}): not saved")


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """Newest `checkpoint-N` whose save finished; one cut off by a kill while saving has no completion marker."""
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name[11:].isdigit()]
    return max(complete, key=lambda p: int(p.name[11:]), default=None)


__all__ = ["RAPTrainer", "RAPTrainingArguments", "Predictions", "latest_complete_checkpoint"]
