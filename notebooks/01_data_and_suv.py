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
# # 01 — Data, SUV and the slice store
#
# **What you will learn.** How a whole-body FDG PET/CT study becomes the 2D slices the rest of the chain
# works on: the cohort table, body-weight SUV (derived and checked to 12 digits), resampling the coarser
# PET onto the CT grid, the common 2×2×3 mm grid with 256×256 slices, the weak slice label
# ("any lesion voxel"), and the subject-level split. This is Sec. 2.1 of Früh et al. 2021.
#
# **Data.** Patient data cannot ship with a repository, so the default cohort is synthetic: 453
# physiological whole-body phantoms described by `data_manifest.csv` and generated bit-for-bit from
# each row's seed, in the file layout of the public autoPET release. A real cohort runs through the same
# cells with `--manifest` (README, *Real data*).

# %% tags=["parameters"]
profile = "demo"          # "demo" (laptop CPU) or "paper" (the paper's settings)
run_dir = "../runs/demo"  # artifacts of the whole chain
overrides = {}            # any config value, e.g. {"workers": 1}

# %%
import numpy as np
import pandas as pd

from wsseg_nb import diagnostics, manifest, phantom, runs, slices, suv, volume
from wsseg_nb.config import settings_table
from wsseg_nb.plots import images

run = runs.start(profile, run_dir, **overrides)
cfg = run.config
print(f"profile {cfg.profile}, device {run.device}")
settings_table(cfg, ["manifest", "subset", "spacing_mm", "slice_size", "split_fractions", "workers"])

# %% [markdown]
# ## 1. The cohort
#
# The manifest has one row per study: diagnosis, sex, age, body weight, injected activity, the
# injection-to-scan delay, the CT / PET / lesion-mask files and the PET's units. Loading validates every
# row (a bad one is reported with its line, column and value). The synthetic cohort matches the paper's:
# 453 patients, 50% lung cancer, 18% lymphoma, 32% melanoma, split 60/20/20 by subject, stratified by
# diagnosis.

# %%
# NBVAL_CHECK_OUTPUT
cohort = manifest.load_manifest(run.manifest, check_files=False)
pd.crosstab(cohort["diagnosis"], cohort["split"], margins=True)

# %%
# NBVAL_CHECK_OUTPUT
cohort[["age", "weight_kg", "injected_activity_mbq", "injection_to_scan_s"]].describe().loc[
    ["mean", "50%", "min", "max"]].round(1)

# %% [markdown]
# The demo profile uses a fixed stratified subset of the manifest (its `demo` column: 84 studies, 60 training,
# 12 validation, 12 test), so the whole chain runs on a laptop CPU; the paper profile uses all rows.

# %%
# NBVAL_CHECK_OUTPUT
studies = manifest.load_manifest(run.manifest, subset=cfg.subset, check_files=False)
print(f"{len(studies)} studies in this run")
pd.crosstab(studies["diagnosis"], studies["split"], margins=True)

# %%
images.cohort_bar(cohort);

# %% [markdown]
# ## 2. Generating the synthetic studies
#
# Each study is written like a scanner export: `CT.nii.gz` in Hounsfield units on a 2×2×3 mm grid,
# `PET.nii.gz` in Bq/ml on a coarser 4×4×3 mm grid with its own origin, and `SEG.nii.gz`, the lesion
# mask. The body has head, neck, thorax, abdomen, pelvis and thighs; organs take their FDG uptake from
# physiological ranges that vary between patients — brain SUV 6–10, myocardium from blood-pool level up
# to 15, bladder 10–60 — so that a plain SUV threshold is fooled, as on patients. Lesions follow the
# diagnosis (lung primaries and nodes, lymphoma nodal chains and spleen, small melanoma metastases) with
# irregular shapes and heterogeneous uptake. The PET is blurred by a 5–7 mm FWHM point-spread function
# (so small lesions lose much of their peak: the partial-volume effect) and carries correlated noise.
# Next to the lesion sites lies the uptake that makes reading FDG PET hard (`phantom.PHYSIOLOGY`, with its
# sources): segmental colon uptake (intense in some patients), the stomach wall, urine boluses in the ureters,
# the tonsils, the oesophagus, benign FDG-avid lymph nodes at the nodal stations, and in some patients brown fat
# or diffuse muscle uptake. None of it is in the lesion mask.
# Files already present are kept: generation resumes where it stopped.

# %%
generated = phantom.generate_cohort(studies, workers=cfg.workers)
print(f"generated {len(generated)} studies, {len(studies) - len(generated)} already on disk")

# %% [markdown]
# ## 3. One study as the scanner wrote it
#
# Volumes are numpy arrays indexed (z, y, x) with a 4×4 affine mapping the voxel index to world
# millimetres; NIfTI orientation is dealt with once, on load. CT and PET live on different grids:

# %%
example = studies[(studies["diagnosis"] == "lung_cancer")].iloc[0]
ct, ct_affine = volume.load_nifti(example["ct_path"], example["study_id"], "ct_path")
pet_bqml, pet_affine = volume.load_nifti(example["pet_path"], example["study_id"], "pet_path")
for name, array, affine in (("CT", ct, ct_affine), ("PET", pet_bqml, pet_affine)):
    spacing = np.abs(np.diag(affine)[:3])[::-1]
    print(f"{name}: shape (z, y, x) {array.shape}, spacing {spacing} mm, origin {affine[:3, 3].round(1)} mm")

# %% [markdown]
# ## 4. Body-weight SUV
#
# A PET voxel measures an activity concentration $C$ in Bq/ml. The standardized uptake value divides it
# by the activity the patient would show if the tracer were spread evenly through the body:
#
# $$\mathrm{SUV} = \frac{C\,[\mathrm{Bq/ml}]}{A_\mathrm{inj}\,[\mathrm{Bq}]\;2^{-\Delta t / T_{1/2}}\;/\;W\,[\mathrm{g}]}$$
#
# with the injected activity $A_\mathrm{inj}$ decayed over the injection-to-scan delay $\Delta t$
# ($T_{1/2}$ of F-18 is 6586.2 s) and the body weight $W$ (1 g of tissue ≈ 1 ml, so SUV is unitless).
# An SUV of 1 everywhere means perfectly uniform uptake. A reference case worked by hand: 67 kg,
# 374 MBq injected at 08:30:45, scan at 10:48:29.

# %%
# NBVAL_CHECK_OUTPUT
delay = suv.seconds_between("08:30:45", "10:48:29")
factor = suv.suv_factor(67, 374, delay)
by_hand = 67_000 / (374e6 * 2 ** (-delay / 6586.2))
assert abs(factor / by_hand - 1) < 1e-12 and abs(factor / 4.2748316187197236e-4 - 1) < 1e-12
print(f"delay {delay:.0f} s, decay factor {2 ** (-delay / 6586.2):.4f}, SUV = {factor:.10e} x C[Bq/ml]")

# %%
pet_suv = suv.to_suv(pet_bqml, example["pet_units"], example["weight_kg"], example["injected_activity_mbq"],
                     example["injection_to_scan_s"], example["study_id"])
print(f"SUV: median {np.median(pet_suv[pet_suv > 0.1]):.2f} in the body, max {pet_suv.max():.1f}")

# %% [markdown]
# The physiology the phantom was given, read back from its PET in SUV: the brain, the myocardium (in
# some patients) and the urinary tract are as hot as many lesions, and beside the lesion sites the colon, the
# ureters and the oesophagus reach SUV 4–8 in places (95th percentiles here; the PSF and partial volume take the
# thin ureter and the small benign nodes below the uptake they were drawn with) — the reason a plain SUV threshold
# fails and a learned classifier is needed.

# %%
phantom.organ_suv(phantom.synthesize(example), example).round(2)

# %% [markdown]
# ## 5. Resampling PET onto the CT grid, then onto the common grid
#
# The paper resamples the SUV image to the CT's resolution by linear interpolation, then works on
# 2×2×3 mm voxels and 256×256 slices. We build one axis-aligned target grid from the CT's field of
# view at the profile's spacing, and sample every volume on it: for each target voxel, its world
# position is mapped through the inverse affine of the source, and the source is interpolated there
# (linear for CT and SUV, nearest neighbour for the mask, so it stays binary). The slices are then
# cropped or padded to a fixed square around the body.

# %%
shape, grid_affine = volume.target_grid(ct.shape, ct_affine, cfg.spacing_mm)
suv_on_grid = volume.resample(pet_suv, pet_affine, shape, grid_affine, order=1)
ct_on_grid = volume.resample(ct, ct_affine, shape, grid_affine, order=1, cval=-1024)
print(f"target grid {shape} at {cfg.spacing_mm} mm; SUV max {pet_suv.max():.2f} -> {suv_on_grid.max():.2f}")
images.resampling_profile(pet_suv, pet_affine, suv_on_grid, grid_affine);

# %% [markdown]
# ## 6. The slice store
#
# Training streams 2D slices, so preprocessing writes each study once as memory-mapped arrays (SUV
# float32, CT int16, mask uint8, each (z, S, S)) plus one index table of every slice with its weak label.
# Studies run in parallel processes; each is written to a temporary folder and renamed when complete,
# so an interrupted run resumes without half-written studies.

# %%
store = slices.preprocess_cohort(studies, run.store, cfg.spacing_mm, cfg.slice_size, cfg.split_fractions,
                                 cfg.seed, cfg.workers)
print(f"{len(store.index)} slices of {len(store.studies)} studies, {cfg.slice_size}x{cfg.slice_size} at "
      f"{cfg.spacing_mm} mm")

# %%
stored = store.study(example["study_id"])
z = int(np.argmax(stored.mask.sum(axis=(1, 2))))
images.axial_panels(stored.ct[z], stored.suv[z], stored.mask[z], title=f"{example['study_id']}, slice {z}");

# %%
images.coronal_mip(stored.suv, stored.mask, spacing_mm=cfg.spacing_mm);

# %% [markdown]
# ## 7. Weak labels and the statistics of Sec. 2.1.2
#
# A slice is labelled "tumor" when any voxel of the lesion mask lies in it — the only supervision the
# classifier will see. The paper reports that 13.5–14% of slices contain tumor, a median tumor volume
# of 46.5 ml (IQR 158.4 ml), and a right-skewed distribution of the tumor area per slice (Fig. 2).

# %%
index = store.index
voxel_ml = float(np.prod(cfg.spacing_mm)) / 1000
volumes = index.groupby("study_id")["lesion_voxels"].sum() * voxel_ml
with_tumor = volumes[volumes > 0]
q1, q3 = with_tumor.quantile([0.25, 0.75])
pd.DataFrame({
    "this run": [f"{index['label'].mean():.1%}", f"{with_tumor.median():.1f}", f"{q3 - q1:.1f}"],
    "paper": ["13.5-14%", "46.5", "158.4"],
}, index=["tumor slices", "median tumor volume (ml)", "IQR (ml)"])

# %%
images.tumor_area_histogram(index.loc[index["label"] == 1, "lesion_area_mm2"]);

# %% [markdown]
# **How bright are the lesions?** Annotated FDG-avid lesions are read on the reconstructed PET, after the
# scanner's blur (PSF) and partial-volume loss, so the literature's SUVmax ranges (lung cancer about 3–18,
# lymphoma 4–25, melanoma metastases 3–12; sources in `phantom.LESION_SUVMAX`) describe the *measured*
# maximum. The phantom therefore scales each lesion's uptake until the maximum of its PET, blurred and noisy,
# equals the value drawn for it. Read back here per 18-connected lesion on the store grid (6 mm slices resample
# the 3 mm PET, so maxima come out a little lower), with the lesion-to-background ratio (SUVmax over the median
# SUV of a 10 mm shell around the lesion):

# %%
uptake = diagnostics.store_lesion_uptake(store)
uptake.groupby("diagnosis").agg(lesions=("suvmax", "size"), suvmax_median=("suvmax", "median"),
                                suvmax_p10=("suvmax", lambda v: v.quantile(0.1)),
                                below_3=("suvmax", lambda v: (v < 3).mean()),
                                ratio_median=("lesion_to_background", "median")).round(2)

# %% [markdown]
# **Can a fixed SUV threshold find them?** If physiology never reached the lesions' SUV on the slices that
# hold them, a perfect slice classifier followed by "SUV ≥ 3" would segment every lesion and the maps would
# have nothing to do. `diagnostics.oracle_floor_dice` measures that on the training studies: the median
# per-study Dice of SUV ≥ floor on the truly tumorous slices only (a perfect gate), and on every slice (no
# gate, the plain fixed threshold). The maps and Algorithm 1 (notebooks 03–04) have to beat the perfect-gate row.

# %%
floors = diagnostics.oracle_floor_dice(store, "train", [2.5, 3.0, 4.0])
table = floors.pivot_table(index="diagnosis", columns="floor", values="oracle_gate", aggfunc="median")
table.loc["all, perfect gate"] = floors.groupby("floor")["oracle_gate"].median()
table.loc["all, no gate"] = floors.groupby("floor")["no_gate"].median()
table.round(2)

# %% [markdown]
# Without a gate a fixed threshold is hopeless (Dice 0.02: the brain, bladder and heart outweigh every
# lesion). Behind a perfect gate SUV ≥ 3 scores a median 0.59 over the 60 training studies (all hold lesions):
# the large, bright lymphoma masses outweigh what lies beside them (0.74), lung cancer scores 0.62 (the
# myocardium, benign hilar nodes and the oesophagus share its slices), the small melanoma metastases 0.40 (a few
# millilitres of lesion against a hot colon loop or node on the same slice). On the 30 training studies of
# sessions 15–25 this row read 0.53 (melanoma 0.16): over 10 or 19 melanoma studies the median moves with the
# draw. Before the colon, ureters, stomach, tonsils, oesophagus, benign nodes, brown fat and muscle uptake were
# added (session 14) those 30 studies scored 0.60 here (melanoma 0.45) and 0.70 on validation, above every map
# of notebook 04: a perfect classifier plus a fixed threshold would have beaten the paper's method, which
# patient PET does not allow.

# %% [markdown]
# ## 8. The subject-level split
#
# All slices of one patient go to the same split; otherwise neighbouring, nearly identical slices of one
# patient would sit in training and test at once and the test score would be optimistic.

# %%
# NBVAL_CHECK_OUTPUT
per_study = index.groupby("study_id")["split"].nunique()
assert (per_study == 1).all(), "a study spans two splits"
index.groupby("split").agg(studies=("study_id", "nunique"), slices=("slice", "size"),
                           tumor_slices=("label", "sum"))

# %% [markdown]
# ## Summary
#
# Written to the run directory: `store/index.csv` (one row per slice: study, slice, label, lesion area,
# split, diagnosis) and `store/<study>/{suv,ct,mask}.npy` + `meta.json` (spacing and affine of the grid,
# so predicted masks can be written back as NIfTI over the CT). The next notebook trains the slice
# classifier on these labels.
#
# ## Exercises
#
# 1. A patient of 80 kg receives 300 MBq; the scan starts 75 min later. What SUV does a voxel of
#    10 kBq/ml have?
#
# **Solution 1.**

# %% jupyter={"source_hidden": true} tags=["solution"]
factor_80kg = suv.suv_factor(80, 300, 75 * 60)
decayed_bq = 300e6 * 2 ** (-75 * 60 / 6586.2)  # the injected activity left at the scan
per_gram = decayed_bq / 80_000                    # spread evenly over 80,000 g
assert abs(factor_80kg * 10_000 / (10_000 / per_gram) - 1) < 1e-12
print(f"activity at the scan {decayed_bq / 1e6:.1f} MBq, {per_gram / 1000:.3f} kBq/g if spread evenly; "
      f"SUV of 10 kBq/ml = {factor_80kg * 10_000:.2f}")

# %% [markdown]
# The activity decays over the 4,500 s delay by $2^{-4500/6586.2}$ (to about 187 MBq), spread over 80,000 g it
# gives about 2.335 kBq/g, and 10 kBq/ml over that mean is an SUV of about 4.28; `suv.suv_factor` agrees with the
# hand computation to 12 digits.
#
# 2. Why is the mask resampled with nearest neighbour but the SUV with linear interpolation?
#
# **Solution 2.**

# %% jupyter={"source_hidden": true} tags=["solution"]
seg_ex, seg_affine = volume.load_nifti(example["seg_path"], example["study_id"], "seg_path")
seg_linear = volume.resample(seg_ex.astype(np.float32), seg_affine, shape, grid_affine, order=1)
seg_nearest = volume.resample(seg_ex.astype(np.uint8), seg_affine, shape, grid_affine, order=0)
print(f"linear: {int(((seg_linear > 0) & (seg_linear < 1)).sum())} of {int((seg_linear > 0).sum())} non-zero "
      f"voxels are fractions; as a mask again at the cut 0.25 / 0.5 / 0.75: "
      f"{[int((seg_linear >= c).sum()) for c in (0.25, 0.5, 0.75)]} voxels")
print(f"nearest: values {np.unique(seg_nearest).tolist()}, {int(seg_nearest.sum())} voxels")
z_ramp = np.broadcast_to(np.arange(ct.shape[0], dtype=np.float32)[:, None, None], ct.shape).copy()
column = volume.resample(z_ramp, ct_affine, shape, grid_affine, order=1)[1:-1, shape[1] // 2, shape[2] // 2]
assert np.abs(np.diff(column, 2)).max() < 1e-3  # still a straight line on the new grid
print(f"a linear ramp along z, resampled linearly: largest second difference {np.abs(np.diff(column, 2)).max():.1e}")

# %% [markdown]
# Linear interpolation of a 0/1 mask produces fractions at the border: not a mask any more, and turning it back
# into one needs a cut whose choice moves the border (the printed voxel counts differ with the cut). Nearest
# neighbour copies a source voxel, so the mask stays binary. The SUV is a continuous quantity, and linear
# interpolation reproduces a linear ramp exactly (the printed second difference is zero up to rounding; the
# unit tests check the same).
#
# 3. How would the tumor-slice fraction change with 6 mm instead of 3 mm slices?
#
# **Solution 3.**

# %% jupyter={"source_hidden": true} tags=["solution"]
fractions = {}
for r in studies.head(6).itertuples():
    seg_r, seg_r_affine = volume.load_nifti(r.seg_path, r.study_id, "seg_path")
    fractions[r.study_id] = {"scanner grid": seg_r.any(axis=(1, 2)).mean(),
                             "store grid": index.loc[index["study_id"] == r.study_id, "label"].mean()}
print(f"slice thickness: scanner grid {np.abs(np.diag(seg_r_affine)[:3])[::-1][0]:g} mm, "
      f"store grid {cfg.spacing_mm[0]:g} mm")
pd.DataFrame(fractions).T.round(3)

# %% [markdown]
# Each lesion covers about half as many slices, but the body does too, so the fraction changes little: within
# 0.003 for five of the six studies in the printed table (with the paper profile both grids have 3 mm slices).
# The differences come from the lesions' ends. The store's mask is resampled by nearest neighbour, so a thick
# slice takes its label from one plane, and a lesion end thinner than a slice can drop out of the labels
# (PETCT_0030: 0.089 → 0.072), and the more separate lesions a study has, the more ends it can lose.
# Rounding a lesion's extent to whole thick slices can also go up (PETCT_0034: 0.021 → 0.024). A label
# defined as "any lesion voxel within the thick slice" would count every partly covered slice whole and raise
# the fraction.
