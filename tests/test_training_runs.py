"""Training guarantees that need several runs: two processes match one, resume matches an uninterrupted run (in
their own file so that pytest-xdist's loadfile spreads them over the workers)."""

from pathlib import Path

import pytest

from training_helpers import (
    assert_same_weights,
    make_learning_text_model,
    run_script,
    run_script_in_process,
    without_dropout,
)


@pytest.fixture(scope="module")
def learning_text_model(tmp_path_factory, minilm) -> Path:
    return make_learning_text_model(tmp_path_factory, minilm)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, learning_text_model):
    """DDP over gloo with per-device batch 4 x 2 processes vs batch 8 x 1 process (same effective batch), on a model
    that learns (both runs well above F1 0, so a collapsed run fails).

    The logged epoch loss is the mean over both processes' batches (it was the first process's alone: 12% off).
    Dropout is off (encoder and RAP layers), since the two layouts draw different dropout streams: both then compute
    the same updates on the same batches of 8, so the first-epoch loss agrees to 2% (float summation order) and test F1
    to 0.12. The two batch-composition terms are off,
    because each process computes them over its own batch by design: the router loss of Eq. 22 (a sum over the batch's
    pairs: 16 per process of 4 against 64 in a batch of 8) and the image-text matching loss (in-batch negatives: 3
    foreign images in a batch of 4, 7 in a batch of 8).
    """
    text_model = without_dropout(learning_text_model, tmp_path / "text_model")
    common = (
        "--hidden_dropout_prob",
        "0",
        "--dataset",
        "twitter2015",
        "--num_train_epochs",
        "4",
        "--seed",
        "3",
        "--relevance_matching_weight",
        "0",
        "--path_regularization_weight",
        "0",
    )
    one = run_script_in_process(tmp_path / "one", text_model, *common, "--per_device_train_batch_size", "8")
    two = run_script(tmp_path / "two", text_model, *common, "--per_device_train_batch_size", "4", processes=2)
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["num_test_examples"] == one["num_test_examples"]  # gather_for_metrics dropped the padding duplicates
    assert one["test"]["f1"] >= 0.25 and two["test"]["f1"] >= 0.25  # both learnt
    assert abs(two["test"]["f1"] - one["test"]["f1"]) <= 0.12
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=0.02)


@pytest.mark.slow
def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, learning_text_model):
    common = ("--dataset", "twitter2015", "--num_train_epochs", "3", "--seed", "7")
    # a process of its own for the uninterrupted run, in-process for the rest: resume must not depend on process state
    full = run_script(tmp_path / "full", learning_text_model, *common, launcher=False)
    interrupted = run_script_in_process(tmp_path / "cut", learning_text_model, *common, "--stop_after_epoch", "1")
    assert "stdout" in interrupted and not (tmp_path / "cut" / "results.json").exists()
    checkpoints = list((tmp_path / "cut").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "rap_checkpoint_complete").exists()
    refused = run_script_in_process(tmp_path / "cut", learning_text_model, *common, expect_failure=True)  # mixes runs
    assert "--resume_from_checkpoint latest" in refused["stderr"]
    cut_off = tmp_path / "cut" / "checkpoint-999"  # a newer save that a kill interrupted: no completion marker
    cut_off.mkdir()
    (cut_off / "config.json").write_text((checkpoints[0] / "config.json").read_text())
    resumed = run_script_in_process(
        tmp_path / "cut", learning_text_model, *common, "--resume_from_checkpoint", "latest"
    )
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-5)
    assert resumed["test"]["f1"] == pytest.approx(full["test"]["f1"], abs=1e-9)
    assert resumed["best_epoch"] == full["best_epoch"]
    validation = [h["validation"]["f1"] for h in full["history"]]
    assert full["test"]["f1"] >= 0.25 and len(set(validation)) > 1  # it learnt: the epochs and their F1 differ
    assert [h["validation"] for h in resumed["history"]] == [h["validation"] for h in full["history"]]
    assert_same_weights(tmp_path / "full", tmp_path / "cut")
