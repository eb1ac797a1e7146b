# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 — Class activation maps: where does the classifier see a tumor?
#
# **What you will learn.** The slice classifier of notebook 02 only answers "tumor or not". A class activation
# map (CAM) asks *where* in the slice the evidence for "tumor" sits. You will derive four maps from their
# equations — CAM, GradCAM, GradCAM++ and ScoreCAM — write each in a few lines from scratch, check it against
# the package, test the claim that GradCAM lights up one lesion only, meet the single-logit softmax pitfall of
# ScoreCAM, look at LayerCAM (beyond the paper), store the maps of every slice the classifier calls
# tumorous for Algorithm 1 (notebook 04), and test whether the authors' classifier head explains the paper's
# GradCAM gap.
#
# **Where in the paper.** Sec. 2.2.1 *Class activation maps*, Eqs. 1–6, and Fig. 4.

# %% tags=["parameters"]
profile = "demo"          # "demo" (laptop CPU) or "paper" (the paper's settings)
run_dir = "../runs/demo"  # artifacts of the whole chain
overrides = {}            # any config value, e.g. {"scorecam_topk": 64}
n_panel = 3               # multi-lesion test slices in the Fig. 4 style panel
extra_methods = ["layercam", "layercam_fused"]  # shown beside the paper's four, not stored
head_epochs = 2           # epochs of section 10's classifier with the authors' head (0 skips that section)
head_slices = 64          # validation tumor slices on which section 10 compares the maps

# %%
import dataclasses
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from wsseg_nb import cam, config, diagnostics, runs, train
from wsseg_nb.plots import cams as cplots
from wsseg_nb.slices import SliceStore

run = runs.start(profile, run_dir, **overrides)
cfg = run.config
store = SliceStore(run.store)
model = train.load_classifier(run)
predictions = pd.read_csv(run.dir / "classifier" / "predictions.csv", dtype={"study_id": str})
lowest_gate = min(cfg.gates)
rows = cam.gated_rows(predictions, store.index, lowest_gate, tumor_slices=True)
called = rows["prob"] >= lowest_gate
print(f"profile {cfg.profile}, device {run.device}, CAM methods {list(cfg.cam_methods)}")
print(f"val+test slices called tumorous (p >= {lowest_gate}): {int(called.sum())} of {len(predictions)} "
      f"({int(rows.loc[called, 'label'].sum())} truly contain lesion voxels); with the {int((~called).sum())} "
      f"missed tumor slices (for notebook 04's perfect-gate diagnostic): {len(rows)} slices get CAMs")

# %% [markdown]
# ## 1. The ingredients: feature maps $A_k$ and one FC layer
#
# The classifier is `fc(pool(features(scale(x))))`: the last conv layer gives $K$ feature maps $A_k$ of
# $h \times w = S/8 \times S/8$ pixels (ReLU'd, so $A_k \ge 0$), a global pool $P$ turns each into a number,
# and one FC layer with weights $v_k$ and bias $b$ gives the tumor logit
# $$y = b + \sum_k v_k\,P(A_k), \qquad P(A_k) = \frac{1}{N}\sum_{h,w} A^k_{hw} \ \text{(average)} \quad\text{or}\quad
# \max_{h,w} A^k_{hw} \ \text{(max)}, \qquad N = h\,w .$$
# The paper's text uses global average pooling (GAP, `cls_head="gap_fc"`); the demo uses global max pooling (GMP,
# `"gmp_fc"`, Oquab et al. 2015), which ties each channel's contribution to its peak cell (notebook 02 says why).
# Every formula below is written for both.
# We take a few **test slices with several lesions** (ground-truth components) that the classifier calls
# tumorous (most confident first by the network's own `prob_slice`); every map below is computed for them.

# %%
gt_all = store.read(rows["position"].to_numpy())[1]
lesions = cam.lesion_peaks(gt_all, {})
per_slice = lesions.groupby("row").size().reindex(range(len(rows)), fill_value=0)
order = np.lexsort((-rows["prob_slice"].to_numpy(), -per_slice.to_numpy(), rows["split"].ne("test").to_numpy()))
panel = order[:n_panel]
x_np, gt = store.read(rows["position"].to_numpy()[panel])
x = torch.from_numpy(x_np)
with torch.no_grad():
    A = model.features(model.scale(x))
v, N = model.fc.weight[0].detach(), A.shape[-2] * A.shape[-1]
labels = [f"{r.study_id} z{r.slice}\np={r.prob:.2f}" for r in rows.iloc[panel].itertuples()]
print(f"head {cfg.cls_head!r}: pool {model.pool}")
print(f"A: {tuple(A.shape)} (B, K, h, w); lesions on the panel slices: {per_slice.to_numpy()[panel].tolist()}")
print(f"channels that are all zero on these slices: {A.flatten(2).amax(-1).eq(0).sum(1).tolist()} of {A.shape[1]}")


# %% [markdown]
# ## 2. CAM (Eq. 1)
#
# $$M = \sum_k v_k A_k$$
# — the logit before pooling, pixel by pixel. Eq. 1 has no ReLU: negative evidence stays. To compare maps of
# different slices, every method's map is min-max normalised per slice to $[0, 1]$ (an all-constant map
# becomes 0).

# %%
def minmax(m: torch.Tensor) -> torch.Tensor:
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    return (m - lo) / (hi - lo)


M_cam = torch.einsum("k,bkhw->bhw", v, A)
assert torch.allclose(minmax(M_cam), cam.compute_cams(model, x, "cam"), atol=1e-5)
print("CAM from scratch == cam.compute_cams(model, x, 'cam')")

# %% [markdown]
# ## 3. GradCAM (Eqs. 2–3): does it light up one lesion only?
#
# $$\delta_k = \frac{1}{N}\sum_{h,w}\frac{\partial y}{\partial A^k_{hw}}, \qquad M = \max\Big(\sum_k \delta_k A_k, 0\Big).$$
# With GAP + one FC layer the gradient is the same everywhere, $\partial y / \partial A^k_{hw} = v_k / N$; with GMP
# it is $v_k$ at the channel's peak cell and 0 elsewhere. Either way its spatial mean is $\delta_k = v_k/N$, and
# **GradCAM is exactly CAM with a ReLU** (up to the factor $1/N$ that normalisation removes).

# %%
A_ = A.clone().requires_grad_(True)
logit = model.fc(model.pool(A_).flatten(1))[:, 0]
(g,) = torch.autograd.grad(logit.sum(), A_)
delta = g.mean((2, 3))                                   # Eq. 2
M_gradcam = torch.einsum("bk,bkhw->bhw", delta, A).relu()  # Eq. 3
assert torch.allclose(delta, (v / N).expand_as(delta))
assert torch.allclose(minmax(M_gradcam), cam.compute_cams(model, x, "gradcam"), atol=1e-5)
assert torch.allclose(minmax(M_gradcam), minmax(M_cam.relu()), atol=1e-5)
print("GradCAM from scratch == package == CAM with ReLU")

# %% [markdown]
# Does the ReLU cost the weaker lesions? Only where CAM is negative. CAM's min-max normalisation maps the most
# negative pixel to 0, GradCAM's the value 0; the deeper CAM dips below 0 off the evidence, the more its
# normalisation lifts the weak values above GradCAM's. The table gives each ground-truth lesion's peak value of
# the maps on the panel slices (as the network gives them, not moved back by the displacement $d$ of section 8).
# CAM and GradCAM are closest on the strongest lesion of each slice (0.58 and 0.42 on PETCT_0085, slice 106, 0.75
# and 0.63 on PETCT_0445, slice 91, 0.68 and 0.56 on its slice 90) and further apart on the weak ones, GradCAM never
# higher: it gives the 1-, 4-, 6- and 11-voxel lesions 0 (CAM 0.16 to 0.26).
# GradCAM++ and ScoreCAM weight the channels differently and move a lesion's value by up to about two fifths of
# the range from CAM's (the 4-voxel lesion of slice 91: 0.48 in GradCAM++ against 0.16; the 106-voxel one of
# PETCT_0085: 1.00 in ScoreCAM against 0.58). CAM, GradCAM and GradCAM++ leave some lesion of every panel slice
# below 0.4 of its maximum; ScoreCAM only on PETCT_0085 (0.38). Over all gated slices (section 9, maps
# moved back by $d$) the non-largest lesions of multi-lesion slices peak at a median 0.39 (ScoreCAM) to 0.64
# (GradCAM++). GradCAM keeps CAM's peak and its level sets above 0, so the paper's GradCAM gap (0.12 against CAM's
# 0.46) cannot come from this architecture.

# %%
maps_panel = {m: cam.compute_cams(model, x, m, scorecam_weights=cfg.scorecam_weights).numpy()
              for m in (*cfg.cam_methods, *extra_methods)}
peaks = cam.lesion_peaks(gt, {m: maps_panel[m] for m in cfg.cam_methods})
peaks["slice"] = [labels[r].replace("\n", " ") for r in peaks["row"]]
peaks.drop(columns="row").round(2)

# %% [markdown]
# ## 4. GradCAM++ (Eqs. 4–5) in exact closed form
#
# $$w_k = \sum_{h,w}\alpha^{k}_{hw}\,\max\Big(\frac{\partial Y}{\partial A^k_{hw}}, 0\Big), \qquad
# \alpha^{k}_{hw} = \frac{\partial^2 Y/\partial (A^k_{hw})^2}{2\,\partial^2 Y/\partial (A^k_{hw})^2 +
# \sum_{i,j} A^k_{ij}\,\partial^3 Y/\partial (A^k_{hw})^3}.$$
# The exp trick: take $Y = e^{y}$. The network after $A$ is piecewise linear in $A$, so with $g = \partial y/\partial A$
# the derivatives are $Y g$, $Y g^2$, $Y g^3$ and
# $$\alpha = \frac{g^2}{2g^2 + g^3\sum_{ij}A_{ij}} = \frac{1}{2 + g\sum_{ij}A_{ij}} \quad (g \ne 0).$$
# For GAP + FC ($g = v_k/N$ on all $N$ cells): $\alpha_k = 1/(2 + v_k\,\overline{A_k})$ and
# $w_k = \max(v_k,0)/(2 + v_k\,\overline{A_k})$. For GMP + FC ($g = v_k$ on the peak cell only):
# $w_k = \max(v_k,0)/(2 + v_k\sum_{ij}A^k_{ij})$, the sum in place of the mean.
# The common factor $Y$ drops out in the normalisation. A fixed $\varepsilon$ in the denominator (one peer
# library adds $10^{-6}$) is not harmless in general: under GAP $g^2 = (v_k/N)^2$ can be of that order or smaller. The
# cell prints this classifier's range of $g^2$ and how far such an $\varepsilon$ moves its maps (here not at all to
# three decimals: under GMP $g^2 = v_k^2$ on each channel's peak cell and 0 elsewhere, where $\alpha$ is set to 0,
# so its smallest non-zero $g^2$ are for channels with small weights).

# %%
S_A = A.sum((2, 3), keepdim=True)
alpha = torch.where(g != 0, g**2 / (2 * g**2 + g**3 * S_A), 0.0)  # Eq. 5 as written (float32)
w_pp = (alpha * g.relu()).sum((2, 3))                              # Eq. 4
M_pp = torch.einsum("bk,bkhw->bhw", w_pp, A).relu()
closed = v.relu() / (2 + v * (A.mean((2, 3)) if cfg.cls_head == "gap_fc" else A.sum((2, 3))))
assert torch.allclose(minmax(M_pp), cam.compute_cams(model, x, "gradcampp"), atol=1e-4)
assert torch.allclose(w_pp, closed, rtol=1e-3)
alpha_eps = g**2 / (2 * g**2 + g**3 * S_A + 1e-6)
M_eps = torch.einsum("bk,bkhw->bhw", (alpha_eps * g.relu()).sum((2, 3)), A).relu()
print(f"g^2 ranges over [{(g**2).amin():.1e}, {(g**2).amax():.1e}]; "
      f"largest map change from an epsilon of 1e-6: {(minmax(M_eps) - minmax(M_pp)).abs().max():.3f}")

# %% [markdown]
# ## 5. ScoreCAM (Eq. 6) and the single-logit softmax pitfall
#
# No gradients: each channel map $A_k$ is upsampled to the slice size and min-max normalised to a mask $H_k$,
# the (scaled) input is multiplied by it, and the classifier scores the masked slice. A softmax over the
# channels turns the $K$ scores into weights, $M = \max(\sum_k \alpha_k A_k, 0)$. The score is the **tumor
# logit**: its channel softmax weights each channel by the odds $e^{y_k} = p_k/(1-p_k)$ that its region alone is
# tumor. (A softmax of sigmoid probabilities would bound the weights within a factor $e$ and saturate at 1 for a
# confident classifier.) The subtracted baseline of the paper is common to all channels and cancels in the softmax.
# All-zero channels give an all-zero mask and a zero term, so the package skips them (exact).

# %%
i0 = 0
z = model.scale(x[i0:i0 + 1])
a = A[i0]
H = cam.normalize_maps(F.interpolate(a[:, None], size=z.shape[-2:], mode="bilinear", align_corners=False))
with torch.no_grad():
    y_k = cam.logit_from_scaled(model, z * H)  # K masked slices, one logit each
alpha_sc = torch.softmax(y_k, dim=0)              # softmax over the K channels
M_sc = torch.einsum("k,khw->hw", alpha_sc, a).relu()[None]
assert torch.allclose(minmax(M_sc), cam.compute_cams(model, x[i0:i0 + 1], "scorecam"), atol=1e-4)
pitfall = torch.softmax(y_k[:, None], dim=1)[:, 0]  # softmax over the single logit of each masked slice
print(f"masked logits range [{y_k.min():.2f}, {y_k.max():.2f}]; the pitfall's weights: {pitfall.unique().tolist()}")

# %% [markdown]
# A binary classifier with one output has one logit; a softmax over it is $e^{y}/e^{y} = 1$ for every masked
# slice, so every channel gets the same weight and "ScoreCAM" degenerates into the plain sum of the channels.
# The plot shows the weights of the first panel slice; the maps show what the pitfall costs. On this slice the
# uniform map is hot in the same region as ScoreCAM's but spreads wider, and its
# weights no longer depend on the scores: ScoreCAM's put about a seventh of the weight on one channel and over a
# third on three.

# %%
weights = {"softmax over channels of logits (Eq. 6)": alpha_sc.numpy(),
           "probabilities p_k, scaled to sum 1 (authors' code)": (y_k.sigmoid() / y_k.sigmoid().sum()).numpy(),
           "softmax over the single logit (pitfall)": (pitfall / len(pitfall)).numpy()}
cplots.channel_weights_plot(weights);
M_pitfall = torch.einsum("k,khw->hw", pitfall, a).relu()[None]
cplots.cam_panel(x_np[:1, 0], x_np[:1, 1], gt[:1], {"scorecam": minmax(M_sc).numpy(),
                 "pitfall (uniform)": cam.normalize_maps(M_pitfall).numpy()}, labels[:1]);

# %% [markdown]
# ### Eq. 6's softmax or the probabilities?
#
# Eq. 6 turns the $K$ scores into weights with a softmax. The ScoreCAM authors' released code does not normalise:
# it multiplies each channel by the class probability of its masked input, $\alpha_k = p_k = \sigma(y_k)$ (with
# one logit the two-class softmax is the sigmoid), and sums. The softmax gives channel $k$ a share proportional to
# the odds $e^{y_k}$, so when the masked logits spread over several units a few channels take nearly all of the
# weight and the map is theirs; the probabilities give every channel whose region alone reads as tumor
# ($p_k \approx 1$) about the same weight, and a channel whose region reads as background ($p_k \approx 0$) none.
# On the first panel slice the softmax puts 0.14 of the weight on one channel, the probabilities at most 0.02, with
# 55 of the 64 channels at $p_k > 0.5$; the two normalised maps differ by up to 0.47 of their range.
# `scorecam_weights` chooses between them. Both profiles keep Eq. 6: on this run's validation split the probabilities
# raised ScoreCAM's median Dice from 0.56 to 0.63 (its tuned $t$ moved from 0.1 to 0.37), but on 78 held-out studies
# the same choice changed nothing (paired median difference 0.000 on each of three classifier seeds) and lowered the
# MTV agreement on two of them: twelve validation studies are few to tune $t$ on (docs/log.md, session 27).

# %%
alpha_p = y_k.sigmoid()                              # p_k of each masked slice, not normalised
M_p = torch.einsum("k,khw->hw", alpha_p, a).relu()[None]
assert torch.allclose(minmax(M_p), cam.compute_cams(model, x[i0:i0 + 1], "scorecam", scorecam_weights="probability"),
                      atol=1e-4)
print(f"largest share of the weight on one channel: softmax {alpha_sc.max():.2f}, probabilities "
      f"{alpha_p.max() / alpha_p.sum():.2f}; channels with p_k > 0.5: {int((alpha_p > 0.5).sum())} of {len(alpha_p)}; "
      f"the two maps differ by up to {(minmax(M_p) - minmax(M_sc)).abs().max():.2f}")

# %% [markdown]
# ## 6. Beyond the paper: LayerCAM
#
# LayerCAM weights every pixel by its own positive gradient, $M = \max(\sum_k \max(g^k_{hw},0)\,A^k_{hw}, 0)$.
# At the last layer of GAP + FC that is CAM with $\max(v_k, 0)$; under GMP only each channel's peak cell has a
# gradient, so it is a sparse map of peaks. Its point is earlier layers, where gradients
# vary over the image: `layercam_fused` computes it at the ends of the last three VGG stages, scales each map by
# $\tanh(2M)$, upsamples to the finest and keeps the element-wise maximum (a finer map, $S/2$ here).

# %%
M_layer = torch.einsum("bkhw,bkhw->bhw", g.relu(), A).relu()
assert torch.allclose(minmax(M_layer), cam.compute_cams(model, x, "layercam"), atol=1e-5)
print({m: maps_panel[m].shape[1:] for m in maps_panel})

# %% [markdown]
# ## 7. All methods side by side (Fig. 4 style)
#
# PET with the ground-truth outline (yellow), each method's map over the PET (white outline), and the CT.

# %%
cplots.cam_panel(x_np[:, 0], x_np[:, 1], gt, maps_panel, labels);

# %% [markdown]
# ## 8. Where the maps sit: a displacement, measured by flipping
#
# A global pool, average or max, makes the logit blind to *where* the evidence sits: moving every feature map $A_k$
# by a constant $d$ changes nothing the loss sees. A network trained long enough can therefore learn such a move, and
# its maps then peak beside the lesion, always on the same side (README: it is what looked like
# "evidence drifting onto the lungs and the body outline"). The displacement can be measured **without a
# single mask**. Flip a slice left-right: the lesion's evidence moves with the anatomy, the learned displacement
# does not, so the map of the flipped slice, flipped back, is displaced by $(d_y, -d_x)$ instead of
# $(d_y, d_x)$; its peak lies $2 d_x$ from the unflipped map's peak. Half the median difference over training
# tumor slices (slice labels only) is $d_x$; an up-down flip gives $d_y$ (`cam.flip_displacement`). With
# `cam_align = "flip"` every map is moved back by $d$ (`cam.shift_maps`, bilinear between cells) before
# Algorithm 1 reads it, and the pointing score that picks the epoch (notebook 02) reads the corrected maps.
# `classifier/best.pt` records the $d$ measured after its epoch.

# %%
shift = train.cam_shift(run)
x_align = torch.from_numpy(store.read(diagnostics.tumor_slices(store, "train", cam.ALIGN_SLICES))[0])
print(f"displacement of the maps (rows, cols) in pixels of {cfg.spacing_mm[1]:g} mm: {shift} recorded with the "
      f"checkpoint, {cam.flip_displacement(model, x_align)} measured again here")

# %% [markdown]
# The panel slices: the CAM as the network gives it, the CAM of the left-right flipped slice flipped back
# (displaced the other way), and the CAM moved back by $d$.

# %%
cam_raw = cam.compute_cams(model, x, "cam")
cam_flipped = cam.compute_cams(model, x.flip(-1), "cam").flip(-1)
cam_aligned = cam.normalize_maps(cam.shift_maps(cam_raw, shift, x.shape[-1]))
cplots.cam_panel(x_np[:, 0], x_np[:, 1], gt, {"CAM": cam_raw.numpy(), "flipped, flipped back": cam_flipped.numpy(),
                                              "CAM moved back by d": cam_aligned.numpy()}, labels);

# %% [markdown]
# On every validation tumor slice, the pointing game (notebook 02) before and after the correction. This
# classifier's maps sit about two cells up and half a cell to the left of the evidence (16 and 4.5 pixels,
# 64 and 18 mm; a cell is 8 pixels). That puts the peak cell beside the lesion on almost every slice:
# pointing rises from 0.026 to 0.772 (visible lesions 0.029 to 0.819, above the 0.75 target) once the maps
# are moved back. The cell AUC moves less (0.759 to 0.906): moving a smooth map by a cell reorders cells across
# slices much less than it changes which cell of a slice is the peak, and the peak is what Algorithm 1 scales
# $t$ by.

# %%
pd.DataFrame({"as the network gives them": diagnostics.pointing_probe(store, "val")(model),
              "moved back by d": diagnostics.pointing_probe(store, "val", align=True)(model)}).T.round(3)

# %% [markdown]
# ## 9. Maps of every slice the classifier calls tumorous
#
# Algorithm 1 (notebook 04) needs the maps of the val and test slices the classifier calls tumorous at the
# lowest gate it may choose ($p \ge$ `min(cfg.gates)`), plus the truly tumorous ones for its diagnostics.
# The package streams them from the slice store in batches and writes `cams/index.csv` plus one float16 array
# per method, aligned with its rows, every map moved back by the classifier's displacement $d$ (section 8).
# ScoreCAM is exact unless `scorecam_topk` > 0 (then the top-k channels
# by variance), its channels weighted as `scorecam_weights` says. All four maps read the same activations $A$ of the last conv layer, so one forward pass per batch
# serves them all (`cam.compute_maps`): CAM weighs $A$ by $v$, GradCAM and GradCAM++ by its gradient (one backward
# pass through the head only), and ScoreCAM's masked forwards reuse $A$ for their masks.

# %% [markdown]
# With `scorecam_topk > 0` (the demo: ScoreCAM's $K$ masked forwards per slice dominate the time spent on maps)
# only the channels with the largest activation variance are scored (8 of the 64 on the demo). How far that lands
# from exact ScoreCAM, on the panel slices:

# %%
if cfg.scorecam_topk:
    approx = cam.compute_cams(model, x, "scorecam", topk=cfg.scorecam_topk,
                              scorecam_weights=cfg.scorecam_weights).numpy()
    print(f"top-{cfg.scorecam_topk} of {A.shape[1]} channels vs exact ScoreCAM: max |Δ| "
          f"{np.abs(approx - maps_panel['scorecam']).max():.3f}, mean |Δ| {np.abs(approx - maps_panel['scorecam']).mean():.3f}")

# %%
start = time.perf_counter()
maps_all = cam.cams_for_slices(model, store, rows["position"].to_numpy(), cfg.cam_methods,
                               batch_size=cfg.cam_batch, device=run.device, topk=cfg.scorecam_topk, shift=shift,
                               scorecam_weights=cfg.scorecam_weights)
elapsed = time.perf_counter() - start
cam.save_cams(run.path("cams"), rows[["study_id", "slice", "split", "label", "prob"]], maps_all)
print(f"{len(rows)} slices x {len(maps_all)} methods in {elapsed:.1f} s "
      f"({len(rows) / max(elapsed, 1e-9):.1f} slices/s for all methods together)")

# %%
peaks_all = cam.lesion_peaks(gt_all, maps_all)
print("median peak map value on the ground-truth lesions of the gated slices (secondary lesions of a slice):")
second = peaks_all.groupby("row").filter(lambda d: len(d) > 1)
second = second[second.groupby("row")["voxels"].rank(ascending=False, method="first") > 1]
pd.DataFrame({"all lesions": peaks_all[list(cfg.cam_methods)].median(),
              "non-largest lesions of multi-lesion slices": second[list(cfg.cam_methods)].median()}).round(2)

# %% [markdown]
# ## 10. Where the paper's GradCAM gap can come from: the authors' head
#
# With one FC after a global pool, GradCAM *is* ReLU(CAM) (section 3), yet the paper reports GradCAM far below CAM (Dice
# 0.12 against 0.46). The authors' published code does not use the head the paper describes: it keeps
# torchvision's VGG16 head, an adaptive $7\times7$ average pool and an FC stack
# $49K \to 4096 \to 4096 \to 1$ with ReLU and dropout (`cls_head="authors"`; 4096 is scaled by the width).
# There the gradient $\partial y/\partial A^k_{hw}$ depends on the pixel (through its $7\times7$ bin and the
# ReLUs of the stack that are active), so GradCAM's $\delta_k$ (its spatial mean) mixes evidence from all over
# the slice, and Eq. 1 is undefined (there is no single $v_k$; the package refuses `"cam"` for this head).
# So that only the head differs, the authors' head sits on a frozen copy of notebook 02's conv stack (the same
# $A_k$) and only the head is trained, with the demo's recipe, for `head_epochs` epochs. (Trained from scratch,
# the whole net with this head stayed on the $\ln 2$ plateau on the demo; see docs/log.md, session 6.) We then compare, on
# `head_slices` validation tumor slices, each method's pointing (its peak cell holds lesion), its cell AUC and
# its mean per-slice correlation $r$ with GradCAM of the same classifier.

# %%
if head_epochs:
    authors_cfg = config.check(dataclasses.replace(cfg, cls_head="authors", cls_epochs=head_epochs, cam_unet_epochs=0,
                                                   vgg_init="he",  # the frozen conv stack is notebook 02's: no init
                                                   cam_methods=tuple(m for m in cfg.cam_methods if m != "cam")))
    authors_run = runs.Run(authors_cfg, run.dir, run.device)
    start = time.perf_counter()
    authors_history = train.train_classifier(authors_run, folder="classifier_authors", features_from=model)
    authors_model = train.load_classifier(authors_run, folder="classifier_authors")
    print(f"authors' head: {head_epochs} epochs in {time.perf_counter() - start:.0f} s this session; per epoch "
          f"val AUC {authors_history['val_auc'].round(3).tolist()}, pointing (GradCAM) "
          f"{authors_history['val_pointing_visible'].round(2).tolist()} on visible lesions")

# %%
if head_epochs:
    val_tumor = np.flatnonzero(((store.index["split"] == "val") & (store.index["label"] > 0)).to_numpy())
    picked = np.sort(np.random.default_rng(cfg.seed).choice(val_tumor, min(head_slices, len(val_tumor)), replace=False))
    x_val, gt_val = store.read(picked)
    own_head = {"gap_fc": "GAP + FC (paper's text)", "gmp_fc": "GMP + FC (the demo)"}[cfg.cls_head]
    heads = diagnostics.compare_maps({own_head: model, "7x7 pool + FC stack (authors' code)": authors_model},
                                     torch.from_numpy(x_val), gt_val, cfg.cam_methods, batch=cfg.cam_batch,
                                     topk=cfg.scorecam_topk, scorecam_weights=cfg.scorecam_weights)
    display(heads.round(3))

# %% [markdown]
# Under GMP + FC (as under GAP + FC), GradCAM and CAM share their peak wherever CAM is positive somewhere (ReLU does not
# move a positive maximum); here the two point alike on the 64 slices (0.031; on visible lesions 0.036); GradCAM++,
# whose weights are not proportional to $v_k$ (section 4), points at 0.078 (0.091). These are the maps as the networks
# give them, not moved back by $d$ (section 8): this classifier's maps sit about two cells up and half a cell to the
# left, so CAM and GradCAM point far lower here than the 0.772 of section 8. Under the authors' head GradCAM is a
# different map in principle; the table says how far it moves here (the head trained 2 epochs, val AUC 0.929 and 0.936;
# 64 slices; ScoreCAM on the demo's top 8 channels). GradCAM++'s correlation with GradCAM is 0.949 under the authors'
# head (0.743 under GMP + FC). Both point *better* there than under GMP + FC (GradCAM 0.266 against 0.031, GradCAM++
# 0.250 against 0.078: 15 and 11 more of the 64 slices), GradCAM's cell AUC rises (0.941 against 0.761) and
# GradCAM++'s barely moves (0.957 against 0.953). Moved back by each head's own $d$, on all validation tumor slices, the
# authors' GradCAM points at 0.76 on visible lesions after its second epoch (printed above) against 0.819 for this
# classifier's CAM (section 8).
# On maps not moved back ScoreCAM points best under both heads (0.328 and 0.375): its channel weights are not the
# head's $v_k$ (they come from masked forward passes), and here they favour channels whose maps sit closer to the lesion.
# On the demo the authors' head moves GradCAM's pointing both ways (15 of 64 slices higher on maps not moved back;
# 0.76 against 0.82 after the correction): no clear sign in the direction of the paper's gap; but this is
# pointing, not Dice, of a head trained 2 epochs on a frozen conv stack. Whether the head explains the gap,
# and what else differed in the paper's GradCAM (the layer it hooked,
# full-width features, 50 epochs, the tuning, none of it in their text), this notebook cannot settle.

# %% [markdown]
# ## Summary
#
# - Written: `cams/index.csv` (study_id, slice, split, label, prob of the slices called tumorous at the lowest
#   gate, plus the missed tumor slices) and `cams/<method>.npy` (float16, $n \times h \times w$, in $[0, 1]$)
#   for the methods of `cam_methods`.
# - CAM is Eq. 1; with one FC after a global pool GradCAM equals CAM with a ReLU and GradCAM++ has the closed form
#   $w_k = \max(v_k, 0)/(2 + v_k\overline{A_k})$ (GAP; GMP: the sum $\sum A_k$ for the mean); under GAP LayerCAM
#   equals CAM with $\max(v_k, 0)$.
# - ScoreCAM scores each masked slice by its tumor logit and softmaxes over channels (Eq. 6; the ScoreCAM authors'
#   code weights each channel by its masked slice's probability instead, `scorecam_weights`); the softmax over a
#   single logit gives uniform weights.
# - With the authors' head (7x7 pool + FC stack, `cls_head="authors"`) classic CAM is undefined and GradCAM is no
#   longer ReLU(CAM); on the demo it points better than under GMP + FC on maps not moved back (0.266 against 0.031)
#   at a higher cell AUC (0.941 against 0.761), slightly worse once moved back (0.76 against 0.82; section 10): far
#   from the paper's GradCAM gap, which pointing after 2 head epochs cannot settle either way.
#   Its checkpoints: `classifier_authors/`.
#
# ## Exercises
#
# 1. Show that for GAP + FC the logit is the spatial mean of the CAM plus the bias, $y = b + \overline{M}$, and
#    check it numerically. Is the logit under GMP + FC the CAM's maximum plus the bias?
#
# **Solution 1.** Under GAP $y = b + \sum_k v_k \overline{A_k} = b + \overline{\sum_k v_k A_k} = b + \overline{M}$
# (the mean is linear). Under GMP $y = b + \sum_k v_k \max A_k$, and the maximum is not linear: each channel
# contributes its own peak wherever it sits, so $\max M$ differs from $y - b$ unless all positively weighted
# channels peak in the same cell and the negatively weighted ones are zero there. On the panel slices neither
# matches the logit (7.7 to 16.5): $b + \max M$ falls 2.9 to 8.4 short of it, and $b + \overline{M}$ lies
# between $-0.56$ and $-0.53$:

# %% jupyter={"source_hidden": true} tags=["solution"]
with torch.no_grad():
    y_panel = model(x)                               # the tumor logit of each panel slice
    y_from_pool = model.fc.bias + model.pool(A).flatten(1) @ v  # b + sum_k v_k P(A_k)
    y_mean, y_max = model.fc.bias + M_cam.mean((1, 2)), model.fc.bias + M_cam.amax((1, 2))
assert torch.allclose(y_from_pool, y_panel, atol=1e-4)
print(f"logits {y_panel.numpy().round(4)}; b + mean(M) {y_mean.numpy().round(4)}; b + max(M) {y_max.numpy().round(4)}")

# %% [markdown]
# 2. How much does a channel contribute to the logit, and how does that relate to an "ablation" of it?
#
# **Solution 2.**

# %% jupyter={"source_hidden": true} tags=["solution"]
contrib = v * model.pool(A).flatten(1)                 # (B, K): v_k times the pooled A_k
top = contrib[i0].topk(3).indices                      # the channels CAM relies on most, first panel slice
with torch.no_grad():
    y_full = model.fc(model.pool(A).flatten(1))[:, 0]
    for k in top.tolist():
        ablated = A.clone()
        ablated[:, k] = 0                              # channel k switched off
        drop = y_full - model.fc(model.pool(ablated).flatten(1))[:, 0]
        assert torch.allclose(drop, contrib[:, k], atol=1e-5)
        print(f"channel {k}: ablation lowers the logit by {float(drop[i0]):.3f} = v_k P(A_k) "
              f"{float(contrib[i0, k]):.3f}; its ScoreCAM weight {float(alpha_sc[k]):.4f} "
              f"(uniform would be {1 / len(alpha_sc):.4f})")

# %% [markdown]
# Setting $A_k = 0$ lowers the logit by exactly $v_k P(A_k)$ (the head is linear in the pooled values), so `contrib` is the
# ablation effect of every channel at once, and the channels with the largest contribution are the ones CAM
# relies on. ScoreCAM asks the opposite question (what does the region of channel $k$ *alone* score?); the
# printed weights show how much ScoreCAM gives the same channels.
#
# 3. The demo approximates ScoreCAM by the `scorecam_topk` channels of largest activation variance. How far is a
#    top-4 ScoreCAM from the exact one on the panel slices, and how much faster is it?
#
# **Solution 3.**

# %% jupyter={"source_hidden": true} tags=["solution"]
seconds, score_maps = {}, {}
for k in (0, 4):                                       # 0: exact (every channel that is not all zero)
    start = time.perf_counter()
    score_maps[k] = cam.compute_cams(model, x, "scorecam", topk=k, scorecam_weights=cfg.scorecam_weights)
    seconds[k] = time.perf_counter() - start
exact = torch.from_numpy(maps_panel["scorecam"])
assert torch.allclose(score_maps[0], exact, atol=1e-4)
gap = (score_maps[4] - exact).abs()
nonzero = A.flatten(2).amax(-1).gt(0).sum(1).tolist()
print(f"{len(x)} panel slices, non-zero channels {nonzero} of {A.shape[1]}: exact {seconds[0]:.2f} s, top-4 "
      f"{seconds[4]:.2f} s ({seconds[0] / seconds[4]:.1f}x faster); max |Δ| {gap.max():.3f}, mean |Δ| {gap.mean():.3f}")

# %% [markdown]
# The cost is one masked forward pass per channel scored and slice, so top-4 saves about the ratio of the
# non-zero channel count to 4, here 60 to 62 against 4 (the printed speed-up, 9.1x, is smaller where fixed costs
# dominate a small batch). The maps agree where the high-variance channels dominate the weighted sum; here top-4
# is off by up to 0.914 (mean 0.085), further than the demo's top-8 in section 9 (0.823, mean 0.063).
