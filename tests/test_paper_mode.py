"""`RAPConfig.paper_architecture()` against the paper, equation by equation: every module whose computation paper mode
changes is compared with a direct transcription of the equation on small float64 tensors."""

import math

import pytest
import torch

from rap_hf import RAPConfig, RAPForMultimodalNER, RAPForMultimodalRE
from rap_hf.modeling_rap import (
    ModalityRelevanceReasoning,
    PromptProjection,
    RelevanceGraphReasoning,
    select_visual_objects,
)

from conftest import tiny_batch, tiny_config


def paper_config(task: str = "ner", **overrides) -> RAPConfig:
    """The paper's fields (`RAPConfig.paper_fields`) on the tiny sizes of the unit tests (d = 32, m = 16)."""
    return tiny_config(
        task, hidden_dropout_prob=0.0, **{**RAPConfig.paper_fields(task, 32), "relevance_dim": 16, **overrides}
    )


def paper_model(task: str = "ner", **overrides):
    config = paper_config(task, **overrides)
    return (RAPForMultimodalNER if task == "ner" else RAPForMultimodalRE)(config).double()


def eq1(W: torch.Tensor, mu: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """r(mu, v, W) = W |mu - v|^2 / ||W |mu - v|^2||_2."""
    raw = W @ (mu - v) ** 2
    return raw / raw.norm()


def eq6_to_8(graph: RelevanceGraphReasoning, nodes: torch.Tensor) -> torch.Tensor:
    """Algorithm 1's loop over the real nodes (r_g first): Eq. 6 (no scaling), Eq. 7, Eq. 8; returns r^N."""
    for n in range(len(graph.source)):
        src, tgt, upd = graph.source[n].weight, graph.target[n].weight, graph.update[n].weight
        updated = []
        for s in range(len(nodes)):
            logits = torch.stack([(src @ nodes[s]) @ (tgt @ nodes[t]) for t in range(len(nodes))])
            edges = torch.exp(logits) / torch.exp(logits).sum()  # Eq. 6
            updated.append(torch.relu(upd @ sum(edges[t] * nodes[t] for t in range(len(nodes)))))  # Eq. 7-8
        nodes = torch.stack(updated)
    return nodes


def test_paper_mode_sets_every_field_the_paper_writes():
    config = paper_config()
    assert config.relevance_activation == "none" and config.relevance_gate == "tanh"  # Algorithm 1, Eq. 14
    assert config.visual_objects == "crops" and config.num_visual_objects == 3  # Sec. 4.2: m = 3
    assert not config.relevance_own_projections and not config.relevance_feature_norm  # Sec. 3.2, Eq. 1-5
    assert not config.relevance_edge_scaling and not config.prompt_layer_norm  # Eq. 6, Eq. 23
    assert config.relevance_matching_weight == 0 and config.relevance_task_gradient  # Eq. 20
    model = paper_model()
    assert model.rap.relevance_features is None  # one E_t, E_v for relevance reasoning and fusion
    assert isinstance(model.rap.prompt_projection.input_norm, torch.nn.Identity)


def test_eq6_as_written_without_the_sqrt_m_scale():
    torch.manual_seed(0)
    graph = RelevanceGraphReasoning(relevance_dim=3, iterations=2, edge_scaling=False).double()
    nodes = torch.rand(1, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])  # node 3 is padding
    r_n = eq6_to_8(graph, nodes[0, :3])
    beta = graph.score.weight[0] @ r_n[0] + graph.score.bias[0]  # Algorithm 1: W_s r_g^N + b_s
    torch.testing.assert_close(graph(nodes, mask)[0], beta)
    scaled = RelevanceGraphReasoning(relevance_dim=3, iterations=2, edge_scaling=True).double()
    scaled.load_state_dict(graph.state_dict())
    assert not torch.allclose(scaled(nodes, mask), graph(nodes, mask))  # the default's scale is a real difference


def test_eq1_to_eq5_as_written_without_feature_normalisation():
    torch.manual_seed(0)
    config = paper_config()
    reasoning = ModalityRelevanceReasoning(config).double()
    text, visual = torch.randn(1, 3, 32, dtype=torch.float64), torch.randn(1, 2, 32, dtype=torch.float64)
    text_mask, visual_mask = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    u_bar = reasoning.text_pooling(text, text_mask)[0]  # SelfAttention(E_t): a documented choice
    v_bar = reasoning.visual_pooling(visual, visual_mask)[0]
    r_g = eq1(reasoning.global_relevance.weight.weight, u_bar, v_bar)  # Eq. 2
    lam, r_l = config.relevance_temperature, []
    for i in range(3):
        cos = torch.stack([torch.cosine_similarity(text[0, i], visual[0, j], dim=0).clamp(min=0) for j in range(2)])
        alpha = torch.softmax(lam * cos / (cos.pow(2).sum() + 1e-8).sqrt(), dim=0)  # Eq. 3 (eps: all cos <= 0)
        attended = alpha[0] * visual[0, 0] + alpha[1] * visual[0, 1]  # Eq. 4
        r_l.append(eq1(reasoning.local_relevance.weight.weight, text[0, i], attended))  # Eq. 5
    r_n = eq6_to_8(reasoning.graph, torch.stack([r_g, *r_l]))
    beta = reasoning.graph.score.weight[0] @ r_n[0] + reasoning.graph.score.bias[0]
    torch.testing.assert_close(reasoning(text, text_mask, visual, visual_mask)[0], beta)
    # no hidden normalisation: scaling the features changes beta (the default mode is scale-invariant)
    assert not torch.allclose(reasoning(3 * text, text_mask, visual, visual_mask)[0], beta)


def test_eq23_as_written_without_layer_norm():
    torch.manual_seed(0)
    projection = PromptProjection(paper_config()).double().eval()
    fused, mask = torch.randn(1, 5, 32, dtype=torch.float64), torch.ones(1, 5, dtype=torch.bool)
    padded = torch.zeros(1, 16, 32, dtype=torch.float64)
    padded[:, :5] = fused
    x_mli = projection.length_mapping(padded.transpose(1, 2)).transpose(1, 2)  # X'_mli: length mapped to m_p
    w_in, w_out = projection.input_projection, projection.output_projection
    x_prompt = w_out(torch.relu(w_in(x_mli)))  # Eq. 23
    keys_layer0 = x_prompt.view(1, 3, 4, 4, 8)[:, :, 0].permute(0, 2, 1, 3)  # (batch, heads, m_p, head_dim)
    torch.testing.assert_close(projection(fused, mask)[0][0], keys_layer0)


def test_m_is_three_crop_objects_and_a_picture_without_crops_is_its_own_object():
    batch = tiny_batch("ner")  # image masks: image + 3 crops, image + 1 crop, image alone, nothing
    features, mask = batch["visual_features"].double(), batch["image_mask"].bool()
    objects, object_mask = select_visual_objects(features, mask, "crops")
    assert objects.shape[1] == 3
    torch.testing.assert_close(objects[:2], features[:2, 1:])  # the crops, not the whole image
    assert object_mask.tolist() == [[True] * 3, [True, False, False], [True, False, False], [False] * 3]
    torch.testing.assert_close(objects[2, 0], features[2, 0])  # no crop: the whole image is the one object
    model = paper_model().eval()
    changed = dict(batch, visual_features=batch["visual_features"].double().clone())
    changed["visual_features"][0, 0] += 5.0  # the whole image of a sample with crops: not read in paper mode
    with torch.no_grad():
        before, after = model(**dict(batch, visual_features=features)), model(**changed)
    torch.testing.assert_close(after.relevance, before.relevance)
    torch.testing.assert_close(after.logits, before.logits)


def test_beta_is_algorithm1_linear_score_and_the_gate_is_tanh_of_it():
    torch.manual_seed(0)
    model = paper_model("re").eval()
    batch = tiny_batch("re")
    batch["visual_features"] = batch["visual_features"].double()
    rap = model.rap
    with torch.no_grad():
        out = model(**batch)
        states, _ = rap._text_features(batch["input_ids"], batch["attention_mask"], None)
        objects, object_mask = select_visual_objects(batch["visual_features"], batch["image_mask"].bool(), "crops")
        text, visual = rap.semantic_features(states, objects)  # the same E_t, E_v as the fusion units read
        score = rap.relevance_reasoning(text, batch["attention_mask"].bool(), visual, object_mask)
    has_image = batch["image_mask"].bool().any(-1)
    torch.testing.assert_close(out.relevance[has_image], score[has_image])  # beta <- W_s r_g^N + b_s, no squashing
    assert out.relevance[~has_image].eq(0).all()
    torch.testing.assert_close(out.relevance_gate, torch.tanh(out.relevance))  # Eq. 14: R-Gate(beta) = tanh(beta)


@pytest.mark.parametrize("mode", ["paper", "default"])
def test_the_task_loss_reaches_beta_in_paper_mode_only(mode):
    torch.manual_seed(0)
    config = paper_config("re") if mode == "paper" else tiny_config("re", hidden_dropout_prob=0.0)
    model = RAPForMultimodalRE(config).train()
    model.rap.relevance_reasoning.graph.score.bias.data.fill_(0.5)  # beta away from tanh's symmetric point
    out = model(**tiny_batch("re"))
    out.task_loss.backward()  # Eq. 21 alone: no router or matching term
    gradient = model.rap.relevance_reasoning.graph.score.weight.grad
    if mode == "paper":
        assert gradient is not None and gradient.abs().sum() > 0 and math.isfinite(gradient.abs().sum())
    else:  # the default detaches the gate: beta learns from the matching loss alone (docs/design.md)
        assert gradient is None or gradient.abs().sum() == 0


def test_paper_mode_trains_on_the_corpus_crops_and_the_default_on_mixed_objects():
    """The paper always has its m grounded crops; the default also trains on the grounder's objects and the picture
    alone, all three kinds in one run (docs/design.md, "Grounding")."""
    default, paper = RAPConfig(), RAPConfig.paper_architecture()
    assert 0 < default.grounded_objects_share < 1 and 0 < default.crop_dropout < 1
    assert paper.grounded_objects_share == 0 and paper.crop_dropout == 0
