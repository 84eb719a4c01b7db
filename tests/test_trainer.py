"""rap_hf/trainer.py: a non-finite loss or gradient stops training and nothing non-finite is saved; a resume with
another configuration is refused with the fields that differ (a resume equals the uninterrupted run:
tests/test_training_runs.py)."""

from pathlib import Path

import pytest
import torch

from rap_hf import RAPForMultimodalNER, RAPProcessor, RAPTrainer, RAPTrainingArguments, load_dataset

from conftest import tiny_config
from training_helpers import make_tiny_text_model, run_script_in_process

EPOCHS = ("--dataset", "twitter2015", "--num_train_epochs", "3", "--seed", "5", "--save_total_limit", "10")


@pytest.fixture(scope="module")
def tiny_text_model(minilm) -> Path:
    return make_tiny_text_model(minilm)


def tiny_trainer(tmp_path: Path, tiny_text_model: Path, **arguments) -> RAPTrainer:
    corpus = load_dataset("twitter2015", text_only=True)
    labels = corpus["train"].features["ner_tags"].feature.names
    config = tiny_config(
        "ner",
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        prompt_source_length=128,
        multimodal=False,
    )
    model = RAPForMultimodalNER(config)
    processor = RAPProcessor.from_text_model(str(tiny_text_model))
    model.resize_token_embeddings(len(processor.tokenizer))
    args = RAPTrainingArguments(output_dir=str(tmp_path / "run"), save_strategy="no", disable_tqdm=True, **arguments)
    return RAPTrainer(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=corpus["train"],
        eval_dataset=corpus["validation"],
    )


def test_a_non_finite_loss_stops_training_at_its_update_and_nothing_is_saved(tmp_path, tiny_text_model):
    trainer = tiny_trainer(tmp_path, tiny_text_model, max_steps=3)
    with torch.no_grad():
        trainer.model.crf.transitions[0, 0] = float("nan")  # what a diverged update leaves behind
    with pytest.raises(FloatingPointError, match=r"update 1: non-finite loss: task_loss = nan"):
        trainer.train()
    assert trainer.state.global_step == 0
    with pytest.raises(FloatingPointError, match="weight tensors hold NaN.*crf.transitions"):
        trainer.save_model(str(tmp_path / "final"))
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_a_non_finite_gradient_stops_training_before_the_update(tmp_path, tiny_text_model):
    """A finite loss whose gradient overflows (here: an infinite factor on the CRF's gradient) stops before the
    optimizer applies it, naming the update and the parameter; the weights stay finite."""
    trainer = tiny_trainer(tmp_path, tiny_text_model, max_steps=3)
    trainer.model.crf.transitions.register_hook(lambda gradient: gradient * float("inf"))
    with pytest.raises(FloatingPointError, match=r"update 1: non-finite gradient in \[.*crf\.transitions"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(parameter.isfinite().all() for parameter in trainer.model.parameters())


@pytest.mark.parametrize("rule,kept", [("later", 2), ("earlier", 1)])
def test_a_tie_in_validation_f1_keeps_the_epoch_the_rule_names(tmp_path, tiny_text_model, rule, kept):
    """At learning rate 0 every epoch's validation F1 ties: the default keeps the last epoch (trained longest), the
    'earlier' rule the first, as transformers' own best-model choice does."""
    trainer = tiny_trainer(
        tmp_path, tiny_text_model, num_train_epochs=2, learning_rate=0.0, eval_strategy="epoch", best_model_on_tie=rule
    )
    trainer.train()
    scores = [entry["eval_f1"] for entry in trainer.state.log_history if "eval_f1" in entry]
    assert len(scores) == 2 and len(set(scores)) == 1  # a tie
    assert trainer.best["epoch"] == kept and trainer.best["f1"] == scores[0]


def test_an_unknown_tie_rule_is_refused(tmp_path):
    with pytest.raises(ValueError, match="best_model_on_tie='last': use 'later' or 'earlier'"):
        RAPTrainingArguments(output_dir=str(tmp_path), best_model_on_tie="last")


def test_resume_with_another_configuration_is_refused_with_the_fields(tmp_path, tiny_text_model):
    run_script_in_process(tmp_path / "run", tiny_text_model, *EPOCHS, "--save_steps", "5", "--stop_after_epoch", "1")
    resume = ("--resume_from_checkpoint", "latest")
    for changed, field in (
        (("--path_regularization_weight", "0"), "path_regularization_weight (1.5 -> 0.0)"),
        (("--prompt_length", "4"), "prompt_length (8 -> 4)"),
        (("--learning_rate", "1e-4"), "--learning_rate (0.001 -> 0.0001)"),
    ):
        refused = run_script_in_process(
            tmp_path / "run", tiny_text_model, *EPOCHS, "--save_steps", "5", *resume, *changed, expect_failure=True
        )
        assert "cannot resume from" in refused["stderr"] and field in refused["stderr"], refused["stderr"]
        assert refused["stderr"].count("\n") == 0  # one line
    # run-time options may change: more epochs, other logging
    extended = run_script_in_process(
        tmp_path / "run",
        tiny_text_model,
        *EPOCHS,
        "--save_steps",
        "5",
        *resume,
        "--logging_steps",
        "2",
        "--num_train_epochs",
        "4",
    )
    assert [h["epoch"] for h in extended["history"]] == [1, 2, 3, 4]


def test_training_on_cpu_does_not_warn_about_pinned_memory(tmp_path, tiny_text_model, recwarn):
    """Issue 25 item 5: Trainer pins loader memory by default; on a machine without a GPU torch warned at every
    loader (31 times in the main job)."""
    trainer = tiny_trainer(tmp_path, tiny_text_model, max_steps=2, eval_strategy="steps", eval_steps=1)
    trainer.train()
    assert trainer.state.global_step == 2
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]
