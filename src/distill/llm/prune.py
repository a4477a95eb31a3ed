"""Structured pruning of a causal LM teacher into a smaller student, to be distilled from the intact teacher.

Importance comes from activations on a few calibration batches, as in Minitron (Muralidharan et al. 2024,
"Compact Language Models via Pruning and Knowledge Distillation"): embedding channels, attention heads and
MLP neurons ranked by their activations; decoder layers ranked by ShortGPT's Block Influence (Men et al.
2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect"). `cut_causal_lm` then
copies the most important of each into a new, smaller model of the same class; `sizes_for_params` picks
the sizes for a parameter budget and `cut_to` does both. Llama-family models (`LlamaForCausalLM`) only.

Calibration batches: an iterable of `input_ids` LongTensors [batch, tokens], of (input_ids, attention_mask)
pairs, or of mappings with "input_ids" and optionally "attention_mask" (the LM data module's batches);
tokens whose mask is 0 count in no mean.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.errors import DistillError
from distill.measure import count_parameters

Batch = Tensor | tuple[Tensor, Tensor] | Mapping[str, Tensor]

# The config fields a cut changes, as `cut_causal_lm` takes them.
SIZES = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
MODES = ("width", "depth", "both")


def _check_llama(model: nn.Module) -> None:
    """Refuse, in one line, a model this module cannot cut: not a LlamaForCausalLM, or quantised."""
    from transformers import LlamaForCausalLM  # noqa: PLC0415

    from distill.llm.models import is_quantized  # noqa: PLC0415

    if not isinstance(model, LlamaForCausalLM):
        raise DistillError(f"pruning needs a Llama-family causal LM (LlamaForCausalLM), got {type(model).__name__}")
    if is_quantized(model):
        raise DistillError("pruning needs the teacher's weights in floating point, not quantised")


def sizes_of(model: nn.Module) -> dict[str, int]:
    """The model's SIZES, from its config."""
    return {key: int(getattr(model.config, key)) for key in SIZES}


# ---- importance --------------------------------------------------------------------------------------------


class _Tally:
    """Sums of per-token statistics over the real tokens (attention mask 1) of the calibration batches."""

    def __init__(self) -> None:
        self.mask: Tensor | None = None  # [batch, tokens] bool, of the batch being run
        self.tokens = 0
        self.sums: dict[tuple[str, int], Tensor] = {}

    def begin(self, mask: Tensor) -> None:
        self.mask = mask.bool()
        self.tokens += int(self.mask.sum())

    def add(self, key: tuple[str, int], values: Tensor) -> None:
        """Add `values` [batch, tokens, ...] at the real tokens to the sum under `key`."""
        total = values.float()[self.mask].sum(0)
        self.sums[key] = self.sums[key] + total if key in self.sums else total

    def mean(self, key: tuple[str, int]) -> Tensor:
        return (self.sums[key] / self.tokens).cpu()


def _on_output(tally: _Tally, key: tuple[str, int], stat: Callable[[Tensor, Tensor], Tensor]) -> Callable:
    """A forward hook (with kwargs) adding stat(the module's hidden-state input, its output) to `tally`."""

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        inputs = args[0] if args else kwargs["hidden_states"]
        tally.add(key, stat(inputs, output[0] if isinstance(output, tuple) else output))

    return hook


def _on_input(tally: _Tally, key: tuple[str, int], stat: Callable[[Tensor], Tensor]) -> Callable:
    """A forward pre-hook adding stat(the module's input) to `tally`."""

    def hook(module: nn.Module, args: tuple) -> None:
        tally.add(key, stat(args[0]))

    return hook


def _block_influence(inputs: Tensor, outputs: Tensor) -> Tensor:
    """ShortGPT's Block Influence of each token: 1 − cos(hidden state entering, hidden state leaving)."""
    return 1 - F.cosine_similarity(inputs.float(), outputs.float(), dim=-1)


def _watch(model: nn.Module, tally: _Tally, kinds: Collection[str]) -> list[Any]:
    """Register the hooks that record `kinds` of importance; returns their handles."""
    head_dim = model.config.head_dim

    def after(module: nn.Module, key: tuple[str, int], stat: Callable[[Tensor, Tensor], Tensor]) -> Any:
        return module.register_forward_hook(_on_output(tally, key, stat), with_kwargs=True)

    def before(module: nn.Module, key: tuple[str, int], stat: Callable[[Tensor], Tensor]) -> Any:
        return module.register_forward_pre_hook(_on_input(tally, key, stat))

    def magnitude(_: Tensor, output: Tensor) -> Tensor:
        return output.abs()

    def per_head(x: Tensor) -> Tensor:
        return x.unflatten(-1, (-1, head_dim)).norm(dim=-1)

    handles = [after(model.model.norm, ("hidden", 0), magnitude)] if "hidden" in kinds else []
    for i, layer in enumerate(model.model.layers):
        if "layers" in kinds:
            handles.append(after(layer, ("layers", i), _block_influence))
        if "hidden" in kinds:
            handles += [
                after(norm, ("hidden", 0), magnitude)
                for norm in (layer.input_layernorm, layer.post_attention_layernorm)
            ]
        if "heads" in kinds:
            handles.append(before(layer.self_attn.o_proj, ("heads", i), per_head))
        if "neurons" in kinds:
            handles.append(before(layer.mlp.down_proj, ("neurons", i), torch.abs))
    return handles


def _unpack(batch: Batch) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask) of a calibration batch; all ones when it has no mask."""
    if isinstance(batch, Mapping):
        ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    elif isinstance(batch, (tuple, list)) and len(batch) == 2:
        ids, mask = batch
    else:
        ids, mask = batch, None
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise DistillError("calibration batches must hold input_ids: integer tensors [batch, tokens]")
    if mask is None:
        return ids, torch.ones_like(ids)
    if not isinstance(mask, Tensor) or mask.shape != ids.shape:
        raise DistillError(f"calibration attention_mask must have the input_ids' shape {tuple(ids.shape)}")
    return ids, mask


def _measure(model: nn.Module, batches: Iterable[Batch], kinds: Collection[str]) -> dict[str, Tensor]:
    """Importance of each kind in `kinds` ("layers", "hidden", "heads", "neurons"), in one pass over `batches`.

    The model runs in eval mode without gradients and gets its training mode back; every score is a mean
    over the real tokens: layers [layers], hidden [hidden], heads [layers, KV groups], neurons
    [layers, intermediate].
    """
    _check_llama(model)
    tally = _Tally()
    handles = _watch(model, tally, kinds)
    device = model.get_input_embeddings().weight.device
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                ids, mask = (tensor.to(device) for tensor in _unpack(batch))
                tally.begin(mask)
                model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if tally.tokens == 0:
        raise DistillError("pruning needs calibration batches with at least one token (none were given)")
    layers = range(len(model.model.layers))
    groups = model.config.num_key_value_heads
    scores = {
        "layers": lambda: torch.stack([tally.mean(("layers", i)) for i in layers]),
        "hidden": lambda: tally.mean(("hidden", 0)),
        "heads": lambda: torch.stack([tally.mean(("heads", i)).view(groups, -1).sum(-1) for i in layers]),
        "neurons": lambda: torch.stack([tally.mean(("neurons", i)) for i in layers]),
    }
    return {kind: scores[kind]() for kind in kinds}


def layer_importance(model: nn.Module, batches: Iterable[Batch]) -> list[float]:
    """Block Influence of each decoder layer (ShortGPT, Men et al. 2024): 1 − the mean cosine similarity,
    over tokens, of the hidden state entering and leaving the layer. Near 0: the layer barely changes the
    residual stream and is the first to remove."""
    return _measure(model, batches, {"layers"})["layers"].tolist()


def hidden_importance(model: nn.Module, batches: Iterable[Batch]) -> Tensor:
    """Importance of each embedding channel [hidden] (Minitron, Muralidharan et al. 2024): the mean absolute
    output, over tokens, of every RMSNorm (both of each layer and the final one), summed over the norms."""
    return _measure(model, batches, {"hidden"})["hidden"]


def head_importance(model: nn.Module, batches: Iterable[Batch]) -> Tensor:
    """Importance of each KV group of each layer [layers, KV groups] (Minitron): the mean L2 norm, over tokens,
    of each attention head's output (o_proj's input, per head), summed over the query heads that share a KV
    head (with grouped-query attention they are pruned together)."""
    return _measure(model, batches, {"heads"})["heads"]


def neuron_importance(model: nn.Module, batches: Iterable[Batch]) -> Tensor:
    """Importance of each MLP neuron of each layer [layers, intermediate] (Minitron): the mean, over tokens, of
    |act_fn(gate_proj(x)) · up_proj(x)|, down_proj's input."""
    return _measure(model, batches, {"neurons"})["neurons"]


# ---- sizes -------------------------------------------------------------------------------------------------


def _positive(key: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DistillError(f"{key} must be a positive integer, got {value!r}")
    if value > limit:
        raise DistillError(f"pruning target larger than the teacher: {key}={value} > the teacher's {limit}")
    return value


def _targets(model: nn.Module, requested: Mapping[str, int | None]) -> dict[str, int]:
    """The student's SIZES: `requested` (None: the teacher's), checked against the teacher.

    Query heads go with their KV head: num_attention_heads must be the kept KV groups times the teacher's
    query heads per KV head (either field alone implies the other). LlamaConfig requires hidden_size to be
    a multiple of num_attention_heads.
    """
    teacher = sizes_of(model)
    sizes = {
        key: teacher[key] if value is None else _positive(key, value, teacher[key]) for key, value in requested.items()
    }
    ratio = teacher["num_attention_heads"] // teacher["num_key_value_heads"]
    heads, groups = requested.get("num_attention_heads"), requested.get("num_key_value_heads")
    if heads is not None and heads % ratio:
        raise DistillError(
            f"num_attention_heads={heads}: must be a multiple of the teacher's {ratio} query heads per KV head"
        )
    if groups is None:
        groups = teacher["num_key_value_heads"] if heads is None else heads // ratio
    if heads is not None and heads != groups * ratio:
        raise DistillError(
            f"num_attention_heads={heads} and num_key_value_heads={groups} disagree: "
            f"the teacher has {ratio} query heads per KV head"
        )
    sizes = {**teacher, **sizes, "num_key_value_heads": groups, "num_attention_heads": groups * ratio}
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise DistillError(
            f"hidden_size={sizes['hidden_size']} must be a multiple of num_attention_heads="
            f"{sizes['num_attention_heads']} (transformers' LlamaConfig requires it)"
        )
    return sizes


def _count(config: Any, sizes: Mapping[str, int]) -> int:
    """Parameters of a Llama with `config`'s vocabulary, head_dim, biases and tying, and `sizes`."""
    hidden, inner = sizes["hidden_size"], sizes["intermediate_size"]
    queries = sizes["num_attention_heads"] * config.head_dim
    keys = sizes["num_key_value_heads"] * config.head_dim
    layer = 2 * hidden * (queries + keys) + 3 * hidden * inner + 2 * hidden
    layer += (queries + 2 * keys + hidden) * bool(config.attention_bias) + (2 * inner + hidden) * bool(config.mlp_bias)
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    return embeddings + hidden + sizes["num_hidden_layers"] * layer


def cut_parameters(
    model: nn.Module,
    hidden_size: int | None = None,
    num_hidden_layers: int | None = None,
    num_key_value_heads: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> int:
    """Parameters of `cut_causal_lm(model, batches, ...)` with these sizes, from the config, without cutting."""
    _check_llama(model)
    requested = {key: value for key, value in locals().items() if key in SIZES}
    return _count(model.config, _targets(model, requested))


def _widths(teacher: Mapping[str, int], layers: int, numerator: int, denominator: int) -> dict[str, int]:
    """The teacher's widths scaled by s = numerator / denominator (rounded down, at least 1), with `layers`."""
    ratio = teacher["num_attention_heads"] // teacher["num_key_value_heads"]
    groups = max(1, teacher["num_key_value_heads"] * numerator // denominator)
    heads = groups * ratio
    return {
        "num_hidden_layers": layers,
        "hidden_size": max(heads, teacher["hidden_size"] * numerator // denominator // heads * heads),
        "num_attention_heads": heads,
        "num_key_value_heads": groups,
        "intermediate_size": max(1, teacher["intermediate_size"] * numerator // denominator),
    }


def _family(teacher: Mapping[str, int], mode: str, share: float) -> Iterator[dict[str, int]]:
    """Every distinct cut of `mode` (see `sizes_for_params`); `share`: the budget over the teacher's parameters."""
    if mode == "depth":
        yield from ({**teacher, "num_hidden_layers": layers} for layers in range(1, teacher["num_hidden_layers"]))
        return
    layers = teacher["num_hidden_layers"]
    if mode == "both":
        layers = max(1, round(layers * math.sqrt(share)))
    # The widths change only where s·width crosses an integer, for one of the three widths.
    for denominator in sorted({teacher[key] for key in ("num_key_value_heads", "hidden_size", "intermediate_size")}):
        for numerator in range(1, denominator + 1):
            yield _widths(teacher, layers, numerator, denominator)


def sizes_for_params(model: nn.Module, max_params: int, mode: str = "width") -> dict[str, int]:
    """The sizes (`cut_causal_lm`'s keyword arguments) of the largest cut of `model` with at most `max_params`.

    `mode` chooses the family of cuts searched, exactly (every distinct cut is counted):
    - "width" (Minitron's choice: width pruning beats depth pruning at equal size): all layers kept;
      hidden_size, KV groups and intermediate_size each scaled by one factor s, rounded down (at least one
      KV group, one neuron), hidden_size to a multiple of the query heads as LlamaConfig requires.
    - "depth" (ShortGPT): widths kept; only layers removed.
    - "both": layers scaled by √(max_params / teacher's parameters), rounded; then widths as in "width".
    """
    _check_llama(model)
    if mode not in MODES:
        raise DistillError(f"pruning mode must be one of {', '.join(MODES)}, got {mode!r}")
    if isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 1:
        raise DistillError(f"max_params must be a positive integer, got {max_params!r}")
    total = count_parameters(model)
    if max_params >= total:
        raise DistillError(
            f"pruning target larger than the teacher: max_params={max_params:,} >= its {total:,} parameters"
        )
    counted = [(_count(model.config, sizes), sizes) for sizes in _family(sizes_of(model), mode, max_params / total)]
    fitting = [item for item in counted if item[0] <= max_params]
    if not fitting:
        smallest = min(count for count, _ in counted)
        raise DistillError(
            f"no {mode} cut of the teacher has at most {max_params:,} parameters (the smallest has {smallest:,})"
        )
    return max(fitting, key=lambda item: item[0])[1]


# ---- cutting -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What a cut keeps of the teacher, sorted: decoder layers, hidden channels, and per kept layer its KV
    groups and MLP neurons."""

    layers: list[int]
    hidden: Tensor
    groups: list[Tensor]
    neurons: list[Tensor]


def _top(scores: Tensor, keep: int) -> Tensor:
    """Indices of the `keep` largest scores, in increasing order (the kept units stay in their order)."""
    return scores.topk(keep).indices.sort().values


def _plan(model: nn.Module, batches: Iterable[Batch], sizes: Mapping[str, int]) -> _Plan:
    """The most important layers, channels, KV groups and neurons at `sizes` (one calibration pass, skipped
    when nothing is removed)."""
    teacher = sizes_of(model)
    axes = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_key_value_heads",
            "neurons": "intermediate_size"}  # fmt: skip
    kinds = {kind for kind, key in axes.items() if sizes[key] < teacher[key]}
    scores = _measure(model, batches, kinds) if kinds else {}

    def keep(kind: str, score: Tensor | None) -> Tensor:
        return torch.arange(teacher[axes[kind]]) if score is None else _top(score, sizes[axes[kind]])

    layers = keep("layers", scores.get("layers")).tolist()
    heads, neurons = scores.get("heads"), scores.get("neurons")
    return _Plan(
        layers=layers,
        hidden=keep("hidden", scores.get("hidden")),
        groups=[keep("heads", None if heads is None else heads[i]) for i in layers],
        neurons=[keep("neurons", None if neurons is None else neurons[i]) for i in layers],
    )


def _student_config(model: nn.Module, sizes: Mapping[str, int]) -> Any:
    """The teacher's config with `sizes` and its head_dim kept explicitly."""
    from huggingface_hub.errors import StrictDataclassError  # noqa: PLC0415

    config = copy.deepcopy(model.config)
    config.head_dim = model.config.head_dim
    for key, value in sizes.items():
        setattr(config, key, value)
    try:
        config.validate()
    except (StrictDataclassError, ValueError) as err:
        raise DistillError(f"cannot build the student's config: {' '.join(str(err).split())}") from None
    return config


def _take(tensor: Tensor, dim: int, index: Tensor) -> Tensor:
    return tensor.index_select(dim, index.to(tensor.device))


def _units(kept: Tensor, width: int) -> Tensor:
    """The rows of units `kept` when each unit owns `width` consecutive rows."""
    return (kept[:, None] * width + torch.arange(width)).flatten()


def _copy_linear(source: nn.Linear, target: nn.Linear, rows: Tensor, cols: Tensor) -> None:
    target.weight.copy_(_take(_take(source.weight, 0, rows), 1, cols))
    if source.bias is not None:
        target.bias.copy_(_take(source.bias, 0, rows))


def _copy_layer(source: nn.Module, target: nn.Module, hidden: Tensor, groups: Tensor, neurons: Tensor) -> None:
    """Copy the kept KV groups (with their query heads), neurons and channels of one decoder layer."""
    attention = source.self_attn
    queries = _units(_units(groups, attention.num_key_value_groups), attention.head_dim)
    keys = _units(groups, attention.head_dim)
    for name, rows in (("q_proj", queries), ("k_proj", keys), ("v_proj", keys)):
        _copy_linear(getattr(attention, name), getattr(target.self_attn, name), rows, hidden)
    _copy_linear(attention.o_proj, target.self_attn.o_proj, hidden, queries)
    _copy_linear(source.mlp.gate_proj, target.mlp.gate_proj, neurons, hidden)
    _copy_linear(source.mlp.up_proj, target.mlp.up_proj, neurons, hidden)
    _copy_linear(source.mlp.down_proj, target.mlp.down_proj, hidden, neurons)
    for name in ("input_layernorm", "post_attention_layernorm"):
        getattr(target, name).weight.copy_(_take(getattr(source, name).weight, 0, hidden))


def _build(model: nn.Module, sizes: Mapping[str, int], plan: _Plan) -> nn.Module:
    """A new model of the teacher's class at `sizes`, holding the teacher's weights that `plan` keeps."""
    weight = model.get_input_embeddings().weight
    with torch.device(weight.device):
        student = type(model)(_student_config(model, sizes)).to(weight.dtype)
    source, target = model.model, student.model
    with torch.no_grad():
        target.embed_tokens.weight.copy_(_take(source.embed_tokens.weight, 1, plan.hidden))
        target.norm.weight.copy_(_take(source.norm.weight, 0, plan.hidden))
        student.lm_head.weight.copy_(_take(model.lm_head.weight, 1, plan.hidden))  # the same tensor when tied
        for new, old in enumerate(plan.layers):
            _copy_layer(source.layers[old], target.layers[new], plan.hidden, plan.groups[new], plan.neurons[new])
    return student.train(model.training)


def _cut(model: nn.Module, batches: Iterable[Batch], requested: Mapping[str, int | None]) -> tuple[nn.Module, _Plan]:
    _check_llama(model)
    sizes = _targets(model, requested)
    plan = _plan(model, batches, sizes)
    return _build(model, sizes, plan), plan


def cut_causal_lm(
    model: nn.Module,
    batches: Iterable[Batch],
    hidden_size: int | None = None,
    num_hidden_layers: int | None = None,
    num_key_value_heads: int | None = None,
    num_attention_heads: int | None = None,
    intermediate_size: int | None = None,
) -> nn.Module:
    """A new, smaller model of `model`'s class holding the teacher's most important weights (the teacher is
    left as it is), as Minitron (Muralidharan et al. 2024) and ShortGPT (Men et al. 2024) cut a student
    before distilling it from the intact teacher.

    Each size left None keeps the teacher's; num_key_value_heads or num_attention_heads (either implies the
    other: the teacher's query heads per KV head are kept) sets the attention. The config keeps the
    teacher's head_dim explicitly. From importance on `batches` (one pass): the layers of highest Block
    Influence, in their order; in each, the KV groups with their query heads (q, k, v rows and o_proj
    columns) and MLP neurons (gate/up rows, down_proj columns) of highest importance; and the hidden
    channels of highest importance everywhere (embedding and lm_head columns, norm weights, projection
    input columns, o_proj and down_proj rows; tied embeddings stay tied). RMSNorm over fewer channels
    normalises differently: the cut model is a starting point for distillation, not a copy.
    """
    requested = {key: value for key, value in locals().items() if key in SIZES}
    return _cut(model, batches, requested)[0]


def cut_to(
    model: nn.Module,
    batches: Iterable[Batch],
    max_params: int | None = None,
    sizes: Mapping[str, int | None] | None = None,
    mode: str = "width",
) -> tuple[nn.Module, dict[str, Any]]:
    """`cut_causal_lm` to explicit `sizes`, or to the largest cut of `mode` with at most `max_params`
    (`sizes_for_params`); exactly one of the two. Returns (student, info): sizes_before, sizes_after,
    parameters_before, parameters_after and layers_kept (the teacher's indices)."""
    if (max_params is None) == (sizes is None):
        raise DistillError("cut_to needs exactly one of max_params or sizes")
    if sizes is None:
        sizes = sizes_for_params(model, max_params, mode)
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise DistillError(f"unknown pruning size(s) {', '.join(unknown)}; known: {', '.join(SIZES)}")
    student, plan = _cut(model, batches, sizes)
    return student, {
        "sizes_before": sizes_of(model),
        "sizes_after": sizes_of(student),
        "parameters_before": count_parameters(model),
        "parameters_after": count_parameters(student),
        "layers_kept": plan.layers,
    }
