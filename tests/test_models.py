from typing import get_args

import pytest
import torch
from conftest import TINY_BACKBONE
from safetensors.torch import load_file

from raysegment.config import Decoder, ModelConfig, PretrainedConfig
from raysegment.errors import CheckpointError, ModelError, WeightsError
from raysegment.models.freeze import is_batchnorm
from raysegment.models.io import ModelMeta, save_model
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter


@pytest.mark.parametrize("decoder", get_args(Decoder))
@pytest.mark.parametrize("backbone", [TINY_BACKBONE, "test_resnet"])
def test_every_decoder_returns_logits_at_input_resolution(backbone, decoder):
    model = build_segmenter(ModelConfig(backbone=backbone, decoder=decoder, decoder_channels=16), num_classes=5)
    logits = model(torch.rand(2, 3, 70, 100))  # not a multiple of the stride: padded and cropped back
    assert logits.shape == (2, 5, 70, 100)
    logits.mean().backward()
    assert model.head.weight.grad is not None


def test_unknown_backbone_lists_close_matches():
    with pytest.raises(ModelError, match=r"'efficientnet_lite9'.*did you mean .*efficientnet_lite0"):
        build_segmenter(ModelConfig(backbone="efficientnet_lite9"), 3)


def test_bad_input_shape_is_a_clear_error():
    model = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 3)
    with pytest.raises(ModelError, match=r"\(B,3,H,W\)"):
        model(torch.rand(3, 32, 32))


@pytest.mark.parametrize("backbone", [TINY_BACKBONE, "test_resnet"])
def test_frozen_stages_keep_weights_and_bn_stats_after_a_step(backbone):
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(backbone=backbone, freeze_depth=2, decoder_channels=8), 4)
    frozen = {id(p) for m in model._frozen for p in m.parameters(recurse=False)}
    assert frozen, "depth 2 must freeze something"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert all(not m.training for m in model._frozen if is_batchnorm(m))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = model(torch.rand(2, 3, 64, 64) * 3).logsumexp(1).mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    frozen_names = {n for n, p in model.named_parameters() if id(p) in frozen}
    frozen_bn_stats = {
        f"{name}.{s}"
        for name, m in model.named_modules()
        if m in model._frozen and is_batchnorm(m)
        for s in ("running_mean", "running_var")
    }
    assert frozen_bn_stats
    for name in frozen_names | frozen_bn_stats:
        assert torch.equal(before[name], after[name]), f"{name} moved although frozen"
    moved = [
        n
        for n in after
        if n.startswith("encoder.")
        and n not in frozen_names | frozen_bn_stats
        and "running_mean" in n
        and not torch.equal(before[n], after[n])
    ]
    assert moved, "unfrozen BN statistics should update in train mode"
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_freeze_depth_beyond_the_stages_is_an_error():
    with pytest.raises(ModelError, match="exceeds the backbone's 5 stages"):
        build_segmenter(ModelConfig(backbone=TINY_BACKBONE, freeze_depth=6), 3)


def test_deeper_freeze_trains_fewer_parameters():
    counts = [
        sum(
            p.numel()
            for p in build_segmenter(ModelConfig(backbone=TINY_BACKBONE, freeze_depth=d), 3).parameters()
            if p.requires_grad
        )
        for d in range(6)
    ]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_local_safetensors_and_file_uri_load_the_same_weights(imagenet_weights):
    expected = load_file(str(imagenet_weights))["conv_stem.weight"]
    for uri in (str(imagenet_weights), f"file://{imagenet_weights}"):
        model = build_segmenter(ModelConfig(pretrained=PretrainedConfig(source="file", uri=uri)), 3)
        assert torch.equal(model.encoder.conv_stem.weight, expected)


def test_pth_is_refused_as_a_pretrained_file(tmp_path):
    pth = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, pth)
    with pytest.raises(WeightsError, match="raysegment weights import"):
        build_segmenter(
            ModelConfig(backbone=TINY_BACKBONE, pretrained=PretrainedConfig(source="file", uri=str(pth))), 3
        )


def test_timm_hub_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="could not fetch timm hub weights for resnet18.*weights import"):
        build_segmenter(ModelConfig(backbone="resnet18", pretrained=PretrainedConfig(source="timm")), 3)


def test_own_checkpoint_initialises_encoder_and_decoder(tmp_path):
    cfg = ModelConfig(backbone=TINY_BACKBONE, decoder="unet", decoder_channels=8)
    source = build_segmenter(cfg, 4)
    meta = ModelMeta(model=cfg, num_classes=4, classes=list("abcd"), palette=[(0, 0, 0)] * 4)
    save_model(tmp_path / "src", source, meta)
    child_cfg = cfg.model_copy(
        update={"pretrained": PretrainedConfig(source="checkpoint", uri=str(tmp_path / "src")), "freeze_depth": 1}
    )
    child = build_segmenter(child_cfg, 4)
    for key, value in source.state_dict().items():
        assert torch.equal(child.state_dict()[key], value), key
    other_classes = build_segmenter(child_cfg, 6)  # a new head, everything else inherited
    assert other_classes.head.weight.shape[0] == 6
    assert torch.equal(other_classes.decoder.blocks[0][0][0].weight, source.decoder.blocks[0][0][0].weight)
    wrong = cfg.model_copy(update={"decoder": "fpn", "pretrained": child_cfg.pretrained})
    with pytest.raises(CheckpointError):
        build_segmenter(wrong, 4)


def test_saved_model_round_trips(tmp_path):
    cfg = ModelConfig(backbone=TINY_BACKBONE, decoder="segformer", decoder_channels=8)
    model = build_segmenter(cfg, 3).eval()
    save_model(
        tmp_path / "m", model, ModelMeta(model=cfg, num_classes=3, classes=["a", "b", "c"], palette=[(1, 2, 3)] * 3)
    )
    loaded, meta = load_model(tmp_path / "m")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(x), model(x)) and meta.classes == ["a", "b", "c"]
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(tmp_path / "m")


def test_every_configurable_decoder_is_built_and_none_other():
    from raysegment.models.decoders import DECODERS

    assert list(DECODERS) == list(get_args(Decoder))  # one list of names: config.Decoder
