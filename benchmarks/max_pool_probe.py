"""Train the demo classifier with its logit the maximum of the CAM over cells instead of its mean (GAP), per seed.

    python -m benchmarks.max_pool_probe --run-dir runs/demo --seeds 0 1 2 --out /tmp/gmp [-p cls_epochs=4]

A probe, not a package option: it swaps `VGG16CAM.forward` in this process only, so the logit is max_xy M(x, y) + b
with M = sum_k v_k A_k (Eq. 1). CAM stays the map the logit pools, the pointing probe reads it unchanged, and the
gradient reaches only the peak cell. Session 8, 4 epochs: seed 1 points (visible 0.85 at AUC 0.91), seed 0 never
(pointing < 0.02), seed 2 stays on ln 2. Otherwise as `benchmarks.classifier_seeds` (same arguments, same table).
"""
from __future__ import annotations

import torch

from benchmarks import classifier_seeds
from wsseg_nb import models
from wsseg_nb.cam import classic_cam


def max_cam_logit(self: models.VGG16CAM, x: torch.Tensor) -> torch.Tensor:
    """Raw (B, 2, S, S) [SUV, HU] -> the maximum over cells of the CAM plus the FC bias (B,)."""
    return classic_cam(self, x).flatten(1).amax(1) + self.fc.bias[0]


if __name__ == "__main__":
    models.VGG16CAM.forward = max_cam_logit
    classifier_seeds.main()
