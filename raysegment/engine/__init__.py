"""One-process fine-tuning and evaluation. Ray Train/Tune wrap these; nothing here imports Ray."""

from raysegment.engine.evaluate import EvalResult, evaluate
from raysegment.engine.finetuner import FineTuner, fit

__all__ = ["EvalResult", "FineTuner", "evaluate", "fit"]
