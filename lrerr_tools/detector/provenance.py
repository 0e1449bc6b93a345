"""What data a split of a shard directory is, in the terms of metrics.json's `run` block
(dataset, compression, fake methods), so `lrerr-tools report` can place a score in the
paper's tables. `train-det` records its train split's at training time; `score` adds the
scored split's."""

from __future__ import annotations

from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import StageDir, iter_records, linked_dir
from lrerr_tools.shard_dataset import ShardDataset


def describe_split(shards: StageDir, split: str, fake_methods: list[str] | None = None) -> dict:
    """{"dataset", "compression", "methods"} of `split`: methods are those with fake faces
    there (reals count under their source, e.g. youtube, and are left out), or only those of
    `fake_methods` when the split is narrowed to them."""
    entries = [e for e in shards.manifest.extra["shards"] if e["split"] == split]
    datasets = sorted({d for e in entries for d in e["datasets"]})
    if len(datasets) != 1:
        raise LrerrError(f"{shards.path}: the {split} split holds faces of {len(datasets)} datasets "
                         f"({', '.join(datasets) or 'none'}); a score is of one dataset")
    # A shard's method counts don't say which faces are fake; the per-face labels do.
    candidates = sorted({m for e in entries if e["n_fake"] for m in e["methods"]
                         if fake_methods is None or m in fake_methods})
    methods = [m for m in candidates if len(ShardDataset(shards.path, split, labels=[1], methods=[m]))]
    return {"dataset": datasets[0], "compression": _compression(shards), "methods": methods}


def _compression(shards: StageDir) -> str | None:
    """The quality level (c23, ...; None for single-quality datasets) the faces were
    extracted at: shards don't store it, their landmarks records (copies of the extract
    records) do."""
    landmarks = linked_dir(shards.path, shards.manifest.parent)
    try:
        first = next(iter_records(landmarks), None)
    except OSError:
        first = None
    if first is None or "compression" not in first:
        raise LrerrError(f"{shards.path}: cannot tell the compression its faces were extracted at — its "
                         f"landmarks directory {landmarks} (whose records say) is gone or empty")
    return first["compression"]
