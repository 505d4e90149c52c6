"""Unsupervised proxies that judge label-free adaptation."""

import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig
from raysegment.data import open_split
from raysegment.engine.criteria import Scoring
from raysegment.engine.proxies import mean_iou_over, proxy_scores
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter


def collapsed_model(num_classes: int, cls: int) -> torch.nn.Module:
    model = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=16), num_classes)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), num_classes).float() * 10)
    return model.eval()


def test_mean_iou_counts_dropped_classes_as_zero():
    iou = torch.tensor([1.0, float("nan"), float("nan")])  # class 0 perfect, classes 1 and 2 absent
    assert mean_iou_over(iou) == 1.0
    assert mean_iou_over(iou, torch.tensor([True, True, False])) == 0.5


def test_a_collapsed_model_scores_below_a_sound_one(synth_root, source_model_dir):
    """On the source's own domain the source is sound; a one-class model is perfectly stable but
    drops every other class the source predicts, and scores lower. (On a strong shift a weak
    source can be less stable than a collapsed model: the proxy is a heuristic, benchmarked in
    bench_adapt against what labels would pick.)"""
    source, meta = load_model(source_model_dir)
    images = open_split(synth_root, "clear", "val", unlabelled=True)
    own = proxy_scores(source, source, images, scoring=Scoring(confidence=0.5))
    collapsed = proxy_scores(collapsed_model(meta.num_classes, 0), source, images, scoring=Scoring(confidence=0.5))
    assert own.agreement == 1.0 and 0 < own.consistency <= 1
    assert collapsed.score < own.score  # perfectly stable, but it dropped every class but one
    assert collapsed.criteria["entropy"] > 0.99 > own.criteria["entropy"]  # why entropy alone never decides


def test_proxies_are_deterministic_and_leave_the_global_rng_alone(synth_root, source_model_dir):
    source, meta = load_model(source_model_dir)
    images = open_split(synth_root, "night", "val", unlabelled=True)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = proxy_scores(source, source, images)
    assert torch.equal(torch.rand(1), expected_next)
    assert proxy_scores(source, source, images) == first
