"""LiMNet: a lightweight cross-RNN memory of users and items.

After Giaretta et al. 2021 (LiMNet) and the LiMNet chapter of Mazier's 2025 thesis. Every
interaction (u, i) updates both memories from their states *before* it:

    u <- cell_U([m_i; f_u], m_u)        i <- cell_I([m_u; f_i], m_i)

with the previous memory as the cell's hidden state. f holds the optional cyclic time
features and the node's own time since its previous interaction; with stacked layers,
layer l+1 also gets LeakyReLU of layer l's new states. The model ranks items by the
user's last-layer memory against every item's last-layer memory and is trained to pull
the pre-interaction user and item embeddings together while keeping the batch's
embeddings spread apart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tempint.data.batch import Chunk, Interactions
from tempint.errors import ConfigError
from tempint.models.base import Capabilities, InteractionModel, Mode, Output, Replayed
from tempint.models.components.cells import make_cell
from tempint.models.components.losses import spread_loss
from tempint.models.memory import LocalMemory, MemoryState

__all__ = ["LiMNet", "TIME_FEATURES", "LOSSES"]

# Columns of Interactions.cyclic each option feeds: [cos, sin] of the day, then the week.
TIME_FEATURES = {"none": slice(0, 0), "day": slice(0, 2), "week": slice(2, 4), "both": slice(0, 4)}
LOSSES = ("mse", "dot")


class LiMNet(InteractionModel):
    """Cross-RNN memory with `layers` stacked GRU / LSTM / FastGRNN cells.

    State: one MemoryState whose rows hold every layer side by side, [h_1 .. h_L] and for
    the LSTM [c_1 .. c_L] after them, so a step costs one gather and one write per side
    whatever the depth. Each layer's two cells (user side, item side) run as one batched
    matmul. Cell input of layer l for the user side:
    [m_i^l, cyclic time, delta_user, LeakyReLU(u^{l-1}'), LeakyReLU(i^{l-1}')] (the last
    two only for l > 1, primes marking the states after this interaction); the item side
    reads m_u^l instead of m_i^l and delta_item instead of delta_user.

    Loss, on the last layer's embeddings before the step updates them (exactly the
    query and candidate the evaluator ranks):
    - objective "mse": mean over the batch of ||u - i||²; "dot": mean of (u·i - 1)²,
      the same target for unit vectors without rewarding long ones;
    - spread: mean squared off-diagonal entry of U Uᵀ plus the same for I Iᵀ (U, I the
      batch's [B, d] embeddings), which is small when the embeddings point in different
      directions and 1 when normalised embeddings collapse to one point.
    Both are weighted by `objective_weight` and `spread_weight`. With `normalize`, every
    hidden vector read (initial vectors included) is a unit vector, so nodes that all
    still read their side's initial vector cannot lower the spread by shrinking it.

    The sequence sampler's chunks get window-local memory (`begin_chunk`); windows start
    from the learned initial vectors, or from the global memory when `warm_start`. At the
    end of such a chunk each node's latest window state is written to the global memory.
    """

    capabilities = Capabilities(scorers=("dot", "l2"), block_scorers=("dot", "l2"))

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 32,
        cell: str = "gru",
        layers: int = 1,
        normalize: bool = True,
        time_features: str = "both",
        time_delta: bool = True,
        loss: str = "mse",
        objective_weight: float = 1.0,
        spread_weight: float = 1.0,
        spread_scope: str = "step",
        warm_start: bool = False,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__(num_users, num_items)
        if time_features not in TIME_FEATURES:
            known = ", ".join(TIME_FEATURES)
            raise ConfigError(
                f"time_features '{time_features}' is unknown; known: {known} (model.time_features)"
            )
        if loss not in LOSSES:
            raise ConfigError(f"loss '{loss}' is unknown; known: mse, dot (model.loss)")
        if int(layers) < 1 or int(dim) < 1:
            raise ConfigError(f"model.layers={layers}, model.dim={dim}: both must be at least 1")
        self.dim = int(dim)
        self.cell = cell
        self.layers = int(layers)
        self.normalize = bool(normalize)
        self.time_features = time_features
        self.time_delta = bool(time_delta)
        self.loss = loss
        self.objective_weight = float(objective_weight)
        self.spread_weight = float(spread_weight)
        if spread_scope not in ("chunk", "step"):
            raise ConfigError(f"model.spread_scope={spread_scope!r} is unknown; use chunk or step")
        # "chunk": pairs from every step of the chunk (a t-batch has only a few interactions)
        self.spread_scope = spread_scope
        self._chunk_pairs: list[Tensor] = []
        self.warm_start = bool(warm_start)
        self.negative_slope = float(negative_slope)

        self._cyclic = TIME_FEATURES[time_features]
        self.feature_size = (self._cyclic.stop - self._cyclic.start) + int(self.time_delta)
        cells = []
        for layer in range(self.layers):
            lower = 2 * self.dim if layer > 0 else 0
            cells.append(make_cell(cell, self.dim + self.feature_size + lower, self.dim, groups=2))
        self.cells = torch.nn.ModuleList(cells)
        self.state_size = self.cells[0].state_size
        width = self.layers * self.dim * self.state_size
        self.memory = MemoryState(num_users, num_items, width)
        with torch.no_grad():  # every layer's slice of the initial vectors starts near norm 1
            self.memory.user_init.mul_((width / self.dim) ** 0.5)
            self.memory.item_init.mul_((width / self.dim) ** 0.5)
        self.memory.reset_state()
        self._local: LocalMemory | None = None
        self._init_cache: tuple | None = None  # (key, (user_init, item_init))

    # ---- columns of a memory row -------------------------------------------------------

    def _hidden_cols(self, layer: int) -> slice:
        return slice(layer * self.dim, (layer + 1) * self.dim)

    def _cell_cols(self, layer: int) -> slice:
        offset = self.layers * self.dim
        return slice(offset + layer * self.dim, offset + (layer + 1) * self.dim)

    @property
    def _memory(self) -> MemoryState | LocalMemory:
        return self.memory if self._local is None else self._local

    # ---- stream state ------------------------------------------------------------------

    def reset_state(self) -> None:
        self.memory.reset_state()
        self._local = None
        self._init_cache = None

    def detach_state(self) -> None:
        self.memory.detach_state()
        self._init_cache = None
        self._chunk_pairs = []
        if self._local is not None:
            self._local.detach_state()

    def begin_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if chunk.local_users is None:
            if mode is Mode.REPLAY:  # a frozen block: rows then read with one gather
                self.memory.fill_unseen(chunk, *self._initial(mode))
            return
        row_window = chunk.row_window
        if row_window is None:  # window b owns rows [b*L, (b+1)*L), L = number of steps
            rows = torch.arange(chunk.local_users.shape[0], device=chunk.local_users.device)
            row_window = rows // len(chunk.steps)
        self._local = self.memory.localize(
            chunk.local_users, chunk.local_items, row_window, chunk.num_windows, self.warm_start
        )

    def end_chunk(self, chunk: Chunk, mode: Mode) -> None:
        if self._local is not None:
            self._local.commit()
            self._local = None

    # ---- one step ----------------------------------------------------------------------

    def _features(self, batch: Interactions) -> Tensor:
        """Features of both sides [2, B, feature_size]: side 0 user cell, side 1 item cell."""
        size = len(batch)
        parts = []
        if self._cyclic.stop > self._cyclic.start:
            parts.append(batch.cyclic[:, self._cyclic].expand(2, size, -1))
        if self.time_delta:
            parts.append(torch.stack((batch.delta_user, batch.delta_item))[..., None])
        if not parts:
            return batch.cyclic.new_empty(2, size, 0)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def _update(self, state: Tensor, features: Tensor) -> Tensor:
        """New memory rows of both sides [2, B, width] from the rows before the step."""
        size = state.shape[1]
        new_hidden, new_cells = [], []
        lower = None
        for layer, cell in enumerate(self.cells):
            h = state[..., self._hidden_cols(layer)]
            inputs = [h.flip(0), features]  # each side reads its partner's memory
            if lower is not None:
                inputs.append(lower)
            cell_state = (h,) if self.state_size == 1 else (h, state[..., self._cell_cols(layer)])
            out = cell(torch.cat(inputs, dim=-1), cell_state)
            h_new = _unit(out[0]) if self.normalize else out[0]
            new_hidden.append(h_new)
            new_cells.extend(out[1:])
            if layer + 1 < self.layers:
                act = F.leaky_relu(h_new, self.negative_slope)  # [2, B, d] -> [u', i'] [B, 2d]
                lower = act.transpose(0, 1).reshape(size, 2 * self.dim).expand(2, size, -1)
        parts = new_hidden + new_cells
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def forward(self, batch: Interactions, mode: Mode) -> Output:
        memory = self._memory
        user_rows, item_rows = batch.user_rows, batch.item_rows
        last = self._hidden_cols(self.layers - 1)
        if mode is Mode.REPLAY:  # no graph to keep: plain gathers and writes
            memory = self.memory
            state = torch.stack((memory.user[user_rows], memory.item[item_rows]))
            new_state = self._update(state, self._features(batch))
            memory.user.index_copy_(0, user_rows, new_state[0])
            memory.item.index_copy_(0, item_rows, new_state[1])
            memory.user_seen.index_fill_(0, user_rows, True)
            memory.item_seen.index_fill_(0, item_rows, True)
            return Replayed(written=new_state[1][:, last], query=state[0, :, last])
        user_init, item_init = self._initial(mode)
        state = torch.stack(
            (memory.read_users(user_rows, user_init), memory.read_items(item_rows, item_init))
        )
        query = state[0, :, last]
        candidates = None
        if mode.scores:
            with torch.no_grad():  # for ranking only: the losses never read the table
                candidates = self._candidates(batch, memory, last, item_init)
        losses = self._losses(state[:, :, last]) if mode.losses else {}

        new_state = self._update(state, self._features(batch))
        memory.write_users(user_rows, new_state[0])
        memory.write_items(item_rows, new_state[1])
        return Output(query=query, candidates=candidates, losses=losses)

    def candidate_table(self) -> Tensor:
        user_init, item_init = self._initial(Mode.REPLAY)
        return self._memory.item_table(self._hidden_cols(self.layers - 1), item_init)

    def _initial(self, mode: Mode) -> tuple[Tensor | None, Tensor | None]:
        """The vectors unseen rows read: with `normalize`, every layer's h at unit norm
        (then spread cannot be lowered by shrinking the shared initial vector).

        Computed once per chunk: the cache dies with `detach_state` (so no step reuses a
        graph that backward has freed) and whenever the optimiser changes the vectors;
        modes with losses keep the graph to the initial vectors, the others do not.
        """
        if not self.normalize:
            return None, None
        user_init, item_init = self.memory.user_init, self.memory.item_init
        key = (
            id(user_init),
            user_init._version,
            id(item_init),
            item_init._version,
            user_init.device,
            mode.losses,
        )
        if self._init_cache is not None and self._init_cache[0] == key:
            return self._init_cache[1]
        with torch.set_grad_enabled(mode.losses):
            init = torch.stack((user_init, item_init))
            split = self.layers * self.dim
            hidden = _unit(init[:, :split].unflatten(-1, (self.layers, self.dim))).flatten(-2)
            if self.state_size > 1:
                hidden = torch.cat((hidden, init[:, split:]), dim=-1)
        self._init_cache = (key, (hidden[0], hidden[1]))
        return self._init_cache[1]

    def _candidates(
        self,
        batch: Interactions,
        memory: MemoryState | LocalMemory,
        cols: slice,
        init: Tensor | None,
    ) -> Tensor:
        """Item table [I, d] before the step; with window-local memory [B, I, d], entry b
        ranked against the table of its own window (O(windows·I·d) per step: only built
        in modes that score)."""
        if isinstance(memory, MemoryState):
            return memory.item_table(cols, init)
        tables = memory.item_tables(cols, init)
        windows = memory.row_window[batch.user_rows]
        if windows.shape[0] == tables.shape[0] and bool(
            (windows == torch.arange(windows.shape[0], device=windows.device)).all()
        ):
            return tables
        return tables.index_select(0, windows)

    def _losses(self, pair: Tensor) -> dict[str, Tensor]:
        """Loss terms from the pre-step last-layer embeddings `pair` [2, B, d] (users, items)."""
        users, items = pair[0], pair[1]
        size = users.shape[0]
        if self.loss == "mse":
            objective = F.mse_loss(users, items, reduction="sum") * (self.objective_weight / size)
        else:
            dots = (users * items).sum(dim=-1)
            objective = F.mse_loss(dots, torch.ones_like(dots)) * self.objective_weight
        losses = {"objective": objective}
        if self.spread_weight == 0.0:
            return losses
        if self.spread_scope == "chunk":
            self._chunk_pairs.append(pair)
        else:  # a batch of one has no pairs: spread 0
            losses["spread"] = self._spread(pair)
        return losses

    def _spread(self, pair: Tensor) -> Tensor:
        return spread_loss(pair[0], pair[1]) * self.spread_weight

    def chunk_losses(self) -> dict[str, Tensor]:
        if not self._chunk_pairs:
            return {}
        pairs = torch.cat(self._chunk_pairs, dim=1)
        self._chunk_pairs = []
        return {"spread": self._spread(pairs)}


def _unit(x: Tensor) -> Tensor:
    """x scaled to unit L2 norm along the last dim (F.normalize in fewer kernels)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
