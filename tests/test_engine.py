import math

import pytest
import torch
from torch import nn

from raysegment.config import EvalConfig, OptimConfig
from raysegment.data import open_split
from raysegment.engine import checkpoint as ckpt
from raysegment.engine.epochs import fit
from raysegment.engine.evaluate import evaluate, predict_logits
from raysegment.engine.loss import segmentation_loss
from raysegment.engine.schedule import lr_factor
from raysegment.models.rebuild import load_model


def test_lr_decays_exponentially_per_epoch_and_per_step():
    per_epoch = OptimConfig(decay=0.9, decay_every="epoch")
    assert [lr_factor(s, per_epoch, steps_per_epoch=3) for s in (0, 2, 3, 7)] == pytest.approx([1, 1, 0.9, 0.81])
    per_step = OptimConfig(decay=0.9, decay_every="step", warmup_steps=4)
    assert lr_factor(1, per_step, 3) == pytest.approx(0.5 * 0.9)
    assert lr_factor(10, per_step, 3) == pytest.approx(0.9**10)


def test_loss_ignores_unlabelled_pixels():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 255], [2, 255]]])
    expected = (
        torch.nn.functional.cross_entropy(logits[0, :, 0, 0][None], torch.tensor([0]))
        + torch.nn.functional.cross_entropy(logits[0, :, 1, 0][None], torch.tensor([2]))
    ) / 2
    assert float(segmentation_loss(logits, target, 255)) == pytest.approx(float(expected))
    empty = segmentation_loss(logits, torch.full_like(target, 255), 255)
    empty.backward()
    assert float(empty) == 0 and logits.grad is not None


def test_fit_learns_and_writes_loadable_checkpoints(tiny_config, synth_root):
    cfg = tiny_config(optim={"epochs": 6, "lr": 5e-3, "decay": 0.9})
    train = open_split(synth_root, "clear", "train")
    val = open_split(synth_root, "clear", "val")
    lines = []
    learner = fit(cfg, train, val, resume=False, log=lines.append)
    assert len(lines) == 6 and "val mIoU" in lines[-1]
    losses = [h["loss"] for h in learner.history]
    assert losses[-1] < 0.7 * losses[0]
    assert [h["lr"] for h in learner.history][:3] == pytest.approx([5e-3, 4.5e-3, 4.05e-3])
    latest = ckpt.latest_checkpoint(cfg.output_dir)
    assert latest.name == "epoch_0006"
    assert len(list((latest.parent).glob("epoch_*"))) == 2  # older ones pruned
    model, meta = load_model(latest)
    assert meta.classes[0] == "road"
    assert evaluate(model, val, cfg.eval).miou == pytest.approx(evaluate(learner.method.model, val, cfg.eval).miou)


def test_resumed_run_reproduces_the_uninterrupted_loss_curve(tiny_config, synth_root, tmp_path):
    train = open_split(synth_root, "clear", "train")
    full = fit(
        tiny_config(optim={"epochs": 4}, output_dir=str(tmp_path / "full")), train, resume=False, log=lambda s: None
    )
    part_cfg = tiny_config(optim={"epochs": 2}, output_dir=str(tmp_path / "part"))
    fit(part_cfg, train, resume=False, log=lambda s: None)
    torch.manual_seed(12345)  # disturb global RNG: resume must restore it
    resumed = fit(
        tiny_config(optim={"epochs": 4}, output_dir=str(tmp_path / "part")), train, resume=True, log=lambda s: None
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)
    for (name, a), b in zip(full.method.model.state_dict().items(), resumed.method.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_crash_during_checkpoint_write_keeps_the_previous_one(tiny_config, synth_root, monkeypatch):
    cfg = tiny_config(optim={"epochs": 1})
    learner = fit(cfg, open_split(synth_root, "clear", "train"), resume=False, log=lambda s: None)
    good = ckpt.latest_checkpoint(cfg.output_dir)
    before = (good / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(ckpt, "save_file", crash)  # dies after the model file, before the train state
    with pytest.raises(OSError, match="injected"):
        learner.save(good)
    assert (good / "model.safetensors").read_bytes() == before
    assert not [p for p in good.parent.iterdir() if p.name.startswith(".")]
    load_model(good)


class Pointwise(nn.Module):
    """Per-pixel linear map: sliding windows must reproduce the whole-image logits exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_sliding_window_matches_whole_image_for_a_pointwise_model():
    model = Pointwise().eval()
    images = torch.rand(2, 3, 50, 90)
    whole = predict_logits(model, images, EvalConfig(mode="whole"))
    slide = predict_logits(model, images, EvalConfig(mode="slide", window=(32, 32), overlap=0.5))
    assert torch.allclose(whole, slide, atol=1e-6)


class Oracle(nn.Module):
    """Predicts class 0 everywhere; IoU of class 0 = share of labelled pixels that are class 0."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])
        out[:, 0] = 1
        return out


def test_evaluate_computes_iou_from_the_confusion_matrix(synth_root):
    data = open_split(synth_root, "fog", "test")
    masks = torch.stack([data[i][1] for i in range(len(data))])
    labelled = masks != 255
    share = float((masks[labelled] == 0).float().mean())
    result = evaluate(Oracle(7), data, EvalConfig(batch_size=2))
    assert result.per_class["road"] == pytest.approx(share, rel=1e-6)
    assert all(v == 0 for k, v in result.per_class.items() if k != "road" and not math.isnan(v))
    assert result.miou == pytest.approx(share / 7, rel=1e-6)


@pytest.mark.gpu
def test_amp_and_channels_last_train_on_cuda(tiny_config, synth_root):
    cfg = tiny_config(optim={"epochs": 2, "amp": "bf16"})
    learner = fit(cfg, open_split(synth_root, "clear", "train"), device="cuda", resume=False, log=lambda s: None)
    assert learner.compute.amp_dtype is torch.bfloat16
    assert all(math.isfinite(h["loss"]) for h in learner.history)
    assert learner.method.model.head.weight.is_contiguous(memory_format=torch.channels_last)


def test_sparse_eval_and_checkpoints_resume_exactly(tiny_config, synth_root, tmp_path):
    """eval_every/checkpoint_every keep tiny datasets from being dominated by validation and writes;
    a run resumed from a sparse checkpoint still reproduces the uninterrupted one."""
    train, val = open_split(synth_root, "clear", "train"), open_split(synth_root, "clear", "val")
    sparse = {"epochs": 5, "eval_every": 2, "checkpoint_every": 2}
    lines = []
    full = fit(tiny_config(optim=sparse, output_dir=str(tmp_path / "full")), train, val, resume=False, log=lines.append)
    assert ["val mIoU" in line for line in lines] == [False, True, False, True, True]  # 2, 4 and the last
    written = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("epoch_*"))
    assert written == ["epoch_0004", "epoch_0005"]  # every 2nd and the last (older ones pruned)
    part = tiny_config(optim={**sparse, "epochs": 3}, output_dir=str(tmp_path / "part"))
    fit(part, train, val, resume=False, log=lambda s: None)  # checkpoints at 2 and 3
    resumed = fit(
        tiny_config(optim=sparse, output_dir=str(tmp_path / "part")), train, val, resume=True, log=lambda s: None
    )
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)
    assert resumed.best_epoch == full.best_epoch
    for (name, a), b in zip(full.selected_model().state_dict().items(), resumed.selected_model().state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_evaluation_at_a_working_scale_is_scored_at_full_resolution(synth_root):
    from raysegment.config import ResizeConfig

    data = open_split(synth_root, "fog", "test")
    full = evaluate(Oracle(7), data, EvalConfig(batch_size=2))
    half = evaluate(Oracle(7), data, EvalConfig(batch_size=2), resize=ResizeConfig(scale=0.5))
    assert full.per_class["road"] == pytest.approx(half.per_class["road"], abs=0.02)  # road everywhere, any scale


def test_resize_trains_at_the_working_scale_and_records_it(tiny_config, synth_root, tmp_path):
    cfg = tiny_config(data={"resize": {"short_side": 32}}, optim={"epochs": 1}, output_dir=str(tmp_path / "r"))
    learner = fit(cfg, open_split(synth_root, "clear", "train"), resume=False, log=lambda s: None)
    images, masks = learner.compute.to_device(next(iter(learner.method.loader)))
    assert images.shape[-2:] == (32, 64) and masks.shape[-2:] == (32, 64)
    _, meta = load_model(ckpt.latest_checkpoint(cfg.output_dir))
    assert meta.resize.short_side == 32
