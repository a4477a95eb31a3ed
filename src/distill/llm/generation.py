"""Evaluation by generation: a causal LM completes prompts, and its completions are scored against
reference answers.

Completing (`complete`): the prompts, left-padded, go through `generate` `batch_size` at a time
(each batch cut to its own longest prompt), greedily or sampled (`temperature`, `top_k`, from a
seed: the same completions on every run), for at most `max_new_tokens` tokens; a completion ends
at its first end-of-text token. Only the new tokens are decoded, special tokens skipped, whitespace
stripped. Any `transformers` causal LM works, a peft (LoRA) model too. Decoding is this module's
own, not the model's `generation_config`: repetition penalties or nucleus sampling a pretrained
model ships with are switched off, so that every model is decoded alike.

Scoring (`scores`), each averaged over the examples:
  * exact match: 1 when the completion equals the reference after `normalize` (runs of whitespace
    made one space, both ends stripped; case and punctuation count), else 0;
  * ROUGE-L: the F-measure of the longest common subsequence of words (torchmetrics `rouge_score`,
    key rougeL, no stemming) where words are the runs of letters and digits, lowercased (`words`;
    any alphabet, and nothing downloaded: no nltk).

`GenerationEval` is `distill-lm`'s `generation_eval` config block, checked; `evaluate_by_generation`
completes and scores the same examples with several models.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.validate import integer, number

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """The text exact match compares: runs of whitespace made one space, both ends stripped."""
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The words ROUGE-L compares: runs of letters, digits (and underscores) of any alphabet, lowercased."""
    return _WORD.findall(text.lower())


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise DistillError(f"{len(predictions)} completions for {len(references)} references: give one for each")
    if not references:
        raise DistillError("no completions to score: give at least one completion and its reference")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The share of completions equal to their reference after `normalize`."""
    _check_pairs(predictions, references)
    return sum(normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)) / len(references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The ROUGE-L F-measure of each completion against its reference (LCS of `words`), averaged.

    A completion or reference without any word scores 0.
    """
    from torchmetrics.functional.text import rouge_score

    _check_pairs(predictions, references)
    got = rouge_score(
        list(predictions), list(references), rouge_keys="rougeL", use_stemmer=False,
        normalizer=lambda text: text, tokenizer=words,
    )  # fmt: skip
    return float(got["rougeL_fmeasure"])


def scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """`exact_match` and `rouge_l` of the completions."""
    return {"exact_match": exact_match(predictions, references), "rouge_l": rouge_l(predictions, references)}


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _ids(value: int | Sequence[int]) -> list[int]:
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


@torch.no_grad()
def complete(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    tokenizer: Any,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    batch_size: int = 64,
    temperature: float | None = None,
    top_k: int = 0,
    seed: int = 0,
) -> list[str]:
    """The completion `model` generates for each left-padded prompt (rows of `input_ids`), as text.

    Greedy when `temperature` is None; else sampled at `temperature` from the `top_k` likeliest
    tokens (0: all of them), from `seed` (the global random state is left as it was). A completion
    stops at the first of `eos_token_id` (one id or several) or after `max_new_tokens` tokens; its
    new tokens alone are decoded by `tokenizer`, special tokens skipped, whitespace stripped.
    """
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise DistillError(
            f"prompts must be [batch, length] input_ids with an attention_mask of the same shape, got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if bool((attention_mask[:, -1] == 0).any()):
        raise DistillError("prompts must be left-padded for generation (attention_mask 1 on every row's last token)")
    if max_new_tokens < 1 or batch_size < 1:
        raise DistillError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if temperature is not None and not temperature > 0:
        raise DistillError(f"temperature must be a positive number (None: greedy), got {temperature}")
    stops = _ids(eos_token_id)
    decoding: dict[str, Any] = {"do_sample": False}
    if temperature is not None:
        decoding = {"do_sample": True, "temperature": float(temperature), "top_k": int(top_k), "top_p": 1.0}
    device = _device(model)
    was_training = model.training
    model.eval()
    completions: list[str] = []
    devices = []  # the CUDA device whose random state sampling draws from, restored afterwards
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(input_ids), batch_size):
                mask = attention_mask[start : start + batch_size]
                first = int(mask.any(0).int().argmax())  # the columns before it are padding in every row
                ids, mask = input_ids[start : start + batch_size, first:], mask[:, first:]
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=int(max_new_tokens),
                    num_beams=1, repetition_penalty=1.0, eos_token_id=stops, pad_token_id=int(pad_token_id),
                    use_cache=True, return_dict_in_generate=False, **decoding,
                )  # fmt: skip
                for row in out[:, ids.shape[1] :].tolist():
                    end = next((i for i, t in enumerate(row) if t in stops), len(row))
                    text = tokenizer.decode(row[:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                    completions.append(text.strip())
    finally:
        model.train(was_training)
    return completions


@dataclass(frozen=True)
class GenerationEval:
    """`generation_eval`: which test examples each model completes, and how.

    `examples`: the first that many test examples (None: all; 0: no evaluation by generation);
    `max_new_tokens`, `batch_size`: of `complete`; `temperature`, `top_k`: the sampled completions
    (temperature None: greedy ones only); `side_by_side`: how many examples the report shows with
    every model's greedy completion; `seed`: of the sampled completions.
    """

    examples: int | None = 200
    max_new_tokens: int = 32
    batch_size: int = 64
    temperature: float | None = 0.8
    top_k: int = 50
    side_by_side: int = 5
    seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.examples != 0

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, seed: int = 0) -> GenerationEval:
        """The block, checked field by field (one line for the first bad one); a missing block is off."""
        if node is None:
            return cls(examples=0, seed=seed)
        known = {"examples", "max_new_tokens", "batch_size", "sampled", "side_by_side"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise DistillError(f"generation_eval: unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
        key = "generation_eval."
        sampled = node.get("sampled")
        temperature, top_k = None, 0
        if sampled is not None:
            if not isinstance(sampled, Mapping) or set(sampled) - {"temperature", "top_k"}:
                shown = dict(sampled) if isinstance(sampled, Mapping) else sampled
                raise DistillError(f"{key}sampled must be null (greedy only) or {{temperature, top_k}}, got {shown!r}")
            temperature = number(sampled.get("temperature", 1.0), f"{key}sampled.temperature", low=0, low_open=True)
            top_k = integer(sampled.get("top_k", 0), f"{key}sampled.top_k", minimum=0)
        return cls(
            examples=integer(node.get("examples", 200), f"{key}examples", minimum=0, allow_none=True),
            max_new_tokens=integer(node.get("max_new_tokens", 32), f"{key}max_new_tokens", minimum=1),
            batch_size=integer(node.get("batch_size", 64), f"{key}batch_size", minimum=1),
            temperature=temperature,
            top_k=int(top_k or 0),
            side_by_side=integer(node.get("side_by_side", 5), f"{key}side_by_side", minimum=0),
            seed=int(seed),
        )

    def describe(self) -> str:
        sampled = f", sampled at temperature {self.temperature:g}, top_k {self.top_k}" if self.temperature else ""
        return f"greedy{sampled}, at most {self.max_new_tokens} new tokens"


@dataclass
class Generated:
    """What `evaluate_by_generation` gives: the examples, each model's scores and greedy completions."""

    prompts: list[str]
    references: list[str]
    metrics: dict[str, dict[str, float]]  # model -> exact_match, rouge_l (+ *_sampled)
    completions: dict[str, list[str]]  # model -> greedy completions

    def side_by_side(self, n: int) -> list[dict[str, Any]]:
        """The first `n` examples: prompt, reference and each model's greedy completion."""
        return [
            {"prompt": self.prompts[i], "reference": self.references[i],
             "completions": {name: got[i] for name, got in self.completions.items()}}
            for i in range(min(n, len(self.prompts)))
        ]  # fmt: skip


def _markdown_cell(text: str) -> str:
    if not text.strip():
        return "*(empty)*"
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def side_by_side_markdown(examples: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of `Generated.side_by_side` examples: prompt, reference, then a column per model
    (a `|` in the text escaped, line breaks as <br>, an empty completion as *(empty)*)."""
    if not examples:
        return ""
    names = list(examples[0]["completions"])
    lines = ["| " + " | ".join(["prompt", "reference", *names]) + " |", "|" + "---|" * (2 + len(names))]
    for e in examples:
        cells = [e["prompt"], e["reference"], *(e["completions"][n] for n in names)]
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def evaluate_by_generation(
    models: Mapping[str, nn.Module],
    input_ids: Tensor,
    attention_mask: Tensor,
    references: Sequence[str],
    tokenizer: Any,
    settings: GenerationEval,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
) -> Generated:
    """Each model's greedy (and, with a temperature, sampled) completions of the prompts, scored against
    `references`: `exact_match`, `rouge_l` (and `exact_match_sampled`, `rouge_l_sampled`)."""
    if len(references) != len(input_ids):
        raise DistillError(f"{len(input_ids)} prompts for {len(references)} references: give one for each")
    common = {
        "max_new_tokens": settings.max_new_tokens, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
        "batch_size": settings.batch_size, "seed": settings.seed,
    }  # fmt: skip
    metrics: dict[str, dict[str, float]] = {}
    completions: dict[str, list[str]] = {}
    for name, model in models.items():
        start = time.perf_counter()
        greedy = complete(model, input_ids, attention_mask, tokenizer, **common)
        metrics[name] = scores(greedy, references)
        completions[name] = greedy
        if settings.temperature is not None:
            sampled = complete(model, input_ids, attention_mask, tokenizer, temperature=settings.temperature,
                               top_k=settings.top_k, **common)  # fmt: skip
            metrics[name].update({f"{k}_sampled": v for k, v in scores(sampled, references).items()})
        log.info(
            "Generation: %s completed %d test prompts (%s) in %.1f s: exact match %.3f, ROUGE-L %.3f",
            name, len(references), settings.describe(), time.perf_counter() - start,
            metrics[name]["exact_match"], metrics[name]["rouge_l"],
        )  # fmt: skip
    prompts = [
        tokenizer.decode(row[mask.bool()].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for row, mask in zip(input_ids, attention_mask, strict=True)
    ]
    return Generated(prompts, list(references), metrics, completions)
