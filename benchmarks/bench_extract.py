"""Time `extract` at 32 frames per video against a naive baseline, in one run.

The baseline is what many preprocessing scripts do: read every frame with
cv2.VideoCapture.read() and detect (one frame at a time) on the sampled ones. Both use the
same detector, alignment and PNG writing, so the ratio isolates decoding and batching.

    python benchmarks/bench_extract.py [--videos 4] [--length 300] [--width 640]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2

from lrerr_tools.alignment import align_face
from lrerr_tools.detection import make_detector
from lrerr_tools.extract import ExtractConfig, run
from lrerr_tools.face_choice import choose_face
from lrerr_tools.sampling import sample_indices
from lrerr_tools.synth import astronaut_rgb, camera_clip, write_video


def make_videos(root: Path, count: int, length: int, width: int) -> list[Path]:
    size = (width, width * 3 // 4)
    paths = []
    for i in range(count):
        frames = camera_clip(astronaut_rgb(), length, size=size, seed=i)
        paths.append(write_video(root / "real" / f"clip{i}.mp4", frames))
    return paths


def naive_baseline(paths: list[Path], frames: int, out: Path) -> int:
    detector = make_detector("retinaface-mnet")
    crops = 0
    for path in paths:
        cap = cv2.VideoCapture(str(path))
        wanted = set(sample_indices(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), frames=frames))
        index = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if index in wanted:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                face = choose_face(detector.detect([rgb])[0], rgb.shape, "largest")
                if face is not None:
                    crop, _ = align_face(rgb, face.kps)
                    cv2.imwrite(str(out / f"{path.stem}_{index}.png"), crop[..., ::-1])
                    crops += 1
            index += 1
        cap.release()
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--length", type=int, default=300, help="frames per video")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_videos(tmp / "data", args.videos, args.length, args.width)
        (tmp / "naive").mkdir()
        make_detector("retinaface-mnet").detect([astronaut_rgb()])  # warm the ONNX runtime

        start = time.perf_counter()
        naive_crops = naive_baseline(paths, args.frames, tmp / "naive")
        naive = time.perf_counter() - start

        start = time.perf_counter()
        manifest = run(ExtractConfig(root=str(tmp / "data"), dataset="folder",
                                     out=str(tmp / "ours"), frames=args.frames))
        ours = time.perf_counter() - start

    sampled = args.videos * args.frames
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_version()}")
    print(f"{args.videos} videos x {args.length} frames at {args.width}x{args.width * 3 // 4}, "
          f"{args.frames} sampled per video")
    print(f"{'':<10}{'s/video':>10}{'frames/s':>10}{'crops':>8}")
    print(f"{'naive':<10}{naive / args.videos:>10.3f}{sampled / naive:>10.1f}{naive_crops:>8}")
    print(f"{'extract':<10}{ours / args.videos:>10.3f}{sampled / ours:>10.1f}"
          f"{manifest.counts['crops']:>8}")
    print(f"speed-up: {naive / ours:.2f}x")


if __name__ == "__main__":
    main()
