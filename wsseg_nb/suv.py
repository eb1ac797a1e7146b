"""Body-weight standardized uptake value (SUV) of [18F]-FDG PET (Sec. 2.1.1)."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .errors import InputError

F18_HALF_LIFE_S = 6586.2
"""Physical half-life of fluorine-18 in seconds."""
BODY_SUV_P99 = (0.2, 100.0)
"""Plausible range of the 99th percentile of SUV in the body (FDG: brain, heart and bladder reach 5-50)."""
BODY_SUV_P1_MIN = -1.0
"""Least plausible 1st percentile of SUV in the body; reconstruction noise stays above it."""


def seconds_between(injection_time: str, scan_time: str) -> float:
    """Seconds from an injection clock time to a scan clock time ('HH:MM:SS', next day if earlier) (notebook 01)."""
    t0, t1 = (datetime.strptime(t, "%H:%M:%S") for t in (injection_time, scan_time))
    return float((t1 - t0).total_seconds() % 86400)


def suv_factor(weight_kg: ArrayLike, injected_activity_mbq: ArrayLike, injection_to_scan_s: ArrayLike,
               study_id: ArrayLike = "?") -> float | np.ndarray:
    """SUV per Bq/ml, weight[g] / (A_inj[Bq] * 2^(-dt / T_half)); scalars or one value per study (notebook 01)."""
    *raw, ids = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=object))
                                      for v in (weight_kg, injected_activity_mbq, injection_to_scan_s, study_id)))
    weight, activity, delay = nums = [np.asarray(pd.to_numeric(v, errors="coerce"), dtype=float) for v in raw]
    checks = (("weight_kg", weight > 0, "a positive number"),
              ("injected_activity_mbq", activity > 0, "a positive number"),
              ("injection_to_scan_s", delay >= 0, "a number >= 0"))
    for (name, ok, what), num, given in zip(checks, nums, raw):
        bad = np.flatnonzero(~(ok & np.isfinite(num)))
        if bad.size:
            raise InputError(f"study {ids[bad[0]]}: field {name} must be {what} for SUV from Bq/ml, "
                             f"got {given[bad[0]]!r}")
    factor = weight * 1000.0 / (activity * 1e6 * np.exp2(-delay / F18_HALF_LIFE_S))
    return float(factor[0]) if np.ndim(weight_kg) == np.ndim(injected_activity_mbq) == 0 else factor


def to_suv(pet: np.ndarray, pet_units: str, weight_kg: float | None = None,
           injected_activity_mbq: float | None = None, injection_to_scan_s: float | None = None,
           study_id: str = "?") -> np.ndarray:
    """PET volume in SUV (float32): Bq/ml scaled by `suv_factor`, SUV passed through (notebook 01)."""
    units = str(pet_units).upper()
    if units == "SUV":
        return np.asarray(pet, dtype=np.float32)
    if units != "BQML":
        raise InputError(f"study {study_id}: field pet_units must be 'BQML' or 'SUV', got {pet_units!r}")
    factor = suv_factor(weight_kg, injected_activity_mbq, injection_to_scan_s, study_id)
    return np.multiply(pet, factor, dtype=np.float32)


UNITS_HINTS = {("SUV", True): "values in Bq/ml labelled SUV? set pet_units to BQML with weight and dose",
               ("SUV", False): "the PET is (nearly) empty or scaled",
               ("BQML", True): "check weight_kg, injected_activity_mbq and that the PET is in Bq/ml",
               ("BQML", False): "values already in SUV labelled BQML? set pet_units to SUV"}
"""Likely cause of an implausible body SUV by (pet_units, too high)."""


def check_body_suv(body_suv: np.ndarray, pet_units: str, where: str) -> dict[str, float]:
    """1st and 99th percentile of SUV in the body; InputError (prefixed by `where`) when implausible for FDG."""
    p1, p99 = (float(v) for v in np.percentile(body_suv, [1, 99]))
    low, high = BODY_SUV_P99
    units = str(pet_units).upper()
    if not low <= p99 <= high:
        raise InputError(f"{where}: pet_units {units}: 99th percentile of SUV in the body is {p99:.4g}, expected "
                         f"{low:g}..{high:g} ({UNITS_HINTS[units, p99 > high]})")
    if p1 < BODY_SUV_P1_MIN:
        raise InputError(f"{where}: 1st percentile of SUV in the body is {p1:.3g}, expected >= {BODY_SUV_P1_MIN:g} "
                         "(negative beyond noise: a wrong rescale intercept or a signed/unsigned mix-up?)")
    return {"body_suv_p1": p1, "body_suv_p99": p99}
