"""One training loop for the slice classifier and the U-Net: streamed, augmented, validated, checkpointed, resumable."""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from .augment import augment, drop_ct, random_crop, sample_params
from .config import SAMPLINGS
from .diagnostics import pointing_probe
from .errors import InputError
from .models import UNet, VGG16CAM, lsuv_
from .progress import progress
from .runs import write_csv_atomic

if TYPE_CHECKING:
    from .config import Config
    from .runs import Run
    from .slices import SliceStore

KINDS = ("classifier", "unet")
CHECKPOINT_VERSION = 1
LOG_EVERY = 20
"""Steps between progress-bar loss updates (the only host sync in the training loop besides the epoch end)."""


UNSURE = 2
"""Target value of a voxel the U-Net's loss leaves out (weight 0): CAM -> U-Net pseudo-labels, `cam_unet_unsure_suv`."""


def weighted_ce_terms(logits: torch.Tensor, target: torch.Tensor, pos_weight: float,
                      known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ w_i·CE_i and Σ w_i over all elements: w_i = pos_weight for tumor (target 1), else 1; 0 where not known."""
    target = target.to(logits.dtype)
    weight = 1.0 + (pos_weight - 1.0) * target
    if known is not None:
        weight = weight * known.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (weight * ce).sum(), weight.sum()


def weighted_ce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float,
                known: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted CE, weighted-mean reduction Σ w_i·CE_i / Σ w_i: nn.CrossEntropyLoss(weight=[1, w]) on logits [0, z] (notebook 02)."""
    num, den = weighted_ce_terms(logits, target, pos_weight, known)
    return num / den


def classifier_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """ROC AUC, and at p >= 0.5 balanced accuracy, sensitivity, specificity (NaN where a class is missing) (notebook 02)."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(probs) >= 0.5
    pos, neg = labels.sum(), (~labels).sum()
    sens = (pred & labels).sum() / pos if pos else np.nan
    spec = (~pred & ~labels).sum() / neg if neg else np.nan
    auc = roc_auc_score(labels, probs) if pos and neg else np.nan
    return {"auc": float(auc), "balanced_accuracy": float((sens + spec) / 2), "sensitivity": float(sens),
            "specificity": float(spec)}


def _epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed of one epoch (shuffling, augmentation): resuming at an epoch replays the same draws."""
    return seed * 100_003 + epoch


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _to_device(batch: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Asynchronous host-to-device copies (pinned memory on CUDA)."""
    return [t.to(device, non_blocking=True) for t in batch]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively: CUDA, or a CPU with AVX512-BF16 / AMX (oneDNN's fast bf16 convs)."""
    if device.type == "cuda":
        return True
    cpu = getattr(torch, "cpu", None)
    return device.type == "cpu" and any(getattr(cpu, name, lambda: False)()
                                        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def _forward(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Forward pass on a channels_last input under bf16 autocast where the device has native bf16 (`native_bf16`).

    Measured on 2 cores of a Xeon with AMX (VGG16CAM width 1/8, batch 32, 128x128, one Adam step): 0.68 s
    (fp32, contiguous), 0.36 s (fp32, channels_last), 0.15 s (bf16 autocast, channels_last).
    """
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=native_bf16(device)):
        return model(x).float()


def numerics_fingerprint(device: torch.device | str = "cpu") -> str:
    """A hash of one seeded training step's gradients: equal only where the kernels round as this machine's do.

    Training is chaotic: CPUs that both compute bf16 natively but accumulate in another order (AMX tiles vs
    AVX512-BF16) end 16 epochs at other weights. Notebook outputs are reproducible only where this matches.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UNet(1 / 8).to(device, memory_format=torch.channels_last)
    x = torch.rand((4, 2, 32, 32), generator=generator).to(device) * torch.tensor([10.0, 1000.0], device=device)[:, None, None]
    target = (torch.rand((4, 1, 32, 32), generator=generator) > 0.9).float().to(device)
    weighted_ce(_forward(model, x, device), target, 7.7).backward()
    digest = hashlib.sha256()
    for param in model.parameters():
        digest.update(param.grad.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _target(kind: str, label: torch.Tensor, mask: torch.Tensor,
            unsure: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the network is trained on: the slice label (classifier) or the lesion mask (B, 1, S, S) (U-Net), and
    where the target is known (None: everywhere; with `unsure`, a U-Net's voxels of value UNSURE are not)."""
    if kind == "classifier":
        return label.float(), None
    mask = mask[:, None]
    if not unsure:  # 0/1 lesion masks: no compare and no weight product on the supervised U-Net's hot path
        return mask.float(), None
    return (mask == 1).float(), mask != UNSURE


def _study_keys(dataset: Dataset) -> tuple[np.ndarray, pd.Series] | None:
    """Study of each item and lesion voxels per study of a SliceDataset (None for other datasets)."""
    store, positions = getattr(dataset, "store", None), getattr(dataset, "positions", None)
    if store is None or positions is None:
        return None
    rows = store.index.iloc[positions]
    return rows["study_id"].to_numpy(), rows.groupby("study_id", sort=False)["lesion_voxels"].sum()


def studies_digest(study_ids: Sequence[str]) -> str:
    """'<n> studies <sha1 prefix>' of a training set's distinct study ids, recorded in a checkpoint's hparams."""
    ids = sorted(set(study_ids))
    return f"{len(ids)} studies {hashlib.sha1(','.join(ids).encode()).hexdigest()[:12]}"


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, kind: str, pos_weight: float,
             device: torch.device, thresholds: Sequence[float] = (0.5,)) -> dict[str, float]:
    """Validation: weighted CE (same reduction over the whole set) plus AUC etc. (classifier) or Dice (U-Net).

    U-Net: `dice` pools all slices at p >= 0.5; on a SliceDataset also the median per-study 3D Dice at each
    probability threshold (`study_dice@<p>`), the best of them (`study_dice`) and its threshold (`threshold`),
    from per-slice counts of the same forward pass (notebook 05).
    """
    model.eval()
    num = torch.zeros((), device=device)
    den, inter, pred_sum, gt_sum = num.clone(), num.clone(), num.clone(), num.clone()
    logits_all, labels_all, slice_inter, slice_pred = [], [], [], []
    cuts = torch.logit(torch.tensor([float(p) for p in thresholds], dtype=torch.float64)).float().to(device)
    for x, label, mask in loader:
        x, label, mask = _to_device((x, label, mask), device)
        out = _forward(model, x, device)
        target, known = _target(kind, label, mask)
        n, d = weighted_ce_terms(out, target, pos_weight, known)
        num += n
        den += d
        if kind == "classifier":
            logits_all.append(out)
            labels_all.append(label)
        else:
            hit = out >= 0  # p >= 0.5
            inter += (hit & (target > 0)).sum()
            pred_sum += hit.sum()
            gt_sum += target.sum()
            called = out.float().flatten(1)[..., None] >= cuts  # (B, S*S, thresholds)
            slice_inter.append((called & (target.flatten(1)[..., None] > 0)).sum(1))
            slice_pred.append(called.sum(1))
    metrics = {"loss": float(num / den)}
    if kind == "classifier":
        probs = torch.sigmoid(torch.cat(logits_all)).cpu().numpy()
        metrics.update(classifier_metrics(torch.cat(labels_all).cpu().numpy(), probs))
        return metrics
    total = float(pred_sum + gt_sum)
    metrics["dice"] = 2.0 * float(inter) / total if total else float("nan")
    keys = _study_keys(loader.dataset)
    if keys is not None and slice_inter:
        from .segment import study_dice

        per_study = study_dice(torch.cat(slice_inter).cpu().numpy(), torch.cat(slice_pred).cpu().numpy(), *keys)
        medians = np.nanmedian(per_study, axis=0) if np.isfinite(per_study).any() else np.full(len(thresholds), np.nan)
        metrics.update({f"study_dice@{p:g}": float(m) for p, m in zip(thresholds, medians)})
        best = int(np.nanargmax(medians)) if np.isfinite(medians).any() else 0
        metrics.update(study_dice=float(medians[best]), threshold=float(thresholds[best]))
    return metrics


class BalancedSampler(Sampler[int]):
    """Every tumor slice plus as many tumor-free slices, the latter drawn afresh each epoch, in shuffled order.

    A share `pool_fraction` of the tumor-free slices is drawn from `pool`, e.g. tumor-free slices close to a
    tumor slice of the same study (`near_negatives`): at the lesions' body level the slice's position tells nothing.
    The rest are drawn without replacement, or with replacement in proportion to `weights` (per dataset item, e.g.
    `level_matched_weights`).
    """

    def __init__(self, labels: np.ndarray, generator: torch.Generator, pool: np.ndarray | None = None,
                 pool_fraction: float = 0.0, weights: np.ndarray | None = None) -> None:
        labels = np.asarray(labels) > 0
        self.pos = torch.from_numpy(np.flatnonzero(labels))
        self.neg = torch.from_numpy(np.flatnonzero(~labels))
        if not len(self.pos) or not len(self.neg):
            raise ValueError(f"balanced sampling needs tumor and tumor-free slices, got {len(self.pos)} and "
                             f"{len(self.neg)}")
        if not 0.0 <= pool_fraction <= 1.0:
            raise ValueError(f"pool_fraction must lie in [0, 1], got {pool_fraction}")
        self.pool = torch.as_tensor(np.asarray([] if pool is None else pool, dtype=np.int64))
        if pool_fraction > 0 and (not len(self.pool) or labels[self.pool.numpy()].any()):
            raise ValueError("pool sampling needs a non-empty pool of tumor-free slices")
        self.n = min(len(self.pos), len(self.neg))
        self.n_pool = int(round(pool_fraction * self.n))
        self.generator = generator
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, np.float64)[self.neg.numpy()])
        if self.weights is not None and not ((self.weights >= 0).all() and self.weights.sum() > 0):
            raise ValueError("negative weights must be >= 0 with a positive sum over the tumor-free slices")

    def __len__(self) -> int:
        return 2 * self.n

    def __iter__(self):
        g = self.generator
        pos = self.pos[torch.randperm(len(self.pos), generator=g)[:self.n]]
        if self.weights is None:
            neg = self.neg[torch.randperm(len(self.neg), generator=g)[:self.n - self.n_pool]]
        else:  # with replacement, so that a rare body level can be drawn as often as its tumor slices ask
            neg = self.neg[torch.multinomial(self.weights, self.n - self.n_pool, replacement=True, generator=g)]
        extra = self.pool[torch.randint(len(self.pool), (self.n_pool,), generator=g)] if self.n_pool else neg[:0]
        both = torch.cat([pos, neg, extra])
        return iter(both[torch.randperm(len(both), generator=g)].tolist())


NEAR_SLICES = 5
"""Tumor-free slices at most this many slices from a tumor slice of their study are 'near' (5 x 6 mm in the demo)."""


def near_negatives(dataset: Dataset, distance: int = NEAR_SLICES) -> np.ndarray:
    """Dataset items that are tumor-free and at most `distance` slices from a tumor slice of the same study."""
    index = dataset.store.index.iloc[dataset.positions]
    study = pd.factorize(index["study_id"])[0].astype(np.int64)
    z = index["slice"].to_numpy(np.int64)
    tumor = index["label"].to_numpy() > 0
    key = study * 1_000_000 + z
    near = np.zeros(len(index), bool)
    for d in range(-distance, distance + 1):  # a tumor slice at z + d of the same study
        near |= np.isin(key + d, key[tumor])
    return np.flatnonzero(near & ~tumor)


LEVEL_BINS = 20
"""Body-level bins for level matching (as `diagnostics.level_auc`)."""
LEVEL_UNIFORM_SHARE = 0.1
"""Share of the level-matched draw spread evenly over the tumor-free slices, so every level (brain, bladder) is seen."""


def level_matched_weights(dataset: Dataset, bins: int = LEVEL_BINS,
                          uniform_share: float = LEVEL_UNIFORM_SHARE) -> np.ndarray:
    """Draw weights of the tumor-free items (0 for tumor items) under which their body level follows the tumor
    slices' (`diagnostics.relative_level` in `bins` bins), mixed with a uniform draw of share `uniform_share`."""
    from .diagnostics import relative_level

    index = dataset.store.index.iloc[dataset.positions]
    level = np.minimum((relative_level(index) * bins).astype(int), bins - 1)
    tumor = index["label"].to_numpy() > 0
    neg_counts = np.bincount(level[~tumor], minlength=bins).astype(float)
    pos_share = np.bincount(level[tumor], minlength=bins) / max(tumor.sum(), 1)
    per_bin = np.divide(pos_share, neg_counts, out=np.zeros(bins), where=neg_counts > 0)
    weights = (1.0 - uniform_share) * per_bin[level] + uniform_share / max((~tumor).sum(), 1)
    return np.where(tumor, 0.0, weights)


def _loader(dataset: Dataset, batch: int, workers: int, device: torch.device,
            generator: torch.Generator | None = None, sampling: str = "all", pool_fraction: float = 0.0,
            level_matched: bool = False) -> DataLoader:
    """A DataLoader streaming from the slice store (shuffled with `generator` when given; `sampling` as in `fit`)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if generator is None:
        sampler = None
    elif sampling == "balanced":
        pool = near_negatives(dataset) if pool_fraction > 0 else None
        weights = level_matched_weights(dataset) if level_matched else None
        sampler = BalancedSampler(dataset.labels, generator, pool, pool_fraction, weights)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    # the generator drives only the sampler: the DataLoader draws worker base seeds from it once per fresh
    # iterator (not per epoch with persistent workers), which would make a resumed epoch shuffle differently
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=False)


SCHEDULES = ("constant", "cosine")


def lr_factor(progress: float, epochs: int, schedule: str = "constant", warmup_epochs: float = 0.0) -> float:
    """Learning-rate multiplier at `progress` epochs: linear warm-up, then constant or a half cosine to 0 at the end."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    warm = min(1.0, (progress + 1e-9) / warmup_epochs) if warmup_epochs > 0 else 1.0
    decay = 0.5 * (1.0 + np.cos(np.pi * progress / epochs)) if schedule == "cosine" else 1.0
    return float(warm * decay)


def selection_score(rows: dict[str, float] | pd.DataFrame, select: str) -> float | pd.Series:
    """The score the kept epoch maximises: one column, or the product of columns joined by '*' (per row of a frame)."""
    columns = select.split("*")
    if isinstance(rows, pd.DataFrame):
        return rows[columns].prod(axis=1, skipna=False)
    return float(np.prod([rows[k] for k in columns]))


def ema_model(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """A copy of `model` whose weights and buffers track theta_ema <- decay * theta_ema + (1 - decay) * theta."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, train_set: Dataset, val_set: Dataset, *,
        kind: str, out_dir: Path, epochs: int, batch: int, pos_weight: float, seed: int,
        device: torch.device, workers: int = 0, engine: str = "torch", sampling: str = "all",
        pool_fraction: float = 0.0, probe: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        select: str | None = None, schedule: str = "constant", warmup_epochs: float = 0.0,
        thresholds: Sequence[float] = (0.5,), ct_dropout: float = 0.0, level_matched: bool = False,
        ema_decay: float = 0.0, val_every: int = 1, hparams: dict[str, Any] | None = None,
        resume: bool = True, unsure: bool = False, crop: int = 0) -> pd.DataFrame:
    """Train with augmentation; per epoch validate, write last.pt (atomic), best.pt and history.csv; resume from last.pt.

    An epoch visits every training slice (`sampling="all"`), or every tumor slice plus as many tumor-free ones
    drawn afresh per epoch (`"balanced"`, `BalancedSampler`); validation always uses every validation slice.

    The learning rate is the optimizer's, ramped up linearly over `warmup_epochs` and, with schedule 'cosine',
    decayed to 0 along a half cosine over all epochs (`lr_factor`; a pure function of the step, so resuming
    needs no scheduler state). `probe(model)` adds validation scores of its own to each epoch's row (prefixed
    `val_`). Best = highest `select` (a row column, or columns joined by '*': their product), by default
    validation AUC (classifier) or pooled Dice (U-Net). Shuffling and augmentation are seeded per epoch, so a
    resumed run ends with the same weights as an uninterrupted one (notebooks 02, 05). `ct_dropout` is the share
    of training slices whose CT channel is blanked after augmentation (`augment.drop_ct`). `level_matched` draws a
    balanced epoch's other tumor-free slices at the tumor slices' body levels (`level_matched_weights`).
    With `ema_decay` > 0 an exponential moving average of the weights and BatchNorm statistics (`ema_model`),
    updated after every step, is what is validated and written to best.pt; `model` keeps the raw weights.
    `val_every` = k validates (and can keep) only every k-th epoch and the last; the other epochs' rows carry no
    validation scores. `unsure`: the training masks may hold UNSURE voxels (CAM -> U-Net pseudo-labels), which the
    loss leaves out. `crop` > 0 trains on a random crop x crop window of each augmented slice
    (`augment.random_crop`); validation and inference see whole slices.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if crop and kind != "unet":
        raise ValueError(f"crop is for the U-Net's pixel labels; a window can cut the lesion of a {kind} slice label")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    select = select or ("val_auc" if kind == "classifier" else "val_dice")
    hparams = {**(hparams or {}), "kind": kind, "batch": batch, "pos_weight": pos_weight, "seed": seed,
               "engine": engine, "sampling": sampling, "pool_fraction": pool_fraction, "select": select,
               "schedule": schedule, "warmup_epochs": warmup_epochs, "thresholds": [float(p) for p in thresholds]}
    keys = _study_keys(train_set)
    if keys is not None:  # a run resumed on other training studies (another manifest or subset) would mix them
        hparams["train_studies"] = studies_digest(keys[0])
    if ct_dropout > 0:  # only when used, so that checkpoints written before the option still resume
        hparams["ct_dropout"] = ct_dropout
    if level_matched:
        hparams["level_matched"] = True
    if crop > 0:
        hparams["crop"] = crop
    if ema_decay > 0:
        hparams["ema_decay"] = ema_decay
    if schedule == "cosine":  # the decay depends on the total: a longer resumed run would change past epochs' lr
        hparams["epochs"] = epochs
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ema = ema_model(model, ema_decay) if ema_decay > 0 else None
    scored = model if ema is None else ema.module
    start, history, best = 0, [], -np.inf
    last_path = out_dir / "last.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        changed = sorted(k for k in hparams.keys() | state["hparams"].keys()
                         if hparams.get(k) != state["hparams"].get(k))
        if changed:
            raise ValueError(f"{last_path}: checkpoint settings differ in {changed} "
                             f"(checkpoint {[state['hparams'].get(k) for k in changed]}, now "
                             f"{[hparams.get(k) for k in changed]}); use another run_dir or resume=False")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, history, best = state["epoch"], state["history"], state["best"]
    base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["initial_lr"] = base  # kept in the optimizer state, so a resumed run scales the same base
    generator = torch.Generator()
    train_loader = _loader(train_set, batch, workers, device, generator, sampling, pool_fraction, level_matched)
    val_loader = _loader(val_set, batch, workers, device)
    for epoch in range(start, epochs):
        generator.manual_seed(_epoch_seed(seed, epoch))
        aug_gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch) + 1)
        model.train()
        t0 = time.perf_counter()
        loss_sum, steps, wait = torch.zeros((), device=device), 0, 0.0
        # the bar counts steps but does not wrap the loader: a bar given the loader takes its own iterator (an
        # extra sampler draw) and, if it outlives the loop (a notebook widget's does), holds the worker processes
        bar = progress(total=len(train_loader), desc=f"{kind} epoch {epoch + 1}/{epochs}", leave=False)
        t_fetch = time.perf_counter()
        for x, label, mask in train_loader:
            wait += time.perf_counter() - t_fetch
            factor = lr_factor(epoch + steps / len(train_loader), epochs, schedule, warmup_epochs)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            x, label, mask = _to_device((x, label, mask), device)
            x, mask = augment(x, mask, sample_params(len(x), aug_gen), engine)
            x = drop_ct(x, ct_dropout, aug_gen)
            if crop > 0:
                x, mask = random_crop(x, mask, crop, aug_gen)
            target, known = _target(kind, label, mask, unsure)
            loss = weighted_ce(_forward(model, x, device), target, pos_weight, known)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach()
            steps += 1
            bar.update()
            if steps % LOG_EVERY == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}", refresh=False)
            t_fetch = time.perf_counter()
        bar.close()
        train_time = time.perf_counter() - t0
        validate = (epoch + 1) % val_every == 0 or epoch + 1 == epochs
        val = {}
        if validate:
            val = evaluate(scored, val_loader, kind, pos_weight, device, thresholds)
            if probe is not None:
                val.update(probe(scored))
        row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / max(steps, 1),
               **{f"val_{k}": v for k, v in val.items()},
               "train_s": train_time, "data_wait_s": wait, "val_s": time.perf_counter() - t0 - train_time}
        history.append(row)
        score = selection_score(row, select) if validate else np.nan
        score = -np.inf if np.isnan(score) else score
        if score > best:
            best = score
            _save_atomic({"model": scored.state_dict(), "epoch": epoch + 1, "metrics": row, "hparams": hparams},
                         out_dir / "best.pt")
        _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                      "history": history, "best": best, "hparams": hparams, "version": CHECKPOINT_VERSION,
                      **({"ema": ema.state_dict()} if ema is not None else {})}, last_path)
        write_csv_atomic(out_dir / "history.csv", pd.DataFrame(history))
    model.eval()
    return pd.DataFrame(history)


def _datasets(run: Run, train_studies: Sequence[str] = ()) -> tuple[Dataset, Dataset]:
    """Train (only `train_studies` where any are named) and validation SliceDatasets of the run's store."""
    from .slices import SliceDataset, SliceStore

    store = SliceStore(run.store)
    index = store.index
    keep = (index["split"] == "train").to_numpy()
    if train_studies:
        missing = sorted(set(train_studies) - set(index.loc[keep, "study_id"]))
        if missing:
            raise InputError(f"config unet_train_studies: {len(missing)} of its {len(train_studies)} studies are not "
                             f"training studies of slice store {run.store} ({', '.join(missing[:4])}"
                             f"{', ...' if len(missing) > 4 else ''}); -p unet_train_studies= trains on every one")
        keep = keep & index["study_id"].isin(train_studies).to_numpy()
    sets = SliceDataset(store, "train", indices=np.flatnonzero(keep)), SliceDataset(store, "val")
    for split, dataset in zip(("train", "val"), sets):
        labels = np.asarray(dataset.labels)
        if len(labels) == 0 or labels.max() == 0:
            raise InputError(f"slice store {run.store}: the {split!r} split has no slices with tumor "
                             f"({len(labels)} slices); training needs tumor slices in train and val "
                             f"(check the manifest's split column or split_fractions)")
    return sets


def thinned(dataset: Dataset, stride: int) -> Dataset:
    """A SliceDataset of every tumor slice and every `stride`-th tumor-free one (in store order); stride 1: itself.

    Leaving tumor-free slices out regardless of the classifier's scores leaves ROC AUC unbiased; the demo validates
    its classifier on this each epoch (`cls_val_stride` 4: 35 % of its validation slices); predictions and
    diagnostics use every slice.
    """
    if stride == 1:
        return dataset
    from .slices import SliceDataset

    tumor = np.asarray(dataset.labels) > 0
    keep = np.sort(np.concatenate([np.flatnonzero(tumor), np.flatnonzero(~tumor)[::stride]]))
    return SliceDataset(dataset.store, indices=dataset.positions[keep])


def classifier_optimizer(model: torch.nn.Module, c: Config) -> torch.optim.Optimizer:
    """SGD with momentum as the paper (Sec. 2.3.3), or Adam (the demo profile), from the config."""
    if c.cls_optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=c.cls_lr, momentum=c.cls_momentum)
    if c.cls_optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=c.cls_lr)
    raise ValueError(f"cls_optimizer must be 'sgd' or 'adam', got {c.cls_optimizer!r}")


def unet_optimizer(model: torch.nn.Module, c: Config) -> torch.optim.Optimizer:
    """Adam with the config's lr and betas (0.9, 0.999), as the paper (Sec. 2.3.3)."""
    return torch.optim.Adam(model.parameters(), lr=c.unet_lr, betas=(0.9, 0.999))


def train_classifier(run: Run, resume: bool = True, folder: str = "classifier",
                     features_from: VGG16CAM | None = None) -> pd.DataFrame:
    """VGG16-CAM with SGD (lr, momentum from the config; Adam in the demo), weighted CE; writes run_dir/<folder>/ (nb 02).

    With `features_from`, the conv stack is a frozen copy of that classifier's and only the head trains (nb 03).
    """
    c = run.config
    torch.manual_seed(c.seed)
    model = classifier_model(c, "none" if features_from is not None else None)
    if features_from is not None:
        model.features.load_state_dict(features_from.features.state_dict())
        model.features.requires_grad_(False)
    train_set, val_set = _datasets(run)
    val_set = thinned(val_set, c.cls_val_stride)
    if c.vgg_init == "lsuv" and not model.pretrained and features_from is None:
        lsuv_(model, init_batch(train_set, c.seed))
    optimizer = classifier_optimizer(model, c)
    hparams = {"width": c.vgg_width, "pretrained": c.pretrained, "norm": c.vgg_norm, "stride": c.vgg_stride,
               **({"pools": c.vgg_pools} if c.vgg_pools != "late" else {}),  # so that earlier checkpoints resume
               "init": c.vgg_init, **({"head": c.cls_head} if c.cls_head != "gap_fc" else {}),
               **({"cam_align": c.cam_align} if c.cam_align != "none" else {}),
               "optimizer": c.cls_optimizer, "lr": c.cls_lr, "momentum": c.cls_momentum, "slice_size": c.slice_size,
               **({"features": "frozen copy"} if features_from is not None else {})}
    return fit(model, optimizer, train_set, val_set, kind="classifier", out_dir=run.dir / folder,
               epochs=c.cls_epochs, batch=c.cls_batch, pos_weight=c.cls_pos_weight, seed=c.seed,
               device=run.device, workers=c.workers, engine=c.augment_engine, sampling=c.cls_sampling,
               pool_fraction=c.cls_near_negatives,
               probe=pointing_probe(val_set.store, "val", align=c.cam_align == "flip"),
               select=c.cls_select, schedule=c.cls_schedule, warmup_epochs=c.cls_warmup_epochs,
               ct_dropout=c.cls_ct_dropout, level_matched=c.cls_negative_levels == "matched", ema_decay=c.cls_ema,
               hparams=hparams, resume=resume)


LSUV_SLICES = 64


def init_batch(dataset: Dataset, seed: int, n: int = LSUV_SLICES) -> torch.Tensor:
    """A seeded batch of training slices, half with tumor when the split allows, for a data-dependent init."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset.labels) > 0
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    k = min(n // 2, len(pos))
    items = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, min(n - k, len(neg)), replace=False)])
    return dataset.batch(np.sort(items))[0]


def classifier_model(c: Config, pretrained: str | None = None) -> VGG16CAM:
    """The config's VGG16-CAM (width, norm, stride, pools, head; ImageNet weights as `c.pretrained` unless overridden)."""
    return VGG16CAM(c.vgg_width, c.pretrained if pretrained is None else pretrained, c.vgg_norm, c.vgg_stride,
                    c.cls_head, c.vgg_pools)


def unet_model(c: Config) -> UNet:
    """The U-Net of a config (width, normalisation), untrained."""
    return UNet(c.unet_width, c.unet_norm)


def unet_window(c: Config) -> int:
    """The supervised U-Net's training window: unet_crop, or 0 (whole slices) where it is 0 or >= slice_size."""
    return c.unet_crop if c.unet_crop < c.slice_size else 0


def train_unet(run: Run, resume: bool = True) -> pd.DataFrame:
    """The U-Net baseline with Adam (lr from the config, betas 0.9/0.999), weighted CE, `unet_sampling`; writes run_dir/unet/ (notebook 05)."""
    c = run.config
    torch.manual_seed(c.seed)
    model = unet_model(c)
    optimizer = unet_optimizer(model, c)
    hparams = {"width": c.unet_width, "norm": c.unet_norm, "lr": c.unet_lr, "slice_size": c.slice_size}
    return fit(model, optimizer, *_datasets(run, c.unet_train_studies), kind="unet", out_dir=run.dir / "unet",
               epochs=c.unet_epochs, batch=c.unet_batch, pos_weight=c.unet_pos_weight, seed=c.seed, device=run.device,
               workers=c.workers, engine=c.augment_engine, sampling=c.unet_sampling, schedule=c.unet_schedule,
               select=c.unet_select, thresholds=c.unet_threshold_grid, ema_decay=c.unet_ema, val_every=c.unet_val_every,
               hparams=hparams, resume=resume, crop=unet_window(c))


def unet_threshold(path: str | os.PathLike[str]) -> float:
    """A U-Net checkpoint's operating threshold: the one its epoch scored best with on validation (0.5 if none)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: train first (notebook 05)")
    metrics = torch.load(path, map_location="cpu", weights_only=False).get("metrics", {})
    return float(metrics.get("val_threshold", 0.5))


def load_classifier(run: Run, checkpoint: str = "best", folder: str = "classifier") -> VGG16CAM:
    """The trained classifier from run_dir/<folder>/<checkpoint>.pt, in eval mode on the run's device."""
    model = classifier_model(run.config, "none")
    return _load(model, run.dir / folder / f"{checkpoint}.pt", run.device)


def cam_shift(run: Run, checkpoint: str = "best", folder: str = "classifier") -> tuple[float, float]:
    """The displacement (rows, cols; input pixels) of a checkpoint's maps that the chain undoes (`cam.shift_maps`):
    measured after its epoch with cam_align 'flip' (`cam.flip_displacement`), (0, 0) without."""
    if run.config.cam_align == "none":
        return 0.0, 0.0
    path = run.dir / folder / f"{checkpoint}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: train first (notebook 02)")
    metrics = torch.load(path, map_location="cpu", weights_only=False)["metrics"]
    if "val_cam_shift_y" not in metrics:
        raise ValueError(f"{path}: no map displacement recorded (trained with cam_align 'none'); retrain or set "
                         f"cam_align 'none'")
    return float(metrics["val_cam_shift_y"]), float(metrics["val_cam_shift_x"])


def load_unet(run: Run, checkpoint: str = "best", folder: str = "unet") -> UNet:
    """A trained U-Net from run_dir/<folder>/<checkpoint>.pt (cam_unet: CAM -> U-Net), in eval mode on the run's device."""
    return _load(unet_model(run.config), run.dir / folder / f"{checkpoint}.pt", run.device)


def _load(model: torch.nn.Module, path: Path, device: torch.device) -> torch.nn.Module:
    """Load a checkpoint's weights (clear error when missing or from another architecture)."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}: train first (notebook 02 / 05)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {type(model).__name__} of this config "
                         f"(width?): {str(err).splitlines()[0]}") from err
    return model.to(device).eval()


def _store(store: SliceStore | str | os.PathLike[str]) -> SliceStore:
    """A SliceStore from its folder (a store object is returned as it is)."""
    if isinstance(store, (str, os.PathLike)):
        from .slices import SliceStore

        return SliceStore(store)
    return store


@torch.no_grad()
def predict_logits(model: torch.nn.Module, store: SliceStore, positions: np.ndarray, batch: int,
                   device: torch.device, desc: str | None = "predict") -> torch.Tensor:
    """Model outputs for the store's index rows `positions`, batched, on the CPU (float32); desc None: no bar."""
    model.eval()
    outs = []
    for s in progress(range(0, len(positions), batch), desc=desc, leave=False, disable=desc is None):
        x, _ = store.read(positions[s:s + batch])
        outs.append(_forward(model, torch.from_numpy(x).to(device, non_blocking=True), device).cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def z_context(logits: np.ndarray, studies: Sequence[str], slices: np.ndarray, sigma: float) -> np.ndarray:
    """Slice logits averaged along z with a Gaussian of `sigma` slices within each study (notebook 02); 0: as given.

    The Gaussian is cut at 3 sigma; each study's slices must be consecutive (a whole study); the ends repeat the edge
    slice's logit.
    """
    from scipy.ndimage import gaussian_filter1d

    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if sigma <= 0:
        return logits
    codes = pd.factorize(np.asarray(studies))[0]
    slices = np.asarray(slices, dtype=np.int64)
    order = np.lexsort((slices, codes))
    out = np.empty_like(logits)
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for rows in np.split(order, bounds):
        z = slices[rows]
        if len(z) > 1 and not (np.diff(z) == 1).all():
            raise ValueError(f"z_context needs whole studies: study {np.asarray(studies)[rows[0]]} has slices "
                             f"{z.min()}..{z.max()} with gaps")
        out[rows] = gaussian_filter1d(logits[rows], sigma, mode="nearest", truncate=3.0)
    return out


def z_sigma(c: Config) -> float:
    """The config's context along z (`cls_z_sigma_mm`) in slices of its store grid."""
    return c.cls_z_sigma_mm / c.spacing_mm[0]


def predict_classifier(model: VGG16CAM, store: SliceStore | str | os.PathLike[str],
                       splits: Sequence[str] = ("val", "test"), batch: int = 64,
                       device: torch.device | str = "cpu", z_slices: float = 0.0) -> pd.DataFrame:
    """Tumor probability of every slice of the splits (notebook 02): DataFrame(study_id, slice, split, label, prob,
    prob_slice); prob is the chain's slice score (`z_context`, sigma `z_slices`), prob_slice the network's own."""
    from scipy.special import expit

    store = _store(store)
    index = store.index.reset_index(drop=True)
    positions = np.flatnonzero(index["split"].isin(splits).to_numpy())
    logits = predict_logits(model, store, positions, batch, torch.device(device), desc="classifier").numpy()
    out = index.loc[positions, ["study_id", "slice", "split", "label"]].reset_index(drop=True)
    scores = z_context(logits, out["study_id"].to_numpy(), out["slice"].to_numpy(), z_slices)
    out["prob"] = expit(scores)
    out["prob_slice"] = expit(logits.reshape(-1).astype(np.float64))
    return out


def predict_unet_masks(model: UNet, store: SliceStore | str | os.PathLike[str], run_dir: str | os.PathLike[str],
                       splits: Sequence[str] = ("val", "test"), batch: int = 64, device: torch.device | str = "cpu",
                       threshold: float = 0.5, method: str = "unet", called: pd.DataFrame | None = None) -> list[str]:
    """U-Net masks (p >= threshold) of every study of the splits, one file per study in masks/<method>/ (nb 05).

    called: the (study_id, slice) rows a mask may cover (the CAM -> U-Net behind the classifier's gate); the other
    slices are not predicted and stay empty. None: every slice.
    """
    from .segment import save_study_masks
    from .slices import assemble

    store = _store(store)
    index = store.index.reset_index(drop=True)
    rows = index[index["split"].isin(splits)]
    studies = list(dict.fromkeys(rows["study_id"]))
    if called is not None:
        keys = pd.MultiIndex.from_frame(called[["study_id", "slice"]])
        rows = rows[pd.MultiIndex.from_frame(rows[["study_id", "slice"]]).isin(keys)]
    cut = float(torch.logit(torch.tensor(threshold, dtype=torch.float64)))
    for sid in progress(studies, desc="U-Net masks"):
        sel = rows[rows["study_id"] == sid]
        if sel.empty:  # no slice called: an empty mask
            mask = np.zeros(store.volume_grid(sid)["shape"], dtype=bool)
        else:
            logits = predict_logits(model, store, sel.index.to_numpy(), batch, torch.device(device), desc=None)
            mask = assemble(store, sid, sel["slice"].to_numpy(), (logits[:, 0] >= cut).numpy())
        save_study_masks(run_dir, method, {sid: mask})
    return studies


def run_predictions(run: Run, model: VGG16CAM, splits: Sequence[str] = ("val", "test"),
                    store: SliceStore | str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """predict_classifier with the run's batch, device and context along z, on its store (or another) (notebook 02)."""
    return predict_classifier(model, run.store if store is None else store, splits, run.config.cam_batch, run.device,
                              z_sigma(run.config))


def write_classifier_predictions(run: Run, model: VGG16CAM) -> pd.DataFrame:
    """run_predictions on the val and test slices, written atomically to classifier/predictions.csv (notebook 02)."""
    frame = run_predictions(run, model)
    write_csv_atomic(run.path("classifier", "predictions.csv"), frame)
    return frame
