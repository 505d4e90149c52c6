"""Training checkpoints: model + optimiser + scheduler + counters + RNG, never pickled.

A checkpoint is a folder: `model.safetensors` + `model.json` (the model being trained, loadable on
its own by `models.load_model`), `selected/` (the run's result so far: the best-scored epoch's
model, also a model folder), `train_state.safetensors` (optimiser tensors, RNG states) and
`train_state.json` (param groups, scheduler, epoch, step, history, Python/NumPy RNG).
It is written into a temporary sibling and renamed into place, so a crash leaves either the
previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from raysegment.errors import CheckpointError
from raysegment.models.io import ModelMeta, save_model
from raysegment.storage import atomic_write_json, publish_dir

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
LATEST = "latest.json"
SELECTED = "selected"


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy MT19937 tuple
    return tensors, {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    meta: ModelMeta,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    counters: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
    selected: torch.nn.Module | None = None,
) -> Path:
    """Write a full training checkpoint atomically to `folder`; `extra_tensors` (a mean teacher's
    student, say) travel in the train state under `extra/`; `selected` (default: `model`) is the
    run's result so far, written as the model folder `selected/`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_model(tmp, model, meta)
        save_model(tmp / SELECTED, selected if selected is not None else model, meta)
        opt = optimizer.state_dict()
        tensors, extra = {}, {}
        for pid, pstate in opt["state"].items():
            for key, value in pstate.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{pid}/{key}"] = value.detach().cpu().contiguous()
                else:
                    extra[f"{pid}/{key}"] = value
        rng_tensors, rng_json = rng_state()
        tensors.update(rng_tensors)
        tensors.update({f"extra/{k}": v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()})
        save_file(tensors, str(tmp / STATE_TENSORS))
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        atomic_write_json(
            tmp / STATE_JSON,
            {
                "param_groups": opt["param_groups"],
                "optim_scalars": extra,
                "scheduler": sched,
                "counters": counters,
                "rng": rng_json,
            },
        )
        publish_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_checkpoint(
    folder: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote; returns the counters."""
    from raysegment.models.io import read_weights

    folder = Path(folder)
    if not (folder / STATE_JSON).is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint ({STATE_JSON} missing)")
    model.load_state_dict(read_weights(str(folder)))
    state = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_TENSORS))
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for key, value in state["optim_scalars"].items():
        pid, name = key.split("/", 1)
        opt_state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    sched = scheduler.state_dict()
    sched.update(state["scheduler"])
    scheduler.load_state_dict(sched)
    set_rng_state(tensors, state["rng"])
    return state["counters"]


def load_selected_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The weights of the checkpoint's `selected/` model."""
    from raysegment.models.io import read_weights

    return read_weights(str(Path(folder) / SELECTED))


def load_extra_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """The `extra` tensors a checkpoint was saved with (empty if none)."""
    tensors = load_file(str(Path(folder) / STATE_TENSORS))
    return {k.removeprefix("extra/"): v for k, v in tensors.items() if k.startswith("extra/")}


def epoch_dir(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}"


def mark_latest(run_dir: str | Path, epoch: int, keep: int = 2) -> None:
    """Point `latest.json` at an epoch's checkpoint and drop older ones beyond `keep`."""
    ckpts = Path(run_dir) / "checkpoints"
    atomic_write_json(ckpts / LATEST, {"epoch": epoch, "path": epoch_dir(run_dir, epoch).name})
    done = sorted(p for p in ckpts.glob("epoch_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["path"]
    return path if path.is_dir() else None
