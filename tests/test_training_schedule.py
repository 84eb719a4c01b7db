"""The learning-rate schedule the paper trains with (Sec. 4.2: linear warm-up over the first 10% of the updates, then
linear decay), checked on the learning rate each update really used in the Trainer that scripts/run_rap.py builds;
and the start-up checks that turn a transformers release which drops an argument into an error."""

import dataclasses
import importlib.util
import math
import sys

import pytest
from transformers import TrainerCallback, TrainingArguments

from rap_hf.trainer import RAPTrainingArguments, check_training_argument_fields, check_warmup_schedule

from conftest import REPO_ROOT
from rap_experiment.run import build_trainer
from training_helpers import make_tiny_text_model, script_arguments


@pytest.fixture(scope="module")
def tiny_text_model(minilm):
    return make_tiny_text_model(minilm)


def run_script_parser(argv: list[str], monkeypatch) -> tuple:
    """scripts/run_rap.py's own argument parsing of `argv`."""
    spec = importlib.util.spec_from_file_location("run_rap_script", REPO_ROOT / "scripts" / "run_rap.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", ["run_rap.py", *argv])
    return script.parse_arguments()


class LearningRatesUsed(TrainerCallback):
    """The learning rate of every optimizer group at the start of each update: the one that update's step uses."""

    def __init__(self):
        self.rates: list[list[float]] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append([group["lr"] for group in optimizer.param_groups])


@pytest.mark.slow
def test_every_run_warms_up_over_a_tenth_of_the_updates_then_decays_linearly(tmp_path, tiny_text_model, monkeypatch):
    updates, encoder_lr, new_lr, relevance_lr = 20, 1e-3, 3e-3, 5e-3  # script_arguments' two, and beta's own
    argv = script_arguments(tmp_path / "run", tiny_text_model, "--max_steps", str(updates))
    argv += ["--relevance_learning_rate", str(relevance_lr)]
    model_args, data_args, args = run_script_parser(argv, monkeypatch)
    trainer = build_trainer(model_args, data_args, args)
    optimizer = trainer.create_optimizer()
    relevance = {
        id(p) for name, p in trainer.model.named_parameters() if ".relevance_" in f".{name}" and p.requires_grad
    }
    assert relevance and all(
        ({id(p) for p in group["params"]} <= relevance) == (group["lr"] == relevance_lr)
        for group in optimizer.param_groups
    )
    used = LearningRatesUsed()
    trainer.add_callback(used)
    trainer.train()
    assert len(used.rates) == updates
    warmup = math.ceil(0.1 * updates)  # the paper's 10%, the default of every run
    peaks = used.rates[warmup]  # per optimizer group, at the first update after the warm-up
    assert sorted(set(peaks)) == pytest.approx(sorted({encoder_lr, new_lr, relevance_lr}))
    for update, rates in enumerate(used.rates):  # update 0 is the first
        factor = update / warmup if update < warmup else (updates - update) / (updates - warmup)
        assert rates == pytest.approx([peak * factor for peak in peaks]), update
    assert used.rates[0] == [0.0] * len(used.rates[0])  # update 1 starts from 0, not at the peak
    assert max(used.rates[-1]) == pytest.approx(relevance_lr / (updates - warmup))  # the last update: nearly 0


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], (True, 5, "encoder")),  # the README's main command
        (["--num_train_epochs", "2", "--text_feature_source", "embeddings"], (True, 2, "embeddings")),  # options win
        (["--dataset", "twitter2015"], (False, None, None)),  # the other bundled corpora keep the sample's defaults
    ],
)
def test_main_job_defaults_apply_to_its_corpus_only_and_yield_to_options(argv, expected, monkeypatch, tmp_path):
    from rap_experiment.run import resolve_main_job_defaults

    model_args, data_args, args = run_script_parser([*argv, "--output_dir", str(tmp_path / "run")], monkeypatch)
    main_job = resolve_main_job_defaults(data_args, model_args, args)
    assert (main_job, args.num_train_epochs, model_args.text_feature_source) == expected


def test_a_declared_argument_the_installed_transformers_does_not_have_is_an_error():
    check_training_argument_fields(RAPTrainingArguments)  # today's fields: all read by transformers or by RAP
    # what transformers 5.25 did to `warmup_ratio`: the subclass still declares it, the base class reads it no more
    dropped = dataclasses.make_dataclass(
        "ArgumentsOfAnOlderRelease",
        [("warmup_ratio", float, dataclasses.field(default=0.1))],
        bases=(TrainingArguments,),
    )
    with pytest.raises(TypeError, match="warmup_ratio.*no longer has"):
        check_training_argument_fields(dropped)


def test_a_warmup_the_trainer_would_not_run_is_an_error(tmp_path):
    args = RAPTrainingArguments(output_dir=str(tmp_path), report_to="none")
    assert args.get_warmup_steps(1000) == 100
    check_warmup_schedule(args)
    args.warmup_steps = 0.25
    check_warmup_schedule(args)  # another share: still the schedule asked for
    ignoring = dataclasses.make_dataclass("IgnoresFractions", [], bases=(TrainingArguments,))
    ignoring.get_warmup_steps = lambda self, steps: int(self.warmup_steps)  # a release that reads counts only
    with pytest.raises(ValueError, match="warm-up would not run|would not run"):
        check_warmup_schedule(ignoring(output_dir=str(tmp_path), warmup_steps=0.1, report_to="none"))
