"""raysegment: domain adaptation for semantic segmentation, with Ray as a thin distributed shell.

Layers, each importing only from those to its left:
config/storage/objectstore/errors -> data -> augment -> models -> engine
-> registry/manifest/weights_cache/traffic -> promotion -> distributed (Ray Train, Tune, Jobs)
-> serving (Ray Serve) -> apps -> cli.
The core (data, augment, models, engine) never imports Ray; `tests/test_layers.py` checks the rule.
"""

__version__ = "0.1.0"
