"""What `predict` writes under --out:

    predictions.json            every input's result with the detector's provenance, the
                                threshold and where it came from, and the preprocessing
                                (schema: manifests/predictions.schema.json)
    inputs.csv                  one row per input: status, verdict, score, error
    tracks.csv                  one row per track of a face: faces, frames, score, verdict
    frames.csv                  one row per face of a sampled frame (and per sampled frame
                                without one): box, p(fake), status
    plots/<NNNN-name>.png       p(fake) over time, one line per track (videos with a face)
    figures/<NNNN-name>.png     the method's figure, if it has one (LRErr: face, reconstruction,
                                attention maps), of the input's most suspicious faces
    annotated/<NNNN-name>.png   --annotate: an image with its faces boxed, coloured by p(fake)
    annotated/<NNNN-name>.mp4   --annotate: a copy of a video, every frame showing the boxes of
                                the last sampled frame and each track's running score

Every CSV row carries the detector's path, content hash, method and epoch, so a row read
alone still says which model made it. NNNN is the input's place in the list, which keeps
the names of two inputs called alike apart.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import cv2
import jsonschema
import numpy as np

from lrerr_tools import __version__
from lrerr_tools.atomic_io import atomic_write_bytes, atomic_write_json, named_errors
from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.grid import write_grid
from lrerr_tools.manifest import schema
from lrerr_tools.predict_media import STATUSES, Prediction, Setup, Suspects, track_score
from lrerr_tools.score import csv_bytes
from lrerr_tools.video import VideoReader

PREDICTIONS_FILE = "predictions.json"
INPUTS_CSV, TRACKS_CSV, FRAMES_CSV = "inputs.csv", "tracks.csv", "frames.csv"
PLOTS_DIR, ANNOTATED_DIR, FIGURES_DIR = "plots", "annotated", "figures"
PROVENANCE_FIELDS = ["detector", "detector_sha256", "method", "epoch"]
INPUT_FIELDS = ["path", "kind", "status", "verdict", "score", "track", "tracks", "faces", "frames", "error",
                *PROVENANCE_FIELDS]
TRACK_FIELDS = ["path", "track", "faces", "first_frame", "last_frame", "score", "verdict", *PROVENANCE_FIELDS]
FRAME_FIELDS = ["path", "frame_index", "timestamp", "frame_status", "track", "face_status", "prob",
                "x1", "y1", "x2", "y2", "detector_score", "error", *PROVENANCE_FIELDS]
VIDEO_FOURCC = "mp4v"


def check_out(out: Path) -> None:
    """Refuse, before any input is read, an --out that cannot hold the outputs."""
    if out.exists() and not out.is_dir():
        raise LrerrError(f"--out {out}: exists and is not a folder")
    with named_errors(out):
        out.mkdir(parents=True, exist_ok=True)


def write_figure(out: Path, index: int, p: Prediction, suspects: Suspects, setup: Setup) -> str | None:
    """The method's figure (LRErr: face, reconstruction, attention maps) of the input's most
    suspicious faces, one per row; None for a method without one or an input without a face."""
    if setup.scorer.figure is None or not suspects:
        return None
    path = out / FIGURES_DIR / f"{output_name(index, p.path)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_grid(path, setup.scorer.figure([item for _, item in suspects], [prob for prob, _ in suspects]))
    return str(path.relative_to(out))


def write_outputs(out: Path, predictions: list[Prediction], setup: Setup, figures: list[str | None],
                  annotate: bool = False) -> None:
    """Each input's plot and (`annotate`) annotated copy, then predictions.json and the CSVs,
    which name them; `figures`: each input's figure, written as it was predicted."""
    names = [output_name(i, p.path) for i, p in enumerate(predictions)]
    files = []
    for name, p, figure in zip(names, predictions, figures):
        written = {"plot": None, "annotated": None, "figure": figure}
        if p.kind == "video" and p.score is not None:
            written["plot"] = str(plot_scores(out / PLOTS_DIR / f"{name}.png", p, setup).relative_to(out))
        readable = p.status in ("ok", "no_face")
        made = annotated(out / ANNOTATED_DIR / name, p, setup) if annotate and readable else None
        if made is not None:
            written["annotated"] = str(made.relative_to(out))
        files.append(written)
    document = predictions_document(predictions, files, setup)
    jsonschema.validate(document, schema("predictions"))  # a bug here, never the user's: fail loudly
    atomic_write_json(out / PREDICTIONS_FILE, document, sort_keys=False)
    provenance = setup.provenance()
    columns = {"detector": provenance["path"], "detector_sha256": provenance["sha256"],
               "method": provenance["method"], "epoch": provenance["epoch"]}
    atomic_write_bytes(out / INPUTS_CSV, csv_bytes([{**input_row(p), **columns} for p in predictions],
                                                   INPUT_FIELDS))
    atomic_write_bytes(out / TRACKS_CSV, csv_bytes(
        [{"path": p.path, **asdict(t), **columns} for p in predictions for t in p.tracks], TRACK_FIELDS))
    atomic_write_bytes(out / FRAMES_CSV, csv_bytes(
        [{**row, **columns} for p in predictions for row in frame_rows(p)], FRAME_FIELDS))


def output_name(index: int, path: str) -> str:
    """NNNN-stem, with any character a file name might not take as _."""
    return f"{index + 1:04d}-{re.sub(r'[^A-Za-z0-9._-]', '_', Path(path).stem) or 'input'}"


def predictions_document(predictions: list[Prediction], files: list[dict], setup: Setup) -> dict:
    cfg = setup.extract
    counts = {status: sum(p.status == status for p in predictions) for status in STATUSES}
    counts.update({v: sum(p.verdict == v for p in predictions) for v in ("fake", "real")})
    return {
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(),
        "detector": setup.provenance(),
        "threshold": setup.threshold,
        "threshold_source": setup.threshold_source,
        "aggregate": {"how": setup.aggregate, "constants": asdict(setup.aggregation)},
        "preprocessing": {
            "frames": cfg.frames, "every": cfg.every, "every_seconds": cfg.every_seconds,
            "face_detector": cfg.detector, "face_threshold": cfg.threshold, "det_max_side": cfg.det_max_side,
            "face_device": cfg.device, "crop_size": cfg.crop_size, "margin": cfg.margin,
            "image_format": cfg.image_format, "shard_codec": setup.shard_codec,
            "face_fields": list(setup.scorer.computed),
        },
        "counts": counts,
        "inputs": [{**asdict(p), **written} for p, written in zip(predictions, files)],
    }


def input_row(p: Prediction) -> dict:
    return {"path": p.path, "kind": p.kind, "status": p.status, "verdict": p.verdict, "score": p.score,
            "track": p.track, "tracks": len(p.tracks), "faces": len(p.faces), "frames": len(p.frames),
            "error": p.error}


def frame_rows(p: Prediction) -> list[dict]:
    """Each face of each sampled frame, in frame order; a frame without one has a row too."""
    faces: dict[int, list] = {}
    for face in p.faces:
        faces.setdefault(face.frame_index, []).append(face)
    rows = []
    for frame in p.frames:
        where = {"path": p.path, "frame_index": frame.frame_index, "timestamp": frame.timestamp,
                 "frame_status": frame.status}
        if not faces.get(frame.frame_index):
            rows.append({**where, "error": frame.error})
        for f in faces.get(frame.frame_index, []):
            x1, y1, x2, y2 = f.box
            rows.append({**where, "track": f.track, "face_status": f.status, "prob": f.prob, "x1": x1,
                         "y1": y1, "x2": x2, "y2": y2, "detector_score": f.detector_score, "error": f.error})
    return rows


def plot_scores(path: Path, p: Prediction, setup: Setup) -> Path:
    """p(fake) over time (seconds where the frames have a time, else frame index) per track,
    with the threshold the verdicts take."""
    from matplotlib.figure import Figure  # Agg without pyplot: no global backend, no display

    timed = all(f.timestamp is not None for f in p.faces)
    fig = Figure(figsize=(7, 3.5), dpi=110)
    ax = fig.subplots()
    for track in p.tracks:
        faces = [f for f in p.faces if f.track == track.track and f.prob is not None]
        if not faces:
            continue
        x = [f.timestamp if timed else f.frame_index for f in faces]
        score = "no score" if track.score is None else f"{setup.aggregate} {track.score:.3f}"
        ax.plot(x, [f.prob for f in faces], marker="o", markersize=3, label=f"track {track.track}: {score}")
    ax.axhline(setup.threshold, color="0.4", linestyle="--", linewidth=1,
               label=f"threshold {setup.threshold:.3f}")
    ax.set(ylim=(-0.02, 1.02), xlabel="time (s)" if timed else "frame", ylabel="p(fake)",
           title=f"{Path(p.path).name}: {p.verdict} ({p.score:.3f})")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with named_errors(path):
        fig.savefig(path)
    return path


def colour(prob: float | None) -> tuple[int, int, int]:
    """RGB from green (real) through yellow to red (fake); grey for a face with no score."""
    if prob is None:
        return 160, 160, 160
    return int(round(255 * min(1.0, 2 * prob))), int(round(255 * min(1.0, 2 * (1 - prob)))), 0


def draw(image: np.ndarray, faces: list, running: dict[int, float], setup: Setup) -> np.ndarray:
    """The RGB frame with each face's box in its p(fake) colour, labelled with its track and its
    track's running score, and the frame's verdict so far in the top left corner."""
    image = image.copy()
    scale = max(image.shape[:2]) / 640
    thick, font = max(1, round(2 * scale)), 0.5 * max(scale, 0.6)
    for f in faces:
        x1, y1, x2, y2 = (int(round(v)) for v in f.box)
        cv2.rectangle(image, (x1, y1), (x2, y2), colour(f.prob), thick)
        text = f"T{f.track} " + ("no score" if f.prob is None else f"{f.prob:.2f}")
        if f.track in running:
            text += f" ({setup.aggregate} {running[f.track]:.2f})"
        outlined_text(image, text, (x1, max(y1 - 4, 12)), font, colour(f.prob), thick)
    if running:
        worst = max(running.values())
        label = f"{'FAKE' if worst >= setup.threshold else 'real'} {worst:.2f}"
        outlined_text(image, label, (8, int(24 * max(scale, 0.6))), 1.4 * font, colour(worst), thick + 1)
    return image


def outlined_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, rgb,
                  thick: int) -> None:
    """Text with a dark outline, readable on a light face as on a dark one."""
    for ink, width in (((0, 0, 0), thick + 2), (rgb, thick)):
        cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, width, cv2.LINE_AA)


def annotated(stem: Path, p: Prediction, setup: Setup) -> Path | None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    if p.kind == "image":
        from lrerr_tools.predict_media import read_image

        scores = {f.track: f.prob for f in p.faces if f.prob is not None}
        path = stem.with_suffix(".png")
        ok, png = cv2.imencode(".png", cv2.cvtColor(draw(read_image(Path(p.path)), p.faces, scores, setup),
                                                    cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"could not encode {path}")
        atomic_write_bytes(path, png.tobytes())
        return path
    return annotated_video(stem.with_suffix(".mp4"), p, setup)


def annotated_video(path: Path, p: Prediction, setup: Setup) -> Path | None:
    """Every frame of the video, with the boxes of the last sampled frame up to it and each
    track's score over its faces up to it; frames that do not decode are left out."""
    by_frame: dict[int, list] = {}
    for f in p.faces:
        by_frame.setdefault(f.frame_index, []).append(f)
    reader = VideoReader(p.path, setup.extract.backend)  # it was read a moment ago
    fps = p.fps if p.fps and p.fps > 0 else 25.0
    writer, shown, seen = None, [], {}
    partial = path.with_name(f".{path.name}.partial.mp4")  # renamed into place once whole
    try:
        for frame in reader.read(list(range(reader.n_frames))):
            if frame.index in by_frame:
                shown = by_frame[frame.index]
                for f in shown:
                    if f.prob is not None:
                        seen.setdefault(f.track, []).append(f.prob)
            if frame.image is None:
                continue
            running = {t: track_score(probs, setup) for t, probs in seen.items()}
            image = draw(frame.image, shown, running, setup)
            if writer is None:
                height, width = image.shape[:2]
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC)
                writer = cv2.VideoWriter(str(partial), fourcc, fps, (width, height))
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write {VIDEO_FOURCC} video to {partial}")
            if image.shape[:2] != (height, width):  # a stream that changes size mid-way
                image = cv2.resize(image, (width, height))
            writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    finally:
        if writer is not None:
            writer.release()
    if writer is None:
        return None
    partial.replace(path)
    return path
