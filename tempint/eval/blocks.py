"""Ranking a block of the stream at once, after its memory updates have run.

A memory model must replay evaluation so that every node's updates keep their order;
on these streams that allows a handful of interactions per step, and ranking each step
against all items would pay thousands of small matmuls. Scoring needs only each
interaction's query and the candidate table *as it stood at the interaction's time*,
and an interaction changes the table only in its own item's row. So a block of
consecutive interactions is replayed in t-batches (per-node order kept, memory exact),
every written row is kept as a version stamped with its stream position, and the
block's queries are ranked afterwards, in time order, against the table at the block's
start with each row replaced by its latest version from strictly before the
interaction. No interaction sees a row written at or after its own position, so its
target cannot leak into its score; rows written by earlier interactions of the same
block are seen, as in a one-at-a-time replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tempint.data.batch import Chunk
from tempint.eval.ranking import exclude_pairs, rank_bounds
from tempint.models.base import Replayed

__all__ = ["BlockRanker", "ItemVersions", "CandidateTable"]

# Queries ranked together against one table: bounds the [rows, versions] overwrite matrix.
SUB_BLOCK = 256
# Versions of earlier sub-blocks are patched into a copy of the table once overwriting
# their scores (live versions × rows) would touch more than this times the table's size:
# a scattered score write costs some thirty times a copied table entry.
PATCH_ABOVE = 1 / 32


class ItemVersions:
    """The candidate rows of a block: the table at its start plus every row it wrote.

    `rows_at(items, position)` gives each item's row as of just before a stream position,
    which is what a model reading a partner's state inside the block (JODIE's previous
    item) needs after a replay in t-batch order.
    """

    def __init__(self, table: Tensor, item: Tensor, position: Tensor, written: Tensor) -> None:
        self.table = table
        order = torch.argsort(position)
        self.item, self.position, self.written = item[order], position[order], written[order]
        # versions sorted by (item, position): key = item · width + position
        self._width = int(self.position.max()) + 2
        keys = self.item * self._width + self.position
        self._keys, self._by_item = torch.sort(keys)
        by_item = self._by_item
        # next write of the same item (its position), or never
        never = torch.iinfo(position.dtype).max
        following = torch.full_like(self.position, never)
        same = self.item[by_item[1:]] == self.item[by_item[:-1]]
        following[by_item[:-1]] = torch.where(same, self.position[by_item[1:]], never)
        self.following = following

    def rows_at(self, items: Tensor, position: Tensor) -> Tensor:
        """Rows [n, d] of `items` as of just before `position` (block-start row if unwritten)."""
        width = self._width
        key = items * width + position.clamp(max=width - 1)  # later positions: the last version
        slot = torch.searchsorted(self._keys, key) - 1  # last version strictly before
        found = slot >= 0
        version = self._by_item[slot.clamp(min=0)]
        found &= self.item[version] == items
        return torch.where(found[:, None], self.written[version], self.table[items])

    def live_at(self, lo: int) -> Tensor:
        """Versions written before time-ordered row `lo` and still current there."""
        start = self.position[lo]
        return ((self.position[:lo] < start) & (self.following[:lo] >= start)).nonzero()[:, 0]

    def overwrites(self, lo: int, hi: int, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """(row, k): version `candidates[k]` is current for time-ordered row lo + row,
        i.e. pos[m] < pos[row] ≤ next[m]."""
        pos = self.position[lo:hi]
        earlier = self.position[candidates][None, :] < pos[:, None]
        valid = earlier & (pos[:, None] <= self.following[candidates][None, :])
        return valid.nonzero(as_tuple=True)

    def last_versions(self) -> tuple[Tensor, Tensor]:
        """(items, rows) of each written item's last version: its row after the block."""
        last = self.following == torch.iinfo(self.following.dtype).max
        return self.item[last], self.written[last]


class CandidateTable:
    """The candidate rows [I, d] as of the next block's start, carried from block to block.

    A frozen replay changes a row only for the items a block wrote, so the table and the
    forms the scorers read (unit rows for "dot", float64 rows and their squared norms for
    "l2" and "native") are updated in those rows after each block instead of rebuilt from
    the model: at 10^5 items, rebuilding them cost more than the block's ranking.
    """

    def __init__(self, table: Tensor) -> None:
        self.table = table.detach().clone()
        self._unit: Tensor | None = None
        self._wide: tuple[Tensor, Tensor] | None = None

    def unit(self) -> Tensor:
        if self._unit is None:
            self._unit = F.normalize(self.table.float(), dim=1)
        return self._unit

    def wide(self) -> tuple[Tensor, Tensor]:
        """(rows in float64 [I, d], their squared norms [I])."""
        if self._wide is None:
            rows = self.table.double()
            self._wide = (rows, rows.square().sum(1))
        return self._wide

    def patched(self, items: Tensor, rows: Tensor) -> CandidateTable:
        """A copy with `rows` [n, d] in place of `items`' rows (this table unchanged)."""
        copy = CandidateTable.__new__(CandidateTable)
        copy.table = self.table.clone()
        copy._unit = None if self._unit is None else self._unit.clone()
        copy._wide = None if self._wide is None else tuple(t.clone() for t in self._wide)
        copy.advance(items, rows)
        return copy

    def advance(self, items: Tensor, rows: Tensor) -> None:
        """Rows [n, d] of `items` (distinct) as the block left them."""
        rows = rows.detach().to(self.table.dtype)
        self.table[items] = rows
        if self._unit is not None:
            self._unit[items] = F.normalize(rows.float(), dim=1)
        if self._wide is not None:
            wide = rows.double()
            self._wide[0][items] = wide
            self._wide[1][items] = wide.square().sum(1)


class BlockRanker:
    """Rank bounds of one block chunk, per scorer: "dot" (cosine), "l2" (minus the
    squared distance, in float64 so |q|² + |c|² − 2q·c cannot cancel into false ties)
    and "native" for models whose native score is l2 plus a per-item term
    (`native_bias`)."""

    def __init__(
        self,
        scorers: Sequence[str],
        table: CandidateTable,
        queries: Callable[[Sequence[Replayed], ItemVersions], tuple[Tensor, Tensor | None]],
    ) -> None:
        self.scorers = tuple(scorers)
        self.table = table  # advanced past the block once it is ranked
        self.queries = queries
        self.outputs: list[Replayed] = []

    def add(self, output: Replayed) -> None:
        if not isinstance(output, Replayed):
            raise ValueError("block ranking needs the rows each step wrote (a Replayed)")
        self.outputs.append(output)

    def rank(
        self, chunk: Chunk, exclusions=None
    ) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, Tensor]]:
        """Bounds per scorer and tags of the chunk's scored interactions (in time order);
        `exclusions` (`tempint.eval.negatives.PositionPairs`) take items out of a ranking."""
        steps = chunk.steps
        item = torch.cat([s.item for s in steps]).long()
        position = torch.cat([s.index for s in steps]).long()
        written = torch.cat([o.written.detach() for o in self.outputs])
        versions = ItemVersions(self.table.table, item, position, written)
        query, bias = self.queries(self.outputs, versions)
        order = torch.argsort(position)
        query, item, position = query.detach()[order], item[order], position[order]
        if bias is not None:
            bias = bias.detach()[order]
        keep = torch.ones_like(item, dtype=torch.bool)
        if chunk.scored is not None:
            keep = torch.cat(list(chunk.scored))[order]
        tags = {k: torch.cat([s.tags[k] for s in steps])[order][keep] for k in steps[0].tags}
        parts: dict[str, list[tuple[Tensor, Tensor]]] = {s: [] for s in self.scorers}
        for lo in range(0, item.shape[0], SUB_BLOCK):
            hi = min(lo + SUB_BLOCK, item.shape[0])
            # versions of earlier sub-blocks still current: patched into a copy of the
            # table when that is cheaper than overwriting their scores row by row
            live, own = versions.live_at(lo), torch.arange(lo, hi, device=item.device)
            table = self.table
            if live.numel() * (hi - lo) > PATCH_ABOVE * table.table.numel():
                table = table.patched(versions.item[live], versions.written[live])
                candidates = own
            else:
                candidates = torch.cat((live, own))
            row, version = versions.overwrites(lo, hi, candidates)
            fresh = versions.written[candidates]
            col = versions.item[candidates][version]
            sub_bias = None if bias is None else bias[lo:hi]
            scores = _scores(self.scorers, query[lo:hi], table, fresh, row, col, version, sub_bias)
            # every row scored (the usual case): no masked copy of the [rows, I] scores
            mask = None if chunk.scored is None else keep[lo:hi]
            at, target = position[lo:hi], item[lo:hi]
            if mask is not None:
                at, target = at[mask], target[mask]
            for scorer, s in scores.items():
                if mask is not None:
                    s = s[mask]
                if exclusions is not None:
                    s = exclude_pairs(s, *exclusions.lookup(at))
                parts[scorer].append(rank_bounds(s, target))
        bounds = {
            s: (torch.cat([b for b, _ in p]), torch.cat([w for _, w in p]))
            for s, p in parts.items()
        }
        self.table.advance(*versions.last_versions())
        return bounds, tags


def _scores(
    scorers: tuple[str, ...],
    query: Tensor,
    table: CandidateTable,
    fresh: Tensor,
    row: Tensor,
    col: Tensor,
    version: Tensor,
    bias: Tensor | None,
) -> dict[str, Tensor]:
    """[R, I] scores per scorer; entry (row[p], col[p]) uses fresh[version[p]]."""
    out = {}
    if "dot" in scorers:
        q = F.normalize(query.float(), dim=1)
        scores = q @ table.unit().T
        scores[row, col] = (q @ F.normalize(fresh.float(), dim=1).T)[row, version]
        out["dot"] = scores
    if "l2" in scorers or "native" in scorers:
        q = query.double()
        minus_q_norm = q.square().sum(1, keepdim=True).neg_()
        (t, t_norm), f = table.wide(), fresh.double()
        # minus the squared distance: 2 q·c − |q|² − |c|²
        scores = torch.addmm(minus_q_norm, q, t.T, alpha=2.0).sub_(t_norm)
        near = torch.addmm(minus_q_norm, q, f.T, alpha=2.0).sub_(f.square().sum(1))
        scores[row, col] = near[row, version]
        if "l2" in scorers:
            out["l2"] = scores
        if "native" in scorers:
            if bias is None:
                raise ValueError("native block ranking needs the model's native biases")
            # a per-row bias ([R, 1], JODIE without static parts) moves no rank
            out["native"] = scores if bias.shape[1] == 1 else scores + bias.double()
    return out
