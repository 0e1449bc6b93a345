"""Stage `score`: a trained detector's fake probability for every face of one split of a
shard directory, and the paper's metrics on it.

    OUT/manifest.json, records.jsonl   the stage header; one record per frame
    OUT/metrics.json                   compute_metrics' output + the `run` block `report` reads
                                       (schema: manifests/metrics.schema.json)
    OUT/frames.csv                     video_id, method, label, frame_index, prob
    OUT/videos.csv                     per video: the mean prob of its frames
    OUT/roc.png                        frame- and video-level ROC curves
    OUT/reliability.png                frame- and video-level reliability diagrams, before and
                                       after the detector's val temperature
    OUT/attention.png                  the method's figure, if it has one (LRErr: faces,
                                       reconstructions and attention maps)
    OUT/cam.png                        with --cam N: Grad-CAM of the N most confident fakes,
                                       reals and worst mistakes (gradcam.py)
    OUT/robustness.csv, perturbations.png  with --perturb: each perturbed face's prob, and the
                                       perturbations' levels on a real and a fake face (robustness.py)
    OUT/work/config.json               the config OUT was claimed with (see stage_dir.py)

A frame's prob is sigmoid(logit); a video's is the mean over its frames, grouped by the
full video_id ("Deepfakes/000_003" and "FaceSwap/000_003" are two videos). The manifest's
parent is the shard directory; the detector run (and through it its parent runs, such as
LRErr's MAE) is recorded by hash in config and extra. Rerunning with the same inputs finds the result there.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import jsonschema
import numpy as np
from torch.utils.data import Dataset, default_collate

from lrerr_tools.atomic_io import atomic_write_bytes, atomic_write_json
from lrerr_tools.bootstrap import Bootstrap
from lrerr_tools.calibration import apply_calibration, reliability_plot, scaled_rows, unfitted
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.detector.frozen_cache import FrozenCache
from lrerr_tools.detector.overlays import pick_faces
from lrerr_tools.detector.predict import EVAL_PRECISION, predict
from lrerr_tools.detector.provenance import describe_split
from lrerr_tools.errors import LrerrError
from lrerr_tools.gradcam import CAM_FILE, MAX_PER_ROW, write_cam_figure
from lrerr_tools.mae.grid import write_grid
from lrerr_tools.manifest import Manifest, open_parent, write_stage
from lrerr_tools.methods import get_method
from lrerr_tools.metrics import (
    AGGREGATORS,
    LEVELS,
    Aggregation,
    compute_metrics,
    roc_plot,
    scores_by_level,
    video_prob_key,
    video_rows,
)
from lrerr_tools.perturb import LEVELS as PERTURB_LEVELS
from lrerr_tools.perturb import PERTURBATIONS, parse_perturbations
from lrerr_tools.report import METRICS_FILE, metrics_schema
from lrerr_tools.robustness import (
    PERTURBATIONS_FIGURE,
    ROBUSTNESS_CSV,
    ROBUSTNESS_FIELDS,
    Predict,
    perturbations_figure,
    protocol,
    score_perturbed,
)
from lrerr_tools.shard_dataset import SPLITS, ShardDataset
from lrerr_tools.stage_dir import existing_manifest, prepare_output
from lrerr_tools.training import resolve_device

log = logging.getLogger(__name__)

STAGE = "score"
FRAMES_CSV, VIDEOS_CSV, ROC_FILE, ATTENTION_FILE = "frames.csv", "videos.csv", "roc.png", "attention.png"
RELIABILITY_FILE = "reliability.png"
OUTPUTS = (METRICS_FILE, FRAMES_CSV, VIDEOS_CSV, ROC_FILE, RELIABILITY_FILE, ATTENTION_FILE, CAM_FILE,
           ROBUSTNESS_CSV, PERTURBATIONS_FIGURE)
FRAME_FIELDS = ["video_id", "method", "label", "frame_index", "prob"]
VIDEO_FIELDS = ["video_id", "method", "label", "frames", *map(video_prob_key, AGGREGATORS)]


@dataclass
class ScoreConfig:
    shard_dir: str
    detector: str
    out: str
    split: str = "test"
    batch_size: int = 32
    device: str = "auto"
    workers: int = 4
    overlays: int = 4
    cam: int = 0  # faces per row of cam.png (most confident fakes, reals, worst mistakes); 0: none
    # The video aggregators' constants (metrics.Aggregation); check() fills in the defaults.
    aggregation: dict = field(default_factory=dict)
    resamples: int = 1000  # bootstrap resamples of the videos for the intervals; 0: none
    bootstrap_seed: int = 0
    perturb: list[str] = field(default_factory=list)  # perturb.PERTURBATIONS names; check() orders them
    perturb_seed: int = 0  # seeds the random perturbations (noise, block positions) with each face's record
    overwrite: bool = False
    # How a run is carried out; changing these does not change its output (each face's
    # reconstruction mask is its own, whatever batch it is in). The inputs are identified by
    # their content hashes, not by where they lie.
    RUN_OPTIONS: ClassVar[tuple[str, ...]] = ("shard_dir", "detector", "out", "batch_size", "device",
                                              "workers", "overwrite")

    def identity(self, shards_sha256: str, detector_sha256: str) -> dict:
        ident = {k: v for k, v in asdict(self).items() if k not in self.RUN_OPTIONS}
        ident.update(shards_sha256=shards_sha256, detector_sha256=detector_sha256)
        return ident

    def check(self) -> None:
        if self.split not in SPLITS:
            raise LrerrError(f"--split must be one of {', '.join(SPLITS)} (got {self.split!r})")
        if self.batch_size < 1:
            raise LrerrError("--batch-size must be at least 1")
        if self.workers < 0 or self.overlays < 0:
            raise LrerrError("--workers and --overlays must be 0 or more")
        if not 0 <= self.cam <= MAX_PER_ROW:
            raise LrerrError(f"--cam must be 0 to {MAX_PER_ROW} faces per row (got {self.cam})")
        if self.resamples:
            self.bootstrap().check()
        aggregation = self.video_aggregation()
        aggregation.check()
        self.aggregation = asdict(aggregation)
        self.perturb = parse_perturbations(self.perturb)

    def video_aggregation(self) -> Aggregation:
        unknown = set(self.aggregation) - set(asdict(Aggregation()))
        if unknown:
            raise LrerrError(f"aggregation: unknown constants {', '.join(sorted(unknown))}")
        return Aggregation(**self.aggregation)

    def bootstrap(self) -> Bootstrap | None:
        return Bootstrap(resamples=self.resamples, seed=self.bootstrap_seed) if self.resamples else None


def csv_bytes(rows: list[dict], fields: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _run_cache(loaded, dataset: ShardDataset) -> FrozenCache | None:
    """The detector run's cache of frozen inputs, read-only: faces the run has seen (scoring
    its val split) are read back; the faces of a split it never saw are each predicted once
    here, so storing them would cost disk and save nothing."""
    frozen = loaded.method.frozen_identity(loaded.net, loaded.context)
    if frozen is None:
        return None
    return FrozenCache(loaded.run.path, frozen, dataset.shard_rows, writable=False)


def run(cfg: ScoreConfig) -> Manifest:
    """Score `cfg.split` of the shards with the detector; returns the stage's manifest."""
    cfg.check()
    device = resolve_device(cfg.device)
    shards = open_parent(cfg.shard_dir, "shard")
    detector_run = open_parent(cfg.detector, "train-det")
    # With the shard fields the detector's method reads, so the split is indexed once.
    dataset = ShardDataset(shards.path, split=cfg.split,
                           fields=get_method(detector_run.manifest.config["method"]).fields)
    if len(dataset) == 0:
        raise LrerrError(f"{shards.path}: no faces in the {cfg.split} split — nothing to score")
    out = Path(cfg.out)
    identity = cfg.identity(shards.sha256, detector_run.sha256)
    previous = None if cfg.overwrite else existing_manifest(out)
    if previous is not None and previous.complete and (previous.stage, previous.config) == (STAGE, identity):
        log.info("%s already holds this score, complete — nothing to do", out)
        return previous
    # Everything that can refuse the inputs comes before OUT is claimed.
    test_data = {**describe_split(shards, cfg.split), "split": cfg.split}
    loaded = load_detector(cfg.detector, device)
    method, net, context, detector_run = loaded.method, loaded.net, loaded.context, loaded.run
    method.check_data(dataset, context)
    prepare_output(out, STAGE, identity, cfg.overwrite, OUTPUTS)
    rows, logits = predict(method, net, context, dataset, batch_size=cfg.batch_size, workers=cfg.workers,
                      device=device, desc=f"score {cfg.split}", cache=_run_cache(loaded, dataset))

    train_data = {**detector_run.manifest.extra["train_data"], "method": method.name,
                  "caveats": detector_run.manifest.extra.get("caveats", []),  # absent in older runs
                  "seed": detector_run.manifest.config["seed"]}
    fraction = detector_run.manifest.config.get("label_fraction")  # absent in older runs
    if fraction is not None:
        train_data["label_fraction"] = fraction
    fitted = _fitted_calibration(detector_run.manifest)
    metrics = {"run": {"train": train_data, "test": test_data},
               **compute_metrics(rows, aggregation=cfg.video_aggregation(), bootstrap=cfg.bootstrap()),
               "calibration": apply_calibration(rows, logits, fitted, cfg.bootstrap())}
    title = f"{method.title} on {test_data['dataset']} {cfg.split}"
    if cfg.perturb:
        metrics.update(_score_perturbed(cfg, loaded, dataset, device, out, title))
    jsonschema.validate(metrics, metrics_schema())  # what `report` will demand of it
    atomic_write_json(out / METRICS_FILE, metrics)
    videos = video_rows(rows, cfg.video_aggregation())
    atomic_write_bytes(out / FRAMES_CSV, csv_bytes(rows, FRAME_FIELDS))
    atomic_write_bytes(out / VIDEOS_CSV, csv_bytes(videos, VIDEO_FIELDS))
    roc_plot(rows, out / ROC_FILE, title=title)
    _reliability_plot(rows, logits, fitted["temperature"], out / RELIABILITY_FILE, title)
    attention = f"none: {method.title} has no figure"
    if method.figure_title and cfg.overlays:
        picks = pick_faces(dataset.labels, cfg.overlays)
        batch = default_collate([dataset[i] for i in picks])
        write_grid(out / ATTENTION_FILE, method.figure(net, context, batch, [rows[i]["prob"] for i in picks],
                                                       device))
        attention = ATTENTION_FILE
    elif method.figure_title:
        attention = "none: --overlays 0"
    cam = _cam_figure(cfg, out, loaded, dataset, rows, device, title)

    summary = {level: {k: metrics[level][k] for k in ("auc", "acc", "ap", "eer")} for level in LEVELS}
    parents = {name: d.as_parent(out) for name, d in loaded.parents.items()}  # re-based to OUT
    manifest = Manifest(stage=STAGE, config=identity,
                        parent=shards.as_parent(out), counts=_counts(rows), complete=True,
                        extra={"detector": detector_run.as_parent(out), "method": method.name,
                               "precision": EVAL_PRECISION,
                               "parents": parents, "run": metrics["run"], "metrics": summary,
                               "attention": attention, "cam": cam})
    return write_stage(out, manifest, ({**r, "split": cfg.split} for r in rows))


def _cam_figure(cfg: ScoreConfig, out: Path, loaded, dataset: ShardDataset, rows: list[dict], device,
                title: str) -> str:
    """cam.png with `--cam N`; what the manifest's `extra.cam` says."""
    if not cfg.cam:
        return "none: --cam 0"
    write_cam_figure(out / CAM_FILE, loaded.method, loaded.net, loaded.context, dataset, rows, cfg.cam,
                     batch_size=cfg.batch_size, device=device, title=f"{title}, run {loaded.run.path.name}")
    return CAM_FILE


def perturbed_predictor(cfg: ScoreConfig, loaded, device) -> Predict:
    """The score rows of perturbed faces, by the loaded detector."""
    def predict_perturbed(faces: Dataset, desc: str) -> list[dict]:
        # Never through the run's cache: it names a face by its shard row, that is by its clean
        # pixels, so it would hand a perturbed face the clean face's frozen inputs.
        return predict(loaded.method, loaded.net, loaded.context, faces, batch_size=cfg.batch_size,
                       workers=cfg.workers, device=device, desc=desc, cache=None)[0]

    return predict_perturbed


def _score_perturbed(cfg: ScoreConfig, loaded, dataset: ShardDataset, device, out: Path, title: str) -> dict:
    """metrics.json's `robustness` and `robustness_protocol`; writes robustness.csv and
    perturbations.png."""
    robustness, rows = score_perturbed(dataset, cfg.perturb, cfg.perturb_seed,
                                       perturbed_predictor(cfg, loaded, device), cfg.video_aggregation(),
                                       cfg.bootstrap())
    atomic_write_bytes(out / ROBUSTNESS_CSV, csv_bytes(rows, ROBUSTNESS_FIELDS))
    perturbations_figure(dataset, pick_faces(dataset.labels, 1), cfg.perturb, cfg.perturb_seed,
                         out / PERTURBATIONS_FIGURE, f"{title}: perturbations (seed {cfg.perturb_seed})")
    return {"robustness": robustness, "robustness_protocol": protocol(cfg.perturb, cfg.perturb_seed)}


def _fitted_calibration(detector: Manifest) -> dict:
    """The detector run's val calibration; null, with a note, for a run made before train-det
    recorded one."""
    fitted = detector.extra.get("calibration")
    if fitted is None:
        return {**unfitted("the detector run records no val calibration (trained by an older version)"),
                "epoch": None}
    return fitted


def _reliability_plot(rows: list[dict], logits, temperature: float | None, path: Path, title: str) -> None:
    curves = {"raw": rows}
    if temperature is not None:
        curves[f"T = {temperature:.3g} (val)"] = scaled_rows(rows, logits, temperature)
    by_level = {level: {} for level in LEVELS}
    for label, curve_rows in curves.items():
        for level, scores in zip(LEVELS, scores_by_level(curve_rows)):
            by_level[level][label] = (scores.probs, scores.labels)
    reliability_plot(by_level, path, title)


def count_records(records: list[dict], manifest: Manifest) -> dict[str, int]:
    """The counts that follow from the records."""
    return _counts(records)


def _counts(rows: list[dict]) -> dict[str, int]:
    labels = np.array([r["label"] for r in rows])
    video_labels = np.array([v["label"] for v in video_rows(rows)])
    return {"frames": len(rows), "frames_real": int((labels == 0).sum()), "frames_fake": int(labels.sum()),
            "videos": len(video_labels), "videos_real": int((video_labels == 0).sum()),
            "videos_fake": int(video_labels.sum())}


def fmt_interval(interval: list[float] | None) -> str:
    return "n/a" if interval is None else f"[{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def describe(out: str | Path, manifest: Manifest) -> list[str]:
    """A score's headline numbers, compactly, for the terminal."""
    out = Path(out)
    metrics = json.loads((out / METRICS_FILE).read_text())
    run = metrics["run"]

    def fmt(value):
        return "  n/a " if value is None else f"{100 * value:6.2f}"

    lines = [f"score complete: {out} ({run['train']['method']} on {run['test']['dataset']} "
             f"{run['test']['split']})",
             f"  {'level':<6}{'n':>6}{'real':>6}{'fake':>6}   {'AUC':>6} {'Acc':>6} {'AP':>6} {'EER':>6}"
             "  (%)"]
    for level in LEVELS:
        b = metrics[level]
        lines.append(f"  {level:<6}{b['n']:>6}{b['n_real']:>6}{b['n_fake']:>6}   "
                     f"{fmt(b['auc'])} {fmt(b['acc'])} {fmt(b['ap'])} {fmt(b['eer'])}")
    for method, blocks in metrics["per_method"].items():
        lines.append(f"  {method}: AUC frame {fmt(blocks['frame']['auc']).strip()}, "
                     f"video {fmt(blocks['video']['auc']).strip()}")
    if "bootstrap" in metrics:  # absent with --resamples 0 and in scores made before intervals
        boot = metrics["bootstrap"]
        aucs = ", ".join(f"{level} {fmt_interval(metrics[level]['ci']['auc'])}" for level in LEVELS)
        lines.append(f"  {100 * boot['confidence']:g} % intervals ({boot['resamples']} resamples by video, "
                     f"seed {boot['seed']}): AUC {aucs}")
    if "video_aggregates" in metrics:  # absent in scores made before score wrote them
        aucs = {name: fmt(agg["video"]["auc"]).strip() for name, agg in metrics["video_aggregates"].items()}
        lines.append("  video AUC by aggregator: " + ", ".join(f"{name} {auc}" for name, auc in aucs.items()))
    lines += [f"  note: {note}" for note in metrics["notes"]]
    calibration = metrics.get("calibration")  # absent in scores made before score applied it
    if calibration is not None:
        temperature = calibration["temperature"]
        shown = "none" if temperature is None else f"{temperature:.4g}"
        lines.append(f"  calibration (val, epoch {calibration['epoch']}, T = {shown}):")
        for level in LEVELS:
            c = calibration[level]
            lines.append(f"  {level:<6}Acc {fmt(c['acc']['0.5']).strip()} at 0.5, "
                         f"{fmt(c['acc']['balanced_acc']).strip()} at the val threshold, "
                         f"{fmt(c['acc']['eer']).strip()} at the val EER threshold; "
                         f"ECE {fmt(c['ece']).strip()}, {fmt(c['ece_scaled']).strip()} scaled")
        lines += [f"  note: {note}" for note in calibration["notes"]]
    lines += _robustness_lines(metrics, fmt)
    attention = manifest.extra["attention"]
    lines.append(f"roc:       {out / ROC_FILE}")
    if calibration is not None:
        lines.append(f"reliability: {out / RELIABILITY_FILE}")
    lines += [
              f"attention: {out / attention if attention == ATTENTION_FILE else attention}"]
    cam = manifest.extra.get("cam")  # absent in scores made before --cam
    if cam is not None:
        lines.append(f"cam:       {out / cam if cam == CAM_FILE else cam}")
    if "robustness" in metrics:
        lines.append(f"perturbations: {out / PERTURBATIONS_FIGURE}, scores {out / ROBUSTNESS_CSV}")
    return lines


def _robustness_lines(metrics: dict, fmt) -> list[str]:
    """Per perturbation, the frame and video AUC at each level."""
    robustness = metrics.get("robustness")  # absent without --perturb
    if not robustness:
        return []
    seed = metrics["robustness_protocol"]["seed"]
    lines = [f"  robustness (AUC at levels 1..5, perturbation seed {seed}):"]
    for name in [name for name in PERTURBATIONS if name in robustness]:  # metrics.json sorts its keys
        levels = [robustness[name][str(n)] for n in PERTURB_LEVELS]
        aucs = {level: " ".join(fmt(b[level]["auc"]).strip() for b in levels) for level in LEVELS}
        lines.append(f"  {name:<11} frame {aucs['frame']}; video {aucs['video']}")
    return lines
