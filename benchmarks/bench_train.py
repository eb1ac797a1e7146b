"""Training throughput of the classifier and the U-Net (demo and paper sizes) and the projected paper-scale time."""
from __future__ import annotations

import argparse
import resource
import time

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from wsseg_nb.augment import augment, random_crop, sample_params
from wsseg_nb.config import get_config
from wsseg_nb.models import VGG16CAM
from wsseg_nb.runs import pick_device
from wsseg_nb.train import _forward, _target, classifier_optimizer, unet_model, unet_optimizer, unet_window, weighted_ce

PAPER_TRAIN_SLICES = int(453 * 330 * 0.6)
"""Paper scale: 453 studies x ~330 slices (2x2x3 mm) x 60% training."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(kind: str, profile: str, device: torch.device, steps: int, batch_override: int = 0) -> dict[str, object]:
    """Slices/s and FLOP/s of augmented training steps on synthetic batches (`size`: what the net sees)."""
    cfg = get_config(profile)
    size = cfg.slice_size
    if kind == "classifier":
        model, batch = VGG16CAM(cfg.vgg_width), cfg.cls_batch
        opt = classifier_optimizer(model, cfg)
    else:
        model, batch = unet_model(cfg), cfg.unet_batch
        opt = unet_optimizer(model, cfg)
    batch = batch_override or batch
    model.to(device, memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 2, size, size, generator=gen).to(device) * torch.tensor([5.0, 1000.0], device=device).view(1, 2, 1, 1)
    mask = (torch.rand(batch, size, size, generator=gen) > 0.95).to(torch.uint8).to(device)
    label = mask.flatten(1).amax(1).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    crop = unet_window(cfg) if kind == "unet" else 0

    def train_step() -> None:
        xa, ma = augment(x, mask, sample_params(batch, gen), cfg.augment_engine)
        if crop:  # the demo U-Net's random windows (unet_crop), as train.fit
            xa, ma = random_crop(xa, ma, crop, gen)
        out = _forward(model, xa, device)
        target, known = _target(kind, label, ma)
        loss = weighted_ce(out, target, cfg.cls_pos_weight if kind == "classifier" else cfg.unet_pos_weight, known)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        train_step()
    times = []
    for _ in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        train_step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    step = sum(times[1:]) / steps
    rate = batch / step
    epochs = cfg.cls_epochs if kind == "classifier" else cfg.unet_epochs
    paper_epoch_h = PAPER_TRAIN_SLICES / rate / 3600
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"kind": kind, "profile": profile, "size": crop or size, "batch": batch, "step_ms": 1000 * step,
            "slices_per_s": rate, "tflop_per_s": counter.get_total_flops() / step / 1e12, "peak_mem_MiB": memory,
            "paper_epoch_h": paper_epoch_h,
            f"paper_{epochs}_epochs_h": paper_epoch_h * epochs}


def main() -> None:
    """Print the throughput table (CPU here unless CUDA is present)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--profiles", nargs="+", default=["demo", "paper"])
    parser.add_argument("--batch", type=int, default=0,
                        help="override the profile's batch (default: the profile's; 2 for the paper size on a CPU)")
    args = parser.parse_args()
    device = pick_device(args.device)
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)" if device.type == "cpu"
          else f"device: {torch.cuda.get_device_name(device)}")
    rows = []
    for profile in args.profiles:
        for kind in ("classifier", "unet"):
            batch = args.batch or (2 if device.type == "cpu" and profile == "paper" else 0)
            rows.append(bench(kind, profile, device, args.steps, batch))
            print(pd.DataFrame(rows).round(2).to_string(index=False), flush=True)
    print(f"paper scale: {PAPER_TRAIN_SLICES:,} training slices per epoch; peak memory is the process RSS on the CPU. "
          "Data loading: see data_wait_s vs train_s in history.csv of a real run.")


if __name__ == "__main__":
    main()
