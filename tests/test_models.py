"""VGG16-CAM and U-Net: shapes, the 2-channel first-conv rule, ImageNet weight handling (never downloads), scaling."""
from __future__ import annotations

import pytest
import torch
import torchvision
import torch.nn.functional as F
from torchvision.models import VGG16_Weights

from wsseg_nb import models
from wsseg_nb.models import lsuv_, UNet, VGG16CAM, imagenet_features_state, init_first_conv_from_rgb


def _convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_full_width_feature_map_is_512x32x32_on_256_input() -> None:
    model = VGG16CAM(width=1.0, pretrained="none").eval()
    x = torch.zeros(1, 2, 256, 256)
    with torch.no_grad():
        a = model.features(model.scale(x))
        logit = model(x)
    assert a.shape == (1, 512, 32, 32)
    assert logit.shape == (1,)
    assert isinstance(model.features[-1], torch.nn.ReLU)  # ends with the ReLU of conv5_3
    # the first max-pool (after conv1_2) is gone: pools follow conv2_2, conv3_3, conv4_3 (indices 8, 15, 22)
    assert [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)] == [8, 15, 22]
    assert len(_convs(model.features)) == 13 and _convs(model.features)[0].in_channels == 2
    assert isinstance(model.pool, torch.nn.AdaptiveAvgPool2d)
    assert (model.fc.in_features, model.fc.out_features) == (512, 1)
    # torchvision VGG16 convs: 14,714,688 params; 2 input channels drop 64*1*9 = 576; FC 512 + 1
    assert sum(p.numel() for p in model.parameters()) == 14_714_688 - 576 + 513


def test_early_pools_keep_the_map_size_and_the_imagenet_mapping() -> None:
    """'early' pools after conv1_2, conv2_2 and conv3_3 (indices 4, 9, 16); stride 4 keeps the first two of either."""
    pools = {}
    for layout in ("late", "early"):
        for stride in (8, 4):
            model = VGG16CAM(width=1 / 16, stride=stride, pools=layout)
            pools[layout, stride] = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
            with torch.no_grad():
                assert model.features(torch.zeros(1, 2, 64, 64)).shape == (1, 32, 64 // stride, 64 // stride)
    assert pools == {("late", 8): [8, 15, 22], ("late", 4): [8, 15], ("early", 8): [4, 9, 16], ("early", 4): [4, 9]}
    reference = torchvision.models.vgg16(weights=None).state_dict()
    model = VGG16CAM(pools="early")
    model.features.load_state_dict(imagenet_features_state(reference, pools="early"))
    assert torch.equal(_convs(model.features)[2].weight, reference["features.5.weight"])  # conv2_1 after the pool
    with pytest.raises(ValueError, match="pools one of"):
        VGG16CAM(width=1 / 16, pools="middle")


def test_width_multiplier_and_forward_composition() -> None:
    model = VGG16CAM(width=1 / 16).eval()
    assert [c.out_channels for c in _convs(model.features)] == [4, 4, 8, 8, 16, 16, 16, 32, 32, 32, 32, 32, 32]
    x = torch.rand(3, 2, 64, 64) * torch.tensor([10.0, 1000.0]).view(1, 2, 1, 1)
    with torch.no_grad():
        a = model.features(model.scale(x))
        assert a.shape == (3, 32, 8, 8)
        expected = model.fc(a.mean(dim=(2, 3))).squeeze(1)
        torch.testing.assert_close(model(x), expected)


def test_input_scaling_maps_raw_zero_to_zero_and_clips() -> None:
    x = torch.tensor([[0.0, 2.5, 25.0, -1.0], [0.0, 500.0, -2000.0, 3000.0]]).view(1, 2, 1, 4)
    out = models.InputScale()(x)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.5, 4.0, 0.0]))
    torch.testing.assert_close(out[0, 1, 0], torch.tensor([0.0, 0.5, -1.0, 1.0]))


def test_first_conv_from_rgb_is_scaled_channel_mean() -> None:
    weight = torch.zeros(2, 3, 1, 1)
    weight[0, :, 0, 0] = torch.tensor([1.0, 2.0, 3.0])
    weight[1, :, 0, 0] = torch.tensor([-3.0, 0.0, 6.0])
    bias = torch.tensor([0.5, -0.5])
    w2, b2 = init_first_conv_from_rgb(weight, bias)
    # mean(1, 2, 3) * 3/2 = 3; mean(-3, 0, 6) * 3/2 = 1.5
    assert torch.equal(w2[:, :, 0, 0], torch.tensor([[3.0, 3.0], [1.5, 1.5]]))
    assert torch.equal(b2, bias)
    # the same value c in both input channels gives the same response as c in all three RGB channels
    w = torch.randn(8, 3, 3, 3)
    w2, _ = init_first_conv_from_rgb(w, torch.zeros(8))
    torch.testing.assert_close(w2.sum(dim=1), w.sum(dim=1))
    with pytest.raises(ValueError, match="expected shape"):
        init_first_conv_from_rgb(torch.zeros(8, 2, 3, 3), torch.zeros(8))


def test_imagenet_state_dict_maps_onto_features() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.vgg16(weights=None).state_dict()
    model = VGG16CAM()
    model.features.load_state_dict(imagenet_features_state(reference))
    ours = _convs(model.features)
    assert torch.equal(ours[0].weight, init_first_conv_from_rgb(reference["features.0.weight"], reference["features.0.bias"])[0])
    assert torch.equal(ours[1].weight, reference["features.2.weight"])
    assert torch.equal(ours[-1].weight, reference["features.28.weight"])
    assert torch.equal(ours[-1].bias, reference["features.28.bias"])


def test_pretrained_true_offline_names_the_weights_path(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    target = tmp_path / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(RuntimeError, match=str(target)):
        VGG16CAM(pretrained="true")
    with pytest.warns(UserWarning, match="training from scratch"):
        assert not VGG16CAM(pretrained="auto").pretrained
    with pytest.raises(ValueError, match="full width"):
        VGG16CAM(width=0.5, pretrained="true")
    with pytest.raises(ValueError, match="pretrained must be"):
        VGG16CAM(pretrained="yes")


def test_pretrained_true_loads_the_cached_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    target = tmp_path / "checkpoints" / "vgg16-397923af.pth"
    target.parent.mkdir()
    reference = {k: v for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    torch.save(reference, target)
    model = VGG16CAM(pretrained="true")
    assert model.pretrained
    assert torch.equal(_convs(model.features)[-1].weight, reference["features.28.weight"])


@pytest.mark.parametrize("size", [(8, 8), (32, 48), (64, 24)])
def test_unet_output_matches_input_size(size: tuple[int, int]) -> None:
    net = UNet(width=1 / 16).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 2, *size)).shape == (2, 1, *size)


def test_unet_structure_and_bad_sizes() -> None:
    net = UNet()
    assert [b[0].out_channels for b in net.down] == [64, 128, 256, 512]
    assert [b[0].out_channels for b in net.up] == [256, 128, 64]
    assert net.up[0][0].in_channels == 512 + 256  # bilinear upsampling + skip
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.GroupNorm)) for m in net.modules())
    assert (net.out.kernel_size, net.out.out_channels) == ((1, 1), 1)
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet(width=1 / 16)(torch.zeros(1, 2, 36, 32))
    bn = UNet(width=1 / 16, norm="batch")
    layers = [type(m).__name__ for m in bn.down[0]]
    assert layers == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]  # BN after each conv
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 14
    with pytest.raises(ValueError, match="norm must be one of"):
        UNet(norm="group")


def test_lsuv_gives_every_conv_unit_output_variance_and_unit_logit_spread() -> None:
    torch.manual_seed(0)
    model = VGG16CAM(width=1 / 16)
    x = torch.rand(16, 2, 32, 32) * torch.tensor([8.0, 2000.0]).view(1, 2, 1, 1) - torch.tensor([0.0, 1000.0]).view(1, 2, 1, 1)
    lsuv_(model, x)
    h = model.scale(x)
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, torch.nn.Conv2d):
                assert float(layer(h).std()) == pytest.approx(1.0, rel=1e-4)
            h = layer(h)
        assert float(model(x).std()) == pytest.approx(1.0, rel=1e-4)


def test_authors_head_is_torchvisions_pool_and_fc_stack() -> None:
    model = VGG16CAM(width=1 / 8, head="authors").eval()
    assert model.pool.output_size == models.AUTHORS_POOL == 7
    linears = [m for m in model.fc if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64 * 49, 512), (512, 512), (512, 1)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.fc) == 2
    x = torch.rand(3, 2, 64, 64) * 4
    feats = model.features(model.scale(x))
    by_hand = linears[2](linears[1](linears[0](F.adaptive_avg_pool2d(feats, 7).flatten(1)).relu()).relu())[:, 0]
    torch.testing.assert_close(model(x), by_hand)  # eval mode: dropout is the identity
    with pytest.raises(ValueError, match="head must be one of"):
        VGG16CAM(width=1 / 8, head="gap")
    with pytest.raises(ValueError, match="LSUV"):
        lsuv_(model, x)


def test_authors_head_keeps_the_imagenet_fc_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = torchvision.models.vgg16(weights=None).state_dict()
    monkeypatch.setattr(models, "_load_imagenet_state", lambda required, norm="none": reference)
    model = VGG16CAM(pretrained="true", head="authors")
    assert model.pretrained
    assert torch.equal(model.fc[0].weight, reference["classifier.0.weight"])  # 25088 = 512 x 7 x 7 inputs
    assert torch.equal(model.fc[3].bias, reference["classifier.3.bias"])
    assert model.fc[6].out_features == 1  # only the last layer is new
