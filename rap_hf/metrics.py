"""Offline evaluation metrics for multimodal NER and RE.

NER scores are entity-level and computed with `seqeval` directly (``evaluate.load("seqeval")`` needs the Hub).
RE scores follow the MNRE / HVPNeT evaluation: micro precision/recall/F1 over the non-``None`` relations.

Every metrics dict has the shape fixed in ``docs/interfaces.md``::

    {"precision": float, "recall": float, "f1": float,
     "per_type": {name: {"precision", "recall", "f1", "support"}}, ...}

with values in [0, 1].
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB2, Entities

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

__all__ = ["compute_ner_metrics", "compute_re_metrics", "RAPMetric"]


# --------------------------------------------------------------------------- shared helpers


def _safe_div(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0


def _prf(num_correct: int, num_predicted: int, num_gold: int) -> dict[str, float]:
    precision = _safe_div(num_correct, num_predicted)
    recall = _safe_div(num_correct, num_gold)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def _scores_from_counts(
    correct: Counter, predicted: Counter, gold: Counter, types: Iterable[str]
) -> dict[str, Any]:
    """Micro scores plus a ``per_type`` block from per-type counters."""
    per_type = {}
    for name in sorted(types):
        per_type[name] = {**_prf(correct[name], predicted[name], gold[name]), "support": int(gold[name])}
    num_correct, num_predicted, num_gold = sum(correct.values()), sum(predicted.values()), sum(gold.values())
    return {
        **_prf(num_correct, num_predicted, num_gold),
        "per_type": per_type,
        "num_correct": int(num_correct),
        "num_predicted": int(num_predicted),
        "num_gold": int(num_gold),
    }


# --------------------------------------------------------------------------- NER


def _check_tag_sequences(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predicted sequences but {len(references)} reference sequences."
        )
    for index, (prediction, reference) in enumerate(zip(predictions, references)):
        if len(prediction) != len(reference):
            raise ValueError(
                f"Sequence {index}: prediction has {len(prediction)} tags but reference has {len(reference)}."
            )
        for tag in (*prediction, *reference):
            if not isinstance(tag, str) or not (tag == "O" or (tag[:2] in ("B-", "I-") and len(tag) > 2)):
                raise ValueError(f"Sequence {index}: tag {tag!r} is not an IOB tag ('O', 'B-<type>' or 'I-<type>').")


def _conlleval_entities(sequences: Sequence[Sequence[str]]) -> set[tuple[int, str, int, int]]:
    # conlleval semantics: an orphan I- tag (after O or another type) starts a new entity
    return {
        (index, entity_type, start, end)
        for index, sequence in enumerate(sequences)
        for entity_type, start, end in get_entities(list(sequence))
    }


def _strict_entities(sequences: Sequence[Sequence[str]]) -> set[tuple[int, str, int, int]]:
    # strict IOB2: an entity must start with B-; orphan I- tags form no entity at all
    entities = Entities([list(sequence) for sequence in sequences], IOB2, suffix=False)
    return {
        (entity.sent_id, entity.tag, entity.start, entity.end)
        for sentence in entities.entities
        for entity in sentence
    }


def _entity_scores(gold: set[tuple], predicted: set[tuple]) -> dict[str, Any]:
    correct = Counter(entity[1] for entity in gold & predicted)
    predicted_counts = Counter(entity[1] for entity in predicted)
    gold_counts = Counter(entity[1] for entity in gold)
    return _scores_from_counts(correct, predicted_counts, gold_counts, set(gold_counts) | set(predicted_counts))


def compute_ner_metrics(predictions: list[list[str]], references: list[list[str]]) -> dict[str, Any]:
    """Entity-level NER scores on word-level IOB tag sequences.

    The top-level ``precision``/``recall``/``f1`` and ``per_type`` use seqeval's default (conlleval) mode, the
    convention of the MNER papers: an orphan ``I-X`` tag (after ``O`` or a different type) begins an entity.
    ``strict`` holds the same scores in seqeval's strict IOB2 mode, where such an orphan ``I-`` does not form an
    entity. Tags are taken as given (e.g. ``B-OTHER`` is the type ``OTHER``; mapping it to ``MISC`` is the
    data loader's job). ``accuracy`` is token-level.

    Args:
        predictions: one tag sequence per sentence, on the original words.
        references: gold tag sequences, same lengths as ``predictions``.

    Returns:
        ``{"precision", "recall", "f1", "accuracy", "per_type": {type: {"precision", "recall", "f1", "support"}},
        "strict": {"precision", "recall", "f1", "per_type", ...}, "num_correct", "num_predicted", "num_gold"}``.

    Raises:
        ValueError: if the number of sequences differs, a prediction and its reference differ in length (the
            message names the sequence index), or a tag is not ``O``/``B-X``/``I-X``.
    """
    _check_tag_sequences(predictions, references)

    scores = _entity_scores(_conlleval_entities(references), _conlleval_entities(predictions))
    scores["strict"] = _entity_scores(_strict_entities(references), _strict_entities(predictions))

    num_tokens = sum(len(reference) for reference in references)
    num_tokens_correct = sum(
        predicted_tag == gold_tag
        for prediction, reference in zip(predictions, references)
        for predicted_tag, gold_tag in zip(prediction, reference)
    )
    scores["accuracy"] = _safe_div(num_tokens_correct, num_tokens)
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
    """Micro precision/recall/F1 for relation classification, excluding the negative class.

    As in the MNRE/HVPNeT evaluation, with "positive" meaning any relation other than ``negative_label``:
    ``precision = correct positive predictions / positive predictions`` and
    ``recall = correct positive predictions / positive gold labels``. ``accuracy`` counts every class, including
    the negative one. ``per_type`` covers the positive relations that occur in the references or predictions.

    Args:
        predictions: predicted relation ids (indices into ``label_names``) or names.
        references: gold relation ids or names.
        label_names: relation names indexed by id (e.g. the 23 MNRE labels, ``"None"`` = 0).
        negative_label: the "no relation" class; ``None`` to count every class as positive.

    Returns:
        ``{"precision", "recall", "f1", "accuracy", "per_type": {relation: {...}}, "num_correct",
        "num_predicted", "num_gold"}``.
    """
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if negative_label is not None and negative_label not in label_names:
        raise ValueError(f"negative_label {negative_label!r} is not in label_names.")

    predicted_names = [_to_label_name(p, label_names, i, "Prediction") for i, p in enumerate(predictions)]
    gold_names = [_to_label_name(r, label_names, i, "Reference") for i, r in enumerate(references)]

    correct, predicted, gold = Counter(), Counter(), Counter()
    for predicted_name, gold_name in zip(predicted_names, gold_names):
        if predicted_name != negative_label:
            predicted[predicted_name] += 1
            if predicted_name == gold_name:
                correct[predicted_name] += 1
        if gold_name != negative_label:
            gold[gold_name] += 1

    scores = _scores_from_counts(correct, predicted, gold, set(predicted) | set(gold))
    scores["accuracy"] = _safe_div(sum(p == g for p, g in zip(predicted_names, gold_names)), len(gold_names))
    return scores


# --------------------------------------------------------------------------- accumulator


def _as_list(values: Any) -> list:
    # accept tensors and arrays from the training loop without importing torch here
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    if hasattr(values, "tolist"):
        values = values.tolist()
    return list(values)


class RAPMetric:
    """Accumulates predictions batch by batch and scores them with the task's metric.

    For NER, sequences may hold tag strings or tag ids (mapped through ``label_names``); positions whose
    reference is ``-100`` are dropped together with the prediction at the same position, so the padded
    ``predictions [B, W]`` of `RAPForMultimodalNER` can be fed with the matching word-level labels.

    Example:
        >>> metric = RAPMetric("re", label_names=["None", "/per/per/peer"])
        >>> metric.add_batch(predictions=[1, 0], references=[1, 1])
        >>> metric.compute()["recall"]
        0.5
    """

    def __init__(self, task: str, label_names: list[str] | None = None, negative_label: str | None = "None"):
        if task not in ("ner", "re"):
            raise ValueError(f"task must be 'ner' or 're', got {task!r}.")
        if task == "re" and label_names is None:
            raise ValueError("RE metrics need label_names.")
        self.task = task
        self.label_names = label_names
        self.negative_label = negative_label
        self.reset()

    def reset(self) -> None:
        """Forgets every batch added so far."""
        self.predictions: list = []
        self.references: list = []

    def _tag_name(self, tag: int | str) -> str:
        if isinstance(tag, str):
            return tag
        if self.label_names is None:
            raise ValueError("NER tag ids need label_names to be mapped to tag strings.")
        return self.label_names[int(tag)]

    def add_batch(self, predictions: Any, references: Any) -> None:
        """Adds one batch: NER ``[B, W]`` tag sequences, RE ``[B]`` relations (lists, arrays or tensors)."""
        predictions, references = _as_list(predictions), _as_list(references)
        if len(predictions) != len(references):
            raise ValueError(f"Batch has {len(predictions)} predictions but {len(references)} references.")
        if self.task == "re":
            self.predictions.extend(predictions)
            self.references.extend(references)
            return
        for prediction, reference in zip(predictions, references):
            prediction, reference = _as_list(prediction), _as_list(reference)
            kept = [i for i, tag in enumerate(reference) if tag != IGNORE_INDEX]
            if any(i >= len(prediction) for i in kept):
                raise ValueError("A prediction is shorter than the non-ignored part of its reference.")
            self.predictions.append([self._tag_name(prediction[i]) for i in kept])
            self.references.append([self._tag_name(reference[i]) for i in kept])

    def compute(self) -> dict[str, Any]:
        """Scores everything added since the last `reset`."""
        if self.task == "ner":
            return compute_ner_metrics(self.predictions, self.references)
        return compute_re_metrics(self.predictions, self.references, self.label_names, self.negative_label)
