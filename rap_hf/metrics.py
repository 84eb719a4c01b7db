"""Offline evaluation metrics for multimodal NER and RE, from the libraries that define them.

NER: entity-level scores from `seqeval`'s classification report (`evaluate.load("seqeval")` wraps the same code but
needs the Hub), in its default (conlleval) mode and in its strict IOB2 mode. RE: micro precision/recall/F1 from
scikit-learn over the relations other than the negative class, as in the MNRE / HVPNeT evaluation.

Every metrics dict has the shape fixed in ``docs/interfaces.md``::

    {"precision": float, "recall": float, "f1": float, "accuracy": float,
     "per_type": {name: {"precision", "recall", "f1", "support"}},
     "num_correct": int, "num_predicted": int, "num_gold": int}

with values in [0, 1] (NER adds the same block under ``"strict"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

__all__ = ["compute_ner_metrics", "compute_re_metrics"]


def _block(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}


# --------------------------------------------------------------------------- NER
def _check_tag_sequences(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predicted sequences but {len(references)} reference sequences.")
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        if len(prediction) != len(reference):
            raise ValueError(
                f"Sequence {index}: prediction has {len(prediction)} tags but reference has {len(reference)}."
            )
        for tag in (*prediction, *reference):
            if not isinstance(tag, str) or not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
                raise ValueError(f"Sequence {index}: tag {tag!r} is not an IOB tag ('O', 'B-<type>' or 'I-<type>').")


AVERAGES = {"micro avg", "macro avg", "weighted avg"}
EMPTY_ROW = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}


def _seqeval_scores(references: list[list[str]], predictions: list[list[str]], **mode: Any) -> dict[str, Any]:
    """Micro scores, per-type scores and entity counts from seqeval's report (`mode`: none = conlleval, or
    `mode="strict", scheme=IOB2`)."""
    if not references:  # seqeval's strict mode rejects an empty corpus
        report = swapped = {}
    else:
        with warnings.catch_warnings():  # averages over zero entity types warn inside numpy
            warnings.simplefilter("ignore", RuntimeWarning)
            report = classification_report(references, predictions, output_dict=True, zero_division=0, **mode)
            # seqeval counts supports on its first argument: swapping the sides counts the predicted entities
            swapped = classification_report(predictions, references, output_dict=True, zero_division=0, **mode)
    micro = report.get("micro avg", EMPTY_ROW)
    num_predicted = int(swapped.get("micro avg", EMPTY_ROW)["support"])
    per_type = {}
    for name in sorted((set(report) | set(swapped)) - AVERAGES):
        row = report.get(name, EMPTY_ROW)
        per_type[name] = _block(row["precision"], row["recall"], row["f1-score"], row["support"])
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "per_type": per_type,
        "num_correct": round(micro["precision"] * num_predicted),
        "num_predicted": num_predicted,
        "num_gold": int(micro["support"]),
    }


def compute_ner_metrics(predictions: list[list[str]], references: list[list[str]]) -> dict[str, Any]:
    """Entity-level NER scores on word-level IOB tag sequences, from seqeval's classification report.

    The top-level ``precision``/``recall``/``f1`` and ``per_type`` use seqeval's default (conlleval) mode, the
    convention of the MNER papers: an orphan ``I-X`` tag (after ``O`` or a different type) begins an entity.
    ``strict`` holds the same scores in seqeval's strict IOB2 mode, where such an orphan ``I-`` does not form an
    entity. Tags are taken as given (e.g. ``B-OTHER`` is the type ``OTHER``; mapping it to ``MISC`` is the data
    loader's job). ``accuracy`` is token-level.

    Raises:
        ValueError: if the number of sequences differs, a prediction and its reference differ in length (the
            message names the sequence index), or a tag is not ``O``/``B-X``/``I-X``.
    """
    _check_tag_sequences(predictions, references)
    references, predictions = [list(r) for r in references], [list(p) for p in predictions]
    scores = _seqeval_scores(references, predictions)
    scores["strict"] = _seqeval_scores(references, predictions, mode="strict", scheme=IOB2)
    flat_gold = [tag for reference in references for tag in reference]
    flat_predicted = [tag for prediction in predictions for tag in prediction]
    scores["accuracy"] = float(accuracy_score(flat_gold, flat_predicted)) if flat_gold else 0.0
    return scores


# --------------------------------------------------------------------------- RE
def _to_label_name(value: int | str, label_names: Sequence[str], position: int, role: str) -> str:
    if isinstance(value, str):
        if value not in label_names:
            raise ValueError(f"{role} {position}: unknown relation {value!r}.")
        return value
    index = int(value)
    if not 0 <= index < len(label_names):
        raise ValueError(f"{role} {position}: relation id {index} is outside [0, {len(label_names)}).")
    return label_names[index]


def compute_re_metrics(
    predictions: list[int | str],
    references: list[int | str],
    label_names: list[str],
    negative_label: str | None = "None",
) -> dict[str, Any]:
    """Micro precision/recall/F1 for relation classification over the relations other than ``negative_label``.

    With "positive" meaning any relation other than ``negative_label`` (scikit-learn's micro average restricted to
    those labels): ``precision = correct positive predictions / positive predictions`` and ``recall = correct
    positive predictions / positive gold labels``. ``accuracy`` counts every class, the negative one included.
    ``per_type`` covers the positive relations that occur in the references or predictions.

    Args:
        predictions: predicted relation ids (indices into ``label_names``) or names.
        references: gold relation ids or names.
        label_names: relation names indexed by id (e.g. the 23 MNRE labels, ``"None"`` = 0).
        negative_label: the "no relation" class; ``None`` to count every class as positive.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if negative_label is not None and negative_label not in label_names:
        raise ValueError(f"negative_label {negative_label!r} is not in label_names.")
    predicted = [_to_label_name(p, label_names, i, "Prediction") for i, p in enumerate(predictions)]
    gold = [_to_label_name(r, label_names, i, "Reference") for i, r in enumerate(references)]
    positive = sorted((set(predicted) | set(gold)) - {negative_label})
    scores: dict[str, Any] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "per_type": {}}
    if positive:
        micro = precision_recall_fscore_support(gold, predicted, labels=positive, average="micro", zero_division=0)
        per = precision_recall_fscore_support(gold, predicted, labels=positive, average=None, zero_division=0)
        scores.update(precision=float(micro[0]), recall=float(micro[1]), f1=float(micro[2]))
        scores["per_type"] = {name: _block(p, r, f, s) for name, p, r, f, s in zip(positive, *per)}
    scores["num_gold"] = sum(name != negative_label for name in gold)
    scores["num_predicted"] = sum(name != negative_label for name in predicted)
    scores["num_correct"] = sum(p == g != negative_label for p, g in zip(predicted, gold))
    scores["accuracy"] = float(accuracy_score(gold, predicted)) if gold else 0.0
    return scores
