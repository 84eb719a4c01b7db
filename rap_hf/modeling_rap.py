# Copyright 2026 The rap-hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch RAP (Relevance-Aware Prompt-tuning) models for multimodal NER and relation extraction.

This file is copied to the Hub next to the weights (remote code): it imports only torch, transformers and the sibling
`configuration_rap.py`. Equation numbers refer to Chen et al., Neurocomputing 2025; every choice where the paper is
ambiguous is marked `# Choice:` and listed in docs/design.md.
"""

import contextlib
import functools
import inspect
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from transformers import AutoConfig, AutoModel, DynamicCache, PreTrainedModel
from transformers import initialization as init
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.utils import ModelOutput, logging

from .configuration_rap import RAPConfig

try:  # optional at import time so that RE models load without it; NER raises a clear error below
    from torchcrf import CRF
except ImportError:  # pragma: no cover - exercised only where pytorch-crf is missing
    CRF = None

logger = logging.get_logger(__name__)


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
        relevance_matching_loss (`torch.FloatTensor` of shape `()`): image-text matching loss on beta's logit
            (training only, when `relevance_matching_weight` > 0).
    """

    last_hidden_state: torch.FloatTensor | None = None
    text_cls: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None
    relevance_matching_loss: torch.FloatTensor | None = None
    relevance: torch.FloatTensor | None = None
    relevance_gate: torch.FloatTensor | None = None
    routing_weights: torch.FloatTensor | None = None


@dataclass
class RAPNEROutput(ModelOutput):
    """
    Args:
        loss: CRF negative log-likelihood + gamma * L_router (Eq. 20-21) (+ the weighted relevance matching loss),
            when `labels` are given.
        logits (`(batch, words, num_labels)`): CRF emissions at the first sub-token of every word.
        predictions (`(batch, words)`): Viterbi tag ids per word, -100 past the last word.
        word_mask (`(batch, words)`): True for real words.
    """

    loss: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None
    relevance_matching_loss: torch.FloatTensor | None = None
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
        loss: cross-entropy + gamma * L_router (Eq. 20-21) (+ the weighted relevance matching loss), when `labels`
            are given.
        logits (`(batch, num_relations)`): relation scores from `[C_s; C_o]` (Eq. 26).
    """

    loss: torch.FloatTensor | None = None
    task_loss: torch.FloatTensor | None = None
    router_loss: torch.FloatTensor | None = None
    relevance_matching_loss: torch.FloatTensor | None = None
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
        self.query = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1, bias=False)
        )
        mark_relevance_layers(self)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(features).squeeze(-1).masked_fill(~mask, torch.finfo(features.dtype).min)
        weights = torch.softmax(scores, dim=-1) * mask.to(features.dtype)  # rows without any item pool to zero
        return (weights.unsqueeze(-1) * features).sum(1)


def mark_relevance_layers(module: nn.Module) -> None:
    """Flags every linear layer of `module` for the relevance-path initialisation (Xavier, as SGRAF)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.is_relevance_layer = True


class SemanticFeatureExtractor(nn.Module):
    """Maps text states and visual object features into the multimodal space d: E_t and E_v (Sec. 3.2)."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d = config.fusion_hidden_size
        self.text_projection = nn.Linear(config.text_config.hidden_size, d)
        self.visual_projection = nn.Linear(config.vision_feature_size, d)
        mark_relevance_layers(self)

    def forward(self, text_states: torch.Tensor, visual_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_projection(text_states), self.visual_projection(visual_features)  # E_t, E_v


def drop_crops(mask: torch.Tensor, probability: float) -> torch.Tensor:
    """`mask` with the crop slots (1..K) cleared for a random `probability` share of the samples that hold a picture:
    training then also sees pictures that arrive without crops, as a user's do (`RAPConfig.crop_dropout`)."""
    dropped = torch.rand(mask.shape[0], device=mask.device) < probability
    mask = mask.clone()
    mask[dropped & mask[:, 0], 1:] = False
    return mask


def select_visual_objects(features: torch.Tensor, mask: torch.Tensor, visual_objects: str):
    """The objects E_v is made of, from the slots (whole image, then crops): every slot, or the crops alone (the
    paper's m = 3 grounded objects, Sec. 4.2)."""
    if visual_objects != "crops":
        return features, mask
    objects, object_mask = features[:, 1:].clone(), mask[:, 1:].clone()
    # Choice: a picture without any crop is its own single object, so its image still reaches E_v.
    cropless = mask[:, 0] & ~object_mask.any(-1)
    objects[cropless, 0] = features[cropless, 0]
    object_mask[cropless, 0] = True
    return objects, object_mask


# ----------------------------------------------------------------------------------------------------------------------
# Sec. 3.3 modality relevance reasoning
# ----------------------------------------------------------------------------------------------------------------------
class RelevanceRepresentation(nn.Module):
    """r(mu, v, W) = W |mu - v|^2 / ||W |mu - v|^2||_2 (Eq. 1), with W in R^{m x d}."""

    def __init__(self, hidden_size: int, relevance_dim: int):
        super().__init__()
        self.weight = nn.Linear(hidden_size, relevance_dim, bias=False)
        mark_relevance_layers(self)

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
    """Message passing over the relevance graph (Eq. 6-8, Fig. 4) and the relevance score (Algorithm 1)."""

    def __init__(self, relevance_dim: int, iterations: int, edge_scaling: bool = True):
        super().__init__()
        self.edge_scale = relevance_dim**0.5 if edge_scaling else 1.0
        self.source = nn.ModuleList(nn.Linear(relevance_dim, relevance_dim, bias=False) for _ in range(iterations))
        self.target = nn.ModuleList(nn.Linear(relevance_dim, relevance_dim, bias=False) for _ in range(iterations))
        self.update = nn.ModuleList(nn.Linear(relevance_dim, relevance_dim, bias=False) for _ in range(iterations))
        self.score = nn.Linear(relevance_dim, 1)  # W_s, b_s
        mark_relevance_layers(self)
        for layer in self.update:  # ReLU follows W_r (Eq. 8): He init keeps the nodes' norm through the iterations
            layer.relu_follows = True

    def forward(self, nodes: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        """`nodes` (batch, 1 + n, m): r_g first, then r_l per word. Returns W_s r_g^N + b_s (batch,)."""
        last = len(self.source) - 1
        for step, (source, target, update) in enumerate(zip(self.source, self.target, self.update)):
            # The score reads r_g alone: the last iteration updates that node only (the same beta, a fraction of work).
            sources = nodes[:, :1] if step == last else nodes
            # Choice (relevance_edge_scaling): logits x sqrt(m); Eq. 1's unit-norm nodes would make every edge equal.
            logits = source(sources) @ target(nodes).transpose(1, 2) * self.edge_scale  # (W_src r_s)(W_tgt r_t)
            logits = logits.masked_fill(~node_mask.unsqueeze(1), torch.finfo(nodes.dtype).min)
            edges = torch.softmax(logits, dim=-1)  # Eq. 6, row-wise softmax over targets
            nodes = torch.relu(update(edges @ nodes))  # Eq. 7-8
        return self.score(nodes[:, 0]).squeeze(-1)  # beta before squashing: W_s r_g^N + b_s


class ModalityRelevanceReasoning(nn.Module):
    """Algorithm 1: global (Eq. 2) and local (Eq. 3-5) relevance and graph reasoning; returns beta's logit."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d, m = config.fusion_hidden_size, config.relevance_dim
        self.normalize = config.relevance_feature_norm
        self.text_pooling = AttentionPooling(d)  # g_mu = SelfAttention(E_mu)
        self.visual_pooling = AttentionPooling(d)  # g_v = SelfAttention(E_v)
        self.global_relevance = RelevanceRepresentation(d, m)  # W_g
        self.local_relevance = RelevanceRepresentation(d, m)  # W_l
        self.text_to_visual = TextToVisualAttention(config.relevance_temperature)
        self.graph = RelevanceGraphReasoning(m, config.graph_iterations, config.relevance_edge_scaling)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        # Choice: unit-length features (SGRAF), so (mu - v)^2 in Eq. 1 reflects direction, not the projections' scale.
        return F.normalize(x, dim=-1, eps=1e-8) * x.shape[-1] ** 0.5 if self.normalize else x

    def forward(self, text, text_mask, visual, visual_mask) -> torch.Tensor:
        text, visual = self._unit(text), self._unit(visual)
        text_global = self._unit(self.text_pooling(text, text_mask))
        visual_global = self._unit(self.visual_pooling(visual, visual_mask))
        r_global = self.global_relevance(text_global, visual_global)  # Eq. 2
        attended = self.text_to_visual(text, visual, visual_mask)  # Eq. 3-4
        r_local = self.local_relevance(text, attended)  # Eq. 5
        nodes = torch.cat([r_global.unsqueeze(1), r_local], dim=1)  # r = r_l U r_g
        node_mask = torch.cat([torch.ones_like(text_mask[:, :1]), text_mask], dim=1)
        return self.graph(nodes, node_mask)


# ----------------------------------------------------------------------------------------------------------------------
# Sec. 3.4 dynamic fusion
# ----------------------------------------------------------------------------------------------------------------------
class ScaledDotProductMultiheadAttention(nn.Module):
    """Multi-head attention through `F.scaled_dot_product_attention` (fused kernels), with the parameters, names and
    initialisation of `nn.MultiheadAttention(batch_first=True)`, so checkpoints of either load into the other.

    Why not `nn.MultiheadAttention`: at inference its fast path runs self-attention with a padding mask through a
    masked softmax that took about as long as the whole SDPA kernel (speed benchmark, docs/benchmarks_speed.md).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"fusion_hidden_size ({hidden_size}) must be a multiple of fusion_num_heads ({num_heads})")
        self.num_heads, self.dropout = num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """nn.MultiheadAttention's own initialisation (Xavier input projection, zero biases)."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # (batch, heads, n, head size)

    def forward(self, query: torch.Tensor, key: torch.Tensor, key_padding_mask: torch.Tensor) -> torch.Tensor:
        """`key` serves as the values too; `key_padding_mask` (batch, keys) is True where a key is padding."""
        if query is key:  # self-attention: one projection for q, k and v
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:  # rows [0, d) project the query, [d, 3d) keys and values: views, no copy
            d = query.shape[-1]
            q = F.linear(query, self.in_proj_weight[:d], self.in_proj_bias[:d])
            k, v = F.linear(key, self.in_proj_weight[d:], self.in_proj_bias[d:]).chunk(2, dim=-1)
        attended = F.scaled_dot_product_attention(
            self.split_heads(q),
            self.split_heads(k),
            self.split_heads(v),
            attn_mask=~key_padding_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(attended.transpose(1, 2).flatten(2))


class RectifiedActivationUnit(nn.Module):
    """RAU: U_0(X) = ReLU(X) (Eq. 10), a skip path for easy samples."""

    def forward(self, hidden, text_mask, visual, visual_mask, gate):
        return torch.relu(hidden)


class FeatureSemanticReasoningUnit(nn.Module):
    """FSRU: multi-head self-attention and a feed-forward network, both post-norm (Eq. 11-12)."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d = config.fusion_hidden_size
        self.attention = ScaledDotProductMultiheadAttention(d, config.fusion_num_heads, config.hidden_dropout_prob)
        self.attention_norm = nn.LayerNorm(d)
        self.feed_forward = nn.Sequential(
            nn.Linear(d, config.fusion_intermediate_size),
            nn.GELU(),
            nn.Dropout(config.hidden_dropout_prob),
            nn.Linear(config.fusion_intermediate_size, d),
        )
        self.output_norm = nn.LayerNorm(d)

    def forward(self, hidden, text_mask, visual, visual_mask, gate):
        attended = self.attention(hidden, hidden, key_padding_mask=~text_mask)
        hidden = self.attention_norm(hidden + attended)  # Eq. 11
        return self.output_norm(self.feed_forward(hidden) + hidden)  # Eq. 12


class CrossModalFusionUnit(nn.Module):
    """CFU: relevance-gated text-to-image cross-attention, residual and MLP (Eq. 13-16)."""

    def __init__(self, config: RAPConfig):
        super().__init__()
        d = config.fusion_hidden_size
        self.text_norm = nn.LayerNorm(d)
        self.visual_norm = nn.LayerNorm(d)
        heads, dropout = config.fusion_num_heads, config.hidden_dropout_prob
        self.cross_attention = ScaledDotProductMultiheadAttention(d, heads, dropout)
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
        attended = self.cross_attention(self.text_norm(hidden), self.visual_norm(visual), ~key_mask)  # Eq. 13
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
    """L_router (Eq. 22): squared gap between routing-vector and [CLS] cosine similarities, summed over all pairs x, y
    of the batch as written (x = y adds 0), so gamma means what it means in Table 6."""
    if routing_weights.shape[0] < 2:
        return routing_weights.sum() * 0.0
    return (pairwise_cosine(routing_weights) - pairwise_cosine(semantics.detach())).pow(2).sum()


def relevance_matching_loss(
    score_fn,
    text,
    text_mask,
    visual,
    visual_mask,
    matched_scores,
    negatives: int = 3,
    image_features: torch.Tensor | None = None,
    max_similarity: float | None = None,
    memory: "NegativeMemory | None" = None,
) -> torch.Tensor:
    """Image-text matching on beta's logit (beyond the paper): own image = 1, other images of the batch = 0.

    Each sample with an image is scored against the images of `negatives` other such samples (the next ones, in
    batch order: in-batch negatives as in contrastive training, no extra labels) and against every picture of
    `memory` (earlier batches', already projected); positives and negatives weigh half each. With `max_similarity`,
    a foreign image whose whole-image feature (slot 0 of `image_features`; the crops follow) is at least that
    cosine-similar to the sample's own is skipped: it likely shows the same scene (a false negative). Samples without
    an image take no part; fewer than two such samples (and an empty memory) give 0.
    """
    holders = visual_mask.any(-1).nonzero().squeeze(-1)
    count = holders.numel()
    remembered = 0 if memory is None else memory.visual.shape[0]
    if count < 2 and not (count and remembered):
        return matched_scores.sum() * 0.0
    shifts = torch.arange(1, min(negatives, count - 1) + 1, device=holders.device)
    position = torch.arange(count, device=holders.device)
    texts = holders.repeat(len(shifts))
    images = holders[(position[None, :] + shifts[:, None]) % count].flatten()  # never the sample's own image
    if remembered:  # memory pictures follow the batch's rows
        texts = torch.cat([texts, holders.repeat_interleave(remembered)])
        offset = visual.shape[0]
        images = torch.cat([images, (offset + torch.arange(remembered, device=holders.device)).repeat(count)])
        visual = torch.cat([visual, memory.visual])
        visual_mask = torch.cat([visual_mask, memory.visual_mask])
        if image_features is not None:
            image_features = torch.cat([image_features[:, :1], memory.whole_image])
    if max_similarity is not None:
        pictures = F.normalize(image_features[:, 0].detach(), dim=-1, eps=1e-8)  # slot 0: the whole image
        kept = (pictures[texts] * pictures[images]).sum(-1) < max_similarity
        texts, images = texts[kept], images[kept]
    positive = F.binary_cross_entropy_with_logits(matched_scores[holders], torch.ones(count, device=holders.device))
    if texts.numel() == 0:  # every foreign image looked like the own one
        return 0.5 * positive
    # index_select, not text[texts]: on CPU the backward of advanced indexing with repeated rows adds them in a
    # nondeterministic order, which made two runs with one seed differ (index_select's backward is ordered).
    pick = torch.index_select
    scores = score_fn(pick(text, 0, texts), text_mask[texts], pick(visual, 0, images), visual_mask[images])
    negative = F.binary_cross_entropy_with_logits(scores, torch.zeros_like(scores))
    return 0.5 * (positive + negative)


@dataclass
class NegativeMemory:
    """Pictures of earlier training batches for the matching loss: E_v of their visual objects (projected at this
    step), their masks and whole-image features (slot 0, which decide the look-alike negatives)."""

    visual: torch.Tensor
    visual_mask: torch.Tensor
    whole_image: torch.Tensor


class NegativeMemoryBank:
    """The last `size` training pictures (their visual features, detached), first in, first out
    (`RAPConfig.relevance_negative_memory`). Not part of the weights: `RAPTrainer` stores it in checkpoints."""

    def __init__(self, size: int):
        self.size = size
        self.objects = self.visual_mask = self.whole_image = None

    def __len__(self) -> int:
        return 0 if self.objects is None else self.objects.shape[0]

    def clear(self) -> None:
        self.objects = self.visual_mask = self.whole_image = None

    def recall(self, project: nn.Linear) -> NegativeMemory | None:
        """The remembered pictures' E_v under the current visual projection `project`."""
        if not len(self):
            return None
        if self.objects.device != project.weight.device:  # a restored memory arrives on the CPU
            self.load(self.state(), device=project.weight.device)
        return NegativeMemory(project(self.objects), self.visual_mask, self.whole_image)

    def remember(self, objects: torch.Tensor, visual_mask: torch.Tensor, visual_features: torch.Tensor) -> None:
        """Adds the samples of a batch that hold an image; the oldest pictures beyond `size` are dropped."""
        holders = visual_mask.any(-1)
        new = (objects[holders].detach(), visual_mask[holders], visual_features[holders, :1].detach())
        if self.objects is not None and self.objects.shape[1:] == new[0].shape[1:]:
            new = tuple(torch.cat([old, fresh]) for old, fresh in zip(self.stored(), new))
        self.objects, self.visual_mask, self.whole_image = (part[-self.size :] for part in new)

    def stored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.objects, self.visual_mask, self.whole_image

    def state(self) -> dict[str, torch.Tensor]:
        """The remembered pictures by name (what a checkpoint stores, for an exact resume); empty when none."""
        if not len(self):
            return {}
        return {name: part.contiguous() for name, part in zip(("objects", "visual_mask", "whole_image"), self.stored())}

    def load(self, state: dict[str, torch.Tensor], device: torch.device | str | None = None) -> None:
        if not state:
            return self.clear()
        self.objects, self.visual_mask, self.whole_image = (
            state[name].to(device) for name in ("objects", "visual_mask", "whole_image")
        )


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
        # Choice: a LayerNorm before W_in, so the prefixes' initial scale does not depend on X_mli's.
        self.input_norm = nn.LayerNorm(config.fusion_hidden_size) if config.prompt_layer_norm else nn.Identity()
        self.input_projection = nn.Linear(config.fusion_hidden_size, config.prompt_hidden_size)  # W_in
        self.output_projection = nn.Linear(config.prompt_hidden_size, 2 * self.num_layers * text.hidden_size)  # W_out
        self.input_projection.is_prompt_input = True
        self.output_projection.is_prompt_output = True
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
        prompt = self.output_projection(torch.relu(self.input_projection(self.input_norm(mapped))))  # Eq. 23
        prompt = self.dropout(prompt)
        prompt = prompt.view(batch, self.prompt_length, 2 * self.num_layers, self.num_heads, self.head_dim)
        prompt = prompt.permute(2, 0, 3, 1, 4)  # (2 L_bert, batch, heads, m_p, head_dim)
        return tuple((prompt[2 * i], prompt[2 * i + 1]) for i in range(self.num_layers))

    @torch.no_grad()
    def match_encoder_scale(self, encoder: nn.Module) -> torch.Tensor:
        """Rescales W_out so each layer's prefix keys/values start at `prompt_init_scale` x that layer's own RMS.

        `_init_weights` assumes unit-RMS keys and values; this measures the real ones on a fixed pseudo-text (random
        vocabulary ids) and returns them, (2 L_bert,) in the order key_0, value_0, key_1, ...
        """
        scale = encoder_key_value_rms(encoder)
        weight = self.output_projection.weight.view(2 * self.num_layers, -1, self.output_projection.in_features)
        weight.mul_(scale.to(weight)[:, None, None])
        return scale


def encoder_key_value_rms(encoder: nn.Module, batch: int = 4, length: int = 32) -> torch.Tensor:
    """RMS of every layer's attention keys and values on random vocabulary ids, read from the encoder's cache."""
    generator = torch.Generator().manual_seed(0)
    vocab = encoder.get_input_embeddings().num_embeddings
    input_ids = torch.randint(0, vocab, (batch, length), generator=generator).to(encoder.device)
    cache = DynamicCache(config=encoder.config)
    was_training = encoder.training
    encoder.eval()
    encoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **{encoder_cache_argument(encoder): cache})
    encoder.train(was_training)
    rms = []
    for layer in cache.layers:
        rms += [layer.keys.float().pow(2).mean().sqrt(), layer.values.float().pow(2).mean().sqrt()]
    return torch.stack(rms).cpu()


def encoder_cache_argument(encoder: nn.Module) -> str:
    """Name of the encoder's cache argument: `cache` since transformers 5.2x, `past_key_values` before."""
    return _cache_argument_of(type(encoder))


@functools.cache  # the signature is the class's: inspect it once, not on every forward pass
def _cache_argument_of(encoder_class: type) -> str:
    parameters = inspect.signature(encoder_class.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in parameters:
            return name
    raise RuntimeError(
        f"{encoder_class.__name__}.forward takes neither `cache` nor `past_key_values`: this transformers version "
        "cannot receive RAP's prefix prompts"
    )


def unshifted_position_ids(encoder: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Position ids of the text as if no prefix were present (the encoder would shift them by the cache length)."""
    embeddings = encoder.get_input_embeddings()
    make_ids = getattr(getattr(encoder, "embeddings", None), "create_position_ids_from_input_ids", None)
    if make_ids is not None:  # RoBERTa-style: positions start after padding_idx and skip padding
        return make_ids(input_ids, embeddings.padding_idx)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


def run_prefixed_encoder(encoder, prefixes, input_ids, attention_mask, token_type_ids=None, word_embeddings=None):
    """Runs the text encoder with per-layer key/value prefixes (Eq. 24, P-tuning v2) through a fresh cache.
    `word_embeddings`: the encoder's own word-embedding lookup of `input_ids`, when the caller has it already."""
    config = encoder.config
    cache = DynamicCache(config=config)
    for layer_idx, (keys, values) in enumerate(prefixes):
        cache.update(keys, values, layer_idx)
    prompt_length = prefixes[0][0].shape[2]
    prefix_mask = attention_mask.new_ones(attention_mask.shape[0], prompt_length)
    # One lookup for E_t and the encoder: the backward pass then builds the vocabulary-sized gradient once, not twice.
    tokens = {"input_ids": input_ids} if word_embeddings is None else {"inputs_embeds": word_embeddings}
    outputs = encoder(
        **tokens,
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
    accepts_loss_kwargs = False  # Trainer: the loss is a per-batch mean, scale it for gradient accumulation
    _supports_sdpa = True
    _no_split_modules = ["RoutingLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if getattr(module, "is_router_output", False):
            # Choice: routers start with every path open at weight 1/U so a layer's input keeps its scale.
            init.constant_(module.bias, math.atanh(min(1.0 / len(self.config.fusion_units), 0.75)))
        elif isinstance(module, ScaledDotProductMultiheadAttention):
            module._reset_parameters()  # as transformers initialises nn.MultiheadAttention
        elif CRF is not None and isinstance(module, CRF):
            for parameter in (module.start_transitions, module.end_transitions, module.transitions):
                init.uniform_(parameter, -0.1, 0.1)
        elif getattr(module, "is_relevance_layer", False):
            # Choice: Xavier (SGRAF) keeps a unit gain through Eq. 1-8, so beta depends on the input from the start.
            if getattr(module, "relu_follows", False):
                init.kaiming_uniform_(module.weight, nonlinearity="relu")
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif getattr(module, "is_prompt_input", False):
            init.kaiming_normal_(module.weight, nonlinearity="relu")  # unit RMS after ReLU for a LayerNorm-ed input
        elif getattr(module, "is_prompt_output", False):
            # Prefix keys/values start at prompt_init_scale x unit RMS; `match_encoder_scale` adapts it per layer.
            init.normal_(module.weight, std=self.config.prompt_init_scale / math.sqrt(module.in_features))

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Pooled vision-encoder feature per image (N, 3, H, W) -> (N, C_v); see `RAPModel.get_image_features`."""
        return self.base_model.get_image_features(pixel_values)

    def _total_loss(self, task_loss: torch.Tensor, backbone: "RAPModelOutput") -> torch.Tensor:
        """Eq. 20, plus the optional image-text matching loss on beta (`relevance_matching_weight`)."""
        loss = task_loss
        if backbone.router_loss is not None:  # None: text-only baseline
            loss = loss + self.config.path_regularization_weight * backbone.router_loss
        if backbone.relevance_matching_loss is not None:
            loss = loss + self.config.relevance_matching_weight * backbone.relevance_matching_loss
        return loss

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
        paper_architecture: bool = False,
        **config_kwargs,
    ) -> "RAPPreTrainedModel":
        """Builds a RAP model around a pretrained text encoder (and vision encoder), like
        `VisionTextDualEncoderModel.from_vision_text_pretrained`. The vision encoder can be any Hugging Face vision
        model with a pooled output, a `timm/...` model, or the vision tower of a CLIP-like checkpoint; with `rap_hf`
        installed the offline aliases `"minilm"` and `"efficientnet-lite0"` work too. New RAP layers are randomly
        initialised, the prefixes scaled to the text encoder's keys and values (`prompt_init_scale`); without a
        vision path the vision encoder is randomly initialised with a warning (its features carry no semantics).
        `paper_architecture=True` builds the paper's architecture (`RAPConfig.paper_fields` at this encoder's width)."""
        text_path, vision_path = resolve_encoder_aliases(text_model_name_or_path, vision_model_name_or_path)
        text_encoder = pretrained_encoder(AutoModel, text_path, "text", add_pooling_layer=False)
        text_encoder.config._name_or_path = public_name(text_model_name_or_path)
        config_kwargs["text_config"] = text_encoder.config
        vision_encoder = None
        if vision_path:
            vision_encoder = load_pretrained_vision_encoder(vision_path)
            vision_encoder.config._name_or_path = public_name(vision_model_name_or_path)
            config_kwargs["vision_config"] = vision_encoder.config
        elif config_kwargs.get("multimodal", True):
            logger.warning("no vision encoder given: the RAP vision encoder is randomly initialised")
        # paper_architecture: the paper's fields for this encoder's width (`RAPConfig.paper_fields`); config_kwargs win
        model = cls(RAPConfig.paper_architecture(**config_kwargs) if paper_architecture else RAPConfig(**config_kwargs))
        backbone = model.base_model
        load_encoder_weights(backbone.text_encoder, text_encoder.state_dict())
        if model.config.multimodal:
            if vision_encoder is not None:
                backbone.vision_encoder.load_state_dict(vision_encoder.state_dict())
            backbone.prompt_projection.match_encoder_scale(backbone.text_encoder)
        model.name_or_path = public_name(text_model_name_or_path)
        return model


def resolve_encoder_aliases(text: str, vision: str | None) -> tuple[str, str | None]:
    """The offline aliases of `rap_hf.encoders` where `rap_hf` is installed; names pass through elsewhere (Hub copy)."""
    try:
        from rap_hf.encoders import resolve_text_model, resolve_vision_model
    except ImportError:  # this file runs as remote code without the package: only real names and paths
        return text, vision
    return resolve_text_model(text), resolve_vision_model(vision)


def add_text_encoder_lora(encoder: nn.Module, lora: dict) -> nn.Module:
    """LoRA adapters (peft) injected into the text encoder in place: its forward (and the prefix cache) is unchanged."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("config.text_encoder_lora needs the pip package `peft` (pip install peft)") from error
    encoder = inject_adapter_in_model(LoraConfig(**lora), encoder)
    for name, module in encoder.named_modules():  # the head's post_init must not re-initialise the adapters
        if "lora_" in name:
            module._is_hf_initialized = True
    return encoder


def load_encoder_weights(target: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Pretrained weights into an encoder that may carry LoRA adapters (peft keeps a wrapped layer's own weights
    under `base_layer`); anything missing other than the adapters is an error."""
    own = target.state_dict()
    mapped = {}
    for key, value in state_dict.items():
        if key not in own:
            module, _, leaf = key.rpartition(".")
            key = f"{module}.base_layer.{leaf}"
        mapped[key] = value
    missing, unexpected = target.load_state_dict(mapped, strict=False)
    if unexpected or any("lora_" not in key for key in missing):
        raise RuntimeError(f"pretrained text encoder does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


@contextlib.contextmanager
def loading_reports_silenced() -> Iterator[None]:
    """Silences transformers' loading warnings (the LOAD REPORT table, the resizing note): callers log one line. The
    tensor-parallel logger too: modeling_utils checks the TP plan (and warns of every unsharded layer) when its own
    logger is set to WARNING or above."""
    loggers = [logging.get_logger(name) for name in ("transformers.modeling_utils", "transformers.distributed")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels):
            each.setLevel(level)


def pretrained_encoder(model_class: Any, name_or_path: str, role: str, **kwargs) -> PreTrainedModel:
    """`model_class.from_pretrained` with one log line instead of transformers' LOAD REPORT table: the checkpoint's
    heads RAP does not use (BERT's pooler, an ImageNet classifier) are expected; missing weights are a warning."""
    with loading_reports_silenced():
        encoder, info = model_class.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    if info.get("unexpected_keys"):
        logger.info(
            "%s encoder: %d checkpoint weights RAP does not use (%s, ...)",
            role,
            len(info["unexpected_keys"]),
            sorted(info["unexpected_keys"])[0],
        )
    if info.get("missing_keys"):
        logger.warning(
            "%s encoder: %d weights missing from %s are randomly initialised: %s",
            role,
            len(info["missing_keys"]),
            public_name(name_or_path),
            sorted(info["missing_keys"])[:5],
        )
    return encoder


def public_name(name_or_path: str) -> str:
    """What a saved config records of an encoder: the Hub id or alias, never a path of this machine (folder name)."""
    return os.path.basename(os.path.normpath(name_or_path)) if os.path.isdir(name_or_path) else name_or_path


def load_pretrained_vision_encoder(name_or_path: str) -> PreTrainedModel:
    """A pretrained vision encoder with a pooled output; the vision tower where the checkpoint holds two (CLIP...)."""
    config = AutoConfig.from_pretrained(name_or_path)
    vision_config = getattr(config, "vision_config", None)
    if vision_config is not None and type(vision_config) in MODEL_MAPPING:
        encoder = pretrained_encoder(MODEL_MAPPING[type(vision_config)], name_or_path, "vision")
    else:
        encoder = pretrained_encoder(AutoModel, name_or_path, "vision")
    if encoder.config.model_type == "timm_wrapper":  # the ImageNet label names would bloat every saved RAP config
        encoder.config.__dict__.pop("label_names", None)
        encoder.config.id2label = {0: "LABEL_0", 1: "LABEL_1"}
    return encoder


class RAPModel(RAPPreTrainedModel):
    """The RAP backbone: relevance reasoning, dynamic fusion and the prompted text encoder (returns C, Eq. 24)."""

    def __init__(self, config: RAPConfig):
        super().__init__(config)
        self.text_encoder = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        encoder_cache_argument(self.text_encoder)  # an encoder that cannot take the prefix cache fails here, not later
        if config.multimodal:
            self.vision_encoder = AutoModel.from_config(config.vision_config)
            self.semantic_features = SemanticFeatureExtractor(config)
            self.relevance_reasoning = ModalityRelevanceReasoning(config) if config.use_relevance_reasoning else None
            # Choice: the relevance path's own E_t, E_v: shared with the fusion units, the task loss dominated them.
            own = config.use_relevance_reasoning and config.relevance_own_projections
            self.relevance_features = SemanticFeatureExtractor(config) if own else None
            self.negative_memory = NegativeMemoryBank(config.relevance_negative_memory)
            self.dynamic_fusion = DynamicFusionModule(config)
            self.prompt_projection = PromptProjection(config)
        self.post_init()
        if config.text_encoder_lora:  # after post_init: LoRA keeps its own initialisation (B = 0)
            self.text_encoder = add_text_encoder_lora(self.text_encoder, config.text_encoder_lora)
        self.apply_freezing()

    def apply_freezing(self) -> None:
        """Sets `requires_grad` of the encoders from `freeze_text_encoder` / `freeze_vision_encoder`; with LoRA on the
        text encoder only its adapters train."""
        for name, parameter in self.text_encoder.named_parameters():
            lora_only = self.config.text_encoder_lora is not None
            parameter.requires_grad = not self.config.freeze_text_encoder and (not lora_only or "lora_" in name)
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
            raise ValueError("this RAP model is a text-only baseline (config.multimodal=False): no vision encoder")
        # channels-last pixels: the convolutions of ResNet/EfficientNet run about 2x faster on CPU, same features
        pixel_values = (
            pixel_values.contiguous(memory_format=torch.channels_last) if pixel_values.dim() == 4 else pixel_values
        )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_encoder):
            pooled = self.vision_encoder(pixel_values=pixel_values).pooler_output
        return pooled.flatten(1)

    def _visual_features(self, pixel_values, visual_features, image_mask, batch_size, device):
        """(batch, 1+K, C_v) features and their mask, from cached features, pixels, or nothing (text-only input)."""
        slots = self.config.num_visual_slots
        if visual_features is None and pixel_values is not None:
            if pixel_values.dim() != 5 or pixel_values.shape[1] != slots:
                raise ValueError(
                    f"pixel_values must have shape (batch, {slots}, 3, H, W) (image + {slots - 1} crops), "
                    f"got {tuple(pixel_values.shape)}"
                )
            visual_features = self._encode_real_slots(pixel_values, image_mask)
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

    def _encode_real_slots(self, pixel_values: torch.Tensor, image_mask: torch.Tensor | None) -> torch.Tensor:
        """Pooled features of the slots that hold a picture (the vision encoder never sees an empty slot); zeros
        elsewhere."""
        mask = image_mask.bool() if image_mask is not None else pixel_values.new_ones(pixel_values.shape[:2]).bool()
        features = pixel_values.new_zeros(*mask.shape, self.config.vision_feature_size, dtype=self.dtype)
        if mask.any():
            features[mask] = self.get_image_features(pixel_values[mask].to(self.dtype)).to(features.dtype)
        return features

    def _text_features(self, input_ids, attention_mask, token_type_ids):
        """States feeding E_t, and the [CLS] semantics of Eq. 22 when available from an un-prompted pass."""
        if self.config.text_feature_source == "embeddings":
            return self.text_encoder.get_input_embeddings()(input_ids), None
        # Choice: E_t comes from an un-prompted encoder pass without gradient (the prompts need E_t first), in eval
        # mode: dropout noise would otherwise enter E_t and the [CLS] target of Eq. 22.
        was_training = self.text_encoder.training
        self.text_encoder.eval()
        with torch.no_grad():
            states = self.text_encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
        self.text_encoder.train(was_training)
        return states, states[:, 0]

    def _gate(self, relevance: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """R-Gate (Eq. 14): tanh(beta) as the paper; `rectified` opens only where the relevance score says the image
        is more likely relevant than not (score > 0, i.e. beta > 0.5) and is 0 elsewhere; `veto` is fully open unless
        the score says the image is irrelevant (score < 0), and closes as it becomes sure of that."""
        if self.config.relevance_gate == "tanh":
            return torch.tanh(relevance)  # Eq. 14
        if self.config.relevance_gate == "rectified":
            return torch.tanh(torch.relu(scores))
        if self.config.relevance_gate == "veto":
            return 1 - torch.tanh(torch.relu(-scores))
        return relevance

    def _learns_matching(self) -> bool:
        return self.training and self.relevance_reasoning is not None and self.config.relevance_matching_weight > 0

    def _recall_negatives(self) -> NegativeMemory | None:
        """Earlier batches' pictures for the matching loss, under the relevance path's current visual projection."""
        if not self._learns_matching() or not self.config.relevance_negative_memory:
            return None
        features = self.relevance_features if self.relevance_features is not None else self.semantic_features
        return self.negative_memory.recall(features.visual_projection)

    def _relevance(
        self, text, visual, text_mask, visual_mask, image_features=None, memory=None
    ) -> tuple[torch.Tensor | None, torch.Tensor, Any]:
        """beta (Algorithm 1), the R-Gate (Eq. 14) and, in training, the image-text matching loss (`image_features`:
        the raw visual features, which decide the likely false negatives it skips; `memory`: earlier pictures)."""
        if self.relevance_reasoning is None:  # Table 5 "MRR": no relevance reasoning, gate = 1
            return None, torch.ones(text.shape[0], dtype=text.dtype, device=text.device), None
        scores = self.relevance_reasoning(text, text_mask, visual, visual_mask)
        # Choice: squash beta into (0, 1) so it reads as a weight (Fig. 8 reports 0.09-0.71).
        relevance = torch.sigmoid(scores) if self.config.relevance_activation == "sigmoid" else scores
        has_image = visual_mask.any(-1).to(text.dtype)
        relevance = relevance * has_image  # no image: beta = 0
        gate = self._gate(relevance, scores) * has_image
        if not self.config.relevance_task_gradient:  # beta learns from the matching loss alone
            gate = gate.detach()
        matching = None
        if self._learns_matching():
            matching = relevance_matching_loss(
                self.relevance_reasoning,
                text,
                text_mask,
                visual,
                visual_mask,
                scores,
                self.config.relevance_matching_negatives,
                image_features,
                self.config.relevance_negative_max_similarity,
                memory,
            )
        return relevance, gate, matching

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
        if self.training and self.config.crop_dropout > 0:
            visual_mask = drop_crops(visual_mask, self.config.crop_dropout)
        objects, visual_mask = select_visual_objects(visual_features, visual_mask, self.config.visual_objects)
        # record_function labels: the stages of scripts/benchmarks/speed.py --profile (no cost outside a profiler)
        with record_function("rap.text_features"):
            text_states, semantics = self._text_features(input_ids, attention_mask, token_type_ids)
            text, visual = self.semantic_features(text_states, objects)  # E_t, E_v
        with record_function("rap.relevance"):
            own = self.relevance_features
            relevance_inputs = own(text_states, objects) if own is not None else (text, visual)
            memory = self._recall_negatives()
            relevance, gate, matching_loss = self._relevance(
                *relevance_inputs, text_mask, visual_mask, visual_features, memory
            )
            if self._learns_matching() and self.config.relevance_negative_memory:
                self.negative_memory.remember(objects, visual_mask, visual_features)
        with record_function("rap.fusion"):
            fused, routing_weights = self.dynamic_fusion(text, text_mask, visual, visual_mask, gate)
        with record_function("rap.prompts"):
            prefixes = self.prompt_projection(fused, text_mask)
        with record_function("rap.prefixed_encoder"):
            lookup = text_states if self.config.text_feature_source == "embeddings" else None
            encoder = self.text_encoder
            states = run_prefixed_encoder(encoder, prefixes, input_ids, attention_mask, token_type_ids, lookup)
        if semantics is None:
            semantics = states[:, 0]
        router_loss = path_regularization_loss(routing_weights, semantics)
        return RAPModelOutput(
            last_hidden_state=states,
            text_cls=semantics,
            router_loss=router_loss,
            relevance_matching_loss=matching_loss,
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
            real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
            word_start_mask = labels.ne(-100) if labels is not None else real
        word_start_mask = word_start_mask.bool()
        token_emissions = self.classifier(self.dropout(backbone.last_hidden_state))
        emissions, word_mask = self.gather_words(token_emissions, word_start_mask)
        task_loss = loss = None
        if labels is not None:
            task_loss = self._crf_loss(token_emissions, labels, word_start_mask)  # Eq. 21
            loss = self._total_loss(task_loss, backbone)
        predictions = None
        if not (self.training and labels is not None):  # no Viterbi in training steps: only the loss is used there
            predictions = self.decode(emissions, word_mask)
        return RAPNEROutput(
            loss=loss,
            task_loss=task_loss,
            router_loss=backbone.router_loss,
            relevance_matching_loss=backbone.relevance_matching_loss,
            logits=emissions,
            predictions=predictions,
            word_mask=word_mask,
            **analysis_fields(backbone),
        )

    def _crf_loss(self, token_emissions, labels, word_start_mask) -> torch.Tensor:
        """Mean CRF negative log-likelihood over the samples; a word start labelled -100 is left out of its sequence."""
        scored = word_start_mask & labels.ne(-100)
        emissions, mask = self.gather_words(token_emissions, scored)
        tags, _ = self.gather_words(labels, scored)
        has_words = mask.any(1)
        crf_mask = mask.clone()
        crf_mask[:, 0] = True  # pytorch-crf needs the first step on; word-less samples are dropped below
        log_likelihood = self.crf(emissions, tags.clamp(min=0), mask=crf_mask, reduction="none")
        return -(log_likelihood * has_words).sum() / has_words.sum().clamp(min=1)

    def decode(self, emissions: torch.Tensor, word_mask: torch.Tensor) -> torch.LongTensor:
        """Viterbi tag ids per word (batch, W), -100 past each sample's last word."""
        crf_mask = word_mask.clone()
        crf_mask[:, 0] = True  # a word-less sample decodes one dummy step, dropped below
        predictions = torch.full(word_mask.shape, -100, dtype=torch.long, device=emissions.device)
        for row, path in enumerate(self.crf.decode(emissions, mask=crf_mask)):
            length = int(word_mask[row].sum())
            predictions[row, :length] = torch.tensor(path[:length], dtype=torch.long, device=emissions.device)
        return predictions


class RAPForMultimodalRE(RAPPreTrainedModel):
    """RAP relation classifier on the prompted states at the subject and object markers: softmax([C_s; C_o]), Eq. 26."""

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
        task_loss = loss = None
        if labels is not None:
            task_loss = F.cross_entropy(logits, labels)  # Eq. 21
            loss = self._total_loss(task_loss, backbone)
        return RAPREOutput(
            loss=loss,
            task_loss=task_loss,
            router_loss=backbone.router_loss,
            relevance_matching_loss=backbone.relevance_matching_loss,
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
        head = TASK_HEADS[config.task]
        return head.from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        return TASK_HEADS[config.task]._from_config(config, **kwargs)


# `save_pretrained` writes these auto_map entries and copies this file and configuration_rap.py next to the weights.
RAPConfig.register_for_auto_class()
RAPModel.register_for_auto_class("AutoModel")
RAPForMultimodalNER.register_for_auto_class("AutoModel")
RAPForMultimodalRE.register_for_auto_class("AutoModel")
