"""Causal language models from Hugging Face `transformers`: pretrained (local path or hub name) or built
from a config for small models trained here; optionally wrapped with LoRA adapters (peft), trained with
gradient checkpointing, and, as frozen teachers, held in 16 bits or int8 (`reduce_precision`)."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError

log = logging.getLogger(__name__)

# Options of `from_pretrained` that are not config attributes (how to load, not what to build);
# with the named parameters of `PreTrainedModel.from_pretrained` itself, these pass through as given.
LOADING_OPTIONS = frozenset({
    "attn_implementation", "device_map", "max_memory", "offload_folder", "offload_buffers", "quantization_config",
    "subfolder", "trust_remote_code", "variant", "key_mapping", "tp_plan", "tp_size", "device_mesh", "use_kernels",
    "kernel_config", "experts_implementation", "gguf_file", "generation_config", "proxies", "distributed_config",
})  # fmt: skip
# Precisions that keep the weights themselves in 16 bits: updates smaller than a weight's rounding step are lost.
HALF_PRECISIONS = frozenset({"16-true", "bf16-true", "half-true", "transformer-engine-float16"})


def check_pretrained_source(pretrained: str, local_files_only: bool = True, key: str = "pretrained") -> None:
    """Refuse, in one line and before anything is read, a pretrained model that cannot be there.

    A value that looks like a path (or any value when `local_files_only`) must be a folder, or (a hub
    name with `local_files_only`) be in the local Hugging Face cache.
    """
    path = Path(str(pretrained)).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise DistillError(f"{key}={pretrained}: a file, not a model folder (one written by save_pretrained)")
    text = str(pretrained)
    looks_like_path = text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
    if looks_like_path:
        raise DistillError(f"{key}={pretrained}: folder not found")
    if local_files_only:
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

        try:
            cached = try_to_load_from_cache(text, "config.json")
        except ValueError:  # not a valid hub name either
            cached = None
        if not isinstance(cached, str):
            owner = key.rsplit(".", 1)[0] + "." if "." in key else ""
            raise DistillError(
                f"{key}={pretrained}: folder not found, nor in the local Hugging Face cache "
                f"({owner}local_files_only=false to download it)"
            )


def _unknown_options(pretrained: str, local_files_only: bool, options: dict[str, Any]) -> list[str]:
    """The names in `options` that are neither attributes of the model's config nor loading options."""
    from transformers import AutoConfig, PreTrainedModel  # noqa: PLC0415

    if not options:
        return []
    _, unused = AutoConfig.from_pretrained(
        pretrained, local_files_only=local_files_only, return_unused_kwargs=True, **options
    )
    named = set(inspect.signature(PreTrainedModel.from_pretrained).parameters) - {"model_args", "kwargs"}
    return sorted(k for k in unused if k not in LOADING_OPTIONS | named)


def causal_lm(
    vocab_size: int,
    pretrained: str | None = None,
    model_type: str = "llama",
    local_files_only: bool = True,
    torch_dtype: str | None = None,
    lora: dict[str, Any] | None = None,
    gradient_checkpointing: bool = False,
    **config: Any,
) -> nn.Module:
    """A `transformers` causal LM.

    `pretrained`: a local directory or hub name for `AutoModelForCausalLM.from_pretrained`
    (`local_files_only=False` lets it download); the remaining keyword arguments go with it: config
    attributes (`attention_dropout`, `rope_scaling`, ...) update the model's config, loading options
    (`attn_implementation`, `device_map`, ...) go to `from_pretrained`, and any other name is
    refused. Otherwise a fresh model of `model_type` with the remaining keyword arguments as its
    config (hidden_size, num_hidden_layers, ...) and the data's `vocab_size`. `lora` (r, alpha,
    dropout, target_modules) wraps the model with peft's LoRA: only the adapters train.
    `gradient_checkpointing` keeps only each layer's input while training and recomputes the rest in
    the backward pass (`checkpoint_activations`).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if not isinstance(gradient_checkpointing, bool):
        raise DistillError(f"gradient_checkpointing must be true or false, got {gradient_checkpointing!r}")
    if pretrained:
        check_pretrained_source(pretrained, local_files_only)
        try:
            unknown = _unknown_options(pretrained, local_files_only, config)
            if unknown:
                raise DistillError(
                    f"pretrained model '{pretrained}': unknown option(s) {', '.join(unknown)} "
                    "(neither attributes of its config nor from_pretrained options)"
                )
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, local_files_only=local_files_only, dtype=torch_dtype or "auto", **config
            )
        except (OSError, ValueError, TypeError) as err:
            raise DistillError(
                f"cannot load the pretrained model '{pretrained}': {' '.join(str(err).split())[:240]}"
            ) from None
    else:
        try:
            cfg = AutoConfig.for_model(model_type, vocab_size=vocab_size, **config)
        except (ValueError, TypeError) as err:
            raise DistillError(f"cannot build a '{model_type}' model: {err}") from None
        model = AutoModelForCausalLM.from_config(cfg)
    model.config.use_cache = False
    if lora:
        model = with_lora(model, **lora)
    if gradient_checkpointing:
        checkpoint_activations(model, adapters=bool(lora))
    return model


def checkpoint_activations(model: nn.Module, adapters: bool = False) -> nn.Module:
    """Gradient (activation) checkpointing, in place: in training, each decoder layer keeps only its input and
    recomputes its activations in the backward pass, for about one more forward pass of compute.

    Non-reentrant checkpointing (`use_reentrant=False`): the same gradients as without it. With LoRA
    (`adapters`), the input embeddings' output is made to require gradients, as peft needs when the
    base weights are frozen. Returns `model`.
    """
    kwargs = {"use_reentrant": False}
    try:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            raise ValueError(f"{type(model).__name__} has no gradient checkpointing")
    except ValueError as err:
        raise DistillError(f"gradient_checkpointing: {err}") from None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if adapters and embeddings is not None and not embeddings._forward_hooks:  # transformers may have hooked it
        model.enable_input_require_grads()
    return model


# The precisions a frozen teacher may be held in while it teaches (`lm_teacher.dtype`; null: as built or loaded).
TEACHER_DTYPES = ("float32", "bfloat16", "float16", "int8")


def check_teacher_dtype(dtype: Any, strategy: Any = None, key: str = "lm_teacher.dtype") -> None:
    """Refuse, in one line, a teacher precision not in TEACHER_DTYPES, or int8 weights under FSDP.

    `strategy`: the Trainer's (a name, a config node with `_target_`, or an instance), if any. FSDP
    shards plain tensors only: int8 weights (tensor subclasses) cannot join its flat parameters.
    """
    if dtype is None:
        return
    if str(dtype) not in TEACHER_DTYPES:
        raise DistillError(f"{key}={dtype}: one of null, {', '.join(TEACHER_DTYPES)}")
    if isinstance(strategy, str):
        name = strategy
    elif hasattr(strategy, "get"):
        name = str(strategy.get("_target_", ""))
    else:
        name = type(strategy).__name__ if strategy is not None else ""
    if str(dtype) == "int8" and "fsdp" in name.lower():
        raise DistillError(f"{key}=int8: FSDP cannot shard int8 weights; use bfloat16 or float16 under trainer=fsdp")


def is_quantized(model: nn.Module) -> bool:
    """Whether any weight of `model` is a quantised tensor subclass (as torchao's int8 weights are)."""
    return any(hasattr(p, "__tensor_flatten__") for p in model.parameters())


def held_bytes(model: nn.Module) -> int:
    """Bytes `model` holds in memory: its parameters and buffers, a quantised tensor's stored data and scales."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            parts = [getattr(tensor, name) for name in names]
        else:
            parts = [tensor]
        total += sum(part.numel() * part.element_size() for part in parts if isinstance(part, Tensor))
    return total


def reduce_precision(model: nn.Module, dtype: str | None) -> nn.Module:
    """The frozen teacher `model`, in place, held in `dtype` while it teaches (null: left as it is).

    `float32`, `bfloat16`, `float16`: every floating weight and buffer cast (about half the memory
    of float32 in 16 bits). `int8`: weight-only int8 (torchao), the weights of every linear and
    embedding layer stored as int8 with a scale per row and dequantised as they are used (tied input
    and output embeddings stay one tensor): about a quarter of float32's memory; norms and the
    computation keep the model's floating dtype. Losses upcast teacher logits to float32. Asking
    again for the precision a model already has changes nothing.
    """
    if dtype is None:
        return model
    check_teacher_dtype(dtype)
    before = held_bytes(model)
    if str(dtype) == "int8":
        if not is_quantized(model):
            int8_weights(model)
    elif is_quantized(model):
        raise DistillError(f"lm_teacher.dtype={dtype}: the teacher's weights are already quantised")
    else:
        model.to(getattr(torch, str(dtype)))
    log.info(
        "Teacher held in %s: %.3g MiB of weights (%.3g MiB before)", dtype, held_bytes(model) / 2**20, before / 2**20
    )
    return model


def int8_weights(model: nn.Module) -> nn.Module:
    """Weight-only int8 (torchao) on every linear and embedding layer of `model`, in place."""
    from distill.compress.qat import _quiet  # noqa: PLC0415

    with _quiet():
        from torchao.quantization import Int8WeightOnlyConfig, quantize_  # noqa: PLC0415

    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = embeddings is not None and output is not None and output.weight is embeddings.weight

    def chosen(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear | nn.Embedding) and not (tied and module is output)

    with _quiet():
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=chosen)
    if tied:
        output.weight = embeddings.weight  # one int8 tensor for both, as the float one was
    return model


def with_lora(
    model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0, target_modules: list[str] | None = None
) -> nn.Module:
    """`model` with LoRA adapters (Hu et al. 2022) on `target_modules` (attention projections by default)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or ["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )  # fmt: skip
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise DistillError(f"LoRA: {err}") from None


def export_pretrained(model: nn.Module, folder: Path, tokenizer: Any = None, merge_lora: bool = True) -> Path:
    """Write `model` (and its `tokenizer`) as a Hugging Face folder that `from_pretrained` loads.

    A LoRA (peft) model is written with its adapters merged into the base weights
    (`AutoModelForCausalLM.from_pretrained(folder)` gives the trained student), or, with
    `merge_lora=False`, as an adapter folder for `peft.PeftModel.from_pretrained(base, folder)`.
    `model` itself is left as it is. Returns `folder`.
    """
    import copy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    to_save = model
    if merge_lora and hasattr(model, "merge_and_unload"):
        to_save = copy.deepcopy(model).merge_and_unload()  # the base weights plus B @ A, adapters gone
    if not hasattr(to_save, "save_pretrained"):
        raise DistillError(f"cannot export a {type(to_save).__name__} as a Hugging Face folder (no save_pretrained)")
    config = getattr(to_save, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if config is not None and use_cache is False:
        config.use_cache = True  # off only while training here; generation with the exported model wants it
    try:
        to_save.save_pretrained(folder)
    finally:
        if config is not None and use_cache is False:
            config.use_cache = False
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def float32_trainable(model: nn.Module) -> nn.Module:
    """Every parameter that trains held in float32 (frozen ones, such as LoRA's base weights, keep their dtype).

    Mixed precision computes in 16 bits but steps the optimiser on these float32 weights: an update
    far smaller than a weight (lr 2e-5 on a norm weight near 1) survives, where a bfloat16 weight
    would round it away.
    """
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def trained_parameters(model: nn.Module) -> int:
    """Parameters of `model` that an optimiser would update (requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def max_positions(model: nn.Module) -> tuple[str, int] | None:
    """The model's longest sequence: (config attribute, value) from `max_position_embeddings` or `n_positions`."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return name, value
    return None


def check_positions(models: dict[str, nn.Module], lengths: dict[str, int]) -> None:
    """Refuse any of `lengths` beyond a model's positions.

    `models`: the owner's name in the message ("student") -> model; `lengths`: the setting as the
    message shows it ("lm_data.seq_len=1024") -> the tokens it makes a model see at once.
    """
    for owner, model in models.items():
        limit = max_positions(model)
        if limit is None:
            continue
        for setting, length in lengths.items():
            if length > limit[1]:
                raise DistillError(f"{setting} exceeds the {owner}'s {limit[0]} ({limit[1]})")


def check_precision(precision: Any) -> None:
    """Refuse a precision that would keep the trained weights in 16 bits."""
    if str(precision).lower() in HALF_PRECISIONS:
        raise DistillError(
            f"trainer.precision={precision} would store the trained weights in 16 bits, where small updates "
            "round away; use bf16-mixed (or 16-mixed): 16-bit compute, float32 weights"
        )


def vocab_size_of(model: nn.Module) -> int:
    """Rows of the model's output layer: the vocabulary it predicts over."""
    return int(model.get_output_embeddings().weight.shape[0])


def check_vocabularies(student: nn.Module, teachers: dict[str, nn.Module], tokenizer_size: int) -> None:
    """Teacher and student must predict over the same vocabulary as the tokenizer: a clear error otherwise."""
    sizes = {"student": vocab_size_of(student), **{f"teacher '{n}'": vocab_size_of(t) for n, t in teachers.items()}}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise DistillError(f"teacher and student vocabularies differ ({listed}): they must share a tokenizer")
    if sizes["student"] < tokenizer_size:
        raise DistillError(f"the models predict {sizes['student']} tokens but the tokenizer has {tokenizer_size}")


class LogitsOnly(nn.Module):
    """`input_ids -> logits` of a causal LM, for ONNX export and the report's measurements."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        # An explicit all-ones mask: without one, transformers looks for packed sequences in the
        # position ids with an op (aten::diff) the ONNX exporter lacks.
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
