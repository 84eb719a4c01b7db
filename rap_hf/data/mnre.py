"""`datasets` builder for the MNRE multimodal relation extraction corpus (version 2, HVPNeT/MKGformer layout).

``data_dir`` may point at the release root (holding ``RE_data/``) or at ``RE_data/`` itself::

    RE_data/ours_rel2id.json
    RE_data/txt/ours_{train,val,test}.txt            # the validation file may be named "mnre_val .txt"
    RE_data/txt/mre_{train,dev,test}_dict.pth        # {line index: [crop file names]}
    RE_data/img_org/{train,val,test}/<img_id>
    RE_data/img_vg/{train,val,test}/crops/<line index>_pred_yolo_crop_<k>.png

Usage::

    builder = MNRE(data_dir="data", cache_dir="cache")
    builder.download_and_prepare()
    dataset_dict = builder.as_dataset()
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets

from .parsing import (
    MNRE_RELATIONS,
    DataFormatError,
    GapReportMixin,
    ParseStats,
    RAPBuilderConfig,
    crop_values,
    file_inside,
    first_existing,
    image_value,
    load_crop_dict,
    read_mnre_file,
    read_relation_names,
    require_examples,
    warn_if_missing_folder,
)

# Split -> (accepted text file names, image folder name, crop dictionary names).
_SPLITS = {
    "train": (("ours_train.txt", "mnre_train.txt"), "train", ("mre_train_dict.pth",)),
    "validation": (
        ("ours_val.txt", "mnre_val .txt", "mnre_val.txt", "ours_dev.txt", "mnre_dev.txt"),
        "val",
        ("mre_dev_dict.pth", "mre_val_dict.pth"),
    ),
    "test": (("ours_test.txt", "mnre_test.txt"), "test", ("mre_test_dict.pth",)),
}
_REL2ID_NAMES = ("ours_rel2id.json", "mnre_rel2id.json", "rel2id.json")


def entity_feature() -> dict:
    """``{"name", "start", "end"}`` with end-exclusive word indices (MNRE ``pos``)."""
    return {"name": datasets.Value("string"), "start": datasets.Value("int32"), "end": datasets.Value("int32")}


def re_features(relation_names: list[str] | None = None) -> datasets.Features:
    """Columns of the MNRE datasets; ``relation`` names are ordered by their id in ``ours_rel2id.json``."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image_id": datasets.Value("string"),
            "tokens": datasets.List(datasets.Value("string")),
            "subject": entity_feature(),
            "object": entity_feature(),
            "relation": datasets.ClassLabel(names=relation_names or MNRE_RELATIONS),
            "image": datasets.Image(),
            "crops": datasets.List(datasets.Image()),
        }
    )


@dataclass
class MNRELayout:
    """Resolved locations of the MNRE release."""

    root: Path

    @property
    def text_dirs(self) -> list[Path]:
        return [self.root / "txt", self.root]

    def split_file(self, split: str) -> Path:
        names = _SPLITS[split][0]
        found = first_existing(folder / name for folder in self.text_dirs for name in names)
        if found is None:
            tried = ", ".join(repr(name) for name in names)
            raise FileNotFoundError(f"MNRE: no {split} file in {self.root}/txt or {self.root} (tried {tried})")
        return found

    def rel2id_file(self) -> Path:
        found = first_existing(folder / name for folder in (self.root, self.root / "txt") for name in _REL2ID_NAMES)
        if found is None:
            raise FileNotFoundError(f"MNRE: no ours_rel2id.json in {self.root} or {self.root / 'txt'}")
        return found

    def images_dir(self, split: str) -> Path:
        return self.root / "img_org" / _SPLITS[split][1]

    def crops_dir(self, split: str) -> Path:
        return self.root / "img_vg" / _SPLITS[split][1] / "crops"

    def crop_dict_file(self, split: str) -> Path | None:
        return first_existing(folder / name for folder in self.text_dirs for name in _SPLITS[split][2])


def resolve_mnre_layout(data_dir: str | Path) -> MNRELayout:
    """Find the folder holding ``txt/`` (``data_dir/RE_data`` or ``data_dir``)."""
    root = Path(data_dir).expanduser()
    for candidate in (root / "RE_data", root):
        if (candidate / "txt").is_dir() or any((candidate / n).is_file() for n in _REL2ID_NAMES):
            return MNRELayout(candidate)
    raise FileNotFoundError(f"MNRE: neither {root / 'RE_data'} nor {root} holds txt/ or ours_rel2id.json")


def _relation_names_for(data_dir: str | None) -> list[str]:
    """Relation names of the corpus at ``data_dir`` (the standard 23 when it cannot be read yet)."""
    if not data_dir:
        return list(MNRE_RELATIONS)
    try:
        return read_relation_names(resolve_mnre_layout(data_dir).rel2id_file())
    except FileNotFoundError:
        return list(MNRE_RELATIONS)


class MNRE(GapReportMixin, datasets.GeneratorBasedBuilder):
    """MNRE: tokens, subject/object spans, relation, image and up to ``max_crops`` object crops."""

    BUILDER_CONFIG_CLASS = RAPBuilderConfig
    BUILDER_CONFIGS = [RAPBuilderConfig(name="mnre", version=datasets.Version("1.0.0"), description="MNRE v2")]
    DEFAULT_CONFIG_NAME = "mnre"

    def _info(self) -> datasets.DatasetInfo:
        features = re_features(_relation_names_for(self.config.data_dir))
        return datasets.DatasetInfo(description=self.config.description or "", features=features)

    def _split_generators(self, dl_manager):
        if not self.config.data_dir:
            raise ValueError("mnre: pass data_dir= (the folder holding RE_data/ or RE_data itself)")
        layout = resolve_mnre_layout(self.config.data_dir)
        relation_names = read_relation_names(layout.rel2id_file())
        return [
            datasets.SplitGenerator(
                name=name, gen_kwargs={"layout": layout, "split": split, "relation_names": relation_names}
            )
            for name, split in (
                (datasets.Split.TRAIN, "train"),
                (datasets.Split.VALIDATION, "validation"),
                (datasets.Split.TEST, "test"),
            )
        ]

    def _generate_examples(self, layout: MNRELayout, split: str, relation_names: list[str]):
        split_file = layout.split_file(split)
        stats = ParseStats()
        records = read_mnre_file(split_file, relation_names, stats)
        require_examples(split_file, len(records))
        counts: Counter = stats.counts
        crop_dict = self._crop_dict(layout, split, counts)
        crops_dir, images_dir = layout.crops_dir(split), layout.images_dir(split)
        if not self.config.text_only:
            warn_if_missing_folder(images_dir, "image")
        for record in records:
            image, crops = None, []
            if not self.config.text_only:
                path = file_inside(images_dir, record.image_id)
                if path is None:
                    raise DataFormatError(
                        split_file,
                        record.line,
                        f"'img_id' {record.image_id!r} leads outside the image folder {images_dir}",
                    )
                image = image_value(path, "image", counts, self.config.embed_images)
                if crop_dict is not None:
                    names = crop_dict.get(str(record.index))
                    crops = crop_values(names, crops_dir, self.config.max_crops, counts, self.config.embed_images)
            yield (
                record.index,
                {
                    "id": str(record.index),
                    "image_id": record.image_id,
                    "tokens": record.tokens,
                    "subject": record.subject.as_dict(),
                    "object": record.object.as_dict(),
                    "relation": record.relation,
                    "image": image,
                    "crops": crops,
                },
            )
        self._record_gaps(split, len(records), counts)

    def _crop_dict(self, layout: MNRELayout, split: str, counts: Counter) -> dict | None:
        """The split's crop dictionary (``None`` and counted when absent, or in text-only mode)."""
        if self.config.text_only:
            return None
        path = layout.crop_dict_file(split)
        if path is None:
            counts["missing_crop_dict"] += 1
            return None
        return load_crop_dict(path)
