"""Online adaptation and its guard: statistics follow the stream, a collapsing Tent is reset to
the production snapshot, and without the guard it is not."""

from __future__ import annotations

import torch

from raysegment.data import open_split
from raysegment.engine.continual import OnlineAdapter, update_batchnorm_statistics
from raysegment.engine.evaluate import scaled_batches
from raysegment.models.rebuild import load_model


def fog_batches(synth_root, size: int = 4) -> list[torch.Tensor]:
    return [b for b, _, _ in scaled_batches(open_split(synth_root, "fog", "all"), size, None, torch.device("cpu"))]


def equal_states(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_online_adabn_moves_statistics_only(source_model_dir, synth_root):
    model, _ = load_model(source_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    update_batchnorm_statistics(model, fog_batches(synth_root)[0], momentum=0.5)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("running_" in k or "num_batches" in k for k in changed)
    assert not model.training


def test_the_guard_resets_a_collapsing_tent_to_the_snapshot(source_model_dir, synth_root):
    torch.manual_seed(0)
    batches = fog_batches(synth_root) * 3
    model, meta = load_model(source_model_dir)
    guarded = OnlineAdapter(model, meta.num_classes, "tent", guard=True, window=4, lr=0.5)
    reset_after = None
    for step, batch in enumerate(batches):
        guarded.step(batch)
        if guarded.restores and reset_after is None:
            reset_after = step
            assert equal_states(guarded.model, guarded.snapshot)  # exactly production again
    assert guarded.restores >= 1 and reset_after is not None
    unguarded_model, _ = load_model(source_model_dir)
    unguarded = OnlineAdapter(unguarded_model, meta.num_classes, "tent", guard=False, window=4, lr=0.5)
    for batch in batches:
        unguarded.step(batch)
    assert unguarded.restores == 0 and not equal_states(unguarded.model, unguarded.snapshot)
    # what the guard saw: on the same images the unguarded model is behind the snapshot by the paired
    # proxy, or has let a class the snapshot predicts shrink (the two triggers of `OnlineAdapter.watch`)
    from raysegment.engine.proxies import paired_consistency_and_predictions

    c = meta.num_classes
    seen = [paired_consistency_and_predictions([unguarded.model, unguarded.snapshot], b, c) for b in batches[:3]]
    behind = sum(scores[0] - scores[1] for scores, _ in seen) < 0
    counts = sum(torch.stack([torch.bincount(p.flatten(), minlength=c) for p in preds]) for _, preds in seen)
    shares = counts.double() / counts.sum(1, keepdim=True).double()
    shrank = bool(((shares[1] >= 0.01) & (shares[0] < unguarded.min_class_ratio * shares[1])).any())
    assert behind or shrank, (behind, shares)


def test_without_adaptation_nothing_changes(source_model_dir, synth_root):
    model, meta = load_model(source_model_dir)
    static = OnlineAdapter(model, meta.num_classes, "none", guard=True)
    for batch in fog_batches(synth_root):
        static.step(batch)
    assert equal_states(static.model, static.snapshot) and static.restores == 0


def test_the_guard_names_a_class_that_shrank_but_not_one_that_grew(source_model_dir):
    model, meta = load_model(source_model_dir)
    adapter = OnlineAdapter(model, 3, "tent", guard=True, window=2, min_class_ratio=0.9)
    # per image: predicted pixels per class, (adapted, snapshot)
    adapter.class_pixels = [torch.tensor([[900, 100, 0], [800, 200, 0]]), torch.tensor([[880, 100, 20], [800, 200, 0]])]
    assert adapter.shrunk_class() == 1  # class 1: 20% of the snapshot's pixels, 10% of the adapted model's
    adapter.class_pixels = [torch.tensor([[760, 230, 10], [800, 200, 0]])]
    assert adapter.shrunk_class() is None  # class 1 grew, class 2 appeared: adaptation may do that
    adapter.class_pixels = [torch.tensor([[10000, 0, 0], [9950, 0, 50]])]
    assert adapter.shrunk_class() is None  # under 1% of the snapshot's pixels: too rare to judge


def test_the_guard_snapshot_costs_only_batchnorm_layers(source_model_dir):
    """With online AdaBN a domain's snapshot shares every tensor outside BatchNorm with the served
    model (a full copy per domain was the old cost), and adapting the model leaves it untouched."""
    from raysegment.engine.continual import batchnorm_twin
    from raysegment.models.freeze import is_batchnorm
    from raysegment.models.rebuild import load_model

    model, _ = load_model(source_model_dir)
    twin = batchnorm_twin(model)
    ours, theirs = dict(model.named_parameters()), dict(twin.named_parameters())
    bn_names = {f"{n}.{p}" for n, m in model.named_modules() if is_batchnorm(m) for p, _ in m.named_parameters()}
    shared = [n for n in ours if ours[n].data_ptr() == theirs[n].data_ptr()]
    assert set(shared) == set(ours) - bn_names and shared
    with torch.no_grad():
        for m in model.modules():
            if is_batchnorm(m):
                m.running_mean.add_(1.0)
    assert all(
        not torch.equal(a.running_mean, b.running_mean)
        for a, b in zip(model.modules(), twin.modules())
        if is_batchnorm(a)
    )
