"""RAPPipeline: word splitting, span mapping, scores, RE pairs, image fallbacks, batching and loading."""

import itertools
import logging
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from rap_hf.data import NER_LABELS, load_dataset
from rap_hf.pipelines import (
    RAPPipeline,
    bio_entities,
    crf_marginals,
    pipeline,
    split_words,
)
from rap_hf.processing_rap import RAPProcessor

NER_TYPES = {"PER", "LOC", "ORG", "MISC"}
TEXTS = [
    "RT @JayKenMinaj_ :  Me outside of Where   #NBA Kevin Durant's house!!",
    "Vela Motors announces new headquarters in Bellhaven",
    "  leading and trailing spaces\tand a tab \n newline  ",
    "Beyoncé & Jay-Z @ Wembley... 😂🔥 (tonight) – http://t.co/AbC?x=1 #OTRII",
    "U.S. President meets Mr. O'Neil at 10:30, 3.5 km from St. Louis!",
    "Dakota tonight!",
    "a",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # fixtures in conftest.py


@pytest.fixture(scope="module")
def ner(folders):
    return pipeline(folders["ner"], device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def re_pipe(folders):
    return pipeline(folders["re"], device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return load_dataset("twitter2017", cache_dir=str(tmp_path_factory.mktemp("datasets-cache")))


def picture(color=(200, 30, 30), size=(48, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


def spans(result):
    return [(e["type"], e["start_word"], e["end_word"]) for e in result["entities"]]


# ----------------------------------------------------------------------------------------------------------- words
@pytest.mark.parametrize("style", ["punct", "tweet"])
@pytest.mark.parametrize("text", TEXTS + ["", "   ", "don't can't isn't Cosby's 'quoted' n't"])
def test_split_words_keeps_offsets_and_covers_every_character(text, style):
    words = split_words(text, style)
    for word in words:
        assert word.text and text[word.start : word.end] == word.text
        assert not any(ch.isspace() for ch in word.text)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))
    assert "".join(w.text for w in words) == "".join(text.split())


def test_split_words_follows_the_corpus_conventions():
    text = "RT @WLWT: Bill Cosby's star isn't on U.S. TV https://t.co/x 3.5 #NBA!"
    assert [w.text for w in split_words(text, "punct")] == [
        "RT",
        "@",
        "WLWT",
        ":",
        "Bill",
        "Cosby",
        "'",
        "s",
        "star",
        "isn",
        "'",
        "t",
        "on",
        "U",
        ".",
        "S",
        ".",
        "TV",
        "https://t.co/x",
        "3",
        ".",
        "5",
        "#",
        "NBA",
        "!",
    ]
    assert [w.text for w in split_words(text, "tweet")] == [
        "RT",
        "@WLWT",
        ":",
        "Bill",
        "Cosby",
        "'s",
        "star",
        "is",
        "n't",
        "on",
        "U.S.",
        "TV",
        "https://t.co/x",
        "3.5",
        "#NBA",
        "!",
    ]
    with pytest.raises(ValueError, match="word_splitting"):
        split_words(text, "spacy")


# ----------------------------------------------------------------------------------------------------------- decoding
def test_bio_entities():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-ORG", "B-ORG", "I-PER", "O", "B-MISC"]
    assert bio_entities(tags) == [
        ("PER", 0, 2),
        ("LOC", 3, 5),
        ("ORG", 5, 6),
        ("ORG", 6, 7),
        ("PER", 7, 8),
        ("MISC", 9, 10),
    ]
    assert bio_entities([]) == [] and bio_entities(["O", "O"]) == []


def test_crf_marginals_equal_brute_force_enumeration():
    from torchcrf import CRF

    torch.manual_seed(0)
    crf = CRF(3, batch_first=True)
    emissions = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    marginals = crf_marginals(crf, emissions, mask)
    for row in range(2):
        length = int(mask[row].sum())
        expected = torch.zeros(length, 3)
        paths = list(itertools.product(range(3), repeat=length))
        scores = torch.stack(
            [
                crf._compute_score(
                    emissions[row : row + 1, :length].transpose(0, 1),
                    torch.tensor([path]).T,
                    torch.ones(length, 1, dtype=torch.bool),
                )[0]
                for path in paths
            ]
        )
        weights = torch.softmax(scores, 0)
        for path, weight in zip(paths, weights):
            for position, tag in enumerate(path):
                expected[position, tag] += weight
        torch.testing.assert_close(marginals[row, :length], expected, atol=1e-5, rtol=1e-5)
        assert torch.all(marginals[row, length:] == 0)


# ----------------------------------------------------------------------------------------------------------- NER
def test_ner_entities_map_back_to_the_text(ner):
    results = ner(TEXTS, image=picture())
    assert len(results) == len(TEXTS)
    found = 0
    for text, result in zip(TEXTS, results):
        words = split_words(text, "punct")
        assert set(result) == {"entities", "relevance", "routing_weights", "image_used"}
        assert result["image_used"] is True and 0.0 < result["relevance"] < 1.0
        assert len(result["routing_weights"]) == ner.model.config.routing_vector_size
        for entity in result["entities"]:
            found += 1
            assert text[entity["start_char"] : entity["end_char"]] == entity["text"]
            assert entity["start_char"] == words[entity["start_word"]].start
            assert entity["end_char"] == words[entity["end_word"] - 1].end
            assert entity["type"] in NER_TYPES
            assert 0.0 < entity["score"] <= 1.0
    assert found > 0, "the trained tiny model should find some entities"


def test_ner_on_pre_split_tokens(ner):
    tokens = ["Kevin", "Durant", "visits", "Oracle", "Arena", "!"]
    result = ner({"tokens": tokens})
    text = " ".join(tokens)
    for entity in result["entities"]:
        assert text[entity["start_char"] : entity["end_char"]] == entity["text"]
        assert entity["text"] == " ".join(tokens[entity["start_word"] : entity["end_word"]])
    assert ner(text)["entities"] == result["entities"]


def test_ner_matches_the_model_run_directly(ner, sample):
    """The pipeline's entities and scores are the model's Viterbi path and CRF marginals on the same input."""
    examples = [sample["train"][i] for i in range(6)]
    results = ner([{"tokens": ex["tokens"], "image": ex["image"], "crops": ex["crops"]} for ex in examples])
    processor: RAPProcessor = ner.processor
    for example, result in zip(examples, results):
        inputs = processor(tokens=[example["tokens"]], images=[example["image"]], crops=[example["crops"]])
        inputs.pop("word_ids")
        with torch.inference_mode():
            output = ner.model(**inputs)
        tags = [ner.model.config.id2label[int(i)] for i in output.predictions[0] if i >= 0]
        assert spans(result) == bio_entities(tags)
        marginals = crf_marginals(ner.model.crf, output.logits, output.word_mask)[0]
        for entity in result["entities"]:
            words = range(entity["start_word"], entity["end_word"])
            expected = sum(float(marginals[w, ner.model.config.label2id[tags[w]]]) for w in words) / len(words)
            assert entity["score"] == pytest.approx(expected, abs=1e-5)
        assert result["relevance"] == pytest.approx(float(output.relevance[0]), abs=1e-5)
        routing = torch.tensor(result["routing_weights"])
        torch.testing.assert_close(routing, output.routing_weights[0], atol=1e-5, rtol=0)


def test_trained_entities_are_found_in_raw_text(ner, sample):
    """Raw tweets with irregular spacing split into the corpus words; the trained entities come back at the right
    characters."""
    gold_total = hit = 0
    for example in sample["train"]:
        tokens = example["tokens"]
        if [w.text for w in split_words(" ".join(tokens), "punct")] != tokens:
            continue  # the synthetic sample has a few tokens such as "Can't" that Twitter-2017 would split
        text = "".join(
            (token if i == 0 or not token[0].isalnum() else ("  " if i % 2 else " ") + token)
            for i, token in enumerate(tokens)
        )
        assert [w.text for w in split_words(text, "punct")] == tokens
        result = ner(text, image=example["image"], crops=example["crops"])
        gold = set(bio_entities([NER_LABELS[t] for t in example["ner_tags"]]))
        gold_total += len(gold)
        hit += len(gold & set(spans(result)))
        for entity in result["entities"]:
            assert text[entity["start_char"] : entity["end_char"]] == entity["text"]
    assert gold_total > 20 and hit / gold_total >= 0.7


def test_empty_text_and_truncation(ner, caplog):
    assert ner("")["entities"] == []
    assert ner("   ")["entities"] == []
    long_text = " ".join(f"word{i} Paris" for i in range(80))
    with caplog.at_level(logging.WARNING):
        result = ner(long_text)
    assert "max_length" in caplog.text
    assert all(entity["end_word"] <= 62 for entity in result["entities"])  # 64 tokens with [CLS] and [SEP]
    for entity in result["entities"]:
        assert long_text[entity["start_char"] : entity["end_char"]] == entity["text"]


# ----------------------------------------------------------------------------------------------------------- images
def test_missing_and_unreadable_images_give_a_text_only_prediction(ner, tmp_path, caplog):
    text = "Kevin Durant visits Oracle Arena in Oakland"
    text_only = ner(text)
    assert text_only["image_used"] is False and text_only["relevance"] == 0.0
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.jpg"
    picture(size=(256, 256)).save(tmp_path / "full.jpg", quality=95)
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    for bad in (tmp_path / "missing.jpg", str(garbage), truncated, str(tmp_path)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rap_hf.pipelines"):
            result = ner(text, image=bad, crops=[picture()])
        assert str(bad) in caplog.text and "without it" in caplog.text
        assert result["image_used"] is False and result["relevance"] == 0.0
        assert spans(result) == spans(text_only)
        assert result["routing_weights"] == pytest.approx(text_only["routing_weights"], abs=1e-6)


def test_unreadable_crop_is_dropped_with_a_warning(ner, tmp_path, caplog):
    text = "Kevin Durant visits Oracle Arena"
    with caplog.at_level(logging.WARNING, logger="rap_hf.pipelines"):
        result = ner(text, image=picture(), crops=[tmp_path / "nope.png", picture((0, 0, 200))])
    assert "nope.png" in caplog.text
    assert result["image_used"] is True
    assert result == ner(text, image=picture(), crops=[picture((0, 0, 200))])


def test_image_paths_and_pil_images_agree(ner, tmp_path):
    path = tmp_path / "tweet.png"
    picture((20, 160, 40)).save(path)
    by_path = ner("Dakota tonight !", image=str(path))
    by_image = ner("Dakota tonight !", image=picture((20, 160, 40)))
    assert by_path["relevance"] == pytest.approx(by_image["relevance"], abs=1e-6)
    assert spans(by_path) == spans(by_image)


# ----------------------------------------------------------------------------------------------------------- batching
def test_batches_equal_one_by_one_and_are_deterministic(ner, tmp_path):
    inputs = [
        {"text": TEXTS[0], "image": picture()},
        TEXTS[1],
        {"text": TEXTS[3], "image": tmp_path / "missing.jpg"},
        {"tokens": ["Dakota", "tonight", "!"], "image": picture((30, 30, 200)), "crops": [picture(), picture()]},
        {"text": TEXTS[4], "image": picture((10, 200, 10)), "crops": [picture()]},
        "",
        TEXTS[5],
    ]
    batched = ner(inputs, batch_size=3)
    again = ner(inputs, batch_size=5)
    single = [ner(item) for item in inputs]
    for one, many, other in zip(single, batched, again):
        assert spans(one) == spans(many) == spans(other)
        assert one["image_used"] == many["image_used"]
        assert many["relevance"] == pytest.approx(one["relevance"], abs=1e-5)
        assert many["routing_weights"] == pytest.approx(one["routing_weights"], abs=1e-5)
        for a, b in zip(one["entities"], many["entities"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert batched == ner(inputs, batch_size=3)  # same call, same numbers


# ----------------------------------------------------------------------------------------------------------- RE
RE_TEXT = "RT @WLWT: Bill Cosby's star on Hollywood Walk of Fame vandalized"


def check_relation(result, labels):
    assert set(result) == {
        "relation",
        "score",
        "distribution",
        "subject",
        "object",
        "relevance",
        "routing_weights",
        "image_used",
    }
    assert list(result["distribution"]) == labels
    assert sum(result["distribution"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["relation"] == max(result["distribution"], key=result["distribution"].get)
    assert result["score"] == result["distribution"][result["relation"]]
    for role in ("subject", "object"):
        span = result[role]
        assert RE_TEXT[span["start_char"] : span["end_char"]] == span["text"]


def test_re_on_a_given_pair(re_pipe):
    labels = [re_pipe.model.config.id2label[i] for i in range(re_pipe.model.config.num_labels)]
    by_string = re_pipe(RE_TEXT, subject="Bill Cosby", object="Hollywood Walk of Fame", image=picture())
    check_relation(by_string, labels)
    assert by_string["subject"]["text"] == "Bill Cosby" and by_string["object"]["text"] == "Hollywood Walk of Fame"
    assert (by_string["subject"]["start_word"], by_string["subject"]["end_word"]) == (3, 5)
    by_span = re_pipe(RE_TEXT, subject=(3, 5), object=[8, 12], image=picture())
    by_entity = re_pipe(
        RE_TEXT,
        subject={"text": "Bill Cosby", "start_char": 10, "end_char": 20, "type": "PER"},
        object="hollywood walk of fame",
        image=picture(),
    )
    assert by_entity["subject"]["type"] == "PER"
    for other in (by_span, by_entity):
        assert other["distribution"] == pytest.approx(by_string["distribution"], abs=1e-6)
    swapped = re_pipe(RE_TEXT, subject="Hollywood Walk of Fame", object="Bill Cosby", image=picture())
    assert swapped["distribution"] != pytest.approx(by_string["distribution"], abs=1e-6)


def test_re_over_all_pairs_of_ner_entities(ner, re_pipe, sample):
    entities = [
        {"text": "Bill Cosby", "type": "PER", "start_char": 10, "end_char": 20},
        {"text": "Hollywood Walk of Fame", "type": "LOC", "start_char": 31, "end_char": 53},
        {"text": "WLWT", "type": "ORG", "start_char": 4, "end_char": 8},  # splits as "@", "WLWT" for NER
    ]
    results = re_pipe(RE_TEXT, pairs="all", entities=entities, image=picture())
    assert len(results) == 6
    assert [(r["subject"]["type"], r["object"]["type"]) for r in results] == [
        ("PER", "LOC"),
        ("PER", "ORG"),
        ("LOC", "PER"),
        ("LOC", "ORG"),
        ("ORG", "PER"),
        ("ORG", "LOC"),
    ]
    labels = [re_pipe.model.config.id2label[i] for i in range(re_pipe.model.config.num_labels)]
    for result in results:
        check_relation(result, labels)
        single = re_pipe(RE_TEXT, subject=result["subject"], object=result["object"], image=picture())
        assert single["distribution"] == pytest.approx(result["distribution"], abs=1e-5)
    assert results[4]["subject"]["text"] == "@WLWT"  # a whole tweet word covers the NER entity
    # the NER pipeline's own output feeds pairs="all" directly
    texts = [" ".join(tokens) for tokens in sample["train"]["tokens"]]
    predicted = next(result for result in ner(texts) if len(result["entities"]) >= 2)
    text = texts[ner(texts).index(predicted)]
    pairs = re_pipe(text, pairs="all", entities=predicted)
    count = len(predicted["entities"])
    assert len(pairs) == count * (count - 1)
    for pair in pairs:
        assert text[pair["subject"]["start_char"] : pair["subject"]["end_char"]] == pair["subject"]["text"]
    assert re_pipe(RE_TEXT, pairs="all", entities=entities[:1]) == []
    batch = re_pipe([{"text": RE_TEXT, "entities": entities}, {"text": RE_TEXT, "entities": []}], pairs="all")
    assert len(batch[0]) == 6 and batch[1] == []


def test_re_input_errors(re_pipe):
    with pytest.raises(ValueError, match="subject 'Oprah' does not occur"):
        re_pipe(RE_TEXT, subject="Oprah", object="Bill Cosby")
    with pytest.raises(ValueError, match="Walk of F'"):  # a partial word is not an entity
        re_pipe(RE_TEXT, subject="Bill Cosby", object="Walk of F")
    with pytest.raises(ValueError, match="both a subject and an object"):
        re_pipe(RE_TEXT, subject="Bill Cosby")
    with pytest.raises(ValueError, match="needs entities"):
        re_pipe(RE_TEXT, pairs="all")
    with pytest.raises(ValueError, match="outside the"):
        re_pipe(RE_TEXT, subject=(0, 2), object=(10, 40))
    with pytest.raises(ValueError, match="another text"):
        re_pipe(RE_TEXT, subject={"text": "Bill", "start_char": 0, "end_char": 4}, object=(0, 1))
    with pytest.raises(ValueError, match=r"input .RT @WLWT: Bill Cosby.*: relation extraction needs subject="):
        re_pipe([{"text": RE_TEXT, "subject": (0, 1), "object": (1, 2)}, {"text": RE_TEXT}])


# ----------------------------------------------------------------------------------------------------------- inputs
def test_input_validation(ner):
    assert len(ner(["one text", "another one"])) == 2
    with pytest.raises(ValueError, match="exactly one of 'text'"):
        ner({"text": "a", "tokens": ["a"]})
    with pytest.raises(ValueError, match="unknown input key"):
        ner({"text": "a", "img": "x.jpg"})
    with pytest.raises(TypeError, match="string or a dict"):
        ner([["pre", "split"]])
    with pytest.raises(TypeError, match="unexpected pipeline argument"):
        ner("a", images=["x"])
    with pytest.raises(TypeError, match="image must be a path"):
        ner("a", image=5)
    with pytest.raises(TypeError, match="crops must be a list"):
        ner("a", image=picture(), crops=picture())


# ----------------------------------------------------------------------------------------------------------- loading
def test_text_only_baseline_ignores_images(folders):
    pipe = pipeline(folders["ner_text_only"], device="cpu")
    result = pipe("Kevin Durant visits Oracle Arena", image=picture())
    assert result["relevance"] is None and result["routing_weights"] is None and result["image_used"] is False


def test_bad_model_paths_fail_clearly(tmp_path, folders):
    with pytest.raises(FileNotFoundError, match="RAP model directory not found"):
        pipeline(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pipeline(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="not a RAP model"):
        pipeline(tmp_path)


@pytest.mark.parametrize("damage", ["no tokenizer.json", "another tokenizer"])
def test_incomplete_or_foreign_tokenizer_fails_clearly(folders, tmp_path, damage):
    import shutil

    folder = Path(shutil.copytree(folders["ner"], tmp_path / "model"))
    if damage == "no tokenizer.json":
        (folder / "tokenizer.json").unlink()  # loaded anyway: 9 special tokens, every word [UNK]
        expected = "the saved tokenizer has 9 tokens but the model's text embeddings have"
    else:
        processor = RAPProcessor.from_pretrained(folder)
        processor.tokenizer.add_tokens(["#nba", "#otrii"])
        processor.save_pretrained(folder)
        expected = f"the saved tokenizer has {len(processor.tokenizer)} tokens"
    with pytest.raises(ValueError, match=re.escape(expected)) as info:
        pipeline(folder, device="cpu")
    assert str(folder) in str(info.value) and "tokenizer.json missing?" in str(info.value)


def test_in_memory_model_needs_its_processor(folders, ner):
    model = type(ner.model).from_pretrained(folders["ner"])
    pipe = pipeline(model, processor=ner.processor, device="cpu")
    assert pipe("Kevin Durant") == ner("Kevin Durant")
    model.name_or_path = ""
    with pytest.raises(ValueError, match="processor="):
        pipeline(model, device="cpu")
    with pytest.raises(TypeError, match="RAPForMultimodalNER or RAPForMultimodalRE"):  # the head-less backbone
        RAPPipeline(model=model.rap, processor=ner.processor, device="cpu")


def test_auto_model_gives_the_task_head_in_process(folders):
    """With rap_hf imported, AutoModel (with or without trust_remote_code) still returns the checkpoint's head."""
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(folders["ner"])).__name__ == "RAPForMultimodalNER"
    assert type(AutoModel.from_pretrained(folders["re"], trust_remote_code=True)).__name__ == "RAPForMultimodalRE"


def test_transformers_pipeline_task(folders, ner):
    import transformers

    pipe = transformers.pipeline(task="rap-extraction", model=str(folders["ner"]), trust_remote_code=True, device="cpu")
    assert isinstance(pipe, RAPPipeline) and type(pipe.model).__name__ == "RAPForMultimodalNER"
    assert pipe(TEXTS[0], image=picture()) == ner(TEXTS[0], image=picture())
    relation = transformers.pipeline(task="rap-extraction", model=str(folders["re"]), device="cpu")
    assert type(relation.model).__name__ == "RAPForMultimodalRE"
    result = relation(RE_TEXT, subject="Bill Cosby", object="@WLWT")
    assert result["object"] == {"text": "@WLWT", "start_word": 1, "end_word": 2, "start_char": 3, "end_char": 8}


@pytest.mark.parametrize("style", ["punct", "tweet"])
def test_split_words_keeps_combining_marks_and_emoji_sequences_whole(style):
    family, thumbs = "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd"
    text = f"Cafe\u0301 de\u0301ja\u0300 vu {family} ok {thumbs}! Jose\u0301"  # NFD accents, ZWJ family, skin tone
    words = split_words(text, style)
    assert [w.text for w in words] == ["Cafe\u0301", "de\u0301ja\u0300", "vu", family, "ok", thumbs, "!", "Jose\u0301"]
    assert all(text[w.start : w.end] == w.text for w in words)  # offsets index the text as given (not normalised)
