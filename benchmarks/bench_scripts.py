"""Time a protocol script on the synthetic sample: a first run, then a rerun that finds every
stage finished, against the baseline of merely starting Python with the libraries a stage
imports.

    python benchmarks/bench_scripts.py [--script ffpp.sh] [--frames 2] [--keep DIR]

The script runs with `--profile tiny`. What a rerun costs is what a user pays to resume a
protocol after a failure or to add a table to a finished work directory: each stage starts a
process, imports its libraries, reads its manifest and returns. The per-stage lines come
from the script's own `== <script>: <stage>` markers, timed as they appear on stderr.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTS = ("torch", "timm", "sklearn.metrics", "matplotlib.pyplot", "cv2", "h5py")


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout)


def run_script(script: str, data: Path, work: Path, frames: int) -> tuple[float, list[tuple[str, float]]]:
    """Wall time of the script and of each of its stages (until the next stage starts)."""
    env = {**os.environ, "PROFILE": "tiny", "FRAMES": str(frames),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = ["bash", str(REPO / "scripts" / script), "--ffpp", str(data / "ffpp"), "--celebdf",
               str(data / "celebdf"), "--work", str(work)]
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        for line in proc.stderr:
            if line.startswith(f"== {script}: "):
                marks.append((line.split(": ", 1)[1].strip(), time.perf_counter()))
    end = time.perf_counter()
    if proc.returncode:
        sys.exit(f"{script} failed (exit {proc.returncode})")
    ends = [t for _, t in marks[1:]] + [end]
    stages = [(name, stop - began) for (name, began), stop in zip(marks, ends)]
    return end - start, stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", default="ffpp.sh")
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="Work here and keep it (default: a temp dir, removed).")
    args = parser.parse_args()

    from lrerr_tools.synth import make_celebdf_sample, make_ffpp_sample

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-scripts-"))
    try:
        make_ffpp_sample(root / "ffpp")
        make_celebdf_sample(root / "celebdf")
        baseline = sum(import_seconds(m) for m in ("torch", "timm", "sklearn.metrics"))
        first, first_stages = run_script(args.script, root, root / "work", args.frames)
        again, again_stages = run_script(args.script, root, root / "work", args.frames)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.script} --profile tiny, FRAMES={args.frames}, on the default synthetic samples\n")
    print("import of each library alone (s): "
          + ", ".join(f"{m} {import_seconds(m):.2f}" for m in IMPORTS))
    print(f"baseline, importing torch + timm + sklearn.metrics in turn: {baseline:.2f} s\n")
    print(f"{'stage':<28}{'first run s':>12}{'rerun s':>10}{'rerun / baseline':>18}")
    for (name, a), (_, b) in zip(first_stages, again_stages, strict=True):
        print(f"{name:<28}{a:>12.2f}{b:>10.2f}{b / baseline:>18.2f}")
    print(f"{'total':<28}{first:>12.2f}{again:>10.2f}{again / baseline:>18.2f}")
    print(f"\nrerun / first run: {again / first:.2f}")


if __name__ == "__main__":
    main()
