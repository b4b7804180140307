"""The data module on a tiny synthetic stream: loaders cover each split exactly once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tempint.data.batch import TAG_NAMES, Chunk, Interactions
from tempint.data.datamodule import InteractionDataModule
from tempint.data.samplers import ChronoSampler, SequenceSampler, ShuffleSampler
from tempint.errors import ConfigError


def module(**kwargs) -> InteractionDataModule:
    dm = InteractionDataModule(synthetic={"shape": "tiny"}, **kwargs)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def dm() -> InteractionDataModule:
    return module(history_k=3)


def indices(chunks, scored_only=False) -> list[int]:
    out = []
    for chunk in chunks:
        assert isinstance(chunk, Chunk)
        for s, step in enumerate(chunk.steps):
            idx = step.index
            if scored_only and chunk.scored is not None:
                idx = idx[chunk.scored[s]]
            out += idx.tolist()
    return out


def test_setup_splits_the_tiny_stream(dm):
    assert dm.source == "synthetic:tiny"
    assert (dm.split.train_end, dm.split.val_end, dm.split.num_interactions) == (320, 360, 400)
    assert dm.num_users == int(dm.stream.user.max()) + 1
    assert dm.num_items == int(dm.stream.item.max()) + 1
    stream = dm.stream
    assert len(stream) == 400 and torch.equal(stream.index, torch.arange(400))
    assert stream.user_history.shape == stream.item_history.shape == (400, 3)
    assert stream.user_history_dt.dtype == torch.float32
    assert set(stream.tags) == set(TAG_NAMES)
    assert torch.all(stream.t[1:] >= stream.t[:-1])


def test_tbatch_train_loader_covers_training_once(dm):
    chunks = list(dm.train_dataloader())
    assert sorted(indices(chunks)) == list(range(320))
    for chunk in chunks:
        for step in chunk.steps:  # columns gathered from the stream at the step's positions
            assert torch.equal(step.user, dm.stream.user[step.index])
            assert torch.equal(step.user_history, dm.stream.user_history[step.index])
            assert len(set(step.user.tolist())) == len(step) == len(set(step.item.tolist()))


@pytest.mark.parametrize("stage, rows", [("val", range(320, 360)), ("test", range(360, 400))])
def test_eval_loaders_cover_their_split_once_in_order(dm, stage, rows):
    loader = dm.val_dataloader() if stage == "val" else dm.test_dataloader()
    assert indices(loader) == list(rows)


def test_chunks_move_to_a_device(dm):
    chunk = next(iter(dm.train_dataloader()))
    moved = chunk.to("meta")
    step = moved.steps[0]
    assert step.user.device.type == "meta" and step.user_history.device.type == "meta"
    assert all(v.device.type == "meta" for v in step.tags.values())
    assert len(moved.steps) == len(chunk.steps)


def test_chrono_and_shuffle_train_loaders_cover_training_once():
    dm = module(sampler=ChronoSampler(batch_size=50))
    assert indices(dm.train_dataloader()) == list(range(320))
    dm = module(sampler=ShuffleSampler(batch_size=50, seed=1))
    first, second = dm.train_plans(epoch=0), dm.train_plans(epoch=1)
    assert sorted(indices(dm.chunks(first))) == list(range(320))
    assert indices(dm.chunks(first)) != indices(dm.chunks(second))


def test_sequence_sampler_serves_windows():
    dm = module(sampler=SequenceSampler(length=16, batch_size=4), eval_context=4)
    chunks = list(dm.train_dataloader())
    assert set(indices(chunks)) == set(range(320))
    for chunk in chunks:
        num_windows = chunk.num_windows
        assert len(chunk.steps) == 16 and chunk.local_users.shape == (num_windows * 16,)
        for step in chunk.steps:
            assert torch.equal(chunk.local_users[step.user_row], step.user)
            assert torch.equal(chunk.local_items[step.item_row], step.item)
            assert torch.equal(step.user_row // 16, torch.arange(num_windows))
    val = list(dm.val_dataloader())
    assert sorted(indices(val, scored_only=True)) == list(range(320, 360))
    assert all(c.scored is not None for c in val)
    assert sum(c.num_interactions for c in val) == 40
    # streaming-exact plans stay available whatever the training sampler
    assert indices(dm.chunks(dm.exact_plans("test"))) == list(range(360, 400))


def test_warmup_plans_cover_training(dm):
    assert indices(dm.chunks(dm.warmup_plans(size=100))) == list(range(320))


def test_interactions_select_keeps_every_column(dm):
    part = dm.stream.select(torch.tensor([3, 1]))
    assert isinstance(part, Interactions) and len(part) == 2
    assert torch.equal(part.index, torch.tensor([3, 1]))
    assert torch.equal(part.tags["new"], dm.stream.tags["new"][[3, 1]])
    assert np.array_equal(part.cyclic.numpy(), dm.stream.cyclic[[3, 1]].numpy())


def test_interactions_concat_is_the_select_of_both_parts(dm):
    a, b = torch.tensor([5, 2]), torch.tensor([7])
    joined = Interactions.concat([dm.stream.select(a), dm.stream.select(b)])
    whole = dm.stream.select(torch.cat((a, b)))
    for name, value in vars(whole).items():
        got = getattr(joined, name)
        if isinstance(value, dict):
            assert value.keys() == got.keys()
            assert all(torch.equal(value[k], got[k]) for k in value)
        else:
            assert (value is None and got is None) or torch.equal(value, got), name


def test_negative_history_is_a_config_error():
    with pytest.raises(ConfigError, match="data.history_k"):
        InteractionDataModule(synthetic={"shape": "tiny"}, history_k=-1)


@pytest.mark.parametrize(
    "sampler",
    [None, ChronoSampler(batch_size=7, steps=3), ShuffleSampler(batch_size=9), SequenceSampler()],
)
def test_loaders_have_the_length_they_yield(sampler):
    dm = module(sampler=sampler)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert len(loader) == sum(1 for _ in loader) > 0
    dm.val_kind = "blocks"
    assert len(dm.val_dataloader()) == sum(1 for _ in dm.val_dataloader())
