"""scripts/rap_experiment/run.py: how a run records its values, and its options generated from RAPConfig."""

import dataclasses
from pathlib import Path

from rap_hf import RAPConfig

from rap_experiment.run import NOT_OPTIONS, ModelArguments, config_field_help, public_value, rap_config_kwargs


def test_results_record_no_machine_path_but_keep_labels_that_look_like_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert public_value(str(tmp_path / "data")) == "data"  # inside the working folder: relative
    assert public_value(str(Path(__file__).resolve())) == Path(__file__).name  # elsewhere: the last part
    assert public_value("/per/per/parent") == "/per/per/parent"  # an MNRE relation, not a folder of this machine
    assert public_value("/org/org/place_of_birth") == "/org/org/place_of_birth"
    assert public_value(3) == 3 and public_value("minilm") == "minilm"


def test_every_settable_rapconfig_field_is_an_option_with_its_docstring_help():
    options = {field.name: field for field in dataclasses.fields(ModelArguments)}
    own = set(vars(RAPConfig)["__annotations__"])
    derived = NOT_OPTIONS  # set from the corpus, the encoders or other options
    assert own - derived <= set(options)
    for name in own - derived:
        assert options[name].default is None  # unset: RAPConfig's own default
        assert options[name].metadata["help"].startswith(f"RAPConfig.{name}: ") and config_field_help(name), name
    assert options["relevance_gate"].metadata["choices"] == ["tanh", "identity", "rectified", "veto"]
    arguments = ModelArguments(routing_layers=3, fusion_units="rau, cfu", use_relevance_reasoning=False)
    assert rap_config_kwargs("ner", arguments) == {
        "routing_layers": 3,
        "fusion_units": ["rau", "cfu"],
        "use_relevance_reasoning": False,
    }


def test_a_second_default_run_replaces_the_first_and_a_named_folder_is_refused(tmp_path, monkeypatch, caplog):
    """Issue 25 item 2: the README's main command works twice; `--output_dir DIR` keeps the refusal."""
    import pytest

    from rap_experiment.run import DEFAULT_OUTPUT_DIR, RunArguments, check_output_dir

    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / DEFAULT_OUTPUT_DIR
    (earlier / "checkpoint-5").mkdir(parents=True)
    (earlier / "results.json").write_text("{}")
    default = RunArguments(report_to="none")
    assert default.output_dir == DEFAULT_OUTPUT_DIR and default.default_output_dir
    with caplog.at_level("WARNING"):
        check_output_dir(default)
    assert not earlier.exists() and "holds an earlier default run: replacing it" in caplog.text

    named = RunArguments(output_dir=str(tmp_path / "mine"), report_to="none")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a run; pass --overwrite_output_dir"):
        check_output_dir(named)
    assert (tmp_path / "mine" / "results.json").exists()

    earlier.mkdir(parents=True)  # the default folder holding something no run wrote is never deleted
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds a run"):
        check_output_dir(RunArguments(report_to="none"))
    assert (earlier / "notes.txt").exists()
