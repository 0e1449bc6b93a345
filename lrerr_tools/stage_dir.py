"""The resumable-output machinery that per-video stages share (`extract`, `landmarks`).

A run holds its output directory with `exclusive_run` (one lock per `--part`) and claims it
with `prepare_output`, which stores the config that
decides the output in `work/config.json` and refuses a different one unless --overwrite.
Each video's result is written atomically to `work/videos/<video_id>.json`; its presence
means "done", so a rerun skips it. At the end the stage writes records.jsonl + manifest.json,
unless `same_output` says the existing ones already hold the same result (then they are
kept, with their hash, so the stages built on them stay valid).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lrerr_tools.atomic_io import TEMP_NAME_EXTRA, atomic_write_json, create_json_once, jsonl_bytes
from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import MANIFEST_FILE, RECORDS_FILE, Manifest, read_manifest

WORK_DIR = "work"
CONFIG_FILE = "config.json"


NAME_MAX = 255  # bytes in one file name, on Linux and macOS filesystems alike


def work_name(name: str, suffix: str) -> str:
    """`name + suffix` as a file name that still fits NAME_MAX with an atomic write's temp
    name around it: a long name keeps a readable start and gains a hash of the whole, so
    different long names stay different. The records keep the real id."""
    limit = NAME_MAX - TEMP_NAME_EXTRA - len(suffix.encode())
    if len(name.encode()) <= limit:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    start = name.encode()[:limit - len(digest) - 1].decode(errors="ignore")
    return f"{start}~{digest}{suffix}"


def result_path(out_dir: Path, video_id: str) -> Path:
    folder, _, name = video_id.rpartition("/")
    return Path(out_dir) / WORK_DIR / "videos" / folder / work_name(name, ".json")


LOCK_PREFIX = ".lock-"


def _holds_more_than_locks(out: Path) -> bool:
    return any(not p.name.startswith(LOCK_PREFIX) for p in out.iterdir())


@contextmanager
def exclusive_run(out: Path, stage: str, part: str = "1/1") -> Iterator[None]:
    """Hold `out` for this run of `stage` (one `--part` of it) until the block ends.

    A second run on the same `out` and part is refused in one line naming the holder, so two
    runs never interleave their results or wipe each other's (--overwrite); the parts of one
    job lock apart and go on together. The lock is fcntl's: the kernel drops it when the
    process ends, however it ends, so a kill leaves no stale lock. Where nothing can write
    (read-only storage) there is nothing to guard, and no lock is taken.
    """
    out = Path(out)
    path = out / f"{LOCK_PREFIX}{part.replace('/', 'of')}"
    ours = (out / WORK_DIR / CONFIG_FILE).is_file()
    if out.exists() and not (out.is_dir() and (ours or not _holds_more_than_locks(out))):
        yield  # a file, or someone else's folder: prepare_output refuses it, and we leave no trace
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES):
            raise
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LrerrError(f"--out {out}: another {stage} run is working in it ({holder}) — wait for "
                             "it to finish or stop it; the parts of one job take different --part values"
                             ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)


def prepare_output(out: Path, stage: str, identity: dict, overwrite: bool,
                   outputs: Iterable[str] = (), relabel: dict[str, str] | None = None) -> None:
    """Claim `out` for the config `identity`, refusing a different one unless `overwrite`.

    With `overwrite`, an earlier output of this stage is cleared first: work/, manifest.json,
    records.jsonl and the stage's own `outputs` (files or folders, relative to `out`). When
    the config differs only in `relabel` keys (what labels the records but decides none of
    the work; each mapped to the words that name it), `overwrite` keeps the work and just
    records the new config.
    """
    out = Path(out)
    config_path = out / WORK_DIR / CONFIG_FILE
    ours = config_path.is_file()
    if out.exists() and not out.is_dir():
        raise LrerrError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and _holds_more_than_locks(out) and not ours:
        article = "an" if stage[:1] in "aeiou" else "a"
        raise LrerrError(f"--out {out}: not empty and not {article} {stage} output — choose another")
    wanted = json.loads(json.dumps(identity))
    relabel = relabel or {}
    changed = _changed(json.loads(config_path.read_text()), wanted) if ours else []
    if ours and overwrite and changed and set(changed) <= set(relabel):
        atomic_write_json(config_path, wanted)
        return
    if ours and overwrite:
        for name in (WORK_DIR, MANIFEST_FILE, RECORDS_FILE, *outputs):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    changed = _changed(create_json_once(config_path, wanted), wanted)
    if changed and set(changed) <= set(relabel):
        what = " and ".join(dict.fromkeys(relabel[k] for k in changed))
        raise LrerrError(f"--out {out}: {what} changed since it was made — pass --overwrite to relabel "
                         "its records (nothing is computed again), or choose another --out")
    if changed:
        raise LrerrError(
            f"--out {out}: was made with another config (differs in {', '.join(changed)}) "
            "— pass --overwrite to start again, or choose another --out"
        )


def _changed(stored: dict, wanted: dict) -> list[str]:
    # An option added since `out` was made matches its config while the option is unset (None).
    return sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))


def existing_manifest(out_dir: Path) -> Manifest | None:
    if not (Path(out_dir) / MANIFEST_FILE).is_file():
        return None
    return read_manifest(out_dir)


def same_output(previous: Manifest, new: Manifest, records: list[dict]) -> bool:
    """True when `previous` already describes `new` with these records (timestamps aside)."""
    return (previous.complete and previous.config == new.config and previous.parent == new.parent
            and previous.counts == new.counts and previous.extra == new.extra
            and previous.records_sha256 == hashlib.sha256(jsonl_bytes(records)).hexdigest())
