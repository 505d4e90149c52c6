"""The typed manifest reads every manifest the registry has written, and refuses a broken one."""

import json

import pytest
import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import CorruptRegistry, Registry
from raysegment.registry.manifest import ModelVersion

CFG = ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8)
META = ModelMeta(model=CFG, num_classes=2, classes=["background", "vessel"], palette=[(0, 0, 0), (255, 0, 0)])


def _registered(tmp_path):
    torch.manual_seed(0)
    reg = Registry(tmp_path)
    reg.register("drive", build_segmenter(CFG, 2), META, {"val_miou": 0.7})
    return reg, tmp_path / "drive" / "versions" / "0001.json"


def test_a_manifest_of_the_first_format_still_loads(tmp_path):
    """The first registry format: no `version`, `tensors` or `signatures` keys, lineage facts of
    one producer (a search's trial, a loop's image count) as plain keys, metrics as ints."""
    reg, path = _registered(tmp_path)
    current = json.loads(path.read_text())
    old = {k: current[k] for k in ("domain", "meta", "config", "base", "sha256", "bytes")}
    old |= {
        "metrics": {"val_miou": 1, "score": 0.5},
        "lineage": {"time": 1.7e9, "parent": None, "method": "tent", "traffic_images": 40, "judge": "proxy"},
    }
    path.write_text(json.dumps(old))
    entry = reg.get_entry("drive", 1)
    m = entry
    assert isinstance(m, ModelVersion) and m.version == 1 and m.signatures == {} and m.tensors == 0
    assert m.metrics == {"val_miou": 1.0, "score": 0.5} and m.lineage.method == "tent"
    assert m.lineage.judge == "proxy" and m.lineage.fact("traffic_images") == 40 and m.lineage.fact("nope") is None
    model, meta, _ = reg.load("drive@1")  # and the weights it names still load, hash-checked
    assert meta.classes == ["background", "vessel"] and isinstance(model, torch.nn.Module)


def test_what_register_writes_is_what_the_type_reads(tmp_path):
    reg, path = _registered(tmp_path)
    written = json.loads(path.read_text())
    assert ModelVersion.model_validate(written) == reg.get_entry("drive", 1)
    assert set(written) >= {"domain", "version", "meta", "metrics", "sha256", "tensors", "bytes", "lineage"}


@pytest.mark.parametrize(
    "breakage",
    [
        {"sha256": None},
        {"metrics": {"val_miou": "high"}},
        {"lineage": {"judge": "a hunch"}},
        {"base": {"domain": "clear"}},
    ],
)
def test_a_manifest_with_a_wrongly_typed_field_is_corrupt_not_a_crash(tmp_path, breakage):
    reg, path = _registered(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **breakage}))
    with pytest.raises(CorruptRegistry, match="0001.json is corrupt"):
        reg.get_entry("drive", 1)
