"""Stage `landmarks`: dlib's 68 points on every extract crop, and the key region T.

Output directory:
    manifest.json, records.jsonl     written once every video is done; extra.key_region
                                     holds the dataset-wide rectangle and patch set T
    key_region.png                   T drawn over the mean real face: check it first
    work/config.json                 the config (and parent hash) every rerun must share
    work/videos/<video_id>.json      one video's records; its presence means "done"

One record per `ok` crop of the parent: `ok` with `landmarks` (68×2, crop pixels) and
`key_patches` (the face's own patch set), or `no_landmarks` / `missing_crop` with an `error`.
The parent's other records (frames without a face, unreadable videos) are not repeated;
they are counted as `parent_non_ok`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from lrerr_tools import key_region
from lrerr_tools.atomic_io import atomic_write_bytes, atomic_write_json
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.masking import MaskingSettings, uncovered_key_region
from lrerr_tools.manifest import Manifest, StageDir, open_parent, write_stage
from lrerr_tools.parallel import run_parallel
from lrerr_tools.stage_dir import (
    CONFIG_FILE,
    WORK_DIR,
    exclusive_run,
    existing_manifest,
    prepare_output,
    result_path,
    same_output,
)

log = logging.getLogger(__name__)

STAGE = "landmarks"
PARENT_STAGE = "extract"
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
IMAGE_FILE = "key_region.png"
# Where the key region's faces come from, in order of preference.
SOURCES = ("train-real", "real", "all")


@dataclass
class LandmarksConfig:
    extract_dir: str
    out: str
    coverage: float = 0.95
    expand: int = 8
    patch: int = 16
    # How a run is carried out; changing these does not change its output.
    jobs: int = 1
    overwrite: bool = False
    # The input is identified by its content hash (parent_sha256), not by where it lies, so
    # that a work directory moved whole is still the same work.
    RUN_OPTIONS: ClassVar[tuple[str, ...]] = ("extract_dir", "out", "jobs", "overwrite")

    def identity(self) -> dict:
        """The fields that decide the output: a rerun must match them exactly."""
        ident = {k: v for k, v in asdict(self).items() if k not in self.RUN_OPTIONS}
        ident["predictor"] = PREDICTOR_FILE
        return ident

    def validate(self, crop_size: int | None = None) -> None:
        if not 0.0 < self.coverage <= 1.0:
            raise LrerrError(f"--coverage must be above 0 and at most 1 (got {self.coverage})")
        if self.expand < 0:
            raise LrerrError(f"--expand must be 0 or more pixels (got {self.expand})")
        if self.patch < 1:
            raise LrerrError(f"--patch must be at least 1 pixel (got {self.patch})")
        if crop_size is not None and (self.patch > crop_size or crop_size % self.patch):
            raise LrerrError(f"--patch {self.patch} does not divide the {crop_size}-pixel crops of "
                             f"{self.extract_dir} into a whole grid (try 16, as ViT-B/16 does)")


def run(cfg: LandmarksConfig) -> Manifest:
    """Find the landmarks of every crop in cfg.extract_dir, then the key region; return the
    manifest. Resumes: videos already done by an earlier run with the same config are skipped."""
    cfg.validate()
    parent = open_parent(cfg.extract_dir, PARENT_STAGE)
    size = int(parent.manifest.config.get("crop_size", 224))
    cfg.validate(size)
    out = Path(cfg.out)
    if out.resolve() == parent.path.resolve():
        raise LrerrError(f"--out {out}: is the extract directory itself — choose another")
    _check_same_parent(out, parent, cfg.overwrite)
    with exclusive_run(out, STAGE):
        prepare_output(out, STAGE, {**cfg.identity(), "parent_sha256": parent.sha256}, cfg.overwrite,
                       outputs=(IMAGE_FILE,))
        videos, parent_non_ok = _group_by_video(parent)
        todo = [(vid, recs) for vid, recs in videos.items() if not result_path(out, vid).is_file()]
        if len(todo) < len(videos):
            log.info("resuming: %d of %d videos already done", len(videos) - len(todo), len(videos))
        work = partial(landmark_video, extract_dir=parent.path, out_dir=out, size=size)
        for _ in run_parallel(work, todo, jobs=cfg.jobs, desc=STAGE, unit="video"):
            pass
        return _finalize(cfg, parent, out, list(videos), parent_non_ok, size)


def _check_same_parent(out: Path, parent: StageDir, overwrite: bool) -> None:
    """Say plainly when the extract directory changed under an earlier run's results."""
    path = out / WORK_DIR / CONFIG_FILE
    if overwrite or not path.is_file():
        return
    stored = json.loads(path.read_text()).get("parent_sha256")
    if stored is not None and stored != parent.sha256:
        raise LrerrError(
            f"{parent.path}: changed since {out} was made from it (its manifest.json hash differs) "
            "— pass --overwrite to redo the landmarks, or choose another --out"
        )


def _group_by_video(parent: StageDir) -> tuple[dict[str, list[dict]], int]:
    """The parent's ok records by video, in the parent's order, and how many were not ok."""
    videos: dict[str, list[dict]] = {}
    non_ok = 0
    for record in parent.records():
        if record.get("status") == "ok":
            videos.setdefault(record["video_id"], []).append(record)
        else:
            non_ok += 1
    return videos, non_ok


def landmark_video(item: tuple[str, list[dict]], extract_dir: Path, out_dir: Path, size: int) -> str:
    """Find the landmarks of one video's crops and mark the video done; return its id."""
    video_id, records = item
    results = [landmark_face(r, extract_dir, size) for r in records]
    atomic_write_json(result_path(out_dir, video_id), {"video_id": video_id, "records": results})
    return video_id


def landmark_face(record: dict, extract_dir: Path, size: int) -> dict:
    """The parent record plus `landmarks`, or with status no_landmarks / missing_crop."""
    path = Path(extract_dir) / record["crop"]
    if not path.is_file():
        return {**record, "status": "missing_crop", "error": f"{record['crop']}: no such file"}
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return {**record, "status": "missing_crop", "error": f"{record['crop']}: not a readable image"}
    height, width = image.shape[:2]
    if (height, width) != (size, size):
        return {**record, "status": "missing_crop",
                "error": f"{record['crop']}: is {width}x{height}, the extract config says {size}x{size}"}
    points, problem = crop_landmarks(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), record["box"], record["matrix"])
    if problem:
        return {**record, "status": "no_landmarks", "error": problem}
    return {**record, "landmarks": points.tolist()}


def crop_landmarks(rgb: np.ndarray, box, matrix) -> tuple[np.ndarray | None, str | None]:
    """dlib's 68 points in an aligned RGB crop, rounded as the records keep them, seeded by the
    face's detector `box` (frame pixels) and its frame-to-crop `matrix`; or None and why not."""
    height, width = rgb.shape[:2]
    seed = key_region.seed_rect(box, matrix, width, height)
    if seed is None:
        return None, "the face box falls outside the crop"
    points = predict(rgb, seed)
    if not key_region.plausible(points, width, height):
        return None, "most landmarks fall outside the crop"
    return np.round(points, 2), None


def face_key_patches(landmarks, size: int, expand: int, patch: int) -> list[int]:
    """A face's own key patch set (the shard's `key_mask`): its P1..P4 rectangle, expanded."""
    rect = key_region.expand_rect(key_region.face_rect(landmarks, size, size), expand, size, size)
    return key_region.rect_to_patches(rect, size, patch)[0]


def predict(rgb: np.ndarray, seed: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's 68 points (68×2, crop pixels) for the face in `seed` (left, top, right, bottom)."""
    import dlib

    shape = _predictor()(rgb, dlib.rectangle(*seed))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def predictor_path() -> Path:
    # Found without importing face_recognition_models: its __init__ needs pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise LrerrError("the face-recognition-models package is missing: "
                         "pip install face-recognition-models")
    path = Path(spec.submodule_search_locations[0]) / "models" / PREDICTOR_FILE
    if not path.is_file():
        raise LrerrError(f"{path}: missing — reinstall face-recognition-models")
    return path


@lru_cache(maxsize=1)
def _predictor():
    # Cached per process: a joblib worker loads the 95 MB model once, not once per video.
    import dlib

    return dlib.shape_predictor(str(predictor_path()))


def _finalize(cfg: LandmarksConfig, parent: StageDir, out: Path, video_ids: list[str],
              parent_non_ok: int, size: int) -> Manifest:
    records = []
    for vid in video_ids:
        records.extend(json.loads(result_path(out, vid).read_text())["records"])
    for r in records:
        if r["status"] == "ok":
            r["key_patches"] = face_key_patches(r["landmarks"], size, cfg.expand, cfg.patch)
    source, faces = region_faces(records)
    rects = [key_region.face_rect(r["landmarks"], size, size) for r in faces]
    inner, inside = key_region.dataset_rect(rects, cfg.coverage)
    rect = key_region.expand_rect(inner, cfg.expand, size, size)
    patches, mask = key_region.rect_to_patches(rect, size, cfg.patch)
    _warn_if_uncovered(patches, [r["key_patches"] for r in records if r["status"] == "ok"], mask.size)
    manifest = Manifest(
        stage=STAGE, config=cfg.identity(), parent=parent.as_parent(out), complete=True,
        counts={**_counts(records), "parent_non_ok": parent_non_ok},
        extra={"key_region": {
            "rect": [round(v, 2) for v in rect], "patches": patches, "mask_len": int(mask.size),
            "patch": cfg.patch, "grid": key_region.grid_size(size, cfg.patch),
            "coverage": cfg.coverage, "expand": cfg.expand, "faces_used": len(faces),
            "faces_inside": inside, "source": source, "image": IMAGE_FILE,
        }},
    )
    previous = existing_manifest(out)
    unchanged = previous is not None and same_output(previous, manifest, records)
    if not unchanged or not (out / IMAGE_FILE).is_file():
        _write_picture(out / IMAGE_FILE, parent.path, faces, rect, mask, cfg.patch, size)
    if unchanged:
        return previous  # keep its hash, so later stages stay valid
    return write_stage(out, manifest, records)


def _warn_if_uncovered(patches: list[int], per_face: list[list[int]], num_patches: int) -> None:
    """Say now, not hours later at train-mae, when train-mae's default masking cannot cover the
    key region (it refuses to train so), or some faces' own regions (`--key-region per-face`)."""
    defaults = MaskingSettings()
    problem = uncovered_key_region(len(patches), num_patches, defaults)
    if problem:
        log.warning("at train-mae's default masking, %s; train-mae refuses to train so", problem)
    over = sum(uncovered_key_region(len(p), num_patches, defaults) is not None for p in per_face)
    if over:
        log.warning("%d of %d faces have their own key region larger than train-mae's default "
                    "--mask-ratio %s can mask as --key-mask-ratio %s asks (it matters for "
                    "--key-region per-face)", over, len(per_face), defaults.mask_ratio,
                    defaults.key_mask_ratio)


def count_records(records: list[dict], manifest: Manifest) -> dict[str, int]:
    """The counts that follow from the records (parent_non_ok follows from the parent's)."""
    return _counts(records)


def _counts(records: list[dict]) -> dict[str, int]:
    statuses = Counter(r["status"] for r in records)
    return {"crops_in": len(records), "ok": statuses["ok"], "no_landmarks": statuses["no_landmarks"],
            "missing_crop": statuses["missing_crop"]}


def _write_picture(path: Path, extract_dir: Path, faces: list[dict], rect, mask: np.ndarray,
                   patch: int, size: int) -> None:
    mean_points = np.mean([r["landmarks"] for r in faces], axis=0)
    image = render_key_region(_mean_face(extract_dir, faces, size), rect, mask, patch, mean_points)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, png.tobytes())


def region_faces(records: list[dict]) -> tuple[str, list[dict]]:
    """The faces the dataset-wide key region is computed from, and which set they are:
    the real faces of the train split; failing that all real faces; failing that all faces."""
    ok = [r for r in records if r["status"] == "ok"]
    real = [r for r in ok if r["label"] == 0]
    for source, faces in zip(SOURCES, ([r for r in real if r["split"] == "train"], real, ok)):
        if faces:
            if source != SOURCES[0]:
                log.warning("no real faces with landmarks in the train split: the key region is "
                            "computed from %s faces instead (source %r)",
                            "all real" if source == "real" else "all", source)
            return source, faces
    raise LrerrError("no crop got landmarks, so there is no key region to compute — "
                     "check the crops of the extract directory")


def _mean_face(extract_dir: Path, faces: list[dict], size: int) -> np.ndarray:
    """The mean RGB crop of `faces` (the key region's: the real train faces unless it fell
    back), summed one crop at a time so no more than one is held."""
    total = np.zeros((size, size, 3), dtype=np.float64)
    n = 0
    for r in faces:
        image = cv2.imread(str(extract_dir / r["crop"]), cv2.IMREAD_COLOR)
        if image is not None and image.shape[:2] == (size, size):
            total += cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            n += 1
    return np.round(total / max(n, 1)).astype(np.uint8)


def render_key_region(face: np.ndarray, rect, mask: np.ndarray, patch: int,
                      points: np.ndarray | None = None) -> np.ndarray:
    """Draw T (translucent red), the patch grid, the rectangle (yellow) and the mean
    landmarks (cyan dots) over an RGB face; returns a new image of the same size."""
    image = face.copy()
    grid = int(round(mask.size ** 0.5))
    fill = image.copy()
    for pid in np.flatnonzero(mask):
        r, c = divmod(int(pid), grid)
        cv2.rectangle(fill, (c * patch, r * patch), ((c + 1) * patch - 1, (r + 1) * patch - 1),
                      (255, 40, 40), thickness=-1)
    image = cv2.addWeighted(fill, 0.35, image, 0.65, 0)
    lines = image.copy()
    for i in range(1, grid):
        cv2.line(lines, (i * patch, 0), (i * patch, grid * patch - 1), (255, 255, 255), 1)
        cv2.line(lines, (0, i * patch), (grid * patch - 1, i * patch), (255, 255, 255), 1)
    image = cv2.addWeighted(lines, 0.3, image, 0.7, 0)
    x0, y0, x1, y1 = (int(round(v)) for v in rect)
    cv2.rectangle(image, (x0, y0), (max(x1 - 1, x0), max(y1 - 1, y0)), (255, 230, 0), 1)
    if points is not None:
        for x, y in np.round(points).astype(int):
            cv2.circle(image, (int(x), int(y)), 1, (0, 230, 255), thickness=-1)
    return image
