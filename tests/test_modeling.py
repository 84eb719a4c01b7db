"""Tests of rap_hf/modeling_rap.py: equations against float64 references, masks, gradients, ablations, prefixes."""

import math
import re

import pytest
import torch
from transformers import AutoModel, BertConfig, BertModel, RobertaConfig

from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE
from rap_hf.modeling_rap import (
    CrossModalFusionUnit,
    DynamicFusionModule,
    PromptProjection,
    RectifiedActivationUnit,
    RelevanceGraphReasoning,
    RelevanceRepresentation,
    ScaledDotProductMultiheadAttention,
    TextToVisualAttention,
    path_regularization_loss,
    run_prefixed_encoder,
)

from conftest import TINY_TEXT, tiny_batch, tiny_config

torch.manual_seed(0)


def model_for(task: str, **overrides):
    config = tiny_config(task, **overrides)
    model = (RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE)(config)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Equations against hand-written float64 references
# ---------------------------------------------------------------------------------------------------------------------
def test_relevance_representation_matches_eq1():
    module = RelevanceRepresentation(4, 3).double()
    mu, v = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    raw = (module.weight.weight @ ((mu - v) ** 2).T).T
    expected = raw / raw.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(module(mu, v), expected)


def test_text_to_visual_attention_matches_eq3_eq4():
    temperature = 5.0
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    visual = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [3.0, 0.0]]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])  # third object is padding
    attended = TextToVisualAttention(temperature)(text, visual, mask)
    for i in range(2):
        cosine = torch.nn.functional.cosine_similarity
        cos = [max(0.0, cosine(text[0, i], visual[0, j], dim=0).item()) for j in range(2)]
        norm = math.sqrt(sum(c * c for c in cos))
        scores = torch.tensor([temperature * c / norm for c in cos], dtype=torch.float64)
        alpha = torch.softmax(scores, dim=0)
        torch.testing.assert_close(attended[0, i], alpha[0] * visual[0, 0] + alpha[1] * visual[0, 1])


def test_graph_reasoning_matches_eq6_to_eq8():
    graph = RelevanceGraphReasoning(relevance_dim=3, iterations=2).double()
    nodes = torch.rand(1, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    reference = nodes[0, :3].clone()
    for n in range(2):
        src, tgt, upd = graph.source[n].weight, graph.target[n].weight, graph.update[n].weight
        new = []
        for s in range(3):
            logits = torch.stack([(src @ reference[s]) @ (tgt @ reference[t]) for t in range(3)]) * math.sqrt(3)
            edges = torch.softmax(logits, dim=0)  # Eq. 6, logits x sqrt(m) (docs/design.md)
            hat = sum(edges[t] * reference[t] for t in range(3))  # Eq. 7
            new.append(torch.relu(upd @ hat))  # Eq. 8
        reference = torch.stack(new)
    beta = graph.score.weight[0] @ reference[0] + graph.score.bias[0]
    torch.testing.assert_close(graph(nodes, mask)[0], beta)


def test_sdpa_attention_is_nn_multihead_attention_with_its_checkpoints():
    """Same parameters, initialisation and outputs as nn.MultiheadAttention (self and cross, padded keys)."""
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    torch.manual_seed(0)
    fused = ScaledDotProductMultiheadAttention(16, 4).eval()
    assert fused.state_dict().keys() == reference.state_dict().keys()
    torch.testing.assert_close(fused.state_dict(), reference.state_dict(), atol=0, rtol=0)  # the same init draws
    reference.out_proj.bias.data.normal_()  # non-zero biases everywhere, then the weights go across
    reference.in_proj_bias.data.normal_()
    fused.load_state_dict(reference.state_dict())
    text, images = torch.randn(3, 7, 16), torch.randn(3, 4, 16)
    text_padding = torch.arange(7)[None, :] >= torch.tensor([[7], [5], [1]])
    image_padding = torch.tensor([[False] * 4, [False, False, True, True], [False, True, True, True]])
    with torch.no_grad():
        expected_self, _ = reference(text, text, text, key_padding_mask=text_padding, need_weights=False)
        expected_cross, _ = reference(text, images, images, key_padding_mask=image_padding, need_weights=False)
        torch.testing.assert_close(fused(text, text, text_padding), expected_self)
        torch.testing.assert_close(fused(text, images, image_padding), expected_cross)
    with pytest.raises(ValueError, match="multiple of fusion_num_heads"):
        ScaledDotProductMultiheadAttention(18, 4)


def test_rau_is_relu_eq10():
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(RectifiedActivationUnit()(x, None, None, None, None), x.clamp(min=0))


def test_cfu_gate_scales_visual_contribution_eq14_15():
    config = tiny_config()
    unit = CrossModalFusionUnit(config).eval()
    hidden = torch.randn(2, 5, 32)
    visual = torch.randn(2, 4, 32)
    mask = torch.ones(2, 5, dtype=torch.bool)
    visual_mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    closed = unit(hidden, mask, visual, visual_mask, torch.zeros(2))
    opened = unit(hidden, mask, visual, visual_mask, torch.ones(2))
    no_visual = hidden + unit.mlp(unit.mlp_norm(hidden))  # Eq. 16 with X'_av = 0
    torch.testing.assert_close(closed, no_visual)
    assert not torch.allclose(opened[0], no_visual[0])
    torch.testing.assert_close(opened[1], no_visual[1])  # no image: CFU adds nothing whatever the gate
    assert torch.isfinite(opened).all()


def test_routing_matches_eq17_reference():
    config = tiny_config(routing_layers=3, hidden_dropout_prob=0.0)
    fusion = DynamicFusionModule(config).eval()
    text, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool)
    visual, visual_mask, gate = torch.randn(2, 4, 32), torch.ones(2, 4, dtype=torch.bool), torch.full((2,), 0.5)
    fused, routing = fusion(text, mask, visual, visual_mask, gate)
    assert routing.shape == (2, config.routing_vector_size) == (2, 3 * 3 * 2 + 3)
    inputs, expected_routes = [text] * 3, []
    for layer in fusion.layers:
        outputs = [unit(x, mask, visual, visual_mask, gate) for unit, x in zip(layer.units, inputs)]
        routes = [router(x, mask) for router, x in zip(layer.routers, inputs)]  # routes[j][:, i] = g_{j,i}
        expected_routes.extend(routes)
        inputs = [sum(routes[j][:, i, None, None] * outputs[j] for j in range(3)) for i in range(routes[0].shape[1])]
    torch.testing.assert_close(fused, inputs[0])
    torch.testing.assert_close(routing, torch.cat(expected_routes, dim=-1))
    assert (routing >= 0).all() and (routing < 1).all()  # ReLU(tanh(.)) of Eq. 19


def test_path_regularization_matches_eq22():
    g, cls = torch.rand(3, 6, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity
    terms = [(cos(g[x], g[y], dim=0) - cos(cls[x], cls[y], dim=0)) ** 2 for x in range(3) for y in range(3) if x != y]
    torch.testing.assert_close(path_regularization_loss(g, cls), torch.stack(terms).sum())  # Eq. 22 as written
    assert path_regularization_loss(g[:1], cls[:1]).item() == 0.0


def test_prompt_projection_matches_eq23_and_ignores_padding():
    config = tiny_config(hidden_dropout_prob=0.0)
    projection = PromptProjection(config).eval()
    fused, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    prefixes = projection(fused, mask)
    assert len(prefixes) == 2 and prefixes[0][0].shape == (2, 4, 3, 8)  # (batch, heads, m_p, head_dim)
    padded = torch.zeros(2, 16, 32)
    padded[:, :5] = fused * mask[..., None]
    mapped = projection.length_mapping(padded.transpose(1, 2)).transpose(1, 2)  # linear over positions
    mapped = torch.nn.functional.layer_norm(mapped, (32,))  # prompt_layer_norm (fresh: weight 1, bias 0)
    prompt = projection.output_projection(torch.relu(projection.input_projection(mapped)))
    expected_key_layer1 = prompt.view(2, 3, 4, 4, 8)[:, :, 2].permute(0, 2, 1, 3)  # slot 2 = layer 1 keys
    torch.testing.assert_close(prefixes[1][0], expected_key_layer1)
    changed = fused.clone()
    changed[1, 3:] = 100.0  # padding content must not leak into the prompts
    torch.testing.assert_close(projection(changed, mask)[0][0][1], prefixes[0][0][1])
    with pytest.raises(ValueError, match="prompt_source_length"):
        projection(torch.randn(1, 17, 32), torch.ones(1, 17, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------------------
# Relevance path: normalisation, initialisation, matching loss (docs/design.md)
# ---------------------------------------------------------------------------------------------------------------------
def test_relevance_reads_directions_not_scales():
    reasoning = model_for("ner").rap.relevance_reasoning
    text, visual = torch.randn(2, 5, 32), torch.randn(2, 4, 32)
    text_mask, visual_mask = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    base = reasoning(text, text_mask, visual, visual_mask)
    torch.testing.assert_close(reasoning(3.0 * text, text_mask, 0.1 * visual, visual_mask), base)
    reasoning.normalize = False  # relevance_feature_norm=False: Eq. 1 on the raw projections
    assert not torch.allclose(reasoning(3.0 * text, text_mask, 0.1 * visual, visual_mask), base)


def test_beta_depends_on_the_image_at_initialisation():
    spreads = {}
    for init_name in ("xavier", "normal"):
        torch.manual_seed(0)
        model = model_for("ner", relevance_dim=64)
        if init_name == "normal":  # what the relevance layers had before their Xavier init (docs/design.md)
            for layer in model.rap.modules():
                if getattr(layer, "is_relevance_layer", False):
                    torch.nn.init.normal_(layer.weight, std=0.02)
        batch = tiny_batch("ner", batch=8)
        batch["image_mask"] = torch.ones(8, 4, dtype=torch.long)
        batch["input_ids"] = batch["input_ids"][:1].expand(8, -1)  # one text, eight different images
        batch["attention_mask"] = batch["attention_mask"][:1].expand(8, -1)
        batch["visual_features"] = torch.randn(8, 4, 16)
        spreads[init_name] = model(**batch).relevance.std().item()
    assert spreads["xavier"] > 3e-3 and spreads["xavier"] > 20 * spreads["normal"], spreads


bce = torch.nn.functional.binary_cross_entropy_with_logits


def relevance_logits(model, batch, texts: list[int], images: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """beta's logits for the image holders 0-2 with their own images, and for the (text, foreign image) pairs."""
    rap = model.rap
    with torch.no_grad():
        states, _ = rap._text_features(batch["input_ids"], batch["attention_mask"], None)
        text, visual = rap.relevance_features(states, batch["visual_features"])
        mask, vmask = batch["attention_mask"].bool(), batch["image_mask"].bool()
        own = rap.relevance_reasoning(text, mask, visual, vmask)[:3]
        return own, rap.relevance_reasoning(text[texts], mask[texts], visual[images], vmask[images])


def test_relevance_matching_loss_is_bce_of_own_against_foreign_images():
    torch.manual_seed(0)
    # crop_dropout off: the reference below scores every image with its crops
    model = model_for("re", relevance_matching_weight=0.5, hidden_dropout_prob=0.0, crop_dropout=0.0).train()
    batch = tiny_batch("re")  # samples 0-2 hold an image, 3 does not
    out = model(**batch)
    # every other image of the batch is a negative
    own, foreign = relevance_logits(model, batch, texts=[0, 0, 1, 1, 2, 2], images=[1, 2, 0, 2, 0, 1])
    expected = 0.5 * (bce(own, torch.ones(3)) + bce(foreign, torch.zeros(6)))
    torch.testing.assert_close(out.relevance_matching_loss, expected)
    torch.testing.assert_close(out.loss, out.task_loss + 1.5 * out.router_loss + 0.5 * expected)
    assert model.eval()(**batch).relevance_matching_loss is None  # training only
    single = {k: v[2:] for k, v in batch.items()}  # one image holder: no negative to compare with
    assert model.train()(**single).relevance_matching_loss.item() == 0.0


def test_relevance_matching_loss_skips_foreign_images_like_the_own_one():
    torch.manual_seed(0)
    model = model_for(
        "re",
        relevance_matching_weight=0.5,
        hidden_dropout_prob=0.0,
        relevance_negative_max_similarity=0.99,
        crop_dropout=0.0,  # the reference scores every image with its crops
    ).train()
    batch = tiny_batch("re")  # samples 0-2 hold an image, 3 does not
    batch["image_mask"][1] = batch["image_mask"][0]
    batch["visual_features"][1] = 2 * batch["visual_features"][0]  # the same picture, brighter: cosine 1
    out = model(**batch)
    # (0, 1) and (1, 0) are the same picture: not negatives
    own, foreign = relevance_logits(model, batch, texts=[0, 1, 2, 2], images=[2, 2, 0, 1])
    expected = 0.5 * (bce(own, torch.ones(3)) + bce(foreign, torch.zeros(4)))
    torch.testing.assert_close(out.relevance_matching_loss, expected)
    pair = {k: v[:2] for k, v in batch.items()}  # only the look-alike pair: no negative left, positives only
    torch.testing.assert_close(model(**pair).relevance_matching_loss, 0.5 * bce(own[:2], torch.ones(2)))
    with pytest.raises(ValueError, match="relevance_negative_max_similarity"):
        RAPConfig(task="re", relevance_negative_max_similarity=1.5)


def test_relevance_matching_loss_adds_earlier_batches_pictures_as_negatives():
    torch.manual_seed(0)
    model = model_for(
        "re", relevance_matching_weight=0.5, hidden_dropout_prob=0.0, relevance_negative_memory=2, crop_dropout=0.0
    )
    model.train()
    first, second = tiny_batch("re", seed=1), tiny_batch("re", seed=2)  # samples 0-2 hold an image, 3 does not
    model.eval()(**first)
    assert len(model.rap.negative_memory) == 0  # evaluation remembers nothing
    model.train()(**first)
    memory = model.rap.negative_memory
    assert len(memory) == 2  # the last 2 of the 3 pictures
    torch.testing.assert_close(memory.objects, first["visual_features"][1:3])
    out = model(**second)
    own, foreign = relevance_logits(model, second, texts=[0, 0, 1, 1, 2, 2], images=[1, 2, 0, 2, 0, 1])
    with torch.no_grad():
        states, _ = model.rap._text_features(second["input_ids"], second["attention_mask"], None)
        text, _ = model.rap.relevance_features(states, second["visual_features"])
        remembered = model.rap.relevance_features.visual_projection(first["visual_features"][1:3])
        texts = torch.tensor([0, 0, 1, 1, 2, 2])
        mask = second["attention_mask"].bool()
        earlier = model.rap.relevance_reasoning(
            text[texts], mask[texts], remembered[[0, 1] * 3], first["image_mask"][1:3].bool()[[0, 1] * 3]
        )
    expected = 0.5 * (bce(own, torch.ones(3)) + bce(torch.cat([foreign, earlier]), torch.zeros(12)))
    torch.testing.assert_close(out.relevance_matching_loss, expected)
    torch.testing.assert_close(memory.objects, second["visual_features"][1:3])  # first in, first out
    single = {k: v[2:3] for k, v in second.items()}  # one picture: the memory still gives it negatives
    assert model(**single).relevance_matching_loss.item() > 0.5 * bce(own[2:], torch.ones(1)).item()


def test_text_feature_pass_runs_without_dropout_in_training():
    model = model_for("ner", hidden_dropout_prob=0.0, text_feature_source="encoder").train()
    model.config.text_config.hidden_dropout_prob = 0.5
    for module in model.rap.text_encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    batch = tiny_batch("ner")
    first, second = model(**batch).last_hidden_state, model(**batch).last_hidden_state
    assert not torch.allclose(first, second)  # the prompted pass does run dropout
    cls = [
        model.rap(
            batch["input_ids"],
            batch["attention_mask"],
            visual_features=batch["visual_features"],
            image_mask=batch["image_mask"],
        ).text_cls
        for _ in range(2)
    ]
    torch.testing.assert_close(cls[0], cls[1])  # E_t and the [CLS] target of Eq. 22 do not
    assert model.rap.text_encoder.training  # and the encoder's mode is restored


def test_word_start_labelled_ignore_index_is_left_out_of_the_crf():
    model = model_for("ner").eval()
    batch = tiny_batch("ner")
    ignored = batch["labels"].clone()
    ignored[0, 3] = -100  # a word start the loss must skip
    skipped_mask = batch["word_start_mask"].clone()
    skipped_mask[0, 3] = 0
    with_ignore = model(**{**batch, "labels": ignored}).task_loss
    without_word = model(**{**batch, "labels": ignored, "word_start_mask": skipped_mask}).task_loss
    torch.testing.assert_close(with_ignore, without_word)
    as_tag_zero = batch["labels"].clone()
    as_tag_zero[0, 3] = 0
    assert not torch.allclose(with_ignore, model(**{**batch, "labels": as_tag_zero}).task_loss)


def test_prefixes_start_at_the_configured_share_of_the_encoder_scale():
    from rap_hf.modeling_rap import encoder_key_value_rms

    torch.manual_seed(0)
    model = model_for("ner", prompt_init_scale=0.5, hidden_dropout_prob=0.0)
    encoder_rms = model.rap.prompt_projection.match_encoder_scale(model.rap.text_encoder)
    assert torch.allclose(encoder_rms, encoder_key_value_rms(model.rap.text_encoder))
    prefixes = model.rap.prompt_projection(torch.randn(4, 9, 32), torch.ones(4, 9, dtype=torch.bool))
    prefix_rms = torch.stack([t.pow(2).mean().sqrt() for layer in prefixes for t in layer])
    ratio = prefix_rms / encoder_rms
    assert ((ratio > 0.35) & (ratio < 0.7)).all(), ratio


# ---------------------------------------------------------------------------------------------------------------------
# Shapes, masks, missing images
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["ner", "re"])
@pytest.mark.parametrize("with_pixels", [False, True])
def test_forward_shapes_with_padding_crops_and_missing_image(task, with_pixels):
    model = model_for(task)
    batch = tiny_batch(task, with_pixels=with_pixels)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    assert out.routing_weights.shape == (4, model.config.routing_vector_size)
    assert out.relevance.shape == (4,) and out.relevance[3].item() == 0.0  # sample 3 has no image
    assert 0 < out.relevance[0].item() < 1
    if task == "ner":
        words = batch["word_start_mask"].sum(1)
        assert out.logits.shape == (4, int(words.max()), 5)
        for row in range(4):
            assert (out.predictions[row, : words[row]] >= 0).all()
            assert (out.predictions[row, words[row] :] == -100).all()
    else:
        assert out.logits.shape == (4, 3)


def test_text_only_input_and_batch_independence():
    model = model_for("ner")
    batch = tiny_batch("ner")
    text_only = {k: v for k, v in batch.items() if k not in ("visual_features", "image_mask")}
    out = model(**text_only)
    assert (out.relevance == 0).all()
    single = {k: v[1:2] for k, v in batch.items()}
    full = model(**batch)
    # Padding and other samples do not change a sample's emissions (the router loss is a batch term, logits are not).
    words = int(batch["word_start_mask"][1].sum())
    torch.testing.assert_close(model(**single).logits[0, :words], full.logits[1, :words], atol=1e-5, rtol=1e-4)


def test_pixel_values_shape_is_checked():
    model = model_for("re")
    batch = tiny_batch("re", with_pixels=True)
    batch["pixel_values"] = batch["pixel_values"][:, :2]
    with pytest.raises(ValueError, match="pixel_values must have shape"):
        model(**batch)


def test_re_marker_fallback_finds_entity_positions():
    model = model_for("re", subject_marker_token_id=7, object_marker_token_id=8)
    batch = tiny_batch("re")
    batch["input_ids"][:, 1], batch["input_ids"][:, 3] = 7, 8
    expected = model(**batch).logits
    del batch["entity_positions"]
    torch.testing.assert_close(model(**batch).logits, expected)
    batch["input_ids"][0, 3] = 9
    with pytest.raises(ValueError, match="marker"):
        model(**batch)


# ---------------------------------------------------------------------------------------------------------------------
# Gradients and freezing
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["ner", "re"])
@pytest.mark.parametrize("freeze_text", [False, True])
def test_gradients_reach_every_trainable_parameter(task, freeze_text):
    # tanh gate: the rectified one is exactly 0 for images judged irrelevant, and then the CFU learns nothing from them
    # every crop seen: a picture whose crops crop_dropout hid is one object, and pooling one object has no gradient
    model = model_for(
        task, freeze_text_encoder=freeze_text, freeze_vision_encoder=False, relevance_gate="tanh", crop_dropout=0.0
    ).train()
    model(**tiny_batch(task, with_pixels=True)).loss.backward()
    for name, parameter in model.named_parameters():
        frozen = freeze_text and ".text_encoder." in name
        if frozen:
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad, name
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_frozen_vision_encoder_gets_no_gradient_and_keeps_batchnorm_statistics():
    model = model_for("ner").train()
    before = {n: b.clone() for n, b in model.named_buffers() if ".vision_encoder." in n and "running" in n}
    model(**tiny_batch("ner", with_pixels=True)).loss.backward()
    assert before and all(torch.equal(b, dict(model.named_buffers())[n]) for n, b in before.items())
    assert model.training and not model.rap.vision_encoder.training
    vision = [p for n, p in model.named_parameters() if ".vision_encoder." in n]
    assert vision and all(not p.requires_grad and p.grad is None for p in vision)


# ---------------------------------------------------------------------------------------------------------------------
# Ablation switches (Tables 4-6)
# ---------------------------------------------------------------------------------------------------------------------
def test_relevance_reasoning_off_gives_gate_exactly_one():
    model = model_for("ner", use_relevance_reasoning=False)
    out = model(**tiny_batch("ner"))
    assert out.relevance is None and torch.equal(out.relevance_gate, torch.ones(4))
    assert model.rap.relevance_reasoning is None


@pytest.mark.parametrize("removed", ["rau", "fsru", "cfu"])
def test_removing_a_unit_removes_it_from_every_layer(removed):
    units = [u for u in ("rau", "fsru", "cfu") if u != removed]
    model = model_for("re", fusion_units=units, routing_layers=3)
    assert model(**tiny_batch("re")).routing_weights.shape == (4, 2 * 2 * 2 + 2)
    kinds = {type(unit).__name__ for layer in model.rap.dynamic_fusion.layers for unit in layer.units}
    assert len(kinds) == 2 and all(len(layer.units) == 2 for layer in model.rap.dynamic_fusion.layers)


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6])
def test_routing_depth(layers):
    model = model_for("ner", routing_layers=layers)
    assert len(model.rap.dynamic_fusion.layers) == layers
    assert model(**tiny_batch("ner")).routing_weights.shape == (4, 9 * (layers - 1) + 3)


def test_gamma_zero_drops_router_loss_and_gamma_weights_it():
    batch = tiny_batch("re")
    torch.manual_seed(1)
    off = model_for("re", path_regularization_weight=0.0)(**batch)
    assert off.router_loss > 0 and torch.equal(off.loss, off.task_loss)
    torch.manual_seed(1)
    on = model_for("re", path_regularization_weight=1.5)(**batch)
    torch.testing.assert_close(on.loss, on.task_loss + 1.5 * on.router_loss)


def test_text_only_baseline_has_no_multimodal_parts():
    model = model_for("ner", multimodal=False)
    out = model(**tiny_batch("ner"))
    assert out.routing_weights is None and out.router_loss is None and torch.equal(out.loss, out.task_loss)
    assert not hasattr(model.rap, "dynamic_fusion")


def test_paper_architecture_and_the_faster_defaults():
    ner, re_ = RAPConfig.paper_architecture(task="ner"), RAPConfig.paper_architecture(task="re")
    assert (ner.routing_layers, re_.routing_layers) == (4, 3)  # Table 4
    assert ner.fusion_hidden_size == ner.text_config.hidden_size == 768 and ner.relevance_dim == 256
    assert ner.text_feature_source == "encoder" and ner.relevance_gate == "tanh" and ner.relevance_matching_weight == 0
    assert ner.relevance_task_gradient  # the paper trains beta through the task loss
    assert ner.relevance_activation == "none"  # Algorithm 1: beta = W_s r_g^N + b_s
    assert ner.num_visual_objects == 3 and ner.num_visual_slots == 4  # m = 3 objects (Sec. 4.2)
    assert not (ner.relevance_own_projections or ner.relevance_feature_norm or ner.relevance_edge_scaling)
    assert not ner.prompt_layer_norm  # Eq. 23
    assert ner.path_regularization_weight == 1.5 and ner.graph_iterations == 2 and ner.num_crops == 3
    assert ner.fusion_units == ["rau", "fsru", "cfu"] and ner.vision_config.depths == [3, 4, 23, 3]
    assert ner.vision_feature_size == 2048 and ner.fusion_intermediate_size == 2 * 768
    assert RAPConfig.paper_architecture(task="ner", routing_layers=6).routing_layers == 6  # explicit fields win
    default = RAPConfig(task="ner")  # docs/design.md: the speed levers of docs/benchmarks.md
    assert (default.fusion_hidden_size, default.relevance_dim, default.routing_layers) == (192, 192, 2)
    assert default.text_feature_source == "embeddings" and default.relevance_gate == "veto"
    assert not default.relevance_task_gradient and default.relevance_matching_weight == 2
    with pytest.raises(ValueError, match="fusion_units"):
        RAPConfig(fusion_units=["rau", "moe"])


# ---------------------------------------------------------------------------------------------------------------------
# Prefix injection (Eq. 24)
# ---------------------------------------------------------------------------------------------------------------------
def encoder_and_inputs(config_class, attn_implementation):
    config = config_class(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=99,
        attn_implementation=attn_implementation,
    )
    encoder = AutoModel.from_config(config, add_pooling_layer=False).eval()
    input_ids = torch.randint(5, 99, (2, 6))
    attention_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    if config_class is RobertaConfig:
        input_ids[1, 4:] = config.pad_token_id
    prefixes = tuple((torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)) for _ in range(2))
    return encoder, input_ids, attention_mask, prefixes


@pytest.mark.parametrize("config_class", [BertConfig, RobertaConfig])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_changes_output_and_does_not_shift_positions(config_class, attn):
    encoder, input_ids, attention_mask, prefixes = encoder_and_inputs(config_class, attn)
    plain = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    prompted = run_prefixed_encoder(encoder, prefixes, input_ids, attention_mask)
    real = attention_mask.bool()
    assert (prompted - plain)[real].abs().max() > 1e-3  # a silently ignored prefix would fail here
    # Prefix keys that no token may attend to leave the output unchanged only if positions were not shifted.
    masked = run_prefixed_encoder(encoder, [(k, v) for k, v in prefixes], input_ids, attention_mask * 1)
    torch.testing.assert_close(masked, prompted)  # fresh cache per call: same input, same output
    looked_up = encoder.get_input_embeddings()(input_ids)  # RAP's E_t lookup, handed over instead of the ids
    torch.testing.assert_close(
        run_prefixed_encoder(encoder, prefixes, input_ids, attention_mask, None, looked_up), prompted, atol=0, rtol=0
    )
    blocked_mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), attention_mask], 1)
    from transformers import DynamicCache

    from rap_hf.modeling_rap import encoder_cache_argument, unshifted_position_ids

    cache = DynamicCache(config=encoder.config)
    for i, (k, v) in enumerate(prefixes):
        cache.update(k, v, i)
    blocked = encoder(
        input_ids=input_ids,
        attention_mask=blocked_mask,
        position_ids=unshifted_position_ids(encoder, input_ids),
        **{encoder_cache_argument(encoder): cache},
    ).last_hidden_state
    torch.testing.assert_close(blocked[real], plain[real], atol=1e-5, rtol=1e-4)


class CacheIgnoringBert(BertModel):
    """Stands for a future transformers whose encoder accepts but ignores the cache argument."""

    def forward(self, *args, cache=None, **kwargs):
        kwargs.pop("attention_mask", None)
        return super().forward(*args, **kwargs)


def test_silently_ignored_prefix_is_an_error():
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99)
    encoder = CacheIgnoringBert(config, add_pooling_layer=False).eval()
    prefixes = tuple((torch.randn(1, 4, 3, 8), torch.randn(1, 4, 3, 8)) for _ in range(2))
    with pytest.raises(RuntimeError, match="did not read the prefix cache"):
        run_prefixed_encoder(encoder, prefixes, torch.randint(5, 99, (1, 4)), torch.ones(1, 4, dtype=torch.long))


def test_rap_works_with_roberta_and_sdpa():
    text = dict(
        model_type="roberta",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=99,
        attn_implementation="sdpa",
    )
    model = RAPForMultimodalRE(tiny_config("re", text_config=text)).eval()
    assert torch.isfinite(model(**tiny_batch("re")).loss)


def test_gradient_checkpointing_is_refused():
    with pytest.raises(ValueError, match="gradient checkpointing"):
        model_for("ner").gradient_checkpointing_enable()


def test_rectified_gate_shuts_images_judged_irrelevant():
    model = model_for("re", relevance_gate="rectified")
    batch = tiny_batch("re")
    out = model(**batch)
    scores = torch.logit(out.relevance[:3])  # beta = sigmoid(score) for the three samples with an image
    torch.testing.assert_close(out.relevance_gate[:3], torch.tanh(scores.clamp(min=0)))
    assert out.relevance_gate[3] == 0  # no image
    without = {k: v for k, v in batch.items() if k not in ("visual_features", "image_mask")}
    with torch.no_grad():
        model.rap.relevance_reasoning.graph.score.bias.fill_(-50.0)  # every image judged irrelevant
    torch.testing.assert_close(model(**batch).logits, model(**without).logits)  # exactly as without images
    with torch.no_grad():
        model.rap.relevance_reasoning.graph.score.bias.fill_(50.0)  # every image judged relevant: the gate opens
    assert not torch.allclose(model(**batch).logits[:3], model(**without).logits[:3])


def test_veto_gate_is_open_until_the_image_is_judged_irrelevant():
    model = model_for("re", relevance_gate="veto")
    batch = tiny_batch("re")
    out = model(**batch)
    scores = torch.logit(out.relevance[:3])
    torch.testing.assert_close(out.relevance_gate[:3], 1 - torch.tanh((-scores).clamp(min=0)))
    assert out.relevance_gate[3] == 0  # no image
    without = {k: v for k, v in batch.items() if k not in ("visual_features", "image_mask")}
    with torch.no_grad():
        model.rap.relevance_reasoning.graph.score.bias.fill_(0.0)
        model.rap.relevance_reasoning.graph.score.weight.zero_()  # undecided (beta = 0.5): fully open
    assert torch.equal(model(**batch).relevance_gate[:3], torch.ones(3))
    with torch.no_grad():
        model.rap.relevance_reasoning.graph.score.bias.fill_(-50.0)  # judged irrelevant: exactly as without images
    torch.testing.assert_close(model(**batch).logits, model(**without).logits)


def test_detached_gate_leaves_beta_to_the_matching_loss():
    """relevance_task_gradient=False: the task loss trains the fusion but not beta; the matching loss still does."""

    def relevance_gradients(**overrides) -> dict[str, float]:
        torch.manual_seed(0)
        model = model_for("ner", relevance_gate="tanh", path_regularization_weight=0.0, **overrides).train()
        out = model(**tiny_batch("ner"))
        out.task_loss.backward(retain_graph=True)
        task = sum(p.grad.abs().sum().item() for p in model.rap.relevance_reasoning.parameters() if p.grad is not None)
        fusion = sum(p.grad.abs().sum().item() for p in model.rap.dynamic_fusion.parameters() if p.grad is not None)
        model.zero_grad()
        out.relevance_matching_loss.backward()
        matching = sum(p.grad.abs().sum().item() for p in model.rap.relevance_reasoning.parameters())
        return {"task": task, "fusion": fusion, "matching": matching}

    coupled = relevance_gradients(relevance_task_gradient=True)
    detached = relevance_gradients(relevance_task_gradient=False)
    assert coupled["task"] > 0 and detached["task"] == 0
    assert detached["fusion"] > 0 and detached["matching"] > 0
    assert detached["matching"] == pytest.approx(coupled["matching"], rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Reliability round 3, item 8: sizes and depths are bounded before anything is built
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, bound",
    [
        ("routing_layers", 10**6, "MAX_ROUTING_LAYERS"),
        ("graph_iterations", 1000, "MAX_GRAPH_ITERATIONS"),
        ("prompt_length", 10**4, "MAX_PROMPT_LENGTH"),
        ("relevance_dim", 10**6, "MAX_LAYER_SIZE"),
        ("fusion_hidden_size", 2**20, "MAX_LAYER_SIZE"),
        ("fusion_intermediate_size", 10**7, "MAX_LAYER_SIZE"),
        ("prompt_source_length", 10**7, "MAX_LAYER_SIZE"),
        ("num_crops", 10**5, "MAX_NUM_CROPS"),
        ("relevance_negative_memory", 10**6, "MAX_NEGATIVE_MEMORY"),
        ("routing_layers", 0, "MAX_ROUTING_LAYERS"),
        ("prompt_length", 0, "MAX_PROMPT_LENGTH"),
        ("fusion_num_heads", 0, "MAX_LAYER_SIZE"),  # the default fusion width divides by it
        ("text_config.num_hidden_layers", 10**6, "TEXT_CONFIG_BOUNDS"),
        ("text_config.hidden_size", 10**7, "TEXT_CONFIG_BOUNDS"),
    ],
)
def test_config_refuses_absurd_sizes_naming_the_field_and_the_bound(field, value, bound):
    import time

    from rap_hf import configuration_rap

    kwargs = {field: value}
    if field.startswith("text_config."):
        kwargs = {"text_config": {**TINY_TEXT, field.split(".")[1]: value}}
    limit = getattr(configuration_rap, bound)
    limit = limit[field.split(".")[1]][1] if isinstance(limit, dict) else limit
    expected = rf"RAPConfig\.{re.escape(field)} must be an integer in \[\d+, {limit}\] \({bound}"
    start = time.perf_counter()
    with pytest.raises(ValueError, match=expected) as info:
        tiny_config("ner", **kwargs)
    assert f"got {value}" in str(info.value) and time.perf_counter() - start < 5  # nothing was built


def test_config_bounds_leave_room_for_real_models():
    from rap_hf import configuration_rap as bounds

    assert (bounds.MAX_ROUTING_LAYERS, bounds.MAX_GRAPH_ITERATIONS, bounds.MAX_PROMPT_LENGTH) == (64, 64, 512)
    assert bounds.MAX_LAYER_SIZE == 65536
    config = tiny_config(
        "ner",
        routing_layers=64,
        graph_iterations=64,
        prompt_length=512,
        prompt_source_length=4096,
        relevance_dim=65536,
        num_crops=0,
    )
    assert config.routing_layers == 64 and config.prompt_length == 512
    paper = RAPConfig.paper_architecture(task="ner")  # bert-base sizes: d = 768, L = 4
    assert paper.fusion_hidden_size == 768 and paper.routing_layers == 4


def test_crop_dropout_hides_crops_in_training_only():
    """`crop_dropout`: in training a share of the samples with a picture lose their crops (the picture stays); the
    same model in eval mode reads every crop."""
    from rap_hf.modeling_rap import drop_crops

    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(drop_crops(mask, 0.0), mask)
    assert drop_crops(mask, 1.0).tolist() == [
        [True, False, False, False],
        [False, True, True, True],
        [True] + [False] * 3,
    ]
    torch.manual_seed(0)
    many = drop_crops(torch.ones(2000, 4, dtype=torch.bool), 0.3)
    assert 0.25 < (~many[:, 1]).float().mean() < 0.35 and many[:, 0].all()

    config = tiny_config("ner", crop_dropout=1.0)
    model = RAPForMultimodalNER(config)
    batch = tiny_batch("ner")
    seen = []
    model.rap.relevance_reasoning.register_forward_hook(lambda module, args, out: seen.append(args[3].clone()))
    model.train()
    model(**batch)
    training, seen[:] = seen[0], []  # the first call of a forward scores the batch's own pictures
    model.eval()
    model(**batch)
    given = batch["image_mask"].bool()
    assert torch.equal(training[:, 0], given[:, 0]) and not training[:, 1:].any()
    assert torch.equal(seen[0], given)
    with pytest.raises(ValueError, match="crop_dropout must be in"):
        tiny_config("ner", crop_dropout=1.5)


def test_trained_beta_ranks_a_tweets_own_picture_above_another_topics():
    """RAP's relevance reasoning learns (issue 23 item 13): a tiny model trained on tweets that name one of 8 topics,
    each with a picture of its topic (features: the topic's vector plus noise), scores held-out tweets' own pictures
    above pictures of another topic (ROC AUC of beta); the same model untrained does not."""
    from sklearn.metrics import roc_auc_score

    generator = torch.Generator().manual_seed(0)
    topics = torch.randn(8, 16, generator=generator)

    def batch(size: int) -> tuple[dict, torch.Tensor]:
        topic = torch.randint(0, 8, (size,), generator=generator)
        input_ids = torch.randint(20, 99, (size, 9), generator=generator)
        input_ids[torch.arange(size), torch.randint(1, 9, (size,), generator=generator)] = 5 + topic
        features = torch.zeros(size, 4, 16)
        features[:, 0] = topics[topic] + 0.3 * torch.randn(size, 16, generator=generator)
        mask = torch.zeros(size, 4, dtype=torch.long)
        mask[:, 0] = 1
        return {"input_ids": input_ids, "visual_features": features, "image_mask": mask}, topic

    def auc(model) -> float:
        model.eval()
        inputs, topic = batch(200)
        other = inputs["visual_features"].clone()
        shift = torch.randint(1, 8, (200,), generator=generator)  # another topic's picture
        other[:, 0] = topics[(topic + shift) % 8] + 0.3 * torch.randn(200, 16, generator=generator)
        with torch.no_grad():
            own_beta = model(**inputs).relevance
            other_beta = model(**{**inputs, "visual_features": other}).relevance
        return roc_auc_score([1] * 200 + [0] * 200, torch.cat([own_beta, other_beta]).tolist())

    torch.manual_seed(0)
    model = RAPForMultimodalNER(tiny_config("ner"))
    untrained = auc(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        inputs, _ = batch(16)
        loss = model(**inputs, labels=torch.zeros(16, 9, dtype=torch.long)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert untrained < 0.75 and auc(model) >= 0.9


@pytest.mark.parametrize("task", ["ner", "re"])
def test_one_seed_gives_bit_identical_gradients_on_two_threads(task):
    # The matching loss repeats every text once per foreign image: on CPU the backward of `text[rows]` with repeated
    # rows added them in a thread-dependent order, so two runs of the main job with one seed ended apart.
    torch.manual_seed(0)
    model = model_for(task, relevance_matching_weight=1.0, fusion_hidden_size=64, prompt_source_length=48).train()
    batch = tiny_batch(task, batch=8, length=48, seed=1)
    batch["image_mask"][:] = 1  # every sample holds a picture: 7 foreign pictures each
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gradients = []
        for _ in range(12):  # a race shows in some passes only
            torch.manual_seed(0)  # the same dropout masks
            model.zero_grad()
            model(**batch).loss.backward()
            gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    finally:
        torch.set_num_threads(threads)
    differing = {n for grads in gradients[1:] for n in grads if not torch.equal(grads[n], gradients[0][n])}
    assert differing == set()
