import pytest
import torch

from raysegment.augment import SegmentationAugment, class_mix
from raysegment.config import AugmentConfig
from raysegment.data import synth

PALETTE = torch.tensor(synth.PALETTE, dtype=torch.float32) / 255


def _palette_batch(synth_root, n=4):
    from raysegment.data import open_split

    data = open_split(synth_root, "clear", "train")
    masks = torch.stack([data[i][1] for i in range(n)])
    images = (PALETTE[masks].permute(0, 3, 1, 2) * 255).round().to(torch.uint8)  # image derived from the mask
    return images, masks


def test_geometric_augmentation_keeps_image_and_mask_aligned(synth_root):
    torch.manual_seed(0)
    images, masks = _palette_batch(synth_root)
    aug = SegmentationAugment(
        AugmentConfig(crop=(48, 96), rotate_degrees=20, scale=(0.8, 1.2), jitter=0, blur_p=0, noise_std=0),
        ignore_index=255,
    )
    out_images, out_masks = aug(images, masks)
    assert out_images.shape == (4, 3, 48, 96) and out_masks.shape == (4, 48, 96)
    assert out_images.dtype == torch.float32 and out_masks.dtype == torch.long
    # Recover the class of every pixel from its colour and compare with the augmented mask.
    dist = ((out_images.permute(0, 2, 3, 1)[..., None, :] - PALETTE) ** 2).sum(-1)
    recovered = dist.argmin(-1)
    labelled = out_masks != 255
    agreement = (recovered[labelled] == out_masks[labelled]).float().mean()
    assert agreement > 0.97, f"only {agreement:.3f} of pixels agree after augmentation"
    assert set(out_masks.unique().tolist()) <= set(range(7)) | {255}  # nearest resampling: no new labels


def test_rotation_padding_becomes_ignore_not_class_zero(synth_root):
    torch.manual_seed(1)
    images, masks = _palette_batch(synth_root)
    masks = torch.ones_like(masks)  # every real pixel is class 1
    aug = SegmentationAugment(
        AugmentConfig(hflip=False, rotate_degrees=45, scale=(0.6, 0.6), jitter=0, blur_p=0, noise_std=0),
        ignore_index=255,
    )
    aug.pipeline[0].p = 1.0
    _, out = aug(images, masks)
    assert (out == 255).any() and not (out == 0).any()


def test_photometric_ops_leave_masks_untouched(synth_root):
    images, masks = _palette_batch(synth_root)
    aug = SegmentationAugment(
        AugmentConfig(hflip=False, rotate_degrees=0, scale=(1.0, 1.0), jitter=0.5, blur_p=1.0, noise_std=0.1)
    )
    out_images, out_masks = aug(images, masks)
    assert torch.equal(out_masks, masks)
    assert not torch.allclose(out_images, images.float() / 255)


def test_class_mix_takes_source_classes_and_their_labels():
    from raysegment.augment import class_mix

    source = torch.ones(2, 3, 8, 8)
    target = torch.zeros(2, 3, 8, 8)
    source_labels = torch.zeros(2, 8, 8, dtype=torch.long)
    source_labels[:, :, 4:] = 1  # two classes: ClassMix pastes one of them
    pseudo = torch.full((2, 8, 8), 2, dtype=torch.long)
    weights = torch.full((2, 8, 8), 0.25)
    images, labels, pixel_weights = class_mix(
        source, source_labels, target, pseudo, weights, generator=torch.Generator().manual_seed(0)
    )
    pasted = images[:, 0] == 1
    assert pasted.any() and (~pasted).any()
    assert torch.equal(labels[pasted], source_labels[pasted]) and (labels[~pasted] == 2).all()
    assert (pixel_weights[pasted] == 1).all() and (pixel_weights[~pasted] == 0.25).all()
    for i in range(2):  # whole classes move, never parts of one
        moved = set(source_labels[i][pasted[i]].unique().tolist())
        assert moved in ({0}, {1})


def test_fda_swaps_only_the_low_frequency_amplitude():
    from raysegment.augment import fourier_domain_adaptation

    torch.manual_seed(0)
    source, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32) * 0.3
    assert torch.equal(fourier_domain_adaptation(source, target, 0.0), source)
    styled = fourier_domain_adaptation(source, target, 0.1)
    assert styled.shape == source.shape and 0 <= styled.min() and styled.max() <= 1
    # The mean (DC amplitude) moves to the target's; the image keeps the source's structure.
    assert abs(styled.mean() - target.mean()) < abs(source.mean() - target.mean()) / 2
    assert torch.corrcoef(torch.stack([styled.flatten(), source.flatten()]))[0, 1] > 0.5


def test_rare_class_sampling_shows_rare_classes_more_often():
    from raysegment.data import RareClassSampler

    classes = [{0}] * 18 + [{0, 1}] * 2  # class 1 is in 10% of the images
    sampler = RareClassSampler(classes, temperature=0.1, seed=0)
    order = list(sampler)
    assert len(order) == 20 and list(sampler) == order  # same epoch, same order
    assert sum(i >= 18 for i in order) >= 6  # uniform sampling would give ~2
    sampler.set_epoch(1)
    assert list(sampler) != order


def test_resize_batch_scales_each_item_by_its_own_factor():
    from raysegment.augment import resize_batch
    from raysegment.config import ResizeConfig
    from raysegment.data import pad_collate

    items = [
        (torch.full((3, 40, 60), 200, dtype=torch.uint8), torch.ones(40, 60, dtype=torch.long)),
        (torch.full((3, 100, 80), 100, dtype=torch.uint8), torch.zeros(100, 80, dtype=torch.long)),
    ]
    batch = pad_collate(items)
    images, masks = resize_batch(batch.images.float() / 255, batch.masks, batch.sizes, ResizeConfig(short_side=20), 255)
    # item 0: 40x60 -> 20x30; item 1: 100x80 -> 25x20; padded to 25x30
    assert images.shape == (2, 3, 25, 30) and masks.shape == (2, 25, 30)
    assert (masks[0, :20, :30] == 1).all() and (masks[0, 20:] == 255).all()
    assert (masks[1, :25, :20] == 0).all() and (masks[1, :, 20:] == 255).all()
    assert torch.allclose(images[0, :, :20, :30], torch.tensor(200 / 255)) and (images[0, :, 20:] == 0).all()
    same = pad_collate([items[0], items[0]])
    images, masks = resize_batch(same.images.float(), same.masks, same.sizes, ResizeConfig(scale=0.5), 255)
    assert images.shape == (2, 3, 20, 30) and (masks == 1).all()


def test_match_batch_repeats_a_short_batch_and_resizes_it():
    from raysegment.augment import match_batch

    images = torch.arange(2, dtype=torch.float).view(2, 1, 1, 1).expand(2, 3, 5, 7).contiguous()
    masks = torch.arange(2).view(2, 1, 1).expand(2, 5, 7).contiguous()
    out, out_masks = match_batch(images, masks, 5, (10, 14))
    assert out.shape == (5, 3, 10, 14) and out_masks.shape == (5, 10, 14)
    assert [int(m.unique()) for m in out_masks] == [0, 1, 0, 1, 0]
    cut, _ = match_batch(images, None, 1, (5, 7))
    assert cut.shape == (1, 3, 5, 7)


def test_class_mix_refuses_unpaired_batches_with_the_fix():
    with pytest.raises(ValueError, match="match_batch"):
        class_mix(
            torch.rand(8, 3, 4, 4),
            torch.zeros(8, 4, 4, dtype=torch.long),
            torch.rand(6, 3, 4, 4),
            torch.zeros(6, 4, 4, dtype=torch.long),
            torch.ones(6, 4, 4),
        )
