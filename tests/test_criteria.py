"""Label-free selection criteria: each scores every candidate, ranks what it should, and is judged
against test labels by Spearman and regret."""

import math

import pytest
import torch
from conftest import TINY_BACKBONE

from raysegment.config import CRITERIA, ModelConfig, ResizeConfig
from raysegment.data import open_split
from raysegment.engine.adapt import adapt_batchnorm
from raysegment.engine.criteria import Candidate, Scoring, criterion_quality, criterion_scores, judge_pick
from raysegment.models.rebuild import load_model
from raysegment.models.segmenter import build_segmenter


def _collapsed(num_classes: int) -> torch.nn.Module:
    """A model that predicts class 0 everywhere, with full confidence."""
    model = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), num_classes)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([8.0] + [0.0] * (num_classes - 1)))
    return model


def test_every_criterion_scores_every_candidate_and_repeats_itself(synth_root, source_model_dir):
    source, meta = load_model(source_model_dir)
    night = open_split(synth_root, "night", "val", unlabelled=True)
    candidates = [Candidate("source", source), Candidate("collapsed", _collapsed(meta.num_classes))]
    state = torch.random.get_rng_state()
    first = criterion_scores(candidates, night)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG stream is left alone
    assert criterion_scores(candidates, night) == first
    assert set(first) == {"source", "collapsed"} and all(set(s) == set(CRITERIA) for s in first.values())
    assert all(math.isfinite(v) for s in first.values() for v in s.values())


def test_a_collapsed_model_loses_by_every_criterion_that_sees_classes(synth_root, source_model_dir):
    """One class everywhere is perfectly stable and confident: consistency, infomax, ensemble and
    agreement must still rank it below the source (entropy alone is fooled, by design)."""
    source, meta = load_model(source_model_dir)
    clear = open_split(synth_root, "clear", "val", unlabelled=True)
    collapsed = _collapsed(meta.num_classes)
    scores = criterion_scores(
        [Candidate("source", source), Candidate("other", source), Candidate("collapsed", collapsed)],
        clear,
    )
    for criterion in ("consistency", "infomax", "ensemble", "agreement"):
        assert scores["collapsed"][criterion] < scores["source"][criterion], criterion
    assert scores["collapsed"]["entropy"] > scores["source"]["entropy"]


def test_adabn_on_the_judged_images_brings_the_batchnorm_distance_to_zero(synth_root, source_model_dir):
    source, meta = load_model(source_model_dir)
    adapted, _ = load_model(source_model_dir)
    night = open_split(synth_root, "night", "val", unlabelled=True)
    adapt_batchnorm(adapted, night, batch_size=8)  # one batch: the running stats are the images' own
    scores = criterion_scores([Candidate("source", source), Candidate("adabn", adapted)], night)
    # near zero, not zero: BatchNorm keeps the unbiased variance, which differs on the deep 2x4 maps
    assert scores["adabn"]["bn_distance"] > 0.05 * scores["source"]["bn_distance"]


def test_candidates_at_other_scales_are_judged_on_the_same_pixels(odd_root, odd_source_dir):
    """Odd sizes (71x53, 67x50), two classes, a candidate at half the working scale."""
    source, meta = load_model(odd_source_dir)
    chase = open_split(odd_root, "chase", "val", unlabelled=True)
    half = Candidate("half", source, ResizeConfig(scale=0.5))
    scores = criterion_scores([Candidate("source", source), half], chase, scoring=Scoring(batch_size=1))
    assert all(0 <= scores["half"][c] <= 1 for c in ("consistency", "ensemble", "mixval", "snd"))


def test_spearman_and_regret_of_a_criterion():
    scores = {"source": {"x": 1.0}, "b": {"x": 2.0}, "c": {"x": 3.0}}
    test = {"source": 0.5, "b": 0.6, "c": 0.4}
    q = criterion_quality(scores, test, "x", "source")
    assert q.pick == "c" and q.regret == pytest.approx(0.2)
    assert q.spearman == pytest.approx(-0.5, abs=1e-5)  # ranks (1,2,3) against (2,3,1)
    assert criterion_quality(scores, {"source": 0.4, "b": 0.5, "c": 0.6}, "x", "source").regret == 0


def test_the_judge_keeps_the_reference_unless_beaten_outright():
    assert judge_pick({"source": {"x": 0.7}, "a": {"x": 0.7}}, "x", "source") == "source"
    assert judge_pick({"source": {"x": 0.7}, "a": {"x": 0.6}}, "x", "source") == "source"
    assert judge_pick({"source": {"x": 0.7}, "a": {"x": 0.71}, "b": {"x": 0.8}}, "x", "source") == "b"
