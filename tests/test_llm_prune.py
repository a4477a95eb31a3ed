"""Cutting a student out of a Llama teacher (distill.llm.prune): importance on models whose unimportant parts
are made by hand (an identity layer, silent KV groups and neurons, a loud and a dead channel), Block
Influence against hidden states by hand, cut models whose weights are the teacher's slices and whose logits
equal the teacher's when only silent parts go, parameter budgets met exactly, and the errors."""

from __future__ import annotations

import copy
from fractions import Fraction

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from distill.errors import DistillError  # noqa: E402
from distill.llm.prune import (  # noqa: E402
    cut_causal_lm,
    cut_parameters,
    cut_to,
    head_importance,
    hidden_importance,
    layer_importance,
    neuron_importance,
    sizes_for_params,
    sizes_of,
)

VOCAB = 40
HEAD_DIM = 8  # 4 heads of 8 on a hidden size of 24: head_dim is not hidden_size / heads


def llama(groups: int = 2, layers: int = 4, tied: bool = False, bias: bool = False) -> LlamaForCausalLM:
    """A tiny Llama (hidden 24, 4 query heads, `groups` KV heads, 20 neurons) with large random weights."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=24, num_hidden_layers=layers, intermediate_size=20, num_attention_heads=4,
        num_key_value_heads=groups, head_dim=HEAD_DIM, max_position_embeddings=32, tie_word_embeddings=tied,
        attention_bias=bias, mlp_bias=bias,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0, 0.3)
    return model.eval()


def batches(count: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (3, 10), generator=gen) for _ in range(count)]


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def same_logits(a: nn.Module, b: nn.Module) -> bool:
    ids = batches(1)[0]
    return torch.allclose(logits(a, ids), logits(b, ids), atol=1e-5, rtol=1e-4)


def top(scores: torch.Tensor, keep: int) -> list[int]:
    return sorted(scores.topk(keep).indices.tolist())


def rows(units: list[int], width: int) -> list[int]:
    return [u * width + j for u in units for j in range(width)]


# ---- importance, and cuts that remove only what does nothing ------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_every_importance_by_hand_on_one_layer(groups: int) -> None:
    model = llama(groups=groups, layers=1)
    model.set_attn_implementation("eager")  # attention weights to compute the heads' outputs with
    data = batches()
    ids = torch.cat(data)  # the batches together: one mean over all their tokens
    layer, ratio = model.model.layers[0], 4 // groups
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
        h0 = model.model.embed_tokens(ids)
        x1 = layer.input_layernorm(h0)
        values = layer.self_attn.v_proj(x1).unflatten(-1, (groups, HEAD_DIM)).transpose(1, 2)
        heads = out.attentions[0] @ values.repeat_interleave(ratio, dim=1)  # [batch, heads, tokens, head_dim]
        mid = h0 + layer.self_attn.o_proj(heads.transpose(1, 2).flatten(2))
        x2 = layer.post_attention_layernorm(mid)
        inner = nn.functional.silu(layer.mlp.gate_proj(x2)) * layer.mlp.up_proj(x2)
        h1 = mid + layer.mlp.down_proj(inner)
        assert torch.allclose(model.lm_head(model.model.norm(h1)), out.logits, atol=1e-5)  # the layer, by hand
    influence = 1 - torch.cosine_similarity(h0, h1, dim=-1).mean()
    channels = sum(t.abs().mean((0, 1)) for t in (x1, x2, model.model.norm(h1)))
    per_group = heads.norm(dim=-1).mean((0, 2)).view(groups, ratio).sum(-1)
    assert layer_importance(model, data) == pytest.approx([influence.item()], abs=1e-6)
    assert torch.allclose(hidden_importance(model, data), channels, atol=1e-5)
    assert torch.allclose(head_importance(model, data), per_group[None], atol=1e-5)
    assert torch.allclose(neuron_importance(model, data), inner.abs().mean((0, 1))[None], atol=1e-6)


def test_an_identity_layer_has_no_block_influence_and_is_the_one_dropped() -> None:
    model = llama()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    influence = layer_importance(model, batches())
    assert len(influence) == 4
    assert abs(influence[2]) < 1e-5
    assert min(influence[i] for i in (0, 1, 3)) > 1e-3
    student, info = cut_to(model, batches(), sizes={"num_hidden_layers": 3})
    assert info["layers_kept"] == [0, 1, 3]
    assert student.config.num_hidden_layers == 3 and len(student.model.layers) == 3
    assert same_logits(student, model)  # the layer removed changed nothing


def test_block_influence_by_hand_counts_only_real_tokens_and_keeps_the_training_mode() -> None:
    model = llama().train()
    ids = batches(1)[0]
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # right padding: the real tokens' hidden states do not see it
    # hidden_states[i] is layer i's input, but the last one is normed: an identity fifth layer shows layer 3's output
    extended = copy.deepcopy(model)
    extended.model.layers.append(copy.deepcopy(model.model.layers[0]))
    extended.config.num_hidden_layers = 5
    with torch.no_grad():
        extended.model.layers[4].self_attn.o_proj.weight.zero_()
        extended.model.layers[4].mlp.down_proj.weight.zero_()
        states = extended(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        states = states.hidden_states
    real = mask.bool()
    by_hand = [1 - torch.cosine_similarity(states[i][real], states[i + 1][real]).mean().item() for i in range(4)]
    assert layer_importance(model, [{"input_ids": ids, "attention_mask": mask}]) == pytest.approx(by_hand, abs=1e-5)
    assert layer_importance(model, [(ids, mask)]) == pytest.approx(by_hand, abs=1e-5)
    assert layer_importance(model, [ids]) != pytest.approx(by_hand, abs=1e-5)  # padding counted: other means
    assert model.training  # measured in eval mode (no dropout), then restored


@pytest.mark.parametrize("groups", [2, 4])
def test_a_silent_kv_group_has_no_importance_and_is_the_one_cut(groups: int) -> None:
    model = llama(groups=groups)
    ratio = 4 // groups
    silent = [layer % groups for layer in range(4)]  # a different group in each layer
    with torch.no_grad():
        for layer, group in enumerate(silent):
            attention = model.model.layers[layer].self_attn
            attention.v_proj.weight[group * HEAD_DIM : (group + 1) * HEAD_DIM] = 0
            attention.q_proj.weight[group * ratio * HEAD_DIM : (group + 1) * ratio * HEAD_DIM] = 0
    scores = head_importance(model, batches())
    assert scores.shape == (4, groups)
    for layer, group in enumerate(silent):
        assert scores[layer, group] == 0
        assert bool((scores[layer, torch.arange(groups) != group] > 1e-3).all())
    student = cut_causal_lm(model, batches(), num_key_value_heads=groups - 1)
    assert student.config.num_key_value_heads == groups - 1
    assert student.config.num_attention_heads == (groups - 1) * ratio  # the query heads per KV head kept
    assert student.config.head_dim == HEAD_DIM
    assert same_logits(student, model)  # q, k, v rows and o_proj columns sliced consistently


def test_silent_neurons_have_no_importance_and_are_the_ones_cut() -> None:
    model = llama()
    silent = [[1, 5, 6, 17], [0, 2, 3, 19], [7, 8, 9, 10], [4, 11, 12, 18]]
    with torch.no_grad():
        for layer, neurons in enumerate(silent):
            model.model.layers[layer].mlp.up_proj.weight[neurons] = 0
    scores = neuron_importance(model, batches())
    assert scores.shape == (4, 20)
    for layer, neurons in enumerate(silent):
        others = [n for n in range(20) if n not in neurons]
        assert bool((scores[layer, neurons] == 0).all())
        assert bool((scores[layer, others] > 1e-4).all())
    student = cut_causal_lm(model, batches(), intermediate_size=16)
    assert student.config.intermediate_size == 16
    assert same_logits(student, model)


def test_a_loud_channel_ranks_first_and_a_dead_one_last_and_goes() -> None:
    model = llama()
    loud, dead = 5, 3
    with torch.no_grad():
        model.model.embed_tokens.weight[:, dead] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[dead] = 0  # nothing writes to the dead channel
            layer.mlp.down_proj.weight[dead] = 0
        for name, p in model.named_parameters():
            if "norm" in name:
                p[loud] *= 20
    scores = hidden_importance(model, batches())
    assert scores.shape == (24,)
    assert int(scores.argmax()) == loud
    assert scores[dead] == 0 and bool((scores[torch.arange(24) != dead] > 0).all())
    student = cut_causal_lm(model, batches(), hidden_size=20)
    kept = top(scores, 20)
    assert loud in kept and dead not in kept
    assert torch.equal(student.model.embed_tokens.weight, model.model.embed_tokens.weight[:, kept])
    assert logits(student, batches(1)[0]).shape == (3, 10, VOCAB)  # RMSNorm over 20 channels: other logits


# ---- the cut model ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tied", "bias"), [(False, True), (True, False)])
def test_the_cut_holds_the_teachers_slices_at_the_most_important_indices(tied: bool, bias: bool) -> None:
    model = llama(tied=tied, bias=bias)
    before = copy.deepcopy(model.state_dict())
    data = batches()
    sizes = {"hidden_size": 16, "num_hidden_layers": 3, "num_key_value_heads": 1, "intermediate_size": 12}
    student = cut_causal_lm(model, data, **sizes)

    assert type(student) is LlamaForCausalLM
    assert sizes_of(student) == {**sizes, "num_attention_heads": 2}
    assert student.config.head_dim == HEAD_DIM and student.config.vocab_size == VOCAB
    assert sum(p.numel() for p in student.parameters()) == cut_parameters(model, **sizes)
    assert logits(student, data[0]).shape == (3, 10, VOCAB)
    assert (student.lm_head.weight is student.model.embed_tokens.weight) == tied
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the teacher untouched

    layers = top(torch.tensor(layer_importance(model, data)), 3)
    hidden = top(hidden_importance(model, data), 16)
    groups, neurons = head_importance(model, data), neuron_importance(model, data)
    t, s = model.model, student.model
    assert torch.equal(s.embed_tokens.weight, t.embed_tokens.weight[:, hidden])
    assert torch.equal(student.lm_head.weight, model.lm_head.weight[:, hidden])
    assert torch.equal(s.norm.weight, t.norm.weight[hidden])
    for new, old in enumerate(layers):
        source, target = t.layers[old], s.layers[new]
        group = top(groups[old], 1)
        queries, keys, inner = rows(rows(group, 2), HEAD_DIM), rows(group, HEAD_DIM), top(neurons[old], 12)
        expected = {  # module: (rows, columns) of the teacher's weight
            "self_attn.q_proj": (queries, hidden), "self_attn.k_proj": (keys, hidden),
            "self_attn.v_proj": (keys, hidden), "self_attn.o_proj": (hidden, queries),
            "mlp.gate_proj": (inner, hidden), "mlp.up_proj": (inner, hidden), "mlp.down_proj": (hidden, inner),
        }  # fmt: skip
        for name, (r, c) in expected.items():
            teacher, cut = source.get_submodule(name), target.get_submodule(name)
            assert torch.equal(cut.weight, teacher.weight[r][:, c]), name
            assert (cut.bias is None) == (not bias)
            if bias:
                assert torch.equal(cut.bias, teacher.bias[r]), name
        assert torch.equal(target.input_layernorm.weight, source.input_layernorm.weight[hidden])
        assert torch.equal(target.post_attention_layernorm.weight, source.post_attention_layernorm.weight[hidden])


@pytest.mark.parametrize("tied", [False, True])
def test_cutting_nothing_gives_the_teachers_logits_without_calibration(tied: bool) -> None:
    model = llama(tied=tied, bias=True)
    whole = cut_causal_lm(model, [])  # nothing to rank: no calibration pass
    assert whole is not model and sizes_of(whole) == sizes_of(model)
    assert same_logits(whole, model)
    explicit = cut_causal_lm(
        model, batches(), **{k: v for k, v in sizes_of(model).items() if k != "num_attention_heads"}
    )
    assert same_logits(explicit, model)
    with torch.no_grad():
        whole.model.embed_tokens.weight.zero_()
    assert model.model.embed_tokens.weight.abs().sum() > 0  # its own weights


def test_a_depth_cut_is_the_teacher_without_its_least_influential_layers() -> None:
    model = llama(layers=5)
    student, info = cut_to(model, batches(), sizes={"num_hidden_layers": 2})
    kept = top(torch.tensor(layer_importance(model, batches())), 2)
    assert info["layers_kept"] == kept
    reference = copy.deepcopy(model)
    reference.model.layers = nn.ModuleList([model.model.layers[i] for i in kept])
    reference.config.num_hidden_layers = 2
    assert same_logits(student, reference)
    assert info["sizes_before"]["num_hidden_layers"] == 5 and info["sizes_after"]["num_hidden_layers"] == 2
    assert info["parameters_before"] == sum(p.numel() for p in model.parameters())
    assert info["parameters_after"] == sum(p.numel() for p in student.parameters())


# ---- parameter budgets -------------------------------------------------------------------------------------


def width_cut(teacher: dict[str, int], s: Fraction) -> dict[str, int]:
    """The documented width family, at factor s: widths rounded down, hidden a multiple of the query heads."""
    groups = max(1, int(teacher["num_key_value_heads"] * s))
    heads = groups * teacher["num_attention_heads"] // teacher["num_key_value_heads"]
    return {
        "num_hidden_layers": teacher["num_hidden_layers"],
        "hidden_size": max(heads, int(teacher["hidden_size"] * s) // heads * heads),
        "num_key_value_heads": groups,
        "intermediate_size": max(1, int(teacher["intermediate_size"] * s)),
    }


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("share", [0.3, 0.55, 0.9])
def test_a_width_budget_gets_the_largest_width_cut_that_fits(share: float, tied: bool) -> None:
    model = llama(tied=tied)
    total = sum(p.numel() for p in model.parameters())
    target = int(share * total)
    sizes = sizes_for_params(model, target)
    # every breakpoint of the widths (KV groups 2, hidden 24, neurons 20) is a multiple of 1/120
    counts = [cut_parameters(model, **width_cut(sizes_of(model), Fraction(j, 120))) for j in range(1, 121)]
    best = max(c for c in counts if c <= target)
    student = cut_causal_lm(model, batches(), **sizes)
    assert sum(p.numel() for p in student.parameters()) == cut_parameters(model, **sizes) == best
    assert student.config.num_hidden_layers == 4
    assert logits(student, batches(1)[0]).shape == (3, 10, VOCAB)


@pytest.mark.parametrize("share", [0.45, 0.7])
def test_a_depth_budget_keeps_as_many_layers_as_fit(share: float) -> None:
    model = llama(layers=6)
    target = int(share * sum(p.numel() for p in model.parameters()))
    sizes = sizes_for_params(model, target, mode="depth")
    layers = sizes["num_hidden_layers"]
    assert {k: v for k, v in sizes.items() if k != "num_hidden_layers"} == {
        k: v for k, v in sizes_of(model).items() if k != "num_hidden_layers"
    }
    student, info = cut_to(model, batches(), max_params=target, mode="depth")
    assert info["parameters_after"] == sum(p.numel() for p in student.parameters()) <= target
    assert LlamaForCausalLM(student.config).num_parameters() == info["parameters_after"]
    assert cut_parameters(model, num_hidden_layers=layers + 1) > target
    assert len(info["layers_kept"]) == layers


def test_a_budget_for_both_scales_layers_by_the_root_of_the_share_then_the_widths() -> None:
    model = llama(layers=6)
    total = sum(p.numel() for p in model.parameters())
    target = total // 4
    sizes = sizes_for_params(model, target, mode="both")
    assert sizes["num_hidden_layers"] == 3  # round(6 · √0.25)
    assert sizes["hidden_size"] < 24
    assert cut_parameters(model, **sizes) <= target
    assert cut_parameters(model, **{**sizes, "hidden_size": sizes["hidden_size"] + 2}) > target


def test_the_parameter_count_matches_models_built_from_the_config() -> None:
    for groups, tied, bias in [(2, False, False), (4, True, True), (1, False, True)]:
        model = llama(groups=groups, tied=tied, bias=bias)
        assert cut_parameters(model) == sum(p.numel() for p in model.parameters())
        ratio = 4 // groups
        cases = [
            ({"hidden_size": 4 * ratio, "intermediate_size": 1, "num_hidden_layers": 1}, {}),
            ({"hidden_size": 8, "num_attention_heads": ratio, "intermediate_size": 7}, {"num_key_value_heads": 1}),
        ]
        for sizes, implied in cases:
            config = LlamaConfig(**{**model.config.to_dict(), **sizes, **implied})
            assert cut_parameters(model, **sizes) == LlamaForCausalLM(config).num_parameters()


# ---- errors ------------------------------------------------------------------------------------------------


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_budgets_above_the_teacher_or_below_any_cut_are_refused() -> None:
    model = llama()
    total = sum(p.numel() for p in model.parameters())
    for target in (total, total + 1):
        with pytest.raises(DistillError, match="pruning target larger than the teacher") as excinfo:
            sizes_for_params(model, target)
        one_line(excinfo)
    with pytest.raises(DistillError, match="no width cut of the teacher has at most 100 parameters") as excinfo:
        sizes_for_params(model, 100)
    one_line(excinfo)
    one_layer = cut_parameters(model, num_hidden_layers=1)
    with pytest.raises(DistillError, match="no depth cut"):
        sizes_for_params(model, one_layer - 1, mode="depth")
    assert sizes_for_params(model, one_layer, mode="depth")["num_hidden_layers"] == 1
    for bad in (0, -5, 2.5):
        with pytest.raises(DistillError, match="max_params must be a positive integer"):
            sizes_for_params(model, bad)
    with pytest.raises(DistillError, match="pruning mode must be one of width, depth, both"):
        sizes_for_params(model, 1000, mode="deep")


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"hidden_size": 32}, "pruning target larger than the teacher: hidden_size=32 > the teacher's 24"),
        ({"num_hidden_layers": 5}, "pruning target larger than the teacher: num_hidden_layers=5"),
        ({"intermediate_size": 0}, "intermediate_size must be a positive integer, got 0"),
        ({"num_key_value_heads": -1}, "num_key_value_heads must be a positive integer"),
        ({"num_attention_heads": 3}, "num_attention_heads=3: must be a multiple of the teacher's 2 query heads"),
        ({"num_attention_heads": 4, "num_key_value_heads": 1}, "disagree: the teacher has 2 query heads per KV"),
        ({"hidden_size": 18}, r"hidden_size=18 must be a multiple of num_attention_heads=4"),
    ],
)
def test_impossible_sizes_are_refused_in_one_line(sizes: dict[str, int], message: str) -> None:
    model = llama()
    with pytest.raises(DistillError, match=message) as excinfo:
        cut_causal_lm(model, batches(), **sizes)
    one_line(excinfo)


def test_other_models_and_bad_calls_are_refused_in_one_line() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    for call in (lambda: cut_causal_lm(gpt2, batches(), hidden_size=8), lambda: layer_importance(gpt2, batches()),
                 lambda: sizes_for_params(gpt2, 100), lambda: head_importance(nn.Linear(2, 2), batches())):  # fmt: skip
        with pytest.raises(DistillError, match="needs a Llama-family causal LM") as excinfo:
            call()
        one_line(excinfo)
    model = llama()
    with pytest.raises(DistillError, match="at least one token"):
        cut_causal_lm(model, [], hidden_size=16)
    with pytest.raises(DistillError, match="input_ids: integer tensors"):
        neuron_importance(model, [torch.rand(2, 5)])
    with pytest.raises(DistillError, match="attention_mask must have the input_ids' shape"):
        neuron_importance(model, [{"input_ids": batches(1)[0], "attention_mask": torch.ones(3, 4)}])
    with pytest.raises(DistillError, match="exactly one of max_params or sizes"):
        cut_to(model, batches())
    with pytest.raises(DistillError, match="exactly one of max_params or sizes"):
        cut_to(model, batches(), max_params=1000, sizes={"hidden_size": 16})
    with pytest.raises(DistillError, match="unknown pruning size"):
        cut_to(model, batches(), sizes={"hidden": 16})
