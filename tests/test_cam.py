"""CAM methods: exact identities for GAP + FC, a slow ScoreCAM reference, batching, hooks and edge cases."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsseg_nb import cam
from wsseg_nb.cam import compute_cams, normalize_maps

ATOL = 1e-5


class Scale(nn.Module):
    """Raw [SUV, HU] -> network input; raw 0 stays 0 (as VGG16CAM.scale)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor([0.2, 1e-3], device=x.device)[None, :, None, None]


class TinyCAMNet(nn.Module):
    """VGG16CAM's interface in miniature: .scale, .features (ends in ReLU), .pool (GAP), .fc (Linear(K, 1))."""

    def __init__(self, k: int = 6, bias: bool = True, dead: int = 2) -> None:
        super().__init__()
        self.scale = Scale()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1, bias=bias), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, k, 3, padding=1, bias=bias), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(k, 1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(2.0, -1.0, k)[None])  # mixed signs, negatives on live channels
            last = self.features[6]
            last.weight[:dead] = 0.0  # `dead` channels are all zero for every input
            if bias:
                last.bias[:dead] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(self.scale(x))).flatten(1))[:, 0]


@pytest.fixture(scope="module")
def model() -> TinyCAMNet:
    torch.manual_seed(0)
    return TinyCAMNet()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    suv = torch.rand(5, 1, 32, 32, generator=g) * 8
    hu = torch.rand(5, 1, 32, 32, generator=g) * 2000 - 1000
    return torch.cat([suv, hu], 1)


def last_acts(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.features(model.scale(x))


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_normalize_maps_range_and_constant_maps() -> None:
    m = torch.stack([torch.arange(4.0).view(2, 2) + 3, torch.zeros(2, 2), torch.full((2, 2), 7.0)])
    out = normalize_maps(m)
    assert torch.equal(out[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    assert torch.equal(out[1:], torch.zeros(2, 2, 2))


def raw_cam(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("k,bkhw->bhw", model.fc.weight[0].detach(), last_acts(model, x))  # Eq. 1


def test_cam_is_eq1(model: nn.Module, x: torch.Tensor) -> None:
    by_hand = raw_cam(model, x)
    assert (by_hand < 0).any()  # Eq. 1 has no ReLU: negative evidence is kept and min-max normalised
    out = compute_cams(model, x, "cam")
    assert out.shape == (5, 8, 8)
    torch.testing.assert_close(out, normalize_maps(by_hand), atol=ATOL, rtol=0)
    assert out.flatten(1).amin(1).eq(0).all() and out.flatten(1).amax(1).eq(1).all()


def test_gradcam_equals_cam_with_relu_for_gap_fc(model: nn.Module, x: torch.Tensor) -> None:
    out = compute_cams(model, x, "gradcam")
    torch.testing.assert_close(out, normalize_maps(raw_cam(model, x).relu()), atol=ATOL, rtol=0)
    assert (out - compute_cams(model, x, "cam")).abs().max() > 1e-2  # the ReLU is the only difference


def test_layercam_equals_cam_with_relu_of_fc_weights(model: nn.Module, x: torch.Tensor) -> None:
    a = last_acts(model, x)
    by_hand = torch.einsum("k,bkhw->bhw", model.fc.weight[0].detach().relu(), a).relu()
    out = compute_cams(model, x, "layercam")
    torch.testing.assert_close(out, normalize_maps(by_hand), atol=ATOL, rtol=0)
    assert not torch.allclose(out, compute_cams(model, x, "gradcam"), atol=1e-3)  # relu(v) matters: v has negatives


def gradcampp_by_hand(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # GAP + FC: g = v_k / N everywhere, so alpha = 1 / (2 + g * N * mean(A_k)) = 1 / (2 + v_k mean(A_k)) and
    # w_k = sum_hw alpha * relu(v_k / N) = relu(v_k) / (2 + v_k mean(A_k)).
    a = last_acts(model, x)
    v = model.fc.weight[0].detach()
    w = v.relu()[None] / (2 + v[None] * a.mean((2, 3)))
    return normalize_maps(torch.einsum("bk,bkhw->bhw", w, a).relu())


@pytest.mark.parametrize("fc_scale", [1.0, 1e-4])
def test_gradcampp_closed_form_without_epsilon(x: torch.Tensor, fc_scale: float) -> None:
    torch.manual_seed(0)
    net = TinyCAMNet()
    with torch.no_grad():
        net.fc.weight.mul_(fc_scale)  # 1e-4: gradients ~ 2e-6, g^2 ~ 4e-12, far below a 1e-7 epsilon
    torch.testing.assert_close(compute_cams(net, x, "gradcampp"), gradcampp_by_hand(net, x), atol=ATOL, rtol=0)


def test_gradcampp_weights_hand_case() -> None:
    acts = torch.tensor([[[[1.0, 3.0]], [[2.0, 2.0]], [[5.0, 0.0]]]])  # (1, 3, 1, 2): sum_ij A = 4, 4, 5
    grads = torch.tensor([[[[0.5, 0.5]], [[-1.0, 0.0]], [[0.0, 0.25]]]])
    # k=0: alpha = 1/(2 + 0.5*4) = 1/4 at both, w = 2 * 1/4 * 0.5; k=1: relu(g) = 0;
    # k=2: alpha = 1/(2 + 0.25*5) at g = 0.25, w = 0.25 / 3.25
    expected = torch.tensor([[0.25, 0.0, 0.25 / 3.25]])
    torch.testing.assert_close(cam.gradcampp_weights(acts, grads), expected)


def scorecam_reference(model: nn.Module, x: torch.Tensor, skip_zero: bool, topk: int = 0,
                       weights_from: str = "softmax") -> torch.Tensor:
    """One slice, one channel at a time, with the definitions written out (softmax: Eq. 6; probability: the
    ScoreCAM authors' code, each channel times the class probability of its masked input)."""
    maps = []
    with torch.no_grad():
        for xi in x:
            z = model.scale(xi[None])
            a = model.features(z)[0]
            order = a.flatten(1).var(1).argsort(descending=True)
            channels = [k for k in range(a.shape[0]) if not (skip_zero and a[k].eq(0).all())]
            if topk:
                channels = [k for k in order[:topk].tolist() if a[k].ne(0).any()]
            scores = []
            for k in channels:
                up = F.interpolate(a[k][None, None], size=z.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
                span = up.max() - up.min()
                mask = (up - up.min()) / span if span > 0 else torch.zeros_like(up)
                scores.append(cam.logit_from_scaled(model, z * mask)[0])  # tumor logit
            if not scores:
                weights = torch.zeros(0)
            elif weights_from == "softmax":
                weights = torch.softmax(torch.stack(scores), 0)
            else:
                weights = 1 / (1 + torch.exp(-torch.stack(scores)))  # p = sigmoid(logit), the 2-class softmax
            maps.append((weights[:, None, None] * a[channels]).sum(0).relu() if channels else torch.zeros(a.shape[1:]))
    return normalize_maps(torch.stack(maps))


@pytest.mark.parametrize("skip_zero", [False, True])
def test_scorecam_matches_slow_reference(model: nn.Module, x: torch.Tensor, skip_zero: bool) -> None:
    assert last_acts(model, x)[:, :2].eq(0).all()  # the fixture really has all-zero channels
    out = compute_cams(model, x, "scorecam", batch_size=7)
    torch.testing.assert_close(out, scorecam_reference(model, x, skip_zero), atol=ATOL, rtol=0)


def test_scorecam_topk(model: nn.Module, x: torch.Tensor) -> None:
    exact = compute_cams(model, x, "scorecam")
    torch.testing.assert_close(compute_cams(model, x, "scorecam", topk=6), exact, atol=ATOL, rtol=0)
    top2 = compute_cams(model, x, "scorecam", topk=2)
    torch.testing.assert_close(top2, scorecam_reference(model, x, True, topk=2), atol=ATOL, rtol=0)
    assert (top2 - exact).abs().max() > 1e-3


@pytest.mark.parametrize("skip_zero", [False, True])
def test_scorecam_probability_weights_match_slow_reference(model: nn.Module, x: torch.Tensor, skip_zero: bool) -> None:
    out = compute_cams(model, x, "scorecam", batch_size=7, scorecam_weights="probability")
    torch.testing.assert_close(out, scorecam_reference(model, x, skip_zero, weights_from="probability"),
                               atol=ATOL, rtol=0)
    top2 = compute_cams(model, x, "scorecam", topk=2, scorecam_weights="probability")
    torch.testing.assert_close(top2, scorecam_reference(model, x, True, topk=2, weights_from="probability"),
                               atol=ATOL, rtol=0)
    torch.manual_seed(0)
    confident = TinyCAMNet()
    with torch.no_grad():
        confident.fc.weight.mul_(100)  # masked logits that differ by units, as for a trained classifier
    softmax, probability = (compute_cams(confident, x, "scorecam", scorecam_weights=w) for w in cam.SCORECAM_WEIGHTS)
    assert (probability - softmax).abs().max() > 0.1  # another map than Eq. 6's
    shared = cam.compute_maps(model, x, ["cam", "scorecam"], batch_size=3, scorecam_weights="probability")
    assert torch.equal(shared["scorecam"], compute_cams(model, x, "scorecam", batch_size=3,
                                                        scorecam_weights="probability"))


def test_scorecam_weights_refused_unless_known(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="scorecam_weights 'sigmoid'"):
        compute_cams(model, x, "scorecam", scorecam_weights="sigmoid")
    with pytest.raises(ValueError, match="scorecam_weights"):
        cam.compute_maps(model, x, ["scorecam"], scorecam_weights="")


def test_single_logit_softmax_pitfall(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyCAMNet()
    with torch.no_grad():
        model.fc.weight.mul_(1000)  # masked images whose logits differ by units, as for a trained classifier
    a = last_acts(model, x[:1])
    masked_logits = torch.randn(a.shape[1], 1)  # one logit per masked image
    weights = torch.softmax(masked_logits, dim=1)[:, 0]  # softmax over the single class logit
    assert torch.equal(weights, torch.ones(a.shape[1]))  # every channel gets the same weight ...
    uniform = normalize_maps((weights[:, None, None] * a[0]).sum(0).relu()[None])
    torch.testing.assert_close(uniform, normalize_maps(a.sum(1)), atol=ATOL, rtol=0)  # ... = plain channel sum
    assert (uniform - compute_cams(model, x[:1], "scorecam")).abs().max() > 1e-2  # not ScoreCAM


@pytest.mark.parametrize("method", cam.METHODS)
def test_map_does_not_depend_on_batch(model: nn.Module, x: torch.Tensor, method: str) -> None:
    together = compute_cams(model, x, method, batch_size=5)
    alone = torch.cat([compute_cams(model, xi[None], method) for xi in x])
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(compute_cams(model, x, method, batch_size=2), together, atol=ATOL, rtol=0)
    assert together.dtype == torch.float32 and 0 <= together.min() and together.max() <= 1


def test_compute_maps_shares_one_forward_and_equals_each_method_alone(model: nn.Module, x: torch.Tensor) -> None:
    calls = []
    handle = model.features.register_forward_hook(lambda *args: calls.append(1))
    try:
        together = cam.compute_maps(model, x, ["cam", "gradcam", "gradcampp", "layercam"], batch_size=2)
        assert len(calls) == 3  # 5 slices in chunks of 2: one forward per chunk for all four methods
        calls.clear()
        scored = cam.compute_maps(model, x, ["cam", "scorecam"], topk=2, batch_size=5)["scorecam"]
        assert len(calls) == 1 + 2  # one forward, then 5 slices x 2 channels masked in chunks of 5
    finally:
        handle.remove()
    for method, maps in together.items():
        assert torch.equal(maps, compute_cams(model, x, method, batch_size=2)), method
    assert torch.equal(scored, compute_cams(model, x, "scorecam", topk=2, batch_size=5))
    with pytest.raises(ValueError, match="layercam_fused"):
        cam.compute_maps(model, x, ["cam", "layercam_fused"])


def test_gradcam_at_inner_layer_matches_manual_split(model: nn.Module, x: torch.Tensor) -> None:
    conv = model.features[3]  # followed by ReLU(inplace=True): the recorded A must stay pre-activation
    with torch.enable_grad():
        a = model.features[:4](model.scale(x)).detach().requires_grad_(True)
        logits = model.fc(model.pool(model.features[4:](a.clone())).flatten(1))[:, 0]
        (g,) = torch.autograd.grad(logits.sum(), a)
    assert (a < 0).any()
    by_hand = normalize_maps((g.mean((2, 3))[:, :, None, None] * a.detach()).sum(1).relu())
    torch.testing.assert_close(compute_cams(model, x, "gradcam", target_layer=conv), by_hand, atol=ATOL, rtol=0)


def test_layercam_fused_shape_and_range(model: nn.Module, x: torch.Tensor) -> None:
    assert cam.block_ends(model) == [model.features[1], model.features[4], model.features]
    out = compute_cams(model, x, "layercam_fused")
    assert out.shape == (5, 32, 32) and out.min() >= 0 and out.flatten(1).amax(1).eq(1).all()
    only_last = compute_cams(model, x, "layercam_fused", target_layer=[model.features])
    expected = normalize_maps(torch.tanh(2 * compute_cams(model, x, "layercam")))  # LayerCAM Eq. 9 scaling
    torch.testing.assert_close(only_last, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", cam.METHODS)
def test_all_zero_input_gives_zero_map(method: str) -> None:
    net = TinyCAMNet(bias=False)  # without biases an all-zero slice has all-zero activations
    out = compute_cams(net, torch.zeros(3, 2, 32, 32), method)
    assert torch.equal(out, torch.zeros_like(out))


def test_no_hooks_survive_and_modes_restored(model: nn.Module, x: torch.Tensor,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    model.train()
    model.features[0].eval()  # a submodule's own flag must come back too
    for method in cam.METHODS:
        compute_cams(model, x, method)
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cams(model, x, "gradcam+++")
    with pytest.raises(ValueError, match="last conv layer"):
        compute_cams(model, x, "cam", target_layer=model.features[3])
    with pytest.raises(ValueError, match="did not run"):
        compute_cams(model, x, "gradcam", target_layer=nn.ReLU())

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("forced")

    monkeypatch.setattr(model.pool, "forward", boom)  # raises after the hook switched gradient recording on
    with pytest.raises(RuntimeError, match="forced"):
        compute_cams(model, x, "gradcam")
    monkeypatch.undo()
    assert torch.is_grad_enabled()
    with torch.no_grad():
        compute_cams(model, x, "layercam_fused")
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        torch.testing.assert_close(compute_cams(model, x, "gradcampp"), gradcampp_by_hand(model, x), atol=ATOL, rtol=0)
    monkeypatch.setattr(torch.autograd, "grad", boom)
    with pytest.raises(RuntimeError, match="forced"):
        compute_cams(model, x, "gradcampp")
    monkeypatch.setattr(cam, "logit_from_scaled", boom)
    with pytest.raises(RuntimeError, match="forced"):
        compute_cams(model, x, "scorecam")
    assert hooks_left(model) == 0
    assert model.training and not model.features[0].training and model.features[1].training
    model.eval()


def test_bad_inputs(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="non-empty batch"):
        compute_cams(model, x[0], "cam")
    with pytest.raises(ValueError, match="topk"):
        compute_cams(model, x, "scorecam", topk=-1)


class FakeStore:
    """SliceStore.read(positions) -> (x raw (n,2,S,S), mask)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.numpy()

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[positions], np.zeros((len(positions), 32, 32), np.uint8)


def test_cams_for_slices_streams_and_round_trips(model: nn.Module, x: torch.Tensor, tmp_path) -> None:
    positions = np.array([4, 0, 2])
    out = cam.cams_for_slices(model, FakeStore(x), positions, ["cam", "layercam_fused", "scorecam"], batch_size=2)
    assert out["cam"].dtype == np.float16 and out["cam"].shape == (3, 8, 8)
    np.testing.assert_allclose(out["scorecam"], compute_cams(model, x[positions], "scorecam").numpy(), atol=1e-3)
    np.testing.assert_allclose(out["layercam_fused"], compute_cams(model, x[positions], "layercam_fused").numpy(),
                               atol=1e-3)  # not a last-layer method: computed on its own, beside the shared pass
    empty = cam.cams_for_slices(model, FakeStore(x), [], ["gradcam"])
    assert empty["gradcam"].shape == (0, 8, 8)
    index = pd.DataFrame({"study_id": ["0007", "0007", "0009"], "slice": [4, 0, 2]})
    cam.save_cams(tmp_path, index, out)
    assert pd.read_csv(tmp_path / "index.csv", dtype={"study_id": str})["study_id"].tolist() == ["0007", "0007", "0009"]
    np.testing.assert_array_equal(np.load(tmp_path / "cam.npy"), out["cam"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.npy", "index.csv", "layercam_fused.npy",
                                                          "scorecam.npy"]  # no temp left
    with pytest.raises(ValueError, match="2 maps but index.csv has 3"):
        cam.save_cams(tmp_path, index, {"cam": out["cam"][:2]})


def test_gated_rows_positions_and_bad_rows() -> None:
    index = pd.DataFrame({"study_id": ["A", "A", "B"], "slice": [0, 1, 0], "split": ["val", "val", "test"]})
    preds = pd.DataFrame({"study_id": ["A", "A", "B"], "slice": [0, 1, 0], "split": ["val", "val", "test"],
                          "label": [0, 1, 1], "prob": [0.2, 0.5, 0.9]})
    rows = cam.gated_rows(preds, index)
    assert rows["position"].tolist() == [1, 2] and rows["prob"].tolist() == [0.5, 0.9]
    with pytest.raises(ValueError, match="study C slice 3 is not in store/index.csv"):
        cam.gated_rows(pd.concat([preds, preds.iloc[[2]].assign(study_id="C", slice=3)]), index)


def test_lesion_peaks_hand_case() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 0:2, 0:2] = True  # lesion 1 (4 voxels) in the top-left CAM cell
    masks[0, 6:8, 5:8] = True  # lesion 2 (6 voxels), bottom-right cells
    masks[1, 0:2, 0:2] = True  # same place on the next slice: a separate lesion
    maps = np.zeros((2, 2, 2), dtype=np.float16)
    maps[0] = [[0.9, 0.1], [0.2, 0.4]]
    maps[1] = [[0.3, 0.0], [0.0, 1.0]]
    out = cam.lesion_peaks(masks, {"m": maps})
    assert out["row"].tolist() == [0, 0, 1] and out["voxels"].tolist() == [4, 6, 4]
    np.testing.assert_allclose(out["m"], [0.9, 0.4, 0.3], atol=1e-3)


class TinyAuthorsNet(TinyCAMNet):
    """TinyCAMNet with the authors' kind of head: an adaptive 3x3 average pool and a two-layer MLP (no GAP + FC)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Sequential(nn.Linear(6 * 9, 5), nn.ReLU(), nn.Linear(5, 1))


def test_gradcam_under_a_nonlinear_head_matches_autograd_and_differs_from_cam(x: torch.Tensor) -> None:
    torch.manual_seed(3)
    net = TinyAuthorsNet().eval()
    a = last_acts(net, x).requires_grad_(True)
    logits = net.fc(net.pool(a).flatten(1))[:, 0]
    (g,) = torch.autograd.grad(logits.sum(), a)
    expected = normalize_maps((g.mean((2, 3))[:, :, None, None] * a).sum(1).relu())
    torch.testing.assert_close(compute_cams(net, x, "gradcam"), expected.detach(), atol=ATOL, rtol=0)
    assert not g.flatten(2).std(-1).eq(0).all()  # the gradient varies over the map: GradCAM is not ReLU(CAM)
    assert not cam.has_global_pool_fc(net) and cam.has_global_pool_fc(TinyCAMNet())
    with pytest.raises(ValueError, match="needs a global pool \\+ one FC"):
        compute_cams(net, x, "cam")


def test_config_refuses_cam_with_the_authors_head() -> None:
    from wsseg_nb.config import get_config
    from wsseg_nb.errors import InputError

    with pytest.raises(InputError, match="cam_methods.*needs cls_head 'gap_fc'"):
        get_config("demo", cls_head="authors")
    authors = get_config("demo", cls_head="authors", vgg_init="he", cam_methods="gradcam,scorecam")
    assert authors.cam_methods == ("gradcam", "scorecam")
    with pytest.raises(InputError, match="vgg_init.*LSUV rescales the single FC"):  # the demo's default init
        get_config("demo", cls_head="authors", cam_methods="gradcam,scorecam")
    assert get_config("demo", cls_head="gmp_fc").cam_methods == get_config("demo").cam_methods  # CAM and LSUV apply


class ShiftedNet(nn.Module):
    """A GAP + FC 'classifier' whose one feature map is the SUV moved by a known d: A(p) = SUV(p - d), stride 1."""

    def __init__(self, dy: int, dx: int) -> None:
        super().__init__()
        self.scale = nn.Identity()
        conv = nn.Conv2d(2, 1, 9, padding=4, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 4 - dy, 4 - dx] = 1.0  # y(p) = x(p - d)
        self.features = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(self.scale(x))).flatten(1))[:, 0]


def _hot_spots(n: int, size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """n slices with one hot 3x3 spot each, at seeded places away from the border; their (row, col) centres."""
    rng = np.random.default_rng(0)
    centres = rng.integers(8, size - 8, (n, 2))
    x = torch.zeros(n, 2, size, size)
    for i, (r, c) in enumerate(centres):
        x[i, 0, r - 1:r + 2, c - 1:c + 2] = 5.0
        x[i, 0, r, c] = 6.0
    return x, centres


@pytest.mark.parametrize("d", [(0, 0), (2, -3), (-4, 1)])
def test_flip_displacement_recovers_a_known_shift_and_shift_maps_undoes_it(d: tuple[int, int]) -> None:
    net = ShiftedNet(*d)
    x, centres = _hot_spots(9)
    assert cam.flip_displacement(net, x) == (float(d[0]), float(d[1]))
    maps = cam.compute_cams(net, x, "cam")
    peaks = np.stack(np.unravel_index(maps.flatten(1).argmax(1).numpy(), maps.shape[1:]), 1)
    assert (peaks == centres + np.array(d)).all()  # the map's peak sits d away from the spot
    fixed = cam.shift_maps(maps, cam.flip_displacement(net, x), x.shape[-1])
    peaks = np.stack(np.unravel_index(fixed.flatten(1).argmax(1).numpy(), fixed.shape[1:]), 1)
    assert (peaks == centres).all()  # and back on it once undone


def test_shift_maps_by_hand() -> None:
    m = torch.zeros(1, 4, 4)
    m[0, 1, 2] = 1.0
    assert cam.shift_maps(m, (0.0, 0.0), 8) is m
    # 8x8 slices on a 4x4 map: one cell is 2 pixels; out(p) = m(p + shift), so a shift of (+1, -1) cells moves the
    # one bright cell from (1, 2) to (0, 3)
    torch.testing.assert_close(cam.shift_maps(m, (2.0, -2.0), 8)[0, 0, 3], torch.tensor(1.0))
    assert float(cam.shift_maps(m, (2.0, -2.0), 8).sum()) == pytest.approx(1.0)
    half = cam.shift_maps(m, (0.0, 1.0), 8)[0]  # half a cell: bilinear, the value split between two cells
    torch.testing.assert_close(half[1, 1:3], torch.tensor([0.5, 0.5]))


def test_cams_for_slices_undoes_the_shift_and_renormalises() -> None:
    net = ShiftedNet(2, -3)
    x, centres = _hot_spots(4)

    class Store:
        def read(self, positions):
            return x[positions].numpy(), None

    plain = cam.cams_for_slices(net, Store(), np.arange(4), ["cam"])["cam"]
    fixed = cam.cams_for_slices(net, Store(), np.arange(4), ["cam"], shift=(2.0, -3.0))["cam"]
    for i, (r, c) in enumerate(centres):
        assert plain[i, r + 2, c - 3] == 1.0 and fixed[i, r, c] == 1.0 and fixed[i].min() == 0.0


def test_pointing_probe_with_align_scores_the_undone_maps() -> None:
    from wsseg_nb import diagnostics

    net = ShiftedNet(2, -3)
    x, centres = _hot_spots(8)
    masks = (x[:, 0] > 0).numpy().astype(np.uint8)

    class Store:
        index = pd.DataFrame({"split": ["train"] * 4 + ["val"] * 4, "label": 1})

        def read(self, positions):
            return x[positions].numpy(), masks[positions]

    raw = diagnostics.pointing_probe(Store(), "val")(net)
    aligned = diagnostics.pointing_probe(Store(), "val", align=True)(net)
    assert raw["pointing"] == 0.0 and "cam_shift_y" not in raw  # 2 and 3 pixels off a 3x3 spot
    assert aligned["pointing"] == 1.0 and (aligned["cam_shift_y"], aligned["cam_shift_x"]) == (2.0, -3.0)


def test_max_pool_head_keeps_the_cam_map_and_gradcam_is_its_relu(x: torch.Tensor) -> None:
    """cls_head 'gmp_fc': logit = sum_k v_k max A_k + b; the gradient sums to v_k over each map (it reaches the
    peak cell only), so GradCAM's weights are v_k / N and GradCAM = normalised ReLU(CAM), as under GAP."""
    from wsseg_nb.models import VGG16CAM, lsuv_

    torch.manual_seed(4)
    net = lsuv_(VGG16CAM(1 / 16, head="gmp_fc"), x).eval()
    a = last_acts(net, x)
    v, b = net.fc.weight[0].detach(), net.fc.bias.detach()
    with torch.no_grad():
        torch.testing.assert_close(net(x), a.amax((2, 3)) @ v + b, atol=ATOL, rtol=0)
    m = torch.einsum("k,bkhw->bhw", v, a)
    torch.testing.assert_close(compute_cams(net, x, "cam"), normalize_maps(m), atol=ATOL, rtol=0)
    torch.testing.assert_close(compute_cams(net, x, "gradcam"), normalize_maps(m.relu()), atol=ATOL, rtol=0)
    assert cam.has_global_pool_fc(net)
