"""Stage output directories: `manifest.json` (the header) and `records.jsonl` (one line a record).

Every stage writes one, and every stage but the first reads its parent's through
`open_parent`, which refuses a parent that is missing, incomplete, of the wrong stage or
changed since it was written. The JSON Schemas in `manifests/` define both files.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from importlib.resources import files
from pathlib import Path

import jsonschema

from lrerr_tools import __version__
from lrerr_tools.atomic_io import atomic_write_json, atomic_write_jsonl, sha256_file
from lrerr_tools.errors import LrerrError

MANIFEST_FILE = "manifest.json"
RECORDS_FILE = "records.jsonl"
# The stage modules whose counts follow from their records: each has
# `count_records(records, manifest) -> dict`. Imported when needed, as they import this one.
COUNTED_STAGES = {"extract": "lrerr_tools.extract", "landmarks": "lrerr_tools.landmarks",
                  "shard": "lrerr_tools.shard", "score": "lrerr_tools.score"}


@dataclass
class Manifest:
    stage: str
    config: dict
    parent: dict | None
    counts: dict[str, int]
    complete: bool
    records_sha256: str = ""
    version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StageDir:
    """A stage directory that passed `open_parent`: its manifest and the hash a child records."""

    path: Path
    manifest: Manifest
    sha256: str

    def as_parent(self, child: str | Path) -> dict:
        """What the stage writing `child` records of this input."""
        return link(self.path, child, self.sha256)

    def records(self) -> Iterator[dict]:
        return iter_records(self.path)


def link(target: str | Path, child: str | Path, sha256: str) -> dict:
    """How a stage directory `child` records an input directory: by its content hash, and by
    its path relative to `child`, so that a work directory moved or copied whole still holds."""
    return {"path": os.path.relpath(Path(target).resolve(), Path(child).resolve()), "sha256": sha256}


def linked_dir(stage_dir: str | Path, recorded: dict) -> Path:
    """The input directory that the stage in `stage_dir` recorded with `link`."""
    return (Path(stage_dir) / recorded["path"]).resolve()


@cache
def schema(name: str) -> dict:
    return json.loads((files("lrerr_tools") / "schemas" / f"{name}.schema.json").read_text())


def write_stage(out_dir: str | Path, manifest: Manifest, records: Iterable[dict]) -> Manifest:
    """Write records, then the manifest that names their hash: a reader never pairs a new
    manifest with old records, because the manifest is renamed into place last."""
    out_dir = Path(out_dir)
    manifest.records_sha256 = atomic_write_jsonl(out_dir / RECORDS_FILE, records)
    # Unsorted: the counts keep the order the stage gave them, which reads as a summary
    # (videos, then frames, then failures) when a finished stage prints them again.
    atomic_write_json(out_dir / MANIFEST_FILE, asdict(manifest), sort_keys=False)
    return manifest


def read_manifest(stage_dir: str | Path) -> Manifest:
    path = Path(stage_dir) / MANIFEST_FILE
    if not path.is_file():
        raise LrerrError(f"{stage_dir}: no {MANIFEST_FILE} — is this a stage output directory?")
    return Manifest(**read_checked_json(path, "manifest"))


def read_checked_json(path: Path, schema_name: str, checked: dict | None = None) -> dict:
    """`path` parsed and checked against schemas/<schema_name> (or the `checked` schema made
    from it); a hand-edited or truncated file is one LrerrError naming the file and the first
    field that is wrong."""
    try:
        data = json.loads(path.read_text())
        jsonschema.validate(data, checked or schema(schema_name))
    except json.JSONDecodeError as e:
        raise LrerrError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "top level"
        raise LrerrError(f"{path}: invalid {schema_name} at {where}: {e.message}") from None
    return data


def content_sha256(manifest: Manifest) -> str:
    """The hash a child records of its parent: the whole manifest (config, parent, counts,
    the records' hash) except when it was written, so a stage rebuilt to the same records,
    say after its directory was deleted, leaves the stages built on it valid."""
    content = {k: v for k, v in asdict(manifest).items() if k != "created"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def iter_records(stage_dir: str | Path) -> Iterator[dict]:
    path = Path(stage_dir) / RECORDS_FILE
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                raise LrerrError(f"{path}:{lineno}: not a JSON record") from None


def open_parent(stage_dir: str | Path, stage: str) -> StageDir:
    """Load `stage_dir` as the input of a later stage, or say in one line why it can't be."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        raise LrerrError(f"{stage_dir}: not found — run `lrerr-tools {stage}` first")
    manifest = read_manifest(stage_dir)
    if manifest.stage != stage:
        raise LrerrError(
            f"{stage_dir}: is a '{manifest.stage}' directory, expected the output of '{stage}'"
        )
    if not manifest.complete:
        raise LrerrError(
            f"{stage_dir}: the '{stage}' stage has not completed — rerun it to finish "
            "(it resumes), or merge its parts"
        )
    records = stage_dir / RECORDS_FILE
    if not records.is_file() or sha256_file(records) != manifest.records_sha256:
        raise LrerrError(f"{records}: changed or missing since its manifest was written")
    wrong = miscounted(manifest, list(iter_records(stage_dir)))
    if wrong:
        raise LrerrError(f"{stage_dir / MANIFEST_FILE}: {wrong[0]} — the manifest was edited by hand (or "
                         f"counted by an older lrerr-tools); rerun `lrerr-tools {stage}` with --overwrite")
    return StageDir(stage_dir, manifest, content_sha256(manifest))


def miscounted(manifest: Manifest, records: list[dict]) -> list[str]:
    """The manifest's counts that its records contradict, one line each: the records are held
    to their hash, but nothing else would catch a count edited by hand. A count the manifest
    lacks is one added since it was written, not a contradiction."""
    if manifest.stage not in COUNTED_STAGES:
        return []
    derived = importlib.import_module(COUNTED_STAGES[manifest.stage]).count_records(records, manifest)
    return [f"counts.{key} is {manifest.counts[key]}, but the records hold {value}"
            for key, value in derived.items() if key in manifest.counts and manifest.counts[key] != value]


def check_parent_unchanged(stage_dir: str | Path, manifest: Manifest) -> None:
    """Refuse to build on the stage in `stage_dir` if its parent was rewritten after it was made."""
    if manifest.parent is None:
        return
    parent = linked_dir(stage_dir, manifest.parent)
    if not (parent / MANIFEST_FILE).is_file():
        raise LrerrError(f"{manifest.stage} input {parent} is gone")
    if content_sha256(read_manifest(parent)) != manifest.parent["sha256"]:
        raise LrerrError(
            f"{parent}: changed after the '{manifest.stage}' stage was built on it "
            "(content hash differs) — rerun that stage"
        )
