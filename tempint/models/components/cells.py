"""Recurrent cells for several independent groups, evaluated as one batched matmul.

A cross-RNN updates a user memory and an item memory per interaction with two cells of
the same shapes but separate weights. Stacking the two sides as the groups of one
`baddbmm` halves the kernel launches and autograd nodes per step, which is what costs
time at dim 32. Inputs are `x` [G, B, input_size] and a state tuple of [G, B, hidden_size]
tensors (h, or h and c for the LSTM); group g only ever meets weights[g].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tempint.errors import ConfigError

__all__ = ["GroupedGRUCell", "GroupedLSTMCell", "GroupedFastGRNNCell", "CELLS", "make_cell"]


class _GroupedCell(nn.Module):
    """Shared shape bookkeeping; `state_size` is the number of tensors in the state."""

    state_size = 1

    def __init__(self, input_size: int, hidden_size: int, groups: int = 2) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.groups = int(groups)

    def _uniform(self, *shape: int) -> nn.Parameter:
        """torch's RNN-cell initialisation: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        return nn.Parameter(torch.empty(self.groups, *shape).uniform_(-bound, bound))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, groups={self.groups}"


class GroupedGRUCell(_GroupedCell):
    """GRU (Cho et al. 2014) per group, gates in torch's order r, z, n.

    Weights are stored transposed for `bmm`: `weight_ih[g]` [input, 3·hidden] equals
    `nn.GRUCell.weight_ih.T`, and likewise for `weight_hh`, `bias_ih`, `bias_hh`.
    """

    def __init__(self, input_size: int, hidden_size: int, groups: int = 2) -> None:
        super().__init__(input_size, hidden_size, groups)
        d = self.hidden_size
        self.weight_ih = self._uniform(self.input_size, 3 * d)
        self.weight_hh = self._uniform(d, 3 * d)
        self.bias_ih = self._uniform(1, 3 * d)
        self.bias_hh = self._uniform(1, 3 * d)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (h,) = state
        d2 = 2 * self.hidden_size
        gi = torch.baddbmm(self.bias_ih, x, self.weight_ih)
        gh = torch.baddbmm(self.bias_hh, h, self.weight_hh)
        r, z = torch.sigmoid(gi[..., :d2] + gh[..., :d2]).chunk(2, dim=-1)
        n = torch.tanh(gi[..., d2:] + r * gh[..., d2:])
        return (n + z * (h - n),)  # (1 - z) * n + z * h


class GroupedLSTMCell(_GroupedCell):
    """LSTM (Hochreiter & Schmidhuber 1997) per group; the state is (h, c).

    One bias per gate (torch keeps two that only ever appear summed). Gates in torch's
    order i, f, g, o; `weight_ih[g]` [input, 4·hidden] equals `nn.LSTMCell.weight_ih.T`.
    """

    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, groups: int = 2) -> None:
        super().__init__(input_size, hidden_size, groups)
        d = self.hidden_size
        self.weight_ih = self._uniform(self.input_size, 4 * d)
        self.weight_hh = self._uniform(d, 4 * d)
        self.bias = self._uniform(1, 4 * d)

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h, c = state
        d = self.hidden_size
        gates = torch.baddbmm(torch.baddbmm(self.bias, x, self.weight_ih), h, self.weight_hh)
        act = torch.sigmoid(gates)  # the g slice is recomputed with tanh: one kernel, not three
        i, f, o = act[..., :d], act[..., d : 2 * d], act[..., 3 * d :]
        c_new = f * c + i * torch.tanh(gates[..., 2 * d : 3 * d])
        return o * torch.tanh(c_new), c_new


class GroupedFastGRNNCell(_GroupedCell):
    """FastGRNN (Kusupati et al. NeurIPS'18, eq. 3-4): one gate sharing W and U.

    pre = W x + U h;  z = σ(pre + b_z);  h~ = tanh(pre + b_h);
    h' = (ζ (1 − z) + ν) ⊙ h~ + z ⊙ h,  with ζ = σ(zeta), ν = σ(nu) learned scalars.
    `weight_ih[g]` [input, hidden] is Wᵀ and `weight_hh[g]` [hidden, hidden] is Uᵀ.
    The low-rank and sparse factorisations of the paper are left out: at dim 32 they
    would save nothing.
    """

    def __init__(self, input_size: int, hidden_size: int, groups: int = 2) -> None:
        super().__init__(input_size, hidden_size, groups)
        d = self.hidden_size
        self.weight_ih = self._uniform(self.input_size, d)
        self.weight_hh = self._uniform(d, d)
        self.bias_z = nn.Parameter(torch.ones(self.groups, 1, d))  # start close to "keep h"
        self.bias_h = nn.Parameter(torch.zeros(self.groups, 1, d))
        # σ(1) ≈ 0.73 and σ(-4) ≈ 0.02: the update starts as a convex-like mix of h~ and h.
        self.zeta = nn.Parameter(torch.full((self.groups, 1, 1), 1.0))
        self.nu = nn.Parameter(torch.full((self.groups, 1, 1), -4.0))

    def forward(self, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (h,) = state
        pre = torch.baddbmm(torch.bmm(x, self.weight_ih), h, self.weight_hh)
        z = torch.sigmoid(pre + self.bias_z)
        h_tilde = torch.tanh(pre + self.bias_h)
        scale = torch.sigmoid(self.zeta) * (1 - z) + torch.sigmoid(self.nu)
        return (scale * h_tilde + z * h,)


CELLS: dict[str, type[_GroupedCell]] = {
    "gru": GroupedGRUCell,
    "lstm": GroupedLSTMCell,
    "fastgrnn": GroupedFastGRNNCell,
}


def make_cell(name: str, input_size: int, hidden_size: int, groups: int = 2) -> _GroupedCell:
    """The grouped cell called `name` (one of CELLS)."""
    if name not in CELLS:
        raise ConfigError(f"cell '{name}' is unknown; known: {', '.join(CELLS)} (model.cell)")
    return CELLS[name](input_size, hidden_size, groups)
