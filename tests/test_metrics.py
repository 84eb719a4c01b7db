"""Hand-computed checks of the NER (seqeval) and RE (MNRE convention) metrics."""

import json
import random

import pytest
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from rap_hf.metrics import compute_ner_metrics, compute_re_metrics

# --------------------------------------------------------------------------- NER


def test_ner_micro_per_type_and_accuracy_by_hand():
    references = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-MISC", "I-MISC"]]
    predictions = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-MISC", "O"]]
    # gold: PER, LOC, ORG, MISC(2 words); predicted: PER, ORG, ORG, MISC(1 word); correct: PER and the 2nd ORG
    scores = compute_ner_metrics(predictions, references)

    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(0.5)
    assert (scores["num_correct"], scores["num_predicted"], scores["num_gold"]) == (2, 4, 4)
    assert scores["accuracy"] == pytest.approx(6 / 8)  # two wrong tokens out of eight

    per_type = scores["per_type"]
    assert set(per_type) == {"PER", "LOC", "ORG", "MISC"}
    assert per_type["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert per_type["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert per_type["ORG"]["precision"] == pytest.approx(0.5)
    assert per_type["ORG"]["recall"] == pytest.approx(1.0)
    assert per_type["ORG"]["f1"] == pytest.approx(2 / 3)
    assert per_type["MISC"]["f1"] == 0.0 and per_type["MISC"]["support"] == 1
    json.dumps(scores)  # goes into results.json as is


def test_orphan_i_tag_in_prediction_counts_in_conlleval_but_not_in_strict_mode():
    references = [["B-PER", "I-PER", "O"]]
    predictions = [["I-PER", "I-PER", "O"]]
    scores = compute_ner_metrics(predictions, references)

    # conlleval: the orphan I-PER opens the entity PER[0:2], which matches the gold entity
    assert (scores["precision"], scores["recall"], scores["f1"]) == (1.0, 1.0, 1.0)
    # strict IOB2: no entity without B-, so nothing predicted; precision 0/0 -> 0
    strict = scores["strict"]
    assert (strict["precision"], strict["recall"], strict["f1"]) == (0.0, 0.0, 0.0)
    assert (strict["num_predicted"], strict["num_gold"]) == (0, 1)
    assert strict["per_type"]["PER"]["support"] == 1


def test_orphan_i_tag_in_reference_and_after_another_type():
    # gold "O I-LOC O" is a LOC entity for conlleval and nothing for strict IOB2
    scores = compute_ner_metrics([["O", "B-LOC", "O"]], [["O", "I-LOC", "O"]])
    assert scores["f1"] == 1.0
    assert scores["strict"]["num_gold"] == 0 and scores["strict"]["num_predicted"] == 1
    assert scores["strict"]["precision"] == 0.0 and scores["strict"]["per_type"]["LOC"]["support"] == 0

    # I-LOC right after B-PER starts a second entity in conlleval mode, none in strict mode
    scores = compute_ner_metrics([["B-PER", "I-LOC"]], [["B-PER", "O"]])
    assert scores["num_predicted"] == 2 and scores["precision"] == pytest.approx(0.5) and scores["recall"] == 1.0
    assert scores["strict"]["num_predicted"] == 1 and scores["strict"]["precision"] == 1.0


def test_tags_are_taken_as_given_other_is_its_own_type():
    scores = compute_ner_metrics([["B-MISC", "I-MISC"]], [["B-OTHER", "I-OTHER"]])
    assert scores["f1"] == 0.0
    assert scores["per_type"]["OTHER"]["support"] == 1
    assert scores["per_type"]["MISC"]["support"] == 0
    assert scores["accuracy"] == 0.0


def test_ner_length_mismatch_names_the_sequence():
    with pytest.raises(ValueError, match="Sequence 1"):
        compute_ner_metrics([["O"], ["O", "O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="predicted sequences"):
        compute_ner_metrics([["O"]], [["O"], ["O"]])


def test_ner_rejects_non_iob_tags():
    with pytest.raises(ValueError, match="'PER'"):
        compute_ner_metrics([["PER"]], [["O"]])


def test_ner_empty_and_all_outside():
    scores = compute_ner_metrics([["O", "O"]], [["O", "O"]])
    assert scores["f1"] == 0.0 and scores["accuracy"] == 1.0 and scores["per_type"] == {}
    assert compute_ner_metrics([], [])["accuracy"] == 0.0


def _random_tags(rng: random.Random, length: int) -> list[str]:
    return [rng.choice(["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]) for _ in range(length)]


def test_ner_agrees_with_seqeval_in_both_modes():
    rng = random.Random(0)
    lengths = [rng.randint(1, 12) for _ in range(60)]
    references = [_random_tags(rng, n) for n in lengths]
    predictions = [_random_tags(rng, n) for n in lengths]
    scores = compute_ner_metrics(predictions, references)

    assert scores["precision"] == pytest.approx(precision_score(references, predictions))
    assert scores["recall"] == pytest.approx(recall_score(references, predictions))
    assert scores["f1"] == pytest.approx(f1_score(references, predictions))
    strict_f1 = f1_score(references, predictions, mode="strict", scheme=IOB2)
    assert scores["strict"]["f1"] == pytest.approx(strict_f1)
    assert scores["strict"]["f1"] != pytest.approx(scores["f1"])  # the orphan I- tags must make a difference


# --------------------------------------------------------------------------- RE

LABELS = ["None", "/per/per/peer", "/org/loc/locate_at"]


def test_re_micro_excludes_none_by_hand():
    references = [1, 1, 2, 0, 0, 2]
    predictions = [1, 0, 2, 0, 0, 1]
    # non-None predictions: #0, #2, #5 (3); correct among them: #0, #2 (2); non-None gold: #0, #1, #2, #5 (4)
    scores = compute_re_metrics(predictions, references, LABELS)

    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 4)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["accuracy"] == pytest.approx(4 / 6)  # the two correct None predictions count here
    assert set(scores["per_type"]) == {"/per/per/peer", "/org/loc/locate_at"}
    peer, locate = scores["per_type"]["/per/per/peer"], scores["per_type"]["/org/loc/locate_at"]
    assert (peer["precision"], peer["recall"], peer["support"]) == (0.5, 0.5, 2)
    assert (locate["precision"], locate["recall"], locate["support"]) == (1.0, 0.5, 2)
    assert locate["f1"] == pytest.approx(2 / 3)
    json.dumps(scores)


def test_re_accepts_names_and_ids_alike():
    by_id = compute_re_metrics([1, 0, 2], [1, 2, 2], LABELS)
    by_name = compute_re_metrics(["/per/per/peer", "None", 2], ["/per/per/peer", 2, "/org/loc/locate_at"], LABELS)
    assert by_id == by_name


def test_re_all_none_predictions_and_no_negative_class():
    scores = compute_re_metrics([0, 0, 0], [0, 1, 2], LABELS)
    assert (scores["precision"], scores["recall"], scores["f1"]) == (0.0, 0.0, 0.0)
    assert scores["accuracy"] == pytest.approx(1 / 3)

    # with no negative class every label counts, so micro P = R = accuracy
    scores = compute_re_metrics([0, 0, 0], [0, 1, 2], LABELS, negative_label=None)
    assert scores["precision"] == scores["recall"] == pytest.approx(1 / 3)


def test_re_errors():
    with pytest.raises(ValueError, match="3 predictions but 2"):
        compute_re_metrics([0, 1, 2], [0, 1], LABELS)
    with pytest.raises(ValueError, match="Prediction 1"):
        compute_re_metrics([0, 7], [0, 1], LABELS)
    with pytest.raises(ValueError, match="unknown relation"):
        compute_re_metrics([0, "/x/y"], [0, 1], LABELS)
    with pytest.raises(ValueError, match="negative_label"):
        compute_re_metrics([0], [0], LABELS, negative_label="NA")


# --------------------------------------------------------------------------- accumulator
