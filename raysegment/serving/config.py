"""Serving configuration, validated once (CLI flags or the Serve config file's args)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field(description="registry folder")
    max_models_per_replica: PositiveInt = Field(8, description="LRU of domain@version models per replica")
    max_batch_size: PositiveInt = 8
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_image_bytes: PositiveInt = Field(10 * 1024 * 1024, description="larger bodies get 413")
    max_pixels: PositiveInt = Field(4096 * 4096, description="decoded images above this get 413")
    min_replicas: int = Field(1, ge=0)
    max_replicas: PositiveInt = 2
    target_ongoing_requests: PositiveFloat = 4
    cpus_per_replica: float = Field(0.5, ge=0)
    gpus_per_replica: float = Field(0.0, ge=0)
    ingress_cpus: float = Field(0.1, ge=0)
    resolve_ttl_s: float = Field(1.0, ge=0, description="how long the gateway trusts a resolved domain@alias; "
                                                         "a promotion is live within this time")
    online_adabn: bool = Field(False, description="adapt each domain's BatchNorm statistics to the images its "
                                                  "endpoint receives (label-free); POST .../adabn-snapshot stores them")
    online_adabn_momentum: float = Field(0.01, gt=0, le=1, description="weight of each new batch's statistics")
