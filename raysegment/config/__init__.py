"""Run configuration: one pydantic tree per job, validated once at the boundary (YAML or CLI).

Inside the library, code trusts a config it is handed. A wrong key is an error, not a silent
default (`extra="forbid"`). One module per concern:

- `names`: the one list of each kind of name (decoders, methods, judges, criteria, layouts...).
- `run`: `RunConfig`, one training or adaptation run.
- `jobs`: the Ray shells' settings (`SearchConfig` for Tune, `LoopConfig` for the closed loop).
- `files`: configs read from YAML, errors one line naming the file.
"""

from raysegment.config.files import (
    deep_merge,
    format_validation_error,
    load_config,
    parse_config,
    read_yaml_mapping,
)
from raysegment.config.jobs import (
    LoopConfig,
    LoopMethod,
    SearchConfig,
)
from raysegment.config.names import (
    CRITERIA,
    LABEL_FREE_METHODS,
    LAYOUTS,
    METHOD_NAMES,
    PUBLIC_SETS,
    SELECT_STRATEGIES,
    STUDY_VARIANTS,
    SYNTH_DOMAINS,
    Criterion,
    Decoder,
    Judge,
    Layout,
    Library,
    MethodName,
    SelectStrategy,
)
from raysegment.config.run import (
    BUNDLED_BACKBONE,
    AdaptConfig,
    AugmentConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PretrainedConfig,
    ResizeConfig,
    RunConfig,
    ScaleConfig,
    Strict,
    default_judge,
)

__all__ = [
    "AdaptConfig",
    "AugmentConfig",
    "BUNDLED_BACKBONE",
    "CRITERIA",
    "Criterion",
    "DataConfig",
    "Decoder",
    "EvalConfig",
    "Judge",
    "LABEL_FREE_METHODS",
    "LAYOUTS",
    "Layout",
    "Library",
    "LoopConfig",
    "LoopMethod",
    "METHOD_NAMES",
    "MethodName",
    "ModelConfig",
    "OptimConfig",
    "PUBLIC_SETS",
    "PretrainedConfig",
    "ResizeConfig",
    "RunConfig",
    "SELECT_STRATEGIES",
    "STUDY_VARIANTS",
    "SYNTH_DOMAINS",
    "ScaleConfig",
    "SearchConfig",
    "SelectStrategy",
    "Strict",
    "deep_merge",
    "default_judge",
    "format_validation_error",
    "load_config",
    "parse_config",
    "read_yaml_mapping",
]
