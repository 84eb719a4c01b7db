"""The relevance benchmark (scripts/benchmarks/noise.py): --smoke trains RAP, the MRR ablation and the text-only
baseline end to end and prints well-formed tables; its image conditions (rap_experiment.relevance) are exact."""

import math

import datasets
import pytest

from benchmark_helpers import number, run_smoke, table_rows
from rap_experiment.relevance import derangement, ranking_auc, shuffled_images, without_images

MODELS = ["RAP", "MRR ablation (gate = 1)", "text-only baseline"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    return run_smoke(tmp_path_factory.mktemp("noise"), "noise.py", "--variants", "rap", "mrr", "text")


def test_f1_tables_have_every_model_and_consistent_losses(smoke):
    stdout, _ = smoke
    for heading in ("### F1 on the test split", "### F1 on the image-only", "### F1 on the text-sufficient"):
        rows = table_rows(stdout, heading)
        assert [row[0] for row in rows] == MODELS
        for row in rows:
            f1s = [number(c) for c in row[1:4]]  # matched, shuffled, none
            assert all(math.isfinite(v) and 0 <= v <= 100 for v in f1s), row
            assert number(row[4]) == pytest.approx(f1s[0] - f1s[1], abs=0.11)
            assert number(row[5]) == pytest.approx(f1s[0] - f1s[2], abs=0.11)
    text_only = table_rows(stdout, "### F1 on the test split")[2]
    assert number(text_only[4]) == number(text_only[5]) == 0  # the baseline reads no image


def test_targets_and_beta_rows(smoke):
    stdout, report = smoke
    targets = {row[0]: row for row in table_rows(stdout, "### Targets")}
    assert len(targets) == 4 and all(row[3] in ("PASS", "MISS", "n/a") for row in targets.values())
    assert [row[0] for row in table_rows(stdout, "### Relevance beta")] == ["RAP"]  # MRR and baseline have no beta
    assert [check["passed"] for check in report["targets"]] == [
        {"PASS": True, "MISS": False, "n/a": None}[row[3]] for row in targets.values()
    ]


def test_json_report_is_complete(smoke):
    _, report = smoke
    assert report["settings"]["smoke"] and report["settings"]["epochs"] == 1
    assert {(r["variant"], r["seed"]) for r in report["runs"]} == {("rap", 0), ("mrr", 0), ("text", 0)}
    objects = {"grounded", "grounded_shuffled", "alone", "alone_shuffled"}
    for run in report["runs"]:
        assert set(run["conditions"]) == {"matched", "shuffled", "none"} | (
            objects if run["variant"] != "text" else set()
        )
        assert len(run["kinds"]) > 0
        for scores in run["conditions"].values():
            assert math.isfinite(scores["f1"]) and 0 <= scores["f1"] <= 100
            has_beta = run["variant"] == "rap"
            assert (scores["beta"] is not None) == has_beta
            if has_beta:
                assert all(0 <= value <= 1 for value in scores["beta"])


def test_derangement_is_seeded_and_crosses_groups():
    indices = [0, 2, 3, 5, 8, 9]
    mapping = derangement(indices, seed=7)
    assert sorted(mapping) == indices and sorted(mapping.values()) == indices
    assert all(source != target for source, target in mapping.items())
    assert mapping == derangement(indices, seed=7)
    groups = ["a", "a", "b", "b", "c", "c"]
    group_of = dict(zip(indices, groups))
    across = derangement(indices, seed=3, groups=groups)
    assert all(group_of[source] != group_of[target] for source, target in across.items())
    with pytest.raises(ValueError):
        derangement([4], seed=0)
    with pytest.raises(ValueError, match="one group holds"):
        derangement([0, 1, 2], seed=0, groups=["a", "a", "b"])


def test_other_topics_picture_never_shows_the_tweets_own_topic():
    """The relevance check hands each test tweet a picture of another topic: grouped by what the pictures show (an
    unrelated tweet's picture shows another topic than its text, possibly the receiver's)."""
    import json

    from rap_experiment.relevance import RELEVANT_KINDS, find_manifest, test_manifest

    manifest = find_manifest(None)
    entries = json.loads(manifest.read_text())["twitter2017"]["test"]
    kinds, picture_topics = test_manifest(manifest, "twitter2017", len(entries))
    holders = [i for i, entry in enumerate(entries) if "image_topic" in entry]
    assert any(entries[i]["image_topic"] != entries[i]["topic"] for i in holders)  # unrelated pictures exist
    source = derangement(holders, 1234, [picture_topics[i] for i in holders])
    members = [i for i in holders if kinds[i] in RELEVANT_KINDS]
    assert members and all(entries[source[i]]["image_topic"] != entries[i]["topic"] for i in members)


def test_shuffled_and_missing_images_move_only_the_visual_columns():
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [[1], [2], [3], [4]],
            "visual_features": [[[1.0]], [[2.0]], [[0.0]], [[4.0]]],
            "image_mask": [[1], [1], [0], [1]],
        }
    )
    shuffled = shuffled_images(dataset, seed=0)
    assert shuffled["input_ids"] == dataset["input_ids"]
    assert shuffled["image_mask"][2] == [0] and shuffled["visual_features"][2] == [[0.0]]  # no image stays without
    moved = [shuffled["visual_features"][i][0][0] for i in (0, 1, 3)]
    assert sorted(moved) == [1.0, 2.0, 4.0] and all(v != own for v, own in zip(moved, (1.0, 2.0, 4.0)))
    assert without_images(dataset).column_names == ["input_ids"]


def test_ranking_auc():
    assert ranking_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert ranking_auc([0.1], [0.9]) == 0.0
    assert ranking_auc([0.5], [0.5]) == 0.5  # ties count half
    assert ranking_auc([], [0.3]) is None


def test_paper_size_variant_keeps_the_default_relevance_training():
    """rap-paper-size differs from RAP in the paper's sizes only: its relevance fields are RAPConfig's defaults, and
    the generated corpus uses the documented shares."""
    from rap_hf import RAPConfig

    from benchmark_helpers import load_benchmark

    noise = load_benchmark("noise.py", "noise_benchmark_variants")
    label, fields, overrides = noise.VARIANTS["rap-paper-size"]
    assert fields == {"paper_architecture": True}
    defaults = RAPConfig()
    assert overrides and all(getattr(defaults, name) == value for name, value in overrides.items())
    sizes = {"text_feature_source", "fusion_hidden_size", "routing_layers", "relevance_dim", "num_crops"}
    assert set(overrides) == set(RAPConfig.paper_fields("ner", 384)) - sizes  # nothing but the sizes from the paper
    assert noise.VARIANTS["rap-paper"][1:] == ({"paper_architecture": True}, {})  # the paper mode, untouched
    settings, _ = noise.parse_arguments([])
    assert (settings.unrelated_share, settings.misleading_share) == (8.0, 0.25)


def test_every_variant_is_a_valid_configuration():
    """Each variant's model fields are run_rap.py options and its overrides real RAPConfig fields with valid values
    (a misspelt field would otherwise fail only after the corpus and the feature cache were built)."""
    import dataclasses

    from rap_hf import RAPConfig

    from benchmark_helpers import load_benchmark
    from rap_experiment.run import ModelArguments

    noise = load_benchmark("noise.py", "noise_benchmark_variants")
    options = {field.name for field in dataclasses.fields(ModelArguments)}
    defaults = RAPConfig().to_dict()
    for name, (label, fields, overrides) in noise.VARIANTS.items():
        assert label and set(fields) <= options, name
        assert set(overrides) <= set(defaults), (name, set(overrides) - set(defaults))
        config = RAPConfig(**overrides)  # validation runs here
        assert all(getattr(config, field) == value for field, value in overrides.items()), name
        objects = {"grounded_objects_share", "crop_dropout"} & set(overrides)
        assert not objects or len(objects) == 2, name  # a variant of the training objects names both: defaults move
    mixed = noise.VARIANTS["rap-mixed-objects"][2]
    assert mixed == {"grounded_objects_share": 0.5, "crop_dropout": 0.5}
    assert noise.VARIANTS["rap-crops"][2] == {"grounded_objects_share": 0.0, "crop_dropout": 0.0}


def test_visual_object_sources_are_scored_and_differ(smoke):
    """The grounding issue's conditions: the test split without its crops, with grounded objects and alone."""
    stdout, report = smoke
    rows = table_rows(stdout, "### Visual objects at prediction")
    assert [(row[0], row[1][:12]) for row in rows] == [
        (model, source) for model in MODELS[:2] for source in ("the corpus's", "objects of t", "the picture ")
    ]
    assert all(0 <= number(row[2]) <= 100 for row in rows)
    rap = next(run for run in report["runs"] if run["variant"] == "rap")
    grounded, alone = rap["conditions"]["grounded"]["beta"], rap["conditions"]["alone"]["beta"]
    assert any(abs(a - b) > 1e-6 for a, b in zip(grounded, alone))  # the grounded crops reach the model
    targets = [check["target"] for check in report["object_targets"]]
    assert len(targets) == 12 and all(check["passed"] in (True, False, None) for check in report["object_targets"])


def test_gradient_clipping_option_reaches_the_training_arguments():
    """--max_grad_norm (0: off) is what the trainer's arguments get; unset, the training default (1.0) stays."""
    from benchmark_helpers import load_benchmark

    noise = load_benchmark("noise.py", "noise_benchmark_variants")
    assert noise.parse_arguments([])[0].max_grad_norm is None
    settings, _ = noise.parse_arguments(["--max_grad_norm", "0"])
    assert settings.max_grad_norm == 0.0 and noise.training_overrides(settings) == {"max_grad_norm": 0.0}
    assert noise.training_overrides(noise.parse_arguments([])[0]) == {}
