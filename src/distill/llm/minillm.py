"""MiniLLM (Gu, Dong, Wei, Huang, "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024):
the sequence-level reverse KL of the student from the teacher, minimised by policy gradient on sampled responses.

For a prompt x the objective is KL(q_θ ‖ p) = E_{y∼q_θ(·|x)} log q_θ(y|x) / p(y|x) over whole responses y,
q_θ the student and p the teacher. With the per-step reward r_t = log p(y_t | y_<t, x) − log q_θ(y_t | y_<t, x),
its gradient is −E Σ_t (R_t − 1) ∇ log q_θ(y_t | y_<t, x), R_t = Σ_{t' ≥ t} r_t' (the paper's §2.2; the −1 has
zero expectation and is dropped). The paper's three refinements (§2.2), each a setting of `MiniLLM`:

1. Single-step decomposition (`single_step`): the step's own reward is taken in expectation over the
   vocabulary, exactly: its part of the gradient is that of the per-step reverse KL
   KL(q_θ(·|y_<t, x) ‖ p(·|y_<t, x)) = Σ_v q_θ(v) (log q_θ(v) − log p(v)) (the low-variance "single-step"
   term, `reg` below), and the policy gradient keeps only the long-term reward of the future steps,
   R_{t+1} = Σ_{t' > t} r_t'. Off: the policy gradient uses R_t and there is no single-step term.
2. Teacher-mixed sampling (`alpha`): responses are sampled token by token from
   p̃ = α · p + (1 − α) · q_θ, and every step is reweighted by the per-token importance weight
   w_t = q_θ(y_t | y_<t, x) / p̃(y_t | y_<t, x) (the paper's approximation of the product over the prefix).
   α = 0 samples from the student alone (w_t = 1).
3. Length normalisation (`length_norm`): the long-term reward is the mean of the future rewards,
   R^Norm_{t+1} = Σ_{t' > t} r_t' / (number of steps after t), so that short responses are not favoured.

The loss, averaged over the response tokens (valid positions) of the batch:
    pg  = mean_t max(−A_t ρ_t, −A_t clip(ρ_t, 1 − ε, 1 + ε)),   ρ_t = w_t · q_θ(y_t) / sg[q_θ(y_t)]
    reg = mean_t w_t · KL(q_θ(·|y_<t, x) ‖ p(·|y_<t, x))
    loss = pg + reg
where A_t is the (length-normalised, optionally discounted by `gamma`) long-term reward, whitened over the
batch's response tokens when `whiten` (mean 0, variance 1: a baseline for the policy gradient), sg[·] stops
the gradient and w_t is constant. ρ_t equals w_t in value; its gradient is w_t ∇ log q_θ(y_t): the
policy-gradient estimator of the paper. The clip of ε = `clip_range` is PPO's (Schulman et al. 2017), which
the paper's training algorithm uses for stability: a step whose weight already pushes its advantage past 1 ± ε gives no gradient.
The rewards r_t are clipped to ±`reward_clip` (finite even where the teacher gives a token probability 0).

What this implements of the paper's training, and what it leaves out:
- Implemented: the objective above on responses sampled from the batch's own prompts at every step (one
  gradient step per sampled batch: on-policy, so the PPO ratio to the sampling policy is 1); the pre-training
  loss L_PT of the paper (language modelling on a corpus beside the prompts) is the module's `lm_weight`
  language-modelling loss on the batch's tokens.
- Left out: PPO's replay of a store of rollouts for several inner epochs (the released code's 4 PPO
  epochs over 256 rollouts), so the ratio to an older policy is always 1; top-k/top-p filtering (the paper
  samples with top-k 0, top-p 1); the released code's reward scaling (no effect once advantages are
  whitened). There is no value or critic model in MiniLLM, so none here.
- Differences from the released code (github.com/microsoft/LMOps, minillm/), which follow the paper
  instead: the policy gradient uses R_{t+1} (the released code's advantage also counts r_t), the
  single-step term is weighted by w_t (as the paper's final gradient; the released code leaves it unweighted), no
  discount by default (`gamma` = 1; the released code's default is 0.95), and whitening counts only
  response tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.llm.losses import IGNORE_INDEX, _check_shapes, _kl_per_token, _log_mix, _log_probs
from distill.losses.base import LossTerm, StepView
from distill.validate import boolean, integer, number

if TYPE_CHECKING:
    from distill.llm.module import LMDistillationModule

OWNER = "MiniLLM"


# -- the pieces of the objective ----------------------------------------------------------------


def importance_log_weights(log_q: Tensor, log_p: Tensor, alpha: float) -> Tensor:
    """log w = log q − log p̃ of each sampled token, p̃ = α · p + (1 − α) · q (teacher-mixed sampling).

    `log_q`, `log_p`: the student's and the teacher's log-probabilities of the sampled tokens. α = 0 gives
    exactly 0 (w = 1: the samples are the student's own), α = 1 gives log q − log p.
    """
    if alpha == 0:
        return torch.zeros_like(log_q)
    if alpha == 1:
        return log_q - log_p
    return log_q - _log_mix(log_p, log_q, alpha)


def long_term_rewards(
    rewards: Tensor, mask: Tensor, gamma: float = 1.0, length_norm: bool = True, include_current: bool = False
) -> Tensor:
    """The long-term reward of every step of every response: R_{t+1} = Σ_{t' > t} γ^(t' − t − 1) r_t'.

    `rewards` [B, N] per-step rewards, `mask` [B, N] which steps are the responses' (the rest count for
    nothing and get 0). `include_current` sums from t' = t instead (R_t, no single-step decomposition).
    `length_norm` divides by the number of steps summed (the mean of the future rewards when γ = 1); a step
    with no step after it gets 0.
    """
    valid = mask.to(rewards.dtype)
    r = rewards * valid
    steps = r.shape[-1]
    index = torch.arange(steps, device=r.device)
    offset = index[None, :] - index[:, None]  # [i, j]: j − i
    first = 0 if include_current else 1
    summed = offset >= first
    exponent = (offset - first).clamp(min=0).to(r.dtype)
    discount = torch.where(summed, torch.as_tensor(gamma, dtype=r.dtype, device=r.device).pow(exponent), 0.0)
    total = r @ discount.T  # [b, i] = Σ_j discount[i, j] r[b, j]
    if length_norm:
        total = total / (valid @ summed.to(r.dtype).T).clamp(min=1)
    return total * valid


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """`values` shifted and scaled to mean 0 and variance 1 over the positions of `mask` (0 elsewhere)."""
    valid = mask.to(values.dtype)
    n = valid.sum().clamp(min=1)
    mean = (values * valid).sum() / n
    var = ((values - mean).pow(2) * valid).sum() / n
    return (values - mean) * torch.rsqrt(var + eps) * valid


def minillm_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.2,
    temperature: float = 1.0,
    clip_range: float | None = 0.2,
    gamma: float = 1.0,
    length_norm: bool = True,
    single_step: bool = True,
    whiten_advantages: bool = True,
    reward_clip: float | None = 100.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """MiniLLM's loss on sampled responses (see the module docstring), and its parts.

    `student_logits`, `teacher_logits` [B, N, V] aligned with `labels` [B, N] (position i predicts
    labels[i]): the sampled response tokens, -100 on prompts and padding. `alpha` is the mixture the
    responses were sampled from. Returns (pg + reg, parts): `pg`, `reg`, `reward` (the mean over responses
    of their mean per-step reward log p/q) and `length` (mean response tokens), all detached.
    """
    _check_shapes(OWNER, student_logits, teacher_logits, labels)
    mask = labels != IGNORE_INDEX
    log_q = _log_probs(student_logits, temperature)
    log_p = _log_probs(teacher_logits.detach(), temperature).to(log_q.dtype)
    tokens = labels.clamp(min=0).unsqueeze(-1)
    token_log_q = log_q.gather(-1, tokens).squeeze(-1)
    token_log_p = log_p.gather(-1, tokens).squeeze(-1)
    zero = torch.zeros_like(token_log_p)
    token_log_q = torch.where(mask, token_log_q, zero)  # what prompts and padding hold never reaches the loss
    token_log_p = torch.where(mask, token_log_p, zero)
    fixed_log_q = token_log_q.detach()
    weights = torch.where(mask, importance_log_weights(fixed_log_q, token_log_p, alpha).exp(), zero)
    rewards = token_log_p - fixed_log_q
    if reward_clip is not None:
        rewards = rewards.clamp(-reward_clip, reward_clip)
    rewards = torch.where(mask, rewards, zero)
    advantages = long_term_rewards(rewards, mask, gamma, length_norm, include_current=not single_step)
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    ratio = weights * (token_log_q - fixed_log_q).exp()
    per_token = -advantages * ratio
    if clip_range is not None:
        per_token = torch.maximum(per_token, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    count = mask.sum().clamp(min=1)
    pg = torch.where(mask, per_token, zero).sum() / count
    reg = zero.sum()
    if single_step:
        reg = torch.where(mask, weights * _kl_per_token(log_q, log_p), zero).sum() / count
    lengths = mask.sum(-1)
    answered = lengths > 0
    row_reward = rewards.sum(-1) / lengths.clamp(min=1)
    parts = {
        "pg": pg.detach(),
        "reg": reg.detach(),
        "reward": (row_reward * answered).sum() / answered.sum().clamp(min=1),
        "length": lengths.float().mean(),
    }
    return pg + reg, parts


# -- sampling from the teacher-student mixture --------------------------------------------------


def _cache_keyword(model: nn.Module) -> str:
    """The forward argument that takes the key/value cache: `cache` (transformers 5) or `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def sample_mixed(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    input_ids: Tensor,
    attention_mask: Tensor,
    max_new: Tensor,
    alpha: float,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> tuple[Tensor, Tensor]:
    """Continue left-padded prompts token by token, sampling from p̃ = α · p + (1 − α) · q (teacher-mixed).

    q = softmax(student logits / T), p = softmax(teachers' mean logits / T). Every model keeps its key/value
    cache, so each step feeds one token. Row i stops after the end-of-text token (kept) or `max_new[i]`
    tokens. Returns (tokens [B, steps], padded with `pad_token_id` after each row's end; lengths [B]).
    Draws from torch's global generator (seeded by the run).
    """
    rows = input_ids.shape[0]
    models = [student, *teachers]
    keywords = [_cache_keyword(m) for m in models]
    caches: list[Any] = [None] * len(models)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
    ids, mask, pos = input_ids, attention_mask, positions
    steps = int(max_new.max()) if rows else 0
    tokens = input_ids.new_full((rows, max(steps, 0)), pad_token_id)
    lengths = torch.zeros_like(max_new)
    done = max_new <= 0
    for step in range(steps):
        logits = []
        for i, model in enumerate(models):
            out = model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{keywords[i]: caches[i]}
            )
            caches[i] = _returned_cache(out)
            logits.append(out.logits[:, -1].float())
        probs = torch.softmax(logits[0] / temperature, dim=-1)
        if alpha > 0 and teachers:
            teacher = torch.stack(logits[1:]).mean(0)
            probs = alpha * torch.softmax(teacher / temperature, dim=-1) + (1 - alpha) * probs
        drawn = torch.multinomial(probs, 1).squeeze(1)
        tokens[:, step] = torch.where(done, torch.full_like(drawn, pad_token_id), drawn)
        lengths = lengths + (~done).long()
        ended = lengths >= max_new
        if eos_token_id is not None:
            ended = ended | (drawn == eos_token_id)
        done = done | ended
        if bool(done.all()):
            return tokens[:, : step + 1], lengths
        ids = drawn.unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        pos = pos[:, -1:] + 1
    return tokens, lengths


# -- the loss term ------------------------------------------------------------------------------


class MiniLLM(LossTerm):
    """MiniLLM's sequence-level reverse KL (Gu et al. 2024; see the module docstring), as an `lm_distill` term.

    Sequence-level: `LMDistillationModule` calls `sequence_loss(module, batch)` instead of `forward(view)`.
    Each step it takes the batch's prompts (`module.prompt_lengths`), samples responses from the
    teacher-student mixture (`sample_mixed`; the student in eval mode while sampling), runs the student
    (with gradients) and the teachers on them and returns `minillm_loss`. A response ends at the
    end-of-text token or after `max_new_tokens` (default: the rest of the row).

    Settings, with the paper's values (Gu et al. 2024) and those of its released training scripts as
    defaults: `alpha` 0.2 (teacher-mixed sampling), `clip_range` 0.2 (PPO clip; null:
    none), `length_norm` and `single_step` on, `whiten` on (advantages normalised over the batch, as the
    released code does), `gamma` 1 (no discount, as the paper's R_t), `temperature` 1, `reward_clip` 100.
    """

    sequence_level = True
    needs_teacher = True

    def __init__(
        self,
        weight: float = 1.0,
        alpha: float = 0.2,
        temperature: float = 1.0,
        clip_range: float | None = 0.2,
        gamma: float = 1.0,
        length_norm: bool = True,
        single_step: bool = True,
        whiten: bool = True,
        reward_clip: float | None = 100.0,
        max_new_tokens: int | None = None,
    ) -> None:
        super().__init__(weight)
        self.alpha = number(alpha, f"{OWNER}: alpha", low=0, high=1)
        self.temperature = number(temperature, f"{OWNER}: temperature", low=0, low_open=True)
        self.clip_range = number(clip_range, f"{OWNER}: clip_range", low=0, high=1, low_open=True, high_open=True,
                                 allow_none=True)  # fmt: skip
        self.gamma = number(gamma, f"{OWNER}: gamma", low=0, high=1)
        self.length_norm = boolean(length_norm, f"{OWNER}: length_norm")
        self.single_step = boolean(single_step, f"{OWNER}: single_step")
        self.whiten = boolean(whiten, f"{OWNER}: whiten")
        self.reward_clip = number(reward_clip, f"{OWNER}: reward_clip", low=0, low_open=True, allow_none=True)
        self.max_new_tokens = integer(max_new_tokens, f"{OWNER}: max_new_tokens", minimum=1, allow_none=True)

    def forward(self, view: StepView) -> Tensor:
        raise DistillError(f"{OWNER} is a sequence-level term: it trains causal LMs (distill-lm lm_distill=[minillm])")

    def loss(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """`minillm_loss` with this term's settings."""
        return minillm_loss(
            student_logits, teacher_logits, labels, alpha=self.alpha, temperature=self.temperature,
            clip_range=self.clip_range, gamma=self.gamma, length_norm=self.length_norm, single_step=self.single_step,
            whiten_advantages=self.whiten, reward_clip=self.reward_clip,
        )  # fmt: skip

    def rollout(self, module: LMDistillationModule, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The batch's prompts continued from the teacher-student mixture, as a right-padded batch of the same
        length: labels -100 on the prompts and the padding, the sampled tokens elsewhere."""
        ids = batch["input_ids"]
        rows, length = ids.shape
        prompts = module.prompt_lengths(batch)
        if "position_ids" in batch:  # packed rows: the prompt stays inside the row's first document
            starts = (batch["position_ids"][:, 1:] == 0).long()
            first = torch.where(starts.any(1), starts.argmax(1) + 1, torch.full_like(prompts, length))
            prompts = torch.minimum(prompts, (first - 1).clamp(min=1))
        room = length - prompts
        if self.max_new_tokens is not None:
            room = room.clamp(max=self.max_new_tokens)
        width = int(prompts.max())
        left = ids.new_full((rows, width), module.pad_token_id)
        left_mask = torch.zeros_like(left)
        for i, p in enumerate(prompts.tolist()):
            left[i, width - p :], left_mask[i, width - p :] = ids[i, :p], 1
        student = module.student
        was_training = student.training
        student.eval()
        try:
            tokens, lengths = sample_mixed(
                student, list(module.teachers.values()), left, left_mask, room, self.alpha, self.temperature,
                module.eos_token_id, module.pad_token_id,
            )  # fmt: skip
        finally:
            student.train(was_training)
        input_ids = ids.new_full((rows, length), module.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, (p, n) in enumerate(zip(prompts.tolist(), lengths.tolist(), strict=True)):
            input_ids[i, :p], input_ids[i, p : p + n] = ids[i, :p], tokens[i, :n]
            attention_mask[i, : p + n] = 1
            labels[i, p : p + n] = tokens[i, :n]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def sequence_loss(self, module: LMDistillationModule, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample responses to the batch's prompts, score them with the student and the teachers: (loss, parts)."""
        from distill.llm.module import model_inputs

        if not module.teachers:
            raise DistillError(f"{OWNER} needs a teacher, and this run has none")
        sampled = self.rollout(module, batch)
        inputs = {**model_inputs(sampled), "use_cache": False}
        student_logits = module.student(**inputs).logits
        with torch.no_grad():
            teacher_logits = torch.stack([t(**inputs).logits.float() for t in module.teachers.values()]).mean(0)
        return self.loss(student_logits[:, :-1], teacher_logits[:, :-1], sampled["labels"][:, 1:])
