"""Synthetic whole-body FDG PET/CT studies, regenerated bit-for-bit from a manifest row and its seed."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import ndtri

from . import volume
from .progress import progress
from .slices import worker_pool
from .suv import suv_factor

CT_SPACING_MM = (3.0, 2.0, 2.0)
"""CT voxel size (z, y, x) in mm: the paper's grid (Sec. 2.1.1)."""
PET_SPACING_MM = (3.0, 4.0, 4.0)
"""PET voxel size (z, y, x) in mm: coarser than CT, as on a clinical scanner."""
PET_OFFSET_MM = (1.5, 1.0, 1.0)
"""PET grid origin minus CT grid origin (z, y, x): PET voxel centres fall between CT voxel centres."""
IN_PLANE = 250
"""CT matrix size in-plane (500 mm field of view)."""
CT_NOISE_HU = 12.0
PET_NOISE_CV = 0.10
"""Relative PET noise (standard deviation / mean) at liver uptake."""

PHYSIOLOGY = {  # label: ((HU low, HU high), (SUV low, SUV high)), drawn per patient from its own random stream
    "colon": ((20, 40), (1.5, 4.5)), "stomach": ((25, 45), (1.5, 4.0)), "ureter": ((5, 20), (10.0, 40.0)),
    "tonsil": ((40, 60), (2.0, 6.0)), "brown_fat": ((-80, -40), (3.0, 15.0)), "esophagus": ((30, 50), (1.2, 2.8)),
    "node": ((30, 50), (3.0, 8.0)),
}
"""FDG uptake that is not tumour but reaches lesion SUVs, next to the lesion sites (so that a fixed SUV threshold is
fooled even on the tumour slices). Colon: SUVmax about 2-5, segmental, diffuse and intense (SUV 5-10+) in about
15 % (metformin; Gontier et al., Eur J Nucl Med Mol Imaging 2008; Kim et al., Clin Nucl Med 2009). Stomach wall:
SUVmax about 1.5-4 (Koga et al., Ann Nucl Med 2003). Ureters: urine as in the renal pelvis, in peristaltic
boluses, so a hot focus beside paraaortic and iliac nodes. Palatine tonsils: SUVmax about 2-6 (Nakamoto et al.,
AJR 2005). Brown fat: supraclavicular and paravertebral, SUVmax 3-15+, in about 2.5-4 % of adults, more often
in the young (Cohade et al., J Nucl Med 2003): BROWN_FAT_P. Oesophagus: SUVmax about 1.5-3.5, highest distally.
Benign FDG-avid lymph nodes (reactive, granulomatous, anthracotic: the classic false positive of nodal staging,
SUVmax about 2-5; Gould et al., JAMA 2001): REACTIVE_NODES per patient at the nodal stations, not in the lesion
mask; their value here is before the PSF, which takes a 4-8 mm node to about half of it. Muscle: diffuse uptake
of SUV about 1.5-4 in MUSCLE_ACTIVE of the patients (not fasted, insulin, tension)."""
LABELS = ("air", "fat", "muscle", "viscera", "lung", "blood", "myocardium", "liver", "spleen", "kidney",
          "renal_pelvis", "bladder", "brain", "marrow", "cortex", "airway", "gland", *PHYSIOLOGY)
L = {name: i for i, name in enumerate(LABELS)}
COLON_INTENSE = (0.15, 2.2)
"""Share of patients with intense colonic uptake (metformin) and the factor on their colon SUV."""
COLON_RADIUS_MM = 16.0
URETER_RADIUS_MM = 3.5
URETER_FILLED = 0.4
"""Share of a ureter's length filled with urine at scan time (peristaltic boluses)."""
BROWN_FAT_P = {"under_40": 0.25, "40_and_over": 0.06}
"""Share of patients with active brown fat by age (Cohade et al. 2003: higher in the young and in women)."""
REACTIVE_NODES = 2.0
"""Mean number (Poisson) of benign FDG-avid lymph nodes per patient, at REACTIVE_SITES."""
REACTIVE_SITES = {"cervical": 0.2, "axillary": 0.2, "mediastinal": 0.2, "hilar": 0.2, "iliac": 0.1, "inguinal": 0.1}
MUSCLE_ACTIVE = (0.1, (2.5, 4.0))
"""Share of patients with diffuse muscle uptake and the range of the factor on their muscle SUV."""
PATCH_MM = 30.0
"""Correlation length of the smooth random fields that make colon and oesophagus uptake and ureter filling patchy."""
TISSUE = {  # label: ((HU low, HU high), (SUV low, SUV high)); per patient a value is drawn in each range
    "air": ((-1000, -1000), (0.0, 0.0)), "fat": ((-115, -85), (0.2, 0.4)), "muscle": ((40, 60), (0.5, 1.0)),
    "viscera": ((20, 40), (0.9, 1.5)), "lung": ((-880, -800), (0.3, 0.6)), "blood": ((150, 200), (1.4, 2.2)),
    "myocardium": ((90, 120), (4.0, 15.0)), "liver": ((90, 120), (1.5, 2.5)), "spleen": ((100, 130), (1.5, 2.2)),
    "kidney": ((140, 190), (2.0, 3.0)), "renal_pelvis": ((5, 20), (10.0, 40.0)), "bladder": ((5, 20), (10.0, 60.0)),
    "brain": ((30, 40), (6.0, 10.0)), "marrow": ((200, 300), (1.2, 2.0)), "cortex": ((700, 1000), (0.4, 0.8)),
    "airway": ((-1000, -1000), (0.0, 0.0)), "gland": ((35, 50), (1.5, 3.5)),
}
LESION_HU = (30.0, 55.0)
LESION_SUVMAX = {"lung_cancer": (3.0, 18.0), "lymphoma": (4.0, 25.0), "melanoma": (3.0, 12.0)}
"""Measured lesion SUVmax (read on the PET as stored: after the PSF, partial volume and noise), log-uniform per
diagnosis. Annotated FDG-avid lesions: NSCLC primaries median SUVmax about 8-10, rarely below 3 (Paesmans et al.,
J Thorac Oncol 2010, meta-analysis); aggressive lymphoma median above 10, indolent about 7, range about 3-40
(Schoeder et al., J Clin Oncol 2005); melanoma metastases median about 5-7 (Strobel et al., J Nucl Med 2007;
Reinhardt et al., J Clin Oncol 2006). autoPET annotated only lesions that are FDG-avid against their
surroundings, hence the lower bound of 3 (liver 1.5-2.5 plus noise reaches about 3)."""
# Total tumour volume per patient ~ log-normal (median ml, sigma) and mean extra lesions, by diagnosis;
# calibrated with `cohort_statistics` so the cohort matches Sec. 2.1.2 (median 46.5 ml, IQR 158.4 ml,
# 13.5-14% tumour slices).
TUMOR_VOLUME = {"lung_cancer": (52.0, 1.8), "lymphoma": (96.0, 1.8), "melanoma": (24.0, 1.8)}
EXTRA_LESIONS = {"lung_cancer": 3.8, "lymphoma": 7.5, "melanoma": 6.5}
SITES = {
    "lung_cancer": {"hilar": 0.35, "mediastinal": 0.35, "lung": 0.1, "liver": 0.1, "bone": 0.1},
    "lymphoma": {"cervical": 0.2, "axillary": 0.2, "mediastinal": 0.2, "paraaortic": 0.15, "iliac": 0.1,
                 "inguinal": 0.1, "spleen": 0.05},
    "melanoma": {"subcutaneous": 0.35, "lung": 0.2, "liver": 0.15, "axillary": 0.1, "inguinal": 0.1,
                 "cervical": 0.05, "bone": 0.05},
}
LESION_Z_STRETCH = 1.25
"""Lesions (nodes, conglomerates) are elongated cranio-caudally at equal volume."""
MIN_LESION_ML = 0.25
PAPER_TARGETS = {"tumor_slice_fraction": (0.135, 0.14), "median_volume_ml": 46.5, "iqr_volume_ml": 158.4}
"""Sec. 2.1.2 of the paper, for comparison with `summarize_statistics`."""


@dataclass(frozen=True)
class Grid:
    """The CT grid of one study: world x, y (mm) and depth below the vertex s (mm) per index."""

    x: np.ndarray
    y: np.ndarray
    s: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) shape."""
        return len(self.s), len(self.y), len(self.x)


@dataclass(frozen=True)
class Anatomy:
    """Per-patient body plan: height, scan length and the trunk's cross-section profile over depth."""

    height: float
    female: bool
    t: np.ndarray  # depth / height control points
    a: np.ndarray  # half width (left-right) at each control point, mm
    b: np.ndarray  # half depth (antero-posterior), mm
    cy: np.ndarray  # antero-posterior centre, mm
    fat: float  # subcutaneous fat thickness, mm
    wall: float  # muscle wall thickness, mm
    nz: int

    def at(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half width, half depth and centre of the trunk at depth(s) s (mm)."""
        t = np.asarray(s, dtype=np.float64) / self.height
        return np.interp(t, self.t, self.a), np.interp(t, self.t, self.b), np.interp(t, self.t, self.cy)

    def section(self, s: np.ndarray | float, inset: float = 0.0) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """Centre and half axes (cx, cy, a, b) of the body outline `inset` mm inside the skin at depth s."""
        a, b, cy = self.at(s)
        return 0.0, cy, a - inset, b - inset

    def cavity(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Half width, half depth and centre of the body cavity (inside fat and muscle wall)."""
        a, b, cy = self.at(s)
        return a - self.fat - self.wall, b - self.fat - self.wall, cy

    def spine(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Antero-posterior centre and radius of the vertebral bodies at depth s."""
        a, b, cy = self.at(s)
        r = np.interp(np.asarray(s) / self.height, [0.11, 0.2, 0.5], [10.0, 14.0, 22.0])
        return cy - b + self.fat + 35.0 + r, r

    def front_of_spine(self, s: np.ndarray | float, gap: float) -> np.ndarray:
        """Antero-posterior position `gap` mm in front of the vertebral bodies at depth s."""
        y, r = self.spine(s)
        return y + r + gap


def _anatomy(row: Mapping[str, Any], rng: np.random.Generator) -> Anatomy:
    """Draw one patient's body plan (height from sex, girth from weight)."""
    female = str(row.get("sex", "")) == "F"
    height = float(np.clip(rng.normal(1650.0 if female else 1780.0, 65.0), 1450.0, 2000.0))
    weight = float(row.get("weight_kg") or 75.0)
    bmi = float(np.clip(weight / (height / 1000.0) ** 2, 16.0, 45.0)) if np.isfinite(weight) else 25.0
    wide, deep = (bmi / 24.0) ** 0.5, (bmi / 24.0) ** 0.75
    t = np.array([0.105, 0.125, 0.17, 0.19, 0.215, 0.30, 0.38, 0.45, 0.53, 0.70])
    a = np.array([50, 55, 60, 140, 160, 150, 140, 160, 170, 170], dtype=float)
    b = np.array([55, 60, 62, 95, 105, 112, 110, 108, 100, 100], dtype=float)
    cy = np.array([0, -5, -10, -5, 0, 0, 5, 0, 0, 0], dtype=float)
    trunk = t >= 0.19
    a[trunk] *= wide * (1 + rng.normal(0, 0.04)) * (np.where(t[trunk] < 0.4, 0.93, 1.05) if female else 1.0)
    b[trunk] *= deep * (1 + rng.normal(0, 0.04))
    fat = float(np.clip(6.0 + 1.3 * (bmi - 20.0) + (5.0 if female else 0.0) + rng.normal(0, 2), 4.0, 40.0))
    nz = int(round(np.clip(0.6 * height, 950.0, 1100.0) / CT_SPACING_MM[0]))
    return Anatomy(height, female, t, a, b, cy, fat, float(rng.uniform(12, 20)), nz)


def _grid(anat: Anatomy) -> Grid:
    """CT grid: RAS world, z increasing towards the head, x, y centred on the table axis."""
    dz, dy, dx = CT_SPACING_MM
    nz = anat.nz
    origin = np.array([-(IN_PLANE - 1) * dx / 2, -(IN_PLANE - 1) * dy / 2, -(nz - 1) * dz])
    affine = np.diag([dx, dy, dz, 1.0])
    affine[:3, 3] = origin
    x = (origin[0] + dx * np.arange(IN_PLANE)).astype(np.float32)
    y = (origin[1] + dy * np.arange(IN_PLANE)).astype(np.float32)
    s = ((nz - 1 - np.arange(nz)) * dz).astype(np.float32)
    return Grid(x, y, s, affine)


def _span(coords: np.ndarray, lo: float, hi: float) -> slice:
    """Index slice of the (monotonic) coordinates inside [lo, hi]; empty when none."""
    idx = np.flatnonzero((coords >= lo) & (coords <= hi))
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


Box = tuple[slice, slice, slice]


def _ellipsoid(g: Grid, c: tuple[float, float, float], r: tuple[float, float, float]) -> tuple[Box, np.ndarray]:
    """Voxels of an axis-aligned ellipsoid (centre x, y, s; radii), evaluated in its bounding box only."""
    box = (_span(g.s, c[2] - r[2], c[2] + r[2]), _span(g.y, c[1] - r[1], c[1] + r[1]),
           _span(g.x, c[0] - r[0], c[0] + r[0]))
    u = ((g.s[box[0]] - c[2]) / r[2]) ** 2
    v = ((g.y[box[1]] - c[1]) / r[1]) ** 2
    w = ((g.x[box[2]] - c[0]) / r[0]) ** 2
    return box, (u[:, None, None] + v[None, :, None] + w[None, None, :]) <= 1.0


def _column(g: Grid, s_lo: float, s_hi: float, fn: Callable[[np.ndarray], tuple[Any, Any, Any, Any]],
            p: float = 2.0) -> tuple[Box, np.ndarray]:
    """Voxels of a vertical column whose superelliptic cross-section (cx, cy, a, b) = fn(s) varies with depth."""
    zs = _span(g.s, s_lo, s_hi)
    cx, cy, a, b = (np.broadcast_to(np.asarray(v, dtype=np.float32), g.s[zs].shape) for v in fn(g.s[zs]))
    if cx.size == 0:
        return (zs, slice(0, 0), slice(0, 0)), np.zeros((0, 0, 0), bool)
    ys = _span(g.y, float((cy - b).min()), float((cy + b).max()))
    xs = _span(g.x, float((cx - a).min()), float((cx + a).max()))
    u = np.abs((g.x[None, xs] - cx[:, None]) / a[:, None]) ** p
    v = np.abs((g.y[None, ys] - cy[:, None]) / b[:, None]) ** p
    return (zs, ys, xs), (u[:, None, :] + v[:, :, None]) <= 1.0


def _paint(labels: np.ndarray, shape: tuple[Box, np.ndarray], name: str, inside: tuple[str, ...] = ()) -> None:
    """Set the label of a shape's voxels (only where the current label is one of `inside`, if given)."""
    box, mask = shape
    view = labels[box]
    if inside:
        mask = mask & np.isin(view, [L[n] for n in inside])
    view[mask] = L[name]


def _shell(labels: np.ndarray, g: Grid, c: tuple[float, float, float], r: tuple[float, float, float],
           thick: float, inner: str) -> None:
    """A bone: ellipsoid of cortex filled with `inner` (marrow) `thick` mm inside."""
    _paint(labels, _ellipsoid(g, c, r), "cortex")
    _paint(labels, _ellipsoid(g, c, tuple(max(v - thick, 1.0) for v in r)), inner)


def _label_map(anat: Anatomy, g: Grid, rng: np.random.Generator) -> np.ndarray:
    """The tissue label volume (z, y, x) uint8 of one patient."""
    H, labels = anat.height, np.zeros(g.shape, np.uint8)
    crotch = 0.53 * H
    # Head: soft tissue, skull, brain, parotids.
    head_c, head_r = (0.0, 5.0, 0.062 * H), (72.0, 92.0, 0.062 * H)
    _paint(labels, _ellipsoid(g, head_c, head_r), "muscle")
    brain_c, brain_r = (0.0, -2.0, 0.045 * H), (62.0, 78.0, 0.038 * H)
    _paint(labels, _ellipsoid(g, brain_c, tuple(v + 7.0 for v in brain_r)), "cortex")
    _paint(labels, _ellipsoid(g, brain_c, brain_r), "brain")
    for side in (-1, 1):
        _paint(labels, _ellipsoid(g, (side * 42.0, -5.0, 0.10 * H), (12.0, 15.0, 18.0)), "gland")
    # Neck and trunk: fat, muscle wall, body cavity.
    _paint(labels, _column(g, 0.105 * H, crotch, anat.section, p=2.4), "fat", ("air",))
    _paint(labels, _column(g, 0.105 * H, crotch, lambda s: anat.section(s, anat.fat), p=2.4), "muscle", ("fat",))
    cavity = _column(g, 0.19 * H, crotch, lambda s: anat.section(s, anat.fat + anat.wall), p=2.4)
    _paint(labels, cavity, "viscera")
    # Thighs: two legs with fat, muscle, femoral vessels and femurs.
    a_pel = float(anat.at(crotch)[0])
    leg_end = float(g.s.max()) + 3.0
    for side in (-1, 1):
        def leg(s: np.ndarray, inset: float = 0.0, side: int = side) -> tuple[float, float, Any, Any]:
            r = np.interp(s, [crotch, leg_end], [0.56 * a_pel, 0.42 * a_pel]) - inset
            return side * 0.53 * a_pel, 0.0, r, r

        def femur(s: np.ndarray, r: float, side: int = side) -> tuple[Any, float, float, float]:
            return side * np.interp(s, [0.515 * H, leg_end], [0.5, 0.53]) * a_pel, 0.0, r, r

        _paint(labels, _column(g, crotch - 3.0, leg_end, leg), "fat", ("air",))
        _paint(labels, _column(g, crotch - 3.0, leg_end, lambda s: leg(s, anat.fat)), "muscle", ("fat",))
        _paint(labels, _column(g, 0.46 * H, leg_end, lambda s: (side * 0.45 * a_pel, 25.0, 6.0, 6.0)), "blood")
        _paint(labels, _column(g, 0.515 * H, leg_end, lambda s: femur(s, 14.0)), "cortex")
        _paint(labels, _column(g, 0.515 * H, leg_end, lambda s: femur(s, 9.0)), "marrow")
        _shell(labels, g, (side * 0.5 * a_pel, -5.0, 0.515 * H), (24.0, 24.0, 24.0), 5.0, "marrow")
        b_pel = float(anat.cavity(0.47 * H)[1])
        _shell(labels, g, (side * 0.55 * a_pel, -0.3 * b_pel, 0.47 * H), (18.0, 0.55 * b_pel, 0.03 * H), 5.0, "marrow")
    # Thorax: lungs, heart, great vessels, airway.
    a_th, b_th, _ = (float(v) for v in anat.cavity(0.27 * H))
    for side, base in ((-1, 0.355), (1, 0.345)):
        c = (side * 0.5 * a_th, -10.0, (0.185 + base) / 2 * H)
        _paint(labels, _ellipsoid(g, c, (0.42 * a_th, 0.85 * b_th, (base - 0.185) / 2 * H)), "lung", ("viscera",))
    heart_c = (-0.15 * a_th, 0.25 * b_th, 0.29 * H)
    heart_r = (0.42 * a_th, 0.45 * b_th, 0.028 * H)
    _paint(labels, _ellipsoid(g, heart_c, heart_r), "myocardium")
    _paint(labels, _ellipsoid(g, heart_c, tuple(v - 9.0 for v in heart_r)), "blood")
    _paint(labels, _column(g, 0.12 * H, 0.245 * H, lambda s: (0.0, anat.front_of_spine(s, 22.0), 8.0, 8.0)),
           "airway")
    asc_y = 0.15 * b_th
    _paint(labels, _column(g, 0.215 * H, 0.27 * H, lambda s: (12.0, asc_y, 14.0, 14.0)), "blood")
    _paint(labels, _column(g, 0.215 * H, 0.46 * H, lambda s: (-18.0, anat.front_of_spine(s, 14.0), 11.0, 11.0)), "blood")
    arch_y0 = float(anat.front_of_spine(0.215 * H, 14.0))
    _paint(labels, _ellipsoid(g, (-3.0, (asc_y + arch_y0) / 2, 0.215 * H), (25.0, abs(asc_y - arch_y0) / 2 + 12, 12.0)),
           "blood")
    _paint(labels, _column(g, 0.33 * H, 0.46 * H, lambda s: (22.0, anat.front_of_spine(s, 10.0), 11.0, 11.0)),
           "blood")
    # Abdomen and pelvis: liver, spleen, kidneys, bladder.
    a_ab, b_ab, _ = (float(v) for v in anat.cavity(0.38 * H))
    _paint(labels, _ellipsoid(g, (0.35 * a_ab, 0.05 * b_ab, 0.355 * H), (0.6 * a_ab, 0.7 * b_ab, 0.045 * H)),
           "liver", ("viscera", "lung"))
    _paint(labels, _ellipsoid(g, (-0.1 * a_ab, 0.35 * b_ab, 0.34 * H), (0.35 * a_ab, 0.35 * b_ab, 0.02 * H)),
           "liver", ("viscera", "lung"))
    spleen = rng.uniform(0.9, 1.2)
    _paint(labels, _ellipsoid(g, (-0.62 * a_ab, -0.3 * b_ab, 0.35 * H),
                              (0.2 * a_ab * spleen, 0.42 * b_ab * spleen, 0.028 * H * spleen)),
           "spleen", ("viscera", "lung"))
    for side, depth in ((-1, 0.405), (1, 0.415)):
        c = (side * 0.42 * a_ab, -0.45 * b_ab, depth * H)
        _paint(labels, _ellipsoid(g, c, (0.17 * a_ab, 0.22 * b_ab, 0.03 * H)), "kidney")
        _paint(labels, _ellipsoid(g, (side * 0.32 * a_ab, -0.38 * b_ab, depth * H), (8.0, 8.0, 16.0)), "renal_pelvis")
    fill = rng.uniform(0.6, 1.3)
    b_pel = float(anat.cavity(0.5 * H)[1])
    _paint(labels, _ellipsoid(g, (0.0, 0.3 * b_pel, 0.5 * H), (38.0 * fill, 32.0 * fill, 30.0 * fill)), "bladder",
           ("viscera",))
    # Skeleton: vertebral bodies with discs, ribs, sternum.
    zs = _span(g.s, 0.11 * H, 0.5 * H)
    disc = ((g.s[zs] - 0.11 * H) % 28.0) < 5.0
    for name, shrink in (("cortex", 0.0), ("marrow", 3.0)):
        def vertebra(s: np.ndarray, shrink: float = shrink) -> tuple[float, Any, Any, Any]:
            y, r = anat.spine(s)
            return 0.0, y, r - shrink, r - shrink

        box, mask = _column(g, 0.11 * H, 0.5 * H, vertebra)
        mask &= ~disc[:, None, None]
        _paint(labels, (box, mask), name)
    outer = _column(g, 0.2 * H, 0.34 * H, lambda s: anat.section(s, anat.fat + anat.wall - 8.0), p=2.4)
    inner = _column(g, 0.2 * H, 0.34 * H, lambda s: anat.section(s, anat.fat + anat.wall), p=2.4)
    (zr, yr, xr), ring = outer
    (zi, yi, xi), hole = inner
    ring = ring.copy()
    ring[:, yi.start - yr.start: yi.stop - yr.start, xi.start - xr.start: xi.stop - xr.start] &= ~hole
    band = ((g.s[zr] - 0.2 * H) % 24.0) < 9.0
    front = (np.abs(g.x[xr])[None, :] < 35.0) & (g.y[yr][:, None] > 0.0)
    ring &= band[:, None, None] & ~front[None]
    _paint(labels, ((zr, yr, xr), ring), "cortex")
    for name, (a, b) in (("cortex", (14.0, 7.0)), ("marrow", (10.0, 4.0))):
        def sternum(s: np.ndarray, a: float = a, b: float = b) -> tuple[float, Any, float, float]:
            _, cy, _, half_depth = anat.section(s, anat.fat + 12.0)
            return 0.0, cy + half_depth, a, b

        _paint(labels, _column(g, 0.205 * H, 0.29 * H, sternum), name)
    return labels


def _tube(g: Grid, points: list[tuple[float, float, float]], radius: float) -> tuple[Box, np.ndarray]:
    """Voxels within `radius` mm of a polyline through `points` (x, y, s), evaluated in its bounding box only."""
    p = np.asarray(points, dtype=np.float32)
    box = (_span(g.s, p[:, 2].min() - radius, p[:, 2].max() + radius),
           _span(g.y, p[:, 1].min() - radius, p[:, 1].max() + radius),
           _span(g.x, p[:, 0].min() - radius, p[:, 0].max() + radius))
    s, y, x = g.s[box[0]][:, None, None], g.y[box[1]][None, :, None], g.x[box[2]][None, None, :]
    near = np.zeros((len(s), y.shape[1], x.shape[2]), bool)
    for (ax, ay, az), (bx, by, bz) in zip(p[:-1], p[1:]):
        d = np.array([bx - ax, by - ay, bz - az])
        t = np.clip(((x - ax) * d[0] + (y - ay) * d[1] + (s - az) * d[2]) / max(float(d @ d), 1e-6), 0.0, 1.0)
        near |= (x - ax - t * d[0]) ** 2 + (y - ay - t * d[1]) ** 2 + (s - az - t * d[2]) ** 2 <= radius ** 2
    return box, near


def _physiology(labels: np.ndarray, anat: Anatomy, g: Grid, rng: np.random.Generator, age: float) -> None:
    """Paint the PHYSIOLOGY confounders in place: colon, stomach, ureters, tonsils, oesophagus, benign nodes and
    (sometimes) brown fat."""
    H = anat.height
    a, b, _ = (float(v) for v in anat.cavity(0.38 * H))
    b_pel = float(anat.cavity(0.5 * H)[1])
    w = rng.uniform(-0.05, 0.05, 3)  # per-patient shifts of the colon's course
    colon = [(0.55 * a, 0.05 * b, 0.49 * H), (0.6 * a, 0.15 * b, 0.405 * H), (0.3 * a, (0.55 + w[0]) * b, 0.40 * H),
             (-0.3 * a, (0.55 + w[1]) * b, 0.405 * H), (-0.62 * a, 0.2 * b, 0.385 * H),
             (-0.65 * a, w[2] * b, 0.46 * H), (-0.4 * a, 0.25 * b_pel, 0.49 * H),
             (-0.1 * a, 0.0, 0.475 * H), (0.0, -0.55 * b_pel, 0.5 * H), (0.0, -0.6 * b_pel, 0.53 * H)]
    _paint(labels, _tube(g, colon, COLON_RADIUS_MM * rng.uniform(0.85, 1.15)), "colon", ("viscera",))
    stomach_c, stomach_r = (-0.45 * a, 0.2 * b, 0.36 * H), (0.22 * a, 0.3 * b, 0.03 * H)
    _paint(labels, _ellipsoid(g, stomach_c, stomach_r), "stomach", ("viscera",))
    _paint(labels, _ellipsoid(g, stomach_c, tuple(r - 8.0 for r in stomach_r)), "viscera", ("stomach",))
    for side, depth in ((-1, 0.405), (1, 0.415)):
        ureter = [(side * 0.32 * a, -0.38 * b, depth * H), (side * 0.28 * a, -0.25 * b, 0.44 * H),
                  (side * 0.3 * a, -0.05 * b, 0.475 * H), (side * 25.0, 0.3 * b_pel - 10.0, 0.495 * H)]
        box, near = _tube(g, ureter, URETER_RADIUS_MM)
        shape = tuple(sl.stop - sl.start for sl in box)
        if min(shape) > 0:  # urine boluses: the filled share of the ureter
            near &= _smooth_field(shape, CT_SPACING_MM, rng) > ndtri(1.0 - URETER_FILLED)
        _paint(labels, (box, near), "ureter", ("viscera", "fat", "muscle"))
    for side in (-1, 1):
        _paint(labels, _ellipsoid(g, (side * 14.0, 5.0, 0.112 * H), (7.0, 9.0, 12.0)), "tonsil", ("muscle",))
    _paint(labels, _column(g, 0.125 * H, 0.36 * H, lambda s: (8.0, anat.front_of_spine(s, 6.0), 6.0, 6.0)),
           "esophagus", ("viscera", "fat", "muscle"))
    sites = list(REACTIVE_SITES)
    for _ in range(int(rng.poisson(REACTIVE_NODES))):
        site = str(rng.choice(sites, p=list(REACTIVE_SITES.values())))
        r = float(rng.uniform(4.0, 8.0))
        _paint(labels, _ellipsoid(g, _site_center(site, anat, rng), (r, r, 1.25 * r)), "node",
               ("fat", "muscle", "viscera", "lung"))
    if rng.random() < BROWN_FAT_P["under_40" if age < 40 else "40_and_over"]:
        for side in (-1, 1):
            _paint(labels, _ellipsoid(g, (side * 55.0, -5.0, 0.18 * H), (18.0, 14.0, 0.012 * H)), "brown_fat",
                   ("fat", "muscle"))
            _paint(labels, _column(g, 0.2 * H, 0.32 * H, lambda s, side=side: (side * 28.0, anat.spine(s)[0] - 4.0,
                                                                                6.0, 6.0)),
                   "brown_fat", ("fat", "muscle", "viscera"))


Lesion = dict[str, Any]


def _site_center(site: str, anat: Anatomy, rng: np.random.Generator) -> tuple[float, float, float]:
    """A lesion centre (x, y, s) at an anatomical site of this patient."""
    H, side = anat.height, float(rng.choice([-1.0, 1.0]))
    a_th, b_th, _ = (float(v) for v in anat.cavity(0.27 * H))
    a_ab, b_ab, _ = (float(v) for v in anat.cavity(0.38 * H))
    u = rng.uniform
    if site in ("lung", "liver", "spleen"):
        c, r = {
            "lung": ((side * 0.5 * a_th, -10.0, 0.265 * H), (0.42 * a_th, 0.85 * b_th, 0.08 * H)),
            "liver": ((0.35 * a_ab, 0.05 * b_ab, 0.355 * H), (0.6 * a_ab, 0.7 * b_ab, 0.045 * H)),
            "spleen": ((-0.62 * a_ab, -0.3 * b_ab, 0.35 * H), (0.2 * a_ab, 0.42 * b_ab, 0.028 * H)),
        }[site]
        d = rng.normal(size=3)
        d *= 0.7 * u() ** (1 / 3) / np.linalg.norm(d)
        return c[0] + d[0] * r[0], c[1] + d[1] * r[1], c[2] + d[2] * r[2]
    if site == "subcutaneous":
        s = u(0.19, 0.52) * H
        a, b, cy = (float(v) for v in anat.at(s))
        th = u(0, 2 * np.pi)
        k = 2 / 2.4
        ca, sa = np.cos(th), np.sin(th)
        return (a - anat.fat / 2) * np.sign(ca) * abs(ca) ** k, cy + (b - anat.fat / 2) * np.sign(sa) * abs(sa) ** k, s
    if site == "bone":
        s = u(0.2, 0.48) * H
        y, r = anat.spine(s)
        return u(-0.3, 0.3) * float(r), float(y), s
    lo, hi = {"cervical": (0.12, 0.175), "axillary": (0.19, 0.23), "mediastinal": (0.215, 0.27), "hilar": (0.245, 0.28),
              "paraaortic": (0.37, 0.46), "iliac": (0.46, 0.5), "inguinal": (0.52, 0.56)}[site]
    s = u(lo, hi) * H
    a, b, cy = (float(v) for v in anat.at(s))
    spine_y, spine_r = (float(v) for v in anat.spine(s))
    x, y = {
        "cervical": (side * u(25, 45), cy + u(-10, 15)),
        "axillary": (side * (a - anat.fat - u(25, 45)), cy + u(-20, 20)),
        "mediastinal": (u(-25, 25), cy + u(0, 30)),
        "hilar": (side * u(35, 55), u(-15, 10)),
        "paraaortic": (-18.0 + side * u(15, 30), spine_y + spine_r + u(0, 25)),
        "iliac": (side * u(45, 75), u(-10, 30)),
        "inguinal": (side * u(70, 110), cy + b - anat.fat - u(15, 35)),
    }[site]
    return x, y, s


def _lesion_specs(diagnosis: str, anat: Anatomy, rng: np.random.Generator) -> list[Lesion]:
    """Lesion list of one patient: sites by diagnosis, volumes from a calibrated log-normal total."""
    if diagnosis not in SITES:
        return []
    median, sigma = TUMOR_VOLUME[diagnosis]
    total = float(median * np.exp(sigma * rng.normal()))
    n = 1 + int(rng.poisson(EXTRA_LESIONS[diagnosis] * (total / 46.5) ** 0.35))
    volumes = np.maximum(total * np.sort(rng.dirichlet(np.full(n, 0.8)))[::-1], MIN_LESION_ML)
    sites = list(SITES[diagnosis])
    p = np.array(list(SITES[diagnosis].values()))
    if diagnosis == "lymphoma":  # nodal disease spreads along a few chains
        chains = rng.choice(sites, size=min(1 + int(rng.poisson(1.2)), len(sites)), replace=False, p=p)
        picked = list(rng.choice(chains, size=n))
    else:
        picked = list(rng.choice(sites, size=n, p=p))
        if diagnosis == "lung_cancer":
            picked[0] = "lung"
    specs = []
    for v, site in zip(volumes, picked):
        r = (3.0 * v * 1000.0 / (4.0 * np.pi)) ** (1 / 3)
        elong = np.exp(rng.normal(0, 0.15, 3)) * np.array([1.0, 1.0, LESION_Z_STRETCH])
        elong /= np.prod(elong) ** (1 / 3)
        lo, hi = LESION_SUVMAX[diagnosis]
        specs.append({"site": str(site), "center": _site_center(str(site), anat, rng), "radii": tuple(r * elong),
                      "suvmax": float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
                      "necrotic": bool(r > 18.0 and rng.random() < 0.5), "hu": float(rng.uniform(*LESION_HU)),
                      "seed": int(rng.integers(2**31))})
    return specs


def _lesion_voxels(g: Grid, spec: Lesion) -> tuple[Box, np.ndarray, np.ndarray]:
    """Irregular lesion (ellipsoid deformed by smooth noise): box, mask and SUV inside the box."""
    rng = np.random.default_rng(spec["seed"])
    (cx, cy, cs), r = spec["center"], np.asarray(spec["radii"]) * 1.5
    box, _ = _ellipsoid(g, (cx, cy, cs), tuple(r))
    shape = tuple(sl.stop - sl.start for sl in box)
    if min(shape) <= 0:
        return box, np.zeros(shape, bool), np.zeros(shape, np.float32)
    rx, ry, rs = spec["radii"]
    d = np.sqrt((((g.s[box[0]] - cs) / rs) ** 2)[:, None, None] + (((g.y[box[1]] - cy) / ry) ** 2)[None, :, None]
                + (((g.x[box[2]] - cx) / rx) ** 2)[None, None, :])
    bumps = ndimage.zoom(rng.standard_normal((2, 4, 4, 4)).astype(np.float32), (1,) + tuple(n / 4 for n in shape),
                         order=1, grid_mode=True, mode="nearest")
    mask = d <= 1.0 + 0.3 * bumps[0]
    suv = spec["suvmax"] * (0.6 + 0.4 * np.clip(1.0 - d * d, 0.0, 1.0)) * (1.0 + 0.12 * bumps[1])
    if spec["necrotic"]:
        suv = np.where(d < 0.45, 0.35 * suv, suv)
    return box, mask, suv.astype(np.float32)


def _streams(row: Mapping[str, Any]) -> tuple[np.random.Generator, ...]:
    """Independent random streams (anatomy, lesions, tissue values, noise, physiological uptake) from the row's seed.

    Each stream is a spawned child of the seed, so adding a stream leaves the draws of the others unchanged.
    """
    seed = int(row["seed"])
    if seed < 0:
        raise ValueError(f"study {row.get('study_id')}: field seed must be a non-negative integer, got {seed}")
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))


def lesion_mask(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The study's lesion mask (z, y, x) uint8 and CT affine, without the anatomy: cheap, for statistics."""
    anat_rng, lesion_rng, *_ = _streams(row)
    anat = _anatomy(row, anat_rng)
    g = _grid(anat)
    seg = np.zeros(g.shape, np.uint8)
    for spec in _lesion_specs(str(row["diagnosis"]), anat, lesion_rng):
        box, mask, _ = _lesion_voxels(g, spec)
        seg[box][mask] = 1
    return seg, g.affine


def _draw(ranges: Mapping[str, tuple[tuple[float, float], tuple[float, float]]],
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One uniform draw of HU and SUV in each label's ranges."""
    lo = np.array([r[0][0] for r in ranges.values()] + [r[1][0] for r in ranges.values()], dtype=float)
    hi = np.array([r[0][1] for r in ranges.values()] + [r[1][1] for r in ranges.values()], dtype=float)
    return tuple(np.split(rng.uniform(lo, hi), 2))


def _tissue_values(anat: Anatomy, rng: np.random.Generator,
                   phys_rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient HU and SUV of every label (myocardium: blood-pool level in ~40% of patients; colon intense in
    COLON_INTENSE[0], muscle active in MUSCLE_ACTIVE[0]); the PHYSIOLOGY values from their own stream."""
    hu, suv = _draw(TISSUE, rng)
    if rng.random() < 0.4:
        suv[L["myocardium"]] = suv[L["blood"]] * rng.uniform(1.0, 1.3)
    hu_phys, suv_phys = _draw(PHYSIOLOGY, phys_rng)
    if phys_rng.random() < COLON_INTENSE[0]:
        suv_phys[list(PHYSIOLOGY).index("colon")] *= COLON_INTENSE[1]
    if phys_rng.random() < MUSCLE_ACTIVE[0]:
        suv[L["muscle"]] *= phys_rng.uniform(*MUSCLE_ACTIVE[1])
    return np.concatenate([hu, hu_phys]).astype(np.float32), np.concatenate([suv, suv_phys]).astype(np.float32)


def _smooth_field(shape: tuple[int, int, int], spacing_mm: tuple[float, float, float], rng: np.random.Generator,
                  length_mm: float = PATCH_MM) -> np.ndarray:
    """A smooth random field (z, y, x), zero mean and unit variance, correlated over about `length_mm`."""
    coarse = tuple(max(2, int(np.ceil(n * sp / length_mm)) + 1) for n, sp in zip(shape, spacing_mm))
    field = ndimage.zoom(rng.standard_normal(coarse).astype(np.float32), [n / c for n, c in zip(shape, coarse)],
                         order=1, grid_mode=True, mode="nearest")
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _patchy_uptake(act: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
    """Colon and oesophagus uptake in place made segmental: a log-normal factor (median 1, sd of log 0.5) from a
    smooth field."""
    for name in ("colon", "esophagus"):
        boxes = ndimage.find_objects((labels == L[name]).astype(np.uint8))
        if boxes and boxes[0] is not None:
            box = boxes[0]
            inside = labels[box] == L[name]
            act[box][inside] *= np.exp(0.5 * _smooth_field(inside.shape, CT_SPACING_MM, rng)[inside])


def _pet_shape(ct_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Shape of the PET grid: CT voxel pairs along every axis, one slice fewer along z (`_scanner`)."""
    return ct_shape[0] - 1, ct_shape[1] // 2, ct_shape[2] // 2


def _scanner(act: np.ndarray, fwhm: float) -> np.ndarray:
    """Noise-free PET of an activity map on the CT grid: sampled at the PET voxel centres, blurred by the PSF (linear)."""
    # PET voxel centres sit midway between CT voxel centres (PET_OFFSET_MM), so averaging CT-voxel
    # pairs is exact linear interpolation; the pair average adds a variance of (offset)^2, taken out of the PSF.
    pet = act[:-1] + act[1:]
    pet = (pet[:, 0::2] + pet[:, 1::2])
    pet = (pet[:, :, 0::2] + pet[:, :, 1::2]) * np.float32(0.125)
    sigma2 = (fwhm / np.sqrt(8 * np.log(2))) ** 2
    sigma = [np.sqrt(sigma2 - o * o) / sp for o, sp in zip(PET_OFFSET_MM, PET_SPACING_MM)]
    return ndimage.gaussian_filter(pet, sigma, truncate=3.0)


def _noise(pet: np.ndarray, noise: np.ndarray, liver: float) -> np.ndarray:
    """Additive PET noise: PET_NOISE_CV at liver uptake, its variance proportional to the local uptake."""
    return PET_NOISE_CV * np.sqrt(np.maximum(pet, 0.0) * liver) * noise


def _pet_lesion_ids(lesion_id: np.ndarray) -> np.ndarray:
    """Lesion number of each PET voxel: the largest of the 2x2x2 CT voxels it averages (0 = no lesion)."""
    ids = np.maximum(lesion_id[:-1], lesion_id[1:])
    ids = np.maximum(ids[:, 0::2], ids[:, 1::2])
    return np.maximum(ids[:, :, 0::2], ids[:, :, 1::2])


def _uptake_scale(background: np.ndarray, excess: np.ndarray, noise: np.ndarray, liver: float,
                  suvmax: float) -> float:
    """Factor k on a lesion's excess uptake so that its measured SUVmax, max(B + kE + noise), equals `suvmax`."""
    def measured(k: float) -> float:
        pet = background + k * excess
        return float(np.max(pet + _noise(pet, noise, liver)))

    if excess.size == 0 or excess.max() <= 0 or measured(0.0) >= suvmax:
        return 1.0  # no PET voxel, no excess, or surroundings as bright as the target: the lesion as drawn
    lo, hi = 0.0, 1.0
    while measured(hi) < suvmax:
        lo, hi = hi, 2.0 * hi
    for _ in range(40):  # bisection: measured(k) grows with k
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if measured(mid) < suvmax else (lo, mid)
    return 0.5 * (lo + hi)


def synthesize(row: Mapping[str, Any]) -> dict[str, Any]:
    """One study in memory: CT (int16 HU), PET (float32 Bq/ml, PET grid), SEG (uint8), affines, labels."""
    anat_rng, lesion_rng, tissue_rng, noise_rng, phys_rng = _streams(row)
    anat = _anatomy(row, anat_rng)
    g = _grid(anat)
    labels = _label_map(anat, g, anat_rng)
    age = float(row.get("age") or 60.0)
    _physiology(labels, anat, g, phys_rng, age if np.isfinite(age) else 60.0)
    hu_lut, suv_lut = _tissue_values(anat, tissue_rng, phys_rng)
    ct = hu_lut[labels]
    act = suv_lut[labels]
    _patchy_uptake(act, labels, phys_rng)
    seg = np.zeros(g.shape, np.uint8)
    excess = np.zeros(g.shape, np.float32)  # lesion uptake minus the tissue it replaces, before calibration
    lesion_id = np.zeros(g.shape, np.int16)
    specs = _lesion_specs(str(row["diagnosis"]), anat, lesion_rng)
    for i, spec in enumerate(specs, start=1):
        box, mask, suv = _lesion_voxels(g, spec)
        seg[box][mask] = 1
        ct[box][mask] = spec["hu"]
        excess[box][mask] = suv[mask] - act[box][mask]
        lesion_id[box][mask] = i
    body = labels != L["air"]
    ct[body] += noise_rng.standard_normal(int(body.sum()), dtype=np.float32) * CT_NOISE_HU
    ct = np.rint(ct, out=ct).astype(np.int16)
    fwhm = float(tissue_rng.uniform(5.0, 7.0))
    noise = ndimage.gaussian_filter(noise_rng.standard_normal(_pet_shape(g.shape), dtype=np.float32), 0.8,
                                    truncate=3.0)
    noise *= np.float32(1.0 / noise.std())
    liver = float(suv_lut[L["liver"]])
    pet = _scanner(act, fwhm)
    if specs:
        blurred = _scanner(excess, fwhm)
        ids = _pet_lesion_ids(lesion_id)
        scale = np.zeros(len(specs) + 1, np.float32)
        for i, spec in enumerate(specs, start=1):
            where = ids == i
            scale[i] = _uptake_scale(pet[where], blurred[where], noise[where], liver, spec["suvmax"])
        pet += _scanner(excess * scale[lesion_id], fwhm)
    pet += _noise(pet, noise, liver)
    np.maximum(pet, 0.0, out=pet)
    pet *= np.float32(1.0 / suv_factor(row["weight_kg"], row["injected_activity_mbq"], row["injection_to_scan_s"],
                                       row.get("study_id", "?")))
    pet_affine = np.diag([PET_SPACING_MM[2], PET_SPACING_MM[1], PET_SPACING_MM[0], 1.0])
    pet_affine[:3, 3] = g.affine[:3, 3] + np.array(PET_OFFSET_MM[::-1])
    return {"ct": ct, "pet": pet.astype(np.float32), "seg": seg, "ct_affine": g.affine, "pet_affine": pet_affine,
            "labels": labels, "suv_per_label": suv_lut, "fwhm_mm": fwhm}


def organ_suv(study: Mapping[str, Any], row: Mapping[str, Any]) -> pd.DataFrame:
    """Median and 95th-percentile SUV per tissue label of a synthesized study, on the PET grid (notebook 01)."""
    suv = study["pet"] * suv_factor(row["weight_kg"], row["injected_activity_mbq"], row["injection_to_scan_s"],
                                    row.get("study_id", "?"))
    labels = study["labels"][:-1, ::2, ::2]  # the CT voxel at the low corner of each PET voxel
    out = [{"tissue": name, "voxels": int(sel.size), "median_suv": float(np.median(sel)),
            "p95_suv": float(np.percentile(sel, 95))}
           for name, sel in ((n, suv[labels == L[n]]) for n in LABELS[1:]) if sel.size]
    return pd.DataFrame(out).set_index("tissue")


STUDY_FILES = {"ct_path": "CT.nii.gz", "pet_path": "PET.nii.gz", "seg_path": "SEG.nii.gz"}


def generate_study(row: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write out_dir/{CT,PET,SEG}.nii.gz of one manifest row, each atomically (notebook 01)."""
    out_dir = Path(out_dir)
    study = synthesize(row)
    paths = {field: out_dir / name for field, name in STUDY_FILES.items()}
    volume.save_nifti(study["seg"], study["ct_affine"], paths["seg_path"])
    volume.save_nifti(study["pet"], study["pet_affine"], paths["pet_path"])
    volume.save_nifti(study["ct"], study["ct_affine"], paths["ct_path"])
    return paths


def _study_dir(row: Mapping[str, Any]) -> Path:
    """The folder of a synthetic study's files; the manifest must name CT/PET/SEG.nii.gz in one folder."""
    folder = Path(row["ct_path"]).parent
    for field, name in STUDY_FILES.items():
        if Path(row[field]) != folder / name:
            raise ValueError(f"study {row['study_id']}: field {field} must be {folder / name} for a synthetic "
                             f"study, got {row[field]}")
    return folder


def _generate_row(row: dict[str, Any]) -> str:
    """Worker: generate one study (module-level for process pools)."""
    generate_study(row, _study_dir(row))
    return str(row["study_id"])


def generate_cohort(manifest_df: pd.DataFrame, workers: int = 2) -> list[str]:
    """Generate the studies whose files are missing (resumable), in parallel processes (notebook 01)."""
    rows = manifest_df.to_dict("records")
    for r in rows:
        _study_dir(r)
    rows = [r for r in rows if not all(Path(r[f]).is_file() for f in STUDY_FILES)]
    if not rows:
        return []
    if workers <= 1:
        return [_generate_row(r) for r in progress(rows, desc="phantoms", unit="study")]
    with worker_pool(workers) as pool:  # workers exit if this process is killed
        return list(progress(pool.map(_generate_row, rows), total=len(rows), desc="phantoms", unit="study"))


def _study_statistics(row: dict[str, Any]) -> dict[str, Any]:
    """Tumour volume (ml), tumour slices and per-slice tumour areas (mm^2) of one study's lesion mask."""
    seg, affine = lesion_mask(row)
    voxel_ml = float(np.prod(CT_SPACING_MM)) / 1000.0
    per_slice = seg.reshape(seg.shape[0], -1).sum(axis=1)
    return {"study_id": row["study_id"], "diagnosis": row["diagnosis"], "tumor_volume_ml": per_slice.sum() * voxel_ml,
            "tumor_slices": int((per_slice > 0).sum()), "slices": int(seg.shape[0]),
            "tumor_areas_mm2": per_slice[per_slice > 0] * CT_SPACING_MM[1] * CT_SPACING_MM[2]}


def cohort_statistics(manifest_df: pd.DataFrame, workers: int = 2) -> pd.DataFrame:
    """Per-study tumour volume, tumour-slice count and tumour areas from the lesion masks alone (notebook 01)."""
    rows = manifest_df.to_dict("records")
    if workers <= 1:
        stats = [_study_statistics(r) for r in progress(rows, desc="lesion masks", unit="study")]
    else:
        with worker_pool(workers) as pool:  # workers exit if this process is killed
            stats = list(progress(pool.map(_study_statistics, rows), total=len(rows), desc="lesion masks", unit="study"))
    return pd.DataFrame(stats)


def summarize_statistics(stats: pd.DataFrame) -> dict[str, float]:
    """Cohort tumour-slice fraction and median / IQR of total tumour volume, comparable to PAPER_TARGETS."""
    vol = stats["tumor_volume_ml"]
    return {"studies": float(len(stats)),
            "tumor_slice_fraction": float(stats["tumor_slices"].sum() / stats["slices"].sum()),
            "median_volume_ml": float(vol.median()), "iqr_volume_ml": float(vol.quantile(0.75) - vol.quantile(0.25))}
