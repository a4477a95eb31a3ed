"""LightningModule for causal-LM distillation: token-level and hidden-state terms, on-policy and
sequence-level batches, perplexity and next-token agreement."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.llm.losses import IGNORE_INDEX, lm_loss
from distill.llm.teacher_cache import CachedDistributions, TeacherOutputCache
from distill.losses.base import LossTerm, StepView
from distill.modules.base import TeacherStudentModule

log = logging.getLogger(__name__)


class HiddenStateLoss(LossTerm):
    """Hidden-state distillation: MSE between mapped student and teacher layers' hidden states.

    `layer_map` pairs student and teacher layers (`[[student, teacher], ...]`, indices into the
    models' `hidden_states`: 0 is the embedding output). When widths differ, a learned linear
    projection maps each student layer to its teacher layer's width (as in TinyBERT, Jiao et al.
    2020); it trains with the student and is not part of it. Averaged over non-padding tokens.
    """

    def __init__(self, layer_map: list[list[int]], weight: float = 1.0) -> None:
        super().__init__(weight)
        if not layer_map or any(len(pair) != 2 for pair in layer_map):
            raise DistillError(
                f"hidden-state distillation: layer_map must be [[student, teacher], ...], got {layer_map}"
            )
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        self.student_layers = tuple(f"hidden.{s}" for s, _ in self.layer_map)
        self.teacher_layers = tuple(f"hidden.{t}" for _, t in self.layer_map)
        self.projections = nn.ModuleList()

    def build(self, view: StepView) -> None:
        self.projections = nn.ModuleList()
        for i in range(len(self.layer_map)):
            s, t = self.feature_pair(view, i)
            self.projections.append(
                nn.Identity() if s.shape[-1] == t.shape[-1] else nn.Linear(s.shape[-1], t.shape[-1])
            )

    def forward(self, view: StepView) -> Tensor:
        mask = view.attention_mask.float()  # [B, L]: hidden states cover every position, padding excluded
        total = view.student_logits.new_zeros(())
        for i, projection in enumerate(self.projections):
            s, t = self.feature_pair(view, i)
            error = (projection(s.float()) - t.float()).pow(2).mean(-1)
            total = total + (error * mask).sum() / mask.sum().clamp_min(1)
        return total / max(len(self.projections), 1)


class LMDistillationModule(TeacherStudentModule):
    """Train a causal LM `student`, from `teachers` when given (else on the language-modelling loss alone).

    Per step: `lm_weight` x the language-modelling loss on the batch's labels, plus every term's
    weight x its value (token-level divergences, hidden states). With `on_policy_fraction`, that
    share of batches is replaced by the student's own sampled continuations of the batch's
    prompts (on-policy distillation, Agarwal et al. 2024); with `sequence_kd_fraction`, by the
    teacher's (sequence-level KD, Kim & Rush 2016); see `generate_batch`. Generated tokens carry
    no language-modelling loss on on-policy batches (they are the student's own). A sequence-level term
    (`sequence_level = True`: MiniLLM, distill.llm.minillm) gets the data batch instead of the step's view,
    as `term.sequence_loss(self, batch)`, samples and scores its own responses to the batch's prompts, and
    returns (value, parts); its parts are logged as `<term>/<part>`. Teachers are
    frozen, kept out of the optimiser and out of checkpoints, and stay in eval mode; the student
    trains in train mode (dropout on) even when it was loaded in eval mode (`TeacherStudentModule`).

    With `teacher_cache` (a `distill.llm.teacher_cache.TeacherOutputCache`), the teachers' next-token
    distributions on the training sequences are read from the cache, or computed once at the start of
    training and cached, and the token-level terms of data batches see them instead of a teacher forward
    pass; `teacher_cache_entries` then names each entry and whether it was reused. Generated batches, and
    runs whose terms need the teachers' hidden states, run the teachers as before.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: Mapping[str, nn.Module],
        terms: Mapping[str, LossTerm],
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        lm_weight: float = 1.0,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        on_policy_fraction: float = 0.0,
        sequence_kd_fraction: float = 0.0,
        prompt_len: int = 16,
        generation_temperature: float = 1.0,
        seed: int = 0,
        prefix: str = "student",
        pad_token_id: int = 0,
        eos_token_id: int | None = None,
        gradient_clip_val: float | None = None,
        teacher_cache: TeacherOutputCache | None = None,
    ) -> None:
        super().__init__(student, optimizer, scheduler, teachers, prefix)
        for name, value in (("on_policy_fraction", on_policy_fraction), ("sequence_kd_fraction", sequence_kd_fraction)):
            if not 0 <= value <= 1:
                raise DistillError(f"{name} must be in [0, 1], got {value}")
        if on_policy_fraction + sequence_kd_fraction > 1:
            raise DistillError("on_policy_fraction + sequence_kd_fraction must be at most 1")
        if (terms or sequence_kd_fraction) and not teachers:
            raise DistillError("token-level terms and sequence-level KD need a teacher")
        self.terms = nn.ModuleDict(dict(terms))
        self.lm_weight = float(lm_weight)
        self.on_policy_fraction, self.sequence_kd_fraction = on_policy_fraction, sequence_kd_fraction
        self.prompt_len, self.generation_temperature = prompt_len, generation_temperature
        self.seed, self.pad_token_id = seed, pad_token_id
        self.eos_token_id = eos_token_id
        self.hidden = any(term.student_layers for term in self.terms.values())
        # Sequence-level terms (MiniLLM) sample and score their own batches: `term.sequence_loss(self, batch)`.
        self.token_level = any(not getattr(term, "sequence_level", False) for term in self.terms.values())
        self._val: dict[str, float] = {}
        self.generated_batches = {"on_policy": 0, "sequence_kd": 0}
        self.gradient_clip_val = gradient_clip_val
        self.teacher_cache = teacher_cache
        self._cached: dict[str, CachedDistributions] | None = None
        # one teacher, its tail spread as the student's, every token-level term able to read the kept tokens alone
        self._sparse = (
            teacher_cache is not None and teacher_cache.tail == "student" and len(self.teachers) == 1
            and all(getattr(t, "reads_top_k", False) for t in self.terms.values() if not getattr(t, "sequence_level", False))
        )  # fmt: skip
        # teacher -> {"file", "reused", "top_k", "seconds" (to read or compute them)}
        self.teacher_cache_entries: dict[str, dict[str, Any]] = {}

    @property
    def student(self) -> nn.Module:
        """The model being trained (`net`)."""
        return self.net

    # -- the step -------------------------------------------------------------------------------
    def _forward(self, model: nn.Module, batch: dict[str, Tensor], hidden: bool) -> Any:
        return model(**model_inputs(batch), output_hidden_states=hidden, use_cache=False)

    def _view(
        self, batch: dict[str, Tensor], out_s: Any, outs_t: dict[str, Any], cached: dict[str, Tensor] | None = None
    ) -> StepView:
        """The step's view; `cached`: the teachers' cached next-token log-probabilities, in place of `outs_t`."""
        logits = out_s.logits[:, :-1]
        teachers_logits = cached if cached is not None else {n: o.logits[:, :-1] for n, o in outs_t.items()}
        teacher_logits = torch.stack(list(teachers_logits.values())).mean(0) if teachers_logits else None
        features: dict[str, Tensor] = {}
        teacher_features: dict[str, dict[str, Tensor]] = {n: {} for n in outs_t}
        if self.hidden:
            features = {f"hidden.{i}": h for i, h in enumerate(out_s.hidden_states)}
            teacher_features = {n: {f"hidden.{i}": h for i, h in enumerate(o.hidden_states)} for n, o in outs_t.items()}
        return StepView(
            student_logits=logits, teacher_logits=teacher_logits, teachers_logits=teachers_logits,
            student_features=features, teacher_features=teacher_features, targets=batch["labels"][:, 1:],
            index=batch.get("index"), attention_mask=batch["attention_mask"], epoch=self.current_epoch,
        )  # fmt: skip

    def _teacher_outputs(self, batch: dict[str, Tensor], hidden: bool) -> dict[str, Any]:
        with torch.no_grad():
            return {n: self._forward(t, batch, hidden) for n, t in self.teachers.items()}

    def prompt_lengths(self, batch: dict[str, Tensor]) -> Tensor:
        """Each row's prompt, in tokens from its start (rows are right-padded).

        Prompt/completion rows: the masked prefix (the leading real tokens labelled -100). Plain
        text (no masked prefix): the first `prompt_len` real tokens, leaving at least one to continue.
        """
        mask = batch["attention_mask"].bool()
        real = mask.sum(1)
        labels = batch.get("labels")
        if labels is None:
            prefix = torch.zeros_like(real)
        else:
            prefix = ((labels == IGNORE_INDEX) & mask).long().cumprod(1).sum(1)
        plain = (real - 1).clamp(min=1, max=max(self.prompt_len, 1))
        return torch.where(prefix > 0, prefix, plain)

    @torch.no_grad()
    def generate_batch(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each row's prompt (see `prompt_lengths`) continued by `model`, sampled, within the row's length.

        The prompts are left-padded for generation; a completion ends at the end-of-text token
        (`eos_token_id`, kept as its last token) or where the row ends. The batch comes back
        right-padded to the same length: attention_mask 0 on padding, labels -100 on the prompt and
        the padding, so only the generated completion is scored.
        """
        ids = batch["input_ids"]
        rows, length = ids.shape
        prompts = self.prompt_lengths(batch)
        room = length - prompts  # new tokens each row can hold
        width = int(prompts.max())
        left = ids.new_full((rows, width), self.pad_token_id)
        left_mask = torch.zeros_like(left)
        for i, p in enumerate(prompts.tolist()):
            left[i, width - p :] = ids[i, :p]
            left_mask[i, width - p :] = 1
        completions = ids.new_zeros((rows, 0))
        if int(room.max()) > 0:
            was_training = model.training
            model.eval()
            try:
                out = model.generate(
                    input_ids=left, attention_mask=left_mask, max_new_tokens=int(room.max()), do_sample=True,
                    temperature=self.generation_temperature, top_k=0, top_p=1.0, use_cache=True,
                    pad_token_id=self.pad_token_id,
                    eos_token_id=[] if self.eos_token_id is None else self.eos_token_id,  # []: rows are filled
                )  # fmt: skip
            finally:
                model.train(was_training)
            completions = out[:, width:]
        input_ids = ids.new_full((rows, length), self.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (p, r) in enumerate(zip(prompts.tolist(), room.tolist(), strict=True)):
            completion = completions[i, :r]
            if self.eos_token_id is not None:
                ends = (completion == self.eos_token_id).nonzero()
                if len(ends):
                    completion = completion[: int(ends[0]) + 1]
            end = p + len(completion)
            input_ids[i, :p], input_ids[i, p:end] = ids[i, :p], completion
            attention_mask[i, :end] = 1
            labels[i, p:end] = completion
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _source(self) -> str:
        draw = random.Random(self.seed * 1_000_003 + self.global_step).random()
        if draw < self.on_policy_fraction:
            return "on_policy"
        if draw < self.on_policy_fraction + self.sequence_kd_fraction:
            return "sequence_kd"
        return "data"

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        source, data = self._source(), batch
        if source == "on_policy":
            batch = self.generate_batch(self.student, batch)
        elif source == "sequence_kd":
            batch = self.generate_batch(next(iter(self.teachers.values())), batch)
        if source != "data":
            self.generated_batches[source] += 1
        out_s = self._forward(self.student, batch, self.hidden)
        cached, top_k = None, None
        if self._cached is not None and source == "data" and "index" in batch:
            device = out_s.logits.device
            if self._sparse:  # each term on the kept tokens and one bucket: no [B, L, V] teacher tensor
                top_k = next(iter(self._cached.values())).top_k(batch["index"], device)
            else:
                tail = out_s.logits[:, :-1] if self.teacher_cache.tail == "student" else None
                cached = {n: c.log_probs(batch["index"], device, tail) for n, c in self._cached.items()}
        needs_teachers = self.teachers and self.token_level and cached is None and top_k is None
        outs_t = self._teacher_outputs(batch, self.hidden) if needs_teachers else {}
        view = self._view(batch, out_s, outs_t, cached)
        if top_k is not None:  # one log_softmax of the student's logits for the LM loss and every term
            log_q = torch.log_softmax(view.student_logits.float(), dim=-1)
            view = dataclasses.replace(view, teacher_top_k=top_k, student_log_probs=log_q)
        loss = view.student_logits.new_zeros(())
        values: dict[str, Tensor] = {}
        if self.lm_weight and source != "on_policy":
            if view.student_log_probs is not None:
                values["lm"] = lm_loss(view.student_log_probs, view.targets, log_probs=True)
            else:
                values["lm"] = lm_loss(view.student_logits, view.targets)
            loss = loss + self.lm_weight * values["lm"]
        parts: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            if getattr(term, "sequence_level", False):  # from the data batch's prompts, on its own samples
                values[name], term_parts = term.sequence_loss(self, data)
                parts.update({f"{name}/{part}": value for part, value in term_parts.items()})
            else:
                values[name] = term(view)
            loss = loss + term.weight * values[name]
        values.update(parts)
        bs = batch["input_ids"].shape[0]
        for name, value in values.items():
            self.log(f"{self.prefix}/train/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=bs)
        self.log(f"{self.prefix}/train/loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        return loss

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: float | None = None, gradient_clip_algorithm: str | None = None
    ) -> None:
        """The recipe's `fit.gradient_clip_val` (gradient norm), else the Trainer's setting."""
        value = self.gradient_clip_val or gradient_clip_val
        if value:
            self.clip_gradients(
                optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm or "norm"
            )

    # -- the teachers' next-token distributions computed once -----------------------------------------
    def _why_not_cached(self, loader: Any) -> str | None:
        """Why this fit runs the teachers at every step (None: their outputs can be cached)."""
        if self.teacher_cache is None or not self.teachers or not self.token_level:
            return "no cache"
        if self.hidden:
            return "a term needs the teachers' hidden states"
        if self.on_policy_fraction + self.sequence_kd_fraction >= 1:
            return "every batch is generated"
        if isinstance(self.teachers, nn.Module):
            return "the teachers are sharded (FSDP)"
        if self._trainer is not None and self.trainer.fast_dev_run:
            return "a fast_dev_run trains on a batch or two"
        if not getattr(loader, "deterministic", False) or not hasattr(loader, "attention_mask"):
            return "the training batches are not fixed sequences"
        return None

    def on_train_start(self) -> None:
        self._cached = None
        loader = self.trainer.train_dataloader
        why = self._why_not_cached(loader)
        if why is not None:
            if why != "no cache":
                log.info("The teacher runs at every step: %s", why)
            return
        sequences = {"input_ids": loader.x, "attention_mask": loader.attention_mask}
        if getattr(loader, "position_ids", None) is not None:
            sequences["position_ids"] = loader.position_ids
        rows = loader.rows if getattr(loader, "rows", None) is not None else torch.arange(len(loader.x))
        self._cached = {}
        for name, teacher in self.teachers.items():

            def forward(inputs: dict[str, Tensor], teacher: nn.Module = teacher) -> Tensor:
                inputs = {k: v.to(self.device) for k, v in inputs.items()}
                with self.trainer.precision_plugin.forward_context():
                    return teacher(**model_inputs(inputs), use_cache=False).logits

            start = time.perf_counter()
            cached, path, reused = self.teacher_cache.load_or_compute(
                name, teacher, sequences, rows, forward, loader.batch_size, str(self.trainer.precision)
            )
            self._cached[name] = cached
            self.teacher_cache_entries[name] = {
                "file": path.name, "reused": reused, "top_k": int(cached.values.shape[-1]),
                "seconds": round(time.perf_counter() - start, 3),
            }  # fmt: skip

    def on_train_end(self) -> None:
        self._cached = None

    def probe(self, batch: dict[str, Tensor]) -> None:
        """Build the terms' parameters (hidden-state projections) from one batch, before the optimiser exists."""
        with torch.no_grad():
            view = self._view(
                batch, self._forward(self.student, batch, self.hidden), self._teacher_outputs(batch, self.hidden)
            )
        for term in self.terms.values():
            term.build(view)

    # -- validation: perplexity and agreement ----------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"nll": 0.0, "tokens": 0.0, "agree": 0.0}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        choice = teacher_choice(self._teacher_outputs(batch, False)) if self.teachers else None
        stats = token_stats(self._forward(self.student, batch, False).logits, batch["labels"], choice)
        for k, v in stats.items():
            self._val[k] += v

    def on_validation_epoch_end(self) -> None:
        totals = torch.tensor([self._val["nll"], self._val["tokens"], self._val["agree"]], device=self.device)
        totals = self.all_gather(totals).reshape(-1, 3).sum(0) if self.trainer.world_size > 1 else totals
        nll, tokens, agree = totals.tolist()
        tokens = max(tokens, 1.0)
        ppl = math.exp(min(nll / tokens, 50.0))
        self.log(f"{self.prefix}/val/ppl", ppl, prog_bar=True)
        if self.teachers:
            self.log(f"{self.prefix}/val/agreement", agree / tokens)


def model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """What a causal LM takes from a batch: input_ids with the attention mask, or, for rows packing several
    documents, with `position_ids` restarting at 0 at each document's start and no mask (transformers then
    restricts attention to each document: `masking_utils.find_packed_sequence_indices`)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def teacher_choice(teacher_outputs: Mapping[str, Any]) -> Tensor:
    """The teachers' next-token choice at each position: the argmax of their mean logits (last position dropped)."""
    return torch.stack([o.logits[:, :-1].float() for o in teacher_outputs.values()]).mean(0).argmax(-1)


def position_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The next-token NLL at every position of a batch (`[batch, length - 1]`) and which positions are labelled."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).clamp_min(0), reduction="none"
    ).reshape(labels.shape)
    return nll, labels != IGNORE_INDEX


def token_stats(
    logits: Tensor, labels: Tensor, teacher_choice: Tensor | None = None, nll: tuple[Tensor, Tensor] | None = None
) -> dict[str, float]:
    """Summed next-token NLL, valid-token count and top-1 agreement with `teacher_choice` over a batch
    (`nll`: `position_nll(logits, labels)`, when the caller computed it already)."""
    nll, valid = nll if nll is not None else position_nll(logits, labels)
    stats = {"nll": float((nll * valid).sum()), "tokens": float(valid.sum()), "agree": 0.0}
    if teacher_choice is not None:
        stats["agree"] = float(((logits[:, :-1].argmax(-1) == teacher_choice) & valid).sum())
    return stats
