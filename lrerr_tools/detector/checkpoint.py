"""Load a finished `train-det` run for `score`, and the check that ties a detector to the
exact MAE run it was trained with.

    detector, reconstructor, run = load_detector("work/det", device)   # reconstructor: None for xception
"""

from __future__ import annotations

from pathlib import Path

import torch

from lrerr_tools.attention import make_backbone
from lrerr_tools.detector.model import Detector
from lrerr_tools.detector.reconstruction import Reconstructor
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.checkpoint import load_mae
from lrerr_tools.manifest import StageDir, linked_dir, open_parent
from lrerr_tools.run_dir import best_checkpoint
from lrerr_tools.training import load_checkpoint

STAGE = "train-det"


def check_same_mae(run_dir: str | Path, recorded: dict, sha256: str, trained: str) -> None:
    """Refuse, in one line, the detector run in `run_dir` (`trained` names it) whose MAE run has
    changed since it was trained: its attention maps came from the MAE as it was, by manifest hash."""
    if recorded["sha256"] != sha256:
        raise LrerrError(f"{trained} was trained with the MAE run {linked_dir(run_dir, recorded)}, which has "
                         "changed since (its manifest hash differs) — retrain the detector on the new MAE "
                         "(train-det --overwrite), or restore that MAE run")


def load_reconstructor(mae_dir: str | Path, seed: int, device: torch.device) -> Reconstructor:
    model, info = load_mae(mae_dir, device)
    return Reconstructor(model, info, seed)


def load_detector(run_dir: str | Path,
                  device: torch.device) -> tuple[Detector, Reconstructor | None, StageDir]:
    """The best weights of a complete train-det run in eval mode, its MAE (lrerr), and the run."""
    run = open_parent(run_dir, STAGE)  # refuses a missing, unfinished or altered run
    cfg, extra = run.manifest.config, run.manifest.extra
    reconstructor = None
    if cfg["method"] == "lrerr":
        mae_dir = linked_dir(run.path, extra["mae"])
        if not mae_dir.is_dir():
            raise LrerrError(f"the detector in {run.path} reconstructs faces with the MAE run "
                             f"{mae_dir}, which is gone — put it back there")
        reconstructor = load_reconstructor(mae_dir, cfg["seed"], device)
        check_same_mae(run.path, extra["mae"], reconstructor.info.sha256, f"the detector in {run.path}")
    path = best_checkpoint(run.path)
    checkpoint = load_checkpoint(path)
    # The weights, the frozen extractor's included, come from the checkpoint.
    detector = Detector(make_backbone(cfg["backbone"], pretrained=False), cfg["attn_layers"], cfg["method"])
    detector.load_state_dict(checkpoint["model"])
    return detector.to(device).eval().requires_grad_(False), reconstructor, run
