"""Load a finished `train-det` run for `score`, and the checks that tie a detector to the
exact parent runs (LRErr's MAE, ...) it was trained with.

    loaded = load_detector("work/det", device)
    loaded.method, loaded.net, loaded.context, loaded.run
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrerr_tools.errors import LrerrError
from lrerr_tools.manifest import StageDir, linked_dir, open_parent
from lrerr_tools.methods import get_method
from lrerr_tools.methods.base import Method, Parent
from lrerr_tools.run_dir import best_checkpoint
from lrerr_tools.training import load_checkpoint

STAGE = "train-det"


def open_parents(method: Method, paths: dict) -> dict[str, StageDir]:
    """The parent runs `method` declares (all given: `DetTrainConfig.check`), each opened as a
    finished run of its stage."""
    return {p.name: open_parent(paths[p.name], p.stage) for p in method.parents}


def check_same_parent(run_dir: str | Path, parent: Parent, recorded: dict, sha256: str, trained: str) -> None:
    """Refuse, in one line, the detector run in `run_dir` (`trained` names it) whose parent run
    has changed since it was trained (by manifest content hash)."""
    if recorded["sha256"] != sha256:
        where = linked_dir(run_dir, recorded)
        raise LrerrError(f"{trained} was trained with the {parent.stage} run {where}, "
                         "which has changed since (its manifest hash differs) — retrain the detector on "
                         "the new one (train-det --overwrite), or restore that run")


@dataclass
class LoadedDetector:
    method: Method
    net: nn.Module
    context: Any
    run: StageDir
    parents: dict[str, StageDir]


def load_detector(run_dir: str | Path, device: torch.device) -> LoadedDetector:
    """The best weights of a complete train-det run in eval mode, with its method's context
    (None, and no parent run opened, for a method that `scores_alone`)."""
    run = open_parent(run_dir, STAGE)  # refuses a missing, unfinished or altered run
    cfg, extra = run.manifest.config, run.manifest.extra
    if "options" not in cfg:
        raise LrerrError(f"{run.path}: a detector run made before the method registry, whose config "
                         "names no method options — retrain it with train-det --overwrite")
    method = get_method(cfg["method"]).resolve_recorded(cfg["options"])
    parents = {}
    for parent in () if method.scores_alone else method.parents:
        recorded = extra["parents"][parent.name]
        path = linked_dir(run.path, recorded)
        if not path.is_dir():
            raise LrerrError(f"the detector in {run.path} was trained with the {parent.stage} run {path}, "
                             "which is gone — put it back there")
        parents[parent.name] = open_parent(path, parent.stage)
        check_same_parent(run.path, parent, recorded, parents[parent.name].sha256,
                          f"the detector in {run.path}")
    context = None if method.scores_alone else method.context(parents, cfg["seed"], device)
    checkpoint = load_checkpoint(best_checkpoint(run.path))
    net = method.network()  # every weight, a frozen extractor's included, comes from the checkpoint
    net.load_state_dict(checkpoint["model"])
    return LoadedDetector(method, net.to(device).eval().requires_grad_(False), context, run, parents)
