"""Training guarantees that need a run in a process of its own: the NER run end to end, and a resume from any complete
checkpoint matches the uninterrupted run (two processes against one: tests/test_training_ddp.py; each in a file of its
own so that pytest-xdist's loadfile spreads them over the workers)."""

import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from training_helpers import (
    assert_complete_run_folder,
    assert_plain_transformers_predicts_as_rap_hf,
    assert_same_weights,
    make_learning_text_model,
    run_script,
    run_script_in_process,
)


@pytest.fixture(scope="module")
def learning_text_model(minilm) -> Path:
    return make_learning_text_model(minilm)


# An uninterrupted run that saves every 2 updates (the sample's 40 tweets at batch 8: 5 updates per epoch), so that
# checkpoint-10 lies on the second epoch's last update (saved after that epoch's evaluation) and checkpoint-6 in the
# middle of the second epoch.
# beta's matching loss keeps 16 earlier pictures, which a checkpoint must carry for an exact resume.
FULL_RUN = ("--dataset", "twitter2015", "--num_train_epochs", "3", "--seed", "5", "--save_steps", "2")
FULL_RUN += ("--relevance_negative_memory", "16")
KEEP_CHECKPOINTS = ("--save_total_limit", "10")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, learning_text_model) -> tuple[Path, dict]:
    """The uninterrupted NER run, in a process of its own as a user starts it (`python scripts/run_rap.py`, one torch
    thread as in this process): the run the end-to-end checks read and the resumed runs must equal."""
    folder = tmp_path_factory.mktemp("full") / "run"
    return folder, run_script(folder, learning_text_model, *FULL_RUN, *KEEP_CHECKPOINTS, launcher=False)


@pytest.mark.slow
def test_script_end_to_end_and_reload_reproduces_test_metrics(full_run):
    folder, results = full_run
    paths = (folder.parent, REPO_ROOT)  # figures: the RE end-to-end run (tests/test_training.py)
    assert_complete_run_folder(folder, results, "twitter2015", epochs=3, machine_paths=paths, figures=False)
    validation = [h["validation"]["f1"] for h in results["history"]]
    assert results["test"]["f1"] >= 0.25 and len(set(validation)) > 1  # it learnt: the epochs and their F1 differ
    assert results["config"]["relevance_negative_memory"] == 16  # resumed below
    assert_plain_transformers_predicts_as_rap_hf(folder)


def resume_from(checkpoint: Path, output_dir: Path, text_model: Path) -> dict:
    """A run folder that holds only `checkpoint` (as if the run had been killed after saving it), resumed."""
    output_dir.mkdir(parents=True)
    shutil.copytree(checkpoint, output_dir / checkpoint.name)
    refused = run_script_in_process(output_dir, text_model, *FULL_RUN, expect_failure=True)  # would mix two runs
    assert "--resume_from_checkpoint latest" in refused["stderr"]
    cut_off = output_dir / "checkpoint-999"  # a newer save that a kill interrupted: no completion marker
    cut_off.mkdir()
    (cut_off / "config.json").write_text((checkpoint / "config.json").read_text())
    return run_script_in_process(output_dir, text_model, *FULL_RUN, "--resume_from_checkpoint", "latest")


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["checkpoint-10", "checkpoint-6"], ids=["epoch end", "mid-epoch"])
def test_resume_from_any_complete_checkpoint_equals_the_uninterrupted_run(
    full_run, tmp_path, learning_text_model, checkpoint
):
    """Resumed in this process, after the uninterrupted run in another: resume must not depend on process state."""
    folder, full = full_run
    assert (folder / checkpoint / "rap_checkpoint_complete").exists()
    assert (folder / checkpoint / "rap_negative_memory-0.safetensors").exists()  # beta's negatives from earlier batches
    resumed = resume_from(folder / checkpoint, tmp_path / "cut", learning_text_model)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]  # no epoch's evaluation lost
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-5)
    assert [h["validation"] for h in resumed["history"]] == [h["validation"] for h in full["history"]]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"]["f1"] == pytest.approx(full["test"]["f1"], abs=1e-9) and full["test"]["f1"] >= 0.25
    assert_same_weights(folder, tmp_path / "cut")
