import torch

from raysegment.config import ModelConfig
from raysegment.data import open_split
from raysegment.engine.adapt import adapt_batchnorm
from raysegment.models import build_segmenter

from conftest import TINY_BACKBONE


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
    weights_before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    adapt_batchnorm(model, night, batch_size=4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights_before.items())  # only statistics move
