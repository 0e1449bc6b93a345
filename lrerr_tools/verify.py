"""`verify`: check that a stage directory is whole and unchanged since it was written.

Works on any stage's directory: the manifest against its schema, records.jsonl against the
hash in the manifest and each record against `manifests/<stage>-record.schema.json` (when
there is one), the complete flag and the parent's hash. Then, by stage:

- extract, landmarks: every `ok` record's crop exists; a sample of them (all with `deep`)
  has the sha256 its record holds and decodes to an image of the crop size.
- shard: every shard's sha256 and size against the index, and that it opens as HDF5 with
  the datasets, shapes, counts and attributes the index and manifest promise; the first and
  last image of each shard decode (all with `deep`).

`verify` returns the problems, one line each; an empty list means all is well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import cv2
import h5py
import jsonschema
import numpy as np

from lrerr_tools.atomic_io import sha256_file
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import (
    MANIFEST_FILE,
    RECORDS_FILE,
    Manifest,
    check_parent_unchanged,
    linked_dir,
    miscounted,
    read_manifest,
    schema,
)

CROP_SAMPLE = 32  # crops decoded without --deep
MAX_PER_CHECK = 20  # problems listed per kind before "... and N more"
CROP_STAGES = ("extract", "landmarks")


class Problems:
    """Collects problem lines, listing at most MAX_PER_CHECK of each kind."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._hidden: dict[str, int] = {}
        self._shown: dict[str, int] = {}

    def add(self, line: str, kind: str | None = None) -> None:
        kind = kind or line
        if self._shown.get(kind, 0) >= MAX_PER_CHECK:
            self._hidden[kind] = self._hidden.get(kind, 0) + 1
            return
        self._shown[kind] = self._shown.get(kind, 0) + 1
        self.lines.append(line)

    def result(self) -> list[str]:
        more = [f"... and {n} more like the above ({kind})" for kind, n in self._hidden.items()]
        return self.lines + more


def verify(stage_dir: str | Path, deep: bool = False) -> list[str]:
    """Every problem found in `stage_dir`, one line each; [] when it is whole and unchanged."""
    stage_dir = Path(stage_dir)
    problems = Problems()
    if not stage_dir.is_dir():
        return [f"{stage_dir}: not a directory"]
    try:
        manifest = read_manifest(stage_dir)
    except LrerrError as e:
        return [str(e)]
    if not manifest.complete:
        problems.add(f"{stage_dir}: the '{manifest.stage}' stage has not completed (complete: false)")
    records = _check_records(stage_dir, manifest, problems)
    if records is not None:
        for line in _miscounted(manifest, records):
            problems.add(f"{stage_dir / MANIFEST_FILE}: {line}", kind="count")
    try:
        check_parent_unchanged(stage_dir, manifest)
    except LrerrError as e:
        problems.add(str(e))
    if records is not None:
        if manifest.stage in CROP_STAGES:
            _check_crops(stage_dir, manifest, records, deep, problems)
        elif manifest.stage == "shard":
            _check_shards(stage_dir, manifest, records, deep, problems)
    return problems.result()


def summary(stage_dir: str | Path) -> str:
    """The line printed for a directory that passed."""
    manifest = read_manifest(stage_dir)
    counts = ", ".join(f"{k} {v}" for k, v in list(manifest.counts.items())[:4])
    return f"ok: {stage_dir} ({manifest.stage}; {counts})"


def record_schema(stage: str) -> dict | None:
    """`manifests/<stage>-record.schema.json`, or None for a stage without one."""
    name = f"{stage}-record"
    if not (files("lrerr_tools") / "schemas" / f"{name}.schema.json").is_file():
        return None
    return schema(name)


def _check_records(stage_dir: Path, manifest: Manifest, problems: Problems) -> list[dict] | None:
    path = stage_dir / RECORDS_FILE
    if not path.is_file():
        problems.add(f"{path}: missing")
        return None
    if sha256_file(path) != manifest.records_sha256:
        problems.add(f"{path}: changed since {MANIFEST_FILE} was written (sha256 differs)")
    record_schema_ = record_schema(manifest.stage)
    validator = None
    if record_schema_ is not None:
        validator = jsonschema.validators.validator_for(record_schema_)(record_schema_)
    records = []
    for lineno, record in _parse_lines(path, problems):
        if validator is not None:
            for error in validator.iter_errors(record):
                where = "/".join(map(str, error.absolute_path)) or "top level"
                problems.add(f"{path}:{lineno}: invalid {manifest.stage} record at {where}: "
                             f"{error.message}", kind="invalid record")
        records.append(record)
    return records


def _miscounted(manifest: Manifest, records: list[dict]) -> list[str]:
    try:
        return miscounted(manifest, records)
    except (KeyError, TypeError, ValueError) as e:  # records or extra too damaged to count
        return [f"counts cannot be checked against the records ({type(e).__name__}: {e})"]


def _parse_lines(path: Path, problems: Problems) -> Iterator[tuple[int, dict]]:
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                problems.add(f"{path}:{lineno}: not a JSON record", kind="bad JSON")
                continue
            if not isinstance(record, dict):
                problems.add(f"{path}:{lineno}: not a JSON object", kind="bad JSON")
                continue
            yield lineno, record


def _check_crops(stage_dir: Path, manifest: Manifest, records: list[dict], deep: bool,
                 problems: Problems) -> None:
    """Crop paths are relative to the extract directory: this one, or a landmarks dir's parent."""
    if manifest.stage == "extract":
        base, extract_config = stage_dir, manifest.config
    else:
        if manifest.parent is None:
            problems.add(f"{stage_dir}: names no extract directory (parent), so its crops can't be found")
            return
        base = linked_dir(stage_dir, manifest.parent)
        try:
            extract_config = read_manifest(base).config
        except LrerrError:
            extract_config = {}  # already reported by the parent check
    size = extract_config.get("crop_size")
    ok = [r for r in records if r.get("status") == "ok"]
    present = []
    for r in ok:
        if not isinstance(r.get("crop"), str):
            problems.add(f"{stage_dir}: record {_where(r)} is ok but names no crop", kind="no crop")
        elif not (base / r["crop"]).is_file():
            problems.add(f"{base / r['crop']}: missing (record {_where(r)})", kind="missing crop")
        else:
            present.append(r)
    if not deep and len(present) > CROP_SAMPLE:
        rng = np.random.default_rng(0)
        present = [present[i] for i in sorted(rng.choice(len(present), CROP_SAMPLE, replace=False))]
    for r in present:
        path = base / r["crop"]
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            problems.add(f"{path}: not a readable image", kind="unreadable crop")
        elif size is not None and image.shape[:2] != (size, size):
            problems.add(f"{path}: is {image.shape[1]}x{image.shape[0]}, expected {size}x{size}",
                         kind="crop size")
        elif r.get("crop_sha256") not in (None, hashlib.sha256(data).hexdigest()):
            problems.add(f"{path}: a valid image, but not the crop extract wrote (sha256 differs from "
                         f"record {_where(r)})", kind="changed crop")


def _where(record: dict) -> str:
    return f"{record.get('video_id')} frame {record.get('frame_index')}"


def _check_shards(stage_dir: Path, manifest: Manifest, records: list[dict], deep: bool,
                  problems: Problems) -> None:
    entries = (manifest.extra or {}).get("shards")
    if entries != records:
        problems.add(f"{stage_dir}: the manifest's extra.shards and {RECORDS_FILE} disagree")
    if sum(e.get("count", 0) for e in records) != manifest.counts.get("faces"):
        problems.add(f"{stage_dir}: counts.faces is {manifest.counts.get('faces')}, but the shards "
                     f"hold {sum(e.get('count', 0) for e in records)}")
    listed = set()
    for entry in records:
        if isinstance(entry.get("file"), str):
            listed.add(entry["file"])
            _check_shard(stage_dir, manifest, entry, deep, problems)
    shards_dir = stage_dir / "shards"
    if shards_dir.is_dir():
        for path in sorted(shards_dir.iterdir()):
            name = f"shards/{path.name}"
            if name in listed:
                continue
            if path.name.endswith(".tmp"):
                problems.add(f"{path}: temp file left by a run that was cut short (rerun `shard` to "
                             "remove it)", kind="temp file")
            else:
                problems.add(f"{path}: not in the shard index", kind="unlisted file")


def _check_shard(stage_dir: Path, manifest: Manifest, entry: dict, deep: bool,
                 problems: Problems) -> None:
    path = stage_dir / entry["file"]
    if not path.is_file():
        problems.add(f"{path}: missing", kind="missing shard")
        return
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        problems.add(f"{path}: content changed since it was written (sha256 differs from the index)",
                     kind="shard hash")
    try:
        with h5py.File(path, "r") as f:
            for line in _shard_content_problems(f, manifest, entry, deep):
                problems.add(f"{path}: {line}", kind="shard content")
    except Exception as e:  # h5py raises OSError, KeyError, ValueError... on damaged files
        problems.add(f"{path}: not readable as a shard ({type(e).__name__}: {e})", kind="shard content")


def _shard_content_problems(f, manifest: Manifest, entry: dict, deep: bool) -> Iterator[str]:
    key_region = (manifest.extra or {}).get("key_region") or {}
    grid = int(key_region.get("grid", 14))
    size = int((manifest.extra or {}).get("image_size", 224))
    codec = manifest.config.get("codec")
    tables = ("video_ids", "methods", "datasets")
    missing = [name for name in ("label", "images", "landmarks", "key_mask", "frame_index",
                                 "video_index", "method_index", "dataset_index", *tables) if name not in f]
    if missing:
        yield f"lacks the datasets {', '.join(missing)}"
        return
    n = len(f["label"])
    if n != entry.get("count"):
        yield f"holds {n} faces, the index says {entry.get('count')}"
    expected = {"images": (n, size, size, 3) if codec == "raw" else (n,), "landmarks": (n, 68, 2),
                "key_mask": (n, grid * grid), "frame_index": (n,),
                "video_index": (n,), "method_index": (n,), "dataset_index": (n,)}
    for name, shape in expected.items():
        if f[name].shape != shape:
            yield f"{name} has shape {f[name].shape}, expected {shape}"
            return
    attrs = {"split": entry.get("split"), "codec": codec,
             "parent_sha256": (manifest.parent or {}).get("sha256")}
    for name, want in attrs.items():
        got = f.attrs.get(name)
        got = got.decode() if isinstance(got, bytes) else got
        if got != want:
            yield f"attribute {name} is {got!r}, expected {want!r}"
    label = f["label"][:]
    if (int((label == 0).sum()), int((label == 1).sum())) != (entry.get("n_real"), entry.get("n_fake")):
        yield (f"holds {int((label == 0).sum())} real and {int((label == 1).sum())} fake faces, the "
               f"index says {entry.get('n_real')} and {entry.get('n_fake')}")
    for index, table in (("video_index", "video_ids"), ("method_index", "methods"),
                         ("dataset_index", "datasets")):
        values = f[index][:]
        if values.size and (values.min() < 0 or values.max() >= len(f[table])):
            yield f"{index} points outside its table {table}"
    rows = range(n) if deep else sorted({0, n - 1}) if n else []
    images = f["images"]
    for row in rows:
        image = images[row]
        if codec != "raw":
            image = cv2.imdecode(np.asarray(image, np.uint8), cv2.IMREAD_COLOR)
        if image is None or image.shape != (size, size, 3):
            yield f"image {row} does not decode to {size}x{size} RGB"
