"""No model holds state whose size is users × items or items × items.

Every model config is built for a real catalogue (10^6 users, 10^5 items) on the meta
device, which records shapes without allocating: a dense users × items table would be
10^11 entries, far above the bound of a few rows per node.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tempint.config import CONF_DIR
from tempint.errors import ConfigError
from tests.conftest import compose_config

USERS, ITEMS = 10**6, 10**5
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def node_width(model_cfg) -> int:
    """The most numbers a model may keep per user or item: its dim, its k most recent
    partners or items, or a ring of `attention_size` hidden states of size dim."""
    dims = [model_cfg.get("dim") or 1]
    base = model_cfg.get("base")
    if base is not None:
        dims.append(base.get("dim") or 1)
    dim = max(dims)
    counts = [model_cfg.get(k) or 1 for k in ("history_k", "length", "attention_size")]
    return max(dim, *counts, dim * (model_cfg.get("attention_size") or 1))


def build(name: str, tmp_path: Path, overrides=()):
    cfg = compose_config([f"model={name}", *overrides], tmp_path)
    with torch.device("meta"):
        model = instantiate(cfg.model, num_users=USERS, num_items=ITEMS)
    return model, node_width(cfg.model)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_and_buffer_is_linear_in_users_plus_items(name, tmp_path):
    overrides = ["model.static_embeddings=false"] if name == "jodie" else []
    model, width = build(name, tmp_path, overrides)
    bound = 4 * (USERS + ITEMS) * width
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert tensors or not model.capabilities.learned
    for key, tensor in tensors.items():
        assert tensor.numel() <= bound, (key, tuple(tensor.shape), bound)


def test_jodie_one_hot_static_block_is_refused_for_a_catalogue_it_cannot_hold(tmp_path):
    """The published one-hot identities make a (users + items + 1) × (dim + items) block:
    at this size it is refused in one sentence, not allocated."""
    with pytest.raises(Exception, match="static_embeddings=false") as raised:
        build("jodie", tmp_path)
    cause = raised.value
    while not isinstance(cause, ConfigError) and cause.__cause__ is not None:
        cause = cause.__cause__  # Hydra wraps what the constructor raised
    assert isinstance(cause, ConfigError)
