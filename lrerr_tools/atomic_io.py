"""Write files so that a reader never sees half of one, and hash them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

HASH_CHUNK = 1 << 20
TEMP_SUFFIX = ".tmp"

log = logging.getLogger(__name__)


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any worker
    # thread exists, so no other thread can create a file under the wrong mask meanwhile.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; outputs get the mode open() would give them (usually 0644),
# so a lab group can read a dataset one member prepared.
FILE_MODE = 0o666 & ~_read_umask()


# What a temp file's name adds to its target's: ".{name}." + mkstemp's 8 characters + TEMP_SUFFIX.
TEMP_NAME_EXTRA = 2 + 8 + 4


def written_file(path: str | Path) -> Path:
    """The file a write was for: `path` itself, or the target of one of our temp files."""
    path = Path(path)
    name = path.name
    if name.startswith(".") and name.endswith(TEMP_SUFFIX) and len(name) > TEMP_NAME_EXTRA:
        return path.with_name(name[1:-(TEMP_NAME_EXTRA - 1)])
    return path


@contextlib.contextmanager
def named_errors(path: str | Path) -> Iterator[None]:
    """Give an OSError that names no file (a full disk fails in write(), not open()) the name
    of the file being written, so the user is told which."""
    try:
        yield
    except OSError as e:
        if e.errno is None or e.filename is not None:
            raise
        # os.strerror: h5py's own text spans several lines of HDF5 internals
        raise OSError(e.errno, os.strerror(e.errno), str(path)) from e


def _temp_beside(path: Path) -> tuple[int, str]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.fchmod(fd, FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`.

    A kill at any moment leaves either the old file or the new one, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with named_errors(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temp_files(directory: str | Path) -> None:
    """Delete the temp files in `directory` of writes a kill cut short (SIGKILL leaves them;
    every other exit removes its own). Only for a directory no other run is writing."""
    for stale in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        log.info("removing %s, left by a run that was cut short", stale.name)
        stale.unlink(missing_ok=True)


def atomic_write_json(path: str | Path, obj: object, sort_keys: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())


def jsonl_bytes(records: Iterable[dict]) -> bytes:
    """JSON Lines with sorted keys, so equal records always give equal bytes and hashes."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def atomic_write_jsonl(path: str | Path, records: Iterable[dict]) -> str:
    """Write one JSON object per line atomically; return the sha256 of the bytes written."""
    payload = jsonl_bytes(records)
    atomic_write_bytes(path, payload)
    return hashlib.sha256(payload).hexdigest()


def create_json_once(path: str | Path, obj: object) -> dict:
    """Create `path` holding `obj` unless it exists; return what the file holds afterwards.

    os.link fails when the target exists, so concurrent `--part` runs racing to create the
    same file agree on one winner without a lock.
    """
    path = Path(path)
    if path.is_file():  # nothing to write: so a finished stage on read-only storage still reads
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return json.loads(path.read_text())


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
