"""Transformer-layer terms for BERT-family encoders: TinyBERT and MiniLM.

Every quantity is rebuilt from module-path taps (distill.taps), so neither model needs
`output_attentions` and the step view needs no field beyond `attention_mask`:

- hidden states: the output of `{prefix}.embeddings` (hidden state 0) and of
  `{prefix}.encoder.layer.{m-1}` (hidden state m, 1-based, as in `hidden_states` of transformers);
- self-attention of layer m: the outputs of its `attention.self.query`/`.key`/`.value` linear
  layers, `[batch, length, heads * head_dim]`, split into heads. The attention scores are
  A = Q Kᵀ / √head_dim and the attention distribution softmax(A) over the real (non-padding) keys,
  which is what BERT-style self-attention with absolute positions computes (before its dropout).

`prefix` is the backbone's attribute in the model: `bert` for `BertForSequenceClassification`,
`roberta` for RoBERTa, `electra` for ELECTRA. Padding positions (0 in `view.attention_mask`) are
left out of every average: as queries and as keys. Teacher features arrive without gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.validate import integer


def uniform_layer_map(student_layers: int, teacher_layers: int, embeddings: bool = True) -> list[tuple[int, int]]:
    """TinyBERT's uniform mapping n = g(m) = m·N/M (Jiao et al. 2020, §4.1), rounded down.

    Layers are numbered as in `hidden_states`: 0 is the embedding output, 1..M (1..N) the
    student's (teacher's) transformer layers. With `embeddings` the pair (0, 0) comes first.
    E.g. a 4-layer student of a 12-layer teacher: [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)].
    """
    m = integer(student_layers, "student_num_layers", minimum=1)
    n = integer(teacher_layers, "teacher_num_layers", minimum=1)
    if m > n:
        raise DistillError(f"uniform layer map: the student has more layers ({m}) than the teacher ({n})")
    return [(i, i * n // m) for i in range(0 if embeddings else 1, m + 1)]


def _layer_map(
    layer_map: Sequence[Sequence[int]] | None,
    student_num_layers: int | None,
    teacher_num_layers: int | None,
    embeddings: bool,
    where: str,
) -> list[tuple[int, int]]:
    if layer_map is None:
        if student_num_layers is None or teacher_num_layers is None:
            raise DistillError(
                f"{where}: give layer_map, or student_num_layers and teacher_num_layers for the uniform map"
            )
        return uniform_layer_map(student_num_layers, teacher_num_layers, embeddings)
    lowest = 0 if embeddings else 1
    if (
        isinstance(layer_map, str)
        or not layer_map
        or any(
            isinstance(pair, str)
            or len(pair) != 2
            or any(isinstance(i, bool) or not isinstance(i, int) or i < lowest for i in pair)
            for pair in layer_map
        )
    ):
        raise DistillError(
            f"{where}: layer_map must be a non-empty list of [student_layer, teacher_layer] integers >= {lowest}, "
            f"got {layer_map!r}"
        )
    return [(int(s), int(t)) for s, t in layer_map]


def _prefix(value: str, key: str) -> str:
    if not isinstance(value, str) or not value or value.startswith(".") or value.endswith("."):
        raise DistillError(f"{key} must be the backbone's module path (e.g. 'bert'), got {value!r}")
    return value


def hidden_path(prefix: str, layer: int) -> str:
    """Module path whose output is hidden state `layer` (0 = embeddings) of a BERT-style backbone."""
    return f"{prefix}.embeddings" if layer == 0 else f"{prefix}.encoder.layer.{layer - 1}"


def attention_path(prefix: str, layer: int, part: str) -> str:
    """Module path of the `part` ('query', 'key', 'value') projection of transformer layer `layer` (1-based)."""
    return f"{prefix}.encoder.layer.{layer - 1}.attention.self.{part}"


def split_heads(x: Tensor, heads: int, where: str) -> Tensor:
    """`[batch, length, heads * head_dim]` -> `[batch, heads, length, head_dim]`."""
    if x.ndim != 3 or x.shape[-1] % heads:
        raise DistillError(
            f"{where}: expected [batch, length, width] projections with width divisible by {heads} heads, "
            f"got shape {list(x.shape)}"
        )
    b, length, width = x.shape
    return x.reshape(b, length, heads, width // heads).transpose(1, 2)


def scaled_dot(x: Tensor, y: Tensor) -> Tensor:
    """x yᵀ / √d for `[batch, heads, length, d]` inputs: `[batch, heads, length, length]`."""
    return x @ y.transpose(-1, -2) / math.sqrt(x.shape[-1])


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last (key) axis of `[batch, heads, q, k]` scores, padding keys (mask 0) at 0."""
    keys = mask.bool()[:, None, None, :]
    return torch.softmax(scores.masked_fill(~keys, float("-inf")), dim=-1).masked_fill(~keys, 0.0)


def attention_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """(1/h) Σ_heads MSE(A_S, A_T) over the (query, key) pairs where both positions are real.

    TinyBERT's attention loss (Jiao et al. 2020, eq. 3) for `[batch, heads, length, length]`
    matrices; entries are averaged over the batch's real pairs and the heads.
    """
    m = mask.float()
    pairs = (m[:, :, None] * m[:, None, :])[:, None]  # [B, 1, L, L]
    error = (student - teacher).pow(2) * pairs
    return error.sum() / (pairs.sum().clamp_min(1) * student.shape[1])


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Σ_keys P_T log(P_T / P_S), averaged over real query positions and heads.

    For `[batch, heads, length, length]` distributions over keys (rows sum to 1 over the real keys).
    This is MiniLM's per-head KL (Wang et al. 2020, eqs. 4 and 6), teacher first.
    """
    m = mask.float()
    keys = m[:, None, None, :]
    log_ratio = torch.log(teacher.clamp_min(1e-30)) - torch.log(student.clamp_min(1e-30))
    per_query = (teacher * log_ratio * keys).sum(-1)  # [B, H, L]
    queries = m[:, None, :]
    return (per_query * queries).sum() / (queries.sum().clamp_min(1) * student.shape[1])


class _TransformerTerm(LossTerm):
    """Shared plumbing: the padding mask and the (student, teacher) feature pairs by position."""

    where = "transformer term"

    def _mask(self, view: StepView, like: Tensor) -> Tensor:
        b, length = like.shape[0], like.shape[1]
        if view.attention_mask is None:
            return like.new_ones(b, length)
        if tuple(view.attention_mask.shape) != (b, length):
            raise DistillError(
                f"{self.where}: attention_mask has shape {list(view.attention_mask.shape)} but the features "
                f"are [batch, length] = {[b, length]}"
            )
        return view.attention_mask.to(like.device, like.dtype)

    def _pair(self, view: StepView, i: int) -> tuple[Tensor, Tensor]:
        s, t = self.feature_pair(view, i)
        if s.ndim == 3 and t.ndim == 3 and t.shape[1] > s.shape[1]:
            # Teacher outputs computed once over rows padded to the split's longest (cached): its positions
            # past this batch's width are padding, and the real ones do not depend on how much follows.
            t = t[:, : s.shape[1]]
        if s.ndim != 3 or t.ndim != 3 or s.shape[:2] != t.shape[:2]:
            raise DistillError(
                f"{self.where}: student ({self.student_layers[i]}) and teacher ({self.teacher_layers[i]}) must give "
                f"[batch, length, width] features of the same batch and length (one tokenizer), got "
                f"{list(s.shape)} and {list(t.shape)}"
            )
        return s.float(), t.float()


class TinyBertHiddenLoss(_TransformerTerm):
    """TinyBERT hidden-state (and embedding) distillation (Jiao et al. 2020, eqs. 4 and 5).

    For each pair (m, n) of `layer_map`: MSE(H_S^m W, H_T^n), the squared error averaged over
    real tokens and the teacher's width; the pairs are summed (λ_m = 1). W is a learned linear
    map from the student's width to the teacher's: one W_h shared by the transformer layers and a
    separate W_e for the embedding pair (m = 0), as in the paper (identity when the widths agree).
    Without `layer_map`, the uniform map (`uniform_layer_map`, embeddings included) of
    `student_num_layers` onto `teacher_num_layers`.
    """

    where = "tinybert hidden"

    def __init__(
        self,
        layer_map: Sequence[Sequence[int]] | None = None,
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
        student_prefix: str = "bert",
        teacher_prefix: str = "bert",
        teacher: str | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.layer_map = _layer_map(layer_map, student_num_layers, teacher_num_layers, True, self.where)
        sp, tp = _prefix(student_prefix, "student_prefix"), _prefix(teacher_prefix, "teacher_prefix")
        self.student_layers = tuple(hidden_path(sp, s) for s, _ in self.layer_map)
        self.teacher_layers = tuple(hidden_path(tp, t) for _, t in self.layer_map)
        self.teacher = teacher
        self.projections = nn.ModuleDict()

    def _key(self, i: int) -> str:
        return "embeddings" if self.layer_map[i][0] == 0 else "hidden"

    def build(self, view: StepView) -> None:
        self.projections = nn.ModuleDict()
        for i in range(len(self.layer_map)):
            s, t = self._pair(view, i)
            key = self._key(i)
            if key not in self.projections:
                same = s.shape[-1] == t.shape[-1]
                self.projections[key] = nn.Identity() if same else nn.Linear(s.shape[-1], t.shape[-1])
            elif isinstance(self.projections[key], nn.Linear) and (
                self.projections[key].in_features,
                self.projections[key].out_features,
            ) != (s.shape[-1], t.shape[-1]):
                raise DistillError(
                    f"{self.where}: mapped layers have different widths, so one W_h cannot serve them all"
                )

    def forward(self, view: StepView) -> Tensor:
        total = view.student_logits.new_zeros((), dtype=torch.float32)
        for i in range(len(self.layer_map)):
            s, t = self._pair(view, i)
            mask = self._mask(view, s)
            error = (self.projections[self._key(i)](s) - t).pow(2).mean(-1)  # [B, L]
            total = total + (error * mask).sum() / mask.sum().clamp_min(1)
        return total


def _heads(student_heads: int, teacher_heads: int | None, where: str) -> int:
    heads = integer(student_heads, "student_heads", minimum=1)
    other = heads if teacher_heads is None else integer(teacher_heads, "teacher_heads", minimum=1)
    if other != heads:
        raise DistillError(
            f"{where}: student and teacher need the same number of attention heads, got {heads} and {other}"
        )
    return heads


class TinyBertAttentionLoss(_TransformerTerm):
    """TinyBERT attention-based distillation (Jiao et al. 2020, eq. 3), summed over `layer_map` pairs.

    `kind: mse` (the paper): (1/h) Σ_heads MSE(A_S, A_T) on the unnormalised attention matrices
    A = Q Kᵀ / √d_head, which the paper fits instead of softmax(A) (it reports faster convergence
    and better results); entries with a padding query or key are left out (the authors' code
    instead zeroes the masked scores and keeps them in the mean). `kind: kl`: the KL divergence
    from the teacher's attention distributions softmax(A) (over real keys) to the student's, per
    query and head, averaged over real queries and heads, as MiniLM does (`attention_kl`).
    Layers are transformer layers 1..M and 1..N; without `layer_map`, the uniform map.
    Both models need the same number of heads (the losses compare head by head).
    """

    where = "tinybert attention"

    def __init__(
        self,
        student_heads: int,
        teacher_heads: int | None = None,
        layer_map: Sequence[Sequence[int]] | None = None,
        student_num_layers: int | None = None,
        teacher_num_layers: int | None = None,
        kind: str = "mse",
        student_prefix: str = "bert",
        teacher_prefix: str = "bert",
        teacher: str | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.heads = _heads(student_heads, teacher_heads, self.where)
        if kind not in ("mse", "kl"):
            raise DistillError(f"{self.where}: kind must be 'mse' or 'kl', got {kind!r}")
        self.kind = kind
        self.layer_map = _layer_map(layer_map, student_num_layers, teacher_num_layers, False, self.where)
        sp, tp = _prefix(student_prefix, "student_prefix"), _prefix(teacher_prefix, "teacher_prefix")
        self.student_layers = tuple(attention_path(sp, s, p) for s, _ in self.layer_map for p in ("query", "key"))
        self.teacher_layers = tuple(attention_path(tp, t, p) for _, t in self.layer_map for p in ("query", "key"))
        self.teacher = teacher

    def _scores(self, view: StepView, k: int) -> tuple[Tensor, Tensor]:
        (sq, tq), (sk, tk) = self._pair(view, 2 * k), self._pair(view, 2 * k + 1)
        s = scaled_dot(split_heads(sq, self.heads, self.where), split_heads(sk, self.heads, self.where))
        t = scaled_dot(split_heads(tq, self.heads, self.where), split_heads(tk, self.heads, self.where))
        return s, t

    def build(self, view: StepView) -> None:
        for k in range(len(self.layer_map)):
            self._scores(view, k)

    def forward(self, view: StepView) -> Tensor:
        total = view.student_logits.new_zeros((), dtype=torch.float32)
        for k in range(len(self.layer_map)):
            s, t = self._scores(view, k)
            mask = self._mask(view, self.feature_pair(view, 2 * k)[0])
            if self.kind == "mse":
                total = total + attention_mse(s, t, mask)
            else:
                total = total + attention_kl(masked_softmax(s, mask), masked_softmax(t, mask), mask)
        return total


class MiniLMLoss(_TransformerTerm):
    """MiniLM deep self-attention distillation (Wang et al. 2020, eqs. 4, 6 and 7): L_AT + L_VR.

    On one student layer and one teacher layer (the last ones in the paper; 1-based):
    L_AT = (1/(h|x|)) Σ_a Σ_t KL(A_T[a,t] ‖ A_S[a,t]) on the attention distributions
    softmax(Q Kᵀ / √d_k), and L_VR the same on the value relations softmax(V Vᵀ / √d_k), each
    model with its own head size d_k; t runs over the real tokens, and keys are the real ones.
    `attention_weight` and `value_weight` scale the two parts (1 and 1 in the paper). Student
    and teacher need the same number of heads; their widths may differ.
    """

    where = "minilm"

    def __init__(
        self,
        student_layer: int,
        teacher_layer: int,
        student_heads: int,
        teacher_heads: int | None = None,
        attention_weight: float = 1.0,
        value_weight: float = 1.0,
        student_prefix: str = "bert",
        teacher_prefix: str = "bert",
        teacher: str | None = None,
        weight: float = 1.0,
    ) -> None:
        super().__init__(weight)
        self.heads = _heads(student_heads, teacher_heads, self.where)
        s = integer(student_layer, "student_layer", minimum=1)
        t = integer(teacher_layer, "teacher_layer", minimum=1)
        for key, value in (("attention_weight", attention_weight), ("value_weight", value_weight)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise DistillError(f"{self.where}: {key} must be a finite number >= 0, got {value!r}")
        self.attention_weight, self.value_weight = float(attention_weight), float(value_weight)
        sp, tp = _prefix(student_prefix, "student_prefix"), _prefix(teacher_prefix, "teacher_prefix")
        parts = ("query", "key", "value")
        self.student_layers = tuple(attention_path(sp, s, p) for p in parts)
        self.teacher_layers = tuple(attention_path(tp, t, p) for p in parts)
        self.teacher = teacher

    def _relations(self, view: StepView) -> tuple[Tensor, ...]:
        (sq, tq), (sk, tk), (sv, tv) = (self._pair(view, i) for i in range(3))
        mask = self._mask(view, sq)

        def heads(x: Tensor) -> Tensor:
            return split_heads(x, self.heads, self.where)

        s_att = masked_softmax(scaled_dot(heads(sq), heads(sk)), mask)
        t_att = masked_softmax(scaled_dot(heads(tq), heads(tk)), mask)
        s_val = masked_softmax(scaled_dot(heads(sv), heads(sv)), mask)
        t_val = masked_softmax(scaled_dot(heads(tv), heads(tv)), mask)
        return s_att, t_att, s_val, t_val, mask

    def build(self, view: StepView) -> None:
        self._relations(view)

    def forward(self, view: StepView) -> Tensor:
        s_att, t_att, s_val, t_val, mask = self._relations(view)
        return self.attention_weight * attention_kl(s_att, t_att, mask) + self.value_weight * attention_kl(
            s_val, t_val, mask
        )
