"""Iterative Memory Network: a memory walks the user's recent items several times.

After Lin et al., "Iterative Memory Network for Long Sequential User Behavior Modeling
in Recommender Systems" (ICLR'22), adapted from click-through prediction to ranking the
next item of a stream. The target item triggers the memory: starting from its embedding,
the memory reads the sequence with an attention that compares every element with both
the target and the current memory, and is updated by a GRU after each read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tempint.data.batch import Chunk, Interactions
from tempint.errors import ConfigError
from tempint.models.base import (
    Capabilities,
    InteractionModel,
    Mode,
    Output,
    at_least_float32,
    exact_scores,
)

__all__ = [
    "IterativeMemoryNetwork",
    "MultiWayAttention",
    "multiway_features",
    "LOSSES",
    "EVAL_MODES",
]

LOSSES = ("softmax", "bpr")
EVAL_MODES = ("factorised", "full")
_MASKED = -1e4  # finite: an empty sequence reads zeros instead of NaN


def multiway_features(e: Tensor, v: Tensor, m: Tensor) -> Tensor:
    """[e − m, e − v, e ⊙ m, e ⊙ v] [B, C, L, 4d] for e [B, L, d], v and m [B, C, d].

    C is the number of candidates per row (target and negatives in training, items at
    evaluation): differences and products with the memory relate the sequence to itself
    through what has been read so far, those with v relate it to the target.
    """
    e, v, m = e[:, None], v[:, :, None], m[:, :, None]
    return torch.cat((e - m, e - v, e * m, e * v), dim=-1)


class MultiWayAttention(nn.Module):
    """α(e, v, m) = w₂ᵀ relu(W₁ multiway_features(e, v, m) + b₁) + b₂, logits [B, C, L].

    `forward` never builds the [B, C, L, 4d] features: W₁ is split into its four
    blocks A, B, Cm, Cv, so W₁f = e(A + B) − mA − vB + e(diag(m) Cm + diag(v) Cv); the
    candidate-dependent part is one batched matmul of e with a [B, C, d, h] matrix, half
    the work and a quarter of the memory of the explicit form (`reference`).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = int(dim)
        self.hidden = nn.Linear(4 * dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def reference(self, e: Tensor, v: Tensor, m: Tensor) -> Tensor:
        return self.score(F.relu(self.hidden(multiway_features(e, v, m)))).squeeze(-1)

    def forward(self, e: Tensor, v: Tensor, m: Tensor) -> Tensor:
        a, b, cm, cv = self.hidden.weight.t().split(self.dim)  # each [d, h]
        per_candidate = self.hidden.bias - m @ a - v @ b  # [B, C, h]
        mixed = m[..., None] * cm + v[..., None] * cv  # [B, C, d, h]
        pre = (e @ (a + b))[:, None] + e[:, None] @ mixed + per_candidate[:, :, None]
        return self.score(F.relu(pre)).squeeze(-1)


class IterativeMemoryNetwork(InteractionModel):
    """IMN over each user's last `length` items, scoring candidates natively.

    Sequence: per user a shift register of its last L item ids and times [num_users, L]
    (most recent first), carried across batches. Element j of a user's sequence at time
    t is e_j = E(item_j) + P(j) + T(⌊log₂(1 + t − t_j)⌋) (learned position-by-recency
    and log-bucketed time-gap embeddings), zero at padding.

    Memory, for a target v [B, C, d]: m₀ = v; `iterations` times: α = softmax over the
    valid positions of MultiWayAttention(e, v, m), r = Σ_j α_j e_j, m = GRU(r, m); then
    `enhancements` steps m = GRU'(v, m), which feed the target back in after the walk
    (the paper's memory enhancement). Score: s(v) = ⟨m, v⟩ + b_v (a per-item bias).

    Two paths share all weights. Both are trained on the same candidates: the target and
    `num_negatives` uniform random items (sampled softmax or BPR; a negative equal to the
    target is left out), each path's loss weighted by `factorised_weight` / `full_weight`.
    - full (the paper): v is the candidate itself, so the walk over the sequence looks for
      that candidate. Ranking every item this way (`eval_mode: full`, chunked along the
      item axis so [B, chunk, d, h] stays under `eval_chunk_elements`) costs
      O(B·I·L·d·h) per step: tens of interactions per second on a CPU for Wikipedia.
    - factorised (the default, for training and evaluation): v̂ = W_q e₀ + b_q, from the
      user's most recent element, replaces the candidate as the memory's trigger, as the
      attention's target and as the enhancement input, so the memory m̂ [B, d] is
      computed once per row and every item is scored as ⟨m̂, v_c⟩ + b_c, one [B, d] × [d, I]
      product. What differs from the paper: the walk cannot look for a particular
      candidate; only the final dot product sees it. The multi-way attention still
      compares each element with the trigger and with the memory.
    On Wikipedia, adding the full path's loss to the factorised one (`full_weight: 1`)
    made training about six times slower without improving the factorised ranking, so the
    default trains the path that is evaluated. The paper's model is `factorised_weight: 0,
    full_weight: 1, eval_mode: full`.

    `Mode.TRAIN` returns losses only, `Mode.SCORE` scores [B, I], `Mode.ONLINE` both.
    """

    # per-user buffers only; items are parameters
    capabilities = Capabilities(scorers=("native",), per_user_state=True)

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 32,
        length: int = 50,
        iterations: int = 2,
        enhancements: int = 1,
        attention_hidden: int = 32,
        time_buckets: int = 32,
        num_negatives: int = 20,
        loss: str = "softmax",
        factorised_weight: float = 1.0,
        full_weight: float = 0.0,
        eval_mode: str = "factorised",
        eval_chunk_elements: int = 2**24,
    ) -> None:
        super().__init__(num_users, num_items)
        if loss not in LOSSES:
            raise ConfigError(f"loss '{loss}' is unknown; known: softmax, bpr (model.loss)")
        if eval_mode not in EVAL_MODES:
            raise ConfigError(
                f"eval_mode '{eval_mode}' is unknown; known: factorised, full (model.eval_mode)"
            )
        for name, value in (("dim", dim), ("length", length), ("num_negatives", num_negatives)):
            if int(value) < 1:
                raise ConfigError(f"model.{name}={value} must be at least 1")
        if float(factorised_weight) == 0.0 and float(full_weight) == 0.0:
            raise ConfigError(
                "model.factorised_weight and model.full_weight are both 0: nothing to train"
            )
        if int(iterations) < 0 or int(enhancements) < 0:
            raise ConfigError(
                f"model.iterations={iterations}, model.enhancements={enhancements}: "
                "both must be at least 0"
            )
        self.dim = int(dim)
        self.length = int(length)
        self.iterations = int(iterations)
        self.enhancements = int(enhancements)
        self.num_negatives = int(num_negatives)
        self.loss = loss
        self.factorised_weight = float(factorised_weight)
        self.full_weight = float(full_weight)
        self.eval_mode = eval_mode
        self.eval_chunk_elements = int(eval_chunk_elements)

        self.item_embedding = nn.Embedding(num_items, self.dim)
        self.position = nn.Embedding(self.length, self.dim)
        self.time = nn.Embedding(int(time_buckets), self.dim)
        for table in (self.item_embedding, self.position, self.time):
            nn.init.normal_(table.weight, std=self.dim**-0.5)
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.attention = MultiWayAttention(self.dim, int(attention_hidden))
        self.update = nn.GRUCell(self.dim, self.dim)
        self.enhance = nn.GRUCell(self.dim, self.dim)
        self.trigger = nn.Linear(self.dim, self.dim)
        self.register_buffer("seq_item", torch.full((num_users, self.length), -1, dtype=torch.long))
        self.register_buffer("seq_t", torch.zeros(num_users, self.length, dtype=torch.float64))

    # ---- stream state ------------------------------------------------------------------

    def reset_state(self) -> None:
        self.seq_item.fill_(-1)
        self.seq_t.zero_()

    def detach_state(self) -> None:
        """Nothing to cut: the state is item ids and times, embedded afresh at every read."""

    def begin_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if chunk.local_users is not None:
            raise ConfigError(
                "imn keeps one global sequence per user; use sampler=tbatch or sampler=chrono"
            )

    # ---- pieces ------------------------------------------------------------------------

    def sequence(self, users: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Embedded sequences e [B, L, d] (zero at padding) and their mask [B, L]."""
        items = self.seq_item[users]
        valid = items >= 0
        gap = (t.to(torch.float64)[:, None] - self.seq_t[users]).clamp(min=0)
        bucket = torch.log2(gap + 1).floor().long().clamp(max=self.time.num_embeddings - 1)
        e = self.item_embedding(items.clamp(min=0)) + self.position.weight + self.time(bucket)
        return e * valid[..., None], valid

    def memory(self, e: Tensor, valid: Tensor, v: Tensor) -> Tensor:
        """Final memory [B, C, d] for targets v [B, C, d] (iterations, then enhancement)."""
        size, count, dim = v.shape
        m = v
        mask = ~valid[:, None, :]
        for _ in range(self.iterations):
            weight = F.softmax(self.attention(e, v, m).masked_fill(mask, _MASKED), dim=-1)
            read = weight @ e  # [B, C, L] @ [B, L, d]; padding rows of e are zero
            m = self.update(read.reshape(-1, dim), m.reshape(-1, dim)).view(size, count, dim)
        for _ in range(self.enhancements):
            m = self.enhance(v.reshape(-1, dim), m.reshape(-1, dim)).view(size, count, dim)
        return m

    def factorised_memory(self, e: Tensor, valid: Tensor) -> Tensor:
        """Candidate-free memory m̂ [B, d], triggered by the most recent element."""
        return self.memory(e, valid, self.trigger(e[:, :1]))[:, 0]

    def full_scores(self, e: Tensor, valid: Tensor, items: Tensor) -> Tensor:
        """Paper scores of candidates `items` [B, C] (the target triggers the memory)."""
        v = self.item_embedding(items)
        return (self.memory(e, valid, v) * v).sum(-1) + self.item_bias[items]

    def all_scores(self, e: Tensor, valid: Tensor) -> Tensor:
        """Scores of every item [B, I] under `eval_mode`."""
        if self.eval_mode == "factorised":
            m = self.factorised_memory(e, valid)
            return m @ self.item_embedding.weight.t() + self.item_bias
        size = e.shape[0]
        per_candidate = self.dim * self.attention.hidden.out_features
        chunk = max(1, self.eval_chunk_elements // max(1, size * per_candidate))
        items = torch.arange(self.num_items, device=e.device)
        parts = [self.full_scores(e, valid, part.expand(size, -1)) for part in items.split(chunk)]
        return torch.cat(parts, dim=1)

    # ---- one step ----------------------------------------------------------------------

    def forward(self, batch: Interactions, mode: Mode) -> Output:
        e, valid = self.sequence(batch.user, batch.t)
        output = Output()
        if mode.losses:
            output.losses = self._losses(e, valid, batch.item)
        if mode.scores:
            with exact_scores(e.device):  # ranked over all items: no bf16 ties
                output.scores = self.all_scores(at_least_float32(e), valid)
        self._append(batch)
        return output

    def _losses(self, e: Tensor, valid: Tensor, target: Tensor) -> dict[str, Tensor]:
        negatives = torch.randint(
            self.num_items, (target.shape[0], self.num_negatives), device=target.device
        )
        items = torch.cat((target[:, None], negatives), dim=1)  # [B, 1 + n], target first
        ignore = torch.cat(
            (torch.zeros_like(target[:, None], dtype=torch.bool), negatives == target[:, None]), 1
        )
        losses = {}
        if self.factorised_weight != 0.0:
            m = self.factorised_memory(e, valid)
            v = self.item_embedding(items)
            scores = (m[:, None] * v).sum(-1) + self.item_bias[items]
            losses["factorised"] = self.factorised_weight * self._rank_loss(scores, ignore)
        if self.full_weight != 0.0:
            scores = self.full_scores(e, valid, items)
            losses["full"] = self.full_weight * self._rank_loss(scores, ignore)
        return losses

    def _rank_loss(self, scores: Tensor, ignore: Tensor) -> Tensor:
        """Target in column 0 against the other columns, ignored columns left out."""
        if self.loss == "softmax":
            logits = scores.masked_fill(ignore, float("-inf"))
            return F.cross_entropy(logits, torch.zeros_like(scores[:, 0], dtype=torch.long))
        margin = F.logsigmoid(scores[:, :1] - scores[:, 1:])
        keep = ~ignore[:, 1:]
        return -(margin * keep).sum() / keep.sum().clamp(min=1)

    @torch.no_grad()
    def _append(self, batch: Interactions) -> None:
        """Shift each user's register by one and put the batch's interaction first.

        A user repeated in a chrono step is shifted once, by its last row of the step.
        """
        users = batch.user
        position = torch.arange(users.shape[0], device=users.device)
        last = torch.full((self.num_users,), -1, dtype=torch.long, device=users.device)
        last.scatter_reduce_(0, users, position, reduce="amax")
        rows = (last[users] == position).nonzero().squeeze(1)
        who = users[rows]
        items = torch.cat((batch.item[rows, None], self.seq_item[who, :-1]), dim=1)
        times = torch.cat((batch.t[rows, None].to(torch.float64), self.seq_t[who, :-1]), dim=1)
        self.seq_item[who] = items
        self.seq_t[who] = times
