"""Causal language models from Hugging Face `transformers`: pretrained (local path or hub name) or built
from a config for small models trained here; optionally wrapped with LoRA adapters (peft)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError

log = logging.getLogger(__name__)


def causal_lm(
    vocab_size: int,
    pretrained: str | None = None,
    model_type: str = "llama",
    local_files_only: bool = True,
    torch_dtype: str | None = None,
    lora: dict[str, Any] | None = None,
    **config: Any,
) -> nn.Module:
    """A `transformers` causal LM.

    `pretrained`: a local directory or hub name for `AutoModelForCausalLM.from_pretrained`
    (`local_files_only=False` lets it download). Otherwise a fresh model of `model_type` with the
    remaining keyword arguments as its config (hidden_size, num_hidden_layers, ...) and the data's
    `vocab_size`. `lora` (r, alpha, dropout, target_modules) wraps the model with peft's LoRA:
    only the adapters train.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if pretrained:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                pretrained, local_files_only=local_files_only, dtype=torch_dtype or "auto"
            )
        except OSError as err:
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
