"""The robustness perturbations `score --perturb` applies to aligned test faces: those of the
DeeperForensics-1.0 protocol (Jiang et al., CVPR 2020, `perturbation/distortions.py` and
`get_distortion_parameter` in its code), each at its five levels, plus real JPEG encoding and
H.264 re-encoding of a video's faces as one clip. docs/protocols.md ("Robustness protocol")
gives each definition, its parameters and where they come from.

Every function takes and returns an aligned uint8 RGB face (H, W, 3): a perturbation acts
on the pixels a detector is given, before the method's own normalisation. The random ones
(noise, block positions) draw from `face_rng`, seeded by the run's perturbation seed and the
face's own record (video and frame), so the same face, perturbation, level and seed always
give the same pixels, in any batch, worker or order.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lrerr_tools.errors import LrerrError

LEVELS = (1, 2, 3, 4, 5)
ALL = "all"
BLOCK_SIZE, BLOCK_GREY = 8, 128  # DeeperForensics' block-wise distortion: 8 × 8 grey squares
BLOCK_SIDE_UNIT = 256  # its count of blocks is per 256 px of the frame's shorter side
# One unit of the studio-swing range (Y in [16, 235], Cb and Cr in [16, 240], of 255) in which
# DeeperForensics adds its noise, as a share of the full range.
STUDIO_SPAN = np.array([219, 224, 224], np.float32) / 255
CLIP_FPS = 25  # the frame rate the faces are encoded at; it only paces x264's rate control
H264_PRESET = "medium"  # FFmpeg's libx264 default, which DeeperForensics' `ffmpeg -crf` ran with


def jpeg(face: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    bgr = cv2.cvtColor(face, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError("JPEG encoding failed")
    return cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_blur(face: np.ndarray, kernel: int, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(face, (kernel, kernel), kernel / 6)


def _ycrcb(face: np.ndarray) -> np.ndarray:
    """Full-range YCrCb in [0, 1] (BT.601, chroma centred on 0.5), as float32."""
    return cv2.cvtColor(face.astype(np.float32) / 255, cv2.COLOR_RGB2YCrCb)


def _rgb(ycrcb: np.ndarray) -> np.ndarray:
    """Back to uint8 RGB, clipped and truncated as DeeperForensics' `astype(np.uint8)` does."""
    return np.clip(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB) * 255, 0, 255).astype(np.uint8)


def gaussian_noise(face: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
    """White noise of `variance` on each of Y, Cb and Cr, in units of their studio-swing range."""
    ycrcb = _ycrcb(face)
    noise = rng.standard_normal(ycrcb.shape, dtype=np.float32) * np.float32(np.sqrt(variance))
    return _rgb(ycrcb + noise * (1 / STUDIO_SPAN))


def color_saturation(face: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Cb and Cr scaled by `factor` about the neutral grey; the luma is kept."""
    ycrcb = _ycrcb(face)
    ycrcb[..., 1:] = 0.5 + (ycrcb[..., 1:] - 0.5) * factor
    return _rgb(ycrcb)


def color_contrast(face: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """DeeperForensics' "contrast change": every value times `factor`, truncated."""
    return (face.astype(np.float32) * np.float32(factor)).astype(np.uint8)


def block_wise(face: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` 8 × 8 grey blocks at uniform positions, per 256 px of the shorter side; an aligned
    face is shorter than 256 px, where DeeperForensics' count would be 0, so it counts one unit."""
    height, width = face.shape[:2]
    blocks = count * max(1, min(height, width) // BLOCK_SIDE_UNIT)
    out = face.copy()
    xs = rng.integers(0, width - BLOCK_SIZE, size=blocks)  # its randint(0, w - 1 - 8), inclusive
    ys = rng.integers(0, height - BLOCK_SIZE, size=blocks)
    for x, y in zip(xs, ys):
        out[y:y + BLOCK_SIZE, x:x + BLOCK_SIZE] = BLOCK_GREY
    return out


def pixelation(face: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    """Down by `factor` and back up, bilinear (DeeperForensics' `jpeg_compression`)."""
    height, width = face.shape[:2]
    small = cv2.resize(face, (width // factor, height // factor))
    return cv2.resize(small, (width, height))


def h264_clip(faces: Sequence[np.ndarray], crf: int) -> list[np.ndarray]:
    """A video's faces, in frame order, encoded as one H.264 clip (libx264, yuv420p) and decoded
    again, in the same order."""
    height, width = faces[0].shape[:2]
    # yuv420p needs even sides: an odd one is padded by repeating the edge, and cut again.
    pad_y, pad_x = height % 2, width % 2
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = width + pad_x, height + pad_y, "yuv420p"
        # One thread, so that the bitstream does not depend on the machine's cores; and x264's C
        # code: its assembly gave the same faces other bits now and then, within one process (11
        # distinct outputs from 25 encodes of one clip at each of 2 CRFs), where the C code gave 2.
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(crf), "preset": H264_PRESET, "x264-params": "asm=0"}
        for index, face in enumerate(faces):
            padded = cv2.copyMakeBorder(face, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
            frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
            frame.pts = index  # x264's rate control reads the timestamps
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        decoded = [frame.to_ndarray(format="rgb24")[:height, :width].copy()
                   for frame in container.decode(video=0)]
    if len(decoded) != len(faces):
        raise OSError(f"H.264 at CRF {crf}: {len(faces)} faces in, {len(decoded)} decoded")
    return decoded


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: what its five levels set (`values`, level 1 first) and where they come
    from. `apply` perturbs one face; `clip` ones are applied to a video's faces together."""

    name: str
    title: str
    parameter: str
    values: tuple
    source: str
    apply: Callable[[np.ndarray, object, np.random.Generator], np.ndarray] | None = None
    clip: bool = False

    def value(self, level: int) -> object:
        return self.values[level - 1]


DEEPER_FORENSICS = "DeeperForensics-1.0"
PERTURBATIONS = {p.name: p for p in (
    Perturbation("jpeg", "JPEG", "quality", (25, 18, 15, 10, 7),
                 "ImageNet-C's JPEG severities (Hendrycks & Dietterich, 2019)", jpeg),
    Perturbation("blur", "Gaussian blur", "kernel", (7, 9, 13, 17, 21), DEEPER_FORENSICS, gaussian_blur),
    Perturbation("noise", "Gaussian noise", "variance", (0.001, 0.002, 0.005, 0.01, 0.05), DEEPER_FORENSICS,
                 gaussian_noise),
    Perturbation("saturation", "colour saturation", "chroma factor", (0.4, 0.3, 0.2, 0.1, 0.0),
                 DEEPER_FORENSICS, color_saturation),
    Perturbation("contrast", "colour contrast", "factor", (0.85, 0.725, 0.6, 0.475, 0.35), DEEPER_FORENSICS,
                 color_contrast),
    Perturbation("blocks", "block-wise", "blocks", (16, 32, 48, 64, 80), DEEPER_FORENSICS, block_wise),
    Perturbation("pixelation", "pixelation", "factor", (2, 3, 4, 5, 6), DEEPER_FORENSICS, pixelation),
    Perturbation("h264", "H.264", "CRF", (23, 28, 33, 38, 43),
                 "libx264's CRF, from its default 23 in steps of 5", clip=True),
)}


def parse_perturbations(spec: str | Sequence[str]) -> list[str]:
    """The perturbations named by `--perturb` ("blur,jpeg", "all", or a list of names), in the
    registry's order, each once; an unknown name is refused with the valid ones."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if ALL in names:
        return list(PERTURBATIONS)
    unknown = [n for n in names if n not in PERTURBATIONS]
    if unknown:
        raise LrerrError(f"--perturb: unknown perturbation {unknown[0]!r}; the valid ones are "
                         f"{', '.join(PERTURBATIONS)}, or {ALL}")
    return [n for n in PERTURBATIONS if n in names]


def face_rng(seed: int, name: str, level: int, video_id: str, frame_index: int) -> np.random.Generator:
    """The random stream of one face under one perturbation and level."""
    key = json.dumps([seed, name, level, video_id, int(frame_index)]).encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def perturb_face(face: np.ndarray, name: str, level: int, seed: int, video_id: str,
                 frame_index: int) -> np.ndarray:
    """One face under a per-face perturbation."""
    perturbation = PERTURBATIONS[name]
    rng = face_rng(seed, name, level, video_id, frame_index)
    return perturbation.apply(face, perturbation.value(level), rng)


class PerturbedFaces(Dataset):
    """The faces of a ShardDataset under one perturbation and level: the same items, with the
    image perturbed. A clip perturbation encodes all of a face's video's faces of the dataset, in
    frame order, and keeps the last video's result, since a loader asks for a video's faces in
    a row."""

    def __init__(self, faces: Dataset, name: str, level: int, seed: int):
        if level not in LEVELS:
            raise LrerrError(f"perturbation level must be one of {LEVELS}, got {level}")
        self.faces, self.name, self.level, self.seed = faces, name, level, seed
        self.perturbation = PERTURBATIONS[name]
        self._clip: tuple[str, dict[int, np.ndarray]] | None = None
        if self.perturbation.clip:
            videos = faces.face_videos
            order = np.lexsort((faces.frame_index, videos))
            self._members: dict[str, list[int]] = {}
            for index in order.tolist():
                self._members.setdefault(videos[index], []).append(index)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.faces[index])
        if self.perturbation.clip:
            image = self._clip_faces(item["video_id"])[index]
        else:
            image = perturb_face(_hwc(item["image"]), self.name, self.level, self.seed, item["video_id"],
                                 item["frame_index"])
        item["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return item

    def _clip_faces(self, video_id: str) -> dict[int, np.ndarray]:
        if self._clip is None or self._clip[0] != video_id:
            members = self._members[video_id]
            clip = h264_clip([_hwc(self.faces[i]["image"]) for i in members],
                             self.perturbation.value(self.level))
            self._clip = (video_id, dict(zip(members, clip)))
        return self._clip[1]


def _hwc(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.numpy().transpose(1, 2, 0))
