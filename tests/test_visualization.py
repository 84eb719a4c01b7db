"""The analysis pictures are valid PNGs and draw what the routing vector describes."""

import logging

import numpy as np
import pytest
from PIL import Image

from rap_hf.configuration_rap import FUSION_UNITS
from rap_hf.visualization import (
    UNIT_DISPLAY_NAMES,
    RoutingFigure,
    embed_2d,
    plot_relevance_by_class,
    plot_routing_map,
    plot_routing_paths,
    routing_vector_size,
    split_routing_weights,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNITS = ["RAU", "FSRU", "CFU"]


def test_every_fusion_unit_has_one_display_name():
    assert list(UNIT_DISPLAY_NAMES) == list(FUSION_UNITS) and list(UNIT_DISPLAY_NAMES.values()) == UNITS


def assert_valid_png(path) -> None:
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 50 and image.size[1] > 50


def test_split_routing_weights_layout_is_row_major_source_to_target():
    # U=2, L=3: two 2x2 blocks then 2 final weights
    vector = np.arange(10, dtype=float)
    transitions, final = split_routing_weights(vector, num_units=2, num_layers=3)
    assert len(transitions) == 2
    np.testing.assert_array_equal(transitions[0], [[0, 1], [2, 3]])  # row = source j, column = target i
    np.testing.assert_array_equal(transitions[1], [[4, 5], [6, 7]])
    np.testing.assert_array_equal(final, [8, 9])
    assert routing_vector_size(3, 4) == 3 * 3 * 3 + 3


@pytest.mark.parametrize("units", [UNITS, UNITS[:2]])
@pytest.mark.parametrize("num_layers", [1, 2, 3, 4, 5, 6])
def test_plot_routing_paths_counts_nodes_and_edges(tmp_path, units, num_layers):
    num_units = len(units)
    weights = np.random.default_rng(num_layers).random(routing_vector_size(num_units, num_layers))
    figure = plot_routing_paths(weights, units, num_layers, relevance=0.47, path=tmp_path / "routing.png")

    assert isinstance(figure, RoutingFigure)
    assert figure.num_nodes == num_units * num_layers + 1
    assert figure.num_edges == num_units * num_units * (num_layers - 1) + num_units
    assert_valid_png(figure.path)


def test_plot_routing_paths_accepts_zeros_and_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    weights = torch.zeros(routing_vector_size(3, 2))
    figure = plot_routing_paths(weights, UNITS, 2, relevance=0.0, path=tmp_path / "sub" / "zeros.png", title="zero")
    assert figure.num_edges == 12
    assert_valid_png(figure.path)


def test_plot_routing_paths_rejects_wrong_size(tmp_path):
    with pytest.raises(ValueError, match="size U\\^2\\(L-1\\)\\+U = 21"):
        plot_routing_paths(np.ones(20), UNITS, 3, relevance=0.5, path=tmp_path / "bad.png")
    with pytest.raises(ValueError, match="NaN"):
        plot_routing_paths(np.full(21, np.nan), UNITS, 3, relevance=0.5, path=tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_relevance_by_class(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["/per/per/peer"] * 7 + ["/loc/loc/contain"] * 4 + ["None"]
    path = plot_relevance_by_class(rng.random(len(labels)), labels, tmp_path / "relevance.png")
    assert path == str(tmp_path / "relevance.png")
    assert_valid_png(path)
    with pytest.raises(ValueError, match="12 samples but 2 labels"):
        plot_relevance_by_class(rng.random(12), ["a", "b"], tmp_path / "x.png")


@pytest.mark.parametrize("num_samples", [1, 3, 5, 12])
def test_plot_routing_map_tsne_small_n_does_not_crash(tmp_path, num_samples):
    vectors = np.random.default_rng(num_samples).random((num_samples, routing_vector_size(3, 3)))
    labels = [f"class{i % 3}" for i in range(num_samples)]
    path = plot_routing_map(vectors, labels, tmp_path / "map.png", method="tsne")
    assert_valid_png(path)


def test_embed_2d_falls_back_to_pca_below_five_samples(caplog):
    vectors = np.random.default_rng(0).random((4, 21))
    with caplog.at_level(logging.INFO, logger="rap_hf.visualization"):
        points, used = embed_2d(vectors, method="tsne")
    assert used == "pca" and points.shape == (4, 2)
    assert "PCA instead of t-SNE" in caplog.text

    points, used = embed_2d(np.random.default_rng(1).random((8, 21)), method="tsne")
    assert used == "tsne" and points.shape == (8, 2)


def test_pca_map_and_bad_method(tmp_path):
    vectors = np.random.default_rng(0).random((30, 5))
    path = plot_routing_map(vectors, ["a", "b"] * 15, tmp_path / "pca.png", method="pca")
    assert_valid_png(path)
    points, _ = embed_2d(np.ones((3, 1)), method="pca")  # one feature, constant: still 2-D, no crash
    assert points.shape == (3, 2)
    with pytest.raises(ValueError, match="method"):
        plot_routing_map(vectors, ["a"] * 30, tmp_path / "bad.png", method="umap")
