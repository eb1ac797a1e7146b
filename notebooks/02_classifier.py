# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — The slice classifier: VGG16 with a global pool and one linear layer
#
# **What you will learn.** How the paper's weak supervision works: a network sees only "this slice contains a
# tumor / does not", never a lesion outline. You will build the classifier (a VGG16 whose final feature map
# keeps 1/8 of the slice resolution, followed by a global pool and a single linear layer, the
# architecture classic CAM needs), see how raw SUV and HU become network inputs, apply the authors'
# augmentation to an image *and* its mask, derive the weighted cross entropy, train, and evaluate the
# classifier on the validation slices (ROC, confusion matrix, example slices).
#
# **Where in the paper.** Sec. 2.2.1 *Architecture* and Sec. 2.3.3 *Training*. Input: the slice store of
# notebook 01. Output: `classifier/{best.pt, last.pt, history.csv, predictions.csv}`, read by notebooks 03–05.

# %% tags=["parameters"]
profile = "demo"          # "demo" (laptop CPU) or "paper" (the paper's settings)
run_dir = "../runs/demo"  # artifacts of the whole chain
overrides = {}            # any config value, e.g. {"cls_epochs": 2}
resume = True             # continue from classifier/last.pt if present (a finished run is not retrained)
n_examples = 5            # slices per example figure

# %%
import time

import numpy as np
import pandas as pd
import torch
from scipy.special import expit, logit

from wsseg_nb import augment, config, diagnostics, models, runs, train
from wsseg_nb.plots import training as tplots
from wsseg_nb.slices import SliceStore

run = runs.start(profile, run_dir, **overrides)
cfg = run.config
store = SliceStore(run.store)
print(f"profile {cfg.profile}, device {run.device}")
store.index.groupby("split").agg(slices=("label", "size"), tumor_fraction=("label", "mean"),
                                 studies=("study_id", "nunique")).round(3)

# %% [markdown]
# ## 1. The architecture
#
# VGG16 has five blocks of 3×3 convolutions, each followed by a 2×2 max-pool: a 256×256 slice ends as a
# 512×8×8 map. The authors remove the **first** max-pool; we also drop the pool after the last block (the
# paper's 32×32 map needs both): three pools remain and the last feature map $A$ has $K = 512$ channels of
# $S/8 \times S/8$ pixels. Then
#
# $$ \text{logit} = \sum_k v_k \,\frac{1}{N}\sum_{h,w} A^k_{hw} + b, \qquad p(\text{tumor}) = \sigma(\text{logit}), $$
#
# global average pooling (GAP) followed by one linear layer — exactly the form for which the class activation
# map $M = \sum_k v_k A^k$ of notebook 03 is defined. The paper's profile runs at full width; the demo profile
# divides every channel count by 8 (`vgg_width` = 1/8) and makes two more changes, both measured on seeds 0 and 1
# (`config.DEMO_OVERRIDES` records how):
#
# * **Global max pooling** (`cls_head = "gmp_fc"`, Oquab et al. 2015): $\max_{h,w} A^k_{hw}$ in place of the mean.
#   The CAM is the same $M = \sum_k v_k A^k$ (notebook 03 derives every map for both pools), but each channel
#   now adds to the logit only through its peak cell, so its evidence cannot spread over a wide area, and the
#   demo's maps keep pointing at the lesions over more epochs.
# * **Early pools** (`vgg_pools = "early"`): keep the first pool and drop the one after block 4 instead. The
#   map is the same $S/8$, but blocks 2–4 run on a quarter of the pixels, so an epoch is 2.35× shorter; with
#   GAP this learned less per epoch and pointed worse, with GMP it trains 32 epochs in about half the time of
#   24 GAP ones.
#
# `vgg_norm = "batch"` would insert BatchNorm after every conv (torchvision's `vgg16_bn` layout) and
# `vgg_stride = 4` would also drop the pool before block 5; the demo measured both and keeps neither.
# Shapes first, on the meta device (no memory, no compute):

# %%
# NBVAL_CHECK_OUTPUT
for width, size in [(1.0, 256), (cfg.vgg_width, cfg.slice_size)]:
    with torch.device("meta"):
        net = models.VGG16CAM(width=width)
        a = net.features(net.scale(torch.zeros(1, 2, size, size)))
    n_params = sum(p.numel() for p in net.parameters())
    print(f"width {width:.4g}, {size}x{size} slice -> feature map {tuple(a.shape[1:])}, {n_params:,} parameters")

# %% [markdown]
# **ImageNet weights and two input channels.** The paper initialises from ImageNet (profile `paper`,
# `pretrained="auto"`: the torchvision checkpoint if it can be found or downloaded, else random with a
# warning; `"true"` fails and says where to put the file). ImageNet filters expect three colour channels; we
# have two (SUV, CT). Rule: each of the two new input channels gets the mean of the R, G, B filters times
# $3/2$, so that the same value in both channels produces exactly the response the RGB filters give to that
# value in all three channels (a grey image). The demo trains from scratch (`pretrained="none"`, offline).

# %%
# NBVAL_CHECK_OUTPUT
rgb = torch.tensor([[1.0, 2.0, 3.0]]).view(1, 3, 1, 1)
w2, _ = models.init_first_conv_from_rgb(rgb, torch.zeros(1))
print("RGB filter", rgb.flatten().tolist(), "-> 2-channel filter", w2.flatten().tolist(),
      "| sum preserved:", float(rgb.sum()) == float(w2.sum()))
print("weights file for pretrained='true':", models.vgg16_weights_path().name)

# %% [markdown]
# ## 2. From raw SUV and HU to network inputs
#
# The store keeps physical units. `model.scale` is the one place where they become inputs: SUV clipped to
# $[0, 20]$ and divided by 5 (lesions and organs fall in $[0, 4]$), HU clipped to $[-1000, 1000]$ and divided
# by 1000. Both maps send a raw 0 to 0, so masking a raw input (as ScoreCAM does in notebook 03) is masking
# the scaled input.

# %%
# NBVAL_CHECK_OUTPUT
raw = torch.tensor([[0.0, 1.0, 2.5, 10.0, 40.0], [-1000.0, -100.0, 0.0, 60.0, 1500.0]]).view(1, 2, 1, 5)
scaled = models.InputScale()(raw)[0, :, 0]
pd.DataFrame({"SUV": raw[0, 0, 0].tolist(), "SUV input": scaled[0].tolist(),
              "HU": raw[0, 1, 0].tolist(), "HU input": scaled[1].tolist()})

# %% [markdown]
# ## 3. Augmentation: the same transform on image and mask
#
# The authors (Sec. 2.3.3) used imgaug: `Affine(scale=(0.85, 1.15), rotate=(-10, 10),
# translate_percent=(-0.1, 0.1))` with bilinear interpolation and a constant fill, and `GammaContrast((0.7,
# 1.7))` on the PET channel only. One scale and one translation fraction are drawn per slice and used for both
# axes (imgaug's rule for a tuple). We fill with **air** (SUV 0, HU −1000), not HU 0 (water), and apply gamma as
# imgaug does on a [0, 1] float image, with SUV/20 as that image: $\text{SUV} \mapsto 20\,(\text{SUV}/20)^\gamma$.
# `augment_engine="torch"` runs batched on the training device; `"imgaug"` is the authors' library. Both read
# the same sampled parameters, so they can be compared:

# %%
train_rows = store.index.index[(store.index["split"] == "train") & (store.index["lesion_voxels"] > 0)]
pick = train_rows[np.linspace(0, len(train_rows) - 1, n_examples).astype(int)]
x, mask = (torch.from_numpy(a) for a in store.read(pick.to_numpy()))
params = augment.sample_params(len(x), torch.Generator().manual_seed(cfg.seed))
x_t, mask_t = augment.augment(x, mask, params, "torch")
x_i, mask_i = augment.augment(x, mask, params, "imgaug")
print("parameters:", {k: np.round(getattr(params, k).numpy(), 2).tolist() for k in ("scale", "rotate_deg", "translate", "gamma")})
print(f"torch vs imgaug: mean |ΔSUV| {float((x_t[:, 0] - x_i[:, 0]).abs().mean()):.4f}, "
      f"mean |ΔHU| {float((x_t[:, 1] - x_i[:, 1]).abs().mean()):.2f}, "
      f"mask pixels that differ {int((mask_t != mask_i).sum())} of {int(mask_t.sum())} lesion pixels")
tplots.augmentation_examples(x.numpy(), mask.numpy(), x_t.numpy(), mask_t.numpy());

# %% [markdown]
# ## 4. The weighted cross entropy
#
# Only about 13 % of slices contain tumor. The paper weights the tumor class by $w = 7.7$. With the single
# logit $z_i$, $p_i = \sigma(z_i)$ and weights $w_i = w$ for tumor slices, 1 otherwise, we use the reduction
# of PyTorch's `CrossEntropyLoss(weight=[1, w])` — a weighted mean:
#
# $$ L = \frac{\sum_i w_i\,\big[-y_i \log p_i - (1 - y_i)\log(1 - p_i)\big]}{\sum_i w_i}. $$
#
# The same formula, per pixel, trains the U-Net in notebook 05.
#
# The demo profile changes *which* slices an epoch visits instead (`cls_sampling = "balanced"`): every tumor
# slice plus as many tumor-free slices, drawn afresh each epoch. The classes are then even, so the weight is
# 1 there (`cls_pos_weight`), and an epoch is about 3.5× shorter.
#
# A hand check of the loss:

# %%
# NBVAL_CHECK_OUTPUT
z, y = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
by_hand = (7.7 * np.log(2) + np.log(1 + np.e ** 2) + 7.7 * np.log(1 + np.e)) / (7.7 + 1 + 7.7)
print(f"by hand {by_hand:.6f}, package {float(train.weighted_ce(z, y, 7.7)):.6f}")

# %% [markdown]
# ## 5. Training
#
# The paper trains with SGD (lr $10^{-3}$, momentum 0.9, batch 64, 50 epochs). The demo trains a narrower
# network from scratch, with Adam, balanced epochs and fewer epochs. Two demo choices come from measuring
# where the network looks (section 7), not only how well it classifies:
#
# * **Near negatives** (`cls_near_negatives = 0.5`): half of an epoch's tumor-free slices are drawn within
#   five slices of a tumor slice of the same study. Lesions lie between neck and groin, so against random
#   tumor-free slices (head, legs) the slice's body level alone separates the classes; next to the lesion,
#   same patient, same anatomy, only the lesion does.
# * **The epoch kept** (`cls_select = "val_auc*val_pointing_visible"`): the epoch with the largest product of
#   validation AUC and pointing (how often the class activation map peaks on a lesion, section 7). Localization
#   can be best early and then lost while the AUC still rises (as it often was with GAP), so neither number
#   alone picks a classifier that both gates and points; the paper already uses the validation masks to
#   choose $t$ and $q$, and this uses them the same way.
# * **Maps put back where the evidence is** (`cam_align = "flip"`): a global pool is blind to *where*
#   the evidence sits, and a network trained long enough can learn to move its whole feature map by a few
#   pixels, always the same way for one network (seed 1 with torchvision's initialisation: by 1–2 cells of
#   32 mm; this run: two cells up and about half a cell to the left). Flipping a slice mirrors
#   that displacement, so it can be measured without any mask and undone (notebook 03, section 8); the pointing
#   score that picks the epoch reads the maps after that correction.
# * **A start scaled on the data** (`vgg_init = "lsuv"`, layer-sequential unit variance, Mishkin & Matas
#   2016): with torchvision's initialisation the logits of the plain 13-convolution stack barely vary at the
#   start (standard deviation about $10^{-3}$ over a batch), the signal fades layer by layer, and one seed of
#   three sat on the chance loss $\ln 2$ for all 16 epochs (docs/log.md, seed tables). `models.lsuv_` divides each
#   convolution's weights, in order, by the standard deviation of its output on a batch of training slices, then
#   the FC's so that the logits have standard deviation 1. The network therefore starts with strong, random
#   opinions: the first epoch's training loss below is 0.79, above $\ln 2 = 0.69$, and falls to 0.65 in the
#   second. With it every seed measured left the plateau and pointed at the lesions.
#
# Where the processor computes bfloat16 natively (`train.native_bf16`: CUDA, or a CPU with AVX512-BF16/AMX)
# the forward and backward passes run in it, about twice as fast as float32 on two cores (measured on a CPU
# with AMX), as in this run (a CPU with AVX512-BF16); elsewhere they run in float32. Here the 32 epochs took 164 s
# of training, 5.1 s each (234 s in this session, with the per-epoch validation): a balanced epoch visits every
# training tumor slice, and the 60 training studies hold about twice as many as the 30 of earlier runs. In the
# curves below the training loss falls steadily (0.55 at epoch 6, 0.40 at epoch 16, 0.30 at epoch 32); the
# per-epoch validation AUC (the network alone) reads 0.62 after the first epoch, first reaches 0.90 at epoch 6,
# swings between 0.86 and 0.95 after that, and peaks at 0.948 at epoch 31 (0.945 at epoch 32).
#
# Slices stream from the store through a `DataLoader` with worker processes; each epoch is validated on every
# validation tumor slice and every 4th tumor-free one (`cls_val_stride = 4`: 727 of the 2,091 slices, a third of
# the cost; tumor-free slices left out at random leave the AUC unbiased, so the per-epoch AUC in the curves is an
# estimate on that subset, while the ROC curve, the gate and the diagnostics below use every slice),
# `last.pt` is written after every epoch (resumable: shuffling and augmentation are seeded per epoch, so an
# interrupted run resumes to the same weights) and `best.pt` keeps the epoch chosen by `cls_select`.

# %%
config.settings_table(cfg, ["vgg_width", "vgg_norm", "vgg_stride", "vgg_pools", "cls_head", "pretrained", "cls_epochs",
                            "cls_batch", "cls_lr", "cls_momentum", "cls_optimizer", "cls_pos_weight", "cls_sampling",
                            "cls_near_negatives", "cls_select", "vgg_init", "cam_align", "augment_engine", "workers"])

# %%
t0 = time.perf_counter()
history = train.train_classifier(run, resume=resume)
print(f"training: {time.perf_counter() - t0:.0f} s this session; {history['train_s'].sum():.0f} s of training "
      f"over {len(history)} epochs")
tplots.learning_curves(history, ("auc", "pointing_visible"));

# %% [markdown]
# ## 6. Validation: ROC and confusion matrix
#
# The best checkpoint predicts every validation and test slice (`classifier/predictions.csv`; notebook 03
# computes CAMs for the slices the gate lets through); the demo's slice score also reads the neighbouring
# slices, as the paragraph after the table explains. The paper's weighted loss ($w = 7.7$) and the demo's
# balanced epochs ($w = 1$, half of every epoch tumorous) both train the classifier as if tumor slices were as
# common as tumor-free ones, while only 13 % are: at $p \ge 0.5$ it calls about as many validation slices
# tumorous as there are (confusion matrix: 274 slices called where 272 hold lesion), but 58 of them are false
# alarms beside 216 hits, and 56 tumor slices are missed (sensitivity 0.794, specificity 0.968). Notebook 04
# therefore tunes the gate.

# %%
model = train.load_classifier(run, "best")
pred = train.write_classifier_predictions(run, model)
val = pred[pred["split"] == "val"]
summary = pd.DataFrame({s: train.classifier_metrics(g["label"], g["prob"]) for s, g in pred.groupby("split")}).T
summary.round(3)


# %% [markdown]
# **One slice, or its neighbours too?** The network sees one slice, but a lesion spans several (6 mm apart
# here), and the tumor slices it scores worst are mostly a lesion's first or last slice, whose neighbours cut
# through the lesion's bright middle (below: "Where the AUC is lost"). The chain's slice score therefore averages
# the network's logits $\ell_z$ along the body axis of each study with a Gaussian (`train.z_context`),
#
# $$ s_z = \frac{\sum_j w_j\,\ell_{z+j}}{\sum_j w_j}, \qquad w_j = e^{-(j\,\Delta z)^2 / 2\sigma^2}, \qquad
# p_z = \frac{1}{1 + e^{-s_z}}, $$
#
# with $\sigma$ = `cls_z_sigma_mm` = 9 mm, 1.5 slices (the ends of a study repeat its edge slice). An end slice
# borrows evidence from its lesion's middle; an isolated hot spot one or two slices thick, such as a benign
# node, is averaged down by its tumor-free neighbours. The network and its training are unchanged:
# `classifier/predictions.csv` keeps the network's own score as `prob_slice`, and `prob`, the score of the table
# above and of everything after it (the gate, notebooks 03–06), is the averaged one. The paper scores each slice
# on its own (`cls_z_sigma_mm = 0`, the paper profile). The table scores this network's validation slices with
# several widths: 0.949 on its own, 0.970 at 6 mm, 0.971 at 9 mm, 0.968 at 12 mm. 9 mm was chosen on the
# validation AUC of three seeds (`config.DEMO_OVERRIDES`; re-checked on the 60-study classifiers, it is still the
# best width on every seed), and on 78 held-out studies it raised each seed's AUC by 0.022–0.028 while the maps'
# Dice stayed where it was (the global threshold behind the same gate lost 0.01; docs/log.md). It has a price
# too: a tumor-free slice between two lesions borrows from both (section 8).

# %%
def context_auc(sigma_mm: float) -> float:
    """Validation AUC of the network's slice logits averaged along z with a Gaussian of sigma_mm."""
    scores = train.z_context(logit(val["prob_slice"]), val["study_id"], val["slice"], sigma_mm / cfg.spacing_mm[0])
    return train.classifier_metrics(val["label"], expit(scores))["auc"]


sigmas = sorted({0.0, 6.0, 12.0, cfg.cls_z_sigma_mm})
pd.Series({s: context_auc(s) for s in sigmas}, name="validation AUC").rename_axis("sigma (mm)").round(3)

# %%
tplots.roc_and_confusion(val["label"], val["prob"]);

# %% [markdown]
# **How sure is that AUC?** Its slices are not independent draws: they come from 12 patients, and the slices of
# one patient share its anatomy, its physiology and its lesions. So the uncertainty is estimated by resampling
# *studies*, not slices: draw 12 of the 12 validation studies with replacement, score the AUC on all their
# slices, repeat 1,000 times, and read the 2.5th and 97.5th percentiles (`diagnostics.study_bootstrap_auc`).

# %%
val_auc_ci = diagnostics.study_bootstrap_auc(pred, "val")
print(f"validation AUC {summary.loc['val', 'auc']:.3f}, 95 % interval over resampled studies "
      f"{val_auc_ci[0]:.3f}-{val_auc_ci[1]:.3f}")

# %% [markdown]
# **Where the AUC is lost.** A slice counts as "tumor" when a single lesion voxel lies in it, and many do by a
# little: the last slice of a lesion, where only its partial-volume rim is left, or a small metastasis. The table
# splits the validation tumor slices by the area of their lesion cross-section and scores each group against
# every tumor-free slice (`diagnostics.auc_by_lesion_area`; "AUC from here": that group and all larger ones).
# 51 of the 272 tumor slices hold less than 80 mm² of lesion (five 4 mm pixels); the slice score gives them a
# median $p$ of 0.66 and ranks them above a tumor-free slice with probability 0.94 (the network alone: 0.46 and
# 0.85, the context's gain). Without them the AUC would be 0.978, and on the slices with at least 320 mm² of
# lesion it is 0.988. The AUC target (0.95) is met overall (0.971), but not on those smallest
# cross-sections alone: a lesion's last slice with a few faint voxels, like one of the two misses of section 8.

# %%
diagnostics.auc_by_lesion_area(pred, store.index, "val").round(3)

# %% [markdown]
# ## 7. Does the classifier look at the lesion? Stage diagnostics
#
# A good AUC is not enough: the slice's **body level** alone predicts "tumor" well in this cohort (lesions lie
# between neck and groin), and a classifier can score from where the slice is without ever looking at a
# lesion. Two numbers tell the difference. `level_auc` is the shortcut's own score: the training tumor rate at
# each slice's relative level, used as the prediction on the validation slices. The **pointing game** asks, on
# every validation tumor slice, whether the cell where the class activation map $M = \sum_k v_k A^k$ (notebook
# 03) peaks holds lesion voxels; `pointing_visible` counts only slices whose lesion reaches SUV 3. `cell_auc`
# ranks all cells of those slices by $M$ against "holds lesion". The demo keeps the epoch with the best
# `cls_select`; the numbers go to `classifier/diagnostics.json`, where `val_auc` scores the slice score the gate
# reads (with the context along z) and `val_auc_slice` the network alone.

# %%
localization = diagnostics.pointing_probe(store, "val", align=cfg.cam_align == "flip")(model)
record = diagnostics.write(run.dir, val_auc=summary.loc["val", "auc"], val_auc_ci_low=val_auc_ci[0],
                           val_auc_ci_high=val_auc_ci[1], val_auc_slice=context_auc(0.0),
                           level_auc=diagnostics.level_auc(store.index, "val"), **localization)
pd.Series(record).round(3)

# %% [markdown]
# **Reading the numbers.** The shortcut alone scores a validation AUC of 0.88 here; the network alone scores 0.95,
# 0.073 above it, and with the context along z 0.97, so the AUC alone cannot show that it looks at lesions.
# The pointing numbers show that it does: the kept epoch (31 of 32; see the summary) maps its peak onto a lesion
# on 77 % of the validation tumor slices (82 % of those with a visible lesion), and a lesion cell outranks a
# lesion-free cell with probability 0.91. Of the two classifier targets of the issue, this run (seed 0) meets
# **both**: visible pointing ≥ 0.75 (0.82; 7 of the 32 epochs reach it) and AUC ≥ 0.95 (0.971 with the context,
# 0.949 alone; 0.948 alone on the thinned per-epoch subset of section 5), and the whole 95 % interval over
# resampled validation studies, 0.952–0.987, lies above 0.95 (section 6). What lifted it is the training set:
# the classifier now trains on 60 studies (the 30 of earlier runs read 0.936 and 0.67). Training is chaotic, and
# one seed is one draw: with the same recipe seeds 1 and 2 reach visible pointing 0.80 and 0.80 with validation
# AUC 0.949 and 0.965 (0.930 and 0.946 alone) (`benchmarks.classifier_seeds` and `benchmarks.seed_dice_probe`).
# The pointing target is met on every seed; the AUC target on seeds 0 and 2, while seed 1 stays 0.0008 short (no
# width of the context lifts it): the data limit it, as section 6 shows where AUC is still lost, on the tumor
# slices with less than 80 mm² of lesion, and tumor-free slices carry lesion-like physiological uptake (section 8).
# These pointing numbers read the maps moved back by the network's displacement, here $d = (-16, -4.5)$
# pixels, two 32 mm cells up and about half a cell to the left (`cam_shift_y`, `cam_shift_x`; notebook 03,
# section 8). With them, visible pointing starts at 0.21 after epoch 1 (0.53 after epoch 2), first passes 0.6
# at epoch 4, then swings from epoch to epoch between 0.26 and 0.82 to epoch 32 (0.81 at epoch 16, 0.29 at
# epoch 18), while the per-epoch AUC stays between 0.86 and 0.95 from epoch 5: the network looks at the lesion
# on many epochs, but which epoch is kept matters, and `cls_select` keeps epoch 31, where both numbers are at
# their best. Without the correction a run can look as if its evidence drifted off the lesion (seed 1 with
# torchvision's initialisation: visible pointing 0.04 at epoch 16, 0.87 once its maps are moved back; README).

# %% [markdown]
# ## 8. Slices with their predicted probability
#
# Confident hits, missed tumor slices and the most confident false alarm of the validation split, with the slice
# score $p$ (context along z). The two hits ($p = 1.00$: slices 88 and 87 of PETCT_0222) cut through the middle of
# a bright lesion (slices 84–90, SUV up to 16.6). The two misses are end slices whose lesion pixels are faint:
# slice 67 of PETCT_0106 ($p = 0.17$; the network alone 0.10) is the first slice of two lesions (slices 67–76 and
# 67–72, SUV up to 9.6 deeper in), but its 22 lesion pixels read SUV 1.9–2.7, no brighter than the slice's
# hottest pixel outside them (2.7), and its neighbours score too low (0.36–0.38 alone) to lift it; slice 40 of
# PETCT_0222 ($p = 0.20$) holds two lesion pixels of SUV 1.8–2.3, the last slice of a lesion on slices 36–40
# (SUV up to 4.8). The false alarm ($p = 0.998$) is slice 91 of PETCT_0222, next to the bright lesion's last
# slice and one of two tumor-free slices between two lesions (slices 84–90 and 93–99): the network already gives
# it 0.994 on its own. Its neighbour, slice 92, shows the price of reading the neighbours: 0.12 alone, 0.95
# with the context, which borrows from both sides. Among the next false alarms, slices 102 and 103 of the same
# study ($p = 0.981$ and $0.979$; the network alone 1.00) hold no lesion voxel either: their hot spot (SUV 7.3)
# is a benign FDG-avid lymph node beside the lung, part of the added physiology. On uptake alone a reactive node
# looks like a nodal metastasis, and the slice classifier calls it one.

# %%
groups = {"true positive": val[val["label"] == 1].nlargest(2, "prob"),
          "missed tumor": val[val["label"] == 1].nsmallest(2, "prob"),
          "false alarm": val[val["label"] == 0].nlargest(1, "prob")}
shown = pd.concat(groups.values())
rows = shown[["study_id", "slice"]].merge(store.index.reset_index(), on=["study_id", "slice"], how="left")["index"]
xs, ms = store.read(rows.to_numpy())
tplots.slices_with_probability(xs, ms, shown["prob"].to_numpy(), shown["label"].to_numpy());

# %% [markdown]
# ## Summary
#
# Written to the run directory: `classifier/best.pt`, `classifier/last.pt`, `classifier/history.csv` and
# `classifier/predictions.csv` (study_id, slice, split, label, prob of every validation and test slice, and
# prob_slice, the network's own score before the context along z).

# %%
best = history.loc[train.selection_score(history, cfg.cls_select).idxmax()]
print(f"epoch kept ({cfg.cls_select}): {int(best['epoch'])}; validation AUC {best['val_auc']:.3f}, pointing "
      f"{best['val_pointing']:.3f} (visible lesions {best['val_pointing_visible']:.3f}); slices called tumorous "
      f"(p >= 0.5): {(pred['prob'] >= 0.5).sum()} of {len(pred)}")

# %% [markdown]
# ## Exercises
#
# 1. The body-level shortcut on the test split: how well does the slice's relative level alone rank the
#    *test* slices, and how does the kept classifier compare there? (The CAM identity $y = b + \overline{M}$
#    is notebook 03's first exercise.)
#
# **Solution 1.**

# %% jupyter={"source_hidden": true} tags=["solution"]
print(f"test AUC: body level alone {diagnostics.level_auc(store.index, 'test'):.3f}, "
      f"kept classifier {summary.loc['test', 'auc']:.3f} (validation: {record['level_auc']:.3f} and {record['val_auc']:.3f})")

# %% [markdown]
# `level_auc` fits the training tumor rate per relative level and uses it as the prediction. If the
# classifier barely beats it on test, its AUC may come from where the slice is rather than from a lesion;
# the pointing numbers of section 7 tell the two apart.
#
# 2. The weighted loss is minimised by a constant prediction when the network has learned nothing. Which
#    constant, and what loss does it give on a split with tumor fraction $f$? Compare with the first epoch.
#
# **Solution 2.**

# %% jupyter={"source_hidden": true} tags=["solution"]
f = 0.5 if cfg.cls_sampling == "balanced" else store.index.loc[store.index["split"] == "train", "label"].mean()
w = cfg.cls_pos_weight
fw = w * f / (w * f + 1 - f)
entropy = -(fw * np.log(fw) + (1 - fw) * np.log(1 - fw))
y_prior = (torch.arange(2_000) < round(f * 2_000)).float()  # labels with tumor fraction f
constants = torch.linspace(-3, 3, 601)                       # constant logits, steps of 0.01
losses = torch.stack([train.weighted_ce(torch.full_like(y_prior, float(c)), y_prior, w) for c in constants])
best_p = float(torch.sigmoid(constants[losses.argmin()]))
assert abs(best_p - fw) < 0.005 and abs(float(losses.min()) - entropy) < 5e-4
print(f"f = {f:.3f}, w = {w:g}: best constant p = {best_p:.3f} (f_w = {fw:.3f}), its loss {float(losses.min()):.4f} "
      f"(entropy {entropy:.4f}); first epoch's training loss {history['train_loss'].iloc[0]:.4f}")

# %% [markdown]
# The weighted mean is an ordinary cross entropy with effective tumor fraction $f_w = wf / (wf + 1 - f)$; the
# best constant is $p = f_w$ and the loss is the entropy $-f_w\log f_w - (1-f_w)\log(1-f_w)$ (the scan over
# constant logits finds both). A training loss that stays at this value means the network only learned the
# class prior. Here the first epoch's loss lies *above* it (0.79): the LSUV start (section 5) gives
# confident predictions before the network has learned anything, and confident wrong answers cost more than
# the prior's $\ln 2$.
#
# 3. Rotate a slice by 90° with both augmentation engines and check the direction against `torch.rot90`.
#
# **Solution 3.**

# %% jupyter={"source_hidden": true} tags=["solution"]
full = lambda v: torch.full((1,), v, dtype=torch.float64)
p90 = augment.AugmentParams(full(1.0), full(90.0), full(0.0), full(1.0))  # scale, degrees, shift, gamma
for engine in ("torch", "imgaug"):
    out, out_mask = augment.augment(x[:1], mask[:1], p90, engine)
    clockwise, counter = torch.rot90(x[:1], -1, (-2, -1)), torch.rot90(x[:1], 1, (-2, -1))
    print(f"{engine}: max |Δ| against rot90 clockwise {float((out - clockwise).abs().max()):.4f}, "
          f"counter-clockwise {float((out - counter).abs().max()):.1f}; mask pixels off the clockwise "
          f"rotation {int((out_mask != torch.rot90(mask[:1], -1, (-2, -1))).sum())}")

# %% [markdown]
# Both engines agree with `torch.rot90(x, -1)`: a positive angle turns the slice clockwise on screen (image rows
# run downwards), and image and mask turn together. Any residual is interpolation rounding (HU values are in the
# hundreds).
