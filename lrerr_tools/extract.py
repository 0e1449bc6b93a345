"""Stage `extract`: videos -> sampled frames -> RetinaFace -> aligned face crops.

Output directory:
    manifest.json, records.jsonl     written once every video of the dataset is done
    crops/<video_id>/<frame>.png     the aligned crops
    work/config.json                 the config every run and part must share
    work/videos/<video_id>.json      one video's records; its presence means "done"

A video's crops are written under a `.partial` name and renamed into place before its
result file is written, so a run killed at any moment redoes at most the videos in flight
and resumes to the same output as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from itertools import islice
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from lrerr_tools.alignment import align_face
from lrerr_tools.atomic_io import atomic_write_json, named_errors
from lrerr_tools.datasets import ADAPTERS, DatasetListing, VideoRecord, list_videos
from lrerr_tools.datasets.base import SPLITS, UNASSIGNED
from lrerr_tools.detection import DETECTORS, Face, check_detector, make_detector
from lrerr_tools.errors import LrerrError
from lrerr_tools.face_choice import POLICIES, choose_face, jumps
from lrerr_tools.manifest import Manifest, write_stage
from lrerr_tools.parallel import resolve_jobs, run_parallel, threads_per_job
from lrerr_tools.sampling import sample_indices, sample_times
from lrerr_tools.stage_dir import (
    WORK_DIR,
    exclusive_run,
    existing_manifest,
    prepare_output,
    result_path,
    same_output,
    work_name,
)
from lrerr_tools.video import BACKENDS, VideoOpenError, VideoReader

log = logging.getLogger(__name__)

STAGE = "extract"
IMAGE_FORMATS = ("png", "jpg")
# Measured: on CPU, onnxruntime gains little from batching and loses cache locality past 2
# frames (benchmarks/bench_extract.py); on a GPU bigger batches pay.
CPU_BATCH = 2
CROPS_DIR = "crops"
PATCH_SIZE, MIN_CROP = 16, 32  # landmarks' default --patch (the MAE's), and two patches a side
# What labels a video's records but decides none of its crops: a changed list relabels them.
RELABEL = {"splits": "the split lists' location", "splits_sha256": "the split lists"}


@dataclass
class ExtractConfig:
    root: str
    dataset: str
    out: str
    compression: str = "c23"
    methods: list[str] | None = None
    splits: str | None = None
    keep_splits: list[str] | None = None
    frames: int | None = 32
    every: int | None = None
    every_seconds: float | None = None
    # Tracking by default: in two-person videos `largest` can flip between the people, and an
    # unmanipulated face would then be labelled fake (DFD's users report such label noise).
    face: str = "track"
    detector: str = "retinaface-mnet"
    detector_weights: str | None = None
    threshold: float = 0.8
    det_max_side: int = 640
    crop_size: int = 224
    margin: float = 0.2
    image_format: str = "png"
    jpeg_quality: int = 95
    backend: str = "auto"
    # How a run is carried out; changing these does not change its output.
    jobs: int = 1
    part: str = "1/1"
    batch_size: int = 0
    device: str = "cpu"
    overwrite: bool = False
    RUN_OPTIONS: ClassVar[tuple[str, ...]] = (
        "out", "jobs", "part", "batch_size", "device", "overwrite")

    def identity(self) -> dict:
        """The fields that decide the output: a rerun or part must match them exactly."""
        ident = {k: v for k, v in asdict(self).items() if k not in self.RUN_OPTIONS}
        ident["root"] = str(Path(self.root).resolve())
        if self.splits:
            ident["splits"] = str(Path(self.splits).resolve())
        return ident

    def validate(self) -> None:
        if self.dataset not in ADAPTERS:
            raise LrerrError(f"unknown dataset {self.dataset!r}: choose one of {', '.join(ADAPTERS)}")
        if self.every is not None and self.every_seconds is not None:
            raise LrerrError("give --every or --every-seconds, not both")
        if self.every is not None or self.every_seconds is not None:
            self.frames = None
        if self.every is not None and self.every < 1:
            raise LrerrError(f"--every must be at least 1 (got {self.every})")
        if self.every_seconds is not None and not 0 < self.every_seconds < math.inf:
            raise LrerrError(f"--every-seconds must be a number of seconds above 0 "
                             f"(got {self.every_seconds})")
        if self.frames is not None and self.frames < 1:
            raise LrerrError(f"--frames must be at least 1 (got {self.frames})")
        for name, value, choices in (("--face", self.face, POLICIES),
                                     ("--detector", self.detector, DETECTORS),
                                     ("--format", self.image_format, IMAGE_FORMATS),
                                     ("--backend", self.backend, BACKENDS)):
            if value not in choices:
                raise LrerrError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
        if not 0.0 <= self.margin <= 2.0:
            raise LrerrError(f"--margin must be between 0 and 2 (got {self.margin})")
        if not 0 < self.threshold < 1:
            raise LrerrError(f"--threshold must be between 0 and 1, exclusive (got {self.threshold})")
        if not 1 <= self.jpeg_quality <= 100:
            raise LrerrError(f"--jpeg-quality must be from 1 to 100 (got {self.jpeg_quality})")
        if self.det_max_side < 1:
            raise LrerrError(f"--det-max-side must be at least 1 pixel (got {self.det_max_side})")
        if self.batch_size < 0:
            raise LrerrError(f"--batch-size must be 0 (the device's default) or more "
                             f"(got {self.batch_size})")
        # Later stages cut faces into 16 px patches (the MAE's grid and the key region's).
        if self.crop_size < MIN_CROP or self.crop_size % PATCH_SIZE:
            raise LrerrError(f"--crop-size must be a multiple of {PATCH_SIZE} px, at least {MIN_CROP} "
                             f"(got {self.crop_size}); the detectors here use 224")
        resolve_jobs(self.jobs)
        parse_part(self.part)
        check_detector(self.detector, self.detector_weights, self.device)
        unknown = sorted(set(self.keep_splits or ()) - {*SPLITS, UNASSIGNED})
        if unknown:
            raise LrerrError(f"--keep-splits: unknown split {', '.join(unknown)} "
                             f"(choose from {', '.join((*SPLITS, UNASSIGNED))})")


def parse_part(part: str) -> tuple[int, int]:
    try:
        index, total = (int(x) for x in part.split("/"))
    except ValueError:
        raise LrerrError(f"--part must look like i/N, e.g. 2/8 (got {part!r})") from None
    if not 1 <= index <= total:
        raise LrerrError(f"--part {part}: need 1 <= i <= N")
    return index, total


def part_videos(videos: list[VideoRecord], part: str) -> list[VideoRecord]:
    """The videos that part `part` (i/N) extracts."""
    return [v for v in videos if in_part(v.video_id, part)]


def in_part(video_id: str, part: str) -> bool:
    """Assign a video to a part by a hash of its id, so the split into parts stays the same
    even when another machine lists the videos in another order or sees more of them."""
    index, total = parse_part(part)
    return zlib.crc32(video_id.encode()) % total == index - 1


def run(cfg: ExtractConfig) -> Manifest | None:
    """Extract the crops of this part's videos; return the manifest once the dataset is done,
    or None while other parts are still missing."""
    cfg.validate()
    listing = _list(cfg.identity())
    for name in listing.missing:
        log.warning("named in the split lists but not on disk: %s", name)
    _warn_counts(listing)
    out = Path(cfg.out)
    with exclusive_run(out, STAGE, cfg.part):
        prepare_output(out, STAGE, {**cfg.identity(), "splits_sha256": listing.splits_sha256()},
                       cfg.overwrite, outputs=(CROPS_DIR,), relabel=RELABEL)
        mine = part_videos(listing.videos, cfg.part)
        todo = [v for v in mine if not result_path(out, v.video_id).is_file()]
        if len(todo) < len(mine):
            log.info("resuming: %d of %d videos already extracted", len(mine) - len(todo), len(mine))
        work = partial(extract_video, cfg=cfg, out_dir=out)
        for _ in run_parallel(work, todo, jobs=cfg.jobs, desc="extract", unit="video"):
            pass
        return finalize(out)


def survey(cfg: ExtractConfig) -> dict[str, int]:
    """What `run` would take on, by split and label: the settings and the dataset (layout,
    split lists, leaks) are checked as `run` checks them, and nothing is written."""
    cfg.validate()
    listing = _list(cfg.identity())
    _warn_counts(listing)
    mine = part_videos(listing.videos, cfg.part)
    groups = Counter(f"{v.split}_{'fake' if v.label else 'real'}" for v in mine)
    return {"videos": len(mine), **dict(sorted(groups.items())), "videos_missing": len(listing.missing)}


def finalize(out_dir: str | Path) -> Manifest | None:
    """Join the per-video results into records.jsonl and manifest.json, or return None if
    some videos (other parts) are not done yet. The result does not depend on how the
    videos were split into parts."""
    out_dir = Path(out_dir)
    ident = _read_config(out_dir)
    listing = _list(ident)
    if listing.splits_sha256() != ident.get("splits_sha256"):
        raise LrerrError(f"{out_dir}: the split lists changed since this extract began — rerun `extract` "
                         "with --overwrite to relabel its records (no crop is extracted again)")
    records, pending = [], []
    for video in listing.videos:
        path = result_path(out_dir, video.video_id)
        if path.is_file():
            records += _relabelled(json.loads(path.read_text())["records"], video, ident["root"])
        else:
            pending.append(video.video_id)
    if pending:
        log.info("%d of %d videos are not extracted yet (other parts?)", len(pending),
                 len(listing.videos))
        return None
    videos = _per_video(records)
    manifest = Manifest(
        stage=STAGE, config=ident, parent=None, counts=_counts(records, listing.missing, ident["frames"]),
        complete=True, extra={
            "missing_videos": listing.missing,
            "short_videos": [v for v, n in videos.items() if _short(n, ident["frames"])],
            "failed_videos": [v for v, n in videos.items() if n["crops"] == 0],
            "face_jumps": dict(Counter(r["video_id"] for r in records if r.get("face_jump"))),
        })
    previous = existing_manifest(out_dir)
    if previous is not None and same_output(previous, manifest, records):
        return previous  # unchanged: keep its hash, so later stages stay valid
    return write_stage(out_dir, manifest, records)


def _relabelled(records: list[dict], video: VideoRecord, root: str) -> list[dict]:
    """A video's records with its split and label as the lists say now, whatever they said
    when its crops were made."""
    return [{**r, **_video_fields(video, root)} for r in records]


def _video_fields(video: VideoRecord, root: str) -> dict:
    return {**video.to_dict(), "path": _relative(video.path, root)}


def count_records(records: list[dict], manifest: Manifest) -> dict[str, int]:
    """The counts that follow from the records, to hold a manifest's counts against."""
    return _counts(records, manifest.extra["missing_videos"], manifest.config["frames"])


def counts_by_split(records: list[dict], frames: int | None) -> dict[tuple[str, str], dict[str, int]]:
    """The counts of each (dataset, split)'s records, in that order, for `report`'s frame
    accounting; `videos_missing` is 0 there, as a video not on disk has no record."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["split"]), []).append(r)
    return {key: _counts(group, [], frames) for key, group in sorted(groups.items())}


def _per_video(records: list[dict]) -> dict[str, dict[str, int]]:
    """Frames sampled and crops made, per video: every sampled frame has a record, and a video
    that would not open has one record and no frame."""
    videos: dict[str, dict[str, int]] = {}
    for r in records:
        n = videos.setdefault(r["video_id"], {"requested": 0, "crops": 0})
        n["requested"] += r["status"] != "unreadable"
        n["crops"] += r["status"] == "ok"
    return videos


def _short(video: dict, frames: int | None) -> bool:
    """Some crops, but fewer than asked for: fewer than sampled, or a video shorter than
    `--frames` (which samples all of its frames)."""
    return 0 < video["crops"] < max(video["requested"], frames or 0)


def _counts(records: list[dict], missing: list[str], frames: int | None) -> dict[str, int]:
    videos = _per_video(records).values()
    statuses = Counter(r["status"] for r in records)
    return {
        "videos": len(videos),
        "videos_with_crops": sum(v["crops"] > 0 for v in videos),
        "videos_failed": sum(v["crops"] == 0 for v in videos),
        "videos_short": sum(_short(v, frames) for v in videos),
        "videos_missing": len(missing),
        "frames_tried": sum(v["requested"] for v in videos),
        "crops": statuses["ok"],
        "no_face": statuses["no_face"],
        "decode_error": statuses["decode_error"],
        "unreadable": statuses["unreadable"],
        "face_jumps": sum(bool(r.get("face_jump")) for r in records),
    }


def extract_video(video: VideoRecord, cfg: ExtractConfig, out_dir: Path) -> str:
    """Do one video end to end and mark it done; return its id."""
    base = _video_fields(video, cfg.root)
    try:
        reader = VideoReader(video.path, cfg.backend, threads=threads_per_job(cfg.jobs))
        indices = sample_frames(reader, cfg)
    except VideoOpenError as e:
        result = _video_result(video, 0, 0.0, None, 0, [{**base, "status": "unreadable",
                                                         "error": str(e)}])
        atomic_write_json(result_path(out_dir, video.video_id), result)
        return video.video_id
    final_dir = out_dir / CROPS_DIR / video.video_id
    partial_dir = final_dir.with_name(work_name(final_dir.name, ".partial"))
    shutil.rmtree(partial_dir, ignore_errors=True)
    partial_dir.mkdir(parents=True)
    batch_size = detection_batch(cfg)
    detector = cached_detector(cfg, threads_per_job(cfg.jobs))
    records, previous = [], None
    frames = reader.read(indices)
    while chunk := list(islice(frames, batch_size)):
        decoded = [f for f in chunk if f.image is not None]
        faces_per_frame = dict(zip((f.index for f in decoded), detect_frames(detector, decoded)))
        for frame in chunk:
            where = {**base, "frame_index": frame.index,
                     "timestamp": None if frame.timestamp is None else round(frame.timestamp, 4)}
            if frame.image is None:
                records.append({**where, "status": "decode_error", "error": frame.error})
                continue
            faces = faces_per_frame[frame.index]
            face = choose_face(faces, frame.image.shape, cfg.face, previous)
            if face is None:
                records.append({**where, "status": "no_face", "n_faces": 0})
                continue
            crop, matrix = align_face(frame.image, face.kps, cfg.crop_size, cfg.margin)
            name = f"{frame.index:06d}.{cfg.image_format}"
            digest = _write_image(partial_dir / name, crop, cfg)
            records.append({
                **where, "status": "ok", "crop": f"{CROPS_DIR}/{video.video_id}/{name}",
                "crop_sha256": digest, "score": round(face.score, 5), "box": _rounded(face.box),
                "kps": _rounded(face.kps), "matrix": _rounded(matrix, 6),
                "n_faces": len(faces), "face_choice": cfg.face, "face_jump": jumps(face, previous),
            })
            previous = face
    shutil.rmtree(final_dir, ignore_errors=True)
    partial_dir.rename(final_dir)
    result = _video_result(video, reader.n_frames, reader.fps, reader.backend, len(indices), records)
    atomic_write_json(result_path(out_dir, video.video_id), result)
    return video.video_id


def sample_frames(reader: VideoReader, cfg: ExtractConfig) -> list[int]:
    """The frame indices `cfg` samples from the video (`predict` samples as extract did)."""
    if cfg.every_seconds is not None:
        return sample_times(reader.frame_times(), cfg.every_seconds)
    return sample_indices(reader.n_frames, frames=cfg.frames, every=cfg.every)


def detection_batch(cfg: ExtractConfig) -> int:
    """Frames per detector call. `predict` batches as extract did: onnxruntime's sums can
    differ in the last bit between batch sizes, which would move a keypoint, hence a crop's
    pixels, hence LRErr's mask, whose seed is a hash of them."""
    return cfg.batch_size or (32 if cfg.device.startswith("cuda") else CPU_BATCH)


def detect_frames(detector, frames) -> list[list[Face]]:
    """Detect in batches of equal frame shape (a stream can change resolution mid-way)."""
    by_shape: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        by_shape.setdefault(f.image.shape, []).append(i)
    found: list[list[Face]] = [[] for _ in frames]
    for positions in by_shape.values():
        for pos, faces in zip(positions, detector.detect([frames[p].image for p in positions])):
            found[pos] = faces
    return found


def _video_result(video, n_frames, fps, backend, requested, records) -> dict:
    return {"video_id": video.video_id, "n_frames": n_frames, "fps": fps, "backend": backend,
            "requested": requested, "crops": sum(r["status"] == "ok" for r in records),
            "records": records}


def cached_detector(cfg: ExtractConfig, threads: int):
    """The face detector `cfg` names, built once per process."""
    return _detector(cfg.detector, cfg.detector_weights, cfg.threshold, cfg.det_max_side, threads, cfg.device)


@lru_cache(maxsize=2)
def _detector(name, weights, threshold, max_side, threads, device):
    # Cached per process: a joblib worker builds its detector once, not once per video.
    return make_detector(name, weights=weights, threshold=threshold, max_side=max_side,
                         threads=threads, device=device)


def _write_image(path: Path, rgb: np.ndarray, cfg: ExtractConfig) -> str:
    """Encode with OpenCV, write with Python, and return the file's sha256 (its record keeps
    it, so a crop swapped for another face later is caught). cv2.imwrite only returns False on
    a full disk or a read-only folder, where a plain write raises the OSError that says which
    and names the file (the crop folder is renamed into place only once whole)."""
    data = encode_crop(rgb, cfg)
    with named_errors(path):
        path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def encode_crop(rgb: np.ndarray, cfg: ExtractConfig) -> bytes:
    """A crop's file as extract writes it (`predict` decodes it back, so that a JPEG-trained
    detector sees its faces through the same compression)."""
    params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality] if cfg.image_format == "jpg" else []
    ok, encoded = cv2.imencode(f".{cfg.image_format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {rgb.shape} crop as {cfg.image_format}")
    return encoded.tobytes()


def _rounded(a: np.ndarray, digits: int = 2) -> list:
    return np.round(np.asarray(a, dtype=np.float64), digits).tolist()


def _relative(path: str, root: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _list(ident: dict):
    """The videos of the config's dataset, narrowed to --keep-splits after the split-leak check
    has seen all of them."""
    listing = list_videos(ident["dataset"], ident["root"], compression=ident["compression"],
                          methods=ident["methods"], splits=ident["splits"])
    keep = ident.get("keep_splits")  # absent from configs made before the option existed
    if keep is None:
        return listing
    videos = [v for v in listing.videos if v.split in keep]
    if not videos:
        found = Counter(v.split for v in listing.videos)
        raise LrerrError(f"--keep-splits {','.join(keep)}: no such videos under {ident['root']} (it has "
                         + ", ".join(f"{n} {split}" for split, n in sorted(found.items())) + ")")
    return replace(listing, videos=videos)


def _warn_counts(listing: DatasetListing) -> None:
    # A warning, not an error: extracting a subset is often meant (--methods, a test list).
    for line in listing.count_warnings:
        log.warning("%s", line)


def _read_config(out_dir: Path) -> dict:
    path = out_dir / WORK_DIR / "config.json"
    manifest = existing_manifest(out_dir) if out_dir.is_dir() else None
    if manifest is not None and manifest.stage != STAGE:
        raise LrerrError(f"{out_dir}: is a '{manifest.stage}' directory, not an extract output directory — "
                         "merge joins the parts of `extract --part i/N`")
    if not path.is_file():
        raise LrerrError(f"{out_dir}: not an extract output directory (no {path.relative_to(out_dir)})")
    ident = json.loads(path.read_text())
    if not {"dataset", "root", "frames"} <= set(ident):
        raise LrerrError(f"{out_dir}: is another stage's work directory, not an extract output directory — "
                         "merge joins the parts of `extract --part i/N`")
    return ident
