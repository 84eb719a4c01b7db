"""`datasets` builder for the Twitter-2015 and Twitter-2017 multimodal NER corpora.

The config name picks the corpus. ``data_dir`` may point at the release root (holding ``NER_data/``), at
``NER_data/`` itself or at the corpus folder (``NER_data/twitter2017/``)::

    NER_data/twitter2017/{train,valid,test}.txt
    NER_data/twitter2017/twitter2017_{train,val,test}_dict.pth     # {"<imgid>.jpg": [crop file names]}
    NER_data/twitter2017_images/<imgid>.jpg
    NER_data/twitter2017_aux_images/{train,val,test}/crops/<imgid>_pred_yolo_crop_<k>.png

Usage (``datasets>=4`` no longer loads builder scripts by path, so the class is used directly)::

    builder = TwitterNER(config_name="twitter2017", data_dir="data", cache_dir="cache")
    builder.download_and_prepare()
    dataset_dict = builder.as_dataset()
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets

from .parsing import (
    NER_LABELS,
    DataFormatError,
    GapReportMixin,
    ParseStats,
    RAPBuilderConfig,
    crop_values,
    file_inside,
    first_existing,
    image_value,
    load_crop_dict,
    read_twitter_file,
    require_examples,
    warn_if_missing_folder,
)

TWITTER_CORPORA = ("twitter2015", "twitter2017")
# Split -> accepted text file names, and the short name used by image folders and crop dictionaries.
_SPLIT_FILES = {
    "train": (("train.txt",), "train"),
    "validation": (("valid.txt", "val.txt", "dev.txt"), "val"),
    "test": (("test.txt",), "test"),
}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def ner_features() -> datasets.Features:
    """Columns of the NER datasets; ``ner_tags`` uses the fixed model label order ``NER_LABELS``."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "ner_tags": datasets.List(datasets.ClassLabel(names=NER_LABELS)),
            "image": datasets.Image(),
            "crops": datasets.List(datasets.Image()),
        }
    )


@dataclass
class TwitterLayout:
    """Resolved locations of one Twitter corpus."""

    corpus_dir: Path
    images_dir: Path
    aux_dir: Path

    def split_file(self, split: str) -> Path:
        names, _ = _SPLIT_FILES[split]
        found = first_existing(self.corpus_dir / name for name in names)
        if found is None:
            raise FileNotFoundError(f"no {split} file in {self.corpus_dir} (tried {', '.join(names)})")
        return found

    def crop_dict_file(self, split: str) -> Path | None:
        short = _SPLIT_FILES[split][1]
        prefix = self.images_dir.name[: -len("_images")]
        names = dict.fromkeys([f"{self.corpus_dir.name}_{short}_dict.pth", f"{prefix}_{short}_dict.pth"])
        return first_existing(folder / name for folder in (self.corpus_dir, self.corpus_dir.parent) for name in names)

    def crops_dir(self, split: str) -> Path:
        return self.aux_dir / _SPLIT_FILES[split][1] / "crops"


def resolve_twitter_layout(data_dir: str | Path, corpus: str) -> TwitterLayout:
    """Find ``<corpus>/train.txt`` under ``data_dir``, ``data_dir/NER_data`` or ``data_dir`` itself."""
    root = Path(data_dir).expanduser()
    candidates = [root / corpus, root / "NER_data" / corpus, root]
    corpus_dir = next((c for c in candidates if (c / "train.txt").is_file()), None)
    if corpus_dir is None:
        tried = ", ".join(str(c / "train.txt") for c in candidates)
        raise FileNotFoundError(f"{corpus}: no train.txt found (tried {tried})")
    # The image folders are named after the corpus folder; fall back to the config name for renamed folders.
    names = [corpus_dir.name, corpus]
    parent = corpus_dir.parent
    return TwitterLayout(
        corpus_dir=corpus_dir,
        images_dir=first_existing(parent / f"{n}_images" for n in names) or parent / f"{corpus}_images",
        aux_dir=first_existing(parent / f"{n}_aux_images" for n in names) or parent / f"{corpus}_aux_images",
    )


def image_file_name(image_id: str) -> str:
    """``IMGID`` values have no extension in the releases; the image files are ``<id>.jpg``."""
    return image_id if image_id.lower().endswith(_IMAGE_EXTENSIONS) else f"{image_id}.jpg"


class TwitterNER(GapReportMixin, datasets.GeneratorBasedBuilder):
    """Twitter-2015 / Twitter-2017 MNER: tokens, BIO tags, image and up to ``max_crops`` object crops."""

    BUILDER_CONFIG_CLASS = RAPBuilderConfig
    BUILDER_CONFIGS = [
        RAPBuilderConfig(name="twitter2015", version=datasets.Version("1.0.0"), description="Twitter-2015 MNER"),
        RAPBuilderConfig(name="twitter2017", version=datasets.Version("1.0.0"), description="Twitter-2017 MNER"),
    ]
    DEFAULT_CONFIG_NAME = "twitter2017"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(description=self.config.description or "", features=ner_features())

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ValueError(f"{self.config.name}: pass data_dir= (the folder holding NER_data/ or the corpus)")
        layout = resolve_twitter_layout(self.config.data_dir, self.config.name)
        return [
            datasets.SplitGenerator(name=name, gen_kwargs={"layout": layout, "split": split})
            for name, split in (
                (datasets.Split.TRAIN, "train"),
                (datasets.Split.VALIDATION, "validation"),
                (datasets.Split.TEST, "test"),
            )
        ]

    def _generate_examples(self, layout: TwitterLayout, split: str):
        stats = ParseStats()
        split_file = layout.split_file(split)
        sentences = read_twitter_file(split_file, repair_orphan_i=self.config.repair_orphan_i, stats=stats)
        require_examples(split_file, len(sentences))
        counts: Counter = stats.counts
        if self.config.repair_orphan_i:
            counts["orphan_i_tags_repaired"] = counts.pop("orphan_i_tags", 0)
        crop_dict, crops_dir = self._crop_dict(layout, split, counts)
        if not self.config.text_only:
            warn_if_missing_folder(layout.images_dir, "image")
        for index, sentence in enumerate(sentences):
            image, crops = None, []
            if not self.config.text_only:
                file_name = image_file_name(sentence.image_id)
                path = file_inside(layout.images_dir, file_name)
                if path is None:
                    raise DataFormatError(
                        split_file,
                        sentence.line,
                        f"image id {sentence.image_id!r} leads outside the image folder {layout.images_dir}",
                    )
                image = image_value(path, "image", counts, self.config.embed_images)
                if crop_dict is not None:
                    names = crop_dict.get(file_name, crop_dict.get(sentence.image_id))
                    crops = crop_values(names, crops_dir, self.config.max_crops, counts, self.config.embed_images)
            yield (
                index,
                {
                    "id": str(index),
                    "image_id": sentence.image_id,
                    "tokens": sentence.tokens,
                    "ner_tags": sentence.tags,
                    "image": image,
                    "crops": crops,
                },
            )
        self._record_gaps(split, len(sentences), counts)

    def _crop_dict(self, layout: TwitterLayout, split: str, counts: Counter):
        """The split's crop dictionary (``None`` and counted when absent, or in text-only mode)."""
        if self.config.text_only:
            return None, None
        path = layout.crop_dict_file(split)
        if path is None:
            counts["missing_crop_dict"] += 1
            return None, None
        return load_crop_dict(path), layout.crops_dir(split)
