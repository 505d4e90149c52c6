"""Adaptation methods: AdaBN, Tent, mean-teacher self-training, few-shot fine-tuning."""

import copy
import math

import pytest
import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig, parse_config
from raysegment.data import open_split
from raysegment.engine.adapt import (
    EMATeacher,
    adapt,
    adapt_batchnorm,
    open_source_train,
    open_target_train,
    open_val,
)
from raysegment.engine.adapt.methods import masked_patches
from raysegment.engine.adapt.teacher import class_balanced_weights
from raysegment.engine.checkpoint import latest_checkpoint, load_extra_tensors, load_selected_weights
from raysegment.engine.evaluate import evaluate
from raysegment.errors import ConfigError
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter


def test_adabn_sets_bn_statistics_to_the_target_mean(synth_root):
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 7).eval()
    night = open_split(synth_root, "night", "all")
    stem_bn = model.encoder.bn1
    inputs = []
    hook = stem_bn.register_forward_hook(lambda m, args, out: inputs.append(args[0].detach()))
    n_layers = adapt_batchnorm(model, night, batch_size=4)
    hook.remove()
    assert n_layers > 10 and not model.training
    # Cumulative average of per-batch channel means (3 batches of 4 images each).
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    assert torch.allclose(stem_bn.running_mean, expected, atol=1e-5)
    assert stem_bn.momentum == 0.1  # restored
    weights_before = {
        k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k
    }
    adapt_batchnorm(model, night, batch_size=4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights_before.items())  # only statistics move


def test_ema_teacher_follows_the_formula():
    torch.manual_seed(0)
    student = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 4)
    teacher = EMATeacher(student, alpha=0.99)
    assert teacher.decay_at(0) == 0.0 and teacher.decay_at(9) == pytest.approx(0.9) and teacher.decay_at(10_000) == 0.99
    for step in (0, 3, 500):
        before = [t.clone() for t in teacher.model.parameters()]
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        teacher.update(student, step)
        a = min(1 - 1 / (step + 1), 0.99)
        for old, new, s in zip(before, teacher.model.parameters(), student.parameters()):
            assert torch.allclose(new, a * old + (1 - a) * s, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_pseudo_label_weight_is_the_share_of_confident_pixels():
    student = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 3)
    with torch.no_grad():
        student.head.weight.zero_()
        student.head.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # p(class 0) = 0.987 everywhere
    teacher = EMATeacher(student, 0.99)
    labels, weights = teacher.pseudo_labels(torch.rand(2, 3, 32, 32), threshold=0.9)
    assert labels.shape == (2, 32, 32) and (labels == 0).all() and torch.allclose(weights, torch.ones(2, 32, 32))
    _, weights = teacher.pseudo_labels(torch.rand(2, 3, 32, 32), threshold=0.99)
    assert torch.allclose(weights, torch.zeros(2, 32, 32))


def test_partial_adabn_keeps_the_moments_of_the_mixture(synth_root):
    torch.manual_seed(0)
    model = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 7).eval()
    night = open_split(synth_root, "night", "all")
    bn = model.encoder.bn1
    source_mean, source_var = bn.running_mean.clone(), bn.running_var.clone()
    full = copy.deepcopy(model)
    adapt_batchnorm(full, night, batch_size=4)
    target_mean, target_var = full.encoder.bn1.running_mean, full.encoder.bn1.running_var
    adapt_batchnorm(model, night, batch_size=4, target_share=0.25)
    assert torch.allclose(bn.running_mean, 0.25 * target_mean + 0.75 * source_mean, atol=1e-6)
    spread = 0.25 * 0.75 * (target_mean - source_mean).pow(2)
    assert torch.allclose(bn.running_var, 0.25 * target_var + 0.75 * source_var + spread, atol=1e-6)
    assert not torch.allclose(bn.running_mean, target_mean)


def test_class_balanced_pseudo_labels_let_a_rare_unsure_class_teach():
    """Vessels the teacher is never 90% sure of: with a global threshold none of them would count;
    class-balanced, the top half of each predicted class does."""
    confidence = torch.tensor([[[0.99, 0.98, 0.97, 0.96], [0.6, 0.7, 0.55, 0.65]]])  # (1, 2, 4)
    labels = torch.tensor([[[0, 0, 0, 0], [1, 1, 1, 1]]])
    weights = class_balanced_weights(confidence, labels, threshold=0.9, portion=0.5)
    assert weights[0, 0].tolist() == [1, 1, 1, 1]  # above the global threshold
    assert weights[0, 1].tolist() == [0, 1, 0, 1]  # the surer half of the vessel pixels
    student = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 2)
    _, w = EMATeacher(student, 0.99).pseudo_labels(torch.rand(2, 3, 32, 32), 0.99, class_portion=0.25)
    assert set(w.unique().tolist()) <= {0.0, 1.0} and 0.2 <= float(w.mean()) <= 0.3


def test_masked_patches_hide_the_asked_share_in_whole_blocks():
    images = torch.ones(4, 3, 70, 90)  # not a multiple of the block
    generator = torch.Generator().manual_seed(0)
    masked = masked_patches(images, 0.5, 10, generator)
    assert masked.shape == images.shape
    hidden = (masked[:, 0] == 0).float()
    assert 0.35 < float(hidden.mean()) < 0.65
    blocks = hidden.reshape(4, 7, 10, 9, 10)
    assert torch.equal(blocks.amin(dim=(2, 4)), blocks.amax(dim=(2, 4)))  # each 10x10 block all or nothing
    again = masked_patches(images, 0.5, 10, torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)


def test_a_canary_of_k_labelled_val_images_judges_a_label_free_run(odd_root, odd_source_dir, tmp_path):
    cfg = _odd_config(odd_root, odd_source_dir, tmp_path, "tent", canary=1)
    assert cfg.judge == "labels" and len(open_val(cfg)) == 1
    assert open_target_train(cfg).labelled_count == 0  # training still reads no target label
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    assert result.scores["score"] == result.scores["val_miou"]  # the canary's mIoU selected the epoch


def _adapt_config(synth_root, source_model_dir, tmp_path, method, domain="night", **adapt_extra):
    return parse_config(
        {
            "data": {"root": str(synth_root), "domain": domain},
            "model": {
                "backbone": TINY_BACKBONE,
                "decoder": "fpn",
                "decoder_channels": 16,
                "pretrained": {"source": "checkpoint", "uri": str(source_model_dir)},
            },
            "optim": {"epochs": 4, "batch_size": 4, "lr": 2e-3},
            "adapt": {"method": method, "source_domain": "clear", **adapt_extra},
            "output_dir": str(tmp_path / method),
        }
    )


def _source_miou(synth_root, source_model_dir, domain):
    model, _ = load_model(source_model_dir)
    return evaluate(model, open_split(synth_root, domain, "test"), parse_config({"data": {"root": "."}}).eval).miou


@pytest.mark.parametrize("method", ["adabn", "tent", "self_training"])
def test_label_free_methods_improve_a_photometric_shift(synth_root, source_model_dir, tmp_path, method):
    """Night is a photometric shift: the source model's BN statistics are wrong there."""
    cfg = _adapt_config(synth_root, source_model_dir, tmp_path, method)
    result = adapt(cfg, resume=False, log=lambda line: None)
    test = open_split(synth_root, "night", "test")
    before = _source_miou(synth_root, source_model_dir, "night")
    after = evaluate(result.model, test, cfg.eval).miou
    assert after > before + 0.05, (method, before, after)
    assert {"proxy_consistency", "proxy_agreement", "proxy_entropy", "score"} <= set(result.scores)
    assert "val_miou" not in result.scores  # judged without labels: no mIoU was computed


def test_label_free_methods_never_see_target_labels(synth_root, source_model_dir, tmp_path):
    for method in ("adabn", "tent", "self_training"):
        target = open_target_train(_adapt_config(synth_root, source_model_dir, tmp_path, method))
        assert target.labelled_count == 0 and all(mask is None for _, mask in target.samples)
        assert all((target[i][1] == target.info.ignore_index).all() for i in range(len(target)))
    source = open_source_train(_adapt_config(synth_root, source_model_dir, tmp_path, "self_training"))
    assert source.samples[0][0].parts[-3] == "clear" and source.labelled_count == len(source)


def test_self_training_checkpoints_the_teacher_and_resumes_exactly(synth_root, source_model_dir, tmp_path):
    cfg = _adapt_config(
        synth_root, source_model_dir, tmp_path, "self_training", fda_beta=0.02, rare_class_temperature=0.1
    )
    full = adapt(cfg, resume=False, log=lambda line: None).runner
    ckpt = latest_checkpoint(cfg.output_dir)
    student = load_extra_tensors(ckpt)
    assert student and all(k.startswith("student/") for k in student)
    deployed, _ = load_model(ckpt)
    assert all(torch.equal(v, full.method.teacher.model.state_dict()[k]) for k, v in deployed.state_dict().items())
    selected = load_selected_weights(ckpt)  # the best-scored epoch's teacher is the run's result
    assert all(torch.equal(v, full.selected_model().state_dict()[k]) for k, v in selected.items())
    # Interrupt after 2 epochs, resume to 4: same teacher as the uninterrupted run.
    short = cfg.model_copy(
        update={"optim": cfg.optim.model_copy(update={"epochs": 2}), "output_dir": str(tmp_path / "resumed")}
    )
    adapt(short, resume=False, log=lambda line: None)
    resumed = adapt(cfg.model_copy(update={"output_dir": short.output_dir}), resume=True, log=lambda line: None).runner
    for (k, a), b in zip(
        full.method.teacher.model.state_dict().items(), resumed.method.teacher.model.state_dict().values()
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert resumed.best_epoch == full.best_epoch


def test_few_shot_finetune_uses_exactly_k_labels(synth_root, source_model_dir, tmp_path):
    cfg = _adapt_config(synth_root, source_model_dir, tmp_path, "finetune", domain="fog")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"labelled_limit": 3})})
    train = open_target_train(cfg)
    assert len(train) == 3 and cfg.judge == "labels"
    result = adapt(cfg, resume=False, log=lambda line: None)
    assert evaluate(result.model, open_split(synth_root, "fog", "test"), cfg.eval).miou > _source_miou(
        synth_root, source_model_dir, "fog"
    )


def test_adaptation_configs_name_what_is_missing(synth_root):
    with pytest.raises(ConfigError, match="pretrained"):
        parse_config({"data": {"root": str(synth_root)}, "adapt": {"method": "adabn"}})
    with pytest.raises(ConfigError, match="source_domain"):
        parse_config(
            {
                "data": {"root": str(synth_root)},
                "adapt": {"method": "self_training"},
                "model": {"pretrained": {"source": "checkpoint", "uri": "x"}},
            }
        )


@pytest.mark.gpu
def test_self_training_runs_with_amp_and_channels_last_on_cuda(synth_root, source_model_dir, tmp_path):
    cfg = _adapt_config(synth_root, source_model_dir, tmp_path, "self_training", fda_beta=0.01)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2, "amp": "bf16"})})
    result = adapt(cfg, device="cuda", resume=False, log=lambda line: None)
    learner = result.runner
    assert learner.compute.amp_dtype is torch.bfloat16 and all(h["loss"] == h["loss"] for h in learner.history)
    assert next(learner.method.teacher.model.parameters()).is_cuda
    assert evaluate(result.model, open_split(synth_root, "night", "test"), cfg.eval, "cuda").miou > 0


# --- real-world shapes: every method on odd sizes, short batches, 2 classes, odd PNG modes ------------
def _odd_config(odd_root, odd_source_dir, tmp_path, method, batch_size=4, domain="chase", epochs=2, **adapt_extra):
    return parse_config(
        {
            "data": {"root": str(odd_root), "domain": domain},
            "model": {
                "backbone": TINY_BACKBONE,
                "decoder": "fpn",
                "decoder_channels": 8,
                "pretrained": {"source": "checkpoint", "uri": str(odd_source_dir)},
            },
            "optim": {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3},
            "augment": {"jitter": 0.1},
            "adapt": {"method": method, "source_domain": "drive", **adapt_extra},
            "output_dir": str(tmp_path / f"{method}-{batch_size}"),
        }
    )


ODD_CASES = [
    ("adabn", {}),
    ("tent", {}),
    ("self_training", {"fda_beta": 0.05, "rare_class_temperature": 0.1, "classmix": True}),
    ("self_training", {"classmix": False}),
    ("self_training", {"pseudo_class_portion": 0.5, "mask_ratio": 0.5, "mask_block": 8}),
    ("adabn", {"bn_mix": 0.5}),
]


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("method,extra", ODD_CASES)
def test_every_label_free_method_runs_on_real_world_shapes(
    odd_root, odd_source_dir, tmp_path, method, extra, batch_size
):
    """Source 5 x 45x61 RGB against a target of 2 train images (71x53 grayscale, 67x50 RGBA: smaller
    than one batch, other sizes, not divisible by the stride) with batch 4 (short batches on both
    sides) and batch 1; the result must be finite and predict at full target size."""
    cfg = _odd_config(odd_root, odd_source_dir, tmp_path, method, batch_size, epochs=1, **extra)
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    assert math.isfinite(result.scores["score"]) and "val_miou" not in result.scores
    assert all(math.isfinite(h["loss"]) for h in result.history)
    test = open_split(odd_root, "chase", "test")
    assert 0 <= evaluate(result.model, test, cfg.eval).miou <= 1


@pytest.mark.parametrize("method,extra", ODD_CASES[:3])
def test_label_free_methods_run_on_a_domain_without_masks(odd_root, odd_source_dir, tmp_path, method, extra):
    cfg = _odd_config(odd_root, odd_source_dir, tmp_path, method, domain="raw", epochs=1, **extra)
    assert not (odd_root / "raw" / "masks").exists()
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    assert math.isfinite(result.scores["score"])


def test_finetune_with_source_replay_runs_on_mixed_sizes_and_selects_on_val(odd_root, odd_source_dir, tmp_path):
    cfg = _odd_config(odd_root, odd_source_dir, tmp_path, "finetune", batch_size=3, source_replay=True)
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"labelled_limit": 1}),
            "optim": cfg.optim.model_copy(update={"epochs": 3, "backbone_lr_scale": 0.1}),
        }
    )
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    assert result.runner.method.steps_per_epoch == 2  # a pass over the 5 source images (batch 3), the 1 label cycled
    assert 0 <= result.scores["selected_epoch"] <= 3 and result.scores["val_miou"] == result.scores["score"]


def test_a_harmful_finetune_selects_the_start_model(odd_root, odd_source_dir, tmp_path):
    """Few labels must never end worse than the source on held-back images: a destructive lr loses
    to epoch 0 (the source model itself), so the result is the source model."""
    cfg = _odd_config(odd_root, odd_source_dir, tmp_path, "finetune", batch_size=2)
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"labelled_limit": 1}),
            "optim": cfg.optim.model_copy(update={"lr": 5.0, "grad_clip": None, "epochs": 2}),
        }
    )
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    source, _ = load_model(odd_source_dir)
    val = open_split(odd_root, "chase", "val")
    assert result.scores["selected_epoch"] == 0
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in result.model.state_dict().items())
    assert evaluate(result.model, val, cfg.eval).miou == evaluate(source, val, cfg.eval).miou


def test_a_helpful_finetune_selects_a_trained_epoch(synth_root, source_model_dir, tmp_path):
    """The other side of the same rule: fog's own labels teach the clear source model, so a trained
    epoch beats epoch 0 on fog's held-back labels and is what the run returns."""
    cfg = _adapt_config(synth_root, source_model_dir, tmp_path, "finetune", domain="fog")
    result = adapt(cfg, resume=False, progress=False, log=lambda line: None)
    source, _ = load_model(source_model_dir)
    val = open_split(synth_root, "fog", "val")
    assert result.scores["selected_epoch"] >= 1
    assert result.scores["val_miou"] == pytest.approx(evaluate(result.model, val, cfg.eval).miou)
    assert result.scores["val_miou"] > evaluate(source, val, cfg.eval).miou
