"""`predict`: is this video, image or folder fake? A trained detector on a user's own media,
through the very path its training faces took.

    predictions = predict(["clip.mp4", "photos/"], "work/det", out="work/predict")

What decides the pixels the detector sees comes from its own provenance, not from defaults
that might differ: the extract config of the faces it was trained on (frame sampling, face
detector, its threshold and detection size, crop size, margin, crop file format), found
through its shards and their landmarks directory; the shard codec; and, for a method whose
output depends on a face's own key region or landmarks (`Method.face_fields`), dlib's
points and the landmarks stage's settings. The faces are found, aligned, stored and scored
by the extract stage's, the landmarks stage's and `score`'s own functions.

Every face of a sampled frame is scored, not only the one extract would keep. Faces are
linked into tracks across frames by IoU; a track's score is the aggregate (mean, max or the
mean of the top k) of its faces' p(fake), and an input's is its most suspicious track's, so
a swapped face beside a real one is found. Every input gets a `Prediction` with a status:
`ok`, `no_face`, `unreadable` (a media file that does not decode), `not_media` or `missing`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from tqdm import tqdm

from lrerr_tools.alignment import align_face
from lrerr_tools.datasets.base import VIDEO_EXTENSIONS
from lrerr_tools.detection import Face
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.detector.predict import EVAL_PRECISION
from lrerr_tools.detector.predict import predict as predict_faces
from lrerr_tools.errors import LrerrError
from lrerr_tools.extract import (
    ExtractConfig,
    cached_detector,
    detect_frames,
    detection_batch,
    encode_crop,
    sample_frames,
)
from lrerr_tools.face_choice import box_iou
from lrerr_tools.landmarks import crop_landmarks, face_key_patches, predictor_path
from lrerr_tools.manifest import MANIFEST_FILE, StageDir, content_sha256, linked_dir, read_manifest
from lrerr_tools.metrics import AGGREGATORS, Aggregation
from lrerr_tools.parallel import threads_per_job
from lrerr_tools.shard import encode_face
from lrerr_tools.training import resolve_device
from lrerr_tools.video import FrameResult, VideoOpenError, VideoReader

log = logging.getLogger(__name__)

STATUSES = ("ok", "no_face", "unreadable", "not_media", "missing")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_THRESHOLD = 0.5
THRESHOLD_SOURCES = {"option": "--threshold", "calibration": "val calibration (balanced accuracy)",
                     "default": "0.5: the detector run has no val calibration"}
PROGRESS_DELAY_S = 2.0  # an input that takes less gets no progress bar
NO_LABEL = -1  # the faces' label for `score`'s loop, which carries one: unknown here
FIGURE_FACES = 4  # an input's most suspicious faces, drawn in the method's figure


Suspects = list[tuple[float, dict]]  # (p(fake), face item), highest first


@dataclass
class FaceScore:
    """One face of a sampled frame: its box and detector score in frame pixels, its track,
    and p(fake); status `no_landmarks` (no prob) where the method needs dlib's points and
    dlib found none."""

    frame_index: int
    timestamp: float | None
    track: int
    box: list[float]
    detector_score: float
    status: str = "ok"
    prob: float | None = None
    error: str | None = None


@dataclass
class SampledFrame:
    frame_index: int
    timestamp: float | None
    status: str  # ok (a face or more), no_face, decode_error
    faces: int = 0
    error: str | None = None


@dataclass
class Track:
    track: int
    faces: int  # scored faces
    first_frame: int
    last_frame: int
    score: float | None
    verdict: str


@dataclass
class Prediction:
    """The result for one input file. `verdict` is fake, real or "no face" (None when the file
    could not be read); `score` is the most suspicious track's, which `track` names."""

    path: str
    status: str
    kind: str | None = None  # video or image
    verdict: str | None = None
    score: float | None = None
    track: int | None = None
    error: str | None = None
    n_frames: int | None = None  # in the file
    fps: float | None = None
    frames: list[SampledFrame] = field(default_factory=list)
    faces: list[FaceScore] = field(default_factory=list)
    tracks: list[Track] = field(default_factory=list)


@dataclass
class Scorer:
    """The model `predict` runs, from a train-det run or an exported file: where it comes
    from, what each face item carries for it, the path its training faces took, and a
    function from face items to p(fake)."""

    provenance: dict
    fields: tuple[str, ...]  # the shard fields an item carries (Method.fields)
    computed: tuple[str, ...]  # of those, the ones that count, computed per face (the rest: zeros)
    training: dict  # `training_path`: extract config, shard codec, key grid, landmarks config
    calibration: dict | None  # the run's manifest extra.calibration, if it has one
    probs: Callable[[list[dict], int], list[float]]  # (items, batch size) -> p(fake) per item
    figure: Callable[[list[dict], list[float]], np.ndarray] | None = None  # the method's, if it has one


@dataclass
class Setup:
    """Everything each input is predicted with: the model, the training faces' path, and
    how scores become verdicts."""

    scorer: Scorer
    extract: ExtractConfig
    threshold: float
    threshold_source: str
    aggregate: str  # one of metrics.AGGREGATORS, as `score` aggregates a video's frames
    aggregation: Aggregation
    batch_size: int
    progress: bool
    threads: int  # for the video decoder and the face detector: the cores of this process's share

    def provenance(self) -> dict:
        return self.scorer.provenance

    @property
    def shard_codec(self) -> str:
        return self.scorer.training["shard_codec"]


def predict(paths: Iterable[str | Path], detector: str | Path, *, out: str | Path | None = None,
            frames: int | None = None, every: int | None = None, aggregate: str = "mean",
            top_fraction: float = 0.25, threshold: float | None = None, annotate: bool = False,
            batch_size: int = 32, device: str = "auto", jobs: int = 1, progress: bool = True,
            announce: Callable[[Prediction], None] | None = None) -> list[Prediction]:
    """Predict every input (video and image files, folders of them, searched recursively) with
    `detector`, a train-det run or a file `lrerr-tools export` wrote; with `out`, write
    predictions.json, the CSVs, the plots and (`annotate`) annotated copies there. `frames` /
    `every` override the detector's frame sampling; `jobs` CPU processes predict inputs side by
    side; `announce` is called with each prediction as it is made (in the order they finish)."""
    options = dict(frames=frames, every=every, aggregate=aggregate, top_fraction=top_fraction,
                   threshold=threshold, batch_size=batch_size, device=device)
    setup = prepare(detector, **options, jobs=jobs, progress=progress)
    inputs = list_inputs(paths)
    if out is not None:
        from lrerr_tools.predict_outputs import check_out

        check_out(Path(out))
    predictions: list = [None] * len(inputs)
    figures: list = [None] * len(inputs)
    for index, prediction, figure in _predicted(inputs, setup, detector, options, out, jobs):
        predictions[index], figures[index] = prediction, figure
        if announce is not None:
            announce(prediction)
    if out is not None:
        from lrerr_tools.predict_outputs import write_outputs

        write_outputs(Path(out), predictions, setup, figures, annotate=annotate)
    return predictions


def _predicted(inputs: list[Path], setup: Setup, detector: str | Path, options: dict,
               out: str | Path | None, jobs: int) -> Iterator[tuple[int, Prediction, str | None]]:
    """(index, prediction, figure path) of every input: here, or in `jobs` processes."""
    if jobs > 1 and len(inputs) > 1:
        from lrerr_tools.predict_jobs import Job, predict_in_processes

        yield from predict_in_processes(inputs, Job(str(detector), tuple(options.items()),
                                                    None if out is None else str(out), jobs))
        return
    from lrerr_tools.predict_outputs import write_figure

    for index, path in enumerate(inputs):
        prediction, suspects = predict_with_suspects(path, setup)
        yield index, prediction, None if out is None else write_figure(Path(out), index, prediction,
                                                                      suspects, setup)


def prepare(detector: str | Path, *, frames: int | None = None, every: int | None = None,
            aggregate: str = "mean", top_fraction: float = 0.25, threshold: float | None = None,
            batch_size: int = 32, device: str = "auto", jobs: int = 1, progress: bool = True) -> Setup:
    """Load the model and its training faces' path; refuse bad options or an incomplete
    provenance in one line, before any input is read."""
    if aggregate not in AGGREGATORS:
        raise LrerrError(f"--aggregate must be one of {', '.join(AGGREGATORS)} (got {aggregate!r})")
    aggregation = Aggregation(top_fraction=top_fraction)
    aggregation.check()
    if threshold is not None and not 0 < threshold < 1:
        raise LrerrError(f"--threshold must be between 0 and 1, exclusive (got {threshold})")
    if batch_size < 1:
        raise LrerrError(f"--batch-size must be at least 1 (got {batch_size})")
    if frames is not None and every is not None:
        raise LrerrError("give --frames or --every, not both")
    if jobs < 1:
        raise LrerrError(f"--jobs must be at least 1 (got {jobs})")
    torch_device = resolve_device(device)
    if jobs > 1 and torch_device.type == "cuda":
        raise LrerrError(f"--jobs {jobs} runs that many CPU processes; on a GPU give --jobs 1, whose "
                         "batches already use it whole (or --device cpu)")
    if Path(detector).is_file():
        from lrerr_tools.export import exported_scorer

        scorer = exported_scorer(Path(detector), torch_device)
    else:
        scorer = run_scorer(detector, torch_device)
    value, source = decision_threshold(scorer.calibration, threshold)
    extract = scorer.training["extract"]
    return Setup(scorer=scorer, extract=extract_config(extract, frames, every,
                                                       face_device(extract, device, torch_device)),
                 threshold=value, threshold_source=source, aggregate=aggregate,
                 aggregation=aggregation, batch_size=batch_size, progress=progress,
                 threads=threads_per_job(jobs))


def run_scorer(detector: str | Path, device: torch.device) -> Scorer:
    """A train-det run's best weights, scoring through `score`'s own loop."""
    loaded = load_detector(detector, device)
    training = training_path(loaded.run)
    computed = tuple(loaded.method.face_fields(loaded.context))
    if computed:
        predictor_path()  # dlib's model file: refused now, not at the first face
        missing = [k for k in ("expand", "patch") if k not in training["landmarks"]]
        if missing:
            raise LrerrError(f"{loaded.run.path}: its landmarks directory's config has no {missing[0]}, "
                             f"which {loaded.method.name} needs to find each face's key region")

    def probs(items: list[dict], batch_size: int) -> list[float]:
        rows, _ = predict_faces(loaded.method, loaded.net, loaded.context, FaceItems(items),
                                batch_size=batch_size, workers=0, device=device, progress=False)
        return [row["prob"] for row in rows]

    def figure(items: list[dict], probs: list[float]) -> np.ndarray:
        return loaded.method.figure(loaded.net, loaded.context, default_collate(items), probs, device)

    run = loaded.run
    provenance = {"path": str(run.path.resolve()), "sha256": run.sha256, "method": loaded.method.name,
                  "epoch": run.manifest.extra["best"]["epoch"], "precision": EVAL_PRECISION}
    calibration = run.manifest.extra.get("calibration")
    return Scorer(provenance, tuple(loaded.method.fields), computed, training, calibration, probs,
                  figure if loaded.method.figure_title else None)


def training_path(run: StageDir) -> dict:
    """What decided the pixels of a detector run's training faces, from its provenance: its
    shards' codec and key grid, their landmarks' config, and that one's extract config."""
    shards = recorded_input(run, "shard")
    landmarks = recorded_input(shards, "landmarks")
    extract = recorded_input(landmarks, "extract")
    return {"extract": extract.manifest.config, "shard_codec": shards.manifest.config["codec"],
            "shard_jpeg_quality": shards.manifest.config.get("jpeg_quality"),
            "key_grid": int(shards.manifest.extra["key_region"]["grid"]),
            "landmarks": landmarks.manifest.config}


def recorded_input(stage: StageDir, expected: str) -> StageDir:
    """The input directory `stage` was made from, as it was then (by content hash)."""
    path = linked_dir(stage.path, stage.manifest.parent)
    if not (path / MANIFEST_FILE).is_file():
        raise LrerrError(f"{stage.path}: was made from the {expected} directory {path}, which is gone — "
                         "predict takes the detector's face sampling, alignment and crops from there; "
                         "put it back")
    manifest = read_manifest(path)
    sha256 = content_sha256(manifest)
    if manifest.stage != expected or sha256 != stage.manifest.parent["sha256"]:
        raise LrerrError(f"{stage.path}: was made from the {expected} directory {path}, which has changed "
                         "since (its manifest hash differs) — predict cannot tell how the detector's "
                         "faces were made; restore it")
    return StageDir(path, manifest, sha256)


def extract_config(config: dict, frames: int | None, every: int | None, device: str) -> ExtractConfig:
    """The extract config the detector's faces were made with, sampling overridden by
    `frames` or `every`, checked as extract checks it."""
    known = {f.name for f in fields(ExtractConfig)}
    cfg = ExtractConfig(**{k: v for k, v in config.items() if k in known}, out="", device=device)
    if frames is not None:
        cfg = replace(cfg, frames=frames, every=None, every_seconds=None)
    elif every is not None:
        cfg = replace(cfg, frames=None, every=every, every_seconds=None)
    cfg.validate()
    return cfg


def face_device(extract: dict, asked: str, device: torch.device) -> str:
    """Where the face detector runs: on the GPU with the network, but with `--device auto` on
    the CPU where onnxruntime has no CUDA provider (an explicit cuda is refused instead)."""
    if device.type != "cuda":
        return "cpu"
    if asked == "auto" and extract["detector"] == "retinaface-mnet":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            log.info("the face detector runs on the CPU: onnxruntime has no CUDA provider")
            return "cpu"
    return "cuda"


def decision_threshold(calibration: dict | None, given: float | None) -> tuple[float, str]:
    """The p(fake) at and above which a track or input is called fake, and where it comes
    from: --threshold, else the run's val calibration, else (none recorded, or a val of one
    class that fitted none) 0.5."""
    if given is not None:
        return given, THRESHOLD_SOURCES["option"]
    if calibration and calibration["threshold"]["balanced_acc"] is not None:
        return float(calibration["threshold"]["balanced_acc"]), THRESHOLD_SOURCES["calibration"]
    return DEFAULT_THRESHOLD, THRESHOLD_SOURCES["default"]


def list_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Each path given, and every file under each folder given (sorted), once each: none is
    left out, so a file that is not media gets its status too."""
    found: dict[Path, None] = {}
    for given in map(Path, paths):
        files = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        for path in files or [given]:  # an empty folder is an input that holds no media
            found.setdefault(path, None)
    if not found:
        raise LrerrError("no input given: name video or image files, or folders of them")
    return list(found)


def predict_input(path: Path, setup: Setup) -> Prediction:
    """One input file end to end; a file that cannot be read is a status, never an exception."""
    return predict_with_suspects(path, setup)[0]


def predict_with_suspects(path: Path, setup: Setup) -> tuple[Prediction, Suspects]:
    """`predict_input`, and its most suspicious faces for the method's figure."""
    suspects: Suspects = []
    if not path.exists():
        return Prediction(str(path), "missing", error="no such file or folder"), suspects
    if path.is_dir():
        return Prediction(str(path), "not_media", error="a folder with no files in it"), suspects
    suffix = path.suffix.lower()
    # By its name or its first bytes: a big file of no known kind is not read whole as an image.
    if suffix in IMAGE_SUFFIXES or (suffix not in VIDEO_EXTENSIONS and cv2.haveImageReader(str(path))):
        image = read_image(path)
        if image is not None:
            return predict_image(path, image, setup, suspects), suspects
        return Prediction(str(path), "unreadable", "image", error="OpenCV cannot decode it (corrupt, "
                                                                  "or over its 2^30-pixel limit)"), suspects
    try:
        reader = VideoReader(str(path), setup.extract.backend, threads=setup.threads)
        prediction = predict_video(path, reader, setup, suspects)
    except VideoOpenError as e:
        prediction = Prediction(str(path), "unreadable", "video", error=str(e))
    if prediction.status == "unreadable" and suffix not in VIDEO_EXTENSIONS:
        # decord "opens" some files that are no video at all (a text file) and decodes no frame
        return Prediction(str(path), "not_media", error="neither an image nor a video OpenCV, decord or "
                                                        "PyAV can read"), suspects
    return prediction, suspects


def read_image(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8: grayscale and CMYK are converted, alpha dropped, 16 bits
    scaled to 8, as OpenCV reads them; None when it is not an image OpenCV decodes."""
    data = np.fromfile(path, np.uint8)
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error:  # OpenCV 5 raises, where 4 returned None, for an image over its pixel limit
        return None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def predict_image(path: Path, image: np.ndarray, setup: Setup, suspects: Suspects) -> Prediction:
    prediction = Prediction(str(path), "ok", "image")
    score_frames(prediction, iter([FrameResult(0, image)]), 1, setup, suspects)
    return finish(prediction, setup)


def predict_video(path: Path, reader: VideoReader, setup: Setup, suspects: Suspects) -> Prediction:
    prediction = Prediction(str(path), "ok", "video", n_frames=reader.n_frames, fps=reader.fps)
    try:
        indices = sample_frames(reader, setup.extract)
    except VideoOpenError as e:  # --every-seconds needs the frame times
        return replace(prediction, status="unreadable", error=str(e))
    score_frames(prediction, reader.read(indices), len(indices), setup, suspects)
    if not any(f.status != "decode_error" for f in prediction.frames):
        first = prediction.frames[0].error if prediction.frames else "no frame sampled"
        return replace(prediction, status="unreadable", error=f"no sampled frame decodes: {first}")
    return finish(prediction, setup)


def score_frames(prediction: Prediction, frames: Iterator[FrameResult], total: int, setup: Setup,
                 suspects: Suspects) -> None:
    """Detect, track, align and score the faces of `frames` into `prediction`, keeping the
    most suspicious in `suspects`: the detector takes frames in extract's batches; the network
    takes `batch_size` faces at a time."""
    cfg = setup.extract
    detector = cached_detector(cfg, setup.threads)
    tracks = Tracker()
    pending: list[tuple[FaceScore, dict]] = []
    with tqdm(total=total, desc=Path(prediction.path).name, unit="frame", leave=False, dynamic_ncols=True,
              delay=PROGRESS_DELAY_S, disable=not setup.progress) as bar:
        while chunk := list(islice(frames, detection_batch(cfg))):
            decoded = [f for f in chunk if f.image is not None]
            found = dict(zip((f.index for f in decoded), detect_frames(detector, decoded)))
            for frame in chunk:
                pending += frame_faces(prediction, frame, found.get(frame.index, []), tracks, setup)
            if len(pending) >= setup.batch_size:
                score_faces(pending, setup, suspects)
                pending = []
            bar.update(len(chunk))
    score_faces(pending, setup, suspects)


def frame_faces(prediction: Prediction, frame: FrameResult, faces: list[Face], tracks: Tracker,
                setup: Setup) -> list[tuple[FaceScore, dict]]:
    """Record one sampled frame; return its faces, each with its item for the network."""
    timestamp = None if frame.timestamp is None else round(frame.timestamp, 4)
    if frame.image is None:
        prediction.frames.append(SampledFrame(frame.index, timestamp, "decode_error", error=frame.error))
        return []
    prediction.frames.append(SampledFrame(frame.index, timestamp, "ok" if faces else "no_face", len(faces)))
    scored = []
    for face, track in zip(faces, tracks.link(faces)):
        crop, matrix = align_face(frame.image, face.kps, setup.extract.crop_size, setup.extract.margin)
        box = np.round(face.box, 2)
        result = FaceScore(frame.index, timestamp, track, box.tolist(), round(face.score, 5))
        prediction.faces.append(result)
        item = face_item(as_trained(crop, setup), box, matrix, f"track {track}", frame.index, setup)
        if isinstance(item, str):
            result.status, result.error = "no_landmarks", item
        else:
            scored.append((result, item))
    return scored


def as_trained(crop: np.ndarray, setup: Setup) -> np.ndarray:
    """The aligned RGB crop as the detector's training faces were stored: through extract's
    crop file and the shard codec (both lossless unless one is JPEG)."""
    if setup.extract.image_format == "png" and setup.shard_codec != "jpeg":
        return crop
    bgr = cv2.imdecode(np.frombuffer(encode_crop(crop, setup.extract), np.uint8), cv2.IMREAD_COLOR)
    if setup.shard_codec == "jpeg":
        quality = setup.scorer.training["shard_jpeg_quality"]
        bgr = cv2.imdecode(encode_face(bgr, "jpeg", quality), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_item(face: np.ndarray, box: np.ndarray, matrix: np.ndarray, name: str, frame_index: int,
              setup: Setup) -> dict | str:
    """A face as a shard item (what `score`'s loop and the method read), with the shard fields
    the method reads; or why it cannot be one (dlib found no landmarks). `name` stands for
    the video id, in the method figure's captions."""
    item = {"image": torch.from_numpy(np.ascontiguousarray(face.transpose(2, 0, 1))), "label": NO_LABEL,
            "video_id": name, "frame_index": frame_index, "method": ""}
    scorer = setup.scorer
    points = np.zeros((68, 2))
    key_mask = np.zeros(scorer.training["key_grid"] ** 2, bool)
    if scorer.computed:
        # As the landmarks stage saw it: the record's box and matrix are rounded so.
        found, problem = crop_landmarks(face, box, np.round(matrix, 6))
        if problem:
            return problem
        points = found
        size, lm = setup.extract.crop_size, scorer.training["landmarks"]
        key_mask[face_key_patches(points, size, lm["expand"], lm["patch"])] = True
    if "key_mask" in scorer.fields:
        item["key_mask"] = torch.from_numpy(key_mask)
    if "landmarks" in scorer.fields:
        item["landmarks"] = torch.from_numpy(points.astype(np.float32))
    return item


class FaceItems(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def score_faces(pending: list[tuple[FaceScore, dict]], setup: Setup, suspects: Suspects) -> None:
    """p(fake) of each face: through `score`'s own loop (at its precision, EVAL_PRECISION) for
    a run, through the graph for an exported model. With a method figure to draw, the
    FIGURE_FACES faces of highest p(fake) so far stay in `suspects` (the first of ties)."""
    if not pending:
        return
    for (face, _), prob in zip(pending, setup.scorer.probs([item for _, item in pending], setup.batch_size)):
        face.prob = prob
    if setup.scorer.figure is not None:
        suspects += [(face.prob, item) for face, item in pending]
        suspects.sort(key=lambda suspect: -suspect[0])
        del suspects[FIGURE_FACES:]


class Tracker:
    """Links each frame's faces into tracks: a face continues the track whose last box it
    overlaps most (IoU, as `extract --face track` follows its one face), each track taking
    at most one face a frame; a face that overlaps no track starts one."""

    def __init__(self):
        self.last_boxes: list[np.ndarray] = []

    def link(self, faces: list[Face]) -> list[int]:
        overlaps = sorted(((box_iou(f.box, last), i, t) for i, f in enumerate(faces)
                           for t, last in enumerate(self.last_boxes)), key=lambda x: (-x[0], x[1], x[2]))
        ids: list[int | None] = [None] * len(faces)
        for iou, i, t in overlaps:
            if iou > 0 and ids[i] is None and t not in ids:
                ids[i] = t
        for i, face in enumerate(faces):
            if ids[i] is None:
                ids[i] = len(self.last_boxes)
                self.last_boxes.append(face.box)
            self.last_boxes[ids[i]] = face.box
        return ids


def track_score(probs: list[float], setup: Setup) -> float:
    """A track's score from its faces' p(fake), as `score` makes a video's from its frames'."""
    return setup.aggregation.video_prob(np.asarray(probs, dtype=np.float64), setup.aggregate)


def verdict(score: float | None, threshold: float) -> str:
    if score is None:
        return "no face"
    return "fake" if score >= threshold else "real"


def finish(prediction: Prediction, setup: Setup) -> Prediction:
    """Tracks, their scores and the input's verdict from its scored faces."""
    by_track: dict[int, list[FaceScore]] = {}
    for face in prediction.faces:
        by_track.setdefault(face.track, []).append(face)
    for track, faces in sorted(by_track.items()):
        probs = [f.prob for f in faces if f.prob is not None]
        score = track_score(probs, setup) if probs else None
        prediction.tracks.append(Track(track, len(probs), faces[0].frame_index, faces[-1].frame_index, score,
                                       verdict(score, setup.threshold)))
    scored = [t for t in prediction.tracks if t.score is not None]
    if not scored:
        sampled = len(prediction.frames)
        why = (f"no face in {sampled} sampled frame{'s' * (sampled != 1)}" if not prediction.faces else
               f"{len(prediction.faces)} faces found, but none scored: {prediction.faces[0].error}")
        return replace(prediction, status="no_face", verdict=verdict(None, setup.threshold), error=why)
    worst = max(scored, key=lambda t: t.score)  # the first of ties
    return replace(prediction, verdict=worst.verdict, score=worst.score, track=worst.track)


def describe(prediction: Prediction) -> str:
    """One terminal line: the verdict and score, or the status and why."""
    p = prediction
    if p.score is not None:
        where = f"track {p.track} of {len(p.tracks)}, " if len(p.tracks) > 1 else ""
        faces = sum(t.faces for t in p.tracks)
        return (f"{p.verdict:<10} {p.score:.3f}  {p.path}  ({where}{faces} face{'s' * (faces != 1)} in "
                f"{len(p.frames)} frame{'s' * (len(p.frames) != 1)})")
    label = p.verdict or p.status.replace("_", " ")
    return f"{label:<10} {'-':>5}  {p.path}: {p.error}"

