"""A training run as `scripts/run_rap.py` does it: corpus, model, `rap_hf.RAPTrainer`, test of the best validation
model, and everything it writes (model, results.json, figures, card; Hub push when asked).

The arguments come from three dataclasses: `ModelArguments` (encoders, and every `RAPConfig` field as an option,
generated from RAPConfig so that each field is declared once), `DataArguments` and `RunArguments`
(`rap_hf.RAPTrainingArguments` with the paper's per-task defaults and the run's own options).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import sys
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback, set_seed

from rap_hf import RAPConfig, load_dataset
from rap_hf.encoders import OFFLINE_TEXT_MODEL, OFFLINE_VISION_MODEL, build_model_and_processor
from rap_hf.model_card import library_versions
from rap_hf.trainer import (
    COMPLETE_MARKER,
    PAPER_DEFAULTS,
    Predictions,
    RAPTrainer,
    RAPTrainingArguments,
    TrainingCollator,
    latest_complete_checkpoint,
    tokenize_split,
)

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = "outputs/rap"
# Epochs, encoder lr and RAP-layer lr on the bundled sample (the main job: 3 CPU minutes; docs/benchmarks_speed.md):
# the paper's encoder lr, its new layers at 1e-3 so that beta learns within the 7 epochs (docs/benchmarks_noise.md).
SAMPLE_DEFAULTS = (7, 3e-5, 1e-3)
# The main job (the bundled Twitter-2017 sample): 5 epochs, and E_t from the text encoder's output (the paper's
# Sec. 3.2) rather than its word embeddings: beta's AUC 0.906 / 0.863 / 0.884 on seeds 42 / 1 / 2 against
# 0.868 / 0.819 / 0.826 at 7 epochs on embeddings, in about the same time (docs/design.md). Where left unset.
MAIN_JOB_EPOCHS, MAIN_JOB_TEXT_FEATURES = 5, "encoder"
TASK_OF_DATASET = {"twitter2015": "ner", "twitter2017": "ner", "mnre": "re"}


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


# RAPConfig fields that are not command-line options: set from the corpus, the encoders or other options.
NOT_OPTIONS = {
    "text_config",
    "vision_config",
    "task",
    "multimodal",
    "text_encoder_lora",
    "vision_feature_size",
    "subject_marker_token_id",
    "object_marker_token_id",
}


def config_field_help(name: str) -> str:
    """A field's description in RAPConfig's docstring (the lines under `name (type, ...):`)."""
    match = re.search(rf"\n {{8}}[\w, ]*\b{name}\b[\w, ]* \(`[^\n]*:\n((?: {{12}}.*\n)+)", RAPConfig.__doc__)
    return " ".join(match.group(1).split()) if match else ""


def option_type(annotation: Any) -> tuple[type, dict[str, Any]]:
    """A command-line type (and argparse metadata) for a RAPConfig field type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, {"choices": list(typing.get_args(annotation))}
    if annotation in (bool, int, float, str):
        return annotation, {}
    if {float, int} & set(args) and not {list, dict} & {typing.get_origin(a) for a in args}:
        return (float if float in args else int), {}
    literal = [a for a in args if typing.get_origin(a) is typing.Literal]
    if literal:
        return str, {"choices": list(typing.get_args(literal[0]))}
    return str, {"help_suffix": " (comma-separated list)"}


def config_options() -> list[tuple[str, Any, Any]]:
    """`make_dataclass` fields for every settable RAPConfig field: default None = RAPConfig's own default."""
    options = []
    for name, annotation in vars(RAPConfig)["__annotations__"].items():  # RAPConfig's own fields, in order
        if name in NOT_OPTIONS:
            continue
        kind, metadata = option_type(annotation)
        help_text = f"RAPConfig.{name}: {config_field_help(name)}{metadata.pop('help_suffix', '')}"
        options.append((name, kind | None, field(default=None, metadata={"help": help_text, **metadata})))
    return options


@dataclass
class EncoderArguments:
    """Encoders, the model variant and LoRA; every RAPConfig field follows as an option of its own."""

    text_model: str = field(
        default=OFFLINE_TEXT_MODEL,
        metadata={"help": "Text encoder name or path; 'minilm' = the offline MiniLM-L6 (paper: bert-base-uncased)"},
    )
    vision_model: str | None = field(
        default=OFFLINE_VISION_MODEL,
        metadata={
            "help": "Vision encoder: any HF vision model with a pooled output or timm/... id (paper: "
            "microsoft/resnet-101); 'efficientnet-lite0' = the offline ImageNet EfficientNet-Lite0; "
            "'' = randomly initialised ResNet-101"
        },
    )
    text_only_baseline: bool = field(default=False, metadata={"help": "Train the text-only baseline (no image)"})
    paper_architecture: bool = field(
        default=False,
        metadata={
            "help": "The paper's architecture, equation by equation (RAPConfig.paper_fields: E_t from a second "
            "encoder pass, d = hidden size, L = 4/3, m = 3 crops, beta = W_s r_g + b_s, tanh gate, no "
            "matching loss or added normalisation; docs/design.md); slower"
        },
    )
    lora_r: int | None = field(
        default=None, metadata={"help": "LoRA rank of adapters on the text encoder (peft); its own weights stay frozen"}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(default="query,value", metadata={"help": "Comma list of encoder modules to adapt"})
    config_overrides: str | None = field(
        default=None, metadata={"help": "JSON dict of RAPConfig fields, e.g. '{\"relevance_dim\": 128}'"}
    )


ModelArguments = dataclasses.make_dataclass("ModelArguments", config_options(), bases=(EncoderArguments,))
ModelArguments.__doc__ = EncoderArguments.__doc__


@dataclass
class RunArguments(RAPTrainingArguments):
    """`RAPTrainingArguments` with the paper's defaults per task (None = resolved from the dataset's task) and the
    run's own options. Every other `TrainingArguments` option (`--bf16`, `--save_strategy`, `--push_to_hub`,
    DeepSpeed/FSDP, ...) works as in transformers' example scripts."""

    output_dir: str | None = field(
        default=None,
        metadata={
            "help": f"Where the model, results and card go (default {DEFAULT_OUTPUT_DIR}, which the next run without "
            "--output_dir replaces; a folder you name is never replaced without --overwrite_output_dir)"
        },
    )
    num_train_epochs: float | None = field(
        default=None, metadata={"help": "Default 30 NER / 15 RE (paper); 10 on the bundled sample"}
    )
    per_device_train_batch_size: int | None = field(default=None, metadata={"help": "Default 8 NER / 16 RE"})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Encoder lr; default 3e-5 NER / 2e-5 RE (paper)"}
    )
    hub_strategy: str = field(default="end", metadata={"help": "Push the final model, card and results once"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Reuse an output_dir that already holds a run (otherwise refused)"}
    )
    stop_after_epoch: int | None = field(
        default=None, metadata={"help": "Checkpoint and stop (as if interrupted) after this epoch; resume later"}
    )
    make_figures: bool = field(default=True, metadata={"help": "Write routing/relevance PNGs for the model card"})
    push_space: bool = field(
        default=False,
        metadata={
            "help": "With --push_to_hub: also upload the `rap-hf demo` Gradio page of the model as a Space "
            "(--space_id, default <hub_model_id>-demo)"
        },
    )
    space_id: str | None = field(default=None, metadata={"help": "Space of --push_space (org/name)"})

    own_fields = frozenset({"overwrite_output_dir", "stop_after_epoch", "make_figures", "push_space", "space_id"})

    def __post_init__(self):
        self.default_output_dir = self.output_dir is None  # not a field: the run replaces its own default folder
        if self.default_output_dir:
            self.output_dir = DEFAULT_OUTPUT_DIR
        super().__post_init__()


def resolve_training_defaults(task: str, args: RunArguments, bundled_sample: bool = False) -> RunArguments:
    """The paper's batch size, epochs and learning rate for `task` wherever the command line left them unset; on the
    bundled sample, the main job's (SAMPLE_DEFAULTS: the paper's 30 epochs at 3e-5 learn nothing from 450 tweets)."""
    batch, epochs, lr = PAPER_DEFAULTS[task]
    new_lr = None
    if bundled_sample:
        epochs, lr, new_lr = SAMPLE_DEFAULTS
    args.per_device_train_batch_size = args.per_device_train_batch_size or batch
    args.num_train_epochs = args.num_train_epochs or epochs
    args.learning_rate = args.learning_rate or lr
    # The paper trains with one lr; Adam at 1e-3 on the prompt projection grew prefixes that swamped the encoder.
    args.new_params_learning_rate = args.new_params_learning_rate or new_lr or args.learning_rate
    return args


def resolve_main_job_defaults(data_args: DataArguments, model_args: ModelArguments, args: RunArguments) -> bool:
    """On the main job's corpus (the bundled Twitter-2017 sample) its epochs and text features where the command line
    left them unset; returns whether this is the main job."""
    main_job = data_args.data_dir is None and data_args.dataset == "twitter2017"
    if main_job:
        args.num_train_epochs = args.num_train_epochs or MAIN_JOB_EPOCHS
        model_args.text_feature_source = model_args.text_feature_source or MAIN_JOB_TEXT_FEATURES
    return main_job


def rap_config_kwargs(task: str, model_args: ModelArguments) -> dict[str, Any]:
    """RAPConfig fields from the command line (only those set): options, LoRA, overrides."""
    kwargs = {name: getattr(model_args, name) for name, _, _ in config_options()}
    kwargs = {name: value for name, value in kwargs.items() if value is not None}
    if isinstance(kwargs.get("fusion_units"), str):
        kwargs["fusion_units"] = [unit.strip() for unit in kwargs["fusion_units"].split(",") if unit.strip()]
    if model_args.lora_r:
        kwargs["text_encoder_lora"] = {
            "r": model_args.lora_r,
            "lora_alpha": model_args.lora_alpha,
            "lora_dropout": model_args.lora_dropout,
            "target_modules": [m.strip() for m in model_args.lora_target_modules.split(",")],
        }
    kwargs.update(json.loads(model_args.config_overrides) if model_args.config_overrides else {})
    return kwargs


def corpus_labels(task: str, dataset_dict: datasets.DatasetDict) -> list[str]:
    features = dataset_dict["train"].features
    return list((features["ner_tags"].feature if task == "ner" else features["relation"]).names)


def check_task(data_args: DataArguments, model_args: ModelArguments) -> str:
    """The task of the dataset, refusing `--config_overrides` that name another one (the model would not load)."""
    if data_args.dataset not in TASK_OF_DATASET:
        raise ValueError(f"--dataset must be one of {sorted(TASK_OF_DATASET)}, got {data_args.dataset!r}")
    task = TASK_OF_DATASET[data_args.dataset]
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    if overrides.get("task", task) != task:
        raise ValueError(
            f"--config_overrides sets task {overrides['task']!r} but --dataset {data_args.dataset} is a {task} corpus"
        )
    return task


def limited(dataset_dict: datasets.DatasetDict, data_args: DataArguments) -> datasets.DatasetDict:
    """The splits cut to `--max_train_samples` / `--max_eval_samples`."""
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_eval_samples,
    }
    return datasets.DatasetDict(
        {
            name: split.select(range(min(limits[name], len(split)))) if limits.get(name) else split
            for name, split in dataset_dict.items()
        }
    )


def model_and_processor(task: str, dataset_dict: datasets.DatasetDict, model_args: ModelArguments, max_length: int):
    """A fresh RAP model and its processor for the corpus labels and the command-line options."""
    config = {"multimodal": not model_args.text_only_baseline, **rap_config_kwargs(task, model_args)}
    return build_model_and_processor(
        task,
        corpus_labels(task, dataset_dict),
        model_args.text_model,
        model_args.vision_model,
        max_length,
        model_args.paper_architecture,
        **config,
    )


def prepare_splits(dataset_dict, processor, task: str, data_args: DataArguments) -> datasets.DatasetDict:
    """Every split cut to the limits and tokenised as the Trainer reads it (benchmarks that run the model by hand)."""
    return datasets.DatasetDict(
        {name: tokenize_split(split, processor, task, name) for name, split in limited(dataset_dict, data_args).items()}
    )


def make_loader(dataset, collator, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A plain loader over a prepared split (scripts that run the model outside the Trainer)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(seed),
    )


class StopAfterEpoch(TrainerCallback):
    """`--stop_after_epoch`: checkpoint and stop as if interrupted (the run resumes later)."""

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.stop_after_epoch is not None and round(state.epoch) >= args.stop_after_epoch:
            control.should_save = control.should_training_stop = True
        return control


def build_trainer(model_args: ModelArguments, data_args: DataArguments, args: RunArguments) -> RAPTrainer:
    """Corpus, model, processor, feature cache and the Trainer, ready to `train()`."""
    task = check_task(data_args, model_args)
    resolve_main_job_defaults(data_args, model_args, args)
    resolve_training_defaults(task, args, bundled_sample=data_args.data_dir is None)
    text_only = data_args.text_only_data or model_args.text_only_baseline
    with args.main_process_first(desc="corpus"):
        raw = limited(load_dataset(data_args.dataset, data_args.data_dir, text_only=text_only), data_args)
    set_seed(args.seed)
    model, processor = model_and_processor(task, raw, model_args, data_args.max_length)
    with args.main_process_first(desc="tokenising"):
        trainer = RAPTrainer(
            model=model,
            args=args,
            train_dataset=raw["train"],
            eval_dataset=raw["validation"],
            processing_class=processor,
            callbacks=[StopAfterEpoch()],
        )
        trainer.test_dataset = trainer.prepare(raw["test"], "test")
    trainer.model_args, trainer.data_args = model_args, data_args
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "RAP %s on %s: %d train examples, %d parameters (%d trainable), %d processes",
        task,
        data_args.dataset,
        len(trainer.train_dataset),
        model.num_parameters(),
        trainable,
        args.world_size,
    )
    return trainer


def resolve_resume(args: RunArguments) -> Path | None:
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


def check_output_dir(args: RunArguments) -> None:
    """Refuses to mix two runs in one folder, as transformers' example scripts do; the default folder holding an
    earlier run of this script is replaced (a second run of the README's command works)."""
    folder = Path(args.output_dir)
    holds_run = folder.is_dir() and any(p.name != "runs" for p in folder.iterdir())
    if holds_run and args.default_output_dir and not args.resume_from_checkpoint and is_run_folder(folder):
        with args.main_process_first(desc="replacing the default output folder"):
            if args.process_index == 0:
                logger.warning("%s holds an earlier default run: replacing it (name --output_dir to keep runs)", folder)
                shutil.rmtree(folder)
        return
    if holds_run and not args.overwrite_output_dir and not args.resume_from_checkpoint:
        raise ValueError(
            f"output_dir {folder} already holds a run; pass --overwrite_output_dir to replace it or "
            "--resume_from_checkpoint latest to continue it"
        )


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds what a run of this script writes: results.json or a checkpoint."""
    return (folder / "results.json").exists() or any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def epoch_history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch: mean training loss and validation P/R/F1, from the Trainer's log history."""
    losses = {entry["epoch"]: entry["epoch_loss"] for entry in log_history if "epoch_loss" in entry}
    history = []
    for entry in log_history:
        if "eval_f1" in entry:
            epoch = round(entry["epoch"])
            history.append(
                {
                    "epoch": epoch,
                    "loss": losses.get(epoch),
                    "validation": {k: entry[f"eval_{k}"] for k in ("precision", "recall", "f1")},
                }
            )
    return history


def train_and_test(trainer: RAPTrainer) -> tuple[dict[str, Any], Predictions] | None:
    """Trains (or resumes), then tests the best validation model once: (results, test predictions); None when
    stopped by `--stop_after_epoch`."""
    args = trainer.args
    checkpoint = resolve_resume(args)  # the trainer checks it against this run and restores its best weights
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - start
    if args.stop_after_epoch is not None and trainer.state.epoch < args.num_train_epochs:
        logger.info("Stopped after epoch %d as asked (--stop_after_epoch)", round(trainer.state.epoch))
        return None
    trainer.load_best()
    start = time.perf_counter()
    test = trainer.evaluate_split(trainer.test_dataset, "test")
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
        "num_train_examples": len(trainer.train_dataset),
        "num_test_examples": len(test.labels),
        "history": epoch_history(trainer.state.log_history),
        "relevance": relevance_check(trainer, test),
    }, test


def relevance_check(trainer: RAPTrainer, test: Predictions, seed: int = 1234) -> dict[str, Any] | None:
    """Does beta tell a tweet's own picture from another's? The test split once more with every picture handed to
    another tweet (about another topic where the corpus's manifest says topics): ROC AUC of beta, own above other,
    over the tweets whose own picture is relevant (per the manifest; every tweet with a picture elsewhere)."""
    from .relevance import (
        RELEVANT_KINDS,
        find_manifest,
        image_holders,
        own_versus_other,
        shuffled_images,
        test_manifest,
    )

    model = trainer.accelerator.unwrap_model(trainer.model)
    dataset = trainer.test_dataset
    if not model.config.multimodal or not model.config.use_relevance_reasoning or "image_mask" not in dataset.features:
        return None
    holders = image_holders(dataset)
    manifest = find_manifest(trainer.data_args.data_dir)
    kinds, topics = test_manifest(manifest, trainer.data_args.dataset, len(dataset)) if manifest else (None, None)
    members = [i for i in holders if kinds is None or kinds[i] in RELEVANT_KINDS]
    if len(holders) < 2 or not members:
        return None
    other = trainer.evaluate_split(shuffled_images(dataset, seed, topics), "test_other_pictures")
    summary = own_versus_other(test.relevance, other.relevance, members)
    summary["other_pictures"] = "another topic's tweet" if topics else "another tweet"
    logger.info(
        "beta, own picture vs %s: ROC AUC %.3f over %d test tweets (mean %.3f vs %.3f)",
        summary["other_pictures"],
        summary["auc"],
        summary["num_tweets"],
        summary["own_mean"],
        summary["other_mean"],
    )
    return summary


def public_value(value: Any) -> Any:
    """How results.json (and the card made from it) records a value: a path of this machine becomes relative to the
    working directory when inside it, else its last part. An absolute string under a top-level folder that does not
    exist is not a path of this machine (the MNRE relation `/per/per/parent` is a label)."""
    parts = Path(value).parts if isinstance(value, str) and os.path.isabs(value) else ()
    if len(parts) < 2 or not Path(parts[0], parts[1]).exists():
        return value
    path = Path(value)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path.name


def run(model_args: ModelArguments, data_args: DataArguments, args: RunArguments) -> dict[str, Any] | None:
    """Trains, tests and writes everything (model, processor, results.json, figures, card; Hub push when asked);
    returns the results (None when stopped early)."""
    from .outputs import write_run_outputs

    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id org/name")
    if (args.push_space or args.space_id) and not args.push_to_hub:
        raise ValueError("--push_space/--space_id upload the demo of a pushed model: add --push_to_hub")
    check_task(data_args, model_args)
    check_output_dir(args)
    trainer = build_trainer(model_args, data_args, args)
    # what only the command line knows goes on the card; RAPModelCardCallback fills the rest while training
    card = trainer.model_card_data
    card.repo_id = args.hub_model_id or f"your-org/rap-{data_args.dataset}"
    card.dataset_id, card.max_train_samples = data_args.dataset, data_args.max_train_samples
    card.text_only = data_args.text_only_data or model_args.text_only_baseline
    finished = train_and_test(trainer)
    if finished is None:
        return None
    results, test = finished
    if trainer.is_world_process_zero():
        write_run_outputs(
            results, test, trainer.accelerator.unwrap_model(trainer.model), Path(args.output_dir), args, card
        )
    trainer.save_model(args.output_dir)  # best weights, processor, remote code, card; with --push_to_hub, the upload
    if (args.push_space or args.space_id) and trainer.is_world_process_zero():
        push_space(args, trainer.accelerator.unwrap_model(trainer.model).config.task)
    return results


def push_space(args: RunArguments, task: str) -> str:
    """The `rap-hf demo` page of the pushed model `--hub_model_id` as the Gradio Space `--space_id`; returns its URL."""
    from rap_hf.demo import push_demo_space

    url = push_demo_space(
        args.hub_model_id, args.space_id, token=args.hub_token, private=args.hub_private_repo, task=task
    )
    logger.warning(f"demo Space: {url}")
    return url


__all__ = [
    "DataArguments",
    "ModelArguments",
    "RunArguments",
    "TrainingCollator",
    "build_trainer",
    "make_loader",
    "model_and_processor",
    "prepare_splits",
    "push_space",
    "run",
    "train_and_test",
]
