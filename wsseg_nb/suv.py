"""Body-weight standardized uptake value (SUV) of [18F]-FDG PET (Sec. 2.1.1)."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

F18_HALF_LIFE_S = 6586.2
"""Physical half-life of fluorine-18 in seconds."""


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
            raise ValueError(f"study {ids[bad[0]]}: field {name} must be {what} for SUV from Bq/ml, "
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
        raise ValueError(f"study {study_id}: field pet_units must be 'BQML' or 'SUV', got {pet_units!r}")
    factor = suv_factor(weight_kg, injected_activity_mbq, injection_to_scan_s, study_id)
    return np.multiply(pet, factor, dtype=np.float32)
