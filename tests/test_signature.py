import pytest
import torch
from conftest import TINY_BACKBONE

from raysegment.config import ModelConfig
from raysegment.data import open_split
from raysegment.engine.evaluate import scaled_batches
from raysegment.engine.signature import Signature, distance, domain_signature, image_signatures, nearest
from raysegment.models.segmenter import build_segmenter


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder_channels=8), 3).eval()


def test_distance_is_zero_to_itself_symmetric_and_grows_with_a_shift(model):
    torch.manual_seed(1)
    images = torch.rand(4, 3, 32, 48)
    a, b, c = (image_signatures(model, x)[0] for x in (images[:1], images[1:2] * 0.3, images[:1] * 0.9))
    assert distance(a, a) == pytest.approx(0, abs=1e-9)
    assert distance(a, b) == pytest.approx(distance(b, a))
    assert 0 < distance(a, c) < distance(a, b)  # a slight dimming is nearer than a strong one
    other = build_segmenter(ModelConfig(backbone=TINY_BACKBONE, decoder="deeplabv3plus", decoder_channels=8), 3)
    with pytest.raises(ValueError, match="different models"):
        distance(a, image_signatures(other.eval(), images[:1])[0])


def test_pooled_signature_is_the_mean_of_its_images_and_survives_safetensors(model, synth_root):
    night = open_split(synth_root, "night", "train", unlabelled=True)
    pooled = domain_signature(model, night, batch_size=3)
    assert pooled.images == len(night)
    singles = [
        s for batch, _, _ in scaled_batches(night, 1, None, torch.device("cpu")) for s in image_signatures(model, batch)
    ]
    assert torch.allclose(pooled.means[0], torch.stack([s.means[0] for s in singles]).mean(0))
    again = Signature.from_bytes(pooled.to_bytes())
    assert distance(pooled, again) < 1e-6 and again.images == pooled.images  # stored as float32
    assert pooled.radius is not None and again.radius == pooled.radius > 0


def test_images_route_to_the_domain_they_came_from(model, synth_root):
    """Clear vs night (a strong photometric shift), signatures from train, routed test+val images."""
    signatures = {
        d: domain_signature(model, open_split(synth_root, d, "train", unlabelled=True)) for d in ("clear", "night")
    }
    routed = []
    for domain in ("clear", "night"):
        for split in ("val", "test"):
            for batch, _, _ in scaled_batches(
                open_split(synth_root, domain, split, unlabelled=True), 1, None, torch.device("cpu")
            ):
                name, dist = nearest(image_signatures(model, batch)[0], signatures)
                routed.append((domain, name))
                assert dist >= 0
    assert sum(true == got for true, got in routed) == len(routed)
