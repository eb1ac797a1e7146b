"""Run every benchmark in order, each in its own process, and keep their tables in bench_results/."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHMARKS = ("bench_data", "bench_store", "bench_train", "bench_cam", "bench_segment")


def main() -> int:
    """Run the benchmarks named on the command line (default: all); non-zero if any failed."""
    names = sys.argv[1:] or list(BENCHMARKS)
    out_dir = Path("bench_results")
    out_dir.mkdir(exist_ok=True)
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], capture_output=True, text=True)
        (out_dir / f"{name}.txt").write_text(proc.stdout + proc.stderr)
        print(proc.stdout.rstrip() or proc.stderr.strip()[-2000:], flush=True)
        print(f"   ({time.perf_counter() - start:.0f} s, exit {proc.returncode})", flush=True)
        if proc.returncode:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
