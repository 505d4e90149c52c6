"""Bring your own model: SMP and torchvision segmenters imported from their own checkpoints, then
adapted, frozen, judged and exported like raysegment's own (`models.foreign`, `models.model_import`)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from raysegment.config import ModelConfig, parse_config
from raysegment.engine.adapt import adapt
from raysegment.engine.adapt.methods import require_batchnorm
from raysegment.engine.proxies import ProxyScores
from raysegment.engine.signature import InputStatistics
from raysegment.errors import ConfigError, ModelError
from raysegment.export.graph import agreement, export_onnx
from raysegment.export.runtime import OrtSegmenter
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter

SMP_ENCODER = "tu-test_efficientnet"  # timm's 82k-parameter test net under SMP's `tu-` prefix: no download


def original_smp(arch: str = "Unet") -> torch.nn.Module:
    """A team's SMP model as SMP builds it, with BatchNorm statistics a trained model would have."""
    import segmentation_models_pytorch as smp

    net = smp.create_model(arch, encoder_name=SMP_ENCODER, encoder_weights=None, classes=2)
    return _trained_looking(net)


def original_torchvision() -> torch.nn.Module:
    from torchvision.models import get_model

    net = get_model("deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None, num_classes=2, aux_loss=True)
    return _trained_looking(net)


def _trained_looking(net: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def smp_folder(tmp_path_factory, odd_root):
    """An SMP Unet checkpoint (a PyTorch file, as `torch.save(model.state_dict())` writes it) imported
    with the dataset's classes: (folder, the original model)."""
    from raysegment.cli import main

    tmp = tmp_path_factory.mktemp("smp")
    net = original_smp()
    torch.save(net.state_dict(), tmp / "unet.pth")
    args = ["import-model", tmp / "unet.pth", "--library", "smp", "--arch", "Unet", "--encoder", SMP_ENCODER]
    args += ["--classes", "2", "--dataset-info", odd_root / "dataset.json", "--out", tmp / "model"]
    assert main([str(a) for a in args]) == 0
    return tmp / "model", net


@pytest.fixture(scope="module")
def tv_folder(tmp_path_factory, odd_root):
    """A torchvision DeepLabV3 checkpoint imported with the dataset's classes."""
    from raysegment.models.model_import import import_model, read_info

    tmp = tmp_path_factory.mktemp("torchvision")
    torch.save(original_torchvision().state_dict(), tmp / "deeplab.pth")
    cfg = ModelConfig(library="torchvision", arch="deeplabv3_mobilenet_v3_large")
    return import_model(tmp / "deeplab.pth", cfg, read_info(odd_root / "dataset.json", 2), tmp / "model").folder, None


BYO_DOC = Path(__file__).resolve().parents[1] / "docs" / "bring-your-own-model.md"


def doc_import_command() -> str:
    """The `raysegment import-model` command of docs/bring-your-own-model.md, its continuation lines joined."""
    block = re.search(r"\n    (raysegment import-model .*?)\n\n", BYO_DOC.read_text(), re.S)
    assert block, "docs/bring-your-own-model.md lost its import-model command"
    return " ".join(part.strip() for part in block.group(1).split("\\\n"))


def test_the_docs_import_command_run_as_a_user_runs_it(tmp_path, odd_root):
    """The guide's command, as written, by the installed `raysegment` entry point in a fresh folder
    holding what it names (an SMP Unet on EfficientNet-Lite0 saved by torch.save, a dataset.json):
    the model folder is there, and it gives the original's logits at the scale the command set."""
    import segmentation_models_pytorch as smp

    command = doc_import_command()
    net = _trained_looking(
        smp.create_model("Unet", encoder_name="tu-efficientnet_lite0", encoder_weights=None, classes=2)
    )
    torch.save(net.state_dict(), tmp_path / "unet.pth")
    (tmp_path / "data" / "retina").mkdir(parents=True)
    shutil.copy(odd_root / "dataset.json", tmp_path / "data" / "retina" / "dataset.json")
    entry_point = Path(sys.executable).parent / "raysegment"
    env = {**os.environ, "PATH": f"{entry_point.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (tmp_path / "models" / "unet").iterdir()} >= {"model.json", "model.safetensors"}
    model, meta = load_model(tmp_path / "models" / "unet")
    assert meta.classes == ["background", "vessel"] and meta.resize.short_side == 320
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert float((net((images - model.mean) / model.std) - model(images)).abs().max()) <= 1e-5


def test_an_imported_smp_checkpoint_gives_the_original_logits(smp_folder):
    folder, net = smp_folder
    model, meta = load_model(folder)
    assert meta.model.library == "smp" and meta.classes == ["background", "vessel"]
    images = torch.rand(2, 3, 64, 96)  # SMP itself takes only multiples of 32, fed normalised images
    with torch.no_grad():
        diff = (net((images - model.mean) / model.std) - model(images)).abs().max()
        assert float(diff) <= 1e-5
        assert model(torch.rand(1, 3, 45, 61)).shape == (1, 2, 45, 61)  # any size: padded and cropped


def test_an_imported_torchvision_checkpoint_gives_the_original_logits(cli, tmp_path):
    net = original_torchvision()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "deeplab.safetensors")
    done = cli(
        "import-model", tmp_path / "deeplab.safetensors", "--library", "torchvision",
        "--arch", "deeplabv3_mobilenet_v3_large", "--classes", "2", "--out", tmp_path / "model",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dropped" in done.stdout and "aux_classifier" in done.stdout  # the auxiliary head has no use here
    model, meta = load_model(tmp_path / "model")
    assert meta.classes == ["class_0", "class_1"]
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        assert float((net((images - model.mean) / model.std)["out"] - model(images)).abs().max()) <= 1e-5


def test_a_checkpoint_that_does_not_fit_is_refused_naming_keys_and_the_fix(cli, tmp_path):
    torch.save(original_smp().state_dict(), tmp_path / "unet.pth")
    common = ["import-model", tmp_path / "unet.pth", "--library", "smp", "--encoder", SMP_ENCODER]
    classes = cli(*common, "--arch", "Unet", "--classes", "3", "--out", tmp_path / "a")
    assert classes.returncode == 2 and classes.stderr.count("\n") == 1
    assert "head.weight" in classes.stderr and "pass --classes 2" in classes.stderr
    arch = cli(*common, "--arch", "FPN", "--classes", "2", "--out", tmp_path / "b")
    assert arch.returncode == 2 and "missing keys" in arch.stderr and "unexpected keys" in arch.stderr
    unknown = cli(*common, "--arch", "Unett", "--classes", "2", "--out", tmp_path / "c")
    assert unknown.returncode == 2 and "did you mean unet" in unknown.stderr
    pickle = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, pickle)  # a whole module: a pickle, never loaded
    refused = cli("import-model", pickle, "--library", "smp", "--arch", "Unet", "--encoder", SMP_ENCODER,
                  "--classes", "2", "--out", tmp_path / "d")  # fmt: skip
    assert refused.returncode == 2 and "weights_only" in refused.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("library", ["smp", "torchvision"])
@pytest.mark.parametrize("method", ["adabn", "tent", "self_training", "finetune"])
def test_every_method_adapts_a_foreign_model(method, library, request, odd_root, tmp_path):
    folder, _ = request.getfixturevalue("smp_folder" if library == "smp" else "tv_folder")
    _, meta = load_model(folder)
    cfg = parse_config(
        {
            "data": {"root": str(odd_root), "domain": "chase", "unlabelled": method in ("adabn", "tent")},
            "model": {**meta.model.model_dump(mode="json"), "pretrained": {"source": "checkpoint", "uri": str(folder)}},
            "optim": {"epochs": 1, "batch_size": 2, "select": "last"},  # the trained epoch, not the start
            "adapt": {"method": method, "source_domain": "drive" if method == "self_training" else None},
            "output_dir": str(tmp_path / "run"),
        }
    )
    before = load_model(folder)[0].state_dict()
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    after = result.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k].cpu())]
    assert changed, f"{method} changed nothing"
    if method == "adabn":
        assert all("running" in k or "num_batches" in k for k in changed)  # BatchNorm statistics only
    assert ("val_miou" if cfg.judge == "labels" else "score") in result.scores


def test_freeze_depth_counts_the_stages_of_an_smp_tu_encoder_and_refuses_elsewhere():
    frozen = build_segmenter(ModelConfig(library="smp", arch="FPN", backbone=SMP_ENCODER, freeze_depth=2), 2)
    encoder = frozen.encoder.model  # the timm model SMP wraps
    assert frozen.num_stages == 5 and not encoder.conv_stem.weight.requires_grad
    assert any(p.requires_grad for p in encoder.blocks[-1].parameters())
    with pytest.raises(ModelError, match="no stage table"):
        build_segmenter(ModelConfig(library="torchvision", arch="fcn_resnet50", freeze_depth=1), 2)


def test_batchnorm_methods_refuse_a_model_without_batchnorm():
    model = build_segmenter(ModelConfig(library="smp", arch="Linknet", backbone=SMP_ENCODER), 2)
    require_batchnorm(model, "adabn")  # it has BatchNorm: accepted
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.BatchNorm2d):
                setattr(module, child_name, torch.nn.GroupNorm(1, child.num_features))
    with pytest.raises(ConfigError, match="no BatchNorm layer"):
        require_batchnorm(model, "tent")
    inputs = InputStatistics(model)  # the BatchNorm-based criterion says it does not apply
    with inputs:
        model.eval()(torch.rand(1, 3, 64, 64))
    assert math.isnan(inputs.distance_to_running())
    with pytest.raises(ConfigError, match="does not apply"):
        _ = ProxyScores({"bn_distance": inputs.distance_to_running(), "consistency": 0.5}, "bn_distance").score
    assert ProxyScores({"bn_distance": inputs.distance_to_running(), "consistency": 0.5}).score == 0.5


@pytest.mark.parametrize("library", ["smp", "torchvision"])
def test_a_foreign_model_exports_to_onnx_with_the_same_predictions(library, request):
    model, _ = load_model(request.getfixturevalue("smp_folder" if library == "smp" else "tv_folder")[0])
    graph = export_onnx(model)
    runtime = OrtSegmenter.like(model, graph)
    images = [torch.rand(3, 45, 61), torch.rand(3, 64, 96)]
    assert agreement(model, runtime, images).pixel_agreement >= 0.999


def test_the_config_says_which_library_builds_the_model():
    with pytest.raises(ValueError, match="model.arch"):
        ModelConfig(library="smp")
    with pytest.raises(ValueError, match="import-model"):
        ModelConfig(library="torchvision", arch="fcn_resnet50", pretrained={"source": "imagenet"})
    assert json.loads(ModelConfig(library="smp", arch="Unet", backbone=SMP_ENCODER).model_dump_json())["arch"] == "Unet"


def test_an_adapted_smp_model_is_a_delta_on_its_imported_source_with_drift_signatures(smp_folder, odd_root, tmp_path):
    from raysegment.data import open_split
    from raysegment.engine.adapt.batchnorm import adapt_batchnorm
    from raysegment.engine.signature import version_signatures
    from raysegment.registry import Registry

    source, meta = load_model(smp_folder[0])
    registry = Registry(tmp_path / "registry")
    registry.register("drive", source, meta)
    adapted = load_model(smp_folder[0])[0]
    chase = open_split(odd_root, "chase", "train", unlabelled=True)
    assert adapt_batchnorm(adapted, chase, batch_size=2) > 0
    signatures = version_signatures(adapted, chase, meta.resize, ("drive@1", source))
    version = registry.register("chase", adapted, meta, parent="drive@1", signatures=signatures)
    entry = registry.get_entry("chase", version)
    bn_tensors = sum(1 for k in adapted.state_dict() if "running_" in k or "num_batches_tracked" in k)
    assert 0 < entry.tensors <= bn_tensors  # only the moved BatchNorm statistics are stored
    assert set(entry.signatures) == {"own", "drive@1"}
    loaded = registry.load("chase@1")[0]
    images = torch.rand(1, 3, 45, 61)
    with torch.no_grad():
        assert torch.equal(loaded(images), adapted.eval()(images))
