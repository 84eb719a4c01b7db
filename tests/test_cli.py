"""The `rap-hf` command line: JSON and JSONL predictions, line-numbered errors, routing picture."""

import json
from pathlib import Path

import pytest
from PIL import Image

from rap_hf.cli import main
from rap_hf.pipelines import pipeline

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


@pytest.fixture()
def inputs(tmp_path):
    """A JSONL file using every input form, with a relative image path and a missing image."""
    Image.new("RGB", (40, 40), (200, 20, 20)).save(tmp_path / "red.png")
    lines = [
        {"text": "Kevin Durant visits  Oracle Arena !", "image": "red.png"},
        None,  # blank line: skipped, but counted in line numbers
        {"tokens": ["Dakota", "tonight", "!"], "image": "missing.jpg", "crops": ["red.png"]},
        {"text": "Vela Motors announces new headquarters in Bellhaven", "image": str(tmp_path / "red.png")},
        {"text": "Beyoncé & Jay-Z @ Wembley... 😂"},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join((json.dumps(line, ensure_ascii=False) if line else "") + "\n" for line in lines))
    return path


def test_jsonl_round_trip(folders, inputs, tmp_path, capsys, caplog):
    output = tmp_path / "out" / "predictions.jsonl"
    assert main(["predict", "--model", str(folders["ner"]), "--input", str(inputs), "--output", str(output)]) == 0
    stderr = capsys.readouterr().err
    assert "missing.jpg" in caplog.text + stderr  # warned, then predicted text-only
    assert "predicting: 100%" in stderr and "4/4" in stderr  # the progress bar, over the lines
    assert stderr.rstrip().splitlines()[-1] == f"wrote 4 predictions to {output}"
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [record["line"] for record in records] == [1, 3, 4, 5]
    sources = [json.loads(line) for line in inputs.read_text(encoding="utf-8").splitlines() if line]
    expected = pipeline(folders["ner"], device="cpu")(
        [
            {
                **s,
                "image": str(tmp_path / s["image"]) if s.get("image") == "red.png" else s.get("image"),
                "crops": [str(tmp_path / c) for c in s.get("crops", [])],
            }
            for s in sources
        ]
    )
    for record, source, prediction in zip(records, sources, expected):
        text = source.get("text") or " ".join(source["tokens"])
        assert record["text"] == text
        assert [record["image_used"], record["relevance"] > 0] == [prediction["image_used"]] * 2
        assert [(e["type"], e["start_char"], e["end_char"]) for e in record["entities"]] == [
            (e["type"], e["start_char"], e["end_char"]) for e in prediction["entities"]
        ]
        for entity in record["entities"]:
            assert text[entity["start_char"] : entity["end_char"]] == entity["text"]
    assert records[0]["image_used"] and not records[1]["image_used"]


def test_jsonl_to_stdout_in_process(folders, inputs, capsys):
    assert main(["predict", "--model", str(folders["ner"]), "--input", str(inputs), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["line"] for line in captured.out.splitlines()] == [1, 3, 4, 5]
    assert captured.err.rstrip().endswith("\nwrote 4 predictions to standard output")


@pytest.mark.parametrize("grounding", [None, "none"])
def test_a_picture_alone_is_grounded_as_the_model_was_saved_unless_told(folders, tmp_path, capsys, grounding):
    """`--grounding-model`: the default grounds a picture given without crops (as the pipeline does); `none` reads
    the picture alone."""
    picture = tmp_path / "green.png"
    Image.new("RGB", (64, 48), (40, 170, 60)).save(picture)
    flag = ["--grounding-model", grounding] if grounding else []
    argv = ["predict", "--model", str(folders["ner"]), "--text", "Dakota tonight", "--image", str(picture)]
    assert main([*argv, *flag]) == 0
    result = json.loads(capsys.readouterr().out)
    pipe = pipeline(folders["ner"], device="cpu", grounding_model=grounding)
    assert (pipe.grounder is None) == (grounding == "none")
    assert result == pipe("Dakota tonight", image=str(picture))


def test_single_text_prints_json(folders, capsys):
    assert main(["predict", "--model", str(folders["ner"]), "--text", "Kevin Durant visits Oracle Arena"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"entities", "relevance", "routing_weights", "image_used"}
    assert result == pipeline(folders["ner"], device="cpu")("Kevin Durant visits Oracle Arena")


def test_relation_from_the_command_line(folders, capsys):
    text = "Bill Cosby 's star on Hollywood Walk of Fame"
    args = [
        "predict",
        "--model",
        str(folders["re"]),
        "--text",
        text,
        "--subject",
        "Bill Cosby",
        "--object",
        "Hollywood Walk of Fame",
    ]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["subject"]["text"] == "Bill Cosby" and result["object"]["end_word"] == 9
    assert result["relation"] in result["distribution"]


def test_all_pairs_with_an_ner_model(folders, tmp_path, capsys):
    text = "Vela Motors announces new headquarters in Bellhaven"
    entities = [
        {"text": "Vela Motors", "start_char": 0, "end_char": 11},
        {"text": "Bellhaven", "start_char": 42, "end_char": 51},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"text": text, "entities": entities}) + "\n" + json.dumps({"text": text}) + "\n")
    args = [
        "predict",
        "--model",
        str(folders["re"]),
        "--ner-model",
        str(folders["ner"]),
        "--pairs",
        "all",
        "--input",
        str(path),
    ]
    assert main(args) == 0
    given, found = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert [(r["subject"]["text"], r["object"]["text"]) for r in given["relations"]] == [
        ("Vela Motors", "Bellhaven"),
        ("Bellhaven", "Vela Motors"),
    ]
    ner_entities = pipeline(folders["ner"], device="cpu")(text)["entities"]
    expected = [(s["text"], o["text"]) for s in ner_entities for o in ner_entities if s is not o]
    assert [(r["subject"]["text"], r["object"]["text"]) for r in found["relations"]] == expected


@pytest.mark.parametrize(
    "lines, model, message",
    [
        (['{"text": "a"}', "not json"], "ner", "bad.jsonl:2: invalid JSON"),
        (['{"text": "a"}', '["a"]'], "ner", "bad.jsonl:2: expected a JSON object"),
        (['{"text": "a"}', "", '{"txt": "b"}'], "ner", "bad.jsonl:3: unknown input key(s) ['txt']"),
        (['{"text": "a", "tokens": ["a"]}'], "ner", "bad.jsonl:1: give exactly one of 'text'"),
        (
            ['{"text": "a b", "subject": "a", "object": "b"}', '{"text": "a b", "subject": "c", "object": "b"}'],
            "re",
            "bad.jsonl:2: subject 'c' does not occur",
        ),
    ],
)
def test_bad_jsonl_lines_are_named(folders, tmp_path, capsys, lines, model, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", str(folders[model]), "--input", str(path), "--output", str(out)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not out.exists()  # every line is checked before anything is written


def test_usage_errors(folders, tmp_path, capsys):
    assert main(["predict", "--model", str(tmp_path / "nope"), "--text", "a"]) == 2
    assert "RAP model directory not found" in capsys.readouterr().err
    assert main(["predict", "--model", str(folders["ner"])]) == 2
    assert "exactly one of --text or --input" in capsys.readouterr().err
    assert main(["predict", "--model", str(folders["ner"]), "--text", "a", "--subject", "a", "--object", "a"]) == 2
    assert "for RE models" in capsys.readouterr().err
    assert main(["predict", "--model", str(folders["re"]), "--text", "a b"]) == 2
    assert "--text: relation extraction needs subject=" in capsys.readouterr().err


def test_explain_draws_the_routing_paths(folders, tmp_path, capsys):
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 20, 20)).save(image)
    figure = tmp_path / "figs" / "routing.png"
    args = [
        "explain",
        "--model",
        str(folders["ner"]),
        "--text",
        "Kevin Durant visits Oracle Arena",
        "--image",
        str(image),
        "--out",
        str(figure),
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["figure"] == str(figure) and printed["prediction"]["image_used"] is True
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["explain", "--model", str(folders["ner_text_only"]), "--text", "a", "--out", str(figure)]) == 2
    assert "no routing paths" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# issue #10: a failed run never leaves a truncated --output; bad lines and encodings are named
# ----------------------------------------------------------------------------------------------------------------------
BAD_IMAGE_LINES = [
    {"text": "Kevin Durant visits Oracle Arena"},
    {"text": "Vela Motors in Bellhaven", "image": {"bytes": "abc"}},  # passes the up-front check, fails to predict
    {"text": "Dakota tonight !"},
]


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_failed_prediction_keeps_the_earlier_output_file(folders, tmp_path, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", BAD_IMAGE_LINES)
    out = tmp_path / "out.jsonl"
    out.write_text("earlier results\n")
    args = ["predict", "--model", str(folders["ner"]), "--input", str(path), "--output", str(out), "--batch-size", "1"]
    assert main(args) == 2
    assert f"{path}:2: prediction failed (TypeError" in capsys.readouterr().err
    assert out.read_text() == "earlier results\n"  # neither truncated nor replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left


def test_on_error_record_writes_an_error_record_and_keeps_the_other_lines(folders, tmp_path, caplog, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [*BAD_IMAGE_LINES, "not json", {"txt": "a"}])
    out = tmp_path / "out.jsonl"
    args = [
        "predict",
        "--model",
        str(folders["ner"]),
        "--input",
        str(path),
        "--output",
        str(out),
        "--on-error",
        "record",
    ]
    assert main(args) == 0
    assert "3 of 5 input lines failed" in caplog.text
    assert capsys.readouterr().err.rstrip().endswith(f"wrote 2 predictions and 3 error records to {out}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [record["line"] for record in records] == [1, 2, 3, 4, 5]
    assert [sorted(record) for record in records[1:2] + records[3:]] == [["error", "line"]] * 3
    assert records[1]["error"].startswith(f"{path}:2: prediction failed")
    assert records[3]["error"].startswith(f"{path}:4: invalid JSON")
    assert records[4]["error"].startswith(f"{path}:5: unknown input key(s) ['txt']")
    expected = pipeline(folders["ner"], device="cpu")([BAD_IMAGE_LINES[0]["text"], BAD_IMAGE_LINES[2]["text"]])
    # the CLI retries failed batches line by line: other padding, so scores agree to float tolerance, not bit for bit
    for got, want in zip([records[0]["entities"], records[2]["entities"]], [e["entities"] for e in expected]):
        assert [{**e, "score": None} for e in got] == [{**e, "score": None} for e in want]
        assert [e["score"] for e in got] == pytest.approx([e["score"] for e in want], abs=1e-5)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "a"}\n{"text": "caf\xe9"}\n', "bad.jsonl:2: not valid UTF-8 (byte 0xe9 at column 14)"),
        ('{"text": "a"}\n'.encode("utf-16"), "bad.jsonl: the file is UTF-16-encoded (byte-order mark)"),
        ('{"text": "a"}\n'.encode("utf-16-le"), "bad.jsonl:1: NUL bytes (UTF-16 without byte-order mark?)"),
    ],
)
def test_jsonl_that_is_not_utf8_is_named(folders, tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    assert main(["predict", "--model", str(folders["ner"]), "--input", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_jsonl_with_utf8_byte_order_mark_is_read(folders, tmp_path, capsys):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "Kevin Durant"}\n')
    assert main(["predict", "--model", str(folders["ner"]), "--input", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Kevin Durant"
