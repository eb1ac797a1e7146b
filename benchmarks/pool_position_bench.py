"""One Adam step of the demo classifier with the first max-pool dropped (the paper's) or the one before block 5.

    python -m benchmarks.pool_position_bench [--steps 6]
    python -m benchmarks.pool_position_bench --train --run-dir runs/demo --seeds 0 1 --out /tmp/pool [-p KEY=VALUE]


Both keep three pools, so both give the same S/8 map (32 mm cells at the demo's 4 mm pixels). The paper drops the
first pool, so block 2 runs at full resolution; moving the pool back there and dropping the one after block 4
instead runs blocks 2-4 on a quarter of the pixels. A throughput probe only (synthetic batch, the two nets
alternating so that a shared CPU slows both alike). With --train it trains the second net instead, as
`benchmarks.classifier_seeds` does (same arguments, same table; `train.classifier_model` swapped in this process
only, LSUV applied after the move), to measure whether it trains and localizes.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from benchmarks import classifier_seeds
from wsseg_nb import train
from wsseg_nb.config import get_config
from wsseg_nb.models import VGG16CAM


def pool_moved_early(model: VGG16CAM) -> VGG16CAM:
    """The model with a max-pool after block 1 and without the one after block 4 (same map size, same weights)."""
    layers = list(model.features)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    block1_end = next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d) and i > 0
                      and layer.in_channels != layer.out_channels) - 1  # the ReLU before block 2's first conv
    del layers[pools[-1]]
    layers.insert(block1_end + 1, nn.MaxPool2d(2, 2))
    model.features = nn.Sequential(*layers)
    return model


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
    nets = {"first pool dropped (paper)": VGG16CAM(cfg.vgg_width),
            "pool after block 4 dropped": pool_moved_early(VGG16CAM(cfg.vgg_width))}
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


def train_moved(argv: list[str]) -> None:
    """`benchmarks.classifier_seeds` with every classifier built with its pool moved early (`pool_moved_early`)."""
    plain = train.classifier_model
    train.classifier_model = lambda c, pretrained=None: pool_moved_early(plain(c, pretrained))
    sys.argv = [sys.argv[0], *argv]
    classifier_seeds.main()


if __name__ == "__main__":
    if "--train" in sys.argv:
        train_moved([a for a in sys.argv[1:] if a != "--train"])
    else:
        main()
