"""DeePRed's published evaluation: the script's label, pool, ranks and window lengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tempint.data.splits import Split
from tempint.errors import ConfigError
from tempint.eval.deepred_protocol import (
    EMPTY,
    evaluate_deepred_paper,
    evaluated_events,
    literal_labels,
    pool_ranks,
    pool_seed,
    pool_size,
    previous_event,
    script_ranks,
    truncated_metrics,
    windows_before,
)
from tempint.models.deepred import DeePRed
from tests.streams import hand_made

# user 0: items 5, 3, 7 (3 and 7 at the same time), 3; user 1: items 2, 9
USER = np.array([0, 1, 0, 0, 0, 1])
ITEM = np.array([5, 2, 3, 7, 3, 9])
TIME = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 4.0])


def test_window_holds_earlier_times_only_most_recent_first():
    w = windows_before(USER, ITEM, TIME, k=3)
    assert w.count.tolist() == [0, 0, 1, 1, 3, 1]
    assert w.partners.tolist() == [
        [-1, -1, -1],
        [-1, -1, -1],
        [5, -1, -1],
        [5, -1, -1],  # its twin at t=2 is not earlier
        [7, 3, 5],
        [2, -1, -1],
    ]
    assert w.gaps[4].tolist() == [1.0, 1.0, 2.0]
    assert w.gaps[5].tolist() == [3.0, 0.0, 0.0]


def test_literal_label_is_the_oldest_item_of_the_users_window():
    # the script scores batch[4] = item_nh, filled with the user's window: its first slot
    assert literal_labels(windows_before(USER, ITEM, TIME, k=3), 3).tolist() == [
        EMPTY,  # empty window: the padding id (0 in the script)
        EMPTY,
        5,
        5,
        5,  # window 7, 3, 5 -> oldest 5
        2,
    ]
    # a window of 2 drops item 5: the oldest of 7, 3 is 3
    assert literal_labels(windows_before(USER, ITEM, TIME, k=2), 2)[4] == 3


def test_windows_restricted_to_rows_match_the_full_ones():
    full = windows_before(USER, ITEM, TIME, k=2)
    part = windows_before(USER, ITEM, TIME, k=2, rows=np.array([4, 2]))
    assert part.partners.tolist() == full.partners[[4, 2]].tolist()
    assert part.count.tolist() == [3, 1]


def test_pool_seed_groups_training_events_by_item_in_first_appearance_order():
    items = np.array([4, 2, 4, 1, 2, 4])
    # item 4: events 0, 2, 5; item 2: 1, 4; item 1: 3 -> 0 2 5 1 4 3, the last 3 kept
    assert pool_seed(items, 3).tolist() == [1, 4, 3]
    assert pool_seed(items, 6).tolist() == [0, 2, 5, 1, 4, 3]
    assert pool_size(6, 0.5) == 3
    assert pool_size(125_979, 0.15) == 18_896
    with pytest.raises(ConfigError, match="pool_fraction"):
        pool_size(6, 0.15)


def test_previous_event_of_each_user():
    assert previous_event(np.array([3, 1, 3, 3, 1])).tolist() == [-1, -1, 0, 2, 1]


def test_pool_ranks_slide_and_count_entries_not_items():
    # 1-d embeddings; the pool holds 2 entries; event j sees entries j, j + 1
    entries = torch.tensor([[0.0], [5.0], [1.0], [2.0]])
    entry_labels = torch.tensor([7, 8, 8, 9])
    queries = torch.tensor([[4.0], [0.9], [1.8]])
    labels = torch.tensor([7, 8, 8])
    (rank,) = pool_ranks(queries, entries, 2, [(entry_labels, labels)], rows_per_block=2)
    # event 0: pool (0:7, 5:8), query 4 -> 7 is second; event 1: pool (5:8, 1:8) -> 1 first;
    # event 2: pool (1:8, 2:9), query 1.8 -> 2:9 is closer, 1:8 second
    assert rank.tolist() == [2.0, 1.0, 2.0]
    (shallow,) = pool_ranks(queries, entries, 2, [(entry_labels, labels)], depth=1)
    assert shallow.tolist() == [math.inf, 1.0, math.inf]  # only the nearest entry is ranked
    (absent,) = pool_ranks(queries, entries, 2, [(entry_labels, torch.tensor([9, 7, 7]))])
    assert absent.tolist() == [math.inf, math.inf, math.inf]  # 7 left the pool at event 1


def test_truncated_mrr_counts_ranks_beyond_k_as_zero():
    rank = torch.tensor([1.0, 2.0, 11.0, math.inf, 10.0], dtype=torch.float64)
    metrics = truncated_metrics(rank, 10)
    assert metrics["mrr@10"] == pytest.approx((1 + 0.5 + 0.1) / 5)
    assert metrics["recall@10"] == pytest.approx(3 / 5)


def _script(user, item, t, train_end, val_end, seed_vec, user_vec, item_vec, long_term, k, frac):
    """The published script, line by line: dictionaries, a list pool, topk, index()."""

    def window(segment, n, size):
        times = [t[m] for m in segment if user[m] == user[n]]
        items = [item[m] for m in segment if user[m] == user[n]]
        earlier = [x for x, s in zip(items, times, strict=True) if s < t[n]]
        samples = [EMPTY] * size
        if 0 < len(earlier) <= size:
            samples[: len(earlier)] = earlier
        elif len(earlier) > size:
            samples[:] = earlier[-size:]
        return samples[0]

    grouped: dict[int, list[int]] = {}
    for n in range(train_end):
        grouped.setdefault(int(item[n]), []).append(n)
    past = [seed_vec[n] for events in grouped.values() for n in events]
    index_to_item = [i for i, events in grouped.items() for _ in events]
    keep = int(len(past) * frac)
    pool = torch.stack(past[-keep:])
    last = {}
    truth, predicted = [], []
    for lo, hi in ((train_end, val_end), (val_end, len(user))):
        for n in range(lo, hi):
            label = window(range(lo, hi), n, 100)
            query = last.get(int(user[n]), long_term[user[n]])
            distance = (pool - query).norm(dim=1)
            top = torch.topk(distance, k=min(10, len(pool)), largest=False).indices
            offset = len(index_to_item) - keep
            predicted.append([index_to_item[int(x) + offset] for x in top])
            truth.append(label)
            pool = torch.cat([pool[1:], item_vec[n - train_end][None]])
            last[int(user[n])] = user_vec[n - train_end]
            index_to_item.append(label)
    mrr = sum(1 / (p.index(y) + 1) for y, p in zip(truth, predicted) if y in p)
    hits = sum(y in p for y, p in zip(truth, predicted))
    return mrr / len(truth), hits / len(truth)


def test_ranks_reproduce_the_published_script_on_a_random_stream():
    rng = np.random.default_rng(0)
    n, train_end, val_end, dim = 400, 240, 320, 3
    user = rng.integers(0, 12, n)
    item = rng.integers(0, 6, n)
    t = np.sort(rng.integers(0, 150, n)).astype(float)  # ties in time included
    stream = hand_made(torch.from_numpy(user), torch.from_numpy(item), torch.from_numpy(t))
    split = Split(train_end, val_end, n)
    g = torch.Generator().manual_seed(0)
    seed_vec = torch.randn(train_end, dim, generator=g)
    user_vec = torch.randn(n - train_end, dim, generator=g)
    item_vec = torch.randn(n - train_end, dim, generator=g)
    long_term = torch.randn(12, dim, generator=g)
    expected = _script(
        user, item, t, train_end, val_end, seed_vec, user_vec, item_vec, long_term, 10, 0.15
    )

    _, events = evaluated_events(stream, split, 100)
    seed = torch.from_numpy(pool_seed(item[:train_end], pool_size(train_end, 0.15)))
    (rank,) = script_ranks(
        seed_vec[seed],
        torch.from_numpy(item)[seed],
        user_vec,
        item_vec,
        long_term[torch.from_numpy(events.user)],
        torch.from_numpy(events.previous),
        [torch.from_numpy(events.literal)],
    )
    got = truncated_metrics(rank, 10)
    assert (got["mrr@10"], got["recall@10"]) == pytest.approx(expected)
    assert expected[1] > 0  # the comparison ranks something


def test_evaluation_reads_100_partners_from_a_model_trained_on_50():
    model = DeePRed(3, 4, dim=8, history_k=2)
    model.eval()
    history = torch.tensor([[1, 0, 2, 3]])
    gaps = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    batch = hand_made(
        [0],
        [1],
        [5.0],
        user_history=history,
        user_history_dt=gaps,
        item_history=torch.tensor([[2, 1, -1, -1]]),
        item_history_dt=torch.zeros(1, 4),
    )
    wide = DeePRed(3, 4, dim=8, history_k=4)
    wide.load_state_dict(model.state_dict())
    wide.eval()
    with torch.no_grad():
        own = model.short_term(batch)
        longer = model.short_term(batch, history_k=4)
        reference = wide.short_term(batch)
    assert all(torch.equal(a, b) for a, b in zip(longer, reference, strict=True))
    assert not torch.allclose(own[0], longer[0])


def test_every_history_query_computes_the_self_attention_of_each_user_row():
    torch.manual_seed(0)
    model = DeePRed(3, 4, dim=8, history_k=3)
    by_history = DeePRed(3, 4, dim=8, history_k=3, query="history")
    by_history.load_state_dict(model.state_dict())
    batch = hand_made(
        [0, 1],
        [1, 2],
        [5.0, 6.0],
        user_history=torch.tensor([[1, 0, 2], [3, -1, -1]]),
        user_history_dt=torch.ones(2, 3),
        item_history=torch.tensor([[2, 1, -1], [0, -1, -1]]),
        item_history_dt=torch.ones(2, 3),
    )
    for m in (model, by_history):
        m.eval()
    with torch.no_grad():
        lazy = model.short_term(batch)[2]
        every = model.short_term(batch, every_history_query=True)[2]
        reference = by_history.short_term(batch)[2]
    assert torch.equal(lazy, torch.zeros_like(lazy))  # not read by a `latest` query
    assert torch.equal(every, reference)
    assert not torch.equal(every[0], every[1])


class _Data:
    """What the protocol reads of a datamodule: the stream and its split."""

    def __init__(self, n=300, seed=1):
        rng = np.random.default_rng(seed)
        self.num_users, self.num_items = 10, 8
        user = torch.from_numpy(rng.integers(0, 10, n))
        item = torch.from_numpy(rng.integers(0, 8, n))
        t = torch.from_numpy(np.sort(rng.uniform(0, 1000, n)))
        self.stream = hand_made(user, item, t)
        self.split = Split(200, 250, n)


def test_official_literal_scores_every_label_repeat_first_whatever_the_weights():
    data = _Data()
    models = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        models[str(seed)] = DeePRed(data.num_users, data.num_items, dim=8, history_k=3)
    out = evaluate_deepred_paper(models, data, history=5, pool_fraction=0.5)
    base = "protocol/deepred_paper"
    repeat = out[f"{base}/label_repeat/literal/pooled/recall@10"]
    assert repeat > 0.5
    for name in models:
        # the query is the pool entry of the user's previous event (distance 0), labelled
        # with that event's label: every repeat of the label is a hit at rank 1
        assert out[f"{base}/{name}/official/literal/pooled/mrr@10"] >= repeat
    assert out[f"{base}/history"] == 5
    assert out[f"{base}/pool_size"] == 100
    assert out[f"{base}/events"] == 100


def test_protocol_refuses_a_model_without_deepred_embeddings():
    from tempint.models.heuristics import Popularity

    data = _Data()
    with pytest.raises(ConfigError, match="model=deepred"):
        evaluate_deepred_paper({"trained": Popularity(10, 8)}, data)
    with pytest.raises(ConfigError, match="deepred_paper.labels"):
        evaluate_deepred_paper({}, data, labels=["true"])


def test_experiment_trains_on_50_partners_and_writes_every_number_of_the_protocol(make_cfg):
    import json
    from pathlib import Path

    from tempint.train import train

    cfg = make_cfg(["experiment=deepred_paper"])
    assert (cfg.model.history_k, cfg.deepred_paper.history) == (50, 100)
    cfg.data.name = "synthetic"
    cfg.data.synthetic = {"shape": "tiny", "seed": 0}
    train(cfg)
    written = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    base = "protocol/deepred_paper"
    for encoder in ("trained", "untrained"):
        for kind in ("official", "model"):
            for label in ("literal", "corrected"):
                for split in ("pooled", "val", "test"):
                    for metric in ("mrr@10", "recall@10"):
                        value = written[f"{base}/{encoder}/{kind}/{label}/{split}/{metric}"]
                        assert 0 <= value <= 1
    assert 0 < written[f"{base}/recency/literal/pooled/recall@10"] <= 1
    assert written[f"{base}/history"] == 100


def test_an_unknown_option_is_one_sentence_naming_it():
    from omegaconf import OmegaConf

    from tempint.eval.session import deepred_paper

    cfg = OmegaConf.create({"seed": 0, "deepred_paper": {"histroy": 100}})
    with pytest.raises(ConfigError, match="deepred_paper.histroy is unknown"):
        deepred_paper(cfg, None, None, "cpu")


def test_official_embedding_of_every_event_with_a_window_is_its_own():
    from tempint.data.features import DeltaScale
    from tempint.eval.deepred_protocol import _encode

    data = _Data()
    torch.manual_seed(0)
    model = DeePRed(data.num_users, data.num_items, dim=8, history_k=3)
    segments, _ = evaluated_events(data.stream, data.split, 5)
    val = segments[0]
    lo, hi = data.split.train_end, data.split.val_end
    own = _encode(model, data.stream, val, lo, hi, 5, DeltaScale(0.0, 1.0))[2]
    windowed = torch.from_numpy(val.user_windows.count > 0)
    assert bool(windowed.any())
    assert bool((own[windowed].norm(dim=1) > 0).all())
    # no two events share one: the identity query == entry holds for one event only
    assert torch.unique(own[windowed], dim=0).shape[0] == int(windowed.sum())
