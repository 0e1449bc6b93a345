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
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from lrerr_tools.atomic_io import remove_temp_files
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import MANIFEST_FILE, RECORDS_FILE, Manifest, open_parent, read_manifest
from lrerr_tools.training import load_checkpoint, setup_distributed, teardown_distributed

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
                stage_outputs: tuple[str, ...] = (), defaults: dict | None = None,
                complete: Callable[[dict], dict] | None = None) -> RunState:
    """Decide how a run with `identity` (the config fields that change the result) on
    `parent` may use `out`, or refuse in one line. A directory holding only run outputs but
    no checkpoint (a run stopped in its first epoch) starts afresh. A field missing from an
    older checkpoint's config was added since, and a new field's default always does what
    runs did before it (`defaults`), so the old run matches while that default is chosen;
    `complete` fills in what else the stored config lacks (a method's options added since)."""
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
    stored = {**{k: v for k, v in (defaults or {}).items() if k in identity}, **checkpoint["config"]}
    stored = complete(stored) if complete else stored
    changed = sorted(k for k in identity if stored.get(k) != identity[k])
    stored_parent = checkpoint["parent"] or {}
    what = None
    if changed:
        what = f"another config (differs in {', '.join(_differences(stored, identity, changed))})"
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


def _differences(stored: dict, identity: dict, changed: list[str]) -> list[str]:
    """The changed fields, a dict field (the method's options) by its changed keys, with the
    run's value and this one's: what a user must pass to resume it."""
    named = []
    for key in changed:
        old, new = stored.get(key), identity[key]
        if isinstance(old, dict) and isinstance(new, dict):
            named += [f"{key}.{k}: {old.get(k)!r} in the run, {new.get(k)!r} now"
                      for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        else:
            named.append(key)
    return named


def run_training(cfg, stage: str, make_trainer: Callable, stage_outputs: tuple[str, ...] = (),
                 check_found: Callable | None = None) -> Manifest:
    """The run lifecycle the trainers share: claim or clear `cfg.out`, return a finished run
    unchanged, else build (fresh or from last.pt) and fit. `check_found(trainer, extra)` vets
    the `extra` of a finished manifest or a checkpoint before it is reused. A config with a
    `complete_recorded(stored)` method completes a checkpoint's config with it (`inspect_run`).

    A trainer has `build(state)`, `fit()` and `write_manifest()`. Each epoch's outputs are
    written in one order: log row, grid, best.pt, then last.pt, which commits the epoch, then
    records and manifest, derived from it. A run killed at any moment resumes from last.pt:
    it redoes what came before (alike, and the log is rewritten from last.pt's history) and
    finishes what came after."""
    cfg.check()
    shards = open_parent(cfg.shard_dir, "shard")
    dist, device = setup_distributed(cfg.device)
    if not dist.is_main:
        logging.getLogger("lrerr_tools").setLevel(logging.WARNING)  # one voice per job: rank 0's
    try:
        out = Path(cfg.out)
        if cfg.overwrite and dist.is_main:
            clear_run(out, stage_outputs, stage)
        dist.barrier()
        trainer = make_trainer(cfg, shards, dist, device)
        defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
        state = inspect_run(out, stage, cfg.identity(), shards.as_parent(out), cfg.resume, stage_outputs,
                            defaults, getattr(cfg, "complete_recorded", None))
        found = state.finished.extra if state.finished is not None else (
            state.checkpoint["extra"] if state.checkpoint is not None else None)
        if check_found is not None and found is not None:
            check_found(trainer, found)
        if state.finished is not None:
            logging.getLogger(__name__).info("%s already holds this run, complete — nothing to do", out)
            return state.finished
        if dist.is_main:
            for directory in (out, out / CHECKPOINTS, *(out / name for name in stage_outputs)):
                remove_temp_files(directory)
        trainer.build(state)
        if state.checkpoint is not None and dist.is_main:
            # last.pt commits an epoch, and the manifest is written from it after: finish that
            # in case a kill fell between the two (after the last epoch, nothing else would).
            trainer.write_manifest()
        trainer.fit()
        return read_manifest(out)
    finally:
        teardown_distributed(dist)
