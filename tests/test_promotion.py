"""The one promotion policy: judged on held-back images, forced only on the record, rolled back."""

import pytest
import torch
from conftest import TINY_BACKBONE

from raysegment.config import parse_config
from raysegment.engine.adapt import adapt
from raysegment.models.rebuild import load_model
from raysegment.registry import Registry, RegistryError
from raysegment.registry.audit import RolledBack
from raysegment.registry.promotion import (
    Measured,
    force_production,
    judge,
    promote_if_better,
    promote_version,
    rollback,
)


def test_labels_may_tie_the_proxy_must_win():
    assert judge(0.5, 0.5, "labels")[0] and not judge(0.5, 0.5, "proxy")[0]
    assert judge(0.6, 0.5, "proxy")[0] and not judge(0.55, 0.5, "proxy", margin=0.1)[0]
    assert judge(0.1, None, "proxy") == (True, "no model to beat")


def _night_config(synth_root, source_model_dir, tmp_path):
    return parse_config(
        {
            "data": {"root": str(synth_root), "domain": "night"},
            "model": {
                "backbone": TINY_BACKBONE,
                "decoder": "fpn",
                "decoder_channels": 16,
                "pretrained": {"source": "checkpoint", "uri": str(source_model_dir)},
            },
            "adapt": {"method": "adabn", "judge": "labels"},
            "output_dir": str(tmp_path / "run"),
        }
    )


def test_only_a_candidate_that_beats_production_on_held_back_labels_goes_live(synth_root, source_model_dir, tmp_path):
    reg = Registry(tmp_path / "registry")
    cfg = _night_config(synth_root, source_model_dir, tmp_path)
    config = cfg.model_dump(mode="json")
    source, meta = load_model(source_model_dir)
    reg.register("night", source, meta, config=config, lineage={"judge": "labels"})
    first = promote_version(reg, "night@1")
    assert first.promoted and first.reason == "no model to beat"
    broken = load_model(source_model_dir)[0]
    with torch.no_grad():
        broken.head.bias.copy_(torch.arange(7.0) * 10)  # answers the last class everywhere
    reg.register("night", broken, meta, config=config, lineage={"judge": "labels"})
    refused = promote_version(reg, "night@2")
    assert not refused.promoted and "does not beat" in refused.reason and refused.incumbent == "night@1"
    assert reg.aliases("night") == {"production": 1, "candidate": 2}
    # night is a photometric shift: AdaBN helps on its val labels
    adapted = adapt(cfg, resume=False, progress=False, log=lambda line: None).model
    reg.register("night", adapted, meta, config=config, lineage={"judge": "labels"})
    better = promote_version(reg, "night@3")
    assert better.promoted and better.candidate_score > better.incumbent_score
    assert reg.aliases("night")["production"] == 3
    assert rollback(reg, "night", actor="bob") == 1 and reg.aliases("night")["production"] == 1
    with pytest.raises(RegistryError, match="first production version"):
        rollback(reg, "night")
    moves = reg.history("night")
    assert [m.alias for m in moves] == ["production", "candidate", "production", "production"]
    assert moves[-1].rollback == RolledBack(from_=3, by="bob") and moves[1].decision.promoted is False


def test_a_forced_promotion_names_who_forced_it(tmp_path, source_model_dir):
    reg = Registry(tmp_path)
    model, meta = load_model(source_model_dir)
    reg.register("fog", model, meta)
    with pytest.raises(ValueError, match="actor"):
        force_production(reg, "fog", 1, actor="")
    decision = force_production(reg, "fog", 1, actor="carol")
    assert decision.promoted and decision.forced_by == "carol" and reg.history("fog")[0].decision.forced_by == "carol"


def test_the_do_no_harm_floor_refuses_a_winner_estimated_below_production(tmp_path, source_model_dir):
    """A judge's win is refused when the candidate's estimate's upper bound is under production's estimate."""
    reg = Registry(tmp_path)
    model, meta = load_model(source_model_dir)
    reg.register("fog", model, meta, {"estimated_miou": 0.6, "estimated_miou_low": 0.55, "estimated_miou_high": 0.65})
    assert promote_if_better(reg, "fog", 1, Measured(0.5, None, "proxy")).promoted
    collapsed = {"estimated_miou": 0.3, "estimated_miou_low": 0.2, "estimated_miou_high": 0.4}
    reg.register("fog", model, meta, collapsed)
    refused = promote_if_better(reg, "fog", 2, Measured(0.9, 0.5, "proxy", "fog@1"))
    assert not refused.promoted and "do-no-harm floor" in refused.reason and "beats" in refused.reason
    reg.register("fog", model, meta, {"estimated_miou": 0.58, "estimated_miou_low": 0.5, "estimated_miou_high": 0.66})
    assert promote_if_better(reg, "fog", 3, Measured(0.9, 0.5, "proxy", "fog@1")).promoted  # within its interval
    reg.register("fog", model, meta)  # no estimate: the judge alone decides
    assert promote_if_better(reg, "fog", 4, Measured(0.9, 0.5, "proxy", "fog@3")).promoted
