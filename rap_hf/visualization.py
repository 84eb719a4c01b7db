"""Pictures for the RAP analyses (paper Sec. 5.2-5.5): routing paths (Fig. 7), relevance per class (Fig. 8 spirit)
and the 2-D map of routing vectors (Fig. 6).

All functions write a PNG with matplotlib's non-interactive Agg backend and return where it was written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, also under CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = [
    "UNIT_DISPLAY_NAMES",
    "RoutingFigure",
    "routing_vector_size",
    "split_routing_weights",
    "plot_routing_paths",
    "plot_relevance_by_class",
    "plot_relevance_own_vs_other",
    "plot_routing_map",
    "embed_2d",
]

# The paper's names of the fusion units, keyed by `RAPConfig.fusion_units`: the one table for figures and reports.
UNIT_DISPLAY_NAMES: dict[str, str] = {"rau": "RAU", "fsru": "FSRU", "cfu": "CFU"}

_MIN_EDGE_WIDTH, _MAX_EDGE_WIDTH = 0.3, 6.0
_MIN_EDGE_ALPHA, _MAX_EDGE_ALPHA = 0.08, 0.95
_MIN_SAMPLES_FOR_TSNE = 5
_MAX_SAMPLES_FOR_EXACT_TSNE = 500


@dataclass(frozen=True)
class RoutingFigure:
    """What `plot_routing_paths` drew: the PNG path and how many nodes and edges it holds."""

    path: str
    num_nodes: int
    num_edges: int


def _to_numpy(values: Any) -> np.ndarray:
    # accept torch tensors without importing torch here
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float)


def _save(fig: Figure, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return str(path)


# --------------------------------------------------------------------------- routing paths (Fig. 7)


def routing_vector_size(num_units: int, num_layers: int) -> int:
    """G = U^2 (L-1) + U, the length of one sample's routing vector."""
    return num_units * num_units * (num_layers - 1) + num_units


def split_routing_weights(routing_weights: Any, num_units: int, num_layers: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Splits a routing vector into its (L-1) inter-layer ``U x U`` blocks and the ``U`` final weights.

    Layout of the vector (the model writes it in this order):
        1. for each layer transition ``l -> l+1`` (l = 1..L-1), a ``U x U`` block flattened row-major, where
           row ``j`` is the source unit in layer ``l`` and column ``i`` the target unit in layer ``l+1``, so the
           entry is ``g_{j->i}``;
        2. the ``U`` weights with which the units of the last layer are aggregated into the output.

    Raises:
        ValueError: if the vector is not 1-D of size ``U^2 (L-1) + U`` or holds non-finite values.
    """
    if num_units < 1 or num_layers < 1:
        raise ValueError(f"num_units and num_layers must be >= 1, got {num_units} and {num_layers}.")
    weights = _to_numpy(routing_weights)
    expected = routing_vector_size(num_units, num_layers)
    if weights.ndim != 1 or weights.size != expected:
        raise ValueError(
            f"Expected a 1-D routing vector of size U^2(L-1)+U = {expected} for U={num_units}, L={num_layers}; "
            f"got shape {weights.shape}."
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("The routing vector holds NaN or infinite values.")
    block = num_units * num_units
    transitions = [weights[t * block : (t + 1) * block].reshape(num_units, num_units) for t in range(num_layers - 1)]
    return transitions, weights[(num_layers - 1) * block :]


def _edge_style(weight: float, max_weight: float) -> dict[str, float]:
    # scale by the strongest path in this sample so that the dominant route stands out
    share = abs(weight) / max_weight if max_weight > 0 else 0.0
    return {
        "linewidth": _MIN_EDGE_WIDTH + share * (_MAX_EDGE_WIDTH - _MIN_EDGE_WIDTH),
        "alpha": _MIN_EDGE_ALPHA + share * (_MAX_EDGE_ALPHA - _MIN_EDGE_ALPHA),
    }


def _unit_positions(num_units: int, num_layers: int) -> dict[tuple[int, int], tuple[float, float]]:
    # x = layer index, units stacked top to bottom in the order of unit_names
    return {
        (layer, unit): (float(layer), float(num_units - 1 - unit))
        for layer in range(num_layers)
        for unit in range(num_units)
    }


def plot_routing_paths(
    routing_weights: Any,
    unit_names: list[str],
    num_layers: int,
    relevance: float,
    path: str | Path,
    title: str | None = None,
) -> RoutingFigure:
    """Draws one sample's path through the routing space, in the style of the paper's Fig. 7.

    The picture has ``U`` unit nodes per layer for ``L`` layers plus one output node. Every ``g_{j->i}`` between
    consecutive layers and every final aggregation weight is drawn as an edge whose width and opacity grow with
    the weight (relative to the sample's largest weight); the relevance weight beta is written next to the output.

    Args:
        routing_weights: 1-D array of size ``U^2 (L-1) + U`` (e.g. one row of ``routing_weights [B, G]``), laid out
            as described in `split_routing_weights`: first the ``L-1`` inter-layer blocks, each ``U x U`` row-major
            with row = source unit ``j`` in layer ``l`` and column = target unit ``i`` in layer ``l+1``; then the
            ``U`` final aggregation weights.
        unit_names: names of the ``U`` units, in the model's unit order (e.g. ``["RAU", "FSRU", "CFU"]``).
        num_layers: number of routing layers ``L``.
        relevance: the sample's modality relevance beta.
        path: where to write the PNG.
        title: optional figure title.

    Returns:
        `RoutingFigure` with the written path and the number of nodes (``U*L + 1``) and edges
        (``U^2 (L-1) + U``) drawn.
    """
    num_units = len(unit_names)
    transitions, final_weights = split_routing_weights(routing_weights, num_units, num_layers)
    max_weight = float(np.max(np.abs(np.concatenate([*[t.ravel() for t in transitions], final_weights]))))

    positions = _unit_positions(num_units, num_layers)
    output_position = (float(num_layers), (num_units - 1) / 2)
    fig, ax = plt.subplots(figsize=(1.8 * (num_layers + 1) + 1.0, 1.1 * num_units + 1.4))

    num_edges = 0
    for layer, block in enumerate(transitions):
        for source in range(num_units):
            for target in range(num_units):
                (x0, y0), (x1, y1) = positions[(layer, source)], positions[(layer + 1, target)]
                style = _edge_style(block[source, target], max_weight)
                ax.plot([x0, x1], [y0, y1], color="tab:blue", zorder=1, **style)
                num_edges += 1
    for unit, weight in enumerate(final_weights):
        (x0, y0), (x1, y1) = positions[(num_layers - 1, unit)], output_position
        ax.plot([x0, x1], [y0, y1], color="tab:orange", zorder=1, **_edge_style(weight, max_weight))
        num_edges += 1

    node_colors = plt.get_cmap("Set2")
    for (_, unit), (x, y) in positions.items():
        ax.scatter([x], [y], s=900, color=node_colors(unit % 8), edgecolors="black", zorder=2)
        ax.annotate(unit_names[unit], (x, y), ha="center", va="center", fontsize=7, zorder=3)
    ax.scatter([output_position[0]], [output_position[1]], s=1100, color="lightgray", edgecolors="black", zorder=2)
    ax.annotate("Output", output_position, ha="center", va="center", fontsize=7, zorder=3)
    ax.annotate(
        f"relevance β = {relevance:.2f}",
        (output_position[0], output_position[1] - 0.45),
        ha="center",
        va="top",
        fontsize=8,
    )

    ax.set_xticks(range(num_layers + 1), [f"Layer {layer + 1}" for layer in range(num_layers)] + ["Output"])
    ax.set_yticks([])
    ax.set_xlim(-0.5, num_layers + 0.5)
    ax.set_ylim(-0.9, num_units - 0.4)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title)

    written = _save(fig, path)
    return RoutingFigure(path=written, num_nodes=len(positions) + 1, num_edges=num_edges)


# --------------------------------------------------------------------------- relevance per class (Fig. 8 spirit)


def _check_labels(num_samples: int, labels: list[str]) -> list[str]:
    if len(labels) != num_samples:
        raise ValueError(f"Got {num_samples} samples but {len(labels)} labels.")
    if num_samples == 0:
        raise ValueError("Nothing to plot: no samples given.")
    return [str(label) for label in labels]


def plot_relevance_by_class(relevance: Any, labels: list[str], path: str | Path, title: str | None = None) -> str:
    """Box plot with the individual points of the relevance weight beta for each class.

    Classes are ordered by median relevance (highest on top), which makes classes that lean on the image stand
    out; each row is annotated with its number of samples.

    Args:
        relevance: ``[N]`` relevance weights (``relevance`` of the model outputs).
        labels: ``N`` class names (gold relation, or e.g. the entity types of a tweet).
        path: where to write the PNG.
        title: optional figure title.

    Returns:
        The written path.
    """
    values = _to_numpy(relevance).reshape(-1)
    labels = _check_labels(values.size, labels)
    by_class: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(labels):
        by_class[name] = values[[label == name for label in labels]]
    classes = sorted(by_class, key=lambda name: float(np.median(by_class[name])))

    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(classes) + 1.5))
    ax.boxplot([by_class[name] for name in classes], vert=False, widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same input gives the same picture
    for row, name in enumerate(classes, start=1):
        jitter = rng.uniform(-0.15, 0.15, size=by_class[name].size)
        ax.scatter(by_class[name], row + jitter, s=8, alpha=0.5, color="tab:blue", zorder=3)
    ax.set_yticks(range(1, len(classes) + 1), [f"{name} (n={by_class[name].size})" for name in classes])
    ax.set_xlabel("relevance weight β")
    ax.set_xlim(*_beta_axis(values))
    ax.set_title(title or "Modality relevance per class")
    return _save(fig, path)


def _beta_axis(*values: np.ndarray) -> tuple[float, float]:
    """The whole range a sigmoid beta can take, [0, 1] (widened for a linear beta): a zoomed axis overstates gaps."""
    joined = np.concatenate([np.asarray(v, dtype=float).reshape(-1) for v in values])
    low, high = min(0.0, float(joined.min(initial=0.0))), max(1.0, float(joined.max(initial=1.0)))
    return low - 0.02 * (high - low), high + 0.02 * (high - low)


def plot_relevance_own_vs_other(
    own: Any, other: Any, path: str | Path, auc: float | None = None, other_label: str = "another tweet's picture"
) -> str:
    """beta of each tweet with its own picture and with another tweet's, one line per tweet: a model whose relevance
    reasoning works draws lines that fall from right (own) to left (other).

    Args:
        own: ``[N]`` beta with each tweet's own picture.
        other: ``[N]`` beta of the same tweets with another tweet's picture.
        path: where to write the PNG.
        auc: ROC AUC of own above other, shown in the title.
        other_label: what the other pictures are.

    Returns:
        The written path.
    """
    own, other = _to_numpy(own).reshape(-1), _to_numpy(other).reshape(-1)
    if own.size != other.size:
        raise ValueError(f"{own.size} own-picture values but {other.size} other-picture values")
    fig, ax = plt.subplots(figsize=(7.0, 3.0))
    rng = np.random.default_rng(0)  # fixed jitter: the same input gives the same picture
    for row, (values, colour) in enumerate(((other, "tab:gray"), (own, "tab:green"))):
        ax.scatter(values, row + rng.uniform(-0.12, 0.12, size=values.size), s=14, alpha=0.7, color=colour, zorder=3)
    for a, b in zip(own, other):
        ax.plot([b, a], [0, 1], color="tab:gray", alpha=0.15, linewidth=0.8)
    ax.set_yticks([0, 1], [other_label, "own picture"])
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlim(*_beta_axis(own, other))
    ax.set_xlabel("relevance weight β")
    score = f", ROC AUC {auc:.2f}" if auc is not None else ""
    ax.set_title(f"β for {own.size} test tweets: own picture vs {other_label}{score}")
    return _save(fig, path)


# --------------------------------------------------------------------------- routing-vector map (Fig. 6)


def _pca_2d(vectors: np.ndarray) -> np.ndarray:
    # plain SVD keeps this valid for any N >= 1 and any G >= 1
    centered = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    projected = centered @ components[:2].T
    if projected.shape[1] < 2:
        projected = np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    return projected


def _tsne_2d(vectors: np.ndarray, random_state: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    # sklearn requires perplexity < N; keep it near the usual 30 when there are enough samples
    perplexity = float(min(30.0, max(1.0, (vectors.shape[0] - 1) / 3)))
    # exact t-SNE is quick and precise for small maps; Barnes-Hut (threaded) only pays off for large ones
    method = "exact" if vectors.shape[0] <= _MAX_SAMPLES_FOR_EXACT_TSNE else "barnes_hut"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, random_state=random_state)
    return tsne.fit_transform(vectors)


def embed_2d(vectors: Any, method: str = "tsne", random_state: int = 0) -> tuple[np.ndarray, str]:
    """Projects ``[N, G]`` vectors to 2-D with t-SNE or PCA; returns the points and the method actually used.

    t-SNE needs a handful of samples, so with fewer than 5 it falls back to PCA (and logs it).
    """
    if method not in ("tsne", "pca"):
        raise ValueError(f"method must be 'tsne' or 'pca', got {method!r}.")
    vectors = _to_numpy(vectors)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"Expected routing vectors of shape [N, G] with N >= 1, got {vectors.shape}.")
    if method == "tsne" and vectors.shape[0] < _MIN_SAMPLES_FOR_TSNE:
        logger.info("Only %d samples: using PCA instead of t-SNE for the routing map.", vectors.shape[0])
        method = "pca"
    points = _tsne_2d(vectors, random_state) if method == "tsne" else _pca_2d(vectors)
    return points, method


def plot_routing_map(
    routing_vectors: Any,
    labels: list[str],
    path: str | Path,
    method: str = "tsne",
    title: str | None = None,
    random_state: int = 0,
) -> str:
    """2-D map of the samples' routing vectors, coloured by label (the paper's Fig. 6).

    Args:
        routing_vectors: ``[N, G]`` routing vectors (``routing_weights`` of the model outputs, one row a sample).
        labels: ``N`` class names used for the colours.
        path: where to write the PNG.
        method: ``"tsne"`` (falls back to PCA for fewer than 5 samples) or ``"pca"``.
        title: optional figure title; by default it names the projection used.
        random_state: seed of t-SNE.

    Returns:
        The written path.
    """
    points, used_method = embed_2d(routing_vectors, method=method, random_state=random_state)
    labels = _check_labels(points.shape[0], labels)
    classes = sorted(set(labels))
    colors = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")

    fig, ax = plt.subplots(figsize=(7.5, 6.0))
    for index, name in enumerate(classes):
        mask = np.array([label == name for label in labels])
        ax.scatter(points[mask, 0], points[mask, 1], s=12, alpha=0.8, color=colors(index % colors.N), label=name)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=1.5, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"Routing vectors ({'t-SNE' if used_method == 'tsne' else 'PCA'})")
    return _save(fig, path)
