"""Slices/s of wsseg_nb.cam against pytorch-grad-cam (`grad-cam`) and `torchcam` on the same model, inputs and device.

Benchmark only: the peers are imported here, never by the package. Usage (CPU, 2 threads by default):
    PYTHONPATH=. python benchmarks/bench_cam.py [--sizes demo paper] [--run-dir runs/demo]
Each peer map is compared with ours after aligning normalisation (both ReLU'd and min-max normalised at the
feature-map resolution; the peers are fed the already scaled input, so that every library masks the same tensor).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsseg_nb import cam
from wsseg_nb.config import get_config
from wsseg_nb.models import VGG16CAM
from wsseg_nb.train import _load

SIZES = {name: (get_config(name).slice_size, get_config(name).vgg_width) for name in ("demo", "paper")}
"""Slice size and network width of each profile."""
METHODS = ("cam", "gradcam", "gradcampp", "scorecam", "layercam")
N_SCORECAM = 8
"""ScoreCAM runs K masked forwards per slice: timed on the first few slices only."""


class Peer(nn.Module):
    """The classifier without `.scale`, with a (B, 1) output as the peers expect."""

    def __init__(self, net: VGG16CAM) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return cam.logit_from_scaled(self.net, z)[:, None]


def pgc_runner(method: str, peer: Peer, batch: int) -> Callable[[torch.Tensor], np.ndarray] | None:
    """pytorch-grad-cam at the feature-map resolution (its resize to the input size switched off)."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = {"gradcam": pgc.GradCAM, "gradcampp": pgc.GradCAMPlusPlus, "scorecam": pgc.ScoreCAM,
               "layercam": pgc.LayerCAM}
    if method not in classes:
        return None

    def run(z: torch.Tensor) -> np.ndarray:
        extractor = classes[method](model=peer, target_layers=[peer.net.features])
        extractor.batch_size = batch
        extractor.get_target_width_height = lambda _: None
        try:
            return extractor(input_tensor=z, targets=[ClassifierOutputTarget(0)] * len(z))
        finally:
            extractor.activations_and_grads.release()
    return run


def torchcam_runner(method: str, peer: Peer, batch: int) -> Callable[[torch.Tensor], np.ndarray]:
    """torchcam, class index 0 of the (B, 1) output."""
    from torchcam import methods as tc

    def run(z: torch.Tensor) -> np.ndarray:
        layer, shape = peer.net.features, tuple(z.shape[1:])
        if method == "cam":
            extractor = tc.CAM(peer, layer, fc_layer=peer.net.fc, input_shape=shape)
        elif method == "scorecam":
            extractor = tc.ScoreCAM(peer, layer, batch_size=batch, input_shape=shape)
        else:
            extractor = {"gradcam": tc.GradCAM, "gradcampp": tc.GradCAMpp, "layercam": tc.LayerCAM}[method](
                peer, layer, input_shape=shape)
        with extractor:
            with torch.set_grad_enabled(method not in ("cam", "scorecam")):
                scores = peer(z)
            maps = extractor(class_idx=0, scores=scores, normalized=False)[0]
        return maps.detach().cpu().numpy()
    return run


def timed(runners: list[tuple[Callable[[torch.Tensor], np.ndarray], torch.Tensor]], chunk: int,
          repeats: int) -> list[tuple[float, np.ndarray]]:
    """Slices/s and maps of each runner: best of `repeats`, runners interleaved, from the process's CPU time.

    On a shared machine wall time swings several-fold with the neighbours' load; CPU seconds / threads is what
    the same run takes on an idle machine with that many cores.
    """
    best = [float("inf")] * len(runners)
    maps: list[np.ndarray] = [np.empty(0)] * len(runners)
    for fn, x in runners:
        fn(x[:chunk])  # warm-up (allocator, oneDNN primitives)
    for _ in range(repeats):
        for i, (fn, x) in enumerate(runners):
            start = time.process_time()
            maps[i] = np.concatenate([fn(xb) for xb in x.split(chunk)])
            best[i] = min(best[i], (time.process_time() - start) / torch.get_num_threads())
    return [(len(x) / b, m) for (_, x), b, m in zip(runners, best, maps)]


def inputs(run_dir: Path, size: int, n: int) -> tuple[torch.Tensor, str]:
    """Val/test tumor slices of the demo store when it matches the size, else random raw [SUV, HU] slices."""
    store_dir = run_dir / "store"
    if (store_dir / "index.csv").exists():
        from wsseg_nb.slices import SliceStore

        store = SliceStore(store_dir)
        index = store.index.reset_index(drop=True)
        positions = np.flatnonzero((index["label"] == 1) & index["split"].isin(["val", "test"]))[:n]
        x = torch.from_numpy(store.read(positions)[0])
        if x.shape[-1] == size and len(x) == n:
            return x, "store val/test tumor"
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.rand(n, 3, 2, generator=g) * size * 0.8 + size * 0.1
    blobs = torch.exp(-((yy - centres[..., :1, None]) ** 2 + (xx - centres[..., 1:, None]) ** 2) / (size / 20) ** 2)
    suv = torch.rand(n, 1, size, size, generator=g) + 8 * blobs.sum(1, keepdim=True)  # noise + three hot lesions
    hu = torch.rand(n, 1, size, size, generator=g) * 200 - 100
    return torch.cat([suv, hu], 1), "synthetic (noise + 3 hot blobs)"


def model_for(run_dir: Path, width: float) -> tuple[VGG16CAM, str]:
    """The trained demo classifier when present at this width, else a randomly initialised one."""
    net = VGG16CAM(width, "none")
    checkpoint = run_dir / "classifier" / "best.pt"
    if width == SIZES["demo"][1] and checkpoint.exists():
        return _load(net, checkpoint, torch.device("cpu")), "trained (runs/demo)"
    return net.eval(), "random init"


def bench(size_name: str, n: int, batch: int, run_dir: Path, methods: tuple[str, ...], repeats: int) -> None:
    """Print one table: method, library, slices/s, speed-up of ours over the faster peer, max |map difference|."""
    size, width = SIZES[size_name]
    torch.manual_seed(0)
    net, origin = model_for(run_dir, width)
    x, source = inputs(run_dir, size, n)
    peer = Peer(net).eval()
    with torch.no_grad():
        z = net.scale(x)  # contiguous, as a data loader gives it; the peers mask this same tensor
    with torch.no_grad():
        acts = net.features(z)
    zero = acts.flatten(2).amax(-1).eq(0)
    print(f"\n## {size_name}: {size}x{size}, width {width:g} (K={acts.shape[1]}), {origin} model, {n} {source} "
          f"slices, batch {batch}, CPU, {torch.get_num_threads()} threads, slices/s = n / (CPU s / threads)")
    print(f"all-zero channels per slice: mean {zero.sum(1).float().mean():.1f} of {acts.shape[1]}; "
          f"zero for every slice: {int(zero.all(0).sum())}")
    print(f"{'method':10s} {'ours':>8s} {'grad-cam':>9s} {'torchcam':>9s} {'speed-up':>9s} {'|d| grad-cam':>13s} "
          f"{'|d| torchcam':>13s}")
    for method in methods:
        xm, zm = (x[:N_SCORECAM], z[:N_SCORECAM]) if method == "scorecam" else (x, z)
        peers = [make(method, peer, batch) for make in (pgc_runner, torchcam_runner)]
        runners = [(lambda t: cam.compute_cams(net, t, method, batch_size=batch).numpy(), xm)]
        runners += [(fn, zm) for fn in peers if fn is not None]
        results = iter(timed(runners, batch, repeats))
        rate, ours = next(results)
        row, diffs, rates = [f"{method:10s} {rate:8.2f}"], [], []
        for fn in peers:
            if fn is None:
                row.append(f"{'-':>9s}")
                diffs.append(f"{'-':>13s}")
                continue
            peer_rate, theirs = next(results)
            theirs = torch.from_numpy(np.nan_to_num(theirs)).float()
            theirs = cam.normalize_maps(theirs if method == "cam" else theirs.relu()).numpy()  # Eq. 1: no ReLU
            rates.append(peer_rate)
            row.append(f"{peer_rate:9.2f}")
            diffs.append(f"{np.abs(theirs - ours).max():13.2e}")
        row.append(f"{rate / max(rates):8.1f}x")
        print(" ".join(row + diffs), flush=True)

def main() -> None:
    """Parse arguments and run the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=sorted(SIZES))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for size_name in args.sizes:
        if size_name == "demo":
            bench("demo", n=64, batch=64, run_dir=args.run_dir, methods=METHODS, repeats=args.repeats)
        else:  # one full-width VGG16 forward at 256x256 takes seconds on a CPU: few slices, no exact ScoreCAM
            bench("paper", n=4, batch=2, run_dir=args.run_dir, methods=tuple(m for m in METHODS if m != "scorecam"),
                  repeats=1)


if __name__ == "__main__":
    main()
