"""Parsers of the Twitter and MNRE file formats: every trap of shared/README.md and the error messages."""

import json
import pickle

import pytest
import torch

from rap_hf.data.parsing import (
    MNRE_RELATIONS,
    NER_LABELS,
    DataFormatError,
    ParseStats,
    find_orphan_tags,
    load_crop_dict,
    normalize_tag,
    parse_mnre_line,
    read_mnre_file,
    read_relation_names,
    read_twitter_file,
    repair_orphan_tags,
)


def write(path, text, newline="\n"):
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def test_label_order_is_fixed():
    assert NER_LABELS == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    assert len(MNRE_RELATIONS) == 23 and MNRE_RELATIONS[0] == "None"


def test_last_tweet_kept_without_trailing_blank_line(tmp_path):
    path = write(tmp_path / "test.txt", "IMGID:1\nA\tB-PER\nb\tO\n\nIMGID:2\nC\tB-LOC\nd\tI-LOC")
    sentences = read_twitter_file(path)
    assert [s.image_id for s in sentences] == ["1", "2"]
    assert sentences[1].tokens == ["C", "d"] and sentences[1].tags == ["B-LOC", "I-LOC"]
    assert [s.line for s in sentences] == [1, 5]


def test_several_blank_lines_crlf_and_bom(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("\ufeffIMGID:a\r\nx\tO\r\n\r\n\r\n\r\nIMGID:b\r\ny\tB-ORG\r\n\r\n".encode("utf-8"))
    sentences = read_twitter_file(path)
    assert [(s.image_id, s.tokens, s.tags) for s in sentences] == [("a", ["x"], ["O"]), ("b", ["y"], ["B-ORG"])]


def test_other_is_read_as_misc(tmp_path):
    path = write(tmp_path / "train.txt", "IMGID:1\nSuper\tB-OTHER\nBowl\tI-OTHER\n\n")
    assert read_twitter_file(path)[0].tags == ["B-MISC", "I-MISC"]


def test_orphan_i_kept_by_default_and_counted(tmp_path):
    path = write(tmp_path / "train.txt", "IMGID:1\nNew\tI-LOC\nYork\tI-LOC\nis\tO\nbig\tI-PER\n\n")
    stats = ParseStats()
    assert read_twitter_file(path, stats=stats)[0].tags == ["I-LOC", "I-LOC", "O", "I-PER"]
    assert stats.counts["orphan_i_tags"] == 2
    assert read_twitter_file(path, repair_orphan_i=True)[0].tags == ["B-LOC", "I-LOC", "O", "B-PER"]


def test_orphan_detection_on_type_change():
    tags = ["B-PER", "I-PER", "I-ORG", "O", "B-LOC", "I-LOC"]
    assert find_orphan_tags(tags) == [2]
    assert repair_orphan_tags(tags) == ["B-PER", "I-PER", "B-ORG", "O", "B-LOC", "I-LOC"]


def test_new_imgid_without_blank_line_starts_a_new_tweet(tmp_path):
    path = write(tmp_path / "train.txt", "IMGID:1\na\tO\nIMGID:2\nb\tO\n")
    assert [s.tokens for s in read_twitter_file(path)] == [["a"], ["b"]]


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("IMGID:1\nfoo bar\n", 2, "expected 'token<TAB>label', got 'foo bar'"),
        ("IMGID:1\na\tO\nb\tO\textra\n", 3, "expected 'token<TAB>label'"),
        ("IMGID:1\na\tB-FOO\n", 2, "unknown entity type in tag 'B-FOO'"),
        ("IMGID:1\na\tX-PER\n", 2, "unknown tag 'X-PER'"),
        ("IMGID:1\n\tO\n", 2, "empty token"),
        ("IMGID:1\n\nIMGID:2\na\tO\n", 1, "has no tokens"),
        ("IMGID:\na\tO\n", 1, "empty image id"),
    ],
)
def test_malformed_twitter_lines_name_file_and_line(tmp_path, body, line, message):
    path = write(tmp_path / "train.txt", body)
    with pytest.raises(ValueError) as info:
        read_twitter_file(path)
    assert isinstance(info.value, DataFormatError)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)


def test_normalize_tag():
    assert normalize_tag(" B-OTHER ") == "B-MISC"
    assert normalize_tag("O") == "O"
    with pytest.raises(ValueError, match="unknown tag"):
        normalize_tag("PER")


MNRE_LINE = (
    "{'token': ['RT', '@x', ':', 'Bill', 'Cosby', 'at', 'Walk', 'of', 'Fame'], "
    "'h': {'name': 'Bill Cosby', 'pos': [3, 5]}, 't': {'name': 'Walk of Fame', 'pos': [6, 9]}, "
    "'img_id': 'a.jpg', 'relation': '/per/misc/present_in'}"
)


def test_mnre_python_literal_line_with_entity_at_last_token():
    record = parse_mnre_line(MNRE_LINE, 0, MNRE_RELATIONS)
    assert record.tokens[record.object.start : record.object.end] == ["Walk", "of", "Fame"]
    assert record.object.end == len(record.tokens)
    assert (record.subject.start, record.subject.end, record.relation) == (3, 5, "/per/misc/present_in")


def test_mnre_overlapping_entities_are_accepted():
    line = MNRE_LINE.replace("'pos': [6, 9]", "'pos': [4, 7]")
    record = parse_mnre_line(line, 0, MNRE_RELATIONS)
    assert (record.object.start, record.object.end) == (4, 7)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"token": ["a"], "h": ', "not a Python literal"),
        ("['a', 'b']", "expected a dict literal"),
        (MNRE_LINE.replace("'img_id': 'a.jpg', ", ""), "missing key(s) ['img_id']"),
        (MNRE_LINE.replace("'pos': [6, 9]", "'pos': [6, 10]"), "'t' span [6, 10] outside tokens"),
        (MNRE_LINE.replace("'pos': [3, 5]", "'pos': [5, 5]"), "'h' span [5, 5] outside tokens"),
        (MNRE_LINE.replace("/per/misc/present_in", "/per/per/friend"), "unknown relation '/per/per/friend'"),
        (MNRE_LINE.replace("'pos': [3, 5]", "'pos': [3]"), "'h.pos' must be [start, end]"),
    ],
)
def test_malformed_mnre_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "ours_train.txt", MNRE_LINE + "\n" + line + "\n")
    with pytest.raises(ValueError) as info:
        read_mnre_file(path, MNRE_RELATIONS)
    assert str(info.value).startswith(f"{path}:2: ")
    assert message in str(info.value)


def test_mnre_blank_lines_keep_line_index(tmp_path):
    path = write(tmp_path / "ours_train.txt", MNRE_LINE + "\n\n" + MNRE_LINE + "\n\n\n")
    records = read_mnre_file(path, MNRE_RELATIONS)
    assert [(r.index, r.line) for r in records] == [(0, 1), (2, 3)]


def test_relation_names_ordered_by_id(tmp_path):
    mapping = {name: i for i, name in enumerate(MNRE_RELATIONS)}
    shuffled = dict(sorted(mapping.items()))  # alphabetical order in the file, ids decide
    path = tmp_path / "ours_rel2id.json"
    path.write_text(json.dumps(shuffled))
    assert read_relation_names(path) == MNRE_RELATIONS
    path.write_text(json.dumps({"None": 0, "/a": 2}))
    with pytest.raises(ValueError, match="without gaps"):
        read_relation_names(path)
    path.write_text("{'None': 0}")
    with pytest.raises(ValueError, match="ours_rel2id.json:1: not valid JSON"):
        read_relation_names(path)


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle"])
def test_crop_dict_formats(tmp_path, writer):
    value = {"1.jpg": ["1_pred_yolo_crop_0.png"], 7: ("7_pred_yolo_crop_0.png", "7_pred_yolo_crop_1.png")}
    path = tmp_path / "dict.pth"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(value))
    else:
        torch.save(value, path, _use_new_zipfile_serialization=writer == "torch_zip")
    assert load_crop_dict(path) == {
        "1.jpg": ["1_pred_yolo_crop_0.png"],
        "7": ["7_pred_yolo_crop_0.png", "7_pred_yolo_crop_1.png"],
    }


def test_crop_dict_errors(tmp_path):
    path = tmp_path / "dict.pth"
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="must be a dict"):
        load_crop_dict(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="cannot unpickle"):
        load_crop_dict(path)
    path.write_bytes(pickle.dumps({"a.jpg": [3]}))
    with pytest.raises(ValueError, match="must be a list of file names"):
        load_crop_dict(path)
