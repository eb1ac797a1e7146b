"""The training loop: weighted CE by hand, metrics, exact resume, learning toy sets, predictions and mask files."""
from __future__ import annotations

import math
import re
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from wsseg_nb import train
from wsseg_nb.config import get_config
from wsseg_nb.models import UNet, VGG16CAM

SIZE = 32


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw [SUV, HU] slices of a round body; every other slice has a hot 7x7 lesion (its mask) at a random place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    body = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (0.45 * SIZE) ** 2
    x = np.zeros((n, 2, SIZE, SIZE), np.float32)
    x[:, 0] = body * rng.uniform(0.8, 1.6, (n, SIZE, SIZE))
    x[:, 1] = np.where(body, 40.0, -1000.0)
    mask = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(0, n, 2):
        r, c = rng.integers(8, SIZE - 15, 2)
        mask[i, r:r + 7, c:c + 7] = 1
    x[:, 0][mask.astype(bool)] = 8.0
    return x, mask.reshape(n, -1).any(1).astype(np.float32), mask


class ToySlices(Dataset):
    """The SliceDataset item contract: (x float32 (2, S, S) raw, label float32 scalar, mask uint8 (S, S))."""

    def __init__(self, n: int, seed: int) -> None:
        self.x, self.label, self.mask = (torch.from_numpy(a) for a in _toy(n, seed))
        self.labels = self.label.numpy()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[i], self.label[i], self.mask[i]


class ToyStore:
    """The SliceStore contract used by the predictions: .index and .read(positions)."""

    def __init__(self) -> None:
        self.x, self.label, self.mask = _toy(12, 5)
        self.index = pd.DataFrame({"study_id": ["A"] * 4 + ["B"] * 4 + ["C"] * 4, "slice": list(range(4)) * 3,
                                   "label": self.label.astype(int), "split": ["train"] * 4 + ["val"] * 4 + ["test"] * 4})

    def volume_grid(self, study_id: str) -> dict[str, tuple[int, ...]]:
        return {"shape": (4, SIZE, SIZE)}

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[positions], self.mask[positions]


def test_weighted_ce_by_hand() -> None:
    logits, target = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    ce = [math.log(2.0), math.log(1 + math.e ** 2), math.log(1 + math.e)]
    expected = (7.7 * ce[0] + 1.0 * ce[1] + 7.7 * ce[2]) / (7.7 + 1.0 + 7.7)  # weighted mean: Σ w·CE / Σ w
    assert train.weighted_ce(logits, target, 7.7).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.07172, abs=1e-5)  # (7.7·0.693147 + 2.126928 + 7.7·1.313262) / 16.4
    two_class = torch.stack([torch.zeros_like(logits), logits], 1)
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 7.7]))(two_class, target.long())
    torch.testing.assert_close(train.weighted_ce(logits, target, 7.7), reference)
    # per pixel for the U-Net: the same reduction over every pixel of the batch
    pix = torch.tensor([[[[0.0, 2.0], [-1.0, 0.0]]]])
    pix_target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    expected_pix = (7.7 * ce[0] + ce[1] + 7.7 * ce[2] + math.log(2.0)) / (2 * 7.7 + 2)
    assert train.weighted_ce(pix, pix_target, 7.7).item() == pytest.approx(expected_pix, rel=1e-6)


def test_unsure_voxels_leave_the_loss_and_its_gradient() -> None:
    mask = torch.tensor([[[1, 0], [train.UNSURE, 0]]], dtype=torch.uint8)  # a CAM -> U-Net pseudo-label
    target, known = train._target("unet", torch.ones(1), mask, unsure=True)
    assert target.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]] and known.tolist() == [[[[True, True], [False, True]]]]
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 0.0]]]], requires_grad=True)
    loss = train.weighted_ce(logits, target, 7.7, known)
    expected = (7.7 * math.log(2.0) + math.log(1 + math.e ** 2) + math.log(2.0)) / (7.7 + 2)  # voxel (1, 0) left out
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0, 1, 0] == 0 and (logits.grad.flatten()[[0, 1, 3]] != 0).all()
    label, none = train._target("classifier", torch.tensor([1.0, 0.0]), mask)
    assert label.tolist() == [1.0, 0.0] and none is None
    plain = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.uint8)  # a lesion mask: known everywhere, unchanged
    target, known = train._target("unet", torch.ones(1), plain, unsure=True)
    assert known.all() and torch.equal(target, plain[:, None].float())


def test_classifier_metrics_by_hand() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
    m = train.classifier_metrics(labels, probs)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(4 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["auc"] == pytest.approx(12 / 15)  # positive-negative pairs ranked right: 5 + 4 + 3 of 15
    assert math.isnan(train.classifier_metrics(np.zeros(3), np.array([0.1, 0.6, 0.2]))["auc"])


def test_balanced_sampler_takes_every_minority_slice_and_as_many_others() -> None:
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], np.float32)
    g = torch.Generator()
    sampler = train.BalancedSampler(labels, g)
    assert len(sampler) == 6

    def draw(epoch: int) -> list[int]:
        g.manual_seed(epoch)
        return list(sampler)

    seen_negatives = set()
    for epoch in range(12):
        order = draw(epoch)
        assert len(order) == len(set(order)) == 6
        assert sorted(i for i in order if labels[i]) == [0, 3, 7]
        negatives = [i for i in order if not labels[i]]
        assert len(negatives) == 3
        seen_negatives.update(negatives)
        assert order == draw(epoch)  # the epoch seed fixes the draw
    assert seen_negatives == {1, 2, 4, 5, 6, 8, 9}  # fresh tumor-free slices across epochs
    flipped = list(train.BalancedSampler(1 - labels, g))  # the minority class is kept whole either way
    assert sorted(i for i in flipped if labels[i]) == [0, 3, 7] and len(flipped) == 6
    with pytest.raises(ValueError, match="tumor and tumor-free slices, got 0 and 3"):
        train.BalancedSampler(np.zeros(3), g)
    with pytest.raises(ValueError, match="sampling must be one of"):
        train._loader(ToySlices(4, 0), 2, 0, torch.device("cpu"), g, "oversample")


def test_balanced_fit_visits_twice_the_tumor_slices_and_guards_resume(tmp_path: Path) -> None:
    _, hist = _fit(tmp_path, 1, sampling="balanced", n_train=12)
    assert len(hist) == 1 and np.isfinite(hist["train_loss"]).all()
    assert len(train._loader(ToySlices(12, 1), 4, 0, torch.device("cpu"), torch.Generator(), "balanced")) == 3  # 2·6 / 4
    with pytest.raises(ValueError, match=r"differ in \['sampling'\]"):
        _fit(tmp_path, 2, sampling="all", n_train=12)


def _fit(out: Path, epochs: int, lr: float = 0.05, workers: int = 0, n_train: int = 16,
         adam: bool = False, sampling: str = "all", schedule: str = "constant", warmup: float = 0.0,
         probe=None, select: str | None = None, ct_dropout: float = 0.0,
         ema: float = 0.0) -> tuple[VGG16CAM, pd.DataFrame]:
    torch.manual_seed(0)
    model = VGG16CAM(width=1 / 16)
    opt = torch.optim.Adam(model.parameters(), lr=lr) if adam else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    hist = train.fit(model, opt, ToySlices(n_train, 1), ToySlices(16, 2), kind="classifier", out_dir=out, epochs=epochs,
                     batch=8 if adam else 4, pos_weight=7.7, seed=3, device=torch.device("cpu"), workers=workers,
                     sampling=sampling, schedule=schedule, warmup_epochs=warmup, probe=probe, select=select,
                     ct_dropout=ct_dropout, ema_decay=ema, hparams={"lr": lr})
    return model, hist


@pytest.mark.parametrize("sampling", ["all", "balanced"])
def test_resume_equals_uninterrupted(tmp_path: Path, sampling: str) -> None:
    _fit(tmp_path / "a", 2, workers=1, sampling=sampling)  # a worker process: persistent workers across epochs
    resumed, hist_a = _fit(tmp_path / "a", 4, workers=1, sampling=sampling)
    straight, hist_b = _fit(tmp_path / "b", 4, workers=1, sampling=sampling)
    for (name, p), q in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(p, q), name
    cols = ["epoch", "train_loss", "val_loss", "val_auc"]
    pd.testing.assert_frame_equal(hist_a[cols], hist_b[cols])
    saved = pd.read_csv(tmp_path / "a" / "history.csv")
    assert saved["epoch"].tolist() == [1, 2, 3, 4]
    best = torch.load(tmp_path / "a" / "best.pt", weights_only=False)
    assert best["metrics"]["val_auc"] == hist_a["val_auc"].max()
    assert not list((tmp_path / "a").glob("*.tmp"))
    with pytest.raises(ValueError, match=r"differ in \['lr'\]"):
        _fit(tmp_path / "a", 5, lr=0.01, sampling=sampling)


def test_ct_dropout_changes_training_and_guards_resume(tmp_path: Path) -> None:
    plain, _ = _fit(tmp_path / "plain", 1)
    dropped, _ = _fit(tmp_path / "drop", 1, ct_dropout=0.5)
    assert any(not torch.equal(p, q) for p, q in zip(plain.state_dict().values(), dropped.state_dict().values()))
    assert "ct_dropout" not in torch.load(tmp_path / "plain" / "last.pt", weights_only=False)["hparams"]
    with pytest.raises(ValueError, match=r"differ in \['ct_dropout'\]"):
        _fit(tmp_path / "drop", 2)


def test_unet_crop_trains_on_windows_validates_on_whole_slices_and_guards_resume(tmp_path: Path) -> None:
    seen: list[tuple[bool, tuple[int, ...]]] = []

    def fit(out: Path, epochs: int, crop: int) -> None:
        torch.manual_seed(0)
        model = UNet(width=1 / 16)
        model.register_forward_pre_hook(lambda module, args: seen.append((module.training, tuple(args[0].shape[-2:]))))
        train.fit(model, torch.optim.Adam(model.parameters(), lr=1e-3), ToySlices(8, 1), ToySlices(4, 2), kind="unet",
                  out_dir=out, epochs=epochs, batch=4, pos_weight=7.7, seed=3, device=torch.device("cpu"), crop=crop)

    fit(tmp_path, 1, crop=SIZE // 2)
    assert {shape for training, shape in seen if training} == {(SIZE // 2, SIZE // 2)}
    assert {shape for training, shape in seen if not training} == {(SIZE, SIZE)}
    assert torch.load(tmp_path / "last.pt", weights_only=False)["hparams"]["crop"] == SIZE // 2
    with pytest.raises(ValueError, match=r"differ in \['crop'\]"):
        fit(tmp_path, 2, crop=0)
    fit(tmp_path / "whole", 1, crop=0)  # no key when off, so checkpoints written before the option still resume
    assert "crop" not in torch.load(tmp_path / "whole" / "last.pt", weights_only=False)["hparams"]
    classifier = VGG16CAM(width=1 / 16)
    with pytest.raises(ValueError, match="crop is for the U-Net"):
        train.fit(classifier, torch.optim.SGD(classifier.parameters(), lr=0.1), ToySlices(4, 1), ToySlices(4, 2),
                  kind="classifier", out_dir=tmp_path / "cls", epochs=1, batch=4, pos_weight=1.0, seed=0,
                  device=torch.device("cpu"), crop=8)


def test_unet_window_is_the_crop_below_the_slice_size_else_whole_slices() -> None:
    assert train.unet_window(get_config("demo")) == 64
    assert train.unet_window(get_config("demo", slice_size=64)) == 0
    assert train.unet_window(get_config("demo", unet_crop=0)) == 0
    assert train.unet_window(get_config("paper")) == 0


def test_ema_model_by_hand() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = train.ema_model(model, 0.9)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module[0].weight, model[0].weight - 0.9)  # 0.9 * w + 0.1 * (w + 1)
    assert torch.allclose(ema.module[1].running_mean, torch.tensor([0.2]))  # buffers too: 0.9 * 0 + 0.1 * 2
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="ema_decay must lie in"):
            train.ema_model(model, bad)


def test_ema_fit_trains_the_same_weights_scores_the_average_and_resumes_exactly(tmp_path: Path) -> None:
    plain, _ = _fit(tmp_path / "plain", 3)
    _fit(tmp_path / "a", 2, ema=0.9)
    resumed, hist = _fit(tmp_path / "a", 3, ema=0.9)
    straight, _ = _fit(tmp_path / "b", 3, ema=0.9)
    for (name, p), q, r in zip(resumed.state_dict().items(), straight.state_dict().values(),
                               plain.state_dict().values()):
        assert torch.equal(p, q) and torch.equal(p, r), name  # the average only reads the weights
    last_a, last_b = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in "ab")
    for (name, p), q in zip(last_a["ema"].items(), last_b["ema"].values()):
        assert torch.equal(p, q), name
    average = VGG16CAM(width=1 / 16)
    average.load_state_dict({k.removeprefix("module."): v for k, v in last_a["ema"].items() if k != "n_averaged"})
    assert any(not torch.equal(p, q) for p, q in zip(average.state_dict().values(), plain.state_dict().values()))
    val = train.evaluate(average, train._loader(ToySlices(16, 2), 4, 0, torch.device("cpu")), "classifier", 7.7,
                         torch.device("cpu"))
    assert val["loss"] == pytest.approx(hist["val_loss"].iloc[-1], rel=1e-5)  # what was validated is the average
    with pytest.raises(ValueError, match=r"differ in \['ema_decay'\]"):
        _fit(tmp_path / "plain", 4, ema=0.9)


def test_lr_factor_by_hand() -> None:
    assert train.lr_factor(0.5, 8, "constant", 1.0) == pytest.approx(0.5)    # half-way through the warm-up
    assert train.lr_factor(3.0, 8, "constant", 1.0) == 1.0
    assert train.lr_factor(4.0, 8, "cosine") == pytest.approx(0.5)            # cos(pi / 2) = 0
    assert train.lr_factor(2.0, 8, "cosine") == pytest.approx((1 + np.sqrt(0.5)) / 2)
    with pytest.raises(ValueError, match="schedule"):
        train.lr_factor(0.0, 8, "step")


def test_interrupted_cosine_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    calls: list[int] = []

    def stop_in_epoch_3(model):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"extra": float(len(calls))}

    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "a", 4, adam=True, lr=1e-3, schedule="cosine", warmup=1.0, probe=stop_in_epoch_3)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=False)["epoch"] == 2
    resumed, _ = _fit(tmp_path / "a", 4, adam=True, lr=1e-3, schedule="cosine", warmup=1.0)
    straight, hist = _fit(tmp_path / "b", 4, adam=True, lr=1e-3, schedule="cosine", warmup=1.0)
    for (name, p), q in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(p, q), name
    assert "val_extra" not in hist  # the uninterrupted run had no probe
    with pytest.raises(ValueError, match=r"differ in \['epochs'\]"):
        _fit(tmp_path / "a", 5, adam=True, lr=1e-3, schedule="cosine", warmup=1.0)


class KeptBar(tqdm):
    """A progress bar that outlives its loop, as tqdm.notebook's does (its widget holds it in a reference cycle)."""

    kept: list[tqdm] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        KeptBar.kept.append(self)


def test_fit_stops_its_worker_processes_although_the_progress_bar_lives_on(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers left to the garbage collector were joined later on whatever thread it ran, stalling a notebook kernel."""
    monkeypatch.setattr(train, "progress", KeptBar)
    before = set(multiprocessing.active_children())
    _fit(tmp_path, 2, workers=2)
    assert KeptBar.kept and set(multiprocessing.active_children()) <= before


def test_classifier_learns_a_separable_toy_set(tmp_path: Path) -> None:
    _, hist = _fit(tmp_path, 8, lr=2e-3, workers=2, n_train=64, adam=True)  # through worker processes
    assert hist["val_auc"].iloc[-1] > 0.95
    assert hist["train_loss"].iloc[-1] < 0.5 * hist["train_loss"].iloc[0]
    assert hist["val_loss"].iloc[-1] < 0.5 * hist["val_loss"].iloc[0]


def test_unet_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    x, _, mask = (torch.from_numpy(a) for a in _toy(4, 7))
    net = UNet(width=1 / 8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = train.weighted_ce(net(x), mask[:, None].float(), 7.7)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_predictions_and_unet_mask_files(tmp_path: Path) -> None:
    store = ToyStore()
    torch.manual_seed(0)
    model = VGG16CAM(width=1 / 16).eval()
    pred = train.predict_classifier(model, store, ("val", "test"), batch=3)
    assert pred.columns.tolist() == ["study_id", "slice", "split", "label", "prob", "prob_slice"]
    assert pred["study_id"].tolist() == ["B"] * 4 + ["C"] * 4
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=train.native_bf16(torch.device("cpu")))
    with torch.no_grad(), bf16:  # the same precision as the package's forward pass
        logits = model(torch.from_numpy(store.x[4:])).float().numpy().reshape(-1)
    expected = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(pred["prob"], expected, rtol=1e-5)
    np.testing.assert_array_equal(pred["prob_slice"], pred["prob"])  # no context along z: the network's own score
    context = train.predict_classifier(model, store, ("val", "test"), batch=3, z_slices=1.0)
    np.testing.assert_allclose(context["prob_slice"], expected, rtol=1e-5)
    by_hand = np.concatenate([train.z_context(logits[:4], ["B"] * 4, np.arange(4), 1.0),
                              train.z_context(logits[4:], ["C"] * 4, np.arange(4), 1.0)])
    np.testing.assert_allclose(context["prob"], 1 / (1 + np.exp(-by_hand)), rtol=1e-5)
    unet = UNet(width=1 / 16).eval()
    studies = train.predict_unet_masks(unet, store, tmp_path, ("val", "test"), batch=3)
    assert studies == ["B", "C"]
    with torch.no_grad(), bf16:
        expected_mask = (unet(torch.from_numpy(store.x[8:])).float()[:, 0] >= 0).numpy()
    with np.load(tmp_path / "masks" / "unet" / "C.npz") as f:
        assert f["mask"].dtype == bool and f["mask"].shape == (4, SIZE, SIZE)
        assert np.array_equal(f["mask"], expected_mask)
    called = pd.DataFrame({"study_id": ["C", "C"], "slice": [1, 2]})  # behind a gate: B has no slice called
    train.predict_unet_masks(unet, store, tmp_path, ("val", "test"), batch=3, method="gated", called=called)
    with np.load(tmp_path / "masks" / "gated" / "C.npz") as f, np.load(tmp_path / "masks" / "gated" / "B.npz") as b:
        assert np.array_equal(f["mask"][1:3], expected_mask[1:3]) and not f["mask"][[0, 3]].any()
        assert b["mask"].shape == (4, SIZE, SIZE) and not b["mask"].any()
    assert expected_mask[1:3].any()  # the comparison is about a real mask


def test_best_epoch_maximises_the_product_of_the_select_columns(tmp_path: Path) -> None:
    scores = iter([0.9, 0.2, 0.6])  # the probe's score per epoch
    _, hist = _fit(tmp_path, 3, probe=lambda model: {"extra": next(scores)}, select="val_auc*val_extra")
    product = (hist["val_auc"] * hist["val_extra"]).to_numpy()
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == int(np.argmax(product)) + 1
    assert best["metrics"]["val_extra"] == hist["val_extra"].iloc[best["epoch"] - 1]


class SuvLogit(torch.nn.Module):
    """A stand-in U-Net whose logit is SUV - 1.2: p >= 0.5 marks lesion plus the hotter half of the body."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - 1.2


def test_unet_validation_scores_each_study_at_each_threshold() -> None:
    store = ToyStore()
    store.index["lesion_voxels"] = store.mask.reshape(12, -1).sum(1)
    dataset = ToySlices(12, 5)
    dataset.store, dataset.positions = store, np.arange(12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    thresholds = (0.5, 0.8, 0.9)
    got = train.evaluate(SuvLogit(), loader, "unet", 1.0, torch.device("cpu"), thresholds)
    suv, truth = store.x[:, 0].astype(np.float64), store.mask.astype(bool)
    expected = []
    for p in thresholds:
        pred = suv - 1.2 >= math.log(p / (1 - p))
        per_study = [2 * (pred[s] & truth[s]).sum() / (pred[s].sum() + truth[s].sum())
                     for s in (slice(0, 4), slice(4, 8), slice(8, 12))]
        expected.append(np.median(per_study))
        assert got[f"study_dice@{p:g}"] == pytest.approx(expected[-1], abs=1e-6)
    assert expected[0] < 0.5 and expected[1] == expected[2] == 1.0  # the body's noise reaches SUV 1.6 < 1.2 + 1.39
    assert got["study_dice"] == 1.0 and got["threshold"] == 0.8  # the first threshold that reaches the best median
    pooled = suv - 1.2 >= 0
    assert got["dice"] == pytest.approx(2 * (pooled & truth).sum() / (pooled.sum() + truth.sum()), abs=1e-6)


def test_numerics_fingerprint_is_a_pure_function_of_the_machine() -> None:
    torch.manual_seed(123)
    first = train.numerics_fingerprint()
    state = torch.random.get_rng_state()
    assert train.numerics_fingerprint() == first and re.fullmatch(r"[0-9a-f]{16}", first)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left as it was


def test_head_on_frozen_features_trains_only_the_head(tiny_store) -> None:
    from conftest import SIZE, SPACING
    from wsseg_nb import runs
    from wsseg_nb.config import get_config

    cfg = get_config("demo", device="cpu", slice_size=SIZE, spacing_mm=SPACING, cls_head="authors",
                     vgg_init="he", cam_methods="gradcam", cam_unet_epochs=0, cls_epochs=1, cls_batch=4, vgg_width=1 / 16,
                     workers=1, cls_sampling="all", cls_select="val_auc")
    run = runs.Run(cfg, tiny_store.parent, torch.device("cpu"))
    torch.manual_seed(5)
    source = VGG16CAM(1 / 16, pools=cfg.vgg_pools).eval()  # the same conv layout as the run's
    train.train_classifier(run, folder="frozen_head", features_from=source)
    trained = train.load_classifier(run, folder="frozen_head")
    torch.manual_seed(cfg.seed)
    initial = train.classifier_model(cfg, "none")  # what train_classifier starts from
    assert trained.head == "authors"
    for (name, a), b in zip(trained.features.state_dict().items(), source.features.state_dict().values()):
        assert torch.equal(a, b), name  # the conv stack is the source's, untouched by training
    assert not torch.equal(trained.fc[0].weight, initial.fc[0].weight)  # the head did train


def test_cam_shift_reads_the_checkpoint_and_refuses_one_without(tmp_path: Path) -> None:
    from wsseg_nb import runs
    from wsseg_nb.config import get_config

    run = runs.Run(get_config("demo", device="cpu"), tmp_path, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="train first"):
        train.cam_shift(run)
    (tmp_path / "classifier").mkdir()
    torch.save({"metrics": {"val_cam_shift_y": 4.5, "val_cam_shift_x": -12.5}}, tmp_path / "classifier" / "best.pt")
    assert train.cam_shift(run) == (4.5, -12.5)
    torch.save({"metrics": {"val_auc": 0.9}}, tmp_path / "classifier" / "best.pt")
    with pytest.raises(ValueError, match="cam_align 'none'"):
        train.cam_shift(run)
    assert train.cam_shift(runs.Run(get_config("demo", device="cpu", cam_align="none"), tmp_path, torch.device("cpu"))) == (0.0, 0.0)


def test_validation_every_k_epochs_keeps_only_validated_epochs(tmp_path: Path) -> None:
    model = VGG16CAM(width=1 / 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    calls = []
    hist = train.fit(model, opt, ToySlices(16, 1), ToySlices(16, 2), kind="classifier", out_dir=tmp_path, epochs=5,
                     batch=4, pos_weight=7.7, seed=3, device=torch.device("cpu"), val_every=2,
                     probe=lambda m: calls.append(1) or {"extra": 1.0})
    assert hist["val_auc"].notna().tolist() == [False, True, False, True, True]  # every 2nd epoch and the last
    assert len(calls) == 3 and hist["train_loss"].notna().all()
    assert torch.load(tmp_path / "best.pt", weights_only=False)["epoch"] in (2, 4, 5)


def test_thinned_keeps_every_tumor_slice_and_every_kth_tumor_free_one(tiny_store) -> None:
    from wsseg_nb.slices import SliceDataset

    full = SliceDataset(tiny_store, "val")
    assert train.thinned(full, 1) is full
    thin = train.thinned(full, 3)
    tumor = full.labels > 0
    assert set(full.positions[tumor]) <= set(thin.positions)
    assert np.array_equal(thin.positions[thin.labels == 0], full.positions[~tumor][::3])


def test_z_context_gaussian_by_hand_within_each_study() -> None:
    # study "a": a spike of 3 at z = 2; weights of sigma 1 at distance 0, 1, 2, 3: exp(-d^2 / 2), normalised over -3..3
    w = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    w /= w.sum()
    logits = np.array([0.0, 0.0, 3.0, 0.0, 0.0, 1.0, 1.0])
    studies = ["a"] * 5 + ["b"] * 2
    out = train.z_context(logits, studies, np.array([0, 1, 2, 3, 4, 7, 8]), 1.0)
    np.testing.assert_allclose(out[:5], 3 * w[[1, 2, 3, 4, 5]])  # the spike spreads symmetrically, no leak to "b"
    np.testing.assert_allclose(out[5:], [1.0, 1.0])  # a constant study stays constant (edge slices repeated)
    assert out[:5].sum() < 3.0  # mass that falls beyond the study's ends is lost to the repeated edges' zeros
    # row order does not matter: each study is sorted by slice, and the result returned in the given order
    shuffled = np.array([6, 2, 0, 5, 4, 1, 3])
    np.testing.assert_allclose(train.z_context(logits[shuffled], np.array(studies)[shuffled],
                                               np.array([0, 1, 2, 3, 4, 7, 8])[shuffled], 1.0), out[shuffled])
    np.testing.assert_array_equal(train.z_context(logits, studies, np.arange(7), 0.0), logits)  # off
    with pytest.raises(ValueError, match="study a has slices 0..5 with gaps"):
        train.z_context(logits[:3], ["a"] * 3, np.array([0, 1, 5]), 1.0)


def test_z_sigma_converts_millimetres_to_slices() -> None:
    assert train.z_sigma(get_config("demo", cls_z_sigma_mm=9.0)) == 1.5  # 6 mm slices
    assert train.z_sigma(get_config("paper", cls_z_sigma_mm=9.0)) == 3.0  # 3 mm slices
    assert get_config("paper").cls_z_sigma_mm == 0.0  # the paper scores each slice on its own


def test_unet_train_studies_keeps_only_the_named_training_studies(tiny_store) -> None:
    from wsseg_nb import runs
    from wsseg_nb.errors import InputError

    run = runs.Run(get_config("demo", device="cpu", unet_train_studies="S1"), tiny_store.parent, torch.device("cpu"))
    train_set, val_set = train._datasets(run, run.config.unet_train_studies)
    index = train_set.store.index
    assert set(index["study_id"].iloc[train_set.positions]) == {"S1"}
    assert np.array_equal(train_set.positions, np.flatnonzero(index["study_id"] == "S1"))  # every slice of S1
    assert set(index["study_id"].iloc[val_set.positions]) == {"S2"}  # validation untouched
    every, _ = train._datasets(run)
    assert np.array_equal(every.positions, np.flatnonzero(index["split"] == "train"))  # none named: S0 and S1
    with pytest.raises(InputError, match=r"config unet_train_studies: 2 of its 3 studies are not training studies .*"
                                         r"\(S2, S9\); -p unet_train_studies= trains on every one"):
        train._datasets(run, ("S1", "S2", "S9"))  # S2 is a validation study, S9 is not stored


def test_resume_refuses_a_checkpoint_trained_on_other_studies(tiny_store, tmp_path: Path) -> None:
    from wsseg_nb.slices import SliceDataset, SliceStore

    store = SliceStore(tiny_store)
    only_s0 = SliceDataset(store, "train", indices=np.flatnonzero(store.index["study_id"] == "S0"))
    both, val = SliceDataset(store, "train"), SliceDataset(store, "val")
    model = VGG16CAM(width=1 / 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    kw = dict(kind="classifier", out_dir=tmp_path, epochs=1, batch=4, pos_weight=1.0, seed=0,
              device=torch.device("cpu"), workers=0, probe=lambda m: {})
    train.fit(model, opt, only_s0, val, **kw)
    assert len(train.fit(model, opt, only_s0, val, **kw)) == 1  # the same studies: resumed, nothing left to train
    digest = train.studies_digest(["S0"])
    assert digest.startswith("1 studies ")
    assert train.studies_digest(["S1", "S0", "S1"]) == train.studies_digest(["S0", "S1"])
    refused = rf"differ in \['train_studies'\] \(checkpoint \['{digest}'\], now \['2 studies "
    with pytest.raises(ValueError, match=refused):
        train.fit(model, opt, both, val, **kw)  # another manifest or subset: refused, not mixed
