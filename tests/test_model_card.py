"""Model cards carry the run's real numbers in their metadata and keep the paper's numbers apart; RAPTrainer fills
the card data while it trains and writes the card (README.md) with the model, listing only the changed arguments."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from transformers import TrainerCallback

from rap_hf.model_card import (
    DATASETS,
    NO_CHECKPOINT_NOTE,
    REPORTED_RESULTS,
    RAPModelCardData,
    config_changes,
    render_model_card,
    write_model_card,
)

from conftest import tiny_config
from training_helpers import TINY_OVERRIDES, make_tiny_text_model

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTHORS = "Reported by the authors (Chen et al., Neurocomputing 2025)"
MACHINE_PATH = re.compile(r"(^|[^\w.])/(work|tmp|root|home)/")


def ner_results() -> dict:
    return {
        "task": "ner",
        "dataset": "twitter2017",
        "command": "accelerate launch scripts/run_rap.py --task ner --dataset twitter2017 --seed 42",
        "config": {"num_routing_layers": 4, "num_crops": 3},
        "training_args": {"learning_rate": 3e-5, "num_train_epochs": 30, "seed": 42},
        "versions": {"rap_hf": "0.1.0", "torch": "2.14.1", "transformers": "5.24.0"},
        "timings": {"train_seconds": 3600.0, "eval_seconds": 42.5},
        "best_epoch": 12,
        "validation": {"precision": 0.861234, "recall": 0.8523, "f1": 0.85674, "per_type": {}},
        "test": {
            "precision": 0.851234,
            "recall": 0.86789,
            "f1": 0.859477,
            "accuracy": 0.98,
            "per_type": {
                "PER": {"precision": 0.9123, "recall": 0.9234, "f1": 0.9178, "support": 621},
                "MISC": {"precision": 0.6011, "recall": 0.5523, "f1": 0.5757, "support": 126},
            },
            "strict": {"precision": 0.8411, "recall": 0.8533, "f1": 0.8472, "per_type": {}},
        },
        "history": [{"epoch": epoch, "loss": 1.0 / epoch, "validation": {}} for epoch in range(1, 31)],
    }


def re_results() -> dict:
    return {
        "task": "re",
        "dataset": "mnre",
        "command": "accelerate launch scripts/run_rap.py --task re --dataset mnre",
        "best_epoch": 3,
        "test": {
            "precision": 0.80125,
            "recall": 0.7911,
            "f1": 0.796142,
            "per_type": {"/per/per/peer": {"precision": 0.7, "recall": 0.6, "f1": 0.6462, "support": 55}},
        },
    }


def model_index_metrics(text: str) -> dict:
    card = ModelCard(text)
    model_index = card.data.to_dict()["model-index"]
    (result,) = model_index[0]["results"]
    return {metric["type"]: metric["value"] for metric in result["metrics"]}, result, model_index[0]["name"]


def yaml_front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_index_equals_results_json_in_percent():
    results = ner_results()
    text = render_model_card(results, "org/rap-twitter2017")
    metrics, result, name = model_index_metrics(text)

    assert metrics == {key: round(100 * results["test"][key], 2) for key in ("precision", "recall", "f1")}
    assert metrics == {"precision": 85.12, "recall": 86.79, "f1": 85.95}
    assert result["task"]["type"] == "token-classification"
    assert result["dataset"] == {"name": "Twitter-2017", "type": "twitter2017", "split": "test"}
    assert name == "rap-twitter2017"

    # the same numbers, read straight from the YAML block
    metadata = yaml_front_matter(text)
    yaml_metrics = metadata["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in yaml_metrics} == metrics
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "token-classification"
    assert {"rap", "multimodal", "ner"} <= set(metadata["tags"])
    assert "datasets" not in metadata  # the corpora have no canonical Hub ids; the model-index describes them


def test_body_has_usage_command_tables_and_separate_authors_row():
    text = render_model_card(ner_results(), "org/rap-twitter2017")

    assert 'AutoModel.from_pretrained("org/rap-twitter2017", trust_remote_code=True)' in text
    assert "accelerate launch scripts/run_rap.py --task ner --dataset twitter2017 --seed 42" in text
    assert "| This checkpoint (rap-hf) | test | 85.12 | 86.79 | 85.95 |" in text
    assert "| This checkpoint (rap-hf) | validation, epoch 12 | 86.12 | 85.23 | 85.67 |" in text
    assert "| This checkpoint (rap-hf), strict IOB2 | test | 84.11 | 85.33 | 84.72 |" in text
    assert f"| *{AUTHORS}* | test | 87.63 | 87.89 | 87.76 |" in text
    assert "| PER | 91.23 | 92.34 | 91.78 | 621 |" in text
    assert "| MISC | 60.11 | 55.23 | 57.57 | 126 |" in text
    assert "| `transformers` | `5.24.0` |" in text
    assert NO_CHECKPOINT_NOTE not in text
    # the authors' numbers must never reach the metadata
    assert "87.76" not in text.split("---\n")[1]


def test_relation_extraction_card():
    text = render_model_card(re_results(), "org/rap-mnre")
    metrics, result, _ = model_index_metrics(text)
    assert metrics == {"precision": 80.12, "recall": 79.11, "f1": 79.61}
    assert result["task"]["type"] == "text-classification"
    assert yaml_front_matter(text)["pipeline_tag"] == "text-classification"
    assert "relation-extraction" in yaml_front_matter(text)["tags"]
    assert 'AutoModel.from_pretrained("org/rap-mnre", trust_remote_code=True)' in text
    assert f"| *{AUTHORS}* | test | 83.59 | 82.67 | 83.13 |" in text
    assert "| Relation | Precision | Recall | F1 | Support |" in text
    assert "strict IOB2" not in text


def test_figures_are_linked_relative():
    figures = {"routing_paths": "figures/routing_paths.png", "my_plot": "figures/extra.png"}
    text = render_model_card(re_results(), "org/rap-mnre", figures)
    assert "](figures/routing_paths.png)" in text
    assert "![My plot](figures/extra.png)" in text
    assert "## Figures" not in render_model_card(re_results(), "org/rap-mnre")


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_placeholder_card_shows_only_the_authors_row(dataset):
    text = render_model_card(None, f"org/rap-{dataset}", dataset=dataset)
    card = ModelCard(text)
    assert "model-index" not in card.data.to_dict()
    assert NO_CHECKPOINT_NOTE in text
    reported = REPORTED_RESULTS[dataset]
    row = f"| *{AUTHORS}* | test | {reported['precision']:.2f} | {reported['recall']:.2f} | {reported['f1']:.2f} |"
    assert row in text
    assert "This checkpoint (rap-hf)" not in text


def test_invalid_results_are_rejected():
    results = ner_results()
    del results["command"]
    with pytest.raises(ValueError, match="command"):
        render_model_card(results, "org/x")
    results = ner_results()
    results["dataset"] = "mnre"
    with pytest.raises(ValueError, match="re dataset"):
        render_model_card(results, "org/x")
    with pytest.raises(ValueError, match="dataset="):
        render_model_card(None, "org/x")
    with pytest.raises(ValueError, match="repo_id"):
        render_model_card(ner_results(), "")


def test_write_model_card_relativizes_absolute_figure_paths(tmp_path):
    results_path = tmp_path / "run" / "results.json"
    results_path.parent.mkdir()
    results_path.write_text(json.dumps(re_results()))
    figure = tmp_path / "run" / "figures" / "routing_map.png"
    out = write_model_card(results_path, tmp_path / "run" / "README.md", "org/rap-mnre", {"routing_map": str(figure)})
    text = Path(out).read_text()
    assert "](figures/routing_map.png)" in text
    assert model_index_metrics(text)[0]["f1"] == 79.61


def load_render_script():
    script_path = REPO_ROOT / "scripts" / "render_model_cards.py"
    spec = importlib.util.spec_from_file_location("render_model_cards", script_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_script_with_and_without_results(tmp_path):
    script = load_render_script()
    assert script.main(["--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "no-runs")]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.md")) == ["mnre.md", "twitter2015.md", "twitter2017.md"]
    assert NO_CHECKPOINT_NOTE in (tmp_path / "mnre.md").read_text()

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(ner_results()))
    assert script.main(["--results", str(results_path), "--out-dir", str(tmp_path), "--org", "my-org"]) == 0
    text = (tmp_path / "twitter2017.md").read_text()
    assert 'AutoModel.from_pretrained("my-org/rap-twitter2017", trust_remote_code=True)' in text
    assert model_index_metrics(text)[0]["f1"] == 85.95


@pytest.fixture(scope="module")
def rendered_by_script(tmp_path_factory) -> Path:
    """What `python scripts/render_model_cards.py` writes today (cards from model_cards/runs/, else placeholders)."""
    out = tmp_path_factory.mktemp("cards")
    assert load_render_script().main(["--out-dir", str(out)]) == 0
    return out


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_committed_cards_match_the_renderer(dataset, rendered_by_script):
    """Every card is what scripts/render_model_cards.py writes today: placeholders, or from model_cards/runs/."""
    text = (REPO_ROOT / "model_cards" / f"{dataset}.md").read_text(encoding="utf-8")
    has_run = (REPO_ROOT / "model_cards" / "runs" / f"{dataset}_results.json").is_file()
    assert (NO_CHECKPOINT_NOTE in text) == (not has_run)
    assert text == (rendered_by_script / f"{dataset}.md").read_text(encoding="utf-8")
    if has_run:  # the arguments that differ from run_rap.py's defaults, not all of them
        arguments = text.split("### Training arguments", 1)[1].split("###", 1)[0]
        assert "| `learning_rate` |" in arguments and "`adam_beta1`" not in arguments
        assert "`output_dir`" not in arguments


def test_first_lines_and_metadata_say_what_the_run_was():
    results = ner_results()
    results.update(
        num_train_examples=40,
        data_dir="bundled sample",
        model_args={"text_model": "minilm", "vision_model": "efficientnet-lite0"},
    )
    text = render_model_card(results, "org/rap-twitter2017")
    status = next(line for line in text.splitlines() if line.startswith("> **Status:**"))
    for fact in (
        "bundled **synthetic** sample",
        "40 training examples",
        "with images",
        "30 epochs",
        "MiniLM-L6",
        "ImageNet-pretrained EfficientNet-Lite0",
    ):
        assert fact in status, fact
    metadata = yaml_front_matter(text)
    assert metadata["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "synthetic" in metadata["model-index"][0]["results"][0]["dataset"]["name"]
    random_vision = render_model_card(
        {**results, "model_args": {"text_model": "bert-base-uncased", "vision_model": ""}}, "org/x"
    )
    assert "**randomly initialised** ResNet-101" in random_vision.split("## Model description")[0]
    assert yaml_front_matter(random_vision)["base_model"] == "bert-base-uncased"
    # "How to use": the pipeline and the AutoModel + processor forward of the task
    assert 'pipeline(model="org/rap-twitter2017", trust_remote_code=True)' in text
    assert "processor.post_process_ner(outputs.predictions, word_ids" in text
    assert "subject_spans=[(0, 2)]" in render_model_card(re_results(), "org/rap-mnre")


def test_no_machine_path_in_committed_cards_docs_and_results():
    pattern = MACHINE_PATH
    files = [
        *(REPO_ROOT / "model_cards").rglob("*.md"),
        *(REPO_ROOT / "model_cards").rglob("*.json"),
        *(REPO_ROOT / "docs").rglob("*.md"),
        REPO_ROOT / "README.md",
    ]
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_card_states_how_the_run_differs_from_the_paper():
    assert "Not the paper's setting" not in render_model_card(ner_results(), "org/rap-twitter2017")
    results = ner_results()
    results.update(
        num_train_examples=1000,
        data_dir="../shared/data",
        data_args={"max_train_samples": 1000, "text_only_data": True},
        model_args={"text_model": "minilm"},
    )
    results["training_args"]["num_train_epochs"] = 3
    text = render_model_card(results, "org/rap-twitter2017")
    assert "1,000 training examples (a subset: `max_train_samples=1000`) from `../shared/data`; images not used" in text
    line = next(line for line in text.splitlines() if "Not the paper's setting" in line)
    for difference in ("`minilm` instead of `bert-base-uncased`", "no images", "a subset", "3 epochs instead of 30"):
        assert difference in line


def test_card_lists_only_the_training_arguments_that_differ_from_their_defaults(tmp_path):
    from rap_hf.trainer import RAPTrainingArguments

    results = ner_results()
    results["training_args"] = RAPTrainingArguments(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-4,
        feature_cache_dir=str(tmp_path / "features"),
        report_to="none",
    ).to_dict()
    text = render_model_card(results, "org/rap-twitter2017")
    arguments = text.split("### Training arguments", 1)[1].split("###", 1)[0]
    assert "differ from the defaults of `RAPTrainingArguments`" in arguments
    assert re.findall(r"^\| `(\w+)` \| `([^`]*)` \|$", arguments, re.M) == [("learning_rate", "0.0001")]
    assert str(tmp_path) not in text and not MACHINE_PATH.search(text)


def test_config_section_lists_the_fields_that_differ_from_rapconfig():
    changes = config_changes(tiny_config().to_diff_dict())
    assert changes["fusion_num_heads"] == 4 and changes["relevance_dim"] == 16
    assert not {"text_config", "vision_config", "id2label", "graph_iterations", "relevance_gate"} & set(changes)
    relation = config_changes(tiny_config("re").to_diff_dict())
    assert "routing_layers" not in relation  # the RE default (3 layers) is RAPConfig's own, not a change


# ------------------------------------------------------------------------ filled while RAPTrainer trains


class CardSpy(TrainerCallback):
    """What the card data held right after each evaluation (RAPTrainer's card callback runs before this one)."""

    def __init__(self, card: RAPModelCardData):
        self.card, self.seen = card, []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.seen.append((state.global_step, [entry["step"] for entry in self.card.history]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm, one_thread):
    """A RAPTrainer of a tiny model, 2 updates with a validation after each, tested, saved with its card."""
    from rap_hf import RAPTrainer, RAPTrainingArguments, build_model_and_processor, load_dataset

    tmp_path = tmp_path_factory.mktemp("card_run")
    corpus = load_dataset("twitter2015")
    labels = corpus["train"].features["ner_tags"].feature.names
    text_model = make_tiny_text_model(minilm)
    model, processor = build_model_and_processor("ner", labels, str(text_model), "", **json.loads(TINY_OVERRIDES))
    args = RAPTrainingArguments(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-3,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        report_to="none",
        save_strategy="no",
        feature_cache_dir=str(tmp_path / "features"),
    )
    card = RAPModelCardData(repo_id="org/rap-tiny", command="python train_tiny.py")
    trainer = RAPTrainer(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=corpus["train"],
        eval_dataset=corpus["validation"],
        model_card_data=card,
    )
    spy = CardSpy(card)
    trainer.add_callback(spy)
    trainer.train()
    test = trainer.evaluate(corpus["test"], metric_key_prefix="test")
    trainer.save_model()
    readme = (tmp_path / "run" / "README.md").read_text(encoding="utf-8")
    return {
        "trainer": trainer,
        "card": card,
        "spy": spy,
        "test": test,
        "labels": labels,
        "tmp_path": tmp_path,
        "text_model": text_model,
        "readme": readme,
    }


@pytest.mark.slow
def test_callback_fills_the_card_data_during_training(trained):
    card, trainer = trained["card"], trained["trainer"]
    # one more validation row right after each evaluation, not only at the end; the test evaluation adds none
    assert trained["spy"].seen == [(1, [1]), (2, [1, 2]), (2, [1, 2])]
    validations = [entry for entry in trainer.state.log_history if "eval_f1" in entry]
    assert [entry["validation"]["f1"] for entry in card.history] == [entry["eval_f1"] for entry in validations]
    assert card.task == "ner" and card.labels == trained["labels"] and card.dataset_id == "twitter2015"
    assert card.text_encoder == trained["text_model"].name and card.vision_encoder == ""  # random vision encoder
    assert card.num_train_examples == len(trainer.train_dataset) and card.trained
    assert card.best_epoch == trainer.best["epoch"] and card.validation["f1"] == trainer.best["f1"]
    assert card.test_metrics["f1"] == trained["test"]["test_f1"] and "per_type" in card.test_metrics
    assert {"train_seconds", "eval_seconds"} <= set(card.timings) and card.versions["transformers"]
    # only what differs from a default RAPTrainingArguments(), without this machine's paths
    assert card.arguments_class == "RAPTrainingArguments"
    changed = {name: card.training_arguments[name] for name in ("learning_rate", "max_steps", "eval_steps")}
    assert changed == {"learning_rate": 1e-3, "max_steps": 2, "eval_steps": 1}
    hidden = {"adam_beta1", "output_dir", "feature_cache_dir", "remove_unused_columns"}
    assert not hidden & set(card.training_arguments)
    assert card.config_changes["fusion_num_heads"] == 4 and "text_config" not in card.config_changes
    # the user's own fields win over what training shows
    assert card.repo_id == "org/rap-tiny" and card.command == "python train_tiny.py"


@pytest.mark.slow
def test_save_model_writes_a_card_the_hub_parses(trained):
    text, test = trained["readme"], trained["test"]
    card = ModelCard(text)
    metrics, result, name = model_index_metrics(text)
    assert metrics == {key: round(100 * test[f"test_{key}"], 2) for key in ("precision", "recall", "f1")}
    assert name == "rap-tiny" and result["dataset"]["type"] == "twitter2015"
    assert card.data.to_dict()["pipeline_tag"] == "token-classification"
    assert 'AutoModel.from_pretrained("org/rap-tiny", trust_remote_code=True)' in card.text
    assert f"| This checkpoint (rap-hf) | test | {100 * test['test_precision']:.2f} |" in text
    assert f"| *{AUTHORS}* | test | 74.38 | 78.92 | 76.58 |" in text  # the paper's Twitter-2015 row
    assert "- **Not the paper's setting:**" in text and "instead of `bert-base-uncased`" in text
    assert "### Training history" in text and "### Test scores per type" in text
    arguments = dict(
        re.findall(r"^\| `(\w+)` \| `([^`]*)` \|$", text.split("### Training arguments", 1)[1].split("###", 1)[0], re.M)
    )
    assert arguments["learning_rate"] == "0.001" and arguments["max_steps"] == "2"
    assert "adam_beta1" not in arguments and "output_dir" not in arguments
    assert str(trained["tmp_path"]) not in text and str(REPO_ROOT) not in text and not MACHINE_PATH.search(text)
    # the generic transformers card is never written over it
    trained["trainer"].create_model_card()
    assert (trained["tmp_path"] / "run" / "README.md").read_text(encoding="utf-8") == text


@pytest.mark.parametrize("share, pictures", [(0.0, None), (0.5, "50% of the pictures"), (1.0, "every picture")])
def test_the_card_says_which_objects_the_model_was_trained_on(share, pictures):
    from rap_hf import RAPForMultimodalNER

    grounded_training = share > 0
    config = tiny_config("ner", grounded_objects_share=share, crop_dropout=0.0)
    card = RAPModelCardData()
    card.register_model(RAPForMultimodalNER(config))
    line = next(line for line in card.setting_lines() if line.startswith("- **Visual objects:**"))
    assert ("the corpus's crops set aside" in line) == grounded_training, line
    assert ("the crops the corpus ships where it has them" in line) != grounded_training, line
    assert 'grounding_model="vision-encoder"' in line
    assert pictures is None or f"for {pictures}," in line, line
    assert "crop_dropout" not in line


def test_the_card_says_when_training_hid_the_crops():
    """A model trained with `crop_dropout` says so (it reads a picture without crops); the share is the config's."""
    from rap_hf import RAPForMultimodalNER

    card = RAPModelCardData()
    card.register_model(RAPForMultimodalNER(tiny_config("ner", crop_dropout=0.25, grounded_objects_share=0.5)))
    line = next(line for line in card.setting_lines() if line.startswith("- **Visual objects:**"))
    assert "for 50% of the pictures," in line and "the crops of 25% of the tweets were hidden" in line, line
    assert card.crop_dropout == 0.25
