"""raysegment: domain adaptation for semantic segmentation, with Ray as a thin distributed shell.

Layers, each importing only from those to its left:
config/storage/errors/viz -> data -> augment -> models -> engine -> export
-> registry (a package: store, manifest, audit, cache, artifacts, versions, traffic, promotion, intake)
-> distributed (Ray Train, Tune, Jobs) -> serving (Ray Serve) -> apps -> cli.
Everything up to the registry never imports Ray; no module imports itself back through others.
`tests/test_layers.py` checks both rules on every import, lazy ones included.
"""

__version__ = "0.1.0"
