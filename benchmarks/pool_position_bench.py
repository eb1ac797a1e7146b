"""One Adam step of the demo classifier with the paper's pools (`vgg_pools` 'late') and with 'early' ones.

    python -m benchmarks.pool_position_bench [--steps 6]

Both keep three pools, so both give the same S/8 map (32 mm cells at the demo's 4 mm pixels). The paper drops the
first pool, so block 2 runs at full resolution; 'early' keeps that pool and drops the one after block 4 instead,
so blocks 2-4 run on a quarter of the pixels. A throughput probe only (synthetic batch, the two nets alternating
so that a shared CPU slows both alike). Whether the 'early' net trains and localizes:
`python -m benchmarks.classifier_seeds --seeds 0 1 -p vgg_pools=early`.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from wsseg_nb.config import get_config
from wsseg_nb.models import VGG16CAM


def step_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
    """Milliseconds per slice of one forward, backward and Adam step."""
    start = time.perf_counter()
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return (time.perf_counter() - start) * 1000 / len(x)


def main() -> None:
    """Print the fastest step of each net (the first is warm-up) and its map size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    cfg = get_config("demo")
    torch.manual_seed(0)
    nets = {f"pools {pools}": VGG16CAM(cfg.vgg_width, pools=pools) for pools in ("late", "early")}
    x = (torch.rand(cfg.cls_batch, 2, cfg.slice_size, cfg.slice_size) * torch.tensor([5.0, 1000.0])[:, None, None])
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (cfg.cls_batch,)).float()
    times: dict[str, list[float]] = {name: [] for name in nets}
    optimizers = {name: torch.optim.Adam(net.parameters(), cfg.cls_lr) for name, net in nets.items()}
    for name, net in nets.items():
        net.to(memory_format=torch.channels_last)
    for _ in range(args.steps):
        for name, net in nets.items():
            times[name].append(step_ms(net, x, y, optimizers[name]))
    for name, net in nets.items():
        with torch.no_grad():
            side = net.features(net.scale(x[:1])).shape[-1]
        print(f"{name}: {min(times[name][1:]):.1f} ms per slice, {side}x{side} map")


if __name__ == "__main__":
    main()
