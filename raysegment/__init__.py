"""raysegment: domain adaptation for semantic segmentation, with Ray as a thin distributed shell.

Layers, each importing only from those to its left:
data -> augment -> models -> engine -> train -> tune -> registry -> serving -> cli/jobs.
The core (data, augment, models, engine) never imports Ray.
"""

__version__ = "0.1.0"
