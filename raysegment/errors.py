"""Library errors. Each message names the problem and, where there is one, the fix.

The CLI turns any `RaySegmentError` into one line on stderr and exit code 2.
"""


class RaySegmentError(Exception):
    """Base of every error a user can cause (bad data, bad config, missing weights)."""


class ConfigError(RaySegmentError):
    """A config file or value is invalid."""


class DatasetError(RaySegmentError):
    """A dataset folder is malformed: missing masks, bad labels, unreadable files."""


class ModelError(RaySegmentError):
    """A model cannot be built (unknown backbone, bad decoder, wrong input size)."""


class WeightsError(RaySegmentError):
    """Pretrained weights cannot be fetched, read or mapped onto an architecture."""


class CheckpointError(RaySegmentError):
    """A checkpoint is missing, incomplete or does not match the model."""
