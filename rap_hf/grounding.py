# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""Visual grounding: the m visual objects of a picture that arrives without a corpus's crops.

RAP reads m visual objects per picture (Sec. 3.2 of the paper: crops found by a visual grounding toolkit). The
HVPNeT corpora ship those crops (``img_vg/*_crop_N.png``); a user's own picture has none. A grounder finds them::

    grounder = load_grounder("vision-encoder", vision_model=model, image_processor=processor.image_processor)
    boxes = grounder.ground([picture], ["Kevin Durant visits Oracle Arena"])  # [[(x0, y0, x1, y1), ...]]
    crops = grounder.crops(picture, "Kevin Durant visits Oracle Arena")  # PIL images

* ``"vision-encoder"`` (`VisionEncoderGrounder`, the offline default): regions of the model's own pretrained vision
  encoder's feature map that the rest of the picture does not repeat (feature contrast); nothing to download.
* a zero-shot detector id or folder (`ZeroShotDetectionGrounder`: OWL-ViT, OWLv2, Grounding DINO), queried with
  phrases of the text, as the paper's grounding toolkit is;
* any object detector id or folder (`ObjectDetectionGrounder`: DETR, RT-DETR, YOLOS, ...): the top boxes by score.

Boxes are ``(x0, y0, x1, y1)`` integers in the picture's pixels (x1, y1 exclusive, as ``PIL.Image.crop`` reads them),
inside the picture and at least `min_size_fraction` of its shorter side wide and high. This file imports only torch,
transformers, PIL, numpy and the standard library, so that it can travel next to a checkpoint as remote code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

Box = tuple[int, int, int, int]

VISION_ENCODER = "vision-encoder"
NO_GROUNDING = "none"
# Choice: a crop under an eighth of the picture's shorter side shows too little for a 224-px encoder input.
MIN_SIZE_FRACTION = 0.125
# Choice: boxes overlapping a better one by IoU > 0.7 are dropped: m near-copies of one object add no information.
NMS_IOU = 0.7
# Choice: the query when a text names nothing (only stopwords, links, emoji): RAP's texts are mostly about people.
GENERIC_QUERIES = ("a person", "an object")
# Choice: at most 8 phrases per text: OWL's text tower sees each query separately (cost grows with the count) and
# Grounding DINO's prompt holds 256 tokens.
MAX_QUERIES = 8
# Choice: a region over more than half the feature map repeats the whole-image slot: its threshold rises until it fits.
MAX_REGION_FRACTION = 0.5
# Choice: title-case runs of more than 4 words (whole tweets in title case) are split: a query is one thing's name.
MAX_PHRASE_WORDS = 4
# ImageNet statistics: the image processor's own mean/std are used when it has them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before being below between both
    but by can could did do does doing down during each few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just let me more most my myself no nor not now of off on
    once only or other our ours ourselves out over own rt same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up us very via was we were what when where
    which while who whom why will with would you your yours yourself yourselves today tonight new get got go going
    gone via amp im its it's dont don't can't cant won't wont one two"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


# ---------------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------------
def fit_box(box: Sequence[float], width: int, height: int, min_size_fraction: float = MIN_SIZE_FRACTION) -> Box:
    """`box` as integers inside a `width` x `height` picture, grown around its centre to the minimum size (at least
    one pixel) and shifted back inside where growing pushed it out."""
    minimum = max(1, min(width, height, round(min_size_fraction * min(width, height))))
    x0, y0, x1, y1 = (float(v) if math.isfinite(float(v)) else 0.0 for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    spans = []
    for low, high, size in ((x0, x1, width), (y0, y1, height)):
        low, high = max(0.0, min(low, size)), max(0.0, min(high, size))
        start, end = math.floor(low), math.ceil(high)
        if end - start < minimum:
            centre = (low + high) / 2
            start = round(centre - minimum / 2)
            end = start + minimum
        shift = max(0, -start) - max(0, end - size)
        spans.append((start + shift, end + shift))
    (x0, x1), (y0, y1) = spans
    return int(x0), int(y0), int(x1), int(y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def top_boxes(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    width: int,
    height: int,
    num_objects: int,
    min_size_fraction: float = MIN_SIZE_FRACTION,
    nms_iou: float = NMS_IOU,
) -> list[Box]:
    """The `num_objects` best-scoring boxes (ties: the earlier box), fitted into the picture, each overlapping no
    better one by more than `nms_iou`; where too few remain, the best of the overlapping ones fill up (distinct
    boxes only), so every object slot gets a crop while the detector found that many."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    fitted = [fit_box(boxes[index], width, height, min_size_fraction) for index in order]
    kept: list[Box] = []
    for box in fitted:
        if len(kept) < num_objects and all(box_iou(box, other) <= nms_iou for other in kept):
            kept.append(box)
    for box in fitted:
        if len(kept) < num_objects and box not in kept:
            kept.append(box)
    return kept


# ---------------------------------------------------------------------------------------------------------------------
# Query phrases
# ---------------------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"https?://\S+|www\.\S+|[@#]?[^\W_][\w'’-]*", re.UNICODE)


def _split_hashtag(tag: str) -> str:
    """``"NBAFinals"`` -> ``"NBA Finals"``, ``"game_day"`` -> ``"game day"``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", tag.replace("_", " "))
    return " ".join(spaced.split())


def query_phrases(text: str | None, max_queries: int = MAX_QUERIES) -> list[str]:
    """Phrases of a text to ask a zero-shot detector about, most specific first: runs of capitalised words
    ("Kevin Durant"), hashtags without ``#`` (split at case changes), then the other words that are not stopwords,
    links or mentions; case-insensitive duplicates dropped. Empty when the text names nothing."""
    if not text:
        return []
    capitalised, hashtags, others = [], [], []
    run: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        lowered = token.lower()
        is_capital = token[:1].isupper() and lowered not in _STOPWORDS
        if is_capital and len(run) < MAX_PHRASE_WORDS:
            run.append(token)
            continue
        if run:
            capitalised.append(" ".join(run))
            run = []
        if is_capital:  # a long title-case run goes on as a new phrase
            run.append(token)
            continue
        if lowered.startswith(("http", "www.")) or token.startswith("@"):
            continue
        if token.startswith("#"):
            if len(token) > 1:
                hashtags.append(_split_hashtag(token[1:]))
        elif lowered not in _STOPWORDS and len(token) > 2 and not token.isdigit():
            others.append(token)
    if run:
        capitalised.append(" ".join(run))
    phrases, seen = [], set()
    for phrase in capitalised + hashtags + others:
        key = phrase.casefold()
        if key and key not in seen:
            seen.add(key)
            phrases.append(phrase)
    return phrases[:max_queries]


# ---------------------------------------------------------------------------------------------------------------------
# Grounders
# ---------------------------------------------------------------------------------------------------------------------
class VisualGrounder:
    """Finds up to `num_objects` boxes of visual objects in pictures; subclasses implement `ground`.

    Attributes:
        name: the grounding source as recorded in a processor or config (``"vision-encoder"``, a Hub id, a folder).
        num_objects: m, the boxes per picture (at most).
        uses_text: whether the boxes depend on the text (a cache of boxes must then key by the text too).
        pictures_grounded: how many pictures this object has grounded (what a cache of boxes saves shows here).
    """

    name: str = "grounder"
    uses_text: bool = False

    def __init__(self, num_objects: int = 3, min_size_fraction: float = MIN_SIZE_FRACTION):
        if num_objects < 0:
            raise ValueError(f"num_objects must be >= 0, got {num_objects}")
        self.num_objects = int(num_objects)
        self.min_size_fraction = float(min_size_fraction)
        self.pictures_grounded = 0

    def ground(self, images: Sequence[Image.Image], texts: Sequence[str | None] | None = None) -> list[list[Box]]:
        """Boxes ``(x0, y0, x1, y1)`` (picture pixels) of each picture, best first; `texts` one per picture or None."""
        images = list(images)
        texts = list(texts) if texts is not None else [None] * len(images)
        if len(texts) != len(images):
            raise ValueError(f"{len(images)} pictures but {len(texts)} texts")
        if not images or self.num_objects == 0:
            return [[] for _ in images]
        images = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        boxes = self._ground(images, texts)
        self.pictures_grounded += len(images)
        return boxes

    __call__ = ground

    def _ground(self, images: list[Image.Image], texts: list[str | None]) -> list[list[Box]]:
        raise NotImplementedError

    def crops(self, image: Image.Image, text: str | None = None) -> list[Image.Image]:
        """The picture's object crops (PIL images), best first."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        return [image.crop(box) for box in self.ground([image], [text])[0]]

    @property
    def settings(self) -> dict[str, Any]:
        """What the boxes depend on besides the pictures (and texts): keys a cache of boxes."""
        return {"name": self.name, "num_objects": self.num_objects, "min_size_fraction": self.min_size_fraction}

    @property
    def cache_id(self) -> str:
        return json.dumps(self.settings, sort_keys=True, default=str)

    def __deepcopy__(self, memo) -> VisualGrounder:
        return self  # holds a model: copies of a processor share it rather than duplicate its weights

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_objects={self.num_objects})"


def find_vision_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The vision encoder inside a (RAP) model: its ``vision_encoder``/``vision_model`` sub-module, else the model."""
    if isinstance(getattr(model, "vision_encoder", None), torch.nn.Module):
        return model.vision_encoder
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("vision_encoder", "vision_model"):
            return module
    return model


def _processor_value(image_processor: Any, name: str, default: Any) -> Any:
    value = getattr(image_processor, name, None)
    return default if value is None else value


def encoder_input_size(image_processor: Any, default: int = 224) -> tuple[int, int]:
    """(height, width) the encoder's own image processor feeds it: its crop size, else its size."""
    for name in ("crop_size", "size"):
        size = getattr(image_processor, name, None)
        if size is None:
            continue
        size = dict(size) if not isinstance(size, int) else {"height": size, "width": size}
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
    return default, default


def spatial_map(hidden: torch.Tensor) -> torch.Tensor:
    """An encoder's last hidden state as ``[N, C, h, w]``: CNNs give it so; ViT-like ``[N, T, C]`` keeps its last
    ``s*s`` tokens (the patches; leading class/register tokens dropped) as an ``s x s`` grid."""
    if hidden.dim() == 4:
        return hidden
    if hidden.dim() != 3:
        raise ValueError(f"cannot read a spatial feature map from a hidden state of shape {tuple(hidden.shape)}")
    side = math.isqrt(hidden.shape[1])
    if side == 0:
        raise ValueError(f"no patch tokens in a hidden state of shape {tuple(hidden.shape)}")
    patches = hidden[:, hidden.shape[1] - side * side :]
    return patches.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)


def _component(activation: np.ndarray, free: np.ndarray, peak: tuple[int, int], level: float) -> set:
    """The 4-connected free cells at or above `level` that hold `peak`."""
    height, width = activation.shape
    stack, seen = [peak], {peak}
    while stack:
        row, col = stack.pop()
        for neighbour in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
            r, c = neighbour
            inside = 0 <= r < height and 0 <= c < width
            if inside and neighbour not in seen and free[r, c] and activation[r, c] >= level:
                seen.add(neighbour)
                stack.append(neighbour)
    return seen


def activation_regions(
    activation: np.ndarray,
    num_regions: int,
    threshold: float,
    margin: float,
    max_region_fraction: float = MAX_REGION_FRACTION,
) -> list[tuple[float, float, float, float]]:
    """Greedy regions of an ``[h, w]`` activation map, in grid units ``(x0, y0, x1, y1)``: take the strongest cell
    still free, grow a box over the 4-connected free cells at or above `threshold` times its value (a box over more
    than `max_region_fraction` of the map raises the threshold halfway to the peak until it fits), add `margin` cells
    on each side, then free no cell of that box again; `num_regions` times or until no cell is free."""
    height, width = activation.shape
    free = np.ones((height, width), dtype=bool)
    regions = []
    for _ in range(num_regions):
        if not free.any():
            break
        masked = np.where(free, activation, -np.inf)
        peak = np.unravel_index(int(np.argmax(masked)), masked.shape)  # first maximum: deterministic on ties
        peak_value, share = float(activation[peak]), threshold
        while True:
            level = share * peak_value if peak_value > 0 else peak_value
            seen = _component(activation, free, peak, level)
            rows = [r for r, _ in seen]
            cols = [c for _, c in seen]
            r0, r1, c0, c1 = min(rows), max(rows) + 1, min(cols), max(cols) + 1
            if (r1 - r0) * (c1 - c0) <= max_region_fraction * height * width or len(seen) == 1 or share >= 0.999:
                break
            share = (1 + share) / 2
        free[r0:r1, c0:c1] = False
        regions.append((c0 - margin, r0 - margin, c1 + margin, r1 + margin))
    return regions


def feature_contrast(features: torch.Tensor) -> torch.Tensor:
    """``[N, C, h, w]`` -> ``[N, h, w]``: how far each cell's feature lies from the picture's usual one, the mean over
    channels of the squared per-channel z-score across the picture's cells. A scene repeats (sky, grass, a wall); an
    object is what its own picture does not repeat, whatever the encoder's overall activation there."""
    cells = features.flatten(2)
    spread = cells.std(dim=2, keepdim=True).clamp_min(1e-4)  # a constant channel says nothing: no division by 0
    z_scores = (cells - cells.mean(dim=2, keepdim=True)) / spread
    return z_scores.pow(2).mean(dim=1).reshape(features.shape[0], *features.shape[2:])


SALIENCY = {"contrast": feature_contrast, "norm": lambda features: features.norm(dim=1)}


def feature_map_at_stride(output: Any, input_height: int, stride: int | None) -> torch.Tensor:
    """The encoder's spatial feature map (``[N, C, h, w]``) nearest `stride` pixels per cell among its hidden states
    (the deeper on a tie); `stride` None, or no hidden states: the last hidden state."""
    last = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    hidden_states = getattr(output, "hidden_states", None)
    if stride is None or not hidden_states:
        return spatial_map(last)
    candidates = [spatial_map(hidden) for hidden in (*hidden_states, last) if hidden.dim() in (3, 4)]
    # reversed: min keeps the first of equals, so the deeper map wins a tie
    return min(reversed(candidates), key=lambda features: abs(math.log(input_height / features.shape[2] / stride)))


class VisionEncoderGrounder(VisualGrounder):
    """Objects from the pretrained vision encoder the model already has (offline, no extra weights): the picture,
    resized whole to the encoder's input size (no centre crop, so grid cells map proportionally onto the picture),
    gives a spatial feature map (the hidden state nearest `feature_stride` pixels per cell); its saliency per cell is
    the activation map `activation_regions` splits into up to m regions.

    Args:
        vision_model: the vision encoder, or a model holding one (a RAP model: its ``vision_encoder``).
        image_processor: the encoder's image processor (input size, mean and std).
        num_objects: m.
        saliency: ``"contrast"`` (`feature_contrast`: what the picture does not repeat elsewhere) or ``"norm"`` (the
            channel L2 norm: where the encoder responds most).
        feature_stride: pixels per cell of the feature map read (None: the last hidden state).
        threshold: a region spans the connected cells at or above this share of its peak.
        margin: cells added on each side of a region.
        input_size: ``(height, width)`` the picture is resized to (default: `scale` times the image processor's).
        scale: input size over the image processor's, where `input_size` is not given; an encoder that takes only
            its own input size (ViT position embeddings) gets that, found on the first call.
    """

    name = VISION_ENCODER

    def __init__(
        self,
        vision_model: torch.nn.Module,
        image_processor: Any = None,
        num_objects: int = 3,
        # Choice: contrast, not the norm: on the relevance corpus's pictures (small shapes on textured scenes) boxes
        # cover 72% of the objects, 53% with the norm (scripts/benchmarks/grounding.py, docs/design.md).
        saliency: str = "contrast",
        # Choice: 16 px per cell (14 x 14 at 224 px): a CNN's last map (32 px) makes boxes of a seventh of the picture
        # at best and its channels encode classes more than parts; stride 8 maps split one object into pieces.
        feature_stride: int | None = 16,
        # Choice: 0.6 of the peak: at 0.5 a region bleeds into its surroundings, at 0.7 it covers part of the object.
        threshold: float = 0.6,
        # Choice: no margin: a 16-px cell already reaches past its object's edge at the input size.
        margin: float = 0.0,
        input_size: tuple[int, int] | None = None,
        # Choice: the encoder's own input size: at twice it (4x the cost) the relevance corpus's objects were found
        # less often (contrast needs the scene in the receptive fields), scripts/benchmarks/grounding.py.
        scale: float = 1.0,
        min_size_fraction: float = MIN_SIZE_FRACTION,
    ):
        super().__init__(num_objects, min_size_fraction)
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if saliency not in SALIENCY:
            raise ValueError(f"saliency must be one of {sorted(SALIENCY)}, got {saliency!r}")
        self.encoder = find_vision_encoder(vision_model)
        self.saliency, self.feature_stride = saliency, feature_stride
        self.threshold, self.margin = float(threshold), float(margin)
        self.native_size = encoder_input_size(image_processor)
        if input_size:
            self.input_size = (int(input_size[0]), int(input_size[1]))
        else:
            self.input_size = (round(self.native_size[0] * scale), round(self.native_size[1] * scale))
        self._size_checked = bool(input_size) or self.input_size == self.native_size
        self.mean = tuple(float(v) for v in _processor_value(image_processor, "image_mean", IMAGENET_MEAN))
        self.std = tuple(float(v) for v in _processor_value(image_processor, "image_std", IMAGENET_STD))
        self.rescale = float(_processor_value(image_processor, "rescale_factor", 1 / 255))

    @property
    def settings(self) -> dict[str, Any]:
        return {
            **super().settings,
            "saliency": self.saliency,
            "feature_stride": self.feature_stride,
            "threshold": self.threshold,
            "max_region_fraction": MAX_REGION_FRACTION,
            "margin": self.margin,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, 3, H, W]``: each picture resized whole (bicubic) to the input size, normalised by mean/std."""
        height, width = self.input_size
        arrays = [np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.float32) for image in images]
        values = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * self.rescale
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (values - mean) / std

    def _encode(self, images: Sequence[Image.Image], device: torch.device, dtype: torch.dtype) -> Any:
        pixel_values = self.pixel_values(images).to(device, dtype)
        if self.feature_stride is None:
            return self.encoder(pixel_values=pixel_values)
        try:
            return self.encoder(pixel_values=pixel_values, output_hidden_states=True)
        except TypeError:  # an encoder without hidden states: its last map
            return self.encoder(pixel_values=pixel_values)

    @torch.no_grad()
    def activation_maps(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``[N, h, w]`` saliency of each cell of the encoder's feature map (float32, CPU)."""
        parameter = next(self.encoder.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
        was_training = self.encoder.training
        self.encoder.eval()  # BatchNorm statistics and no dropout: the same picture always gives the same boxes
        try:
            try:
                output = self._encode(images, device, dtype)
            except (ValueError, RuntimeError, AssertionError):
                if self._size_checked:
                    raise
                self.input_size = self.native_size  # an encoder of one input size (ViT): use it
                output = self._encode(images, device, dtype)
            self._size_checked = True
        finally:
            self.encoder.train(was_training)
        features = feature_map_at_stride(output, self.input_size[0], self.feature_stride)
        return SALIENCY[self.saliency](features.float()).cpu()

    def _ground(self, images: list[Image.Image], texts: list[str | None]) -> list[list[Box]]:
        maps = self.activation_maps(images)
        results = []
        for image, activation in zip(images, maps.numpy()):
            rows, cols = activation.shape
            width, height = image.size
            boxes: list[Box] = []
            for x0, y0, x1, y1 in activation_regions(activation, self.num_objects, self.threshold, self.margin):
                scaled = (x0 * width / cols, y0 * height / rows, x1 * width / cols, y1 * height / rows)
                box = fit_box(scaled, width, height, self.min_size_fraction)
                if box not in boxes:
                    boxes.append(box)
            results.append(boxes)
        return results


class ObjectDetectionGrounder(VisualGrounder):
    """Objects from any transformers object detector (``AutoModelForObjectDetection``: DETR, Conditional/Deformable
    DETR, RT-DETR, YOLOS, ...): its `num_objects` best boxes by score, whatever their class.

    Args:
        model: the detector; image_processor: its image processor (``post_process_object_detection``).
        name: how the source is recorded (its Hub id or folder).
    """

    def __init__(self, model, image_processor, num_objects: int = 3, name: str | None = None, **kwargs):
        super().__init__(num_objects, **kwargs)
        self.model, self.image_processor = model.eval(), image_processor
        self.name = name or getattr(model, "name_or_path", "") or type(model).__name__

    @torch.no_grad()
    def _ground(self, images: list[Image.Image], texts: list[str | None]) -> list[list[Box]]:
        device = self.model.device
        results = []
        for image in images:  # one at a time: detectors' processors pad a batch to its largest picture
            inputs = self.image_processor(images=[image], return_tensors="pt").to(device)
            outputs = self.model(**inputs)
            target = [(image.height, image.width)]
            found = self.image_processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=target)[0]
            results.append(self._best(found, image))
        return results

    def _best(self, found: dict[str, torch.Tensor], image: Image.Image) -> list[Box]:
        boxes, scores = found["boxes"].float().cpu().tolist(), found["scores"].float().cpu().tolist()
        return top_boxes(boxes, scores, image.width, image.height, self.num_objects, self.min_size_fraction)


_GROUNDING_DINO_TYPES = ("grounding-dino", "mm-grounding-dino")


class ZeroShotDetectionGrounder(ObjectDetectionGrounder):
    """Objects from a text-queried detector (``AutoModelForZeroShotObjectDetection``: OWL-ViT, OWLv2, Grounding
    DINO), asked for the phrases of the text (`query_phrases`: capitalised runs, hashtags, other content words), as
    the paper's grounding toolkit is; a text naming nothing asks for `generic_queries`. The best `num_objects` boxes
    over all phrases.

    Args:
        model: the detector; processor: its ``AutoProcessor`` (image processor + tokenizer).
        generic_queries: the queries of a text without phrases.
        max_queries: phrases per text, at most.
    """

    uses_text = True

    def __init__(
        self,
        model,
        processor,
        num_objects: int = 3,
        name: str | None = None,
        generic_queries: Sequence[str] = GENERIC_QUERIES,
        max_queries: int = MAX_QUERIES,
        **kwargs,
    ):
        super().__init__(model, processor, num_objects, name, **kwargs)
        self.processor = processor
        self.generic_queries, self.max_queries = list(generic_queries), int(max_queries)
        self.grounding_dino = getattr(model.config, "model_type", None) in _GROUNDING_DINO_TYPES

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "generic_queries": self.generic_queries, "max_queries": self.max_queries}

    def queries(self, text: str | None) -> list[str]:
        return query_phrases(text, self.max_queries) or list(self.generic_queries)

    @torch.no_grad()
    def _ground(self, images: list[Image.Image], texts: list[str | None]) -> list[list[Box]]:
        device = self.model.device
        results = []
        for image, text in zip(images, texts):  # each picture has its own queries
            queries = self.queries(text)
            target = [(image.height, image.width)]
            if self.grounding_dino:  # one lower-case prompt, phrases ending in "."
                prompt = " ".join(f"{query.lower()}." for query in queries)
                inputs = self.processor(images=image, text=prompt, return_tensors="pt").to(device)
                outputs = self.model(**inputs)
                found = self.processor.post_process_grounded_object_detection(
                    outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=target
                )[0]
            else:  # OWL-ViT / OWLv2: a list of query strings per picture
                inputs = self.processor(text=[queries], images=image, truncation=True, return_tensors="pt")
                inputs = inputs.to(device)
                outputs = self.model(**inputs)
                found = self.processor.post_process_grounded_object_detection(
                    outputs, threshold=0.0, target_sizes=target, text_labels=[queries]
                )[0]
            results.append(self._best(found, image))
        return results


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------
def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def grounding_family(spec: str, **hub_kwargs) -> str:
    """``"zero-shot-object-detection"`` or ``"object-detection"``: the family of a detector's Hub id or folder, read
    from its config; `ValueError` (one line) for any other model, `OSError` (one line) when it cannot be read."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
        MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
    )

    try:
        config = AutoConfig.from_pretrained(spec, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise OSError(f"could not load the grounding model {spec!r}: {_one_line(error)}") from None
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
        return "zero-shot-object-detection"
    if model_type in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
        return "object-detection"
    raise ValueError(
        f"grounding model {spec!r} (model_type {model_type!r}) is neither a zero-shot object detector "
        "(AutoModelForZeroShotObjectDetection: OWL-ViT, OWLv2, Grounding DINO) nor an object detector "
        f"(AutoModelForObjectDetection: DETR, RT-DETR, ...); use one of those, {VISION_ENCODER!r} or {NO_GROUNDING!r}"
    )


def no_grounding(spec: Any) -> bool:
    """Whether a grounding source means no grounding: ``None``, ``"none"`` (any case) or an empty string."""
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in (NO_GROUNDING, ""))


def load_grounder(
    spec: str | VisualGrounder | None,
    vision_model: torch.nn.Module | None = None,
    image_processor: Any = None,
    num_objects: int = 3,
    device: str | torch.device | None = None,
    **kwargs,
) -> VisualGrounder | None:
    """The grounder a `spec` names: ``None``/``"none"`` -> None (no objects for pictures without crops);
    ``"vision-encoder"`` -> `VisionEncoderGrounder` over `vision_model` (a vision encoder or a model holding one) and
    its `image_processor`; any other string -> the detector of that Hub id or folder, a `ZeroShotDetectionGrounder`
    or an `ObjectDetectionGrounder` by its config's model type. A `VisualGrounder` passes through.

    `kwargs` go to the grounder (e.g. ``threshold`` of the vision-encoder grounder); for detectors the Hub options
    ``revision``, ``token``, ``cache_dir``, ``local_files_only`` go to ``from_pretrained``. Failures are one line:
    ``ValueError`` for a model of another kind, ``OSError`` for one that cannot be loaded (offline, missing).
    """
    if isinstance(spec, VisualGrounder):
        return spec
    if no_grounding(spec):
        return None
    if not isinstance(spec, str):
        raise TypeError(
            f"grounding_model must be a string (a Hub id, a folder, {VISION_ENCODER!r} or "
            f"{NO_GROUNDING!r}) or a VisualGrounder, got {type(spec).__name__}"
        )
    if spec == VISION_ENCODER:
        if vision_model is None:
            raise ValueError(f"grounding_model={VISION_ENCODER!r} needs the model's vision encoder (vision_model=)")
        return VisionEncoderGrounder(vision_model, image_processor, num_objects, **kwargs)
    hub_keys = ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code")
    hub_kwargs = {key: kwargs.pop(key) for key in hub_keys if key in kwargs}
    family = grounding_family(spec, **hub_kwargs)
    from transformers import (
        AutoImageProcessor,
        AutoModelForObjectDetection,
        AutoModelForZeroShotObjectDetection,
        AutoProcessor,
    )

    try:
        if family == "zero-shot-object-detection":
            model = AutoModelForZeroShotObjectDetection.from_pretrained(spec, **hub_kwargs)
            processor = AutoProcessor.from_pretrained(spec, **hub_kwargs)
        else:
            model = AutoModelForObjectDetection.from_pretrained(spec, **hub_kwargs)
            processor = AutoImageProcessor.from_pretrained(spec, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise OSError(f"could not load the grounding model {spec!r}: {_one_line(error)}") from None
    if device is not None:
        model = model.to(device)
    grounder_class = ZeroShotDetectionGrounder if family == "zero-shot-object-detection" else ObjectDetectionGrounder
    return grounder_class(model, processor, num_objects, name=spec, **kwargs)


def same_grounding(a: str | None, b: str | None) -> bool:
    """Whether two recorded grounding sources name the same thing (``None`` = ``"none"``; a folder and a Hub id of
    the same name, ``runs/owlv2-base`` and ``google/owlv2-base``, count as the same)."""

    def normal(value: str | None) -> str:
        value = (value or NO_GROUNDING).strip().rstrip("/\\")
        return value.replace("\\", "/").split("/")[-1].lower()

    return normal(a) == normal(b)


def grounding_name(grounder: VisualGrounder | None) -> str:
    """The source a grounder records (``"none"`` for no grounder)."""
    return NO_GROUNDING if grounder is None else grounder.name


__all__ = [
    "Box",
    "VisualGrounder",
    "VisionEncoderGrounder",
    "ObjectDetectionGrounder",
    "ZeroShotDetectionGrounder",
    "load_grounder",
    "no_grounding",
    "grounding_family",
    "query_phrases",
    "activation_regions",
    "feature_contrast",
    "fit_box",
    "top_boxes",
    "same_grounding",
    "grounding_name",
    "VISION_ENCODER",
    "NO_GROUNDING",
]
