"""The paper's augmentation: exact geometry conventions, air fill, PET-only gamma, and torch == imgaug."""
from __future__ import annotations

import pytest
import torch

from wsseg_nb.augment import AugmentParams, augment, drop_ct, gamma_suv, random_crop, sample_params


def _params(n: int, scale: float = 1.0, rotate: float = 0.0, translate: float = 0.0, gamma: float = 1.0) -> AugmentParams:
    full = lambda v: torch.full((n,), v, dtype=torch.float64)  # noqa: E731
    return AugmentParams(full(scale), full(rotate), full(translate), full(gamma))


def _phantom(n: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw [SUV, HU] slices with an off-centre hot lesion (its mask) in a water-like body."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2).float()
    x = torch.stack([body * 1.5, body * 1040.0 - 1000.0]).repeat(n, 1, 1, 1)
    mask = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        lesion = (yy - 20 - 2 * i) ** 2 + (xx - 40) ** 2 < 36
        x[i, 0][lesion] = 8.0
        mask[i][lesion] = 1
    return x, mask


@pytest.mark.parametrize("engine", ["torch", "imgaug"])
def test_identity_parameters_change_nothing(engine: str) -> None:
    x, mask = _phantom()
    out, out_mask = augment(x, mask, _params(len(x)), engine)
    torch.testing.assert_close(out, x, atol=0.01, rtol=0)  # float32 grid: ~1e-6 px -> < 0.01 HU
    assert torch.equal(out_mask, mask)


@pytest.mark.parametrize("engine", ["torch", "imgaug"])
def test_positive_rotation_is_clockwise_on_screen(engine: str) -> None:
    x, mask = _phantom(2)
    out, out_mask = augment(x, mask, _params(2, rotate=90.0), engine)
    torch.testing.assert_close(out, torch.rot90(x, -1, (-2, -1)), atol=0.01, rtol=0)
    assert torch.equal(out_mask, torch.rot90(mask, -1, (-2, -1)))


@pytest.mark.parametrize("engine", ["torch", "imgaug"])
def test_translation_moves_both_axes_and_fills_with_air(engine: str) -> None:
    x, mask = _phantom(2)
    out, out_mask = augment(x, mask, _params(2, translate=0.125), engine)  # 8 px right and 8 px down
    torch.testing.assert_close(out[..., 8:, 8:], x[..., :-8, :-8], atol=0.01, rtol=0)
    assert torch.equal(out_mask[:, 8:, 8:], mask[:, :-8, :-8])
    assert torch.all(out[:, 0, :8] == 0) and torch.all(out[:, 1, :8] == -1000.0)  # air, not water (HU 0)
    assert not out_mask[:, :8].any()


def test_gamma_acts_on_pet_only_with_suv_reference_20() -> None:
    x = torch.tensor([5.0, 0.0, 20.0, -1.0, 30.0])
    assert torch.allclose(gamma_suv(x, torch.tensor(2.0)), torch.tensor([1.25, 0.0, 20.0, 0.0, 45.0]))
    img, mask = _phantom(1)
    out, _ = augment(img, mask, _params(1, gamma=2.0), "torch")
    torch.testing.assert_close(out[:, 1], img[:, 1], atol=0.01, rtol=0)
    torch.testing.assert_close(out[0, 0, 22, 40], torch.tensor(20.0 * 0.4 ** 2))


def test_engines_agree_on_random_parameters() -> None:
    x, mask = _phantom(8)
    params = sample_params(8, torch.Generator().manual_seed(3))
    a, a_mask = augment(x, mask, params, "torch")
    b, b_mask = augment(x, mask, params, "imgaug")
    # bilinear differences only at edges (cv2 uses 1/32-pixel fixed-point weights)
    assert (a[:, 0] - b[:, 0]).abs().mean() < 0.005 and (a[:, 1] - b[:, 1]).abs().mean() < 1.0
    assert (a_mask != b_mask).float().mean() < 1e-3
    assert a_mask.sum() > 0.5 * mask.sum()
    # the mask stays on the lesion (gamma 1 to read SUV directly): hot voxels of the warped image are the warped mask
    flat = AugmentParams(params.scale, params.rotate_deg, params.translate, torch.ones(8, dtype=torch.float64))
    for engine in ("torch", "imgaug"):
        img, m = augment(x, mask, flat, engine)
        hot, m = img[:, 0] > 4.75, m.bool()
        assert img[:, 0][m].mean() > 7.0
        assert (hot ^ m).sum() <= 0.15 * m.sum()


def test_sample_params_ranges_and_reproducibility() -> None:
    p = sample_params(5000, torch.Generator().manual_seed(0))
    q = sample_params(5000, torch.Generator().manual_seed(0))
    assert torch.equal(p.scale, q.scale) and torch.equal(p.gamma, q.gamma)
    for values, lo, hi in [(p.scale, 0.85, 1.15), (p.rotate_deg, -10, 10), (p.translate, -0.1, 0.1), (p.gamma, 0.7, 1.7)]:
        assert lo <= values.min() < lo + 0.01 * (hi - lo) and hi - 0.01 * (hi - lo) < values.max() <= hi


def test_unknown_engine() -> None:
    x, mask = _phantom(1)
    with pytest.raises(ValueError, match="augment_engine"):
        augment(x, mask, _params(1), "albumentations")


def test_drop_ct_blanks_the_ct_of_the_drawn_slices_only() -> None:
    x, _ = _phantom(n=400, size=8)
    generator = torch.Generator().manual_seed(5)
    drawn = torch.rand(400, generator=torch.Generator().manual_seed(5)) < 0.3
    out = drop_ct(x, 0.3, generator)
    assert torch.equal(out[:, 0], x[:, 0])  # PET untouched
    assert torch.equal(out[drawn, 1], torch.zeros_like(x[drawn, 1]))  # water: network input 0
    assert torch.equal(out[~drawn, 1], x[~drawn, 1])
    assert 0.25 < drawn.float().mean() < 0.35
    assert drop_ct(x, 0.0, generator) is x  # p = 0 draws nothing, so the default runs replay their old draws


def test_random_crop_takes_each_slice_window_at_its_drawn_offset() -> None:
    n, size, crop = 200, 16, 8
    x = torch.arange(n * 2 * size * size, dtype=torch.float32).reshape(n, 2, size, size)
    mask = (x[:, 0] % 3 == 0).to(torch.uint8)
    replay = torch.Generator().manual_seed(3)
    top, left = (torch.randint(size - crop + 1, (n,), generator=replay) for _ in range(2))
    out, out_mask = random_crop(x, mask, crop, torch.Generator().manual_seed(3))
    assert out.shape == (n, 2, crop, crop) and out_mask.shape == (n, crop, crop) and out_mask.dtype == torch.uint8
    for i in range(n):  # by hand: plain slicing at the replayed offsets
        t, l = int(top[i]), int(left[i])
        assert torch.equal(out[i], x[i, :, t:t + crop, l:l + crop])
        assert torch.equal(out_mask[i], mask[i, t:t + crop, l:l + crop])
    offsets = set(zip(top.tolist(), left.tolist()))
    assert len(offsets) > 60 and min(min(o) for o in offsets) == 0 and max(max(o) for o in offsets) == size - crop


def test_random_crop_of_the_whole_slice_is_the_slice_and_bad_sizes_are_refused() -> None:
    x, mask = torch.rand(2, 2, 16, 16), torch.zeros(2, 16, 16, dtype=torch.uint8)
    out, out_mask = random_crop(x, mask, 16, torch.Generator())
    assert out is x and out_mask is mask
    for size in (0, 17):
        with pytest.raises(ValueError, match="crop size must be in 1..16"):
            random_crop(x, mask, size, torch.Generator())
