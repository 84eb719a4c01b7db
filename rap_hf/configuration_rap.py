# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""RAP (Relevance-Aware Prompt-tuning) model configuration.

This file is copied to the Hub next to the weights (remote code): it imports only `transformers`.
Equation numbers refer to Chen et al., "Relevance-aware prompt-tuning method for multimodal social entity and
relation extraction", Neurocomputing 2025.
"""

from typing import Any, Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

FUSION_UNITS = ("rau", "fsru", "cfu")
# ResNet-101 stage depths: the paper's image encoder (Sec. 4.2).
RESNET101_DEPTHS = [3, 4, 23, 3]
# The paper's routing depth per task (Table 4: best L is 4 for Twitter, 3 for MNRE).
PAPER_ROUTING_LAYERS = {"ner": 4, "re": 3}
# Default depth: 2 keeps RAP within 1.3x (training) / 1.2x (inference) of its text encoder (docs/benchmarks.md).
DEFAULT_ROUTING_LAYERS = {"ner": 2, "re": 2}
# Upper bounds of RAP's own sizes and depths, checked before any module is built: far beyond any real model (the paper
# uses L = 4, N = 2, m_p = 8, d = 768), low enough that a damaged or mistyped config (routing_layers=10**6 builds
# modules for minutes and gigabytes) fails at once, naming the field and the bound.
MAX_ROUTING_LAYERS = 64
MAX_GRAPH_ITERATIONS = 64
MAX_PROMPT_LENGTH = 512
MAX_NUM_CROPS = 64
MAX_NEGATIVE_MEMORY = 4096  # pictures the matching loss may keep from earlier batches
MAX_LAYER_SIZE = 65536  # widths: fusion_hidden_size, relevance_dim, fusion/router/prompt sizes, prompt_source_length
SIZE_BOUNDS = {
    "routing_layers": (1, MAX_ROUTING_LAYERS, "MAX_ROUTING_LAYERS"),
    "graph_iterations": (1, MAX_GRAPH_ITERATIONS, "MAX_GRAPH_ITERATIONS"),
    "prompt_length": (1, MAX_PROMPT_LENGTH, "MAX_PROMPT_LENGTH"),
    "num_crops": (0, MAX_NUM_CROPS, "MAX_NUM_CROPS"),
    "relevance_negative_memory": (0, MAX_NEGATIVE_MEMORY, "MAX_NEGATIVE_MEMORY"),
    **dict.fromkeys(
        (
            "fusion_hidden_size",
            "relevance_dim",
            "fusion_num_heads",
            "fusion_intermediate_size",
            "router_hidden_size",
            "prompt_hidden_size",
            "prompt_source_length",
            "vision_feature_size",
        ),
        (1, MAX_LAYER_SIZE, "MAX_LAYER_SIZE"),
    ),
}

# The text encoder RAP builds from `text_config` (a damaged config.json with 10**6 layers must not start building).
TEXT_CONFIG_BOUNDS = {
    "num_hidden_layers": (1, 1024, "TEXT_CONFIG_BOUNDS"),
    "hidden_size": (1, MAX_LAYER_SIZE, "TEXT_CONFIG_BOUNDS"),
    "intermediate_size": (1, 4 * MAX_LAYER_SIZE, "TEXT_CONFIG_BOUNDS"),
}


def check_bound(name: str, value: Any, bound: tuple[int, int, str] | None = None) -> None:
    """`value` is an integer within `bound` (default: the field's SIZE_BOUNDS entry), else a ValueError naming it."""
    low, high, constant = bound or SIZE_BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"RAPConfig.{name} must be an integer in [{low}, {high}] ({constant} in configuration_rap.py), "
            f"got {value!r}"
        )


def pooled_vision_width(vision_config: PreTrainedConfig) -> int:
    """Width of the `pooler_output` of the vision encoder `AutoModel.from_config(vision_config)` builds."""
    if vision_config.model_type == "timm_wrapper":
        width = getattr(vision_config, "num_features", None)
        return int(width) if width else timm_pooled_width(vision_config)
    sizes = getattr(vision_config, "hidden_sizes", None)  # ResNet, ConvNeXt, RegNet: the last stage, pooled
    return int(sizes[-1]) if sizes else int(vision_config.hidden_size)  # ViT, DINOv2, CLIP, SigLIP, Swin


def timm_pooled_width(vision_config: PreTrainedConfig) -> int:
    """Pooled width of a timm architecture, read from a weightless (meta-device) instance."""
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(
            vision_config.architecture, pretrained=False, num_classes=0, **(vision_config.model_args or {})
        )
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


@strict
class RAPConfig(PreTrainedConfig):
    r"""
    Configuration of a RAP model: a BERT-family text encoder prompted (P-tuning v2) with prefixes projected from a
    relevance-gated, dynamically routed fusion of text and image-object features.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Text encoder configuration (any BERT-family encoder whose self-attention reads a `Cache`). Defaults to
            `bert-base-uncased` sizes.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Vision encoder configuration (`ResNetConfig` recommended). Defaults to ResNet-101 sizes.
        task (`str`, *optional*, defaults to `"ner"`):
            `"ner"` (BIO tagging with a CRF, Eq. 25) or `"re"` (relation classification on `[C_s; C_o]`, Eq. 26).
        multimodal (`bool`, *optional*, defaults to `True`):
            `False` gives the text-only baseline: the same encoder and head without relevance reasoning, fusion and
            prompts (BERT-CRF / BERT-[C_s; C_o]).
        fusion_hidden_size (`int`, *optional*):
            Dimension `d` of the multimodal space (Sec. 3.2). Defaults to a quarter of the text encoder's hidden size
            (the paper uses the full size; a quarter keeps the fusion cheap next to the encoder).
        num_crops (`int`, *optional*, defaults to 3):
            Number of object crops per image (Sec. 4.2, m = 3 visual objects). Inputs always carry the whole image and
            this many crop slots; `visual_objects` says which of them the model reads.
        visual_objects (`str`, *optional*, defaults to `"image_and_crops"`):
            The visual objects E_v (Sec. 3.2): `"image_and_crops"` reads the whole image and the crops (1 + num_crops
            objects); `"crops"` reads the crops alone, m = num_crops as in the paper (a picture without any crop is
            then its own single object).
        crop_dropout (`float`, *optional*, defaults to 0.5):
            In training, the share of samples whose crops are hidden at every step (the whole picture alone remains),
            so that the model also reads a picture that arrives without crops, as a user's does. Not in the paper (it
            always has its m grounded objects; paper mode: 0.0). With `grounded_objects_share` 0.5 the "mixed
            objects" default: measured in docs/benchmarks_noise.md, chosen in docs/design.md ("Grounding").
        grounding_model (`str`, *optional*, defaults to `"vision-encoder"`):
            Where the visual objects of a picture without corpus crops came from in training, and so should come from
            at prediction (`rap_hf/grounding.py`): `"vision-encoder"` (regions of this model's own vision encoder's
            feature map that the rest of the picture does not repeat; offline), the Hub id or folder of a zero-shot
            detector (OWL-ViT, OWLv2, Grounding DINO, queried with phrases of the text) or of an object detector
            (DETR, ...), or `"none"` (such a picture keeps its crop slots empty). Crops a corpus or a caller gives are
            used as they are.
        grounded_objects_share (`float`, *optional*, defaults to 0.5):
            The share of training and validation pictures whose corpus crops `RAPTrainer` replaces by the objects of
            `grounding_model` (1.0: every picture; which ones is fixed by the picture's content), so that the model
            also learns to read what a user's picture will get (the pipeline grounds it). Not in the paper (paper
            mode: 0.0); docs/benchmarks_noise.md measures it.
        relevance_dim (`int`, *optional*):
            Rows `m` of `W_g`, `W_l` in Eq. 1 (size of a relevance representation), also the graph node size.
            Defaults to `fusion_hidden_size`.
        relevance_temperature (`float`, *optional*, defaults to 9.0):
            Temperature `lambda` of the text-to-visual attention (Eq. 3).
        graph_iterations (`int`, *optional*, defaults to 2):
            Number `N` of relevance-graph message-passing iterations (Eq. 6-8, Fig. 4).
        use_relevance_reasoning (`bool`, *optional*, defaults to `True`):
            `False` removes the Modality Relevance Reasoning module and sets the relevance gate to 1 (Table 5, "MRR").
        relevance_activation (`str`, *optional*, defaults to `"sigmoid"`):
            Squashing of `beta = W_s r_g^N + b_s` (Algorithm 1) so that beta is a weight in (0, 1) as in Fig. 8;
            `"none"` keeps the linear output as Algorithm 1 writes it (the paper's gate tanh(beta) is then in (-1, 1)).
        relevance_gate (`str`, *optional*, defaults to `"veto"`):
            R-Gate of Eq. 14: `"tanh"` (tanh(beta), the paper), `"identity"` (beta), `"rectified"`
            (tanh(max(0, score)) of beta's logit: open only where the reasoning finds the image more likely relevant
            than not) or `"veto"` (1 - tanh(max(0, -score)): fully open unless the reasoning finds the image
            irrelevant, closing as it grows sure of that; the fusion units learn to read images from the first step
            while beta is still undecided, docs/design.md).
        relevance_feature_norm (`bool`, *optional*, defaults to `True`):
            l2-normalise E_t, E_v and the pooled u-bar, v-bar before Eq. 1-5 (as SGRAF, where Eq. 1-8 come from), so
            that |mu - v|^2 measures alignment rather than the two projections' scales. `False`: Eq. 1-5 as written.
        relevance_edge_scaling (`bool`, *optional*, defaults to `True`):
            Multiply the edge logits of Eq. 6 by sqrt(m): Eq. 1 gives unit-norm nodes whose plain products are
            ~1/sqrt(m), so every edge would weigh the same. `False`: Eq. 6 as written.
        relevance_own_projections (`bool`, *optional*, defaults to `True`):
            The relevance reasoning projects the text states and visual features into the multimodal space with its
            own linear layers; `False` shares E_t, E_v with the fusion units as Sec. 3.2 reads (the task loss then
            dominates those projections and beta learns the image-text match far more slowly, docs/design.md).
        relevance_matching_weight (`float`, *optional*, defaults to 2.0):
            Weight of an auxiliary image-text matching loss on beta's logit (not in the paper): each training sample's
            own image is a positive, another sample's image in the batch a negative, so beta learns to tell a matching
            image from a foreign one without extra labels. 0 trains beta through the task loss only, as the paper.
        relevance_task_gradient (`bool`, *optional*, defaults to `False`):
            Whether the task loss trains beta through the R-Gate (the paper's only training signal for beta). `False`
            detaches the gate: beta learns from the matching loss alone, so the task loss cannot shut the gate while
            the fusion units are still random, and beta stays an estimate of relevance (docs/design.md).
        relevance_matching_negatives (`int`, *optional*, defaults to 7):
            Foreign images each sample is matched against per training step (the next ones of the batch; at most the
            batch's other images: 7 = all of them at the default batch of 8).
        relevance_negative_max_similarity (`float`, *optional*):
            Foreign images whose whole-image feature is at least this cosine-similar to that of a sample's own image
            are not used as its negatives: such an image likely shows the same scene and may be as relevant to the
            text as the sample's own (a false negative). `None` uses every negative.
        relevance_negative_memory (`int`, *optional*, defaults to 0):
            Pictures of earlier training batches kept as further negatives of the matching loss (a memory bank, as in
            contrastive training): every sample with an image is also matched against each of them, their stored
            visual features projected anew at every step. Exact with a frozen vision encoder (its features do not
            change); 0 matches against the batch's own images only. A remembered picture that is the sample's own
            (shared by several samples, or seen again at an epoch's start) is a negative too, as a shared picture in
            the batch is; `relevance_negative_max_similarity` skips such look-alikes. Not saved with the weights.
        routing_layers (`int`, *optional*):
            Number `L` of routing layers (Sec. 3.4); defaults to 2 (the paper's Table 4 prefers 4 for NER and 3 for
            RE, which `RAPConfig.paper_architecture()` sets).
        fusion_units (`list[str]`, *optional*, defaults to `["rau", "fsru", "cfu"]`):
            Units present in every routing layer (Table 5 removes one at a time).
        fusion_num_heads (`int`, *optional*, defaults to 8):
            Attention heads of the FSRU self-attention and CFU cross-attention.
        fusion_intermediate_size (`int`, *optional*):
            Hidden size of the FSRU feed-forward and CFU MLP. Defaults to `2 * fusion_hidden_size`.
        router_hidden_size (`int`, *optional*):
            Hidden size of the router MLP (Eq. 19). Defaults to `fusion_hidden_size // 2`.
        path_regularization_weight (`float`, *optional*, defaults to 1.5):
            `gamma` of Eq. 20 (Table 6); 0 disables the routing regulariser.
        prompt_length (`int`, *optional*, defaults to 8):
            Prompt length `m_p` per encoder layer (Sec. 3.6).
        prompt_source_length (`int`, *optional*, defaults to 128):
            Longest text (in sub-tokens) the length-mapping linear layer of Sec. 3.6 accepts; keep it >= the
            processor's `max_length`.
        prompt_hidden_size (`int`, *optional*):
            Output size of `W_in` in Eq. 23. Defaults to `fusion_hidden_size` ("does not change the dimension").
        prompt_layer_norm (`bool`, *optional*, defaults to `True`):
            LayerNorm on the length-mapped X'_mli before `W_in` (Eq. 23), so the prefixes' initial scale does not
            depend on the fused features' scale. `False`: Eq. 23 as written.
        prompt_init_scale (`float`, *optional*, defaults to 0.3):
            Initial RMS of the prefix keys and values relative to the text encoder's own keys and values (measured per
            layer by `from_text_vision_pretrained`; 1.0 assumed for a randomly initialised encoder). With the old
            std-0.02 init the prefixes started ~200x below the encoder's scale and passed almost no gradient upstream.
        text_feature_source (`str`, *optional*, defaults to `"embeddings"`):
            Where `E_t` (Sec. 3.2) comes from: `"embeddings"` projects the encoder's input embeddings (one encoder
            pass); `"encoder"` runs the text encoder once more, without prompts and gradient, and projects its last
            layer (the BERT features the paper describes, at the cost of a second pass).
        freeze_text_encoder (`bool`, *optional*, defaults to `False`):
            Freeze the text encoder (pure P-tuning v2) instead of fine-tuning it with the prompts.
        text_encoder_lora (`dict`, *optional*):
            `peft.LoraConfig` arguments (e.g. `{"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]}`):
            LoRA adapters on the text encoder, trained beside RAP's layers while the encoder's own weights stay
            frozen (large encoders on small GPUs). Needs the `peft` package.
        freeze_vision_encoder (`bool`, *optional*, defaults to `True`):
            Freeze the vision encoder; its features can then be computed once and cached.
        hidden_dropout_prob (`float`, *optional*, defaults to 0.1):
            Dropout in the fusion units, the prompt projection and before the task head.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the normal initialisation of the new (non-encoder) layers.
        vision_feature_size (`int`, *optional*):
            Width of the vision encoder's pooled output (`pooler_output`); derived from `vision_config` for every
            family (ResNet/ConvNeXt/RegNet: last hidden size; ViT/DINOv2/CLIP/SigLIP/Swin: hidden size; timm through
            `TimmWrapper`: the timm model's pooled width).
        subject_marker_token_id, object_marker_token_id (`int`, *optional*):
            Token ids of the `<s>` and `<o>` markers (RE), used when `entity_positions` is not passed.
    """

    model_type = "rap"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="resnet",
            init_kwargs={"depths": RESNET101_DEPTHS, "layer_type": "bottleneck"},
        ),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    task: Literal["ner", "re"] = "ner"
    multimodal: bool = True
    fusion_hidden_size: int | None = None
    num_crops: int = 3
    visual_objects: Literal["image_and_crops", "crops"] = "image_and_crops"
    crop_dropout: float = 0.5
    grounding_model: str = "vision-encoder"
    grounded_objects_share: float = 0.5
    relevance_dim: int | None = None
    relevance_temperature: float | int = 9.0
    graph_iterations: int = 2
    use_relevance_reasoning: bool = True
    relevance_activation: Literal["sigmoid", "none"] = "sigmoid"
    relevance_gate: Literal["tanh", "identity", "rectified", "veto"] = "veto"
    relevance_feature_norm: bool = True
    relevance_edge_scaling: bool = True
    relevance_own_projections: bool = True
    relevance_matching_weight: float | int = 2.0
    relevance_matching_negatives: int = 7
    relevance_negative_max_similarity: float | None = None
    relevance_negative_memory: int = 0
    relevance_task_gradient: bool = False
    routing_layers: int | None = None
    fusion_units: list[str] | tuple[str, ...] | None = None
    fusion_num_heads: int = 8
    fusion_intermediate_size: int | None = None
    router_hidden_size: int | None = None
    path_regularization_weight: float | int = 1.5
    prompt_length: int = 8
    prompt_source_length: int = 128
    prompt_hidden_size: int | None = None
    prompt_layer_norm: bool = True
    prompt_init_scale: float | int = 0.3
    text_feature_source: Literal["encoder", "embeddings"] = "embeddings"
    freeze_text_encoder: bool = False
    text_encoder_lora: dict | None = None
    freeze_vision_encoder: bool = True
    hidden_dropout_prob: float | int = 0.1
    initializer_range: float = 0.02
    vision_feature_size: int | None = None
    subject_marker_token_id: int | None = None
    object_marker_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_bound("fusion_num_heads", self.fusion_num_heads)  # the default width below divides by it
        for name, (low, high, constant) in TEXT_CONFIG_BOUNDS.items():
            check_bound(f"text_config.{name}", getattr(self.text_config, name, low), (low, high, constant))
        if self.fusion_hidden_size is None:  # a quarter of the encoder width, whole heads
            heads = self.fusion_num_heads
            self.fusion_hidden_size = max(heads, self.text_config.hidden_size // 4 // heads * heads)
        if self.relevance_dim is None:
            self.relevance_dim = self.fusion_hidden_size
        if self.routing_layers is None:
            self.routing_layers = DEFAULT_ROUTING_LAYERS.get(self.task, 3)
        self.fusion_units = list(FUSION_UNITS if self.fusion_units is None else self.fusion_units)
        if self.fusion_intermediate_size is None:
            self.fusion_intermediate_size = 2 * self.fusion_hidden_size
        if self.router_hidden_size is None:
            self.router_hidden_size = max(1, self.fusion_hidden_size // 2)
        if self.prompt_hidden_size is None:
            self.prompt_hidden_size = self.fusion_hidden_size
        if self.vision_feature_size is None:
            self.vision_feature_size = pooled_vision_width(self.vision_config)
        self._check_rap_fields()

    def _check_rap_fields(self) -> None:
        """Fail at construction with the field name, rather than deep inside a forward pass."""
        if self.task not in DEFAULT_ROUTING_LAYERS:
            raise ValueError(f"RAPConfig.task must be 'ner' or 're', got {self.task!r}")
        unknown = [unit for unit in self.fusion_units if unit not in FUSION_UNITS]
        if unknown or not self.fusion_units or len(set(self.fusion_units)) != len(self.fusion_units):
            raise ValueError(
                f"RAPConfig.fusion_units must be a non-empty subset of {list(FUSION_UNITS)} without repeats, "
                f"got {self.fusion_units}"
            )
        for name in SIZE_BOUNDS:
            check_bound(name, getattr(self, name))
        if self.fusion_hidden_size % self.fusion_num_heads:
            raise ValueError(
                f"RAPConfig.fusion_hidden_size ({self.fusion_hidden_size}) must be divisible by "
                f"fusion_num_heads ({self.fusion_num_heads})"
            )
        if not 0 <= self.grounded_objects_share <= 1:
            raise ValueError(f"RAPConfig.grounded_objects_share must be in [0, 1], got {self.grounded_objects_share}")
        if not 0 <= self.crop_dropout <= 1:
            raise ValueError(f"RAPConfig.crop_dropout must be in [0, 1], got {self.crop_dropout}")
        if self.visual_objects == "crops" and self.num_crops < 1:
            raise ValueError("RAPConfig.visual_objects='crops' needs num_crops >= 1")
        threshold = self.relevance_negative_max_similarity
        if threshold is not None and not -1 < threshold <= 1:
            raise ValueError(f"RAPConfig.relevance_negative_max_similarity must be in (-1, 1] or None, got {threshold}")
        for name in ("relevance_matching_weight", "path_regularization_weight", "prompt_init_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"RAPConfig.{name} must be >= 0, got {getattr(self, name)}")

    @staticmethod
    def paper_fields(task: str, text_hidden_size: int) -> dict:
        """The fields where the defaults depart from the paper, each set to what the paper writes (docs/design.md,
        "Paper mode"). Where the paper is silent (relevance_dim, the pooling, lambda) the choice is documented there."""
        return {
            "text_feature_source": "encoder",  # Sec. 3.2: E_t from BERT's output through an FC layer
            "fusion_hidden_size": text_hidden_size,  # Sec. 3.6: prompts of width d feed BERT's layers
            "routing_layers": PAPER_ROUTING_LAYERS[task],  # Table 4
            "visual_objects": "crops",  # Sec. 4.2: m = 3 objects from the grounding toolkit
            "num_crops": 3,
            "crop_dropout": 0.0,  # Sec. 3.2: every training sample has its m grounded objects
            "grounded_objects_share": 0.0,  # the corpus's crops, from the paper's grounding toolkit
            "relevance_own_projections": False,  # Sec. 3.2: one E_t, E_v for relevance and fusion
            "relevance_feature_norm": False,  # Eq. 1-5 on the projections as they are
            "relevance_edge_scaling": False,  # Eq. 6
            "relevance_activation": "none",  # Algorithm 1: beta = W_s r_g^N + b_s
            "relevance_gate": "tanh",  # Eq. 14
            "relevance_matching_weight": 0.0,  # Eq. 20: the task and router losses only
            "relevance_task_gradient": True,  # beta learns through the task loss
            "prompt_layer_norm": False,  # Eq. 23
            "relevance_dim": 256,  # not in the paper: SGRAF's sim_dim (docs/design.md)
        }

    @classmethod
    def paper_architecture(cls, **kwargs) -> "RAPConfig":
        """A config with the architecture as the paper describes it (`paper_fields`); fields in `kwargs` win."""
        probe = cls(**kwargs)  # resolves the text encoder and the task
        return cls(**{**cls.paper_fields(probe.task, probe.text_config.hidden_size), **kwargs})

    @property
    def num_visual_slots(self) -> int:
        """Visual inputs per sample (pixel_values, visual_features, image_mask): the whole image, then the crops."""
        return 1 + self.num_crops

    @property
    def num_visual_objects(self) -> int:
        """m, the visual objects E_v the model reads per sample (`visual_objects`)."""
        return self.num_crops if self.visual_objects == "crops" else 1 + self.num_crops

    @property
    def num_fusion_units(self) -> int:
        return len(self.fusion_units)

    @property
    def routing_vector_size(self) -> int:
        """Size of g in Eq. 22: U^2 (L - 1) + U."""
        units = self.num_fusion_units
        return units * units * (self.routing_layers - 1) + units


__all__ = ["RAPConfig"]
