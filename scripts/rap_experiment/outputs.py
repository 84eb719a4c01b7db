"""What a training run leaves behind: results.json, analysis figures, the model card, and the Hub upload."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rap_hf.model_card import RAPModelCardData

logger = logging.getLogger(__name__)


def sample_label(label: Any) -> str:
    """One class name per sample for the figures: the relation (RE) or the first entity type, else 'no entity' (NER)."""
    if isinstance(label, str):
        return label
    types = [tag[2:] for tag in label if tag.startswith(("B-", "I-"))]
    return types[0] if types else "no entity"


def write_figures(test, config, figures_dir: Path, relevance: dict[str, Any] | None = None) -> dict[str, str]:
    """The paper's Fig. 6-8 for the test split (routing paths of one sample, relevance per class, routing map) and
    beta with own vs other pictures (`relevance`: the run's relevance check)."""
    from rap_hf.visualization import (
        UNIT_DISPLAY_NAMES,
        plot_relevance_by_class,
        plot_relevance_own_vs_other,
        plot_routing_map,
        plot_routing_paths,
    )

    if not test.routing_weights or not test.routing_weights[0]:
        return {}  # text-only baseline: nothing routed
    figures_dir.mkdir(parents=True, exist_ok=True)
    labels = [sample_label(label) for label in test.labels]
    routing = np.asarray(test.routing_weights)
    example = int(np.argmax(test.relevance))  # the sample that leans most on its image
    with_image = [i for i, used in enumerate(test.image_used) if used]  # beta means nothing without an image
    units = [UNIT_DISPLAY_NAMES[u] for u in config.fusion_units]
    figures = {
        "routing_paths": plot_routing_paths(
            routing[example],
            units,
            config.routing_layers,
            test.relevance[example],
            figures_dir / "routing_paths.png",
            title=f"Routing of test sample {example} ({labels[example]})",
        ).path,
        "routing_map": plot_routing_map(routing, labels, figures_dir / "routing_map.png"),
    }
    if with_image:
        figures["relevance_by_class"] = plot_relevance_by_class(
            [test.relevance[i] for i in with_image],
            [labels[i] for i in with_image],
            figures_dir / "relevance_by_class.png",
        )
    if relevance:
        figures["relevance_own_vs_other"] = plot_relevance_own_vs_other(
            relevance["own"],
            relevance["other"],
            figures_dir / "relevance_own_vs_other.png",
            auc=relevance["auc"],
            other_label=f"{relevance['other_pictures']} picture",
        )
    return {name: str(path) for name, path in figures.items()}


def write_run_outputs(
    results: dict[str, Any], test, model, output_dir: Path, args, card_data: RAPModelCardData | None = None
) -> None:
    """Writes results.json and the figures next to the saved model in `output_dir`, and hands what the run learnt
    after training (command, corpus folder, test scores, figures, timings) to the trainer's `card_data`; the card
    itself (README.md) is written from it with the model by `RAPTrainer.save_model`."""
    relevance = results.get("relevance")
    figures = write_figures(test, model.config, output_dir / "figures", relevance) if args.make_figures else {}
    results["figures"] = {name: str(Path(path).relative_to(output_dir)) for name, path in figures.items()}
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if card_data is not None:
        # links relative to the card (it sits next to figures/), so they work on the Hub and in any checkout
        card_data.figures = dict(results["figures"])
        card_data.command, card_data.data_dir = results["command"], results["data_dir"]
        card_data.test_metrics, card_data.timings = results["test"], dict(results["timings"])
        card_data.results_file = "results.json"
        card_data.relevance_check = {k: v for k, v in (relevance or {}).items() if k not in ("own", "other")} or None
    logger.info("results.json and figures in %s", output_dir)
