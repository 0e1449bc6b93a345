"""Stage `shard`: a landmarks directory -> HDF5 shards per split, the training input.

Output directory:
    manifest.json, records.jsonl     written once every shard is done; one record per shard
    shards/<split>-<k:05d>.h5        up to --shard-size faces each, grouped by split
    work/config.json                 the config every rerun must share
    work/shards/<split>-<k:05d>.json one shard's index entry; its presence means "done"

The faces with landmarks (status "ok") are sorted by (split, video_id, frame_index) and cut
into consecutive runs of --shard-size per split, so the assignment depends only on the input
and the config. A shard is written under a hidden temp name, fsynced and renamed into place
before its entry is written: a run killed at any moment leaves whole shards and at most some
temp files, which the next run deletes before it writes the shards still missing.

Each shard holds, per face i (N faces):
    images        (N,S,S,3) uint8 RGB for --codec raw; else (N,) variable-length uint8, the
                  PNG/JPEG file bytes (cv2.imdecode gives BGR)
    landmarks     (N,68,2) float32, crop pixels
    key_mask      (N,G*G) bool, the face's key patches (patch id = row * G + col)
    label         (N,) int8, 1 = fake, 0 = real
    frame_index   (N,) int32
    video_index, method_index, dataset_index
                  (N,) int32 into the string tables video_ids, methods, datasets
and the attributes schema_version, parent_sha256 (of the landmarks manifest), split, codec,
image_size, patch, grid, key_region_rect and dataset_key_patches (the dataset-wide set T).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import ClassVar

import cv2
import h5py
import numpy as np

from lrerr_tools.atomic_io import TEMP_SUFFIX, atomic_write_json, named_errors, remove_temp_files, sha256_file
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import Manifest, check_parent_unchanged, linked_dir, open_parent, write_stage
from lrerr_tools.parallel import run_parallel
from lrerr_tools.stage_dir import CONFIG_FILE, WORK_DIR, existing_manifest, prepare_output, same_output

log = logging.getLogger(__name__)

STAGE = "shard"
PARENT_STAGE = "landmarks"
SCHEMA_VERSION = 1
CODECS = ("png", "jpeg", "raw")
SHARDS_DIR = "shards"
N_LANDMARKS = 68
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (index dataset, string table it points into, record field)
INDEXED = (("video_index", "video_ids", "video_id"), ("method_index", "methods", "method"),
           ("dataset_index", "datasets", "dataset"))
# Only these record fields travel to the worker that packs a shard.
PACKED_FIELDS = ("video_id", "frame_index", "label", "method", "dataset", "crop")


@dataclass
class ShardConfig:
    landmarks: str
    out: str
    shard_size: int = 1024
    codec: str = "png"
    jpeg_quality: int = 95
    # How a run is carried out; changing these does not change its output. The landmarks
    # directory is identified by its content hash, not by where it lies.
    jobs: int = 1
    overwrite: bool = False
    RUN_OPTIONS: ClassVar[tuple[str, ...]] = ("landmarks", "out", "jobs", "overwrite")

    def identity(self, landmarks_sha256: str) -> dict:
        """The fields that decide the output, with the hash of the landmarks manifest: shards
        made from another version of the landmarks directory are not resumed."""
        ident = {k: v for k, v in asdict(self).items() if k not in self.RUN_OPTIONS}
        ident["landmarks_sha256"] = landmarks_sha256
        if self.codec != "jpeg":
            ident["jpeg_quality"] = None  # unused, so it must not make a rerun differ
        return ident

    def validate(self) -> None:
        if self.codec not in CODECS:
            raise LrerrError(f"--codec must be one of {', '.join(CODECS)} (got {self.codec!r})")
        if self.shard_size < 1:
            raise LrerrError(f"--shard-size must be at least 1 (got {self.shard_size})")
        if not 1 <= self.jpeg_quality <= 100:
            raise LrerrError(f"--jpeg-quality must be between 1 and 100 (got {self.jpeg_quality})")


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its name (`<split>-<k:05d>`), split and faces in order."""

    name: str
    split: str
    records: tuple[dict, ...]

    @property
    def file(self) -> str:
        return f"{SHARDS_DIR}/{self.name}.h5"


def run(cfg: ShardConfig) -> Manifest:
    """Pack the landmarks directory's faces into shards; resume a run that was cut short."""
    cfg.validate()
    parent = open_parent(cfg.landmarks, PARENT_STAGE)
    check_parent_unchanged(parent.path, parent.manifest)  # the crops live in the extract directory
    ctx = _context(parent, cfg)
    jobs, skipped = plan(parent.records(), cfg.shard_size, ctx["grid"])
    if not jobs:
        found = ", ".join(f"{n} {s}" for s, n in sorted(skipped.items())) or "no records"
        raise LrerrError(f"{cfg.landmarks}: no face has landmarks ({found}) — nothing to shard")

    out = Path(cfg.out)
    ident = cfg.identity(parent.sha256)
    _refuse_changed_landmarks(out, cfg.landmarks, ident, cfg.overwrite)
    prepare_output(out, STAGE, ident, cfg.overwrite, outputs=(SHARDS_DIR,))
    shards_dir = out / SHARDS_DIR
    shards_dir.mkdir(exist_ok=True)
    remove_temp_files(shards_dir)

    todo = [job for job in jobs if _done_entry(out, job) is None]
    if len(todo) < len(jobs):
        log.info("resuming: %d of %d shards already written", len(jobs) - len(todo), len(jobs))
    work = partial(write_shard, ctx=ctx)
    for _ in run_parallel(work, todo, jobs=cfg.jobs, desc="shard", unit="shard"):
        pass

    entries = []
    for job in jobs:
        entry = _done_entry(out, job)
        if entry is None:  # only if something deleted it while we ran
            raise LrerrError(f"{out / job.file}: vanished during the run — rerun to rewrite it")
        entries.append(entry)
    manifest = Manifest(
        stage=STAGE, config=ident, parent=parent.as_parent(out),
        counts=_counts(entries, skipped), complete=True,
        extra={"shards": entries, "schema_version": SCHEMA_VERSION, "image_size": ctx["size"],
               "key_region": ctx["key_region"]},
    )
    previous = existing_manifest(out)
    if previous is not None and same_output(previous, manifest, entries):
        return previous  # unchanged: keep its hash, so later stages stay valid
    return write_stage(out, manifest, entries)


def plan(records: Iterable[dict], shard_size: int, grid: int = 14) -> tuple[list[ShardJob], Counter]:
    """Cut the faces with landmarks (status ok) into shards: sorted by (split, video_id,
    frame_index), then consecutive runs of `shard_size` per split; an empty split gets no
    shard. Also returns how many records were left out, by status.

    Records are slimmed as they stream in (landmarks to float32 arrays), so a big
    landmarks directory doesn't have to fit in memory as JSON objects."""
    faces, skipped = [], Counter()
    for r in records:
        if r.get("status") != "ok":
            skipped[r.get("status", "unknown")] += 1
            continue
        face = {k: r.get(k) for k in (*PACKED_FIELDS, "split")}
        lacking = [k for k, v in face.items() if v is None]
        if lacking:
            raise LrerrError(f"{r.get('video_id')} frame {r.get('frame_index')}: an ok landmarks record "
                             f"without {', '.join(lacking)}")
        face["crop_sha256"] = r.get("crop_sha256")  # absent in extracts that predate it
        face["landmarks"] = _landmarks(r)
        face["key_patches"] = _key_patches(r, grid)
        faces.append(face)
    faces.sort(key=lambda r: (r["split"], r["video_id"], r["frame_index"], r["crop"]))
    jobs = []
    for split, group in groupby(faces, key=lambda r: r["split"]):
        group = list(group)
        for k, start in enumerate(range(0, len(group), shard_size)):
            jobs.append(ShardJob(f"{split}-{k:05d}", split, tuple(group[start:start + shard_size])))
    return jobs, skipped


def write_shard(job: ShardJob, ctx: dict) -> dict:
    """Write one shard to a temp file, rename it into place, then record it as done."""
    out = Path(ctx["out"])
    final = out / job.file
    tmp = final.with_name(f".{final.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with named_errors(final):
            entry = _write_h5(tmp, job, ctx)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        entry["bytes"] = tmp.stat().st_size
        entry["sha256"] = sha256_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_json(_work_path(out, job.name), entry)
    return entry


def _write_h5(path: Path, job: ShardJob, ctx: dict) -> dict:
    n, size, grid = len(job.records), ctx["size"], ctx["grid"]
    extract_dir = Path(ctx["extract_dir"])
    tables = {table: sorted({r[key] for r in job.records}) for _, table, key in INDEXED}
    landmarks = np.empty((n, N_LANDMARKS, 2), np.float32)
    key_mask = np.zeros((n, grid * grid), bool)
    for i, r in enumerate(job.records):
        landmarks[i] = r["landmarks"]
        key_mask[i, r["key_patches"]] = True
    labels = np.array([r["label"] for r in job.records], np.int8)
    with h5py.File(path, "w") as f:
        if ctx["codec"] == "raw":
            images = f.create_dataset("images", (n, size, size, 3), np.uint8,
                                      chunks=(1, size, size, 3))
        else:
            images = f.create_dataset("images", (n,), h5py.vlen_dtype(np.uint8))
        for i, r in enumerate(job.records):
            images[i] = _load_crop(extract_dir / r["crop"], r.get("crop_sha256"), ctx)
        f.create_dataset("landmarks", data=landmarks)
        f.create_dataset("key_mask", data=key_mask)
        f.create_dataset("label", data=labels)
        f.create_dataset("frame_index", data=np.array([r["frame_index"] for r in job.records], np.int32))
        for name, table, key in INDEXED:
            lookup = {v: i for i, v in enumerate(tables[table])}
            f.create_dataset(name, data=np.array([lookup[r[key]] for r in job.records], np.int32))
            f.create_dataset(table, data=np.array(tables[table], dtype=h5py.string_dtype()))
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["parent_sha256"] = ctx["parent_sha256"]
        f.attrs["split"] = job.split
        f.attrs["codec"] = ctx["codec"]
        if ctx["codec"] == "jpeg":
            f.attrs["jpeg_quality"] = ctx["jpeg_quality"]
        f.attrs["image_size"] = size
        f.attrs["patch"] = ctx["key_region"]["patch"]
        f.attrs["grid"] = grid
        f.attrs["key_region_rect"] = np.asarray(ctx["key_region"]["rect"], np.float64)
        f.attrs["dataset_key_patches"] = np.asarray(ctx["key_region"]["patches"], np.int32)
    return {
        "file": job.file, "split": job.split, "count": n,
        "n_real": int((labels == 0).sum()), "n_fake": int((labels == 1).sum()),
        "n_videos": len(tables["video_ids"]),
        "methods": dict(sorted(Counter(r["method"] for r in job.records).items())),
        "datasets": dict(sorted(Counter(r["dataset"] for r in job.records).items())),
    }


def _load_crop(path: Path, sha256: str | None, ctx: dict) -> np.ndarray:
    """One crop as the codec stores it: RGB pixels for raw, else encoded bytes. A PNG crop is
    kept byte for byte under --codec png (decoded only to check it). A crop whose bytes are not
    those extract recorded (`sha256`; None in extracts that predate it) is refused: a valid
    face swapped in, a fake packed as real, would otherwise go unnoticed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LrerrError(f"{path}: crop missing — the extract directory changed after the landmarks "
                         f"stage; `lrerr-tools verify {ctx['extract_dir']}` lists what else is") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise LrerrError(f"{path}: not the crop extract wrote (sha256 differs from its record) — "
                         f"`lrerr-tools verify --deep {ctx['extract_dir']}` lists every changed crop")
    buf = np.frombuffer(data, np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    size = ctx["size"]
    if bgr is None:
        raise LrerrError(f"{path}: not a readable image")
    if bgr.shape != (size, size, 3):
        raise LrerrError(f"{path}: is {bgr.shape[1]}x{bgr.shape[0]}, expected {size}x{size}")
    codec = ctx["codec"]
    if codec == "raw":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if codec == "png" and data.startswith(PNG_SIGNATURE):
        return buf
    return encode_face(bgr, codec, ctx["jpeg_quality"])


def encode_face(bgr: np.ndarray, codec: str, jpeg_quality: int) -> np.ndarray:
    """A BGR face as a shard of `codec` png or jpeg stores it (`predict` decodes it back, so
    that a detector trained on JPEG shards sees its faces through the same compression)."""
    ext, params = (".png", []) if codec == "png" else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    ok, encoded = cv2.imencode(ext, bgr, params)
    if not ok:
        raise OSError(f"could not encode a {bgr.shape} face as {codec}")
    return encoded.reshape(-1)


def _landmarks(record: dict) -> np.ndarray:
    try:
        points = np.asarray(record.get("landmarks"), np.float32)
    except (TypeError, ValueError):
        points = np.zeros(0, np.float32)
    if points.shape != (N_LANDMARKS, 2):
        raise LrerrError(f"{record['video_id']} frame {record['frame_index']}: landmarks have shape "
                         f"{points.shape}, expected ({N_LANDMARKS}, 2)")
    return points


def _key_patches(record: dict, grid: int) -> np.ndarray:
    ids = np.asarray(record.get("key_patches") or [], np.int64)
    if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= grid * grid)):
        raise LrerrError(f"{record['video_id']} frame {record['frame_index']}: key patch ids must "
                         f"lie in 0..{grid * grid - 1}")
    return ids


def _context(parent, cfg: ShardConfig) -> dict:
    """What every shard worker needs, as plain picklable values."""
    manifest = parent.manifest
    key_region = (manifest.extra or {}).get("key_region")
    if not key_region or "patches" not in key_region:
        raise LrerrError(f"{cfg.landmarks}: its manifest has no extra.key_region — rerun `lrerr-tools "
                         "landmarks` with this version")
    if manifest.parent is None:
        raise LrerrError(f"{cfg.landmarks}: its manifest names no extract directory (parent)")
    grid = int(key_region.get("grid", 14))
    patch = int(key_region.get("patch", 16))
    return {"out": str(Path(cfg.out)), "extract_dir": str(linked_dir(parent.path, manifest.parent)),
            "codec": cfg.codec, "jpeg_quality": cfg.jpeg_quality, "size": grid * patch, "grid": grid,
            "parent_sha256": parent.sha256,
            "key_region": {**key_region, "grid": grid, "patch": patch}}


def _refuse_changed_landmarks(out: Path, landmarks: str, ident: dict, overwrite: bool) -> None:
    """Say plainly when the only reason a rerun is refused is a rebuilt landmarks directory."""
    path = out / WORK_DIR / CONFIG_FILE
    if overwrite or not path.is_file():
        return
    stored = json.loads(path.read_text())
    if stored.get("landmarks_sha256") not in (None, ident["landmarks_sha256"]):
        raise LrerrError(f"--out {out}: its shards were made from an earlier version of "
                         f"{landmarks} (it changed since) — pass --overwrite to rebuild them")


def _work_path(out: Path, name: str) -> Path:
    return out / WORK_DIR / SHARDS_DIR / f"{name}.json"


def _done_entry(out: Path, job: ShardJob) -> dict | None:
    """The entry of a finished shard, or None if it has to be (re)written."""
    path = _work_path(out, job.name)
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    shard = out / job.file
    if not shard.is_file() or shard.stat().st_size != entry.get("bytes"):
        return None
    return entry


def count_records(records: list[dict], manifest: Manifest) -> dict[str, int]:
    """The counts that follow from the shard index (the skipped ones follow from the parent's)."""
    return _shard_counts(records)


def _counts(entries: list[dict], skipped: Counter) -> dict[str, int]:
    counts = {**_shard_counts(entries), "skipped": sum(skipped.values())}
    for status, n in sorted(skipped.items()):
        counts[f"skipped_{status}"] = n
    return counts


def _shard_counts(entries: list[dict]) -> dict[str, int]:
    counts = {"faces": sum(e["count"] for e in entries), "shards": len(entries)}
    splits = ["train", "val", "test"] + sorted({e["split"] for e in entries} - {"train", "val", "test"})
    for split in splits:
        counts[f"faces_{split}"] = sum(e["count"] for e in entries if e["split"] == split)
    for split in splits:
        counts[f"shards_{split}"] = sum(e["split"] == split for e in entries)
    return counts
