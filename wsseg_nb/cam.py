"""Class activation maps of the slice classifier (Sec. 2.2.1, Eqs. 1-6), batched, for any batch size (notebook 03)."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from .progress import progress
from .runs import write_csv_atomic
from .segment import upscale_nearest
from .slices import index_positions

METHODS = ("cam", "gradcam", "gradcampp", "scorecam", "layercam", "layercam_fused")
GRADIENT_METHODS = ("gradcam", "gradcampp", "layercam", "layercam_fused")
SCORECAM_WEIGHTS = ("softmax", "probability")
"""ScoreCAM's channel weights from the masked inputs' scores: Eq. 6's softmax, or the probabilities (`_scorecam`)."""


def normalize_maps(maps: Tensor) -> Tensor:
    """Per-map min-max to [0, 1] over the last two dims; a constant map (e.g. all zero) becomes 0, never NaN."""
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    span = high - low
    return torch.where(span > 0, (flat - low) / torch.where(span > 0, span, 1.0), 0.0).view_as(maps)


def logit_from_scaled(model: nn.Module, z: Tensor) -> Tensor:
    """Tumor logit (B,) of an already scaled input: fc(pool(features(z))), the classifier without `.scale`."""
    return model.fc(model.pool(model.features(z)).flatten(1))[:, 0]


def scaled_input(model: nn.Module, x: Tensor) -> Tensor:
    """model.scale(x) in channels-last layout (oneDNN / cuDNN convolutions run about 2x faster on it; same values)."""
    return model.scale(x).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own train/eval flag afterwards, also on errors."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def capture(layers: Sequence[nn.Module], cut: bool = False) -> Iterator[list[Tensor]]:
    """Record the outputs of `layers` (in the order given) during a forward; hooks are removed on exit, also on errors.

    Each hooked output is replaced downstream by a copy, so a later in-place op (ReLU(inplace=True)) cannot alter
    the recorded activation. With `cut`, the first hooked output to fire becomes a leaf that requires grad and
    gradient recording is switched on from there: run the forward under `torch.no_grad()` and the layers before
    the cut run without autograd (about 2x faster on CPU), the backward stops at the leaf, frozen models work too.
    """
    recorded: dict[int, Tensor] = {}

    def hook(index: int) -> Any:
        def record(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
            if cut and not recorded:
                output = output.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # the enclosing no_grad() restores the mode on exit, also on errors
            recorded[index] = output
            return output.clone()
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    acts: list[Tensor] = []
    try:
        yield acts
    finally:
        for handle in handles:
            handle.remove()
    missing = [type(layers[i]).__name__ for i in range(len(layers)) if i not in recorded]
    if missing:
        raise ValueError(f"target layer(s) {missing} did not run in the model's forward")
    acts.extend(recorded[i] for i in range(len(layers)))


def block_ends(model: nn.Module) -> list[nn.Module]:
    """The ReLU before each max-pool of `model.features`, then `model.features` itself (LayerCAM fusion layers)."""
    mods = list(model.features)
    ends = [m for m, nxt in zip(mods, mods[1:]) if isinstance(nxt, nn.MaxPool2d) and isinstance(m, nn.ReLU)]
    return ends + [model.features]


def _activations_and_grads(model: nn.Module, x: Tensor, layers: Sequence[nn.Module]) -> list[tuple[Tensor, Tensor]]:
    """(A, dlogit/dA) at each layer; slices are independent in eval mode, so one backward of the summed logits."""
    with torch.inference_mode(False):
        z = scaled_input(model, x.clone())  # clone: a normal tensor even when the caller runs under inference_mode
        with torch.no_grad(), capture(layers, cut=True) as acts:
            logits = logit_from_scaled(model, z)
        grads = torch.autograd.grad(logits.sum(), acts)
    return [(a.detach().float(), g.float()) for a, g in zip(acts, grads)]


def _combine(weights: Tensor, acts: Tensor) -> Tensor:
    """ReLU(sum_k w_k A_k): weights (B,K) or (B,K,h,w), activations (B,K,h,w) -> (B,h,w)."""
    if weights.dim() == 2:
        weights = weights[:, :, None, None]
    return (weights * acts).sum(1).relu()


def gradcampp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    """GradCAM++ channel weights, Eqs. 4-5 in exact closed form (no epsilon); acts, grads (B,K,h,w) -> (B,K).

    With Y = exp(y) and y piecewise linear in A (ReLU/pool/linear after the layer): dY/dA = Y g, d2Y/dA2 = Y g^2,
    d3Y/dA3 = Y g^3 with g = dy/dA, so alpha = g^2 / (2 g^2 + sum_ij A_ij g^3). Where g != 0 numerator and
    denominator are divided by g^2 (exact, and g^3 ~ 1e-15 cannot underflow): alpha = 1 / (2 + g sum_ij A_ij).
    Where the denominator is 0 (g == 0: the 0/0 case) alpha is 0. The positive factor Y of relu(dY/dA) is common
    to all channels of a slice and is dropped (it cancels in the min-max normalisation).
    """
    denominator = 2.0 + grads * acts.sum((2, 3), keepdim=True)
    usable = (grads != 0) & (denominator != 0)
    alpha = torch.where(usable, 1.0 / torch.where(usable, denominator, 1.0), 0.0)
    return (alpha * grads.relu()).sum((2, 3))


def _gradient_cams(model: nn.Module, x: Tensor, method: str, layers: Sequence[nn.Module]) -> Tensor:
    """GradCAM (Eqs. 2-3), GradCAM++ (Eqs. 4-5), LayerCAM and fused LayerCAM for one chunk."""
    pairs = _activations_and_grads(model, x, layers)
    if method == "layercam_fused":
        size = max((a.shape[-2:] for a, _ in pairs), key=lambda s: s[0] * s[1])
        scaled = [torch.tanh(2.0 * normalize_maps(_combine(g.relu(), a))) for a, g in pairs]  # LayerCAM Eq. 9
        upsampled = [F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in scaled]
        return torch.stack(upsampled).amax(0)
    return _from_gradients(method, *pairs[0])


def _from_gradients(method: str, acts: Tensor, grads: Tensor) -> Tensor:
    """GradCAM, GradCAM++ or LayerCAM of one layer's activations and gradients (B,K,h,w) -> (B,h,w), unnormalised."""
    if method == "gradcam":
        return _combine(grads.mean((2, 3)), acts)
    if method == "gradcampp":
        return _combine(gradcampp_weights(acts, grads), acts)
    return _combine(grads.relu(), acts)  # layercam: element-wise weights relu(g)


def _scorecam(model: nn.Module, x: Tensor, layer: nn.Module, topk: int, batch_size: int,
              weights: str = "softmax") -> Tensor:
    """ScoreCAM (Eq. 6) for one chunk: channel k scored by the tumor logit of the input masked by its normalised map.

    weights "softmax" (Eq. 6 as printed): a softmax over channels of the logits, which weights each channel by the
    odds exp(logit) = p / (1 - p) that its region alone is tumor. A softmax over the one logit itself would be 1 for
    every channel (the single-logit pitfall); the softmax is over channels, and the subtracted baseline score of
    Eq. 6, common to all channels, cancels in it. weights "probability" (the ScoreCAM authors' released code): each
    channel weighted by the probability p = sigmoid(logit) of its masked input, unnormalised, so every channel whose
    region alone reads as tumor counts about equally instead of the few with the largest logits.
    The scaled input is masked (as the original masks the network input). Channels whose map is all zero give an
    all-zero mask and a zero term in the sum, so they are skipped: under the softmax the others' weights differ by a
    positive per-slice factor only, which the min-max normalisation removes (exact). `topk` > 0 keeps only the
    `topk` channels of largest spatial variance (an approximation unless topk >= K).
    """
    z = scaled_input(model, x)
    with capture([layer]) as acts:
        logit_from_scaled(model, z)
    return _scorecam_from(model, z, acts[0].float(), topk, batch_size, weights)


def _scorecam_from(model: nn.Module, z: Tensor, a: Tensor, topk: int, batch_size: int,
                   weights: str = "softmax") -> Tensor:
    """ScoreCAM of a scaled input z (B,2,S,S) whose target-layer activations are a (B,K,h,w); see `_scorecam`."""
    active = a.flatten(2).ne(0).any(-1)
    if topk > 0:
        keep = a.flatten(2).var(-1).topk(min(topk, a.shape[1]), dim=1).indices
        active &= torch.zeros_like(active).scatter_(1, keep, True)
    slices, channels = active.nonzero(as_tuple=True)  # one host sync per chunk
    scores = a.new_full(active.shape, float("-inf"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=z.is_cuda)
    for start in range(0, len(slices), batch_size):
        b, k = slices[start:start + batch_size], channels[start:start + batch_size]
        masks = normalize_maps(F.interpolate(a[b, k][:, None], size=z.shape[-2:], mode="bilinear", align_corners=False))
        with autocast:
            logits = logit_from_scaled(model, (z[b] * masks.to(z.dtype)).contiguous(memory_format=torch.channels_last))
        scores[b, k] = logits.float()
    if weights == "softmax":
        return _combine(torch.softmax(scores, dim=1).nan_to_num(0.0), a)  # no active channel: all -inf -> 0
    return _combine(torch.sigmoid(scores), a)  # a skipped channel's -inf -> 0


def has_global_pool_fc(model: nn.Module) -> bool:
    """Whether the head is a global (average or max) pool + one linear layer, where classic CAM (Eq. 1) is defined."""
    pool, fc = getattr(model, "pool", None), getattr(model, "fc", None)
    return (isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and pool.output_size in (1, (1, 1))
            and isinstance(fc, nn.Linear) and fc.out_features == 1)


def _require_global_pool_fc(model: nn.Module) -> None:
    """ValueError unless classic CAM applies to the model (cls_head 'gap_fc' or 'gmp_fc')."""
    if not has_global_pool_fc(model):
        head = getattr(model, "head", type(getattr(model, "fc", None)).__name__)
        raise ValueError(f"CAM (Eq. 1) needs a global pool + one FC (cls_head 'gap_fc' or 'gmp_fc'); this "
                         f"classifier's head is {head!r}: use {[m for m in METHODS if m != 'cam']}")


def classic_cam(model: nn.Module, x: Tensor) -> Tensor:
    """Eq. 1 as written, unnormalised and without ReLU: M = sum_k v_k A_k of raw slices x (B,2,S,S) -> (B,h,w)."""
    _require_global_pool_fc(model)
    return _cam_from(model, model.features(scaled_input(model, x)).float())


def _cam_from(model: nn.Module, acts: Tensor) -> Tensor:
    """Eq. 1 of last-layer activations (B,K,h,w): sum_k v_k A_k -> (B,h,w), unnormalised."""
    return torch.einsum("k,bkhw->bhw", model.fc.weight[0].detach().float(), acts)


def _check_batch(x: Tensor, topk: int, batch_size: int, scorecam_weights: str = "softmax") -> None:
    """ValueError unless x is a non-empty (B, 2, S, S) batch, batch_size >= 1, topk >= 0 and the weights known."""
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (B, 2, S, S) of raw [SUV, HU] slices, got {tuple(x.shape)}")
    if batch_size < 1 or topk < 0:
        raise ValueError(f"batch_size must be >= 1 and topk >= 0, got batch_size={batch_size}, topk={topk}")
    if scorecam_weights not in SCORECAM_WEIGHTS:
        raise ValueError(f"unknown scorecam_weights {scorecam_weights!r}; choose one of {SCORECAM_WEIGHTS}")


def compute_cams(model: nn.Module, x: Tensor, method: str, *,
                 target_layer: nn.Module | Sequence[nn.Module] | None = None, topk: int = 0,
                 batch_size: int = 64, scorecam_weights: str = "softmax") -> Tensor:
    """Maps (B,h,w) in [0,1] of raw inputs x (B,2,S,S) for the tumor logit, per-slice min-max normalised (notebook 03).

    method: "cam" (Eq. 1, as written: no ReLU; GAP + FC heads only), "gradcam" (Eqs. 2-3; with GAP + FC exactly
    CAM with a ReLU),
    "gradcampp" (Eqs. 4-5), "scorecam" (Eq. 6; bf16 autocast on CUDA), "layercam", "layercam_fused" (LayerCAM at
    `block_ends(model)[-3:]`, tanh-scaled, upsampled to the finest of them, element-wise max; finer maps).
    target_layer: default `model.features` (A of the last conv); a list of layers for "layercam_fused".
    scorecam_weights: "softmax" (Eq. 6) or "probability" (the ScoreCAM authors' code; see `_scorecam`).
    Runs on the model's device in chunks of `batch_size` (ScoreCAM: masked images per forward) and returns on
    x's device; the model's train/eval flags are restored and no hook survives the call. At the last layer every
    method but "layercam_fused" is `compute_maps` of that one method.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {METHODS}")
    if method == "cam" and target_layer not in (None, model.features):
        raise ValueError("CAM (Eq. 1) is defined only at the last conv layer, whose GAP feeds the FC layer")
    if method in SHARED_METHODS and target_layer in (None, model.features):
        return compute_maps(model, x, [method], topk=topk, batch_size=batch_size,
                            scorecam_weights=scorecam_weights)[method]
    _check_batch(x, topk, batch_size, scorecam_weights)
    if method == "layercam_fused":
        layers = list(target_layer) if target_layer is not None else block_ends(model)[-3:]
    else:
        layers = [target_layer if target_layer is not None else model.features]
    device = next(model.parameters()).device
    chunks = []
    with eval_mode(model):
        for xb in x.split(batch_size):
            xb = xb.to(device, torch.float32, non_blocking=True)
            if method in GRADIENT_METHODS:
                maps = _gradient_cams(model, xb, method, layers)
            else:
                with torch.inference_mode():
                    maps = _scorecam(model, xb, layers[0], topk, batch_size, scorecam_weights)
            chunks.append(normalize_maps(maps).to(x.device))
    return torch.cat(chunks)


SHARED_METHODS = ("cam", "gradcam", "gradcampp", "layercam", "scorecam")
"""Methods that read only the last conv layer's activations (and their gradient): `compute_maps` shares one pass."""


def compute_maps(model: nn.Module, x: Tensor, methods: Sequence[str], *, topk: int = 0,
                 batch_size: int = 64, scorecam_weights: str = "softmax") -> dict[str, Tensor]:
    """{method: maps (B,h,w)} of several last-layer methods from one forward per chunk; equal to `compute_cams` each.

    The activations A of `model.features` come from a single forward, their gradient from one backward through
    the head (only when a gradient method is asked for), and ScoreCAM's masked forwards reuse both A and the scaled
    input: for CAM + GradCAM + GradCAM++ + ScoreCAM (top-k) that is 1 + k forwards per slice instead of 4 + k.
    """
    unknown = [m for m in methods if m not in SHARED_METHODS]
    if unknown:
        raise ValueError(f"compute_maps shares the last layer's pass among {SHARED_METHODS}; got {unknown} "
                         f"(use compute_cams for it)")
    if "cam" in methods:
        _require_global_pool_fc(model)
    _check_batch(x, topk, batch_size, scorecam_weights)
    device = next(model.parameters()).device
    wants_grads = any(m in GRADIENT_METHODS for m in methods)
    chunks: dict[str, list[Tensor]] = {m: [] for m in methods}
    with eval_mode(model):
        for xb in x.split(batch_size):
            xb = xb.to(device, torch.float32, non_blocking=True)
            with torch.inference_mode(False):
                z = scaled_input(model, xb.clone())
                with torch.no_grad(), capture([model.features], cut=True) as acts:
                    logits = logit_from_scaled(model, z)
                grads = torch.autograd.grad(logits.sum(), acts)[0].float() if wants_grads else None
            a = acts[0].detach().float()
            for method in methods:
                if method == "cam":
                    maps = _cam_from(model, a)
                elif method == "scorecam":
                    with torch.inference_mode():
                        maps = _scorecam_from(model, z.detach(), a, topk, batch_size, scorecam_weights)
                else:
                    maps = _from_gradients(method, a, grads)
                chunks[method].append(normalize_maps(maps).to(x.device))
    return {m: torch.cat(c) for m, c in chunks.items()}


ALIGN_SLICES = 256
"""Slices used to estimate a classifier's map displacement (`flip_displacement`)."""


def _peaks(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(row, col) in input pixels of each map's maximum after bilinear upsampling to `size`: (n, h, w) -> (n, 2)."""
    up = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0].flatten(1)
    k = up.argmax(1)
    return torch.stack([k // size[1], k % size[1]], 1).double()


def flip_displacement(model: nn.Module, x: Tensor, batch_size: int = 128) -> tuple[float, float]:
    """How far (rows, cols; input pixels) a classifier's maps sit from the evidence, measured without masks.

    GAP is blind to where the evidence sits, so a network may learn to displace its feature maps by a constant d.
    The map of a flipped slice, flipped back, is then displaced by d mirrored: its peak lies 2 d_x (left-right
    flip) or 2 d_y (up-down flip) from the peak of the unflipped map. d is half the median of those differences
    over the slices x; `shift_maps(maps, d, S)` undoes it. CAM of GAP + FC heads, GradCAM of the others.
    """
    method = "cam" if has_global_pool_fc(model) else "gradcam"
    size = tuple(x.shape[-2:])
    with eval_mode(model):
        peaks = [_peaks(torch.cat([compute_cams(model, xb.flip(dims), method, batch_size=batch_size).flip(dims)
                                   if dims else compute_cams(model, xb, method, batch_size=batch_size)
                                   for xb in x.split(batch_size)]), size)
                 for dims in ((), (-2,), (-1,))]
    return (float((peaks[0][:, 0] - peaks[1][:, 0]).median()) / 2,
            float((peaks[0][:, 1] - peaks[2][:, 1]).median()) / 2)


def shift_maps(maps: Tensor, shift: Sequence[float], size: int) -> Tensor:
    """Maps (n, h, w) of S x S slices moved back by `shift` (rows, cols; input pixels): out(p) = maps(p + shift).

    Bilinear between cells, edge cells repeated beyond the border; shift (0, 0) returns `maps` itself.
    """
    if not any(shift):
        return maps
    n, h, w = maps.shape
    theta = torch.tensor([[1.0, 0.0, 2.0 * shift[1] / size], [0.0, 1.0, 2.0 * shift[0] / size]],
                         dtype=torch.float32, device=maps.device).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(maps[:, None].float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0].to(maps.dtype)


def cams_for_slices(model: nn.Module, store: Any, positions: Sequence[int] | np.ndarray, methods: Sequence[str],
                    batch_size: int = 64, device: torch.device | str = "cpu", topk: int = 0,
                    shift: Sequence[float] = (0.0, 0.0), scorecam_weights: str = "softmax") -> dict[str, np.ndarray]:
    """{method: float16 (n,h,w)} for store index rows `positions`, streamed from the SliceStore (notebook 03).

    The model is moved to `device`. An empty `positions` gives (0,h,w) arrays (shape probed on the first slice).
    A non-zero `shift` (the classifier's `flip_displacement`) is undone on every map, which is then re-normalised.
    """
    positions = np.asarray(positions, dtype=np.int64)
    model.to(device)
    n = len(positions)
    out: dict[str, np.ndarray] = {}
    starts = range(0, n, batch_size) if n else [None]
    options = {"topk": topk, "batch_size": batch_size, "scorecam_weights": scorecam_weights}
    shared = [m for m in methods if m in SHARED_METHODS]
    for start in progress(starts, desc="CAMs", unit="batch", disable=not n):
        chunk = positions[start:start + batch_size] if n else np.zeros(1, dtype=np.int64)
        x = torch.from_numpy(np.ascontiguousarray(store.read(chunk)[0])).to(device)
        together = compute_maps(model, x, shared, **options) if shared else {}
        for method in methods:
            maps = together[method] if method in together else compute_cams(model, x, method, **options)
            if any(shift):
                maps = normalize_maps(shift_maps(maps, shift, x.shape[-1]))
            maps = maps.cpu().numpy()
            if method not in out:
                out[method] = np.empty((n, *maps.shape[1:]), dtype=np.float16)
            if n:
                out[method][start:start + len(chunk)] = maps
    return out


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to a temporary name, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def save_cams(directory: str | os.PathLike[str], index: pd.DataFrame, cams: dict[str, np.ndarray]) -> None:
    """Write <directory>/index.csv and <directory>/<method>.npy (float16, aligned with index rows), atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for method, maps in cams.items():
        if len(maps) != len(index):
            raise ValueError(f"cams[{method!r}] has {len(maps)} maps but index.csv has {len(index)} rows")
        _save_npy_atomic(directory / f"{method}.npy", maps.astype(np.float16, copy=False))
    write_csv_atomic(directory / "index.csv", index)



def gated_rows(predictions: pd.DataFrame, store_index: pd.DataFrame, threshold: float = 0.5,
               tumor_slices: bool = False) -> pd.DataFrame:
    """Val/test slices the classifier calls tumorous (prob >= threshold) with their store row `position` (nb 03).

    With `tumor_slices`, also every truly tumorous slice (for the perfect-gate diagnostic of notebook 04).
    """
    keep = predictions["prob"] >= threshold
    if tumor_slices:
        keep |= predictions["label"] > 0
    gated = predictions[keep].reset_index(drop=True)
    return gated.assign(position=index_positions(store_index, gated, "classifier/predictions.csv"))


def lesion_peaks(masks: np.ndarray, maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per ground-truth lesion (8-connected in-plane component): slice row, voxels, peak of each map on it.

    Maps (n,h,w) are upscaled by nearest neighbour to the mask size (as Algorithm 1 does) (notebook 03).
    """
    masks = np.asarray(masks, dtype=bool)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # components never connect across slices
    labels, count = ndimage.label(masks, structure)
    ids = np.arange(1, count + 1)
    rows = np.broadcast_to(np.arange(len(masks))[:, None, None], masks.shape)
    out = pd.DataFrame({"row": ndimage.maximum(rows, labels, ids).astype(np.int64),
                        "voxels": ndimage.sum_labels(masks, labels, ids).astype(np.int64)})
    for method, m in maps.items():
        out[method] = ndimage.maximum(upscale_nearest(np.asarray(m, dtype=np.float32), masks.shape[-1]), labels, ids)
    return out
