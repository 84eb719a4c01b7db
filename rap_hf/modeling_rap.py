# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch RAP (Relevance-Aware Prompt-tuning) models for multimodal NER and relation extraction.

This file is copied to the Hub next to the weights (remote code): it imports only torch, transformers and the sibling
`configuration_rap.py`. Equation numbers refer to Chen et al., Neurocomputing 2025; every choice where the paper is
ambiguous is marked `# Choice:` and listed in docs/design.md.
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, DynamicCache, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_rap import RAPConfig

try:  # optional at import time so that RE models load without it; NER raises a clear error below
    from torchcrf import CRF
except ImportError:  # pragma: no cover - exercised only where pytorch-crf is missing
    CRF = None

logger = logging.get_logger(__name__)

UNIT_NAMES = {"rau": "RAU", "fsru": "FSRU", "cfu": "CFU"}


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class RAPModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, seq_len, hidden)`): prompted encoder output C (Eq. 24).
        text_cls (`torch.FloatTensor` of shape `(batch, hidden)`): [CLS] vector used as semantics in Eq. 22.
        router_loss (`torch.FloatTensor` of shape `()`): path regularisation L_router (Eq. 22).
        relevance (`torch.FloatTensor` of shape `(batch,)`): modality relevance beta (Algorithm 1).
        relevance_gate (`torch.FloatTensor` of shape `(batch,)`): R-Gate(beta) applied in the CFU (Eq. 14).
        routing_weights (`torch.FloatTensor` of shape `(batch, U^2 (L-1) + U)`): routing vector g (Eq. 18-19).
    """

    last_hidden_state: torch.FloatTensor | None = None
    text_cls: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None
    relevance: torch.FloatTensor | None = None
    relevance_gate: torch.FloatTensor | None = None
    routing_weights: torch.FloatTensor | None = None


@dataclass
class RAPNEROutput(ModelOutput):
    """
    Args:
        loss: CRF negative log-likelihood + gamma * L_router (Eq. 20-21), when `labels` are given.
        logits (`(batch, words, num_labels)`): CRF emissions at the first sub-token of every word.
        predictions (`(batch, words)`): Viterbi tag ids per word, -100 past the last word.
        word_mask (`(batch, words)`): True for real words.
    """

    loss: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    predictions: torch.LongTensor | None = None
    word_mask: torch.BoolTensor | None = None
    relevance: torch.FloatTensor | None = None
    relevance_gate: torch.FloatTensor | None = None
    routing_weights: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class RAPREOutput(ModelOutput):
    """
    Args:
        loss: cross-entropy + gamma * L_router (Eq. 20-21), when `labels` are given.
        logits (`(batch, num_relations)`): relation scores from `[C_s; C_o]` (Eq. 26).
    """

    loss: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    relevance: torch.FloatTensor | None = None
    relevance_gate: torch.FloatTensor | None = None
    routing_weights: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of `x` (batch, n, d) counting only positions where `mask` (batch, n) is set."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every pair of rows of `x` (batch, d) -> (batch, batch)."""
    x = F.normalize(x, dim=-1, eps=1e-8)
    return x @ x.transpose(0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Sec. 3.2 semantic features
# ----------------------------------------------------------------------------------------------------------------------
class AttentionPooling(nn.Module):
    """Self-attention pooling of a set of vectors into one global vector (u-bar and v-bar of Sec. 3.2)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        # No bias on the score: softmax is shift-invariant, a bias would never learn.
        self.query = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1, bias=False))

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(features).squeeze(-1).masked_fill(~mask, torch.finfo(features.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask.to(features.dtype)  # rows without any item pool to zero
        return (weights.unsqueeze(-1) * features).sum(1)


class SemanticFeatureExtractor(nn.Module):
    """Maps text states and visual object features into the multimodal space d (E_t, E_v) and pools them."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d = config.fusion_hidden_size
        self.text_projection = nn.Linear(config.text_config.hidden_size, d)
        self.visual_projection = nn.Linear(config.vision_feature_size, d)
        self.text_pooling = AttentionPooling(d)
        self.visual_pooling = AttentionPooling(d)

    def forward(self, text_states, text_mask, visual_features, visual_mask):
        text = self.text_projection(text_states)  # E_t
        visual = self.visual_projection(visual_features)  # E_v
        return text, visual, self.text_pooling(text, text_mask), self.visual_pooling(visual, visual_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Sec. 3.3 modality relevance reasoning
# ----------------------------------------------------------------------------------------------------------------------
class RelevanceRepresentation(nn.Module):
    """r(mu, v, W) = W |mu - v|^2 / ||W |mu - v|^2||_2 (Eq. 1), with W in R^{m x d}."""

    def __init__(self, hidden_size: int, relevance_dim: int):
        super().__init__()
        self.weight = nn.Linear(hidden_size, relevance_dim, bias=False)

    def forward(self, mu: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.weight((mu - v).pow(2)), dim=-1, eps=1e-8)  # Eq. 1


class TextToVisualAttention(nn.Module):
    """Attends every word to the visual objects (Eq. 3) and returns the attended visual feature a^v (Eq. 4)."""

    def __init__(self, temperature: float):
        super().__init__()
        self.temperature = temperature

    def forward(self, text: torch.Tensor, visual: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(text, dim=-1, eps=1e-8) @ F.normalize(visual, dim=-1, eps=1e-8).transpose(1, 2)
        rectified = cosine.clamp(min=0) * visual_mask.unsqueeze(1)  # [cos]_+ over real objects only
        # Choice: the l2 normaliser of Eq. 3 runs over the visual objects j of one word i.
        normalised = rectified / rectified.pow(2).sum(-1, keepdim=True).add(1e-8).sqrt()
        scores = (self.temperature * normalised).masked_fill(~visual_mask.unsqueeze(1), torch.finfo(text.dtype).min)
        attention = torch.softmax(scores, dim=-1) * visual_mask.unsqueeze(1).to(text.dtype)  # Eq. 3
        return attention @ visual  # Eq. 4


class RelevanceGraphReasoning(nn.Module):
    """Message passing over the relevance graph (Eq. 6-8, Fig. 4) and the relevance weight beta (Algorithm 1)."""

    def __init__(self, relevance_dim: int, iterations: int, activation: str):
        super().__init__()
        self.source = nn.ModuleList(nn.Linear(relevance_dim, relevance_dim, bias=False) for _ in range(iterations))
        self.target = nn.ModuleList(nn.Linear(relevance_dim, relevance_dim, bias=False) for _ in range(iterations))
        self.update = nn.ModuleList(nn.Linear(relevance_dim, relevance_dim, bias=False) for _ in range(iterations))
        self.score = nn.Linear(relevance_dim, 1)  # W_s, b_s
        self.activation = activation

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """`nodes` (batch, 1 + n, m): r_g first, then r_l per word. Returns beta (batch,)."""
        for source, target, update in zip(self.source, self.target, self.update):
            logits = source(nodes) @ target(nodes).transpose(1, 2)  # (W_src r_s)(W_tgt r_t)
            logits = logits.masked_fill(~node_mask.unsqueeze(1), torch.finfo(nodes.dtype).min)
            edges = torch.softmax(logits, dim=-1)  # Eq. 6, row-wise softmax over targets
            nodes = torch.relu(update(edges @ nodes))  # Eq. 7-8
        beta = self.score(nodes[:, 0]).squeeze(-1)  # beta = W_s r_g^N + b_s
        # Choice: squash beta into (0, 1) so it reads as a weight (Fig. 8 reports 0.09-0.71).
        return torch.sigmoid(beta) if self.activation == "sigmoid" else beta


class ModalityRelevanceReasoning(nn.Module):
    """Algorithm 1: global (Eq. 2) and local (Eq. 3-5) relevance, graph reasoning, modality relevance beta."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d, m = config.fusion_hidden_size, config.relevance_dim
        self.global_relevance = RelevanceRepresentation(d, m)  # W_g
        self.local_relevance = RelevanceRepresentation(d, m)  # W_l
        self.text_to_visual = TextToVisualAttention(config.relevance_temperature)
        self.graph = RelevanceGraphReasoning(m, config.graph_iterations, config.relevance_activation)

    def forward(self, text, text_mask, visual, visual_mask, text_global, visual_global) -> torch.Tensor:
        r_global = self.global_relevance(text_global, visual_global)  # Eq. 2
        attended = self.text_to_visual(text, visual, visual_mask)  # Eq. 3-4
        r_local = self.local_relevance(text, attended)  # Eq. 5
        nodes = torch.cat([r_global.unsqueeze(1), r_local], dim=1)  # r = r_l U r_g
        node_mask = torch.cat([torch.ones_like(text_mask[:, :1]), text_mask], dim=1)
        return self.graph(nodes, node_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Sec. 3.4 dynamic fusion
# ----------------------------------------------------------------------------------------------------------------------
class RectifiedActivationUnit(nn.Module):
    """RAU: U_0(X) = ReLU(X) (Eq. 10), a skip path for easy samples."""

    def forward(self, hidden, text_mask, visual, visual_mask, gate):
        return torch.relu(hidden)


class FeatureSemanticReasoningUnit(nn.Module):
    """FSRU: multi-head self-attention and a feed-forward network, both post-norm (Eq. 11-12)."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d = config.fusion_hidden_size
        self.attention = nn.MultiheadAttention(d, config.fusion_num_heads, config.hidden_dropout_prob, batch_first=True)
        self.attention_norm = nn.LayerNorm(d)
        self.feed_forward = nn.Sequential(
            nn.Linear(d, config.fusion_intermediate_size),
            nn.GELU(),
            nn.Dropout(config.hidden_dropout_prob),
            nn.Linear(config.fusion_intermediate_size, d),
        )
        self.output_norm = nn.LayerNorm(d)

    def forward(self, hidden, text_mask, visual, visual_mask, gate):
        attended, _ = self.attention(hidden, hidden, hidden, key_padding_mask=~text_mask, need_weights=False)
        hidden = self.attention_norm(hidden + attended)  # Eq. 11
        return self.output_norm(self.feed_forward(hidden) + hidden)  # Eq. 12


class CrossModalFusionUnit(nn.Module):
    """CFU: relevance-gated text-to-image cross-attention, residual and MLP (Eq. 13-16)."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d = config.fusion_hidden_size
        self.text_norm = nn.LayerNorm(d)
        self.visual_norm = nn.LayerNorm(d)
        self.cross_attention = nn.MultiheadAttention(
            d, config.fusion_num_heads, config.hidden_dropout_prob, batch_first=True
        )
        self.mlp_norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.fusion_intermediate_size),
            nn.GELU(),
            nn.Dropout(config.hidden_dropout_prob),
            nn.Linear(config.fusion_intermediate_size, d),
        )

    def forward(self, hidden, text_mask, visual, visual_mask, gate):
        has_image = visual_mask.any(-1)
        # A sample without image would attend over no key (NaN); unmask slot 0 and zero its result below.
        key_mask = visual_mask.clone()
        key_mask[:, 0] |= ~has_image
        attended, _ = self.cross_attention(
            self.text_norm(hidden), self.visual_norm(visual), self.visual_norm(visual),
            key_padding_mask=~key_mask, need_weights=False,
        )  # Eq. 13
        attended = attended * has_image.to(hidden.dtype)[:, None, None]
        hidden = hidden + gate[:, None, None] * attended  # Eq. 14-15
        return hidden + self.mlp(self.mlp_norm(hidden))  # Eq. 16


class SoftRouter(nn.Module):
    """R(X) = ReLU(tanh(MLP(mean of the rows of X))) (Eq. 19): path weights from one unit to the next units."""

    def __init__(self, hidden_size: int, router_hidden_size: int, num_paths: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, router_hidden_size), nn.ReLU(), nn.Linear(router_hidden_size, num_paths)
        )
        self.mlp[-1].is_router_output = True  # read by RAPPreTrainedModel._init_weights

    def forward(self, unit_input: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        # Choice: the mean of Eq. 19 runs over real (non-padding) tokens only.
        return torch.relu(torch.tanh(self.mlp(masked_mean(unit_input, text_mask))))


def build_fusion_unit(name: str, config: RAPConfig) -> nn.Module:
    if name == "rau":
        return RectifiedActivationUnit()
    if name == "fsru":
        return FeatureSemanticReasoningUnit(config)
    return CrossModalFusionUnit(config)


class RoutingLayer(nn.Module):
    """One layer of the routing space: every unit with its router (Eq. 9, 18)."""

    def __init__(self, config: RAPConfig, num_paths: int):
        super().__init__()
        self.units = nn.ModuleList(build_fusion_unit(name, config) for name in config.fusion_units)
        self.routers = nn.ModuleList(
            SoftRouter(config.fusion_hidden_size, config.router_hidden_size, num_paths) for _ in config.fusion_units
        )

    def forward(self, unit_inputs, text_mask, visual, visual_mask, gate):
        outputs = [unit(x, text_mask, visual, visual_mask, gate) for unit, x in zip(self.units, unit_inputs)]
        # Choice: a unit's router reads that unit's input X_i^l (Eq. 18).
        routes = torch.stack([router(x, text_mask) for router, x in zip(self.routers, unit_inputs)], dim=1)
        return outputs, routes  # routes: (batch, source unit, target path)


class DynamicFusionModule(nn.Module):
    """L densely connected routing layers (Sec. 3.4); returns X_mli and the routing vector g (size U^2 (L-1) + U)."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        units, layers = config.num_fusion_units, config.routing_layers
        # Layers 1..L-1 route to the U units of the next layer; the last layer routes to the aggregation.
        self.layers = nn.ModuleList(RoutingLayer(config, units if i < layers - 1 else 1) for i in range(layers))

    def forward(self, text, text_mask, visual, visual_mask, gate):
        unit_inputs = [text] * len(self.layers[0].units)  # Eq. 17, l = 0
        routing = []
        for layer in self.layers:
            outputs, routes = layer(unit_inputs, text_mask, visual, visual_mask, gate)
            routing.append(routes.flatten(1))
            stacked = torch.stack(outputs, dim=1)  # (batch, U, n, d)
            unit_inputs = list(torch.einsum("bjk,bjnd->kbnd", routes, stacked).unbind(0))  # Eq. 17
        return unit_inputs[0], torch.cat(routing, dim=-1)  # X_mli: aggregation of the last layer's units


def path_regularization_loss(routing_weights: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
    """L_router (Eq. 22): squared gap between routing-vector and [CLS] cosine similarities over batch pairs."""
    batch = routing_weights.shape[0]
    if batch < 2:
        return routing_weights.sum() * 0.0
    gap = pairwise_cosine(routing_weights) - pairwise_cosine(semantics.detach())
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=gap.device)
    # Choice: mean over ordered pairs x != y (the paper's sum grows with the batch size).
    return gap.pow(2)[off_diagonal].mean()


# ----------------------------------------------------------------------------------------------------------------------
# Sec. 3.6 prompts
# ----------------------------------------------------------------------------------------------------------------------
class PromptProjection(nn.Module):
    """Maps X_mli (batch, n, d) to per-layer key/value prefixes (Eq. 23), in the spirit of peft's PrefixEncoder."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        text = config.text_config
        self.num_layers = text.num_hidden_layers
        self.num_heads = text.num_attention_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.prompt_length = config.prompt_length
        self.source_length = config.prompt_source_length
        # Choice: "map the length to m_p" is a learned (m_p x max_len) matrix over zero-padded positions.
        self.length_mapping = nn.Linear(config.prompt_source_length, config.prompt_length)
        self.input_projection = nn.Linear(config.fusion_hidden_size, config.prompt_hidden_size)  # W_in
        self.output_projection = nn.Linear(config.prompt_hidden_size, 2 * self.num_layers * text.hidden_size)  # W_out
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, fused: torch.Tensor, text_mask: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        batch, length, _ = fused.shape
        if length > self.source_length:
            raise ValueError(
                f"text has {length} sub-tokens but RAPConfig.prompt_source_length is {self.source_length}: "
                "truncate inputs (processor max_length) or raise prompt_source_length"
            )
        fused = fused * text_mask.unsqueeze(-1).to(fused.dtype)
        weight = self.length_mapping.weight[:, :length]  # (m_p, n): padded positions contribute nothing
        mapped = torch.einsum("pn,bnd->bpd", weight, fused) + self.length_mapping.bias[None, :, None]
        prompt = self.output_projection(torch.relu(self.input_projection(mapped)))  # Eq. 23
        prompt = self.dropout(prompt).view(batch, self.prompt_length, 2 * self.num_layers, self.num_heads, self.head_dim)
        prompt = prompt.permute(2, 0, 3, 1, 4)  # (2 L_bert, batch, heads, m_p, head_dim)
        return tuple((prompt[2 * i], prompt[2 * i + 1]) for i in range(self.num_layers))


def encoder_cache_argument(encoder: nn.Module) -> str:
    """Name of the encoder's cache argument: `cache` since transformers 5.2x, `past_key_values` before."""
    parameters = inspect.signature(encoder.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise RuntimeError(
        f"{type(encoder).__name__}.forward takes neither `cache` nor `past_key_values`: this transformers version "
        "cannot receive RAP's prefix prompts"
    )


def unshifted_position_ids(encoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Position ids of the text as if no prefix were present (the encoder would shift them by the cache length)."""
    embeddings = encoder.get_input_embeddings()
    make_ids = getattr(getattr(encoder, "embeddings", None), "create_position_ids_from_input_ids", None)
    if make_ids is not None:  # RoBERTa-style: positions start after padding_idx and skip padding
        return make_ids(input_ids, embeddings.padding_idx)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


def run_prefixed_encoder(encoder, prefixes, input_ids, attention_mask, token_type_ids=None):
    """Runs the text encoder with per-layer key/value prefixes (Eq. 24, P-tuning v2) through a fresh cache."""
    config = encoder.config
    cache = DynamicCache(config=config)
    for layer_idx, (keys, values) in enumerate(prefixes):
        cache.update(keys, values, layer_idx)
    prompt_length = prefixes[0][0].shape[2]
    prefix_mask = attention_mask.new_ones(attention_mask.shape[0], prompt_length)
    outputs = encoder(
        input_ids=input_ids,
        attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
        token_type_ids=token_type_ids,
        position_ids=unshifted_position_ids(encoder, input_ids),
        **{encoder_cache_argument(encoder): cache},
    )
    # Every layer appends its own keys to the prefix; a shorter cache means the prefix was silently ignored.
    if cache.get_seq_length() != prompt_length + input_ids.shape[1]:
        raise RuntimeError(
            f"{type(encoder).__name__} did not read the prefix cache (cache length {cache.get_seq_length()}, "
            f"expected {prompt_length + input_ids.shape[1]}); this transformers version is not supported by RAP"
        )
    return outputs.last_hidden_state


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------
def analysis_fields(backbone: RAPModelOutput) -> dict[str, torch.Tensor | None]:
    """What every head passes on from the backbone: beta, the gate, the routing vector and C (Fig. 6-8 analyses)."""
    return {
        "relevance": backbone.relevance,
        "relevance_gate": backbone.relevance_gate,
        "routing_weights": backbone.routing_weights,
        "last_hidden_state": backbone.last_hidden_state,
    }


class RAPPreTrainedModel(PreTrainedModel):
    config_class = RAPConfig
    config: RAPConfig
    base_model_prefix = "rap"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["RoutingLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if getattr(module, "is_router_output", False):
            # Choice: routers start with every path open at weight 1/U so a layer's input keeps its scale.
            init.constant_(module.bias, math.atanh(min(1.0 / len(self.config.fusion_units), 0.75)))
        elif CRF is not None and isinstance(module, CRF):
            for parameter in (module.start_transitions, module.end_transitions, module.transitions):
                init.uniform_(parameter, -0.1, 0.1)

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Pooled vision-encoder feature per image (N, 3, H, W) -> (N, C_v); see `RAPModel.get_image_features`."""
        return self.base_model.get_image_features(pixel_values)

    def _total_loss(self, task_loss, router_loss):
        if router_loss is None:  # text-only baseline
            return task_loss, None
        return task_loss + self.config.path_regularization_weight * router_loss, router_loss  # Eq. 20

    def gradient_checkpointing_enable(self, *args, **kwargs):
        raise ValueError(
            "RAP does not support gradient checkpointing: the re-computed encoder layers would drop the cache-based "
            "prefix prompts. Lower the batch size or use gradient accumulation instead."
        )

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str | None = None,
        **config_kwargs,
    ) -> "RAPPreTrainedModel":
        """Builds a RAP model around a pretrained text encoder (and vision encoder), like
        `VisionTextDualEncoderModel.from_vision_text_pretrained`. New RAP layers are randomly initialised; without a
        vision path the vision encoder is randomly initialised with a warning (its features carry no semantics)."""
        text_encoder = AutoModel.from_pretrained(text_model_name_or_path, add_pooling_layer=False)
        vision_encoder = AutoModel.from_pretrained(vision_model_name_or_path) if vision_model_name_or_path else None
        config_kwargs["text_config"] = text_encoder.config
        if vision_encoder is not None:
            config_kwargs["vision_config"] = vision_encoder.config
        elif config_kwargs.get("multimodal", True):
            logger.warning("no vision encoder given: the RAP vision encoder is randomly initialised")
        model = cls(RAPConfig(**config_kwargs))
        backbone = model.base_model
        backbone.text_encoder.load_state_dict(text_encoder.state_dict())
        if vision_encoder is not None and model.config.multimodal:
            backbone.vision_encoder.load_state_dict(vision_encoder.state_dict())
        model.name_or_path = text_model_name_or_path
        return model


class RAPModel(RAPPreTrainedModel):
    """The RAP backbone: relevance reasoning, dynamic fusion and the prompted text encoder (returns C, Eq. 24)."""

    def __init__(self, config: RAPConfig):
        super().__init__(config)
        self.text_encoder = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        self.cache_argument = encoder_cache_argument(self.text_encoder)
        if config.multimodal:
            self.vision_encoder = AutoModel.from_config(config.vision_config)
            self.semantic_features = SemanticFeatureExtractor(config)
            self.relevance_reasoning = ModalityRelevanceReasoning(config) if config.use_relevance_reasoning else None
            self.dynamic_fusion = DynamicFusionModule(config)
            self.prompt_projection = PromptProjection(config)
        self.post_init()
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Sets `requires_grad` of the encoders from `freeze_text_encoder` / `freeze_vision_encoder`."""
        self.text_encoder.requires_grad_(not self.config.freeze_text_encoder)
        if self.config.multimodal:
            self.vision_encoder.requires_grad_(not self.config.freeze_vision_encoder)

    def train(self, mode: bool = True) -> "RAPModel":
        super().train(mode)
        if self.config.multimodal and self.config.freeze_vision_encoder:
            self.vision_encoder.eval()  # frozen: BatchNorm must keep its running statistics
        return self

    def get_input_embeddings(self) -> nn.Module:
        return self.text_encoder.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_encoder.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Pooled vision-encoder feature of each image: (N, 3, H, W) -> (N, C_v). This is what the cache stores."""
        if not self.config.multimodal:
            raise ValueError("this RAP model is a text-only baseline (config.multimodal=False) and has no vision encoder")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_encoder):
            pooled = self.vision_encoder(pixel_values=pixel_values).pooler_output
        return pooled.flatten(1)

    def _visual_features(self, pixel_values, visual_features, image_mask, batch_size, device):
        """(batch, 1+K, C_v) features and their mask, from cached features, pixels, or nothing (text-only input)."""
        slots = self.config.num_visual_objects
        if visual_features is None and pixel_values is not None:
            if pixel_values.dim() != 5 or pixel_values.shape[1] != slots:
                raise ValueError(
                    f"pixel_values must have shape (batch, {slots}, 3, H, W) (image + {slots - 1} crops), "
                    f"got {tuple(pixel_values.shape)}"
                )
            flat = self.get_image_features(pixel_values.flatten(0, 1).to(self.dtype))
            visual_features = flat.view(batch_size, slots, -1)
        if visual_features is None:
            visual_features = torch.zeros(batch_size, slots, self.config.vision_feature_size, device=device)
            image_mask = torch.zeros(batch_size, slots, dtype=torch.bool, device=device)
        if visual_features.shape[1:] != (slots, self.config.vision_feature_size):
            raise ValueError(
                f"visual_features must have shape (batch, {slots}, {self.config.vision_feature_size}), "
                f"got {tuple(visual_features.shape)}"
            )
        if image_mask is None:
            image_mask = torch.ones(batch_size, slots, dtype=torch.bool, device=device)
        return visual_features.to(self.dtype), image_mask.bool()

    def _text_features(self, input_ids, attention_mask, token_type_ids):
        """States feeding E_t, and the [CLS] semantics of Eq. 22 when available from an un-prompted pass."""
        if self.config.text_feature_source == "embeddings":
            return self.text_encoder.get_input_embeddings()(input_ids), None
        # Choice: E_t comes from an un-prompted encoder pass without gradient (the prompts need E_t first).
        with torch.no_grad():
            states = self.text_encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
        return states, states[:, 0]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        **kwargs,
    ) -> RAPModelOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if not self.config.multimodal:
            states = self.text_encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            return RAPModelOutput(last_hidden_state=states, text_cls=states[:, 0])

        batch_size, text_mask = input_ids.shape[0], attention_mask.bool()
        visual_features, visual_mask = self._visual_features(
            pixel_values, visual_features, image_mask, batch_size, input_ids.device
        )
        text_states, semantics = self._text_features(input_ids, attention_mask, token_type_ids)
        text, visual, text_global, visual_global = self.semantic_features(
            text_states, text_mask, visual_features, visual_mask
        )
        has_image = visual_mask.any(-1).to(text.dtype)
        if self.relevance_reasoning is not None:
            relevance = self.relevance_reasoning(text, text_mask, visual, visual_mask, text_global, visual_global)
            relevance = relevance * has_image  # no image: beta = 0
            gate = torch.tanh(relevance) if self.config.relevance_gate == "tanh" else relevance  # Eq. 14
        else:
            relevance = None
            gate = torch.ones(batch_size, dtype=text.dtype, device=text.device)  # Table 5 "MRR": gate = 1
        fused, routing_weights = self.dynamic_fusion(text, text_mask, visual, visual_mask, gate)
        prefixes = self.prompt_projection(fused, text_mask)
        states = run_prefixed_encoder(self.text_encoder, prefixes, input_ids, attention_mask, token_type_ids)
        if semantics is None:
            semantics = states[:, 0]
        router_loss = path_regularization_loss(routing_weights, semantics)
        return RAPModelOutput(
            last_hidden_state=states,
            text_cls=semantics,
            router_loss=router_loss,
            relevance=relevance,
            relevance_gate=gate,
            routing_weights=routing_weights,
        )

class RAPForMultimodalNER(RAPPreTrainedModel):
    """RAP with a CRF over the prompted encoder states at the first sub-token of every word (Eq. 25)."""

    def __init__(self, config: RAPConfig):
        super().__init__(config)
        if CRF is None:
            raise ImportError("RAPForMultimodalNER needs the pip package `pytorch-crf` (pip install pytorch-crf)")
        self.rap = RAPModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.text_config.hidden_size, config.num_labels)
        self.crf = CRF(config.num_labels, batch_first=True)
        self.post_init()
        self.rap.apply_freezing()

    @staticmethod
    def gather_words(values: torch.Tensor, word_start_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packs the positions flagged in `word_start_mask` (batch, T) to the front: (batch, W, ...) and a word mask."""
        counts = word_start_mask.sum(1)
        num_words = max(int(counts.max()), 1)
        order = torch.argsort((~word_start_mask).to(torch.int8), dim=1, stable=True)[:, :num_words]
        index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(-1, -1, *values.shape[2:])
        word_mask = torch.arange(num_words, device=values.device)[None, :] < counts[:, None]
        return values.gather(1, index), word_mask

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        word_start_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> RAPNEROutput:
        backbone = self.rap(input_ids, attention_mask, token_type_ids, pixel_values, visual_features, image_mask)
        if word_start_mask is None:  # without alignment, label positions (or every real token) are the words
            word_start_mask = labels.ne(-100) if labels is not None else attention_mask.bool()
        word_start_mask = word_start_mask.bool()
        emissions = self.classifier(self.dropout(backbone.last_hidden_state))
        emissions, word_mask = self.gather_words(emissions, word_start_mask)
        crf_mask = word_mask.clone()
        crf_mask[:, 0] = True  # pytorch-crf needs the first step on; a word-less sample decodes one dummy step
        task_loss = router_loss = loss = None
        if labels is not None:
            tags, _ = self.gather_words(labels, word_start_mask)
            task_loss = -self.crf(emissions, tags.clamp(min=0), mask=crf_mask, reduction="mean")  # Eq. 21
            loss, router_loss = self._total_loss(task_loss, backbone.router_loss)
        paths = self.crf.decode(emissions, mask=crf_mask)  # Viterbi
        predictions = torch.full(word_mask.shape, -100, dtype=torch.long, device=emissions.device)
        for row, path in enumerate(paths):
            predictions[row, : int(word_mask[row].sum())] = torch.tensor(path, device=emissions.device)[
                : int(word_mask[row].sum())
            ]
        return RAPNEROutput(
            loss=loss,
            task_loss=task_loss,
            router_loss=router_loss,
            logits=emissions,
            predictions=predictions,
            word_mask=word_mask,
            **analysis_fields(backbone),
        )

class RAPForMultimodalRE(RAPPreTrainedModel):
    """RAP relation classifier on the prompted states at the subject and object markers, softmax([C_s; C_o]) (Eq. 26)."""

    def __init__(self, config: RAPConfig):
        super().__init__(config)
        self.rap = RAPModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(2 * config.text_config.hidden_size, config.num_labels)
        self.post_init()
        self.rap.apply_freezing()

    def _marker_positions(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        marker_ids = (self.config.subject_marker_token_id, self.config.object_marker_token_id)
        if None in marker_ids:
            raise ValueError("pass `entity_positions` or set config.subject/object_marker_token_id")
        found = [input_ids.eq(marker).int() for marker in marker_ids]
        if any(bool((hits.sum(1) == 0).any()) for hits in found):
            raise ValueError("an input has no subject or object marker token; was it truncated away?")
        return torch.stack([hits.argmax(1) for hits in found], dim=1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        image_mask: torch.LongTensor | None = None,
        entity_positions: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> RAPREOutput:
        backbone = self.rap(input_ids, attention_mask, token_type_ids, pixel_values, visual_features, image_mask)
        if entity_positions is None:
            entity_positions = self._marker_positions(input_ids)
        states = backbone.last_hidden_state
        index = entity_positions.unsqueeze(-1).expand(-1, -1, states.shape[-1])
        pair = states.gather(1, index).flatten(1)  # [C_s; C_o]
        logits = self.classifier(self.dropout(pair))  # Eq. 26
        task_loss = router_loss = loss = None
        if labels is not None:
            task_loss = F.cross_entropy(logits, labels)  # Eq. 21
            loss, router_loss = self._total_loss(task_loss, backbone.router_loss)
        return RAPREOutput(
            loss=loss,
            task_loss=task_loss,
            router_loss=router_loss,
            logits=logits,
            **analysis_fields(backbone),
        )



__all__ = [
    "RAPPreTrainedModel",
    "RAPModel",
    "RAPForMultimodalNER",
    "RAPForMultimodalRE",
    "RAPForMultimodalExtraction",
    "RAPModelOutput",
    "RAPNEROutput",
    "RAPREOutput",
]

TASK_HEADS = {"ner": RAPForMultimodalNER, "re": RAPForMultimodalRE}


class RAPForMultimodalExtraction(RAPPreTrainedModel):
    """Never instantiated: loads the head that `config.task` names (`RAPForMultimodalNER` or `RAPForMultimodalRE`).

    Registered for `AutoModel` in-process and used by the pipeline: a single headless class there would shadow a
    checkpoint's auto_map (transformers prefers registered local code) and drop the task head.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        for name in ("trust_remote_code", "adapter_kwargs", "code_revision"):
            kwargs.pop(name, None)
        if config is None:
            hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "local_files_only", "cache_dir") if k in kwargs}
            config = RAPConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        if config.task not in TASK_HEADS:
            raise ValueError(f"RAP config has unknown task {config.task!r}")
        return TASK_HEADS[config.task].from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return TASK_HEADS[config.task]._from_config(config, **kwargs)


# `save_pretrained` writes these auto_map entries and copies this file and configuration_rap.py next to the weights.
RAPConfig.register_for_auto_class()
RAPModel.register_for_auto_class("AutoModel")
RAPForMultimodalNER.register_for_auto_class("AutoModel")
RAPForMultimodalRE.register_for_auto_class("AutoModel")
