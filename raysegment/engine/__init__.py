"""One-process training, adaptation and evaluation. Ray Train/Tune wrap these; nothing here imports Ray."""

from raysegment.engine.evaluate import EvalResult, evaluate
from raysegment.engine.learner import Finetune, Learner
from raysegment.engine.loop import fit, run_epochs, train_in_process

__all__ = ["EvalResult", "Finetune", "Learner", "evaluate", "fit", "run_epochs", "train_in_process"]
