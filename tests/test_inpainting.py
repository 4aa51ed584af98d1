"""Inpainting DataModule: mask kinds, hole fraction, fixed validation/test masks, the masked image."""
import pytest
import torch

from datamodules.cifar import CIFAR10DataModule
from datamodules.inpainting import InpaintingDataModule
from datamodules.inpainting_masks import MASK_KINDS, make_mask


def make(tmp_path, mask="boxes", fraction=0.25, **kw):
    kw.setdefault("batch_size", 50)
    return InpaintingDataModule(mask=mask, hole_fraction=fraction, data_source="synthetic",
                                cache_dir=str(tmp_path), synthetic_sizes=(300, 100), val_size=100, **kw)


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_achieved_hole_fraction(kind, fraction):
    g = torch.Generator().manual_seed(0)
    masks = torch.stack([make_mask(kind, 32, 32, fraction, g) for _ in range(40)]).float()
    per_sample = masks.mean((1, 2))
    # center: the nearest square (side rounded to a pixel); boxes/strokes overshoot by at most one row / one disc
    assert abs(per_sample.mean().item() - fraction) < 0.02
    assert (per_sample - fraction).abs().max().item() < 0.045
    if kind != "center":
        assert (per_sample >= fraction - 1 / 1024).all()
        assert len({m.numpy().tobytes() for m in masks}) == 40  # random masks


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_batches_masked_image_and_fixed_eval_masks(tmp_path, kind):
    dm = make(tmp_path, mask=kind)
    dm.prepare_data()
    dm.setup()
    assert dm.source_used == "synthetic" and dm.image_size == 32 and dm.num_classes == 10 and dm.channels == 3
    masked, mask, target = next(iter(dm.train_dataloader()))
    assert masked.shape == target.shape == (50, 3, 32, 32) and mask.shape == (50, 1, 32, 32)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}  # 1 = hole
    hole = mask.bool().expand_as(target)
    assert torch.equal(masked[~hole], target[~hole]) and (masked[hole] == 0).all()
    assert abs(mask.mean().item() - 0.25) < 0.02

    for loader in (dm.val_dataloader, dm.test_dataloader):
        first = [b for b in loader()]
        it = loader()
        again = [b for b in it]
        again2 = [b for b in it]  # a second pass (epoch) over the same loader
        for a, b, c in zip(first, again, again2):
            assert torch.equal(a[1], b[1]) and torch.equal(a[1], c[1]) and torch.equal(a[2], b[2])
    # a fresh module with the same seed gives the same validation masks
    dm2 = make(tmp_path, mask=kind)
    assert torch.equal(next(iter(dm2.val_dataloader()))[1], next(iter(dm.val_dataloader()))[1])

    if kind != "center":  # training masks are fresh each pass
        it = dm.train_dataloader()
        m1 = torch.cat([b[1] for b in it])
        m2 = torch.cat([b[1] for b in it])
        assert not torch.equal(m1, m2)


def test_wraps_a_given_datamodule_and_delegates(tmp_path):
    inner = CIFAR10DataModule(data_source="synthetic", cache_dir=str(tmp_path), synthetic_sizes=(200, 40),
                              val_size=40, batch_size=8, augment="none")
    dm = InpaintingDataModule(inner, mask="strokes", hole_fraction=0.3)
    dm.setup()
    assert dm.source_used == inner.source_used == "synthetic" and dm.mean == inner.mean and dm.classes == inner.classes
    masked, mask, target = next(iter(dm.test_dataloader()))
    assert target.shape == (8, 3, 32, 32)
    with pytest.raises(ValueError, match="mask"):
        InpaintingDataModule(inner, mask="blob")
    with pytest.raises(ValueError, match="hole_fraction"):
        InpaintingDataModule(inner, hole_fraction=1.5)
