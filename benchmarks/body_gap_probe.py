"""Train the demo classifier with GAP restricted to the body's cells (the CAM averaged over cells inside the body), per seed.

    python -m benchmarks.body_gap_probe --run-dir runs/demo --seeds 0 2 --out /tmp/bodygap [-p cls_epochs=4]

A probe, not a package option: it swaps `VGG16CAM.forward` and `cam.classic_cam` in this process only (the
pointing probe reads `classic_cam`; `cam.compute_cams`, and with it the flip displacement, the plain CAM). A cell is
body when at least half its pixels have SUV > BODY_SUV (the lungs' 0.3-0.6 included: the PET fills the outline);
the logit is the mean CAM over body cells plus b, and the pointing probe reads the same map with the cells outside
set to the slice's minimum. Session 8, 4 epochs: worse on every seed (visible pointing <= 0.35). Otherwise as
`benchmarks.classifier_seeds` (same arguments, same table).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from benchmarks import classifier_seeds
from wsseg_nb import cam, models

BODY_SUV = 0.1
"""SUV above which a pixel is body (air outside the patient has none)."""
plain_cam = cam.classic_cam
"""Eq. 1 unrestricted, kept before `cam.classic_cam` is swapped for `body_cam`."""


def body_cells(x: torch.Tensor, cells: int) -> torch.Tensor:
    """Raw (B, 2, S, S) slices -> bool (B, cells, cells): at least half the cell's pixels have SUV > BODY_SUV."""
    return F.adaptive_avg_pool2d((x[:, :1] > BODY_SUV).float(), cells)[:, 0] >= 0.5


def body_cam(model: models.VGG16CAM, x: torch.Tensor) -> torch.Tensor:
    """Eq. 1's map (B, h, w) with the cells outside the body set to each slice's minimum."""
    maps = plain_cam(model, x)
    inside = body_cells(x, maps.shape[-1])
    low = maps.flatten(1).amin(1)[:, None, None].expand_as(maps)
    return torch.where(inside, maps, low)


def body_gap_logit(self: models.VGG16CAM, x: torch.Tensor) -> torch.Tensor:
    """Raw (B, 2, S, S) -> the mean CAM over body cells plus the FC bias (B,); the plain mean where no cell is body."""
    maps = plain_cam(self, x)
    inside = body_cells(x, maps.shape[-1]).float()
    inside = torch.where(inside.flatten(1).sum(1)[:, None, None] > 0, inside, torch.ones_like(inside))
    return (maps * inside).flatten(1).sum(1) / inside.flatten(1).sum(1) + self.fc.bias[0]


if __name__ == "__main__":
    models.VGG16CAM.forward = body_gap_logit
    cam.classic_cam = body_cam
    classifier_seeds.main()
