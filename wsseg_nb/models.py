"""The slice classifier (VGG16 with GAP + one FC, so that classic CAM applies; or the authors' 7x7 pool + FC stack)
and the supervised U-Net baseline."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

SUV_CLIP = 20.0
"""Raw SUV above this value is clipped before scaling (bladder and brain may exceed it; lesions mostly do not)."""
SUV_DIV = 5.0
HU_CLIP = (-1000.0, 1000.0)
HU_DIV = 1000.0
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
"""torchvision's VGG16 "D" layout: five blocks of 3x3 convs, each followed there by a 2x2 max-pool."""
POOLS = {"late": (2, 3, 4), "early": (1, 2, 3)}
"""The blocks followed by a max-pool at stride 8: 'late' drops the first and the last pool (the paper, Sec. 2.2.1);
'early' drops the pools after blocks 4 and 5 instead (the same S/8 map, blocks 2-4 on a quarter of the pixels)."""


def vgg16_weights_path(norm: str = "none") -> Path:
    """Where torchvision's ImageNet VGG16 (-BN) checkpoint is (or must be put): <torch hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(_imagenet_weights(norm).url).name


class InputScale(nn.Module):
    """Raw [SUV, HU] -> network input: SUV clipped to [0, 20] / 5 -> [0, 4]; HU clipped to [-1000, 1000] / 1000 -> [-1, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        suv = x[:, :1].clamp(0.0, SUV_CLIP) / SUV_DIV
        hu = x[:, 1:2].clamp(*HU_CLIP) / HU_DIV
        return torch.cat([suv, hu], dim=1)


def _width(channels: int, width: float) -> int:
    """Channels scaled by the width multiplier (at least 4)."""
    return max(4, round(channels * width))


def init_first_conv_from_rgb(weight: torch.Tensor, bias: torch.Tensor, in_channels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """First-conv weights for `in_channels` inputs from RGB ones: every channel = mean over R, G, B times 3 / in_channels."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"first conv weight: expected shape (out, 3, k, k), got {tuple(weight.shape)}")
    mean = weight.mean(dim=1, keepdim=True) * (3.0 / in_channels)
    return mean.repeat(1, in_channels, 1, 1).clone(), bias.clone()


def imagenet_features_state(state_dict: dict[str, torch.Tensor], norm: str = "none",
                            stride: int = 8, pools: str = "late") -> dict[str, torch.Tensor]:
    """torchvision vgg16 (or vgg16_bn) state dict -> `VGG16CAM.features` state dict (indices remapped, 2-channel conv)."""
    convs = sorted({int(k.split(".")[1]) for k in state_dict
                    if k.startswith("features.") and state_dict[k].ndim == 4})
    if len(convs) != 13:
        raise ValueError(f"VGG16 state dict: expected 13 conv layers under 'features.', found {len(convs)}")
    ours = [i for i, layer in enumerate(_vgg_layers(1.0, 2, norm, stride, pools)) if isinstance(layer, nn.Conv2d)]
    out: dict[str, torch.Tensor] = {}
    for src, dst in zip(convs, ours):
        w, b = state_dict[f"features.{src}.weight"], state_dict[f"features.{src}.bias"]
        if src == convs[0]:
            w, b = init_first_conv_from_rgb(w, b)
        out[f"{dst}.weight"], out[f"{dst}.bias"] = w, b
        if norm == "batch":  # vgg16_bn: the BatchNorm follows its conv in both layouts
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                out[f"{dst + 1}.{name}"] = state_dict[f"features.{src + 1}.{name}"]
    return out


def _imagenet_weights(norm: str) -> Any:
    """torchvision's ImageNet weights enum of VGG16 (norm='none') or VGG16-BN (norm='batch')."""
    from torchvision.models import VGG16_BN_Weights, VGG16_Weights

    return VGG16_BN_Weights.IMAGENET1K_V1 if norm == "batch" else VGG16_Weights.IMAGENET1K_V1


def _load_imagenet_state(required: bool, norm: str = "none") -> dict[str, torch.Tensor] | None:
    """The ImageNet VGG16 state dict from the torch hub cache (downloaded there if possible); None if unavailable."""
    weights = _imagenet_weights(norm)
    path = vgg16_weights_path(norm)
    try:
        if path.exists():
            return torch.load(path, map_location="cpu", weights_only=True)
        return weights.get_state_dict(progress=True)
    except Exception as err:  # offline, corrupt file, hash mismatch: all mean "no weights"
        message = f"ImageNet VGG16 weights unavailable ({type(err).__name__}: {err}); put {weights.url} at {path}"
        if required:
            raise RuntimeError(message) from err
        warnings.warn(message + "; training from scratch (pretrained='auto')", stacklevel=3)
        return None


NORMS = ("none", "batch")
STRIDES = (8, 4)
HEADS = ("gap_fc", "gmp_fc", "authors")
"""Classifier heads: GAP + one FC (the paper's text, Sec. 2.2.1), global max pool + one FC, or torchvision's VGG16
head (the authors' code)."""
AUTHORS_POOL = 7
"""torchvision's VGG16 pools the last feature map to 7x7 before its FC stack (25088 -> 4096 -> 4096 -> classes)."""


def _vgg_layers(width: float, in_channels: int, norm: str = "none", stride: int = 8,
                pools: str = "late") -> list[nn.Module]:
    """The VGG16 conv stack (ReLU after every conv, BatchNorm before it with norm='batch') with torchvision's init.

    Stride 8 keeps three max-pools (`POOLS`; the paper's 32x32 map from 256x256); stride 4 also drops the last of
    them (a 32x32 map from 128x128, the paper's 16 mm cells at the demo's 4 mm pixels).
    """
    if norm not in NORMS or stride not in STRIDES or pools not in POOLS:
        raise ValueError(f"VGG16: norm must be one of {NORMS}, stride one of {STRIDES} and pools one of "
                         f"{list(POOLS)}, got {norm!r}, {stride!r}, {pools!r}")
    pooled = POOLS[pools][:2] if stride == 4 else POOLS[pools]
    layers: list[nn.Module] = []
    channels = in_channels
    for block, convs in enumerate(VGG16_BLOCKS, start=1):
        for out in convs:
            conv = nn.Conv2d(channels, _width(out, width), 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision.models.VGG
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(conv.out_channels)] if norm == "batch" else [conv]
            layers.append(nn.ReLU(inplace=True))
            channels = conv.out_channels
        if block in pooled:
            layers.append(nn.MaxPool2d(2, 2))
    return layers


class VGG16CAM(nn.Module):
    """VGG16 without the first and last max-pool (S -> S/8 map; S/4 with stride 4) and a head to a tumor logit (nb 02).

    pools='early' keeps the pool after block 1 and drops the one after block 4 instead (`POOLS`): the same map size.

    head='gap_fc' (the paper's text): GAP and one FC, where classic CAM applies. head='gmp_fc': global max pool and
    one FC (Oquab et al. 2015), logit = sum_k v_k max A_k + b, so the same CAM map but only each channel's peak cell
    is pooled. head='authors' (their code):
    torchvision's adaptive 7x7 average pool and FC stack (Linear-ReLU-Dropout twice, then Linear to one logit),
    4096 hidden units scaled by the width; classic CAM is undefined there. norm='batch' is torchvision's vgg16_bn
    layout (BatchNorm after every conv), the VGG16 variant with ImageNet weights.
    """

    def __init__(self, width: float = 1.0, pretrained: str = "none", norm: str = "none", stride: int = 8,
                 head: str = "gap_fc", pools: str = "late") -> None:
        super().__init__()
        if pretrained not in ("none", "auto", "true"):
            raise ValueError(f"pretrained must be 'none', 'auto' or 'true', got {pretrained!r}")
        if pretrained == "true" and width != 1.0:
            raise ValueError(f"pretrained='true' needs vgg_width 1.0 (ImageNet weights are full width), got {width}")
        if head not in HEADS:
            raise ValueError(f"VGG16 head must be one of {HEADS}, got {head!r}")
        self.scale = InputScale()
        self.features = nn.Sequential(*_vgg_layers(width, 2, norm, stride, pools))
        self.head = head
        channels = _width(512, width)
        if head in ("gap_fc", "gmp_fc"):
            self.pool = nn.AdaptiveAvgPool2d(1) if head == "gap_fc" else nn.AdaptiveMaxPool2d(1)
            self.fc = nn.Linear(channels, 1)
        else:
            hidden = _width(4096, width)
            self.pool = nn.AdaptiveAvgPool2d(AUTHORS_POOL)
            self.fc = nn.Sequential(nn.Linear(channels * AUTHORS_POOL ** 2, hidden), nn.ReLU(True), nn.Dropout(0.5),
                                    nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(hidden, 1))
        self.pretrained = False
        if pretrained != "none" and width == 1.0:
            state = _load_imagenet_state(required=pretrained == "true", norm=norm)
            if state is not None:
                self.features.load_state_dict(imagenet_features_state(state, norm, stride, pools))
                if head == "authors":  # their code keeps the ImageNet FC layers and replaces only the last one
                    for i in (0, 3):
                        self.fc[i].load_state_dict({k: state[f"classifier.{i}.{k}"] for k in ("weight", "bias")})
                self.pretrained = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (B, 2, S, S) [SUV, HU] -> tumor logit (B,)."""
        return self.fc(self.pool(self.features(self.scale(x))).flatten(1)).squeeze(1)


@torch.no_grad()
def lsuv_(model: VGG16CAM, x: torch.Tensor) -> VGG16CAM:
    """Data-dependent init (LSUV, Mishkin & Matas 2016): each conv's weights rescaled in place so that its output
    has unit variance on the batch x (raw [SUV, HU] slices), then the FC so that the logits' standard deviation
    over the batch is 1. With torchvision's init the plain stack's logits barely vary (std ~1e-3) at the start."""
    if model.head == "authors":
        raise ValueError("LSUV init rescales the single FC of head 'gap_fc' or 'gmp_fc'; this classifier's head is "
                         "'authors'")
    h = model.scale(x)
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            std = float(layer(h).std())
            if std > 0:
                layer.weight /= std
                layer.bias /= std
        h = layer(h)
    std = float((model.pool(h).flatten(1) @ model.fc.weight[0]).std())
    if std > 0:
        model.fc.weight /= std
    return model


def _double_conv(cin: int, cout: int, norm: str = "none") -> nn.Sequential:
    """Two 3x3 conv + ReLU; no normalisation as the authors' U-Net, or BatchNorm after each conv (norm='batch')."""
    layers: list[nn.Module] = []
    for a, b in ((cin, cout), (cout, cout)):
        layers += [nn.Conv2d(a, b, 3, padding=1), *([nn.BatchNorm2d(b)] if norm == "batch" else []), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """The authors' U-Net: double convs 64/128/256/512, three max-pools, bilinear upsampling + skips, 1x1 output (notebook 05)."""

    def __init__(self, width: float = 1.0, norm: str = "none") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"UNet: norm must be one of {NORMS}, got {norm!r}")
        c1, c2, c3, c4 = (_width(c, width) for c in (64, 128, 256, 512))
        self.scale = InputScale()
        pairs = ((2, c1), (c1, c2), (c2, c3), (c3, c4))
        self.down = nn.ModuleList([_double_conv(a, b, norm) for a, b in pairs])
        self.up = nn.ModuleList([_double_conv(a, b, norm) for a, b in ((c4 + c3, c3), (c3 + c2, c2), (c2 + c1, c1))])
        self.out = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (B, 2, H, W) [SUV, HU] with H, W divisible by 8 -> lesion logits (B, 1, H, W)."""
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"UNet input: height and width must be divisible by 8, got {tuple(x.shape[-2:])}")
        h = self.scale(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(F.max_pool2d(h, 2) if i else h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.out(h)
