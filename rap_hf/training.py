"""Training and evaluation of RAP models on `transformers.Trainer` (used by `scripts/run_rap.py`).

One code path trains RAP and the text-only baseline (`--text_only_baseline`) on one CPU, one GPU or many processes
(DDP, FSDP, DeepSpeed through `accelerate launch` / the usual `TrainingArguments`). Defaults follow the paper's Sec.
4.2: AdamW, linear warm-up over the first 10% of the updates, NER batch 8 / 30 epochs / lr 3e-5, RE batch 16 / 15
epochs / lr 2e-5. What RAP adds to the Trainer: an optimizer group for the new layers (`new_params_learning_rate`),
CRF/relation metrics, best-model selection by validation F1 kept in memory (no checkpoint per improvement), the
frozen vision encoder's feature cache, `results.json`, figures and the model card.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import logging
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments

from . import __version__
from .configuration_rap import RAPConfig
from .data import load_dataset
from .encoders import (
    OFFLINE_TEXT_MODEL,
    OFFLINE_VISION_MODEL,
    cache_root,
    load_image_processor,
    resolve_text_model,
    resolve_vision_model,
)
from .metrics import compute_ner_metrics, compute_re_metrics
from .modeling_rap import RAPForMultimodalNER, RAPForMultimodalRE, RAPPreTrainedModel
from .pipelines import RAPPipeline, save_pipeline_code
from .processing_rap import RAPDataCollator, RAPProcessor

logger = logging.getLogger(__name__)

TASK_OF_DATASET = {"twitter2015": "ner", "twitter2017": "ner", "mnre": "re"}
# Sec. 4.2 of the paper: (batch size, epochs, learning rate) per task.
PAPER_DEFAULTS = {"ner": (8, 30, 3e-5), "re": (16, 15, 2e-5)}
BEST_WEIGHTS = "rap_best_model.safetensors"  # in a checkpoint: the best weights so far, for an exact resume
BEST_STATE = "rap_best.json"
COMPLETE_MARKER = "rap_checkpoint_complete"  # written last: a checkpoint without it was cut off while saving
TEXT_ENCODER_ADAPTER = "text_encoder_lora"  # peft-format copy of the text encoder's LoRA adapters in the final folder


@dataclass
class DataArguments:
    """Which corpus and how to read it."""

    dataset: str = field(default="twitter2017", metadata={"help": "twitter2015 | twitter2017 | mnre"})
    data_dir: str | None = field(
        default=None, metadata={"help": "Corpus folder in the HVPNeT/MKGformer layout; default: the bundled sample"}
    )
    text_only_data: bool = field(default=False, metadata={"help": "Ignore images even where the corpus has them"})
    max_length: int = field(default=128, metadata={"help": "Max sub-tokens per text (markers and specials included)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training split (debugging)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate validation and test splits"})
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cached visual features (shared by runs, keyed by encoder and image content); default: "
                          "$RAP_HF_CACHE or ~/.cache/huggingface/rap_hf/visual_features"},  # fmt: skip
    )
    no_feature_cache: bool = field(
        default=False, metadata={"help": "Run the vision encoder on pixels every step instead of caching features"}
    )


@dataclass
class ModelArguments:
    """Encoders and the RAPConfig switches of the paper's ablations; unset switches keep RAPConfig's defaults."""

    text_model: str = field(
        default=OFFLINE_TEXT_MODEL,
        metadata={"help": "Text encoder name or path; 'minilm' = the offline MiniLM-L6 (paper: bert-base-uncased)"},
    )
    vision_model: str | None = field(
        default=OFFLINE_VISION_MODEL,
        metadata={"help": "Vision encoder: any HF vision model with a pooled output or timm/... id (paper: "
                          "microsoft/resnet-101); 'efficientnet-lite0' = the offline ImageNet EfficientNet-Lite0; "
                          "'' = randomly initialised ResNet-101"},  # fmt: skip
    )
    text_only_baseline: bool = field(default=False, metadata={"help": "Train the text-only baseline (no image)"})
    paper_architecture: bool = field(
        default=False,
        metadata={"help": "The paper's architecture, equation by equation (RAPConfig.paper_fields: E_t from a second "
                          "encoder pass, d = hidden size, L = 4/3, m = 3 crops, beta = W_s r_g + b_s, tanh gate, no "
                          "matching loss or added normalisation; docs/design.md); slower"},
    )
    use_relevance_reasoning: bool | None = field(default=None, metadata={"help": "False: gate = 1 (Table 5 'MRR')"})
    fusion_units: str | None = field(default=None, metadata={"help": "Comma list of routing units (Table 5)"})
    routing_layers: int | None = field(default=None, metadata={"help": "L (Table 4); RAPConfig: 4 NER / 3 RE"})
    path_regularization_weight: float | None = field(default=None, metadata={"help": "gamma of Eq. 20 (Table 6)"})
    relevance_matching_weight: float | None = field(
        default=None, metadata={"help": "Weight of the image-text matching loss on beta (0 = the paper's loss)"}
    )
    prompt_length: int | None = field(default=None, metadata={"help": "m_p prompt positions per encoder layer"})
    freeze_text_encoder: bool | None = field(default=None, metadata={"help": "Pure P-tuning v2: freeze the encoder"})
    text_feature_source: str | None = field(default=None, metadata={"help": "E_t source: encoder | embeddings"})
    lora_r: int | None = field(
        default=None, metadata={"help": "LoRA rank of adapters on the text encoder (peft); its own weights stay frozen"}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="query,value", metadata={"help": "Comma list of encoder modules to adapt"})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON dict of further RAPConfig fields, e.g. '{\"relevance_dim\": 128}'"}
    )


@dataclass
class RAPTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's defaults per task (None = resolved from the dataset's task) and RAP's
    own options. Every other `TrainingArguments` option (`--bf16`, `--save_strategy`, `--save_total_limit`,
    `--report_to`, `--push_to_hub`, DeepSpeed/FSDP, ...) works as in transformers' example scripts."""

    output_dir: str = field(default="outputs/rap", metadata={"help": "Where the model, results and card go"})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Default 30 NER / 15 RE (paper)"})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Default 8 NER / 16 RE"})
    per_device_eval_batch_size: int = field(default=32)
    learning_rate: float | None = field(default=None, metadata={"help": "Encoder lr; default 3e-5 NER / 2e-5 RE"})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: a share of the updates if < 1 (paper: 0.1), else a count"}
    )
    weight_decay: float = field(default=0.01)
    eval_strategy: str = field(default="epoch", metadata={"help": "Validation F1 after every epoch picks the best"})
    logging_strategy: str = field(default="epoch")
    save_strategy: str = field(
        default="steps", metadata={"help": "Resumable checkpoints (model, optimizer, RNG); see --save_steps"}
    )
    save_total_limit: int | None = field(default=1, metadata={"help": "Checkpoints kept (newest first)"})
    metric_for_best_model: str | None = field(default="f1")
    greater_is_better: bool | None = field(default=True)
    hub_strategy: str = field(default="end", metadata={"help": "Push the final model, card and results once"})
    new_params_learning_rate: float | None = field(
        default=None,
        metadata={"help": "lr of the RAP layers and heads (not in the pretrained encoders); default: --learning_rate"},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Reuse an output_dir that already holds a run (otherwise refused)"}
    )
    stop_after_epoch: int | None = field(
        default=None, metadata={"help": "Checkpoint and stop (as if interrupted) after this epoch; resume later"}
    )
    make_figures: bool = field(default=True, metadata={"help": "Write routing/relevance PNGs for the model card"})

    def __post_init__(self):
        check_training_argument_fields(type(self))
        super().__post_init__()
        check_warmup_schedule(self)


# Fields RAPTrainingArguments adds to `TrainingArguments` and RAP's own code reads; every other field it declares
# must be one the installed `TrainingArguments` has, or a transformers release that drops it would ignore it silently.
RAP_OWN_TRAINING_FIELDS = frozenset({"new_params_learning_rate", "overwrite_output_dir", "stop_after_epoch",
                                     "make_figures"})  # fmt: skip


def check_training_argument_fields(arguments_class: type) -> None:
    """Refuses, at start-up, a field that `arguments_class` sets and the installed `TrainingArguments` does not read."""
    import transformers

    declared = set(vars(arguments_class).get("__annotations__", {}))
    known = {f.name for f in dataclasses.fields(TrainingArguments)} | RAP_OWN_TRAINING_FIELDS
    unread = sorted(declared - known)
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
def resolve_training_defaults(task: str, args: RAPTrainingArguments) -> RAPTrainingArguments:
    """The paper's batch size, epochs and learning rate for `task` wherever the command line left them unset."""
    batch, epochs, lr = PAPER_DEFAULTS[task]
    args.per_device_train_batch_size = args.per_device_train_batch_size or batch
    args.num_train_epochs = args.num_train_epochs or epochs
    args.learning_rate = args.learning_rate or lr
    # The paper trains with one lr; Adam at 1e-3 on the prompt projection grew prefixes that swamped the encoder.
    args.new_params_learning_rate = args.new_params_learning_rate or args.learning_rate
    return args


def rap_config_kwargs(task: str, dataset_dict: datasets.DatasetDict, model_args: ModelArguments) -> dict[str, Any]:
    """RAPConfig fields from the command line (only those set) and the corpus labels."""
    label_feature = dataset_dict["train"].features["ner_tags"].feature if task == "ner" else None
    label_feature = label_feature or dataset_dict["train"].features["relation"]
    labels = list(label_feature.names)
    switches = ("use_relevance_reasoning", "routing_layers", "path_regularization_weight", "relevance_matching_weight",
                "prompt_length", "freeze_text_encoder", "text_feature_source")  # fmt: skip
    kwargs: dict[str, Any] = {name: getattr(model_args, name) for name in switches
                              if getattr(model_args, name) is not None}  # fmt: skip
    if model_args.fusion_units:
        kwargs["fusion_units"] = [unit.strip() for unit in model_args.fusion_units.split(",") if unit.strip()]
    if model_args.lora_r:
        kwargs["text_encoder_lora"] = {"r": model_args.lora_r, "lora_alpha": model_args.lora_alpha,
                                       "lora_dropout": model_args.lora_dropout,
                                       "target_modules": [m.strip() for m in model_args.lora_target_modules.split(",")]}
    kwargs.update(task=task, multimodal=not model_args.text_only_baseline, id2label=dict(enumerate(labels)),
                  label2id={label: i for i, label in enumerate(labels)})  # fmt: skip
    kwargs.update(json.loads(model_args.config_overrides) if model_args.config_overrides else {})
    if model_args.paper_architecture:  # explicit switches and overrides still win
        hidden = AutoConfig.from_pretrained(resolve_text_model(model_args.text_model)).hidden_size
        kwargs = {**RAPConfig.paper_fields(task, hidden), **kwargs}
    return kwargs


def build_model_and_processor(task: str, dataset_dict, model_args: ModelArguments, max_length: int):
    """Pretrained encoders + fresh RAP layers, and the matching processor (entity markers added for RE)."""
    text_path = resolve_text_model(model_args.text_model)
    vision_path = resolve_vision_model(model_args.vision_model) if not model_args.text_only_baseline else None
    kwargs = rap_config_kwargs(task, dataset_dict, model_args)
    processor = RAPProcessor.from_text_model(
        text_path, image_processor=load_image_processor(vision_path or None), max_length=max_length,
        num_crops=kwargs.get("num_crops", 3),
    )  # fmt: skip
    kwargs.setdefault("prompt_source_length", max(max_length, 128))
    if task == "re":
        marker_ids = processor.marker_ids
        kwargs["subject_marker_token_id"] = marker_ids[processor.entity_markers[0]]
        kwargs["object_marker_token_id"] = marker_ids[processor.entity_markers[2]]
    model_class = RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE
    model = model_class.from_text_vision_pretrained(model_args.text_model, model_args.vision_model or None, **kwargs)
    if len(processor.tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(processor.tokenizer))
    return model, processor


def parameter_groups(model: RAPPreTrainedModel, args: RAPTrainingArguments) -> list[dict[str, Any]]:
    """Encoder parameters at the encoder lr; the new RAP layers and heads at their own lr; no decay on norms/biases."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        # LoRA adapters are new weights too, even inside the encoder
        pretrained = (".text_encoder." in name or ".vision_encoder." in name) and "lora_" not in name
        decay = parameter.dim() > 1 and "norm" not in name.lower()
        groups.setdefault((pretrained, decay), []).append(parameter)
    return [
        {
            "params": params,
            "lr": args.learning_rate if pretrained else args.new_params_learning_rate,
            "weight_decay": args.weight_decay if decay else 0.0,
        }
        for (pretrained, decay), params in groups.items()
    ]


def prepare_splits(
    dataset_dict: datasets.DatasetDict, processor: RAPProcessor, task: str, data_args: DataArguments
) -> datasets.DatasetDict:
    """Tokenise every split (`word_ids` kept for NER), keep images for the collator, add `example_index`."""
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_eval_samples}  # fmt: skip
    prepared, tokenizing = {}, tokenization_fingerprint(processor, task, data_args.max_length)
    for split, dataset in dataset_dict.items():
        if limits.get(split):
            dataset = dataset.select(range(min(limits[split], len(dataset))))
        dataset = dataset.map(lambda _, i: {"example_index": i}, with_indices=True)
        prepared[split] = dataset.map(
            processor.preprocess, batched=True, fn_kwargs={"task": task, "max_length": data_args.max_length},
            desc=f"Tokenising {split}", new_fingerprint=hash_text(dataset._fingerprint, tokenizing),
        )
    return datasets.DatasetDict(prepared)


def hash_text(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def tokenization_fingerprint(processor: RAPProcessor, task: str, max_length: int) -> str:
    """What tokenising depends on (tokenizer, markers, the processing code, arguments), hashed in milliseconds:
    datasets' own fingerprint pickles the tokenizer with dill, ~0.7 s per split and run."""
    tokenizer = processor.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    code = Path(sys.modules[RAPProcessor.__module__].__file__).read_text()
    markers = json.dumps(processor.entity_markers)
    return hash_text(vocabulary, markers, code, task, str(max_length), type(tokenizer).__name__)


MODEL_COLUMNS = {"input_ids", "attention_mask", "token_type_ids", "word_start_mask", "entity_positions", "labels",
                 "example_index", "image", "crops", "visual_features", "image_mask"}  # fmt: skip


class TrainingCollator(RAPDataCollator):
    """`RAPDataCollator` over the model columns of a prepared split, also carrying `example_index` (to map gathered
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


def make_loader(dataset, collator, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A plain loader over a prepared split (scripts that run the model outside the Trainer)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip


def feature_cache_dir(data_args: DataArguments) -> Path:
    return Path(data_args.feature_cache_dir) if data_args.feature_cache_dir else cache_root() / "visual_features"


def attach_visual_features(prepared, model, processor, cache_dir: Path, args: TrainingArguments):
    """Runs the (frozen) vision encoder once per image and stores its features with the dataset."""
    from .data.features import VisualFeatureCache

    cache = VisualFeatureCache(cache_dir, model=model, processor=processor, device=args.device)
    with args.main_process_first(desc="visual features"):  # rank 0 fills the cache, the others read it
        return datasets.DatasetDict({split: cache.attach(ds) for split, ds in prepared.items()})


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
        pred = processor.post_process_ner(np.asarray(values)[order].tolist(), rows["word_ids"],
                                          [len(g) for g in gold], id2label=dict(enumerate(labels)))  # fmt: skip
        metrics = compute_ner_metrics(pred, gold)
    else:
        gold = [labels[r] for r in rows["relation"]]
        pred = [labels[int(v)] for v in np.asarray(values)[order]]
        metrics = compute_re_metrics(pred, gold, labels)
    routing = np.asarray(routing)[order]
    return Predictions(metrics, gold, pred, [float(b) for b in np.asarray(relevance)[order]],
                       routing.tolist() if routing.size else [[] for _ in order],
                       [bool(u) for u in np.asarray(image_used)[order]])  # fmt: skip


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("precision", "recall", "f1") if k in metrics}


# ---------------------------------------------------------------------------------------------------------------------
# The Trainer
# ---------------------------------------------------------------------------------------------------------------------
class RAPTrainer(Trainer):
    """`Trainer` with RAP's optimizer groups, CRF/relation metrics and best-by-validation-F1 weights in memory.

    The best weights are copied to memory (not to disk) whenever validation F1 improves and written only into the
    checkpoints the save strategy asks for, so a run writes its model once at the end plus what resume needs.
    """

    def __init__(self, *args, task: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.compute_metrics = self._compute_metrics
        self.scored_dataset: datasets.Dataset | None = None
        self.last_predictions: Predictions | None = None
        self.best: dict[str, Any] = {"f1": -1.0, "epoch": None, "validation": None}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_losses: list[float] = []
        self.add_callback(RAPCallback(self))

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
            self.epoch_losses.append(float(outputs.loss.detach()))
        return (outputs.loss, outputs) if return_outputs else outputs.loss

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
        self.last_predictions = score_predictions(evaluation.predictions, evaluation.label_ids, self.scored_dataset,
                                                  self.task, self.processing_class, model.config.id2label)  # fmt: skip
        return summary(self.last_predictions.metrics)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        self.scored_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if eval_dataset is None and metric_key_prefix == "eval":  # the validation split: keep the best weights
            self._keep_if_best(metrics)
        return metrics

    def evaluate_split(self, dataset: datasets.Dataset, description: str = "test") -> Predictions:
        """Predictions and metrics of the current model on any prepared split (test, or a variant of it)."""
        self.scored_dataset = dataset
        self.predict(dataset, metric_key_prefix=description)
        return self.last_predictions

    def _keep_if_best(self, metrics: dict[str, float]) -> None:
        f1 = metrics.get("eval_f1")
        if f1 is None or f1 <= self.best["f1"]:
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
        (folder / BEST_STATE).write_text(json.dumps(self.best))
        (folder / COMPLETE_MARKER).write_text("")

    def restore_best_from(self, folder: Path) -> None:
        """Reads the best weights and scores a checkpoint holds (resume)."""
        self.best = json.loads((folder / BEST_STATE).read_text())
        if (folder / BEST_WEIGHTS).exists():
            self.best_state = load_file(str(folder / BEST_WEIGHTS))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; in the final folder without the pickled arguments and with the pipeline code; then the
        Hub push it would do."""
        super().save_model(output_dir, _internal_call=True)
        folder = Path(output_dir or self.args.output_dir)
        if folder.resolve() == Path(self.args.output_dir).resolve() and self.is_world_process_zero():
            # results.json records the arguments; the pickled copy would carry this machine's paths
            (folder / "training_args.bin").unlink(missing_ok=True)
            model = self.accelerator.unwrap_model(self.model)  # + what transformers.pipeline(model=folder) needs
            save_pipeline_code(RAPPipeline(model, self.processing_class, device=model.device), folder)
            if model.config.text_encoder_lora:
                save_text_encoder_adapter(model, folder / TEXT_ENCODER_ADAPTER)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Upload RAP model", blocking=True)

    def create_model_card(self, *args, **kwargs) -> None:
        """RAP writes its own card (from results.json) before pushing; the generic Trainer card would replace it."""


class RAPCallback(TrainerCallback):
    """Epoch losses into the log history, best weights into each checkpoint, and the `--stop_after_epoch` cut."""

    def __init__(self, trainer: RAPTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        losses = self.trainer.epoch_losses
        if losses:  # logged into trainer_state.json, so a resumed run keeps the losses of the epochs before
            state.log_history.append({"epoch": round(state.epoch), "epoch_loss": sum(losses) / len(losses),
                                      "step": state.global_step})  # fmt: skip
        self.trainer.epoch_losses = []
        if args.stop_after_epoch is not None and round(state.epoch) >= args.stop_after_epoch:
            control.should_save = control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # transformers saves once more at the last step; a finished run has nothing to resume, so skip that write
        regular = args.save_strategy == "steps" and args.save_steps and state.global_step % args.save_steps == 0
        if state.global_step >= state.max_steps and args.save_strategy == "steps" and not regular:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.trainer.save_best_into(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------
def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """Newest `checkpoint-N` whose save finished; one cut off by a kill while saving has no completion marker."""
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name[11:].isdigit()]
    return max(complete, key=lambda p: int(p.name[11:]), default=None)


def resolve_resume(args: RAPTrainingArguments) -> Path | None:
    """`--resume_from_checkpoint latest|PATH` -> a complete checkpoint folder (clear errors otherwise)."""
    target = args.resume_from_checkpoint
    if not target:
        return None
    path = latest_complete_checkpoint(Path(args.output_dir)) if target == "latest" else Path(target)
    if path is None or not path.exists():
        raise FileNotFoundError(f"--resume_from_checkpoint {target}: no complete checkpoint under {args.output_dir}")
    if not (path / COMPLETE_MARKER).exists():
        raise ValueError(f"{path} was not saved completely (interrupted while saving?); resume from another one")
    return path


def check_output_dir(args: RAPTrainingArguments) -> None:
    """Refuses to mix two runs in one folder, as transformers' example scripts do."""
    folder = Path(args.output_dir)
    holds_run = folder.is_dir() and any(p.name != "runs" for p in folder.iterdir())
    if holds_run and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise ValueError(
            f"output_dir {folder} already holds a run; pass --overwrite_output_dir to replace it or "
            "--resume_from_checkpoint latest to continue it"
        )


def check_task(data_args: DataArguments, model_args: ModelArguments) -> str:
    """The task of the dataset, refusing `--config_overrides` that name another one (the model would not load)."""
    if data_args.dataset not in TASK_OF_DATASET:
        raise ValueError(f"--dataset must be one of {sorted(TASK_OF_DATASET)}, got {data_args.dataset!r}")
    task = TASK_OF_DATASET[data_args.dataset]
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if overrides.get("task", task) != task:
        raise ValueError(f"--config_overrides sets task {overrides['task']!r} but --dataset {data_args.dataset} is a "
                         f"{task} corpus")  # fmt: skip
    return task


def build_trainer(model_args: ModelArguments, data_args: DataArguments, args: RAPTrainingArguments) -> RAPTrainer:
    """Corpus, model, processor, feature cache and the Trainer, ready to `train()`."""
    task = check_task(data_args, model_args)
    resolve_training_defaults(task, args)
    text_only = data_args.text_only_data or model_args.text_only_baseline
    with args.main_process_first(desc="corpus"):
        raw = load_dataset(data_args.dataset, data_args.data_dir, text_only=text_only)
    from transformers import set_seed

    set_seed(args.seed)
    model, processor = build_model_and_processor(task, raw, model_args, data_args.max_length)
    with args.main_process_first(desc="tokenising"):
        prepared = prepare_splits(raw, processor, task, data_args)
    if text_only or not model.config.multimodal:  # nothing to look at: no pictures decoded, no vision encoder run
        prepared = prepared.remove_columns([c for c in ("image", "crops") if c in prepared["train"].column_names])
    elif not data_args.no_feature_cache and model.config.freeze_vision_encoder:
        prepared = attach_visual_features(prepared, model.base_model, processor, feature_cache_dir(data_args), args)
    args.remove_unused_columns = False  # the collator picks the model columns
    trainer = RAPTrainer(model=model, args=args, train_dataset=prepared["train"], eval_dataset=prepared["validation"],
                         data_collator=TrainingCollator(processor=processor, num_crops=model.config.num_crops),
                         processing_class=processor, task=task)  # fmt: skip
    trainer.prepared, trainer.model_args, trainer.data_args = prepared, model_args, data_args
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("RAP %s on %s: %d train examples, %d parameters (%d trainable), %d processes", task, data_args.dataset,
                len(prepared["train"]), model.num_parameters(), trainable, args.world_size)  # fmt: skip
    return trainer


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch: mean training loss and validation P/R/F1, from the Trainer's log history."""
    losses = {entry["epoch"]: entry["epoch_loss"] for entry in log_history if "epoch_loss" in entry}
    history = []
    for entry in log_history:
        if "eval_f1" in entry:
            epoch = round(entry["epoch"])
            history.append({"epoch": epoch, "loss": losses.get(epoch),
                            "validation": {k: entry[f"eval_{k}"] for k in ("precision", "recall", "f1")}})  # fmt: skip
    return history


def train_and_test(trainer: RAPTrainer) -> tuple[dict[str, Any], Predictions] | None:
    """Trains (or resumes), then tests the best validation model once: (results, test predictions); None when
    stopped by `--stop_after_epoch`."""
    args = trainer.args
    checkpoint = resolve_resume(args)
    if checkpoint is not None:
        trainer.restore_best_from(checkpoint)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - start
    if args.stop_after_epoch is not None and trainer.state.epoch < args.num_train_epochs:
        logger.info("Stopped after epoch %d as asked (--stop_after_epoch)", round(trainer.state.epoch))
        return None
    trainer.load_best()
    start = time.perf_counter()
    test = trainer.evaluate_split(trainer.prepared["test"], "test")
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "task": trainer.task,
        "dataset": trainer.data_args.dataset,
        "data_dir": public_value(trainer.data_args.data_dir) if trainer.data_args.data_dir else "bundled sample",
        "command": shlex.join(["accelerate", "launch", *map(public_value, sys.argv)]) if sys.argv else "",
        "config": model.config.to_diff_dict(),
        "model_args": {k: public_value(v) for k, v in asdict(trainer.model_args).items()},
        "data_args": {k: public_value(v) for k, v in asdict(trainer.data_args).items()},
        "training_args": {k: public_value(v) for k, v in args.to_dict().items() if k != "logging_dir"},
        "versions": library_versions(),
        "num_processes": args.world_size,
        "timings": {"train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start},
        "best_epoch": trainer.best["epoch"],
        "validation": trainer.best["validation"],
        "test": test.metrics,
        "num_train_examples": len(trainer.prepared["train"]),
        "num_test_examples": len(test.labels),
        "history": epoch_history(trainer.state.log_history),
    }, test


def public_value(value: Any) -> Any:
    """How results.json (and the card made from it) records a value: an absolute path becomes relative to the
    working directory when inside it, else its last part; never a path of this machine."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(value)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def library_versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"rap_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "accelerate": accelerate.__version__,
            "python": sys.version.split()[0]}  # fmt: skip


def run(model_args: ModelArguments, data_args: DataArguments, args: RAPTrainingArguments) -> dict[str, Any] | None:
    """Trains, tests and writes everything (model, processor, results.json, figures, card; Hub push when asked);
    returns the results (None when stopped early)."""
    from .outputs import write_run_outputs

    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id org/name")
    check_task(data_args, model_args)
    check_output_dir(args)
    trainer = build_trainer(model_args, data_args, args)
    finished = train_and_test(trainer)
    if finished is None:
        return None
    results, test = finished
    if trainer.is_world_process_zero():
        write_run_outputs(results, test, trainer.accelerator.unwrap_model(trainer.model), Path(args.output_dir), args)
    trainer.save_model(args.output_dir)  # the best weights, processor, remote code; with --push_to_hub, the upload
    return results


__all__ = ["DataArguments", "ModelArguments", "RAPTrainingArguments", "RAPTrainer", "build_trainer", "run"]
