import pickle

import pytest
import timm
import torch
import torchvision.transforms.v2.functional as TF
from safetensors.torch import load_file
from torchvision.io import ImageReadMode, decode_image

from raysegment.errors import WeightsError
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights

# A real photograph shipped with matplotlib (Grace Hopper in uniform): ImageNet weights call it a
# military uniform / suit / bow tie; a random network has no idea.
HOPPER = __import__("matplotlib").get_data_path() + "/sample_data/grace_hopper.jpg"
UNIFORM_LIKE = {652, 834, 457, 906}  # military uniform, suit, bow tie, Windsor tie


def _classify(model, image):
    x = TF.normalize(TF.resize(image, [224, 224]).float() / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():
        return model(torch.stack([x, x.flip(-1)])).softmax(-1)


def test_bundled_lite0_weights_are_real_imagenet_weights(imagenet_weights):
    image = decode_image(HOPPER, mode=ImageReadMode.RGB)
    trained = timm.create_model("efficientnet_lite0", pretrained=False)
    trained.load_state_dict(load_file(str(imagenet_weights)))
    probs = _classify(trained.eval(), image)
    top5 = set(probs[0].topk(5).indices.tolist())
    assert top5 & UNIFORM_LIKE and probs[0].max() > 0.15
    assert probs[0].argmax() == probs[1].argmax()  # consistent under a flip
    torch.manual_seed(0)
    random = _classify(timm.create_model("efficientnet_lite0", pretrained=False).eval(), image)
    assert random[0].max() < 0.1 and not (set(random[0].topk(5).indices.tolist()) & UNIFORM_LIKE)


def test_import_by_order_matches_all_296_tensors(tmp_path):
    _, mode, count = import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0", tmp_path / "w.safetensors")
    assert (mode, count) == ("order", 296)


def test_import_by_name_strips_ddp_prefix(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.items()}}, tmp_path / "ddp.pth")
    out, mode, _ = import_weights(tmp_path / "ddp.pth", "test_resnet", tmp_path / "out.safetensors")
    loaded = load_file(str(out))
    assert mode == "name" and all(torch.equal(loaded[k], v) for k, v in source.items())


def test_mismatched_architecture_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="cannot map weights onto resnet18"):
        import_weights(bundled_efficientnet_lite0(), "resnet18", tmp_path / "w.safetensors")


class Payload:
    def __reduce__(self):
        return (print, ("code ran while unpickling",))


def test_arbitrary_pickles_are_never_executed(tmp_path, capsys):
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(WeightsError, match="weights_only=True"):
        import_weights(tmp_path / "evil.pth", "test_resnet", tmp_path / "o.safetensors")
    assert "code ran" not in capsys.readouterr().out
