"""ONNX export, the agreement check, the registry round trip and INT8 judged like any candidate."""

from typing import get_args

import onnx
import pytest
import torch
from onnx import numpy_helper
from torchvision.io import write_png

from raysegment.apps import export as exporting
from raysegment.apps.export import export_version, quantize_version
from raysegment.config import Decoder
from raysegment.export.graph import ExportError, agreement, export_onnx
from raysegment.export.runtime import OrtSegmenter
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry
from raysegment.registry.artifacts import ONNX, Artifacts


def _odd_images(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, 45, 77, generator=g), torch.rand(3, 64, 128, generator=g)]


@pytest.mark.parametrize("decoder", get_args(Decoder))
def test_every_decoder_exports_with_dynamic_batch_and_size(tiny_config, decoder):
    cfg = tiny_config(model={"decoder": decoder, "decoder_channels": 8})
    model = build_segmenter(cfg.model, 3).eval()
    graph = export_onnx(model)
    runtime = OrtSegmenter.like(model, graph)
    found = agreement(model, runtime, _odd_images())
    assert found.passed and found.max_abs_diff < 1e-4 and found.sizes == ((45, 77), (64, 128))
    batch = torch.rand(3, 3, 37, 50)  # another batch size, and a size divisible by no stride
    with torch.no_grad():
        torch.testing.assert_close(runtime(batch), model(batch), atol=1e-4, rtol=1e-4)


def _altered(graph: bytes) -> bytes:
    """The graph with the head's weights negated: still a valid graph, computing something else."""
    proto = onnx.load_from_string(graph)
    head = next(t for t in proto.graph.initializer if "head" in t.name and numpy_helper.to_array(t).ndim == 4)
    head.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(head), head.name))
    return proto.SerializeToString()


def _registered(tmp_path, synth_root, source_model_dir, uri=None, domain="fog") -> Registry:
    model, meta = load_model(source_model_dir)
    registry = Registry(uri or tmp_path / "registry")
    config = {"data": {"root": str(synth_root), "domain": domain}, "model": meta.model.model_dump(mode="json")}
    registry.register(domain, model, meta, config=config, lineage={"method": "source", "judge": "labels"})
    registry.set_alias(domain, 1, "production")
    return registry


def test_an_export_that_disagrees_is_refused_with_the_numbers_and_not_stored(
    tmp_path, synth_root, source_model_dir, monkeypatch
):
    registry = _registered(tmp_path, synth_root, source_model_dir)
    monkeypatch.setattr(exporting, "export_onnx", lambda model, opset: _altered(export_onnx(model, opset)))
    with pytest.raises(ExportError, match=r"disagrees .*argmax agreement [0-9.]+% of pixels, max \|logit difference\|"):
        export_version(registry, "fog@1", say=lambda line: None)
    assert Artifacts(registry.store).records(registry.get_entry("fog", 1)) == {}


def test_an_export_lives_with_its_version_and_goes_when_it_goes(
    registry_uri, tmp_path, synth_root, source_model_dir, cli
):
    registry = _registered(tmp_path, synth_root, source_model_dir, registry_uri)
    done = cli("export", "fog@production", "--out", str(tmp_path / "fog.onnx"), "--registry", registry_uri)
    assert done.returncode == 0, done.stderr
    entry = registry.get_entry("fog", 1)
    graph, record = Artifacts(registry.store).load(entry, ONNX)
    assert graph == (tmp_path / "fog.onnx").read_bytes() and record.bytes == len(graph)
    assert record.opset == 17 and record.quantization is None and record.pixel_agreement >= 0.999
    assert record.checked_images == 4 and len(record.checked_sizes) == 2  # two sizes of the domain's val images
    assert record.onnxruntime_version and record.torch_version == torch.__version__
    model, _ = load_model(source_model_dir)
    image = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(OrtSegmenter.like(model, graph)(image), model(image), atol=1e-4, rtol=1e-4)
    registry.register("fog", model, entry.meta, parent="fog@1")
    Artifacts(registry.store).add(registry.get_entry("fog", 2), ONNX, graph, record.model_dump())
    registry.remove("fog", 2)
    assert Artifacts(registry.store).load(registry.get_entry("fog", 1), ONNX)[0] == graph  # fog@1 still uses it


def test_export_errors_are_one_line(tmp_path, synth_root, source_model_dir, cli):
    registry = _registered(tmp_path, synth_root, source_model_dir)
    missing = cli("export", "fog@7", "--registry", str(tmp_path / "registry"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "fog" in missing.stderr
    folder = cli("export", str(source_model_dir), "--registry", str(tmp_path / "registry"))
    assert folder.returncode == 2 and "--out" in folder.stderr and folder.stderr.count("\n") == 1
    assert registry.versions("fog") == [1]


def test_int8_ships_when_it_keeps_the_parents_accuracy_and_not_when_its_calibration_is_wrong(
    tmp_path, synth_root, source_model_dir
):
    # On the source's own domain (clear, ~69 mIoU): a lossy INT8 has accuracy to lose there
    registry = _registered(tmp_path, synth_root, source_model_dir, domain="clear")
    kept = quantize_version(registry, "clear@1", calibration=7, max_drop=0.5, say=lambda line: None)
    decision = kept.decision
    assert kept.version == 2 and decision.judge == "labels" and decision.incumbent == "clear@1"
    assert decision.promoted and decision.candidate_score >= decision.incumbent_score - 0.005, decision.reason
    assert registry.aliases("clear")["production"] == 2
    entry = registry.get_entry("clear", 2)
    assert entry.lineage.method == "int8" and entry.tensors == 0  # no weights of its own
    graph, record = Artifacts(registry.store).load(entry, ONNX)
    assert record.quantization == "int8" and record.calibration_images == 7
    assert len(graph) < Artifacts(registry.store).load(registry.get_entry("clear", 1), ONNX)[0].__len__()
    # One black image to calibrate on: activation ranges of nothing, every real image saturates.
    registry.set_alias("clear", 1, "production")
    black = tmp_path / "black"
    black.mkdir()
    write_png(torch.zeros(3, 64, 128, dtype=torch.uint8), str(black / "0.png"))
    lossy = quantize_version(
        registry, "clear@1", calibration=1, max_drop=0.5, calibration_images=black, say=lambda line: None
    )
    assert not lossy.decision.promoted and "below it" in lossy.decision.reason
    assert registry.aliases("clear") == {"production": 1, "candidate": 3}
    (last,) = [r.decision for r in registry.history("clear") if r.decision and r.decision.version == 3]
    assert last.incumbent == "clear@1" and last.judge == "labels"
    # The INT8 of a float version that is not production: a candidate, unjudged (nothing to replace yet)
    model, meta = load_model(source_model_dir)
    registry.register("clear", model, meta, config=registry.get_entry("clear", 1).config, parent="clear@1")
    unjudged = quantize_version(registry, "clear@4", calibration=2, say=lambda line: None).decision
    assert not unjudged.promoted and unjudged.judge is None and unjudged.candidate_score is None
    assert "clear@4 is not production" in unjudged.reason
    assert registry.aliases("clear") == {"production": 1, "candidate": 5}
