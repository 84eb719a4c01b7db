"""Builders on the bundled sample and on hand-written corpora reproducing every trap; Parquet round trip."""

import json
import logging
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from rap_hf.data import MNRE, NER_LABELS, SAMPLE_DIR, DataFormatError, TwitterNER, get_builder, load_dataset
from rap_hf.data.parsing import MNRE_RELATIONS

SPLITS = ("train", "validation", "test")


def picture(path, colour=(200, 30, 30), size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def garbage(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated, not an image")
    return path


# --------------------------------------------------------------------------------------------------------------------
# bundled sample
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets-cache")


@pytest.mark.parametrize("name", ["twitter2017", "twitter2015", "mnre"])
def test_sample_loads_with_expected_sizes_and_features(name, cache_dir):
    dataset = load_dataset(name, cache_dir=cache_dir)
    sizes = (450, 60, 60) if name == "twitter2017" else (40, 16, 16)  # the main job's corpus, two small ones
    assert {split: len(dataset[split]) for split in SPLITS} == dict(zip(SPLITS, sizes))
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())[name]
    manifest_splits = ("train", "val", "test") if name == "mnre" else ("train", "valid", "test")
    for split, manifest_split in zip(SPLITS, manifest_splits):
        kinds = [entry["kind"] for entry in manifest[manifest_split]]
        rows = dataset[split]
        has_image = [image is not None for image in rows["image"]]
        # the manifest's "noimage" samples are exactly the rows without image
        assert has_image == [not kind.endswith("noimage") for kind in kinds]
        assert all(0 <= len(crops) <= 3 for crops in rows["crops"])
        assert all((len(c) > 0) == h for c, h in zip(rows["crops"], has_image))
    features = dataset["train"].features
    assert isinstance(features["image"], datasets.Image)
    if name == "mnre":
        assert features["relation"].names == MNRE_RELATIONS
        assert set(features["subject"]) == {"name", "start", "end"}
    else:
        assert features["ner_tags"].feature.names == NER_LABELS


def test_sample_images_carry_the_documented_signal(cache_dir):
    dataset = load_dataset("twitter2017", cache_dir=cache_dir)["train"]
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    code = {t: np.array(v["colour"]) for t, v in manifest["code"].items()}
    entries = manifest["twitter2017"]["train"]
    hard = [(row, entry) for row, entry in zip(dataset, entries) if entry["kind"] == "hard"]
    assert len(hard) >= 10
    for row, entry in hard:
        entity_type = NER_LABELS[next(t for t in row["ner_tags"] if t)][2:]
        assert entry["image_types"] == [entity_type]
        # the shape crop (crop 0) is dominated by the type's colour
        crop = np.asarray(row["crops"][0].convert("RGB"), dtype=float).reshape(-1, 3)
        distances = {t: np.linalg.norm(crop - c, axis=1).mean() for t, c in code.items()}
        assert min(distances, key=distances.get) == entity_type


def test_main_job_tweets_name_no_scene_but_their_topics(cache_dir):
    """The main job's corpus is worded so that a tweet names no scene outside its topic phrase: another topic's
    picture is then irrelevant to it, which beta's own-vs-other check assumes (docs/data.md)."""
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    assert manifest["scene_free_wording"] == {"twitter2017": True, "twitter2015": False, "mnre": False}
    scene_words = {
        word.lstrip("#") for phrases in manifest["topics"].values() for phrase in phrases for word in phrase.split()
    }
    scene_words -= {"at", "the", "in", "by", "on", "under"}
    dataset = load_dataset("twitter2017", cache_dir=cache_dir)
    named = []
    for split, manifest_split in zip(SPLITS, ("train", "valid", "test")):
        for row, entry in zip(dataset[split], manifest["twitter2017"][manifest_split]):
            text = " ".join(row["tokens"])
            phrase = next(p for p in manifest["topics"][entry["topic"]] if p in text)
            rest = text.replace(phrase, " ", 1).split()
            named += [word for word in rest if word.lstrip("#").lower() in scene_words]
    assert named == []
    assert "snow" in scene_words and "trail" in scene_words  # what the default design's tweets do name


def test_generator_shares_of_unrelated_and_misleading_images(tmp_path):
    """scripts/make_sample_data.py --unrelated-share / --misleading-share (the relevance benchmark's corpus design)."""
    from benchmark_helpers import run_main_in_process

    arguments = [
        "--out",
        str(tmp_path / "corpus"),
        "--sizes",
        "100",
        "4",
        "4",
        "--unrelated-share",
        "8",
        "--misleading-share",
        "1",
    ]
    assert run_main_in_process("../make_sample_data.py", *arguments)[0] == 0
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert manifest["kind_shares_percent"]["twitter2017"]["easy_unrelated"] == 8 and manifest["misleading_share"] == 1
    for corpus in ("twitter2017", "mnre"):
        entries = manifest[corpus]["train"]
        kinds = [entry["kind"] for entry in entries]
        assert (kinds.count("easy_unrelated"), kinds.count("easy_relevant"), kinds.count("hard")) == (8, 34, 40)
        unrelated = [entry for entry in entries if entry["kind"] == "easy_unrelated"]
        assert all(entry["image_topic"] != entry["topic"] and len(entry["image_types"]) == 1 for entry in unrelated)
    status, _, stderr = run_main_in_process("../make_sample_data.py", *arguments[:-4], "--unrelated-share", "50")
    assert status == 2 and "error: --unrelated-share must lie in [0, 42], got 50.0" in stderr


def test_twitter2015_sample_traps(cache_dir):
    dataset, builder = load_dataset("twitter2015", cache_dir=cache_dir, return_builder=True)
    assert builder.gap_counts["train"]["orphan_i_tags"] == 2
    raw = (SAMPLE_DIR / "NER_data" / "twitter2015" / "test.txt").read_text()
    assert not raw.endswith("\n") and "OTHER" in (SAMPLE_DIR / "NER_data/twitter2015/train.txt").read_text()
    last_tokens = raw.split("\n\n")[-1].splitlines()[1:]
    assert dataset["test"][-1]["tokens"] == [line.split("\t")[0] for line in last_tokens]
    repaired = load_dataset("twitter2015", cache_dir=cache_dir, repair_orphan_i=True)
    orphans = sum(
        tag % 2 == 0 and tag and (prev == 0 or (prev - 1) // 2 != (tag - 1) // 2)
        for tags in repaired["train"]["ner_tags"]
        for prev, tag in zip([0] + tags, tags)
    )
    assert orphans == 0


def test_text_only_has_no_pictures(cache_dir):
    dataset = load_dataset("mnre", cache_dir=cache_dir, text_only=True)
    assert all(image is None for image in dataset["train"]["image"])
    assert all(crops == [] for crops in dataset["train"]["crops"])


def test_builders_used_directly(tmp_path):
    builder = TwitterNER(config_name="twitter2015", data_dir=str(SAMPLE_DIR), cache_dir=str(tmp_path))
    builder.download_and_prepare()
    assert len(builder.as_dataset()["validation"]) == 16
    builder = MNRE(data_dir=str(SAMPLE_DIR), cache_dir=str(tmp_path), text_only=True)
    builder.download_and_prepare()
    assert builder.as_dataset()["test"].features["relation"].num_classes == 23


@pytest.mark.parametrize("name", ["twitter2017", "mnre"])
def test_parquet_round_trip_keeps_features_and_pictures(name, cache_dir, tmp_path):
    split = load_dataset(name, cache_dir=cache_dir)["train"]
    path = tmp_path / f"{name}.parquet"
    split.to_parquet(str(path))
    back = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "c"))
    assert back.features == split.features
    assert len(back) == len(split)
    undecoded = lambda d: d.cast_column("image", datasets.Image(decode=False))  # noqa: E731
    for a, b in zip(undecoded(split), undecoded(back)):
        assert {k: v for k, v in a.items() if k != "crops"} == {k: v for k, v in b.items() if k != "crops"}
        assert [np.asarray(c).tolist() for c in a["crops"]] == [np.asarray(c).tolist() for c in b["crops"]]


def test_unknown_name_and_bad_dir(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("twitter2019")
    with pytest.raises(FileNotFoundError, match="no train.txt"):
        load_dataset("twitter2017", data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="NER corpora only"):
        load_dataset("mnre", repair_orphan_i=True, cache_dir=tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# hand-written corpora with every trap
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def twitter_corpus(tmp_path):
    """A Twitter-2015-style corpus: OTHER, orphan I-, no trailing blank line, CRLF, missing/unreadable
    images, a partial crop dict (torch zip format), a missing dict, a plain-pickle dict and missing crops."""
    root = tmp_path / "release" / "data" / "NER_data"
    corpus = root / "twitter2015"
    corpus.mkdir(parents=True)
    (corpus / "train.txt").write_text(
        "IMGID:101\nSuper\tB-OTHER\nBowl\tI-OTHER\nin\tO\nMiami\tB-LOC\n\n"
        "IMGID:102\nNew\tI-LOC\nYork\tI-LOC\n\n"
        "IMGID:103\nhi\tO\nJoe\tB-PER"  # no trailing blank line
    )
    (corpus / "valid.txt").write_bytes(b"IMGID:201\r\nApple\tB-ORG\r\n\r\n")
    (corpus / "test.txt").write_text("IMGID:301\nx\tO\n\nIMGID:302\ny\tO\n\n\n")
    images = root / "twitter2015_images"
    picture(images / "101.jpg")
    garbage(images / "102.jpg")  # unreadable; 103 missing
    picture(images / "201.jpg")
    picture(images / "301.jpg")
    picture(images / "302.jpg")
    crops = root / "twitter2015_aux_images"
    picture(crops / "train" / "crops" / "101_pred_yolo_crop_0.png", (0, 0, 255))
    garbage(crops / "train" / "crops" / "101_pred_yolo_crop_1.png")
    picture(crops / "train" / "crops" / "101_pred_yolo_crop_3.png", (0, 255, 0))
    for k in range(4):
        picture(crops / "test" / "crops" / f"301_pred_yolo_crop_{k}.png", (k * 60, 0, 0))
    train_dict = {"101.jpg": [f"101_pred_yolo_crop_{k}.png" for k in range(4)]}  # crop 2 absent; 102/103 absent
    torch.save(train_dict, corpus / "twitter2015_train_dict.pth")
    # no validation dict at all; test dict is a plain pickle with 4 crops for 301 (max 3 kept) and none for 302
    (corpus / "twitter2015_test_dict.pth").write_bytes(
        pickle.dumps({"301.jpg": [f"301_pred_yolo_crop_{k}.png" for k in range(4)], "302.jpg": []})
    )
    return tmp_path / "release" / "data"


def test_twitter_traps(twitter_corpus, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rap_hf"):
        dataset, builder = load_dataset(
            "twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache", return_builder=True
        )
    train = dataset["train"]
    names = train.features["ner_tags"].feature.names
    assert [[names[t] for t in tags] for tags in train["ner_tags"]] == [
        ["B-MISC", "I-MISC", "O", "B-LOC"],
        ["I-LOC", "I-LOC"],
        ["O", "B-PER"],
    ]
    assert train["image_id"] == ["101", "102", "103"]
    assert [image is not None for image in train["image"]] == [True, False, False]
    crops = train[0]["crops"]
    # crop 0 ok, crop 1 unreadable, crop 2 missing -> only crop 0 survives among the first three
    assert len(crops) == 1 and crops[0].getpixel((0, 0)) == (0, 0, 255)
    assert builder.gap_counts == {
        "train": {
            "crops_beyond_max_crops": 1,
            "missing_crop": 1,
            "missing_image": 1,
            "no_crop_entry": 2,
            "orphan_i_tags": 1,
            "unreadable_crop": 1,
            "unreadable_image": 1,
        },
        "validation": {"missing_crop_dict": 1},
        "test": {"crops_beyond_max_crops": 1},
    }
    assert dataset["validation"]["tokens"] == [["Apple"]]  # CRLF handled
    assert [len(c) for c in dataset["test"]["crops"]] == [3, 0]
    summaries = [r.getMessage() for r in caplog.records if "counted gaps" in r.getMessage()]
    assert len(summaries) == 3  # one record per split, not one per gap
    assert "twitter2015/train: 3 examples; counted gaps/fixes: crops_beyond_max_crops=1" in summaries[0]

    # the same corpus again: cached, counts restored from the report next to the data
    _, again = load_dataset("twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache", return_builder=True)
    assert again.gap_counts == builder.gap_counts

    # data_dir may also be NER_data/ or the corpus folder itself
    corpus_folder = twitter_corpus / "NER_data" / "twitter2015"
    direct = load_dataset("twitter2015", data_dir=corpus_folder, cache_dir=tmp_path / "c2")
    assert direct["train"]["image_id"] == ["101", "102", "103"]
    assert direct["train"][0]["image"] is not None

    repaired, builder = load_dataset(
        "twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache", repair_orphan_i=True, return_builder=True
    )
    assert repaired["train"][1]["ner_tags"] == [NER_LABELS.index("B-LOC"), NER_LABELS.index("I-LOC")]
    assert builder.gap_counts["train"]["orphan_i_tags_repaired"] == 1


def test_changed_files_are_not_served_from_cache(twitter_corpus, tmp_path):
    first = load_dataset("twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache", text_only=True)
    path = twitter_corpus / "NER_data" / "twitter2015" / "test.txt"
    path.write_text(path.read_text() + "IMGID:303\nz\tB-PER\n")
    second = load_dataset("twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache", text_only=True)
    assert (len(first["test"]), len(second["test"])) == (2, 3)


def test_malformed_file_through_builder_names_file_and_line(twitter_corpus, tmp_path):
    path = twitter_corpus / "NER_data" / "twitter2015" / "valid.txt"
    path.write_text("IMGID:1\nok\tO\nbroken line\n")
    builder = get_builder("twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache", text_only=True)
    with pytest.raises(ValueError, match=r"valid\.txt:3: expected 'token<TAB>label', got 'broken line'"):
        builder.download_and_prepare()


def mnre_line(tokens, h, t, img, relation):
    """One MNRE line as the release writes it (a Python dict literal)."""
    head = {"name": " ".join(tokens[h[0] : h[1]]), "pos": list(h)}
    tail = {"name": " ".join(tokens[t[0] : t[1]]), "pos": list(t)}
    return repr({"token": tokens, "h": head, "t": tail, "img_id": img, "relation": relation})


@pytest.fixture
def mnre_corpus(tmp_path):
    """MNRE release: 'mnre_val .txt' (with a space), entity at last token, overlapping entities, int and str
    crop-dict keys, 4 crops (3 kept), missing image, absent test dict, blank trailing lines."""
    root = tmp_path / "RE_data"
    txt = root / "txt"
    txt.mkdir(parents=True)
    (root / "ours_rel2id.json").write_text(json.dumps({n: i for i, n in enumerate(MNRE_RELATIONS)}))
    words = ["RT", "@a", ":", "Bank", "of", "Riverton", "opens", "in", "Greyford"]
    train = [
        mnre_line(words, (3, 6), (8, 9), "t0.jpg", "/org/loc/locate_at"),  # object = last token
        mnre_line(words, (3, 6), (5, 6), "t1.jpg", "/org/loc/locate_at"),  # overlapping
        mnre_line(words, (8, 9), (3, 6), "t2.jpg", "None"),
    ]
    (txt / "ours_train.txt").write_text("\n".join(train) + "\n\n")
    (txt / "mnre_val .txt").write_text(mnre_line(words, (0, 2), (3, 6), "v0.jpg", "/per/org/member_of") + "\n")
    (txt / "ours_test.txt").write_text(mnre_line(words, (0, 1), (8, 9), "s0.jpg", "None"))  # no final newline
    picture(root / "img_org" / "train" / "t0.jpg")
    picture(root / "img_org" / "train" / "t1.jpg")  # t2 missing
    picture(root / "img_org" / "val" / "v0.jpg")
    picture(root / "img_org" / "test" / "s0.jpg")
    for k in range(4):
        picture(root / "img_vg" / "train" / "crops" / f"0_pred_yolo_crop_{k}.png", (0, 40 * k, 0))
    picture(root / "img_vg" / "train" / "crops" / "1_pred_yolo_crop_0.png")
    picture(root / "img_vg" / "val" / "crops" / "0_pred_yolo_crop_0.png")
    torch.save(
        {0: [f"0_pred_yolo_crop_{k}.png" for k in range(4)], "1": ["1_pred_yolo_crop_0.png"]},
        txt / "mre_train_dict.pth",
    )
    torch.save({0: ["0_pred_yolo_crop_0.png"]}, txt / "mre_dev_dict.pth")
    return tmp_path


def test_mnre_traps(mnre_corpus, tmp_path):
    dataset, builder = load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path / "cache", return_builder=True)
    assert {s: len(dataset[s]) for s in SPLITS} == {"train": 3, "validation": 1, "test": 1}
    train = dataset["train"]
    assert train["id"] == ["0", "1", "2"]
    first, second = train[0], train[1]
    assert first["tokens"][first["object"]["start"] : first["object"]["end"]] == ["Greyford"]
    assert first["object"]["end"] == len(first["tokens"])
    assert (second["subject"]["start"], second["subject"]["end"], second["object"]["start"]) == (3, 6, 5)
    assert train.features["relation"].int2str(first["relation"]) == "/org/loc/locate_at"
    assert [c.getpixel((0, 0)) for c in first["crops"]] == [(0, 0, 0), (0, 40, 0), (0, 80, 0)]
    assert len(second["crops"]) == 1 and train[2]["image"] is None
    assert builder.gap_counts == {
        "train": {"crops_beyond_max_crops": 1, "missing_image": 1, "no_crop_entry": 1},
        "validation": {},
        "test": {"missing_crop_dict": 1},
    }
    assert dataset["validation"][0]["subject"]["name"] == "RT @a"


def test_mnre_accepts_standard_val_name_and_rejects_missing(mnre_corpus, tmp_path):
    txt = mnre_corpus / "RE_data" / "txt"
    (txt / "mnre_val .txt").rename(txt / "ours_val.txt")
    dataset = load_dataset("mnre", data_dir=mnre_corpus / "RE_data", cache_dir=tmp_path, text_only=True)
    assert len(dataset["validation"]) == 1
    (txt / "ours_val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="no validation file"):
        load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path, text_only=True)


def test_mnre_span_outside_tokens_raises_with_line(mnre_corpus, tmp_path):
    path = mnre_corpus / "RE_data" / "txt" / "ours_test.txt"
    bad = mnre_line(["a", "b"], (0, 1), (1, 2), "x.jpg", "None").replace("[1, 2]", "[1, 3]")
    path.write_text(path.read_text() + "\n" + bad)
    with pytest.raises(ValueError, match=r"ours_test\.txt:2: 't' span \[1, 3\] outside tokens"):
        load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path, text_only=True)


# --------------------------------------------------------------------------------------------------------------------
# issue #10: no file read outside the corpus, no stale or path-only "embedded" images, empty files named
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_id", ["../../../outside", "ABSOLUTE"])
def test_twitter_image_id_leading_outside_the_image_folder_is_an_error(twitter_corpus, tmp_path, image_id):
    outside = picture(tmp_path / "outside.jpg")  # a readable picture: the old code loaded it into the dataset
    image_id = str(outside.with_suffix("")) if image_id == "ABSOLUTE" else image_id
    path = twitter_corpus / "NER_data" / "twitter2015" / "test.txt"
    path.write_text(f"IMGID:301\nx\tO\n\nIMGID:{image_id}\ny\tO\n")
    with pytest.raises(DataFormatError) as info:
        load_dataset("twitter2015", data_dir=twitter_corpus, cache_dir=tmp_path / "cache")
    assert str(info.value).startswith(f"{path}:4: image id {image_id!r} leads outside the image folder")


def test_mnre_img_id_leading_outside_the_image_folder_is_an_error(mnre_corpus, tmp_path):
    picture(tmp_path / "outside.jpg")
    path = mnre_corpus / "RE_data" / "txt" / "ours_test.txt"
    path.write_text(path.read_text() + "\n" + mnre_line(["a", "b"], (0, 1), (1, 2), "../../../../outside.jpg", "None"))
    with pytest.raises(DataFormatError, match=r"ours_test\.txt:2: 'img_id' '(\.\./){4}outside\.jpg' leads outside"):
        load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path / "cache")
    # text-only loads read no image, so the id is kept as data
    assert load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path / "c", text_only=True)["test"]["image_id"][1]


def test_crop_names_leading_outside_the_crop_folder_are_skipped_and_counted(mnre_corpus, tmp_path):
    outside = picture(tmp_path / "outside.png", (1, 2, 3))
    txt = mnre_corpus / "RE_data" / "txt"
    names = ["0_pred_yolo_crop_0.png", "../../../../../outside.png", str(outside)]
    torch.save({0: names, "1": ["1_pred_yolo_crop_0.png"]}, txt / "mre_train_dict.pth")
    dataset, builder = load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path / "cache", return_builder=True)
    crops = dataset["train"][0]["crops"]
    assert [c.getpixel((0, 0)) for c in crops] == [(0, 0, 0)]  # only the crop inside the folder
    assert builder.gap_counts["train"]["crop_outside_folder"] == 2


@pytest.fixture
def sample_copy(tmp_path):
    """The bundled sample, copied so that it can be moved and damaged."""
    import shutil

    return Path(shutil.copytree(SAMPLE_DIR, tmp_path / "corpus"))


def test_embedded_images_survive_moving_the_corpus_and_parquet_export(sample_copy, tmp_path):
    import shutil

    split = load_dataset("twitter2015", data_dir=sample_copy, cache_dir=tmp_path / "cache")["train"]
    shutil.move(sample_copy, tmp_path / "moved")  # the prepared data must not need the corpus any more
    raw = split.cast_column("image", datasets.Image(decode=False))
    stored = [row["image"] for row in raw if row["image"] is not None]
    assert len(stored) == 33 and all(value["bytes"] and value["path"] is None for value in stored)
    assert all(image.size == (64, 64) for image in split["image"] if image is not None)
    assert sum(len(crops) for crops in split["crops"]) > 0
    split.to_parquet(str(tmp_path / "train.parquet"))
    back = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "train.parquet"), split="train", cache_dir=str(tmp_path / "parquet-cache")
    )
    assert [image is None for image in back["image"]] == [image is None for image in split["image"]]
    assert all(np.asarray(a).tolist() == np.asarray(b).tolist() for a, b in zip(back["crops"][0], split["crops"][0]))


@pytest.mark.parametrize("embed_images", [True, False])
def test_image_changed_after_preparation_is_prepared_again(twitter_corpus, tmp_path, embed_images):
    options = dict(data_dir=twitter_corpus, cache_dir=tmp_path / "cache", embed_images=embed_images)
    first, builder = load_dataset("twitter2015", return_builder=True, **options)
    assert first["train"][0]["image"] is not None and "unreadable_image" not in builder.gap_counts["validation"]
    garbage(twitter_corpus / "NER_data" / "twitter2015_images" / "201.jpg")  # damaged in place after preparation
    again, builder = load_dataset("twitter2015", return_builder=True, **options)
    assert again["validation"][0]["image"] is None  # the old code served the cache: decoding crashed here
    assert builder.gap_counts["validation"]["unreadable_image"] == 1


@pytest.mark.parametrize("name, file_name", [("twitter2015", "valid.txt"), ("mnre", "ours_test.txt")])
def test_empty_split_file_is_named(twitter_corpus, mnre_corpus, tmp_path, name, file_name):
    data_dir = twitter_corpus if name == "twitter2015" else mnre_corpus
    path = next(data_dir.rglob(file_name))
    path.write_text("\n\n")
    with pytest.raises(DataFormatError, match=rf"{file_name}: the file holds no examples"):
        load_dataset(name, data_dir=data_dir, cache_dir=tmp_path / "cache", text_only=True)


def test_corpus_file_that_is_not_utf8_is_named_through_the_builder(mnre_corpus, tmp_path):
    path = mnre_corpus / "RE_data" / "txt" / "ours_test.txt"
    path.write_bytes(path.read_text().encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"ours_test\.txt: the file is UTF-16-encoded"):
        load_dataset("mnre", data_dir=mnre_corpus, cache_dir=tmp_path / "cache", text_only=True)
