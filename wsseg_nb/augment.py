"""The authors' augmentation (Sec. 2.3.3) as one spec with two engines: imgaug (as the paper) and batched torch."""
# Spec, per slice: imgaug `Affine(scale=(0.85, 1.15), rotate=(-10, 10), translate_percent=(-0.1, 0.1))`, bilinear,
# constant fill, the same transform on the mask (nearest), then `GammaContrast((0.7, 1.7))` on the PET channel only.
# As in imgaug, a tuple draws ONE scale and ONE translation fraction per slice, used for both axes.
# Augmentation runs on the raw [SUV, HU] input, before `models.InputScale`; the outside of the warped field is
# filled with air (SUV 0, HU -1000), not with HU 0 (water). imgaug's gamma works on float images as u -> u**gamma
# (meant for u in [0, 1]); for SUV we take u = SUV / SUV_CLIP (the input-scaling clip, 20): SUV -> 20 (SUV / 20)**gamma.
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .config import CHOICES
from .models import HU_CLIP, SUV_CLIP

SCALE = (0.85, 1.15)
ROTATE_DEG = (-10.0, 10.0)
TRANSLATE = (-0.1, 0.1)
GAMMA = (0.7, 1.7)
AIR_HU = HU_CLIP[0]
ENGINES = CHOICES["augment_engine"]


@dataclass(frozen=True)
class AugmentParams:
    """Per-slice parameters (n,) of one augmentation draw: scale, rotation (deg), translation (fraction), PET gamma."""

    scale: torch.Tensor
    rotate_deg: torch.Tensor
    translate: torch.Tensor
    gamma: torch.Tensor


def sample_params(n: int, generator: torch.Generator) -> AugmentParams:
    """Draw n slices' parameters uniformly from the paper's ranges (CPU generator: reproducible everywhere)."""
    u = torch.rand(4, n, generator=generator, dtype=torch.float64)
    lo = torch.tensor([SCALE[0], ROTATE_DEG[0], TRANSLATE[0], GAMMA[0]], dtype=torch.float64)[:, None]
    hi = torch.tensor([SCALE[1], ROTATE_DEG[1], TRANSLATE[1], GAMMA[1]], dtype=torch.float64)[:, None]
    return AugmentParams(*(lo + (hi - lo) * u))


def gamma_suv(suv: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """imgaug's float GammaContrast on u = SUV / SUV_CLIP: SUV -> SUV_CLIP (max(SUV, 0) / SUV_CLIP) ** gamma."""
    return SUV_CLIP * (suv.clamp_min(0.0) / SUV_CLIP) ** gamma


def affine_theta(params: AugmentParams, height: int, width: int) -> torch.Tensor:
    """`affine_grid` matrices (n, 2, 3) reproducing imgaug's Affine (about the pixel-grid centre, align_corners=False)."""
    s, r = params.scale, torch.deg2rad(params.rotate_deg)
    cos, sin = torch.cos(r), torch.sin(r)
    # imgaug forward map in pixels about the centre: p_out - c = A (p_in - c) + t, A = R(r) * s, t = (tx W, ty H).
    a_inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / s[:, None, None]
    d = torch.tensor([width / 2.0, height / 2.0], dtype=a_inv.dtype)
    t = torch.stack([params.translate * width, params.translate * height], -1)
    # normalised coords: p - c = D n  ->  n_in = D^-1 A^-1 D n_out - D^-1 A^-1 t
    linear = a_inv * d[None, None, :] / d[None, :, None]
    shift = -(a_inv @ t[:, :, None])[..., 0] / d
    return torch.cat([linear, shift[:, :, None]], dim=2)


def augment_torch(x: torch.Tensor, mask: torch.Tensor, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched engine on x's device: raw x (B, 2, H, W) [SUV, HU] and mask (B, H, W) -> augmented copies."""
    b, _, h, w = x.shape
    theta = affine_theta(params, h, w).to(x.device, torch.float32)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    # zero fill in a space where 0 is air: SUV (clamped at 0, as gamma needs) and HU + 1000
    shifted = torch.cat([x[:, :1].float().clamp_min(0.0), x[:, 1:].float() - AIR_HU], dim=1)
    warped = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped_mask = F.grid_sample(mask[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    gamma = params.gamma.to(x.device, torch.float32).view(b, 1, 1)
    out = torch.cat([gamma_suv(warped[:, :1], gamma[:, None]), warped[:, 1:] + AIR_HU], dim=1)
    return out, warped_mask[:, 0].to(mask.dtype)


def augment_imgaug(x: torch.Tensor, mask: torch.Tensor, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference engine (the authors' imgaug, per slice on the CPU): same inputs, outputs and parameters as augment_torch."""
    import imgaug.augmenters as iaa
    from imgaug.augmentables.segmaps import SegmentationMapsOnImage

    # imgaug fills one constant for all channels: shift HU so that 0 is air, and bring SUV to gamma's [0, 1] scale.
    img = np.stack([x[:, 0].clamp_min(0).numpy() / SUV_CLIP, x[:, 1].numpy() - AIR_HU], axis=-1).astype(np.float32)
    out_img, out_mask = np.empty_like(img), np.empty(mask.shape, dtype=np.uint8)
    m = mask.numpy().astype(np.int32)
    for i in range(len(img)):  # imgaug draws per image anyway; fixing the parameters makes each call deterministic
        seq = iaa.Sequential([
            iaa.Affine(scale=float(params.scale[i]), rotate=float(params.rotate_deg[i]),
                       translate_percent=float(params.translate[i]), order=1, cval=0, mode="constant"),
            iaa.WithChannels(0, iaa.GammaContrast(float(params.gamma[i]))),
        ])
        aug_img, aug_seg = seq(image=img[i], segmentation_maps=SegmentationMapsOnImage(m[i], shape=m[i].shape))
        out_img[i], out_mask[i] = aug_img, aug_seg.get_arr()
    out = np.stack([out_img[..., 0] * SUV_CLIP, out_img[..., 1] + AIR_HU], axis=1)
    return torch.from_numpy(out), torch.from_numpy(out_mask).to(mask.dtype)


def drop_ct(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace the CT channel of a random share p of the raw [SUV, HU] slices by water (0 HU: network input 0)."""
    if p <= 0:
        return x
    drop = (torch.rand(len(x), generator=generator) < p).to(x.device)
    return torch.cat([x[:, :1], x[:, 1:2] * ~drop[:, None, None, None]], dim=1)


def random_crop(x: torch.Tensor, mask: torch.Tensor, size: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A size x size window of each slice (B,C,S,S) and its mask (B,S,S), at an offset drawn uniformly per slice."""
    height, width = x.shape[-2:]
    if not 0 < size <= min(height, width):
        raise ValueError(f"crop size must be in 1..{min(height, width)} for {height}x{width} slices, got {size}")
    if size == height == width:
        return x, mask
    top = torch.randint(height - size + 1, (len(x), 1, 1), generator=generator).to(x.device)
    left = torch.randint(width - size + 1, (len(x), 1, 1), generator=generator).to(x.device)
    steps = torch.arange(size, device=x.device)
    b = torch.arange(len(x), device=x.device)[:, None, None]
    rows, cols = top + steps[:, None], left + steps[None, :]  # (B, size, 1), (B, 1, size)
    return x.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2), mask[b, rows, cols]


def augment(x: torch.Tensor, mask: torch.Tensor, params: AugmentParams, engine: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the paper's augmentation with the chosen engine ('torch' on x's device, 'imgaug' on the CPU) (notebook 02)."""
    if engine == "torch":
        return augment_torch(x, mask, params)
    if engine == "imgaug":
        out, m = augment_imgaug(x.cpu(), mask.cpu(), params)
        return out.to(x.device), m.to(mask.device)
    raise ValueError(f"augment_engine must be one of {ENGINES}, got {engine!r}")
