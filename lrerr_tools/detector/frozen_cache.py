"""A detector run's cache of each face's frozen inputs: what a method computes from the face
alone (`Method.frozen`; LRErr: the attention maps between the face and its MAE
reconstruction), computed the first time a face is seen and read back in every later epoch,
after `--resume`, and by `score` of faces the run has seen.

    RUN/cache/<identity hash>/rank<r>/identity.json      what the values depend on, besides the face
    RUN/cache/<identity hash>/rank<r>/shapes.json        the shape of each value per face
    RUN/cache/<identity hash>/rank<r>/<shard>.npy        (shard rows, values) float16, memory-mapped
    RUN/cache/<identity hash>/rank<r>/<shard>.done       one byte per row: 1 once stored

A face is named by its shard's sha256 (from the shard index) and its row there. The sha256
is checked against the shard's bytes before any training or scoring (`ShardDataset`), so the
pair names one face's pixels without hashing 150 KB of them again, and the row indexes a
dense array with no lookup table. The directory is named by the method's `frozen_identity`
(LRErr: the MAE run's hash, the extractor's weights hash, the mask seed, the layers), so a
run with another MAE or seed never reads these values.

Each DDP rank writes only its own `rank<r>/` files (no two processes write one file) and
reads only them: a rank validates the same faces every epoch, so it needs no other's.
`score` opens every rank's files read-only and writes none: the test split it scores was
never seen by the run, each of its faces is predicted once, and writing values nobody reads
again would only cost disk; faces the run did see (scoring val) are read back.

The `.npy` values are written through the memory map as faces are computed; `commit` (at
each epoch's end) flushes them and only then rewrites the `.done` flags atomically, so a
kill leaves flags only for values already on disk, and a resumed run recomputes, to the same
values, the rows the killed epoch had stored but not committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lrerr_tools.atomic_io import TEMP_SUFFIX, atomic_write_bytes, atomic_write_json, remove_temp_files

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
VALUE_DTYPE = np.float16  # what `Method.frozen` values are rounded to, cached or not


def identity_dir(run_dir: Path, identity: dict) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Path(run_dir) / CACHE_DIR / digest[:16]


def rounded(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`values` as the cache holds them (float16), so a face's values are the same whether
    they were just computed or read back."""
    return [v.to(torch.float16) for v in values]


def take(batch: dict, indices: list[int]) -> dict:
    """The faces `indices` of a collated shard batch (tensors and lists alike)."""
    index = torch.tensor(indices, dtype=torch.long)
    return {k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in indices] for k, v in batch.items()}


class FrozenCache:
    """Per-face frozen values of the shards in `shard_rows` ({sha256: rows}), for one rank.

    `budget_bytes` bounds what this rank stores (None: every face); past it, values are
    computed and not stored. `writable=False` reads every rank's stored values and stores none.
    """

    def __init__(self, run_dir: Path, identity: dict, shard_rows: dict[str, int], *, rank: int = 0,
                 budget_bytes: float | None = None, writable: bool = True):
        self.root = identity_dir(run_dir, identity)
        self.own = self.root / f"rank{rank}"
        self.shard_rows, self.budget, self.writable = shard_rows, budget_bytes, writable
        self.readable = [self.own] if writable else sorted(self.root.glob("rank*"))
        self.shapes: list[tuple[int, ...]] | None = None
        for directory in self.readable:
            if (directory / "shapes.json").is_file():
                self.shapes = [tuple(s) for s in json.loads((directory / "shapes.json").read_text())]
        # sha256 → [(values, done)] per readable directory holding that shard; values are (rows, D)
        self._shards: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._stored = 0  # bytes this rank holds
        if writable:
            self.own.mkdir(parents=True, exist_ok=True)
            remove_temp_files(self.own)
            atomic_write_json(self.own / "identity.json", identity)
            for sha in shard_rows:
                self._open(sha)

    @property
    def width(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes)

    def _files(self, directory: Path, sha: str) -> tuple[Path, Path]:
        return directory / f"{sha[:16]}.npy", directory / f"{sha[:16]}.done"

    def _open(self, sha: str) -> list[tuple[np.ndarray, np.ndarray]]:
        if sha not in self._shards:
            opened = []
            for directory in self.readable:
                values, done = self._files(directory, sha)
                if values.is_file() and done.is_file():
                    flags = np.fromfile(done, dtype=np.uint8).astype(bool)
                    opened.append((np.load(values, mmap_mode="r+" if self.writable else "r"), flags))
                    if directory == self.own:
                        self._stored += int(flags.sum()) * opened[-1][0].shape[1] * 2
            self._shards[sha] = opened
        return self._shards[sha]

    def _lookup(self, sha: str, row: int) -> np.ndarray | None:
        for values, done in self._open(sha):
            if done[row]:
                return values[row]
        return None

    def _store(self, sha: str, row: int, value: np.ndarray) -> None:
        if not self.writable or sha not in self.shard_rows:
            return
        if self.budget is not None and self._stored + value.nbytes > self.budget:
            return
        opened = self._open(sha)
        if not opened:
            opened.append((self._create(sha, value.shape[0]), np.zeros(self.shard_rows[sha], bool)))
        values, done = opened[0]
        if not done[row]:
            values[row] = value
            done[row] = True
            self._stored += value.nbytes

    def _create(self, sha: str, width: int) -> np.ndarray:
        if not (self.own / "shapes.json").is_file():
            atomic_write_json(self.own / "shapes.json", [list(s) for s in self.shapes])
        path, _ = self._files(self.own, sha)
        # Created beside and renamed, so a kill never leaves a half-written header; the file
        # is sparse until rows are written.
        temp = path.with_name(f".{path.name}.new{TEMP_SUFFIX}")
        values = np.lib.format.open_memmap(temp, mode="w+", dtype=VALUE_DTYPE,
                                           shape=(self.shard_rows[sha], width))
        os.replace(temp, path)
        return values

    def fetch(self, batch: dict, compute: Callable[[dict], Sequence[torch.Tensor]]) -> list[torch.Tensor]:
        """The frozen values of a shard batch, (B, ...) float16 each: stored ones read back,
        the others `compute`d once per distinct face (and stored while the budget lasts)."""
        faces = list(zip(batch["shard_sha256"], batch["row"].tolist()))
        found = [None if self.shapes is None else self._lookup(*face) for face in faces]
        first = {}  # a face drawn twice into one batch is computed once
        for i, (face, value) in enumerate(zip(faces, found)):
            if value is None:
                first.setdefault(face, i)
        fresh = {}
        if first:
            whole = len(first) == len(faces)  # then the batch as it is, as an uncached run computes it
            computed = rounded(compute(batch if whole else take(batch, list(first.values()))))
            self.shapes = [tuple(v.shape[1:]) for v in computed]
            fresh = dict(zip(first, self._flatten(computed)))
            for face, value in fresh.items():
                self._store(*face, value)
            if whole:
                return computed
        flat = np.empty((len(faces), self.width), VALUE_DTYPE)
        for i, (face, value) in enumerate(zip(faces, found)):
            flat[i] = fresh[face] if value is None else value
        return self._unflatten(torch.from_numpy(flat))

    def _flatten(self, values: list[torch.Tensor]) -> np.ndarray:
        return torch.cat([v.detach().cpu().flatten(1) for v in values], dim=1).numpy()

    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        sizes = [int(np.prod(s)) for s in self.shapes]
        return [part.reshape(len(flat), *shape) for part, shape in zip(flat.split(sizes, dim=1), self.shapes)]

    def commit(self) -> None:
        """Flush the stored values, then record which rows hold them."""
        if not self.writable:
            return
        for sha, opened in self._shards.items():
            if opened and self._files(self.own, sha)[0].is_file():
                values, done = opened[0]
                values.flush()
                atomic_write_bytes(self._files(self.own, sha)[1], done.astype(np.uint8).tobytes())
