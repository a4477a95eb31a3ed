"""The teacher's next-token distributions on the training sequences, computed once and kept on disk.

A frozen teacher gives the same distribution at every position of a training sequence in every epoch,
every run and every job of a sweep, yet running it costs a forward pass per step (for a small student,
more than the student's own step). `TeacherOutputCache` computes the distributions once per (teacher,
sequences, top_k), keeps them in `paths.cache_dir` beside the cached teachers, under the same rules
(a key hashing what determines them, a file lock so that concurrent jobs compute them once, atomic
writes, an unreadable entry moved aside and computed again), and hands each training step the rows of
its batch.

What is kept, per position: the `top_k` largest log-probabilities (at temperature 1) with their token
ids, and the log of the probability mass r of all other tokens (the tail). The losses see, as
log-probabilities in place of the teacher's logits (`dense_log_probs`), a distribution p̃ with the
teacher's own probabilities for the kept tokens and the tail's mass r spread over the other V - k
tokens in one of two ways (`teacher_tail`):

- `student` (the default): as the student spreads its own tail, p̃(v) = r · q(v) / Q for a tail token,
  Q being the student's tail mass (q detached). Every token-level loss of `distill.llm.losses` is a
  divergence Σ_v q(v) f(p(v) / q(v)), and with this p̃ each tail token's ratio is r / Q: at
  temperature 1, each loss is exactly its value on the two distributions coarsened to the kept tokens
  and one token standing for the tail (the student's tail is pulled towards the teacher's tail mass,
  its shape is left to the language-modelling loss). Forward KL, for instance, is
  Σ_kept p log(p / q) + r log(r / Q).
- `even`: p̃(v) = r / (V - k) for each tail token: the student's tail is pulled towards an even share of
  r, where the teacher's tail has a shape of its own (forward KL's tail terms become
  r log(r / (V - k)) - (r / (V - k)) Σ_tail log q; reverse KL reads log(r / (V - k)) as each tail token's
  log p; total variation moves by at most ½ Σ_tail |p - r / (V - k)| ≤ r).

At a temperature T ≠ 1 the losses temper p̃ as they would the teacher's logits. With `top_k` equal to the
vocabulary (`teacher_top_k: null`) there is no tail: p̃ = p and every loss is exact.

tests/test_llm_teacher_cache.py checks both forms against the full distribution and the coarsened one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.atomic import remove_stale_temporaries, save_torch, write_text
from distill.errors import DistillError
from distill.model_cache import acquire, cache_key, move_aside

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what an entry holds changes: older entries are then not found


def top_k_log_probs(logits: Tensor, k: int | None) -> tuple[Tensor, Tensor, Tensor]:
    """(values, token ids, log rest) of next-token `logits` [..., V]: the k largest log-probabilities at
    temperature 1 (float32, in decreasing order), their ids (int32), and the log of the probability mass
    of the other tokens (-inf when k covers the vocabulary)."""
    vocab = logits.shape[-1]
    k = vocab if k is None else min(int(k), vocab)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    if k == vocab:
        rest = torch.full(log_p.shape[:-1], -math.inf, device=log_p.device)
    else:
        rest = log_p.scatter(-1, ids, -math.inf).logsumexp(dim=-1)
    return values, ids.to(torch.int32), rest


def dense_log_probs(
    values: Tensor, ids: Tensor, rest: Tensor, vocab_size: int, student_logits: Tensor | None = None
) -> Tensor:
    """The distribution p̃ over the whole vocabulary ([..., V] log-probabilities) from `top_k_log_probs`: the
    kept tokens' own log-probabilities, and the rest's mass r spread over the other tokens, evenly or, given
    `student_logits` ([..., V]), in proportion to the student's own probabilities of them (detached)."""
    k = values.shape[-1]
    ids = ids.long()
    if k == vocab_size:
        fill = torch.full((*values.shape[:-1], vocab_size), -math.inf, device=values.device)
    elif student_logits is None:
        tail = (rest - math.log(vocab_size - k)).unsqueeze(-1)
        fill = tail.expand(*values.shape[:-1], vocab_size).contiguous()
    else:
        log_q = torch.log_softmax(student_logits.detach().float(), dim=-1)
        log_q_tail = log_q.scatter(-1, ids, -math.inf).logsumexp(dim=-1, keepdim=True)  # the student's tail mass
        fill = log_q + (rest.unsqueeze(-1) - log_q_tail)
    return fill.scatter(-1, ids, values)


#: the smallest tail mass `log_tail` resolves: below it, 1 - Σ_kept q is lost to float32 rounding
TAIL_FLOOR = 1e-6


def log_tail(kept: Tensor, vocab_size: int) -> Tensor:
    """log(1 - Σ exp(kept)) ([..., 1]): the log of the mass outside the kept tokens, from their log-probabilities
    alone (no pass over the vocabulary); at least log TAIL_FLOOR, and -inf when every token is kept."""
    if kept.shape[-1] == vocab_size:
        return torch.full_like(kept[..., :1], -math.inf)
    total = kept.logsumexp(dim=-1, keepdim=True).clamp(max=math.log1p(-TAIL_FLOOR))
    # log(1 - e^x), stable on both sides of x = -ln 2 (Mächler 2012)
    return torch.where(total > -math.log(2), torch.log(-torch.expm1(total)), torch.log1p(-torch.exp(total)))


def coarse_log_probs(
    student_logits: Tensor,
    values: Tensor,
    ids: Tensor,
    rest: Tensor,
    temperature: float = 1.0,
    student_log_probs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The student's and the teacher's distributions at temperature T over the kept tokens and one bucket for the
    tail ([..., k + 1] log-probabilities, the bucket last), the teacher's being `dense_log_probs(..., student_logits)`
    (its tail spread as the student spreads its own, the student detached there) tempered.

    Each token-level loss (a divergence Σ q f(p / q)) on these k + 1 entries equals the loss on the two dense
    [..., V] distributions, at any temperature: p̃_T / q_T is the same on every tail token. No [..., V] tensor
    is built but the student's own log-probabilities (`student_log_probs`: log_softmax(student_logits) at
    temperature 1, when the step computed it already).
    """
    s = student_logits.float()
    ids = ids.long()
    if temperature == 1 and student_log_probs is not None:
        log_qt = student_log_probs
    else:
        log_qt = torch.log_softmax(s / temperature if temperature != 1 else s, dim=-1)
    kept_qt = log_qt.gather(-1, ids)
    tail_qt = log_tail(kept_qt, s.shape[-1])  # log Σ_tail q_T
    student = torch.cat([kept_qt, tail_qt], dim=-1)
    with torch.no_grad():  # the teacher's side: the student's tail shape only, detached
        if temperature == 1:
            tail_p = rest.unsqueeze(-1)
        else:
            # Σ_tail p̃^(1/T) = (r / Q)^(1/T) Σ_tail q^(1/T), with Q = Σ_tail q at T = 1 and
            # log Σ_tail q^(1/T) = log Σ_tail q_T + lse(s / T) - lse(s) / T
            lse, lse_t = s.logsumexp(-1, keepdim=True), (s / temperature).logsumexp(-1, keepdim=True)
            log_q_tail = s.scatter(-1, ids, -math.inf).logsumexp(-1, keepdim=True) - lse
            tail_p = (rest.unsqueeze(-1) - log_q_tail) / temperature + tail_qt + lse_t - lse / temperature
        teacher = torch.cat([values / temperature, tail_p], dim=-1)
        teacher = teacher - teacher.logsumexp(-1, keepdim=True)
    return student, teacher


def _hash_tensor(h: Any, name: str, t: Tensor) -> None:
    """Add a tensor's name, dtype, shape and bytes to the hash `h` (any dtype: bf16 too)."""
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def weights_digest(model: nn.Module) -> str:
    """A sha256 of a model's weights and buffers (names, dtypes, shapes, bytes) and its class and config."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if config is not None and callable(getattr(config, "to_json_string", None)):
        h.update(config.to_json_string(use_diff=False).encode())
    for name, t in model.state_dict().items():
        if isinstance(t, Tensor):
            _hash_tensor(h, name, t)
    return h.hexdigest()[:32]


def sequences_digest(tensors: dict[str, Tensor]) -> str:
    """A sha256 of the token tensors a teacher reads (input ids, attention mask, positions)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        _hash_tensor(h, name, tensors[name])
    return h.hexdigest()[:32]


@dataclass
class CachedDistributions:
    """One teacher's kept distributions over a set of sequences, and the map from a batch's `index` to them."""

    values: Tensor  # [N, L - 1, k] float32
    ids: Tensor  # [N, L - 1, k] int32
    rest: Tensor  # [N, L - 1] float32
    vocab_size: int
    position: Tensor  # split row -> row of this cache (-1: not cached)

    def top_k(self, index: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(values, token ids, log tail mass) of the batch whose split rows are `index`, on `device`."""
        rows = self._rows(index)
        return tuple(t.index_select(0, rows).to(device, non_blocking=True) for t in (self.values, self.ids, self.rest))

    def _rows(self, index: Tensor) -> Tensor:
        index = index.cpu()
        if int(index.max()) >= len(self.position) or bool((self.position[index] < 0).any()):
            raise DistillError("a training batch holds sequences the teacher's cached outputs do not cover")
        return self.position[index]

    def log_probs(self, index: Tensor, device: torch.device, student_logits: Tensor | None = None) -> Tensor:
        """p̃ ([B, L - 1, V] log-probabilities) of the batch whose split rows are `index` (the tail shaped
        after `student_logits` when given, see `dense_log_probs`)."""
        values, ids, rest = self.top_k(index, device)
        return dense_log_probs(values, ids, rest, self.vocab_size, student_logits)


@dataclass
class TeacherOutputCache:
    """Where and how the teachers' next-token distributions are cached (`cache_teacher_outputs`, `teacher_top_k`)."""

    cache_dir: Path
    top_k: int | None = 256
    tail: str = "student"  # how the tail's mass is spread: "student" (as the student spreads its own), or "even"

    def __post_init__(self) -> None:
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k or self.top_k < 1):
            raise DistillError(
                f"teacher_top_k must be a whole number >= 1, or null (the whole vocabulary), got {self.top_k!r}"
            )
        if self.tail not in ("student", "even"):
            raise DistillError(f"teacher_tail must be student or even, got {self.tail!r}")
        self.cache_dir = Path(self.cache_dir)

    def payload(self, teacher: nn.Module, sequences: dict[str, Tensor], vocab: int, precision: str) -> dict[str, Any]:
        """What determines the kept distributions: the cache key's content."""
        k = vocab if self.top_k is None else min(int(self.top_k), vocab)
        return {
            "kind": "lm-teacher-outputs",
            "format": FORMAT,
            "teacher": weights_digest(teacher),
            "sequences": sequences_digest(sequences),
            "top_k": k,
            "vocab_size": vocab,
            "precision": str(precision),
        }

    def load_or_compute(
        self,
        name: str,
        teacher: nn.Module,
        sequences: dict[str, Tensor],
        rows: Tensor,
        forward: Any,
        batch_size: int,
        precision: str,
    ) -> tuple[CachedDistributions, Path, bool]:
        """The distributions of `teacher` on `sequences` (split rows `rows`): read from the cache, or computed
        with `forward(inputs) -> logits` in batches of `batch_size` and cached. Returns them, the entry's
        path and whether it was reused."""
        with torch.no_grad():
            vocab = int(forward({k: v[:1] for k, v in sequences.items()}).shape[-1])
        payload = self.payload(teacher, sequences, vocab, precision)
        key = cache_key(payload)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.cache_dir / f"lm-teacher-outputs-{name}-{key}.pt"
        lock = acquire(path, "computing the teacher's outputs")
        try:
            remove_stale_temporaries(self.cache_dir)
            entry = self._read(path) if path.exists() else None
            reused = entry is not None
            if entry is None:
                entry = self._compute(sequences, forward, batch_size, payload["top_k"])
                save_torch(entry, path)
                write_text(path.with_suffix(".json"), json.dumps(payload, indent=2, sort_keys=True))
            else:
                log.info("Reusing the teacher's cached next-token distributions from %s", path)
        finally:
            lock.release()
        position = torch.full((int(rows.max()) + 1 if len(rows) else 0,), -1, dtype=torch.long)
        position[rows] = torch.arange(len(rows))
        cached = CachedDistributions(entry["values"], entry["ids"], entry["rest"], vocab, position)
        return cached, path, reused

    @staticmethod
    def _read(path: Path) -> dict[str, Tensor] | None:
        try:
            entry = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            if not {"values", "ids", "rest"} <= set(entry):
                raise ValueError("missing tensors")
            return entry
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file: computed again
            move_aside(path, str(err).splitlines()[0] if str(err) else type(err).__name__)
            return None

    @staticmethod
    def _compute(sequences: dict[str, Tensor], forward: Any, batch_size: int, k: int) -> dict[str, Tensor]:
        n = len(next(iter(sequences.values())))
        log.info("Computing the teacher's next-token distributions once: %d sequences, top %d tokens kept", n, k)
        start, parts = time.perf_counter(), {"values": [], "ids": [], "rest": []}
        from tqdm.auto import tqdm  # noqa: PLC0415 - a progress bar in a terminal only

        from distill.console import is_terminal  # noqa: PLC0415

        with torch.no_grad():
            for first in tqdm(range(0, n, batch_size), desc="teacher outputs", disable=not is_terminal(), leave=False):
                logits = forward({k2: v[first : first + batch_size] for k2, v in sequences.items()})
                values, ids, rest = top_k_log_probs(logits[:, :-1], k)
                for part, t in (("values", values), ("ids", ids), ("rest", rest)):
                    parts[part].append(t.cpu())
        log.info("Teacher's next-token distributions computed in %.1f s", time.perf_counter() - start)
        return {part: torch.cat(ts) for part, ts in parts.items()}
