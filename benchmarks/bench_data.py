"""Phantom benchmark: seconds per synthetic study (generate + write NIfTI, one core) and the cohort's tumour statistics.

Usage: PYTHONPATH=. python -m benchmarks.bench_data [--studies 6] [--stats 453] [--workers 2]
Target: <= ~2 s per study on one core. Statistics come from the lesion masks alone (`phantom.cohort_statistics`)
over the first --stats studies of the committed cohort, beside the paper's Sec. 2.1.2 numbers.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wsseg_nb import manifest, phantom


def main() -> None:
    """Time phantom generation and print the calibration table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6, help="studies to generate and time")
    parser.add_argument("--stats", type=int, default=453, help="studies whose lesion statistics are computed")
    parser.add_argument("--workers", type=int, default=2, help="processes for the statistics")
    args = parser.parse_args()
    cohort = manifest.synthetic_cohort()
    times, synth = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for row in cohort.head(args.studies).to_dict("records"):
            start = time.perf_counter()
            phantom.synthesize(row)
            synth.append(time.perf_counter() - start)
            start = time.perf_counter()
            phantom.generate_study(row, Path(tmp) / row["study_id"])
            times.append(time.perf_counter() - start)
    start = time.perf_counter()
    stats = phantom.cohort_statistics(cohort.head(args.stats), workers=args.workers)
    stat_s = (time.perf_counter() - start) / len(stats)
    summary = phantom.summarize_statistics(stats)
    lo, hi = phantom.PAPER_TARGETS["tumor_slice_fraction"]
    areas = np.concatenate(stats["tumor_areas_mm2"].to_list())
    print(f"{'quantity':<40}{'ours':>12}{'target':>14}")
    print(f"{'synthesize, s/study (1 core)':<40}{np.median(synth):>12.2f}{'':>14}")
    print(f"{'generate + write NIfTI, s/study':<40}{np.median(times):>12.2f}{'<= ~2':>14}")
    print(f"{'lesion statistics, s/study':<40}{stat_s:>12.3f}{'':>14}")
    print(f"{'studies in statistics':<40}{len(stats):>12d}{'453':>14}")
    print(f"{'tumour-slice fraction (3 mm slices)':<40}{summary['tumor_slice_fraction']:>12.3f}{f'{lo}-{hi}':>14}")
    print(f"{'median tumour volume (ml)':<40}{summary['median_volume_ml']:>12.1f}"
          f"{phantom.PAPER_TARGETS['median_volume_ml']:>14.1f}")
    print(f"{'IQR tumour volume (ml)':<40}{summary['iqr_volume_ml']:>12.1f}"
          f"{phantom.PAPER_TARGETS['iqr_volume_ml']:>14.1f}")
    print(f"{'median / mean tumour area per slice (mm2)':<40}{np.median(areas):>6.0f} /{areas.mean():>4.0f}"
          f"{'right-skewed':>14}")


if __name__ == "__main__":
    main()
