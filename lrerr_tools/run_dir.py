"""A training run's output directory: start it, resume it, or find it already finished.

    RUN_DIR/manifest.json, records.jsonl   the stage header; one record per epoch
    RUN_DIR/log.csv                        the same per-epoch metrics, for people and plots
    RUN_DIR/checkpoints/last.pt            resumable state after the last completed epoch
    RUN_DIR/checkpoints/best.pt            weights of the best epoch (what later stages load)

`last.pt` is the source of truth for which config and parent a run belongs to. `inspect_run`
only reads, so every DDP rank can call it and reach the same answer; `clear_run` (rank 0,
--overwrite) is the only thing here that deletes.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import MANIFEST_FILE, RECORDS_FILE, Manifest, read_manifest
from lrerr_tools.training import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
LOG_FILE = "log.csv"
RUN_OUTPUTS = (MANIFEST_FILE, RECORDS_FILE, LOG_FILE, CHECKPOINTS)


@dataclass(frozen=True)
class RunState:
    """What to do with RUN_DIR: `finished` holds a complete run's manifest (nothing to do);
    else `checkpoint` is the state to resume from, or None to start afresh."""

    finished: Manifest | None = None
    checkpoint: dict | None = None


def last_checkpoint(out: Path) -> Path:
    return Path(out) / CHECKPOINTS / LAST


def best_checkpoint(out: Path) -> Path:
    return Path(out) / CHECKPOINTS / BEST


def clear_run(out: Path, stage_outputs: tuple[str, ...] = (), stage: str | None = None) -> None:
    """Delete an earlier run's outputs (--overwrite): the common ones and the stage's own.

    Refuses a directory whose manifest is not a training run's (no checkpoint beside it, or
    another `stage`), so that a mistyped --out never wipes e.g. a shard directory's manifest.
    """
    out = Path(out)
    manifest = read_manifest(out) if (out / MANIFEST_FILE).is_file() else None
    if manifest is not None and (not last_checkpoint(out).is_file() or stage not in (None, manifest.stage)):
        raise LrerrError(f"--out {out}: holds a '{manifest.stage}' stage, not a {stage or 'training'} run "
                         "— --overwrite only replaces a run of the same stage; choose another --out")
    for name in (*RUN_OUTPUTS, *stage_outputs):
        path = Path(out) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def inspect_run(out: Path, stage: str, identity: dict, parent: dict, resume: bool,
                stage_outputs: tuple[str, ...] = ()) -> RunState:
    """Decide how a run with `identity` (the config fields that change the result) on
    `parent` may use `out`, or refuse in one line. A directory holding only run outputs but
    no checkpoint (a run stopped in its first epoch) starts afresh."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LrerrError(f"--out {out}: exists and is not a directory")
    manifest = read_manifest(out) if (out / MANIFEST_FILE).is_file() else None
    if manifest is not None and manifest.stage != stage:
        raise LrerrError(f"--out {out}: holds a '{manifest.stage}' stage, not a {stage} run — choose another")
    last = last_checkpoint(out)
    if not last.is_file():
        ours = (*RUN_OUTPUTS, *stage_outputs)
        # dot files are temp files of our atomic writes, left by a kill
        foreign = [p for p in out.iterdir() if p.name not in ours and not p.name.startswith(".")
                   ] if out.is_dir() else []
        if foreign:
            raise LrerrError(f"--out {out}: not empty and holds no {stage} checkpoint — choose another")
        if resume:
            log.info("--resume: %s holds no checkpoint yet, starting from the beginning", out)
        return RunState()
    checkpoint = load_checkpoint(last)
    changed = sorted(k for k in identity if checkpoint["config"].get(k) != identity[k])
    stored_parent = checkpoint["parent"] or {}
    what = None
    if changed:
        what = f"another config (differs in {', '.join(changed)})"
    elif stored_parent.get("sha256") != parent["sha256"]:
        what = f"other input ({stored_parent.get('path')}, another content hash)"
    if what is not None:
        if resume:
            raise LrerrError(f"cannot --resume: {last} was trained with {what} — rerun with its settings, "
                             "or pass --overwrite to start again")
        raise LrerrError(f"--out {out}: holds a {stage} run made with {what} — pass --overwrite to start "
                         "again, or choose another --out")
    if manifest is not None and manifest.complete:
        return RunState(finished=manifest)
    if not resume:
        raise LrerrError(f"--out {out}: holds an unfinished run ({checkpoint['epoch']} epochs done) — pass "
                         "--resume to continue it, or --overwrite to start again")
    return RunState(checkpoint=checkpoint)
