"""Read chosen frames of a video, without decoding into RGB the frames that are skipped.

decord seeks to the frames asked for. OpenCV is the first fallback and grabs (demuxes
without colour conversion) the frames in between; PyAV is the last and decodes them, for
codecs neither has a decoder for (AV1: decord refuses the file, OpenCV's wheel opens it but
decodes no frame). Each frame carries its presentation time as the backend reports it, so
variable frame rate video is timed right.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

AUTO_ORDER = ("decord", "opencv", "pyav")
BACKENDS = ("auto", *AUTO_ORDER)
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
    timestamp: float | None = None  # presentation time in seconds from the stream's start


class VideoReader:
    """Opens `path` with `backend`, or with `auto` the first of decord, OpenCV and PyAV that
    decodes its first frame. `passed_over` holds why each backend tried before was not used;
    it leads every frame error, so a record says what decord said about the file."""

    def __init__(self, path: str, backend: str = "auto", threads: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        self.path = path
        # Each backend tried, in order: the backend if it opened the file, and why it is not used.
        attempts: list[tuple[_Backend | None, str]] = []
        for name in AUTO_ORDER if backend == "auto" else (backend,):
            try:
                candidate = BACKEND_TYPES[name](path, threads)
            except VideoOpenError as e:
                attempts.append((None, f"{name}: {e}"))
                continue
            problem = candidate.first_frame_problem()
            if problem is None:
                self._use(candidate, [why for _, why in attempts])
                return
            attempts.append((candidate, problem))
        opened = [attempt for attempt in attempts if attempt[0] is not None]
        if not opened:
            raise VideoOpenError("; ".join(why for _, why in attempts))
        # No backend decodes the first frame: keep the first that opened the file, so frames
        # after a damaged start are not lost; each failed frame then names every attempt.
        self._use(opened[0][0], [why for attempt, why in attempts if attempt is not opened[0]])

    def _use(self, chosen: _Backend, passed_over: list[str]) -> None:
        self._backend = chosen
        self.backend = chosen.name
        self.n_frames = chosen.n_frames
        self.fps = chosen.fps
        self.passed_over = passed_over

    def read(self, indices: list[int]) -> Iterator[FrameResult]:
        """Yield one result per index (increasing), in order; a frame that fails to decode
        is reported."""
        for frame in self._backend.read(indices):
            if frame.error is not None:
                frame.error = "; ".join([*self.passed_over, frame.error])
            yield frame

    def frame_times(self) -> list[float]:
        """Presentation time in seconds of every frame, in frame order."""
        return self._backend.frame_times()


class _Backend:
    name: str
    n_frames: int
    fps: float

    def first_frame_problem(self) -> str | None:
        """Why the first frame cannot be decoded ("name: ..."), or None when it can."""
        [first] = self.read([0])
        return first.error

    def read(self, indices: list[int]) -> Iterator[FrameResult]:
        raise NotImplementedError

    def frame_times(self) -> list[float]:
        raise NotImplementedError

    def _check_frames(self) -> None:
        if self.n_frames <= 0:
            raise VideoOpenError("no frames")


class _Decord(_Backend):
    name = "decord"

    def __init__(self, path: str, threads: int):
        import decord

        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
        except Exception as e:  # decord raises its own DECORDError or RuntimeError
            raise VideoOpenError(decord_message(e)) from e
        self.n_frames = len(self._vr)
        self.fps = float(self._vr.get_avg_fps() or 0.0)
        self._check_frames()

    def read(self, indices: list[int]) -> Iterator[FrameResult]:
        for start in range(0, len(indices), DECORD_BATCH):
            chunk = indices[start : start + DECORD_BATCH]
            try:
                batch = self._vr.get_batch(chunk).asnumpy()
                times = self._times(chunk)
                results = [self._checked(i, img, t) for i, img, t in zip(chunk, batch, times)]
            except Exception:
                # One bad frame fails the whole batch: retry frame by frame to name it.
                results = [self._read_one(i) for i in chunk]
            yield from results

    def _read_one(self, index: int) -> FrameResult:
        try:
            return self._checked(index, self._vr[index].asnumpy(), self._times([index])[0])
        except Exception as e:
            return FrameResult(index, None, f"decord: {decord_message(e)}")

    @staticmethod
    def _checked(index: int, image: np.ndarray, timestamp: float) -> FrameResult:
        if image.shape[2:] != (3,):
            # decord returns 4-channel garbage for some frame widths (e.g. 48 px,
            # dmlc/decord #336); at the first frame this hands the file to OpenCV.
            return FrameResult(index, None, f"decord: decodes {image.shape[1]} px wide frames "
                                            f"into {image.shape[2]} channels, not 3")
        return FrameResult(index, image, timestamp=timestamp)

    def _times(self, indices: list[int]) -> list[float]:
        return [float(t) for t in self._vr.get_frame_timestamp(indices)[:, 0]]

    def frame_times(self) -> list[float]:
        return self._times(list(range(self.n_frames)))


class _OpenCV(_Backend):
    name = "opencv"

    def __init__(self, path: str, threads: int):
        self.path = path
        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise VideoOpenError("cannot open")
        self.n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        cap.release()
        self._check_frames()

    def read(self, indices: list[int]) -> Iterator[FrameResult]:
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
                # After a read, POS_MSEC is the pts of the frame just decoded.
                yield FrameResult(index, to_rgb(bgr), timestamp=cap.get(cv2.CAP_PROP_POS_MSEC) / 1000)
        finally:
            cap.release()

    def frame_times(self) -> list[float]:
        # OpenCV can only learn a frame's time by decoding it; PyAV reads them off the packets.
        try:
            return demux(self.path)[0]
        except VideoOpenError as e:
            raise VideoOpenError(f"opencv: no frame times: pyav: {e}") from e


class _PyAV(_Backend):
    name = "pyav"

    def __init__(self, path: str, threads: int):
        self.path = path
        self.threads = threads
        # Container headers may lack a frame count (Matroska, WebM): count the packets.
        self._times, self.fps = demux(path)
        self.n_frames = len(self._times)
        self._check_frames()

    def read(self, indices: list[int]) -> Iterator[FrameResult]:
        import av

        wanted = iter(indices)
        target = next(wanted, None)
        error = "pyav: the video ends before this frame"
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.thread_count = self.threads
                start = stream.start_time or 0
                for position, frame in enumerate(container.decode(stream)):
                    if target is None:
                        return
                    if position == target:
                        seconds = (float((frame.pts - start) * frame.time_base)
                                   if frame.pts is not None else None)
                        yield FrameResult(position, frame.to_ndarray(format="rgb24"), timestamp=seconds)
                        target = next(wanted, None)
        except av.error.FFmpegError as e:
            error = f"pyav: {pyav_message(e)}"
        while target is not None:
            yield FrameResult(target, None, error)
            target = next(wanted, None)

    def frame_times(self) -> list[float]:
        return self._times


BACKEND_TYPES: dict[str, type[_Backend]] = {"decord": _Decord, "opencv": _OpenCV, "pyav": _PyAV}


def demux(path: str) -> tuple[list[float], float]:
    """Presentation times in seconds of the first video stream's frames, from its packets
    (demuxed, not decoded: a pass over the file costs little more than reading it), and the
    stream's mean frame rate as FFmpeg reports it to decord and OpenCV too."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoOpenError("no video stream")
            stream = container.streams.video[0]
            start = stream.start_time or 0
            # The last packet of a demux is an empty one that only flushes the decoder.
            pts = [p.pts for p in container.demux(stream) if p.size]
            time_base = stream.time_base
            fps = float(stream.average_rate or 0.0)
    except av.error.FFmpegError as e:
        raise VideoOpenError(pyav_message(e)) from e
    if None in pts:
        raise VideoOpenError("packets without timestamps (a raw stream?): frame times unknown")
    # Packets come in decode order; frames are shown, and numbered, in pts order.
    return [float((p - start) * time_base) for p in sorted(pts)], fps


def decord_message(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return DECORD_LOG_PREFIX.sub("", text)


def pyav_message(error: Exception) -> str:
    # FFmpeg's own words; str() would add the errno and the file's path, and records must
    # not depend on where the dataset lies.
    return getattr(error, "strerror", None) or type(error).__name__


def to_rgb(image: np.ndarray) -> np.ndarray:
    """OpenCV's BGR (or grayscale) frame as RGB."""
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
