"""Looking at relevance: test-time image conditions, how well beta ranks images, and where the gradient goes.

Used by the relevance diagnostic (`scripts/benchmarks/relevance.py`) and the noise benchmark
(`scripts/benchmarks/noise.py`); works on any prepared split that carries `visual_features` and `image_mask` (see
`rap_hf.data.features.VisualFeatureCache.attach`).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

import datasets
from torch import nn

VISUAL_COLUMNS = ["visual_features", "image_mask"]
RELEVANT_KINDS = ("hard", "easy_relevant")  # generated tweets whose own picture is relevant (beta's AUC is read there)


# ---------------------------------------------------------------------------------------------------------------------
# Image conditions
# ---------------------------------------------------------------------------------------------------------------------
def image_holders(dataset: datasets.Dataset) -> list[int]:
    """Indices of the samples with at least one real visual slot."""
    return [i for i, mask in enumerate(dataset["image_mask"]) if any(mask)]


def derangement(indices: Sequence[int], seed: int, groups: Sequence[str] | None = None) -> dict[int, int]:
    """A seeded permutation of `indices` without fixed points: each index takes another's item.

    With `groups` (one label per index, e.g. a tweet's topic) every index takes an item from another group: the
    indices are sorted by group (random order inside) and each takes the item `largest group` places further on,
    which crosses groups whenever no group holds more than half of the indices.
    """
    if len(indices) < 2:
        raise ValueError("shuffling images needs at least two samples with an image")
    rng = random.Random(seed)
    keys = {index: rng.random() for index in indices}
    if groups is None:
        order, shift = sorted(indices, key=keys.get), 1
    else:
        group_of = dict(zip(indices, groups))
        order = sorted(indices, key=lambda i: (group_of[i], keys[i]))
        shift = max(sum(g == group for g in groups) for group in set(groups))
        if 2 * shift > len(order):
            raise ValueError(f"one group holds {shift} of {len(order)} samples: no derangement across groups")
    return {index: order[(position + shift) % len(order)] for position, index in enumerate(order)}


def shuffled_images(dataset: datasets.Dataset, seed: int, groups: Sequence[str] | None = None) -> datasets.Dataset:
    """`dataset` with every sample's image and crops (features and mask) handed to another sample that has an image
    (a fixed, seeded derangement: nobody keeps their own picture; samples without image stay without). With `groups`
    (one label per sample of the dataset) images only move between groups, see `derangement`."""
    holders = image_holders(dataset)
    source = derangement(holders, seed, [groups[i] for i in holders] if groups is not None else None)
    rows = [source.get(i, i) for i in range(len(dataset))]
    visual = dataset.select_columns(VISUAL_COLUMNS).select(rows).flatten_indices()
    return datasets.concatenate_datasets([dataset.remove_columns(VISUAL_COLUMNS), visual], axis=1)


def without_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with no visual input at all (the model sees zero features and an all-zero image mask)."""
    return dataset.remove_columns([c for c in VISUAL_COLUMNS if c in dataset.column_names])


# ---------------------------------------------------------------------------------------------------------------------
# The generator's manifest (scripts/make_sample_data.py): kind and topic of every tweet
# ---------------------------------------------------------------------------------------------------------------------
def find_manifest(data_dir: str | Path | None) -> Path | None:
    """The manifest.json of a generated corpus: the bundled sample's (data_dir None), or one in `data_dir` or one of
    its two parents (the generator writes it at the corpus root, above NER_data/twitter2017); None for real corpora."""
    if data_dir is None:
        from rap_hf.data import SAMPLE_DIR

        return SAMPLE_DIR / "manifest.json"
    folder = Path(data_dir).resolve()
    for candidate in (folder, folder.parent, folder.parent.parent):
        if (candidate / "manifest.json").is_file():
            return candidate / "manifest.json"
    return None


def test_manifest(manifest: Path, dataset: str, num_test: int) -> tuple[list[str], list[str]]:
    """Kind of every test tweet of `dataset` in a generated corpus's manifest and the topic its picture shows (the
    tweet's topic where it has no picture), for the first `num_test` (a split cut by `--max_eval_samples` keeps its
    first tweets). Pictures move between picture topics: an unrelated tweet's picture can show the receiver's topic."""
    entries = json.loads(manifest.read_text())[dataset]["test"][:num_test]
    if len(entries) != num_test:
        raise ValueError(f"{manifest} lists {len(entries)} test samples of {dataset}, the split has {num_test}")
    return [entry["kind"] for entry in entries], [entry.get("image_topic", entry["topic"]) for entry in entries]


# ---------------------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------------------
def own_versus_other(own: Sequence[float], other: Sequence[float], members: Sequence[int]) -> dict:
    """beta with each tweet's own picture vs with another tweet's, over `members`: ROC AUC, means, the values."""
    own_values, other_values = [float(own[i]) for i in members], [float(other[i]) for i in members]
    return {
        "auc": ranking_auc(own_values, other_values),
        "own_mean": statistics.fmean(own_values) if own_values else None,
        "other_mean": statistics.fmean(other_values) if other_values else None,
        "num_tweets": len(members),
        "own": own_values,
        "other": other_values,
    }


def ranking_auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """ROC AUC of scoring positives above negatives (ties count half); None when either side is empty."""
    if not positives or not negatives:
        return None
    from sklearn.metrics import roc_auc_score

    labels = [1] * len(positives) + [0] * len(negatives)
    return float(roc_auc_score(labels, list(positives) + list(negatives)))


def distribution(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sd, min, quartiles and max of `values` (sd 0 for a single value)."""
    ordered = sorted(values)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return {
        "n": len(ordered),
        "mean": statistics.fmean(ordered),
        "sd": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
        "min": ordered[0],
        "q1": quartiles[0],
        "median": quartiles[1],
        "q3": quartiles[2],
        "max": ordered[-1],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Gradient reaching each module
# ---------------------------------------------------------------------------------------------------------------------
RELEVANCE_GROUPS = {
    "relevance E_t / E_v projections": ("relevance_features.",),
    "attention pooling (u-bar, v-bar)": ("relevance_reasoning.text_pooling.", "relevance_reasoning.visual_pooling."),
    "W_g (Eq. 2)": ("relevance_reasoning.global_relevance.",),
    "W_l (Eq. 5)": ("relevance_reasoning.local_relevance.",),
    "graph W_src, W_tgt (Eq. 6)": ("relevance_reasoning.graph.source.", "relevance_reasoning.graph.target."),
    "graph W_r (Eq. 8)": ("relevance_reasoning.graph.update.",),
    "W_s, b_s (beta)": ("relevance_reasoning.graph.score.",),
}
OTHER_GROUPS = {
    "text encoder": ("text_encoder.",),
    "E_t / E_v projections": ("semantic_features.",),
    "routers (Eq. 19)": (".routers.",),
    "prompt projection (Eq. 23)": ("prompt_projection.",),
}
FUSION_UNIT_GROUPS = {
    "FeatureSemanticReasoningUnit": "FSRU units (Eq. 11-12)",
    "CrossModalFusionUnit": "CFU units (Eq. 13-16)",
}


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of a RAP model, grouped by what they compute (relevance path, fusion units, ...)."""
    units = {}
    for name, module in model.named_modules():
        if type(module).__name__ in FUSION_UNIT_GROUPS:
            units[name + "."] = FUSION_UNIT_GROUPS[type(module).__name__]
    groups: dict[str, list[nn.Parameter]] = {}
    prefixes = {**RELEVANCE_GROUPS, **OTHER_GROUPS}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        group = next((label for prefix, label in units.items() if name.startswith(prefix)), None)
        group = group or next((label for label, keys in prefixes.items() if any(k in name for k in keys)), None)
        groups.setdefault(group or "task head", []).append(parameter)
    return groups


def gradient_norms(model: nn.Module) -> dict[str, dict[str, float]]:
    """After a backward: l2 norm and per-element RMS of the gradient of every module group (missing gradient = 0)."""
    report = {}
    for group, parameters in module_groups(model).items():
        squares = sum(float(p.grad.float().pow(2).sum()) for p in parameters if p.grad is not None)
        count = sum(p.numel() for p in parameters)
        report[group] = {"parameters": count, "norm": squares**0.5, "rms": (squares / max(count, 1)) ** 0.5}
    return report


def fusion_to_relevance_ratios(norms: dict[str, dict[str, float]]) -> dict[str, float]:
    """For each relevance-path group: mean gradient norm of the fusion units / the group's norm (inf for none)."""
    fusion = [norms[g]["norm"] for g in FUSION_UNIT_GROUPS.values() if g in norms]
    reference = statistics.fmean(fusion) if fusion else 0.0
    return {
        g: (reference / norms[g]["norm"] if norms[g]["norm"] > 0 else float("inf"))
        for g in RELEVANCE_GROUPS
        if g in norms
    }
