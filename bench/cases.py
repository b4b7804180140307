"""What one benchmark case measures, inside its own process.

Each case runs in a fresh interpreter (see `bench/run.py`), so the peak resident memory
it reports belongs to that case alone. Training goes through `tempint.train.train`, the
function `tempint-train` calls, with validation, checkpoints, loggers and baselines
switched off: the epoch time is the training pass only, and the evaluation throughput is
the frozen validation + test replay of `tempint.eval.protocol.evaluate`.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "machine_info",
    "peak_memory_bytes",
    "compose_case",
    "measure_training",
    "bare_cell_rate",
    "measure_reference",
    "measure_eval_scaling",
    "measure_precision",
    "run_spec",
]

REAL_SHAPES = ("wikipedia",)  # shipped with the package; other shapes are generated
HISTORY_K = 50  # partner-history length for models that read histories (DeePRed's paper value)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine a number was taken on: without it a throughput means little."""
    import psutil
    import torch

    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def peak_memory_bytes() -> int:
    """Peak resident set size of this process.

    VmHWM belongs to the current address space, so it starts afresh at exec; ru_maxrss
    can carry the high-water mark of the process that forked this one.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def compose_case(
    model: str,
    shape: str,
    sampler: str,
    epochs: int = 1,
    device: str = "cpu",
    output_dir: str | os.PathLike = ".",
    extra: list[str] | tuple[str, ...] = (),
):
    """The train config of one case, as `tempint-train` would compose it, made lean.

    Validation during fit, checkpoints, loggers and the heuristic baselines beside the
    model are off: they are not part of a training epoch or of the model's evaluation.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from tempint.config import CONF_DIR

    overrides = [f"model={model}", f"sampler={sampler}", "logger=none"]
    if shape in REAL_SHAPES:
        overrides.append(f"data={shape}")
    else:
        overrides += ["data=synthetic", f"data.synthetic.shape={shape}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train", overrides=overrides + list(extra), return_hydra_config=True
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.output_dir = str(output_dir)
        cfg.group = "bench"
        cfg.resume = False
        cfg.callbacks = None
        cfg.logger = None
        cfg.eval.baselines = []
        cfg.trainer.max_epochs = int(epochs)
        cfg.trainer.accelerator = "gpu" if device == "cuda" else "cpu"
        cfg.trainer.limit_val_batches = 0
        cfg.trainer.enable_checkpointing = False
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
        if model == "deepred" and not cfg.data.get("history_k"):
            cfg.data.history_k = HISTORY_K
    return cfg


def _model_dim(cfg) -> int | None:
    dim = cfg.model.get("dim")
    if dim is None and cfg.model.get("base") is not None:
        dim = cfg.model.base.get("dim")
    return None if dim is None else int(dim)


def measure_training(
    model: str,
    shape: str,
    sampler: str,
    epochs: int = 1,
    device: str = "cpu",
    extra: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train `epochs` epochs and evaluate frozen, through the code path of real runs."""
    from tempint.train import train

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tempint-bench-") as tmp:
        cfg = compose_case(model, shape, sampler, epochs, device, tmp, extra)
        metrics, objects = train(cfg)
    split = metrics["split"]
    return {
        "dim": _model_dim(cfg),
        "learned": bool(objects["model"].capabilities.learned),
        "num_users": metrics["num_users"],
        "num_items": metrics["num_items"],
        "num_interactions": split.get("num_interactions"),
        "train_interactions": objects["module"].train_interactions,
        "epochs": metrics["train/epochs"],
        "seconds_per_epoch": metrics["train/seconds_per_epoch"],
        "train_interactions_per_second": metrics["train/interactions_per_second"],
        "eval_interactions_per_second": metrics["eval/interactions_per_second"],
        "eval_seconds": metrics["eval/seconds"],
        "test_mrr": metrics["test/mrr"],
        "wall_seconds": time.perf_counter() - start,
    }


def bare_cell_rate(
    dim: int,
    interactions: int = 126_000,
    batch_size: int = 1024,
    device: str = "cpu",
    seed: int = 0,
) -> float:
    """Interactions per second of the bare recurrent arithmetic of a cross-RNN step.

    Two `nn.GRUCell`s (user side reads the item's state, item side the user's), forward
    and backward over `interactions` in batches of `batch_size`: no gathers, no memory
    writes, no scoring, no optimiser. A model's training rate divided by this says how
    much of an epoch goes to everything else.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    user_cell = nn.GRUCell(dim, dim).to(device)
    item_cell = nn.GRUCell(dim, dim).to(device)
    users = torch.randn(batch_size, dim, device=device)
    items = torch.randn(batch_size, dim, device=device)

    def step() -> None:
        new_user = user_cell(items, users)
        new_item = item_cell(users, items)
        (new_user - new_item).pow(2).sum().backward()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    step()  # allocator and kernel warm-up, not timed
    sync()
    batches = max(1, -(-int(interactions) // batch_size))
    start = time.perf_counter()
    for _ in range(batches):
        step()
    sync()
    return batches * batch_size / (time.perf_counter() - start)


def measure_reference(
    dims: list[int], interactions: int = 126_000, batch_size: int = 1024, device: str = "cpu"
) -> dict[str, Any]:
    rates = {str(d): bare_cell_rate(int(d), interactions, batch_size, device) for d in dims}
    return {"interactions": interactions, "batch_size": batch_size, "rates": rates}


def measure_eval_scaling(
    interactions: list[int],
    items: list[int],
    num_users: int = 2_000,
    model: str = "limnet",
    device: str = "cpu",
    repeats: int = 2,
) -> dict[str, Any]:
    """Frozen evaluation time of one model over a grid of stream and catalogue sizes.

    Streams are generated with a fixed repeat structure; the model is untrained (the
    cost does not depend on the weights). Best of `repeats` passes, as the shortest pass
    is the least disturbed by other work on the machine.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from tempint.eval.session import evaluate_module
    from tempint.module import InteractionModule

    points = []
    for n in interactions:
        for num_items in items:
            with tempfile.TemporaryDirectory(prefix="tempint-bench-") as tmp:
                cfg = compose_case(model, "tiny", "tbatch", 1, device, tmp)
                with open_dict(cfg):
                    cfg.data.synthetic = {
                        "num_users": int(num_users),
                        "num_items": int(num_items),
                        "num_interactions": int(n),
                        "repeat_prob": 0.8,
                        "last_item_prob": 0.4,
                        "seed": 0,
                    }
                dm = instantiate(cfg.data, sampler=instantiate(cfg.sampler))
                dm.setup()
                net = instantiate(cfg.model, num_users=dm.num_users, num_items=dm.num_items)
                module = InteractionModule(net, ties=cfg.eval.ties, scorer=cfg.eval.scorer)
                module.to(torch.device(device))
                best = None
                for _ in range(max(1, repeats)):
                    net.reset_state()
                    metrics = evaluate_module(module, dm, cfg)
                    if best is None or metrics["eval/seconds"] < best["eval/seconds"]:
                        best = metrics
                evaluated = len(dm.split.val) + len(dm.split.test)
            points.append(
                {
                    "interactions": int(n),
                    "items": int(num_items),
                    "evaluated": evaluated,
                    "seconds": best["eval/seconds"],
                    "interactions_per_second": best["eval/interactions_per_second"],
                }
            )
    return {"model": model, "num_users": num_users, "points": points}


def measure_precision(
    models: list[str],
    shape: str,
    sampler: str,
    precisions: list[str],
    epochs: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Each model trained and evaluated once per `trainer.precision`, in this one process,
    so the ratios compare runs on the same machine under the same load. The first
    precision is the reference of the ratios."""
    rows = []
    for model in models:
        runs = {}
        for precision in precisions:
            try:
                runs[precision] = measure_training(
                    model, shape, sampler, epochs, device, [f"trainer.precision={precision}"]
                )
            except Exception as err:  # noqa: BLE001 - one failing precision is one entry
                runs[precision] = {"error": f"{type(err).__name__}: {err}"}
        rows.append({"model": model, "runs": runs})
    return {"shape": shape, "sampler": sampler, "precisions": list(precisions), "rows": rows}


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case described by a JSON-able spec; machine and peak memory added."""
    device = spec.get("device", "cpu")
    _set_threads(spec.get("threads"))
    kind = spec["kind"]
    if kind == "train":
        out = measure_training(
            spec["model"],
            spec["shape"],
            spec["sampler"],
            spec.get("epochs", 1),
            device,
            spec.get("extra", ()),
        )
    elif kind == "reference":
        out = measure_reference(
            spec["dims"], spec.get("interactions", 126_000), spec.get("batch_size", 1024), device
        )
    elif kind == "scaling":
        out = measure_eval_scaling(
            spec["interactions"],
            spec["items"],
            spec.get("num_users", 2_000),
            spec.get("model", "limnet"),
            device,
        )
    elif kind == "precision":
        out = measure_precision(
            spec["models"],
            spec["shape"],
            spec["sampler"],
            spec["precisions"],
            spec.get("epochs", 1),
            device,
        )
    else:
        raise ValueError(f"unknown case kind {kind!r}")
    out["machine"] = machine_info(device)
    out["peak_rss_bytes"] = peak_memory_bytes()
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
