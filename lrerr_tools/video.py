"""Read chosen frames of a video, without decoding into RGB the frames that are skipped.

decord seeks to the frames asked for; OpenCV is the fallback for files decord cannot open
and grabs (demuxes without colour conversion) the frames in between.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

BACKENDS = ("auto", "decord", "opencv")
# decord keeps decoded frames of a batch in memory; 16 frames of 1080p is ~100 MB.
DECORD_BATCH = 16
# decord prefixes its messages with the time and its source line; records must not depend
# on the time of day, or two runs over the same data would hash differently.
DECORD_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


class VideoOpenError(Exception):
    """The file could not be opened as a video, or it reports no frames."""


@dataclass
class FrameResult:
    index: int
    image: np.ndarray | None  # RGB uint8 (H, W, 3); None when decoding failed
    error: str | None = None


class VideoReader:
    def __init__(self, path: str, backend: str = "auto", threads: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        self.path = path
        self.threads = threads
        errors = []
        for name in ("decord", "opencv") if backend == "auto" else (backend,):
            try:
                self._open(name)
                self.backend = name
                return
            except VideoOpenError as e:
                errors.append(f"{name}: {e}")
        raise VideoOpenError("; ".join(errors))

    def _open(self, name: str) -> None:
        if name == "decord":
            import decord

            try:
                self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0),
                                              num_threads=self.threads)
            except Exception as e:  # decord raises its own DECORDError or RuntimeError
                raise VideoOpenError(decord_message(e)) from e
            self.n_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps() or 0.0)
        else:
            cap = cv2.VideoCapture(self.path)
            if not cap.isOpened():
                raise VideoOpenError("cannot open")
            self.n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            cap.release()
        if self.n_frames <= 0:
            raise VideoOpenError("no frames")

    def read(self, indices: list[int]) -> Iterator[FrameResult]:
        """Yield one result per index, in order; a frame that fails to decode is reported."""
        if self.backend == "decord":
            yield from self._read_decord(indices)
        else:
            yield from self._read_opencv(indices)

    def _read_decord(self, indices: list[int]) -> Iterator[FrameResult]:
        for start in range(0, len(indices), DECORD_BATCH):
            chunk = indices[start : start + DECORD_BATCH]
            try:
                batch = self._vr.get_batch(chunk).asnumpy()
                results = [FrameResult(i, img) for i, img in zip(chunk, batch)]
            except Exception:
                # One bad frame fails the whole batch: retry frame by frame to name it.
                results = [self._read_decord_one(i) for i in chunk]
            if any(r.image is not None and r.image.shape[2:] != (3,) for r in results):
                # decord returns 4-channel garbage for some frame widths (e.g. 48 px):
                # hand the rest of the video to OpenCV.
                self.backend = "opencv"
                yield from self._read_opencv(indices[start:])
                return
            yield from results

    def _read_decord_one(self, index: int) -> FrameResult:
        try:
            return FrameResult(index, self._vr[index].asnumpy())
        except Exception as e:
            return FrameResult(index, None, f"decord: {decord_message(e)}")

    def _read_opencv(self, indices: list[int]) -> Iterator[FrameResult]:
        cap = cv2.VideoCapture(self.path)
        position = 0
        try:
            for index in indices:
                while position < index and cap.grab():
                    position += 1
                ok, bgr = cap.read() if position == index else (False, None)
                position += 1 if ok else 0
                if not ok or bgr is None:
                    yield FrameResult(index, None, "opencv: frame could not be decoded")
                    continue
                yield FrameResult(index, to_rgb(bgr))
        finally:
            cap.release()


def decord_message(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DECORD_LOG_PREFIX.sub("", text)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grayscale) frame as RGB."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
