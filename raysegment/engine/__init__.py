"""One-process training, adaptation and evaluation. Ray Train/Tune wrap these; nothing here imports Ray.

The names below are imported on first use (PEP 562), so one module of the engine (the registry
reads `engine.signature`) does not import the loop, the learners and torchmetrics with it. A
function named like its module (`evaluate`) is imported from the module: once the submodule is
loaded, the package attribute of that name is the module.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raysegment.engine.evaluate import EvalResult
    from raysegment.engine.finetune import Finetune
    from raysegment.engine.loop import fit, run_epochs, train_in_process
    from raysegment.engine.method import Method
    from raysegment.engine.runner import Runner

HOMES = {
    "EvalResult": "raysegment.engine.evaluate",
    "Finetune": "raysegment.engine.finetune",
    "Method": "raysegment.engine.method",
    "Runner": "raysegment.engine.runner",
    "fit": "raysegment.engine.loop",
    "run_epochs": "raysegment.engine.loop",
    "train_in_process": "raysegment.engine.loop",
}
__all__ = ["EvalResult", "Finetune", "Method", "Runner", "fit", "run_epochs", "train_in_process"]


def __getattr__(name: str) -> Any:
    if name in HOMES:
        return getattr(import_module(HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
