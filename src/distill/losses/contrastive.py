"""Contrastive representation distillation (Tian et al. 2020, "Contrastive Representation Distillation", ICLR).

CRD maximises a lower bound on the mutual information between the student's and the teacher's
representation of the same sample. Both representations are embedded by a learned linear head
and L2-normalised; each is scored against a memory bank holding the *other* side's embedding of
every training sample (the positive: the same sample; the negatives: K rows drawn uniformly from
the bank), and a noise-contrastive estimation (NCE) loss tells the positive from the noise. The
banks are refreshed with a momentum average of the embeddings after every training step.

This follows the NCE-with-memory-bank form of the authors' reference implementation
(github.com/HobbitLong/RepDistiller: `crd/memory.py::ContrastMemory`, `crd/criterion.py`):

* score of embedding `v` against bank row `m`: `exp(<v, m> / T) / Z`, with the normalising
  constant `Z = mean(exp(<v, m> / T)) * N` estimated on the first training batch and then held
  fixed (one `Z` per direction);
* NCE loss with noise distribution `P_n = 1/N` (`ContrastLoss`), summed over both directions
  (the student embedding against the teacher bank, and the teacher embedding against the
  student bank);
* negatives are drawn uniformly from all `N` rows, excluding nothing (the sample's own row may
  be drawn as a negative, with probability K/N per step, exactly as in the reference);
* bank update `m[i] <- normalise(momentum * m[i] + (1 - momentum) * v_i)` after the scores are
  taken, without gradients, in training mode only.

Differences from the reference, all deliberate:

* the NCE terms are computed in log space (`softplus` of log-score differences) instead of as
  ratios of `exp` scores, so a small temperature cannot overflow float32; the reference adds
  `eps = 1e-7` to the denominators, which this leaves out (the values agree otherwise);
* banks start as random unit vectors (the reference draws them uniformly in a small box);
* by default the K negatives of a step are *shared* by the samples of the batch (scores are a
  `[B, d] x [d, K]` product): per-sample negatives as in the reference gather `B * K * d`
  floats per bank, 8.6 GB at batch 4096 and K 4096. Each sample still sees K uniform draws
  from the bank. `share_negatives=False` gives the reference's independent draws per sample;
* the reference's CIFAR loader draws negatives only from samples of *other classes*; here the
  transfer set is unlabelled, so negatives are uniform over the whole bank (its `mode='relax'`).

Under `torch.distributed` the bank updates of all ranks are gathered, so every rank (and the
buffers DDP broadcasts from rank 0) holds every update.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import LossTerm, StepView
from distill.validate import integer, number


def nce_loss(pos: Tensor, neg: Tensor, num_samples: int) -> Tensor:
    """The NCE loss of CRD (the reference's `ContrastLoss`) from log-scores, averaged over the batch.

    `pos` `[B]` and `neg` `[B, K]` are log P = <v, m> / T - log Z of the positive and of the K
    negatives of each sample; the noise distribution is uniform, P_n = 1 / `num_samples`:

        loss = -mean_b [ log(P_pos / (P_pos + K Pn)) + sum_k log(K Pn / (P_neg_k + K Pn)) ]
    """
    log_noise = math.log(neg.shape[-1] / num_samples)  # log(K * Pn)
    # -log(P / (P + K Pn)) = softplus(log K Pn - log P);  -log(K Pn / (P + K Pn)) = softplus(log P - log K Pn)
    return (F.softplus(log_noise - pos).sum() + F.softplus(neg - log_noise).sum()) / pos.shape[0]


def _all_gather(t: Tensor) -> Tensor:
    """`t` from every rank, concatenated along dim 0 (`t` itself outside `torch.distributed`)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class CRDLoss(LossTerm):
    """CRD between one student layer and one teacher layer (Tian et al. 2020), NCE form with memory banks.

    Needs the sample index of every batch row (`view.index`) and the training-set size
    (`view.num_samples`): the banks hold one row per training sample. Both embedding heads are
    built from the feature shapes (features are flattened to `[B, D]`) and train with the
    student; the teacher network stays frozen.
    """

    def __init__(
        self,
        student_layer: str,
        teacher_layer: str,
        teacher: str | None = None,
        weight: float = 0.8,
        embed_dim: int = 128,
        num_negatives: int = 4096,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        share_negatives: bool = True,
        max_samples: int | None = 256,
    ) -> None:
        super().__init__(weight)
        for name, value in (("embed_dim", embed_dim), ("num_negatives", num_negatives)):
            integer(value, f"CRD: {name}", minimum=1)
        number(nce_temperature, "CRD: nce_temperature", low=0, low_open=True)
        number(momentum, "CRD: momentum", low=0, high=1, high_open=True)
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.teacher = teacher
        self.embed_dim, self.num_negatives = embed_dim, num_negatives
        self.nce_temperature, self.momentum = float(nce_temperature), float(momentum)
        self.share_negatives = share_negatives
        integer(max_samples, "CRD: max_samples", minimum=1, allow_none=True)
        # The contrast uses the first max_samples rows of each (shuffled) batch; the memory banks
        # take every row. Its cost is max_samples x num_negatives per direction, so large student
        # batches stay affordable (the paper trains with batches of 64).
        self.max_samples = max_samples
        self.num_samples = 0
        self.embed_s: nn.Linear | None = None
        self.embed_t: nn.Linear | None = None
        # memory_s: the student's embedding of every sample; memory_t: the teacher's.
        self.register_buffer("memory_s", None)
        self.register_buffer("memory_t", None)
        # log Z of (student vs teacher bank, teacher vs student bank); NaN until the first training step.
        self.register_buffer("log_z", None)
        self._z_fixed = False

    def build(self, view: StepView) -> None:
        if view.index is None or view.num_samples is None:
            raise DistillError(
                "CRD needs sample indices from the data module: its batches must carry 'index' "
                "and the training-set size must be known"
            )
        n = int(view.num_samples)
        if self.num_negatives >= n:
            raise DistillError(
                f"CRD: num_negatives ({self.num_negatives}) must be smaller than the number of "
                f"training samples ({n}); lower distill.crd.num_negatives"
            )
        s, t = self.feature_pair(view)
        self.num_samples = n
        self.embed_s = nn.Linear(s[0].numel(), self.embed_dim)
        self.embed_t = nn.Linear(t[0].numel(), self.embed_dim)
        self.memory_s = F.normalize(torch.randn(n, self.embed_dim), dim=1)
        self.memory_t = F.normalize(torch.randn(n, self.embed_dim), dim=1)
        self.log_z = torch.full((2,), float("nan"))
        self._z_fixed = False

    def embed(self, view: StepView) -> tuple[Tensor, Tensor]:
        """The L2-normalised student and teacher embeddings `[B, embed_dim]` (float32)."""
        if self.embed_s is None or self.embed_t is None:
            raise DistillError("CRD: build(view) must run before the first step (DistillationModule does this)")
        s, t = self.feature_pair(view)
        with torch.autocast(device_type=s.device.type, enabled=False):  # exp(<v, m> / 0.07) wants float32
            v_s = F.normalize(self.embed_s(s.flatten(1).to(self.embed_s.weight.dtype)).float(), dim=1)
            v_t = F.normalize(self.embed_t(t.flatten(1).to(self.embed_t.weight.dtype)).float(), dim=1)
        return v_s, v_t

    def sample_negatives(self, batch_size: int, device: torch.device) -> Tensor:
        """Bank rows drawn uniformly (nothing excluded): `[K]` shared by the batch, or `[B, K]`."""
        shape = (self.num_negatives,) if self.share_negatives else (batch_size, self.num_negatives)
        return torch.randint(self.num_samples, shape, device=device)

    def log_scores(
        self, v: Tensor, bank: Tensor, index: Tensor, negatives: Tensor, log_z: Tensor
    ) -> tuple[Tensor, Tensor]:
        """log P = <v, m> / T - log Z of each row's positive `[B]` and its negatives `[B, K]`; no gradient to the bank."""
        t = self.nce_temperature
        pos = (v * bank[index].to(v.dtype)).sum(1) / t - log_z
        if negatives.dim() == 1:  # shared: one [B, d] x [d, K] product, the shift fused into it
            neg = torch.addmm(-log_z, v, bank[negatives].to(v.dtype).t(), alpha=1 / t)
        else:
            neg = torch.baddbmm(-log_z, bank[negatives].to(v.dtype), v.unsqueeze(2), alpha=1 / t).squeeze(2)
        return pos, neg

    def _fixed_log_z(self) -> Tensor | None:
        """The stored log Z, or None before the first training step (checked on the host until then only)."""
        if not self._z_fixed:
            self._z_fixed = bool(torch.isfinite(self.log_z).all())
        return self.log_z if self._z_fixed else None

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._z_fixed = False  # look at the loaded log Z again

    def forward(self, view: StepView) -> Tensor:
        if view.index is None:
            raise DistillError(
                "CRD needs sample indices from the data module: its batches must carry 'index' "
                "and the training-set size must be known"
            )
        all_s, all_t = self.embed(view)
        all_index = view.index.to(all_s.device)
        rows = slice(None) if self.max_samples is None else slice(0, self.max_samples)
        v_s, v_t, index = all_s[rows], all_t[rows], all_index[rows]
        negatives = self.sample_negatives(len(index), v_s.device)
        fixed = self._fixed_log_z()
        loss, estimates = v_s.new_zeros(()), []
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            # the student embedding against the teacher bank, the teacher embedding against the student bank
            for i, (v, bank) in enumerate(((v_s, self.memory_t), (v_t, self.memory_s))):
                if fixed is not None:
                    pos, neg = self.log_scores(v, bank, index, negatives, fixed[i].to(v.dtype))
                else:  # Z = mean(exp(<v, m> / T)) * N over this batch's B * (K + 1) scores, as the reference
                    pos, neg = self.log_scores(v, bank, index, negatives, v.new_zeros(()))
                    total = torch.logaddexp(torch.logsumexp(pos, 0), torch.logsumexp(neg.flatten(), 0))
                    log_z = (total - math.log(pos.numel() + neg.numel()) + math.log(self.num_samples)).detach()
                    estimates.append(log_z)
                    pos, neg = pos - log_z, neg - log_z
                loss = loss + nce_loss(pos, neg, self.num_samples)
        if self.training:
            with torch.no_grad():
                if estimates:  # the first training step fixes Z for the rest of the run
                    self.log_z.copy_(torch.stack(estimates))
                    self._z_fixed = True
                self.update_memory(all_index, all_s.detach(), all_t.detach())
        return loss

    @torch.no_grad()
    def update_memory(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        """m[i] <- normalise(momentum * m[i] + (1 - momentum) * v_i) in both banks, over all ranks' batches."""
        index, v_s, v_t = _all_gather(index), _all_gather(v_s), _all_gather(v_t)
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            rows = bank[index] * self.momentum + v.to(bank.dtype) * (1 - self.momentum)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))
