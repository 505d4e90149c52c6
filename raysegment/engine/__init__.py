"""One-process training, adaptation and evaluation. Ray Train/Tune wrap these; nothing here imports Ray.

Each name is imported from its module (`raysegment.engine.epochs.fit`, `raysegment.engine.runner.Runner`),
so reading one module of the engine (the registry reads `engine.signature`) does not import the
loop, the learners and torchmetrics with it.
"""
