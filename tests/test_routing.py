"""The routing table: nearest domain by signature, the unknown flag, refresh after a promotion."""

from __future__ import annotations

import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig
from raysegment.engine.signature import Signature
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry
from raysegment.serving.routing import RoutingTable

META = ModelMeta(
    model=ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8),
    num_classes=2,
    classes=["a", "b"],
    palette=[(0, 0, 0), (255, 255, 255)],
)


def gaussian(mean: float, radius: float | None = 0.5) -> Signature:
    return Signature([torch.full((4,), mean, dtype=torch.float64)], [torch.ones(4, dtype=torch.float64)], 10, radius)


def test_nearest_domain_the_unknown_flag_and_promotions(tmp_path):
    reg = Registry(tmp_path)
    model = build_segmenter(META.model, 2)
    reg.register("clear", model, META, signatures={"own": gaussian(0.0)})
    reg.register("night", model, META, parent="clear@1", signatures={"own": gaussian(9.0), "clear@1": gaussian(3.0)})
    reg.register("plain", model, META, parent="clear@1")  # no signature: never routed to
    table = RoutingTable(reg, "clear@1", unknown_factor=2.0, refresh_s=0.0)
    assert set(table.signatures()) == {"clear", "night"}
    near_night = table.route(gaussian(2.8, None))
    assert near_night is not None and near_night.domain == "night" and not near_night.unknown
    assert near_night.distance == table.route(gaussian(2.8, None)).distance  # deterministic
    # SKL of unit-variance Gaussians is the squared mean gap: 0.04 here, 1.44 at 1.2 (> 2 x 0.5)
    assert table.route(gaussian(-0.2)).domain == "clear" and not table.route(gaussian(-0.2)).unknown
    far = table.route(gaussian(-1.2))
    assert far.domain == "clear" and far.unknown
    reg.register("night", model, META, parent="clear@1", signatures={"clear@1": gaussian(6.0)})
    reg.set_alias("night", 2, "production")  # production moved: its signature is the new version's
    assert table.route(gaussian(5.5)).domain == "night"


def test_no_routable_domain_gives_none(tmp_path):
    reg = Registry(tmp_path)
    reg.register("clear", build_segmenter(META.model, 2), META)
    assert RoutingTable(reg, "clear@1", 2.0).route(gaussian(0.0)) is None
