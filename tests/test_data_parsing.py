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
        # a tweet without IMGID, or split in two by a whitespace-only line
        ("a\tO\nb\tO\n\nIMGID:2\nc\tO\n", 1, "token line without an 'IMGID:<id>' line"),
        ("IMGID:1\na\tO\n\nb\tB-PER\n", 4, "does the blank line 3 split a tweet?"),
        ("IMGID:1\nKevin\tB-PER\n \nDurant\tI-PER\n\nIMGID:2\nc\tO\n", 3, "a line holding only whitespace (' ')"),
        ("IMGID:1\na\tO\n\t\nb\tO\n", 3, "inside a tweet splits it in two"),
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


# --------------------------------------------------------------------------------------------------------------------
# issue #10: no code runs from a corpus, bad input is named
# --------------------------------------------------------------------------------------------------------------------


class _RunsCode:
    """Pickles to `eval(expression)`: what a crafted crop dictionary would do (here: create a marker file, then
    return the real dictionary so that loading looks normal)."""

    def __init__(self, expression):
        self.expression = expression

    def __reduce__(self):
        return eval, (self.expression,)


@pytest.mark.parametrize("writer", ["torch_zip", "torch_legacy", "pickle"])
def test_crop_dict_that_runs_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    real = {"1.jpg": ["1_pred_yolo_crop_0.png"]}
    payload = _RunsCode(f"__import__('os').system('touch {marker}') or {real!r}")
    path = tmp_path / "twitter2017_train_dict.pth"
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=writer == "torch_zip")
    with pytest.raises(DataFormatError) as info:
        load_crop_dict(path)
    assert not marker.exists()  # the payload never ran
    assert str(info.value).startswith(f"{path}: refused to load the crop dictionary")
    assert "eval" in str(info.value)  # the object it refers to is named


def test_crop_dict_with_tensors_or_other_values_is_refused(tmp_path):
    path = tmp_path / "dict.pth"
    torch.save({"1.jpg": torch.zeros(2)}, path)  # weights_only loads tensors safely; the shape check refuses them
    with pytest.raises(DataFormatError, match=r"dict\.pth: entry '1\.jpg' must be a list of file names, got 'tensor"):
        load_crop_dict(path)
    path.write_bytes(pickle.dumps({"1.jpg": "1_pred_yolo_crop_0.png"}))  # a bare string, not a list
    with pytest.raises(DataFormatError, match=r"dict\.pth: entry '1\.jpg' must be a list of file names"):
        load_crop_dict(path)
    path.write_bytes(pickle.dumps({(1, 2): ["a.png"]}))
    with pytest.raises(DataFormatError, match=r"dict\.pth: crop dictionary key \(1, 2\) must be a string"):
        load_crop_dict(path)


def test_whitespace_line_between_tweets_is_a_separator(tmp_path):
    path = write(tmp_path / "train.txt", "IMGID:1\na\tO\n \nIMGID:2\nb\tO\n")
    assert [(s.image_id, s.tokens) for s in read_twitter_file(path)] == [("1", ["a"]), ("2", ["b"])]


def test_mnre_pos_of_booleans_is_an_error(tmp_path):
    path = write(tmp_path / "ours_train.txt", MNRE_LINE.replace("'pos': [3, 5]", "'pos': [False, True]") + "\n")
    with pytest.raises(DataFormatError, match=r"ours_train\.txt:1: 'h\.pos' must be \[start, end\] integers"):
        read_mnre_file(path, MNRE_RELATIONS)


def test_mnre_name_not_matching_pos_is_counted_and_warned(tmp_path, caplog):
    mismatched = MNRE_LINE.replace("'name': 'Bill Cosby'", "'name': 'Bill Gates'")
    path = write(tmp_path / "ours_train.txt", MNRE_LINE + "\n" + mismatched + "\n")
    with caplog.at_level("WARNING", logger="rap_hf.data.parsing"):
        records = read_mnre_file(path, MNRE_RELATIONS)
    assert f"{path}:2: 'h.name' 'Bill Gates' does not match the tokens at pos [3, 5]: 'Bill Cosby'" in caplog.text
    assert [(r.subject.name, r.subject.start) for r in records] == [("Bill Cosby", 3), ("Bill Gates", 3)]  # kept
    stats = ParseStats()
    read_mnre_file(path, MNRE_RELATIONS, stats)
    assert stats.counts["entity_name_mismatch"] == 1


@pytest.mark.parametrize(
    "encoding, where, message",
    [
        ("utf-16", "", "the file is UTF-16-encoded (byte-order mark); convert it to UTF-8"),
        ("utf-32", "", "the file is UTF-32-encoded (byte-order mark); convert it to UTF-8"),
        ("utf-16-le", ":1", "NUL byte in the text (UTF-16 without byte-order mark?)"),
        ("latin-1", ":3", "not valid UTF-8 (byte 0xe9 at column 4)"),
    ],
)
def test_twitter_file_that_is_not_utf8_is_named(tmp_path, encoding, where, message):
    path = tmp_path / "train.txt"
    path.write_bytes("IMGID:1\na\tO\ncaf\xe9\tB-LOC\n\n".encode(encoding))
    with pytest.raises(DataFormatError) as info:
        read_twitter_file(path)
    assert str(info.value).startswith(f"{path}{where}: {message}")


def test_mnre_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "ours_train.txt"
    path.write_bytes((MNRE_LINE + "\n" + MNRE_LINE.replace("Fame", "F\xe2me") + "\n").encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"ours_train\.txt:2: not valid UTF-8 \(byte 0xe2 at column \d+\)"):
        read_mnre_file(path, MNRE_RELATIONS)


def test_rel2id_file_in_utf16_is_named(tmp_path):
    path = tmp_path / "ours_rel2id.json"
    path.write_bytes(json.dumps({"None": 0}).encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"ours_rel2id\.json: the file is UTF-16-encoded"):
        read_relation_names(path)
