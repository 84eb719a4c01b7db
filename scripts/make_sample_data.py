#!/usr/bin/env python
"""Generate the bundled synthetic sample corpora (rap_hf/data/sample/) deterministically.

Three small corpora in the real on-disk layouts (see docs/data.md):

* ``NER_data/twitter2017``: Twitter-2017-format MNER,
* ``NER_data/twitter2015``: Twitter-2015-format MNER (``OTHER`` instead of ``MISC``, a few orphan ``I-`` tags,
  no trailing blank line in ``test.txt``),
* ``RE_data``: MNRE-format MRE (``mnre_*.txt`` Python-literal lines, release v1 names with ``mnre_val .txt``,
  ``ours_rel2id.json``, crops per line).

Text is written from templates and invented names. Images carry signal for part of the samples: for *hard*
samples the text is ambiguous and the image's coloured shape decides the entity type (NER) or the relation (RE);
*easy* samples have trigger words and get a relevant image, an unrelated (noise) image or none. The design is
documented in docs/data.md ("Sample data"); ``manifest.json`` records the kind of every sample.

    python scripts/make_sample_data.py                       # rewrite rap_hf/data/sample
    python scripts/make_sample_data.py --out /tmp/big --sizes 2000 400 400   # larger corpus, same design
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from rap_hf.data.parsing import MNRE_RELATIONS

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "rap_hf" / "data" / "sample"
SPLITS = (("train", "train", "train", "train"), ("valid", "val", "val", "dev"), ("test", "test", "test", "test"))

# Visual code: entity type -> (colour, shape). The shapes are what the object "detector" crops.
CODE = {
    "PER": ((220, 40, 40), "circle"),
    "LOC": ((40, 170, 60), "triangle"),
    "ORG": ((40, 80, 220), "square"),
    "MISC": ((230, 200, 40), "diamond"),
}
TYPES = tuple(CODE)

NAMES = {
    "PER": [
        "Maria Lopez",
        "James Carter",
        "Aisha Khan",
        "Tom Becker",
        "Lena Park",
        "Omar Haddad",
        "Nina Rossi",
        "Kofi Mensah",
        "Ivy Chen",
        "Paul Dubois",
        "Sara Novak",
        "Leo Grant",
    ],
    "LOC": [
        "Riverton",
        "North Hallow",
        "Lake Mira",
        "Port Elling",
        "Greyford",
        "Saltmarsh Bay",
        "Eastwick",
        "Mount Carrow",
        "Bellhaven",
        "Dunmore",
    ],
    "ORG": [
        "Crescent Bank",
        "Bluefin FC",
        "Nordex Labs",
        "Harbor Times",
        "Vela Motors",
        "Kestrel Air",
        "Oakline University",
        "Pioneer Radio",
        "Quartz Systems",
    ],
    "MISC": [
        "Summer Jam Festival",
        "Galaxy Cup",
        "Winter Lights Parade",
        "Solar Week",
        "Iron Trail Marathon",
        "Harvest Fair",
        "Neon Nights",
    ],
}
# Topics: a phrase in the text and a scene in a relevant image; an unrelated image shows another topic's scene.
TOPICS = {
    "beach": ["at the beach", "#beachday", "by the sea"],
    "snow": ["in the snow", "#snowday", "snowy morning"],
    "night": ["under the stars", "#nightsky", "late at night"],
    "forest": ["in the woods", "#forest", "on the hiking trail"],
    "city": ["downtown", "#citylife", "in the city"],
    "sunset": ["at sunset", "#goldenhour", "evening sky"],
    "stadium": ["at the stadium", "#gameday", "on the pitch"],
    "concert": ["at the concert", "#livemusic", "on stage"],
}
# Scene colours per topic (see `scene`), away from the four shape colours.
SCENES = {
    "beach": [(150, 205, 235), (40, 120, 170), (225, 205, 160)],
    "snow": [(238, 240, 245), (170, 175, 190)],
    "night": [(15, 20, 55), (245, 245, 220)],
    "forest": [(45, 95, 50), (95, 65, 40)],
    "city": [(200, 205, 215), (85, 85, 95), (245, 225, 130)],
    "sunset": [(250, 150, 70), (110, 50, 120)],
    "stadium": [(70, 135, 70), (95, 160, 85), (250, 250, 250)],
    "concert": [(12, 10, 15), (230, 70, 200), (70, 220, 230)],
}
# Names that fit every type: only the image can tell which one is meant (hard samples).
AMBIGUOUS = [
    "Jordan",
    "Phoenix",
    "Morgan",
    "Sierra",
    "Harper",
    "Austin",
    "Dakota",
    "Aurora",
    "Orion",
    "Savannah",
    "Camden",
    "Sydney",
]
HANDLES = ["@newsbot", "@citydesk", "@fanzone", "@dailypics", "@localnow", "@sportsline"]

NER_EASY = [
    ("Happy birthday to {PER} ! Have a great day", ["PER"]),
    ("{PER} scores twice as {ORG} win again", ["PER", "ORG"]),
    ("Heavy snow expected in {LOC} tonight", ["LOC"]),
    ("{ORG} announces new headquarters in {LOC}", ["ORG", "LOC"]),
    ("Tickets for {MISC} are sold out !", ["MISC"]),
    ("RT {HANDLE} : {PER} joins {ORG} as head coach", ["PER", "ORG"]),
    ("Great weekend at {MISC} in {LOC} #fun", ["MISC", "LOC"]),
    ("Mayor {PER} visits {LOC} today", ["PER", "LOC"]),
    ("Shares of {ORG} fell on Monday", ["ORG"]),
    ("Traffic jam near {LOC} , avoid the bridge", ["LOC"]),
]
NER_HARD = [
    "Can't stop thinking about {X} #mood",
    "{X} tonight !",
    "All eyes on {X} right now",
    "Look at {X} \U0001f60d",
    "Nothing beats {X} in the morning",
    "{X} , again and again",
    "RT {HANDLE} : so proud of {X}",
    "Finally saw {X}",
]
# The main job's corpus words these templates and names without a scene ("snow", "tonight", "head coach", "trail"): its
# topic phrase is then the only scene a tweet names, so another topic's picture is irrelevant to it (beta's AUC check).
SCENE_FREE_WORDING = {
    "{PER} scores twice as {ORG} win again": "{PER} signs a new contract with {ORG}",
    "Heavy snow expected in {LOC} tonight": "Road works planned in {LOC} this week",
    "Tickets for {MISC} are sold out !": "Registration for {MISC} is now open !",
    "RT {HANDLE} : {PER} joins {ORG} as head coach": "RT {HANDLE} : {PER} joins {ORG} as chief editor",
    "Traffic jam near {LOC} , avoid the bridge": "Power cut reported near {LOC} , stay safe",
    "{X} tonight !": "{X} today !",
    "Nothing beats {X} in the morning": "Nothing beats {X} , honestly",
    "Iron Trail Marathon": "Iron Gate Marathon",  # a name, next to the forest topic's "hiking trail"
}

# MNRE relations with a visual code (hard samples): the second object in the image decides the relation.
RE_VISUAL = {
    "/per/per/couple": "PER",
    "/per/org/member_of": "ORG",
    "/per/loc/place_of_residence": "LOC",
    "/per/misc/nationality": "MISC",
}
RE_HARD = [
    "{A} and {B} #throwback",
    "{A} with {B} today",
    "Still thinking about {A} and {B}",
    "{A} \u2764 {B}",
    "Best day ever : {A} , {B}",
]
# Easy relations: a trigger word states the relation; (template, relation, subject type, object type).
RE_EASY = [
    ("{A} , the proud mother of {B}", "/per/per/parent", "PER", "PER"),
    ("{A} opens a new office in {B}", "/org/loc/locate_at", "ORG", "LOC"),
    ("{B} is a small town in {A}", "/loc/loc/contain", "LOC", "LOC"),
    ("{A} performing at {B} tonight", "/per/misc/present_in", "PER", "MISC"),
    ("{A} and {B} trending again", "None", "PER", "ORG"),
    ("{A} wins the {B} award", "/per/misc/awarded", "PER", "MISC"),
    ("{B} held in {A} this year", "/misc/loc/held_on", "LOC", "MISC"),
]
RELATIONS = MNRE_RELATIONS  # the 23 MNRE relations in ours_rel2id.json order


# --------------------------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------------------------


def scene(rng: np.random.Generator, topic: str, size: int) -> Image.Image:
    """The topic's scene (beach, snow, night sky, ...), with pixel noise so that no two pictures are identical."""
    ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    pixels = np.empty((size, size, 3))
    palette = SCENES[topic]
    if topic == "beach":  # sky, a band of sea, sand
        horizon, shore = rng.uniform(0.35, 0.5), rng.uniform(0.55, 0.65)
        pixels[:] = palette[2]
        pixels[ys < shore] = palette[1]
        pixels[ys < horizon] = palette[0]
    elif topic == "sunset":  # vertical gradient
        pixels[:] = (1 - ys[..., None]) * np.array(palette[0]) + ys[..., None] * np.array(palette[1])
    elif topic == "forest":  # trunks on foliage
        pixels[:] = palette[0]
        for x in rng.uniform(0, 1, int(rng.integers(4, 8))):
            pixels[np.abs(xs - x) < 0.035] = palette[1]
    elif topic == "city":  # buildings with lit windows on a pale sky
        pixels[:] = palette[0]
        for left in np.arange(0, 1, 0.2):
            top = rng.uniform(0.2, 0.6)
            block = (xs >= left + 0.02) & (xs < left + 0.18) & (ys > top)
            pixels[block] = palette[1]
            pixels[block & ((xs * size).astype(int) % 4 == 1) & ((ys * size).astype(int) % 5 == 2)] = palette[2]
    elif topic == "stadium":  # mown stripes and white lines
        pixels[:] = palette[0]
        pixels[(ys * 8).astype(int) % 2 == 1] = palette[1]
        pixels[(np.abs(xs - 0.5) < 0.012) | (np.abs(ys - rng.uniform(0.3, 0.7)) < 0.012)] = palette[2]
    elif topic == "concert":  # dark stage with coloured spotlights
        pixels[:] = palette[0]
        for k, x in enumerate(rng.uniform(0.15, 0.85, 3)):
            pixels[(xs - x) ** 2 + (ys - 0.25) ** 2 < 0.02] = palette[1 + k % 2]
    else:  # snow, night: speckles on a plain ground
        pixels[:] = palette[0]
        pixels[rng.random((size, size)) < 0.04] = palette[1]
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:  # diamond
        draw.polygon(
            [((x0 + x1) // 2, y0), (x1, (y0 + y1) // 2), ((x0 + x1) // 2, y1), (x0, (y0 + y1) // 2)], fill=colour
        )


def shapes_image(rng: np.random.Generator, types: list[str], topic: str, size: int) -> tuple[Image.Image, list[tuple]]:
    """The topic's scene with one coloured shape per type (left to right); returns it and the shapes' boxes."""
    image = scene(rng, topic, size)
    draw = ImageDraw.Draw(image)
    boxes = []
    slot = size // max(len(types), 1)
    for index, entity_type in enumerate(types):
        colour, kind = CODE[entity_type]
        side = int(rng.integers(slot * 3 // 10, slot * 5 // 10))  # an object in a scene, not the whole picture
        x0 = index * slot + int(rng.integers(0, slot - side + 1))
        y0 = int(rng.integers(2, size - side - 1))
        jitter = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in colour)
        box = (x0, y0, x0 + side, y0 + side)
        draw_shape(draw, kind, box, jitter)
        boxes.append(box)
    return image, boxes


def crops_of(rng: np.random.Generator, image: Image.Image, boxes: list[tuple], count: int) -> list[Image.Image]:
    """Object crops: the shapes first, then random background patches, each resized to 32x32."""
    size = image.size[0]
    regions = list(boxes)
    while len(regions) < count:
        side = int(rng.integers(size // 4, size // 2))
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        regions.append((x0, y0, x0 + side, y0 + side))
    return [image.crop(box).resize((32, 32), Image.BILINEAR) for box in regions[:count]]


# --------------------------------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------------------------------


def fill(template: str, slots: dict[str, tuple[str, str]], rnd: random.Random) -> tuple[list[str], dict[str, tuple]]:
    """Tokenize a template, replacing ``{SLOT}`` by a name; returns tokens and each slot's (start, end, type)."""
    tokens: list[str] = []
    spans: dict[str, tuple] = {}
    for piece in template.split():
        if piece.startswith("{") and piece.endswith("}"):
            slot = piece[1:-1]
            if slot == "HANDLE":
                tokens.append(rnd.choice(HANDLES))
                continue
            name, entity_type = slots[slot]
            start = len(tokens)
            tokens.extend(name.split())
            spans[slot] = (start, len(tokens), entity_type)
        else:
            tokens.append(piece)
    return tokens, spans


def bio(tokens: list[str], spans: list[tuple[int, int, str]]) -> list[str]:
    tags = ["O"] * len(tokens)
    for start, end, entity_type in spans:
        tags[start] = f"B-{entity_type}"
        for index in range(start + 1, end):
            tags[index] = f"I-{entity_type}"
    return tags


# Share of each sample kind (percent): hard = text ambiguous, easy = text has trigger words.
KIND_SHARES = {"hard": 40, "hard_noimage": 8, "easy_relevant": 22, "easy_unrelated": 20, "easy_noimage": 10}
MISLEADING_SHARE = 0.5  # unrelated images that also show a shape of a random type
AMBIGUOUS_EASY_SHARE = 0.5  # easy NER tweets whose first entity has an ambiguous name (typed by its context words)


# The bundled sample (no --sizes): Twitter-2017 is the main job's corpus (`accelerate launch scripts/run_rap.py` with no
# argument), large enough to learn from in 3 CPU minutes and with few image-only tweets, which that run does not
# learn to read (docs/benchmarks_noise.md); the two others stay small, for tests.
SAMPLE_SIZES = {"twitter2017": (450, 60, 60), "twitter2015": (40, 16, 16), "mnre": (40, 16, 16)}
MAIN_JOB_KIND_SHARES = {"hard": 15, "hard_noimage": 0, "easy_relevant": 60, "easy_unrelated": 10, "easy_noimage": 15}


@dataclass(frozen=True)
class Design:
    """What a generated corpus looks like beyond its sizes and seed (all splits alike)."""

    image_size: int = 64
    kind_shares: dict[str, float] = field(default_factory=lambda: dict(KIND_SHARES))
    misleading_share: float = MISLEADING_SHARE
    scene_free_wording: bool = False  # NER templates and names as SCENE_FREE_WORDING words them

    def worded(self, template: str) -> str:
        return SCENE_FREE_WORDING.get(template, template) if self.scene_free_wording else template

    @classmethod
    def with_unrelated_share(cls, unrelated: float, **kwargs) -> Design:
        """Moves easy tweets between a relevant and an unrelated image; the other kinds keep their shares."""
        with_image = KIND_SHARES["easy_relevant"] + KIND_SHARES["easy_unrelated"]
        if not 0 <= unrelated <= with_image:
            raise ValueError(f"--unrelated-share must lie in [0, {with_image}], got {unrelated}")
        shares = {**KIND_SHARES, "easy_unrelated": unrelated, "easy_relevant": with_image - unrelated}
        return cls(kind_shares=shares, **kwargs)


def balanced(options: list[str], size: int, rnd: random.Random) -> list[str]:
    """``size`` draws covering ``options`` as evenly as possible, shuffled (balanced classes in small splits)."""
    values = [options[i % len(options)] for i in range(size)]
    rnd.shuffle(values)
    return values


def kinds_for(size: int, rnd: random.Random, shares: dict[str, float]) -> list[str]:
    """Exactly proportional kinds for a split (largest remainder), in shuffled order."""
    exact = {kind: size * share / 100 for kind, share in shares.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    by_remainder = sorted(exact, key=lambda kind: (counts[kind] - exact[kind], kind))
    for kind in by_remainder[: size - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind, count in counts.items() for _ in range(count)]
    rnd.shuffle(kinds)
    return kinds


# --------------------------------------------------------------------------------------------------------------------
# corpora
# --------------------------------------------------------------------------------------------------------------------


def save_pickle_dict(path: Path, value: dict) -> None:
    """Crop dictionaries are pickled dicts written by torch.save (legacy format: byte-for-byte deterministic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path, _use_new_zipfile_serialization=False)


def with_topic(tokens: list[str], spans: dict[str, tuple], rnd: random.Random) -> tuple[list[str], dict, str]:
    """Puts a topic phrase after (70%) or before the tweet; returns the tokens, the shifted spans and the topic."""
    topic = rnd.choice(sorted(TOPICS))
    phrase = rnd.choice(TOPICS[topic]).split()
    if rnd.random() < 0.7:
        return tokens + phrase, spans, topic
    shifted = {slot: (start + len(phrase), end + len(phrase), kind) for slot, (start, end, kind) in spans.items()}
    return phrase + tokens, shifted, topic


def sample_picture(rng, rnd: random.Random, kind: str, shown: list[str], topic: str, design: Design, entry: dict):
    """The picture of one example (noted in `entry`): the tweet's scene with the shapes of `shown`, or, for
    `easy_unrelated`, another topic's scene with (a `design.misleading_share` of the time) a shape of a random type."""
    if kind == "easy_unrelated":
        topic = rnd.choice([t for t in sorted(TOPICS) if t != topic])
        shown = [rnd.choice(TYPES)] if rnd.random() < design.misleading_share else []
    entry["image_topic"], entry["image_types"] = topic, shown
    return shapes_image(rng, shown, topic, design.image_size)


def save_picture(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=88)
    else:
        image.save(path, format="PNG", optimize=True)


def make_ner(out: Path, corpus: str, sizes: tuple[int, ...], seed: int, design: Design) -> dict:
    """One Twitter-format corpus; returns its manifest."""
    rnd = random.Random(f"{seed}-{corpus}")
    rng = np.random.default_rng([seed, 2015 if corpus == "twitter2015" else 2017])
    root = out / "NER_data"
    manifest: dict[str, list] = {}
    used_ids: set[str] = set()
    for (text_split, short, _, _), size in zip(SPLITS, sizes):
        lines: list[str] = []
        crop_dict: dict[str, list[str]] = {}
        manifest[text_split] = []
        orphans_left = 2 if (corpus == "twitter2015" and text_split == "train") else 0
        kinds = kinds_for(size, rnd, design.kind_shares)
        hard_types = iter(balanced(list(TYPES), sum(k.startswith("hard") for k in kinds), rnd))
        for index, kind in enumerate(kinds):
            while True:
                if corpus == "twitter2017":
                    image_id = f"17_06_{rnd.randint(1000, 99999)}"
                else:
                    image_id = str(rnd.randint(100000, 999999))
                if image_id not in used_ids:
                    used_ids.add(image_id)
                    break
            if kind.startswith("hard"):
                entity_type = next(hard_types)
                tokens, spans = fill(
                    design.worded(rnd.choice(NER_HARD)), {"X": (rnd.choice(AMBIGUOUS), entity_type)}, rnd
                )
                shown = [entity_type]
            else:
                template, slot_types = rnd.choice(NER_EASY)
                slots = {t: (design.worded(rnd.choice(NAMES[t])), t) for t in slot_types}
                if rnd.random() < AMBIGUOUS_EASY_SHARE:  # the context words, not the name, tell the type
                    slots[slot_types[0]] = (rnd.choice(AMBIGUOUS), slot_types[0])
                tokens, spans = fill(design.worded(template), slots, rnd)
                shown = [slot_types[0]]
            tokens, spans, topic = with_topic(tokens, spans, rnd)
            tags = bio(tokens, sorted(spans.values()))
            if orphans_left and any(t.startswith("I-") for t in tags):
                # Twitter-2015 trap: an entity written I- I- (no B-)
                first = next(i for i in range(len(tags) - 1) if tags[i][0] == "B" and tags[i + 1][0] == "I")
                tags[first] = "I-" + tags[first][2:]
                orphans_left -= 1
            if corpus == "twitter2015":
                tags = [t.replace("MISC", "OTHER") for t in tags]
            lines.append(f"IMGID:{image_id}")
            lines.extend(f"{token}\t{tag}" for token, tag in zip(tokens, tags))
            lines.append("")
            entry = {"id": str(index), "image_id": image_id, "kind": kind, "topic": topic}
            if not kind.endswith("noimage"):
                image, boxes = sample_picture(rng, rnd, kind, shown, topic, design, entry)
                save_picture(image, root / f"{corpus}_images" / f"{image_id}.jpg")
                names = []
                for k, crop in enumerate(crops_of(rng, image, boxes, int(rng.integers(1, 4)))):
                    name = f"{image_id}_pred_yolo_crop_{k}.png"
                    save_picture(crop, root / f"{corpus}_aux_images" / short / "crops" / name)
                    names.append(name)
                crop_dict[f"{image_id}.jpg"] = names
            manifest[text_split].append(entry)
        text = "\n".join(lines)
        if not (corpus == "twitter2015" and text_split == "test"):
            text += "\n"
        else:
            text = text.rstrip("\n")  # Twitter-2015 trap: no trailing blank line after the last tweet
        (root / corpus).mkdir(parents=True, exist_ok=True)
        (root / corpus / f"{text_split}.txt").write_text(text, encoding="utf-8")
        save_pickle_dict(root / corpus / f"{corpus}_{short}_dict.pth", crop_dict)
    return manifest


def make_mnre(out: Path, sizes: tuple[int, ...], seed: int, design: Design) -> dict:
    """The MNRE-format corpus; returns its manifest."""
    rnd = random.Random(f"{seed}-mnre")
    rng = np.random.default_rng([seed, 2])
    root = out / "RE_data"
    (root / "txt").mkdir(parents=True, exist_ok=True)
    (root / "ours_rel2id.json").write_text(json.dumps({name: i for i, name in enumerate(RELATIONS)}), encoding="utf-8")
    manifest: dict[str, list] = {}
    counter = 0
    for (_, short, image_split, dict_split), size in zip(SPLITS, sizes):
        lines: list[str] = []
        crop_dict: dict[int, list[str]] = {}
        manifest[short] = []
        kinds = kinds_for(size, rnd, design.kind_shares)
        hard_relations = iter(balanced(sorted(RE_VISUAL), sum(k.startswith("hard") for k in kinds), rnd))
        for index, kind in enumerate(kinds):
            counter += 1
            month, day, number = rnd.randint(1, 12), rnd.randint(1, 28), rnd.randint(1, 999)
            image_id = f"twitter_stream_2018_{month:02d}_{day:02d}_{counter}_0_2_{number}.jpg"
            if kind.startswith("hard"):
                relation = next(hard_relations)
                object_type = RE_VISUAL[relation]
                slots = {"A": (rnd.choice(NAMES["PER"]), "PER"), "B": (rnd.choice(AMBIGUOUS), object_type)}
                tokens, spans = fill(rnd.choice(RE_HARD), slots, rnd)
                shown = ["PER", object_type]
            elif index % 9 == 4:
                # overlapping entities (as in real MNRE): the location is part of the organisation's name
                place = rnd.choice(NAMES["LOC"])
                tokens = ["Bank", "of", *place.split(), "posts", "record", "profits"]
                spans = {"A": (0, 2 + len(place.split()), "ORG"), "B": (2, 2 + len(place.split()), "LOC")}
                relation, shown = "/org/loc/locate_at", ["ORG", "LOC"]
            else:
                template, relation, subject_type, object_type = rnd.choice(RE_EASY)
                slots = {"A": (rnd.choice(NAMES[subject_type]), subject_type)}
                choices = [n for n in NAMES[object_type] if n != slots["A"][0]]
                slots["B"] = (rnd.choice(choices), object_type)
                tokens, spans = fill(template, slots, rnd)
                shown = [subject_type, object_type]
            tokens, spans, topic = with_topic(tokens, spans, rnd)
            subject, obj = spans["A"], spans["B"]
            record = {
                "token": tokens,
                "h": {"name": " ".join(tokens[subject[0] : subject[1]]), "pos": [subject[0], subject[1]]},
                "t": {"name": " ".join(tokens[obj[0] : obj[1]]), "pos": [obj[0], obj[1]]},
                "img_id": image_id,
                "relation": relation,
            }
            lines.append(repr(record))  # Python literal (single quotes), as in the release
            entry = {"id": str(index), "image_id": image_id, "kind": kind, "relation": relation, "topic": topic}
            if not kind.endswith("noimage"):
                image, boxes = sample_picture(rng, rnd, kind, shown, topic, design, entry)
                save_picture(image, root / "img_org" / image_split / image_id)
                names = []
                for k, crop in enumerate(crops_of(rng, image, boxes, int(rng.integers(1, 5)))):  # 1-4, as released
                    name = f"{index}_pred_yolo_crop_{k}.png"
                    save_picture(crop, root / "img_vg" / image_split / "crops" / name)
                    names.append(name)
                crop_dict[index] = names
            manifest[short].append(entry)
        # MNRE v1 release names (validation with its space), so the sample also exercises that trap.
        text_name = "mnre_val .txt" if short == "val" else f"mnre_{short}.txt"
        (root / "txt" / text_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        save_pickle_dict(root / "txt" / f"mre_{dict_split}_dict.pth", crop_dict)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--sizes",
        type=int,
        nargs=3,
        default=None,
        metavar=("TRAIN", "VALID", "TEST"),
        help="every corpus this size, in the default design (default: the bundled sample, SAMPLE_SIZES, its "
        "Twitter-2017 corpus in the main job's design, MAIN_JOB_KIND_SHARES)",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--unrelated-share",
        type=float,
        default=KIND_SHARES["easy_unrelated"],
        help="percent of all tweets that are easy and carry an unrelated image (taken from the easy "
        "tweets with a relevant one)",
    )
    parser.add_argument(
        "--misleading-share",
        type=float,
        default=MISLEADING_SHARE,
        help="fraction of the unrelated images that also show a shape of a random type",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.misleading_share <= 1:
        parser.error(f"--misleading-share must lie in [0, 1], got {args.misleading_share}")
    try:
        design = Design.with_unrelated_share(
            args.unrelated_share, image_size=args.image_size, misleading_share=args.misleading_share
        )
    except ValueError as error:
        parser.error(str(error))
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    sizes = dict.fromkeys(SAMPLE_SIZES, tuple(args.sizes)) if args.sizes else dict(SAMPLE_SIZES)
    designs = dict.fromkeys(SAMPLE_SIZES, design)
    if not args.sizes:
        designs["twitter2017"] = dataclasses.replace(
            design, kind_shares=dict(MAIN_JOB_KIND_SHARES), scene_free_wording=True
        )
    manifest = {
        "seed": args.seed,
        "sizes": {corpus: list(size) for corpus, size in sizes.items()},
        "code": {t: {"colour": list(c), "shape": s} for t, (c, s) in CODE.items()},
        "kind_shares_percent": {corpus: d.kind_shares for corpus, d in designs.items()},
        "scene_free_wording": {corpus: d.scene_free_wording for corpus, d in designs.items()},
        "misleading_share": design.misleading_share,
        "ambiguous_easy_share": AMBIGUOUS_EASY_SHARE,
        "topics": TOPICS,
        "re_visual_relations": RE_VISUAL,
        "twitter2017": make_ner(args.out, "twitter2017", sizes["twitter2017"], args.seed, designs["twitter2017"]),
        "twitter2015": make_ner(args.out, "twitter2015", sizes["twitter2015"], args.seed, designs["twitter2015"]),
        "mnre": make_mnre(args.out, sizes["mnre"], args.seed, designs["mnre"]),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
