"""Time-aware LSTM: one LSTM per user whose gates open and close with the time gap.

After Perera & Zimmermann's online cross-network LSTM recommender, reduced to one network
and next-item prediction: a factorisation-machine input layer, input and forget gates
scaled by the time since the user's previous interaction, and an attention vector over
the user's earlier hidden states entering the cell through its own gates.
"""

from __future__ import annotations

import math

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

__all__ = ["TimeAwareLSTM", "TimeAwareLSTMCell", "time_aware_gates", "fm_pool"]

_MASKED = -1e4  # finite: a user without stored states gets uniform weights over zeros


def time_aware_gates(
    input_pre: Tensor, forget_pre: Tensor, delta_t: Tensor
) -> tuple[Tensor, Tensor]:
    """i = (1 − e^{−Δt})·σ(input_pre), f = e^{−Δt}·σ(forget_pre); Δt [B] >= 0, gates [B, d].

    A long gap opens the input gate and closes the forget gate (the old cell is stale);
    back-to-back interactions keep the cell and write little.
    """
    decay = torch.exp(-delta_t)[:, None]
    return (1 - decay) * torch.sigmoid(input_pre), decay * torch.sigmoid(forget_pre)


def fm_pool(fields: Tensor) -> Tensor:
    """Factorisation-machine pooling [B, F, d] -> [B, d]: Σ_a e_a + Σ_{a<b} e_a ⊙ e_b.

    The pairwise sum uses Σ_{a<b} e_a e_b = ((Σ e)² − Σ e²) / 2, so it is O(F·d).
    """
    first = fields.sum(dim=1)
    return first + 0.5 * (first.pow(2) - fields.pow(2).sum(dim=1))


class TimeAwareLSTMCell(nn.Module):
    """An LSTM cell with time-scaled input/forget gates and an attention input.

        i, f = time_aware_gates(W_i x + U_i h + b_i, W_f x + U_f h + b_f, Δt)
        g = tanh(W_g x + U_g h + b_g)            o = σ(W_o x + U_o h + b_o)
        i_a = σ(W_ia x + V_ia a + b_ia)          g_a = tanh(W_ga x + V_ga a + b_ga)
        c' = f ⊙ c + i ⊙ g + i_a ⊙ g_a           h' = o ⊙ tanh(c')

    where a is the attention vector over the user's earlier hidden states: it gets its own
    input and modulation gates, so recalling an old state does not compete with the
    current input for one gate.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.input = nn.Linear(input_size, 6 * hidden_size)
        self.recurrent = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.attended = nn.Linear(hidden_size, 2 * hidden_size, bias=False)

    def forward(
        self, x: Tensor, delta_t: Tensor, h: Tensor, c: Tensor, attended: Tensor
    ) -> tuple[Tensor, Tensor]:
        xi, xf, xo, xg, xia, xga = self.input(x).chunk(6, dim=-1)
        hi, hf, ho, hg = self.recurrent(h).chunk(4, dim=-1)
        ai, ag = self.attended(attended).chunk(2, dim=-1)
        i, f = time_aware_gates(xi + hi, xf + hf, delta_t)
        c_new = f * c + i * torch.tanh(xg + hg) + torch.sigmoid(xia + ai) * torch.tanh(xga + ag)
        return torch.sigmoid(xo + ho) * torch.tanh(c_new), c_new


class TimeAwareLSTM(InteractionModel):
    """Per-user time-aware LSTM ranking items with a softmax over its hidden state.

    Input of an interaction (u, i, t): the factorisation-machine pooling (`fm_pool`) of
    the fields user embedding, item embedding of i, embedding of the user's item before
    i (a learned "none" row before the second interaction; `prev_item`), and optionally
    a projection of the cyclic time features and of the edge features.

    Time gap: `delta_user` is a z-score (train-split mean and std), so the raw gap is an
    increasing affine function of it. The gates get Δt = softplus(α·z + β) with α = e^{log α}
    > 0 and β learned: a non-negative, increasing function of the gap whose time unit is
    learned instead of fixed by hand.

    Attention: the last `attention_size` hidden states of each user are kept in a ring
    buffer [num_users, m, d] with the inputs that produced them; the weights are a softmax
    of `attention_scale` times the cosine similarity of the current input with each stored
    input, so past states reached from similar situations are recalled.

    Prediction: the scores of the next item are h(t⁻) W_out + b [B, I] from the state
    before the batch, trained with cross-entropy on the target item.

    State update, deferred by one step (as TGN folds stored messages in at the next read):
    an interaction is stored raw (item, previous item, gap, features) and folded into the
    LSTM when its user is next read, right before the prediction it feeds. The arithmetic
    is that of an immediate update, but the LSTM step then sits inside the loss of the
    next prediction, so its weights get gradient even when the state is detached after
    every batch. State (buffers, reset by `reset_state`): h, c [num_users, d], the ring
    buffers and the pending interaction of each user. A user repeated in a chrono step is
    read once from the state before the step; its last row becomes the pending one.
    """

    # per-user buffers only; items are parameters
    capabilities = Capabilities(scorers=("native",), per_user_state=True)

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 64,
        attention_size: int = 10,
        attention_scale: float = 5.0,
        cyclic: bool = True,
        edge_features: int = 0,
    ) -> None:
        super().__init__(num_users, num_items)
        if int(dim) < 1 or int(attention_size) < 1:
            raise ConfigError(
                f"model.dim={dim}, model.attention_size={attention_size}: both must be at least 1"
            )
        self.dim = int(dim)
        self.attention_size = int(attention_size)
        self.edge_features = int(edge_features)
        self.user_embedding = nn.Embedding(num_users, self.dim)
        self.item_embedding = nn.Embedding(num_items + 1, self.dim)  # row num_items: "none"
        for table in (self.user_embedding, self.item_embedding):
            nn.init.normal_(table.weight, std=self.dim**-0.5)
        self.cyclic = nn.Linear(4, self.dim, bias=False) if cyclic else None
        self.edge = nn.Linear(self.edge_features, self.dim, bias=False) if edge_features else None
        self.cell = TimeAwareLSTMCell(self.dim, self.dim)
        self.log_gap_scale = nn.Parameter(torch.zeros(()))
        self.gap_shift = nn.Parameter(torch.zeros(()))
        self.log_attention_scale = nn.Parameter(torch.tensor(math.log(attention_scale)))
        self.output = nn.Linear(self.dim, num_items)

        m = self.attention_size
        self.register_buffer("h", torch.zeros(num_users, self.dim))
        self.register_buffer("c", torch.zeros(num_users, self.dim))
        self.register_buffer("ring_h", torch.zeros(num_users, m, self.dim))
        self.register_buffer("ring_x", torch.zeros(num_users, m, self.dim))
        self.register_buffer("ring_count", torch.zeros(num_users, dtype=torch.long))
        self.register_buffer("pending_item", torch.full((num_users,), -1, dtype=torch.long))
        self.register_buffer("pending_prev", torch.full((num_users,), -1, dtype=torch.long))
        self.register_buffer("pending_delta", torch.zeros(num_users))
        self.register_buffer("pending_cyclic", torch.zeros(num_users, 4))
        self.register_buffer("pending_edge", torch.zeros(num_users, self.edge_features))

    # ---- stream state ------------------------------------------------------------------

    def reset_state(self) -> None:
        for name in (
            "h",
            "c",
            "ring_h",
            "ring_x",
            "pending_delta",
            "pending_cyclic",
            "pending_edge",
        ):
            setattr(self, name, torch.zeros_like(getattr(self, name)))
        self.ring_count.zero_()
        self.pending_item.fill_(-1)
        self.pending_prev.fill_(-1)

    def detach_state(self) -> None:
        for name in ("h", "c", "ring_h", "ring_x"):
            setattr(self, name, getattr(self, name).detach())

    def begin_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if chunk.local_users is not None:
            raise ConfigError(
                "tlstm keeps one global state per user; use sampler=tbatch or sampler=chrono"
            )

    # ---- pieces ------------------------------------------------------------------------

    def gap(self, delta_user: Tensor) -> Tensor:
        """Non-negative time gap Δt [B] from the z-scored `delta_user` [B]."""
        return F.softplus(self.log_gap_scale.exp() * delta_user + self.gap_shift)

    def encode(
        self, users: Tensor, items: Tensor, prev: Tensor, cyclic: Tensor, edge: Tensor
    ) -> Tensor:
        """Cell input x [B, d]: FM pooling of the interaction's fields."""
        prev = torch.where(prev >= 0, prev, self.num_items)
        fields = [self.user_embedding(users), self.item_embedding(items), self.item_embedding(prev)]
        if self.cyclic is not None:
            fields.append(self.cyclic(cyclic))
        if self.edge is not None:
            fields.append(self.edge(edge))
        return fm_pool(torch.stack(fields, dim=1))

    def attend(self, x: Tensor, ring_x: Tensor, ring_h: Tensor, count: Tensor) -> Tensor:
        """Attention vector [B, d] over the stored hidden states [B, m, d] (0 if none)."""
        cosine = F.cosine_similarity(x[:, None, :], ring_x, dim=-1)  # [B, m]
        valid = torch.arange(self.attention_size, device=x.device) < count[:, None]
        score = (self.log_attention_scale.exp() * cosine).masked_fill(~valid, _MASKED)
        return (F.softmax(score, dim=1)[:, None, :] @ (ring_h * valid[..., None])).squeeze(1)

    # ---- one step ----------------------------------------------------------------------

    def forward(self, batch: Interactions, mode: Mode) -> Output:
        users = batch.user
        pending = self.pending_item[users]
        has_pending = (pending >= 0)[:, None]
        h_before, c_before = self.h[users], self.c[users]
        ring_h, ring_x = self.ring_h[users], self.ring_x[users]
        count = self.ring_count[users]
        x = self.encode(
            users,
            pending.clamp(min=0),
            self.pending_prev[users],
            self.pending_cyclic[users],
            self.pending_edge[users],
        )
        attended = self.attend(x, ring_x, ring_h, count)
        h_new, c_new = self.cell(
            x, self.gap(self.pending_delta[users]), h_before, c_before, attended
        )
        h = torch.where(has_pending, h_new, h_before)
        c = torch.where(has_pending, c_new, c_before)

        with exact_scores(h.device):  # ranked over all items: no bf16 ties
            scores = self.output(at_least_float32(h))
        losses = {"cross_entropy": F.cross_entropy(scores, batch.item)} if mode.losses else {}
        self._commit(users, has_pending.squeeze(1), h, c, x, ring_h, ring_x, count)
        self._store(batch)
        return Output(scores=scores, losses=losses)

    def _commit(self, users, has_pending, h, c, x, ring_h, ring_x, count) -> None:
        """Write the folded-in step of the users that had a pending interaction."""
        rows = has_pending.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        who = users[rows]
        self.h = self.h.index_copy_(0, who, h[rows])
        self.c = self.c.index_copy_(0, who, c[rows])
        shifted_h = torch.cat((h[rows, None], ring_h[rows, :-1]), dim=1)
        shifted_x = torch.cat((x[rows, None], ring_x[rows, :-1]), dim=1)
        self.ring_h = self.ring_h.index_copy_(0, who, shifted_h)
        self.ring_x = self.ring_x.index_copy_(0, who, shifted_x)
        self.ring_count[who] = (count[rows] + 1).clamp(max=self.attention_size)

    @torch.no_grad()
    def _store(self, batch: Interactions) -> None:
        """Each user's latest interaction of the batch becomes its pending one."""
        users = batch.user
        position = torch.arange(users.shape[0], device=users.device)
        last = torch.full_like(self.pending_item, -1)
        last.scatter_reduce_(0, users, position, reduce="amax")
        rows = (last[users] == position).nonzero().squeeze(1)
        who = users[rows]
        self.pending_item[who] = batch.item[rows]
        self.pending_prev[who] = batch.prev_item[rows]
        self.pending_delta[who] = batch.delta_user[rows].to(self.pending_delta.dtype)
        self.pending_cyclic[who] = batch.cyclic[rows].to(self.pending_cyclic.dtype)
        if self.edge is not None:
            if batch.edge_features is None:
                raise ConfigError(
                    f"model.edge_features={self.edge_features} but the data has none; "
                    "set data.edge_features=true or model.edge_features=0"
                )
            self.pending_edge[who] = batch.edge_features[rows].to(self.pending_edge.dtype)
