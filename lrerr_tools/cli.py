"""`lrerr-tools`: one subcommand per pipeline stage. Options are parsed into the stage's
config and handed to its `run`, which is also the Python API."""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer

from lrerr_tools import __version__
from lrerr_tools.errors import LrerrError

app = typer.Typer(
    help="Face-forgery detection toolchain: dataset preprocessing and LRErr.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


def user_errors(command):
    """Print a LrerrError as one line and exit 2; let anything else (a bug) show its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
        try:
            return command(*args, **kwargs)
        except LrerrError as e:
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except OSError as e:
            if e.errno not in STORAGE_ERRORS:
                raise
            typer.secho(f"error: {storage_problem(e)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted — rerun the same command to resume", err=True)
            raise typer.Exit(130) from None

    return wrapper


# What the storage refuses, as opposed to a bug: the user's to fix, and nothing is lost
# (every output is written to a temp file and renamed, so a failed write leaves the old one).
STORAGE_ERRORS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def storage_problem(e: OSError) -> str:
    """One line for a write the storage refused, naming the file; for a full disk, its free space."""
    from lrerr_tools.atomic_io import written_file

    where = written_file(e.filename) if e.filename else None
    line = f"cannot write {where or 'an output file'}: {os.strerror(e.errno)}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        existing = next((p for p in (where, *where.parents) if p.exists()), None)
        if existing is not None:
            line += f" ({shutil.disk_usage(existing).free / 2**20:.0f} MiB free there)"
        line += " — free some space, then rerun the same command to resume"
    else:
        line += " — write somewhere writable (--out), or fix the permissions, then rerun"
    return line


def split_commas(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def print_counts(title: str, counts: dict[str, int]) -> None:
    typer.echo(title)
    width = max(map(len, counts))
    for key, value in counts.items():
        typer.echo(f"  {key:<{width}}  {value}")


@app.command()
@user_errors
def extract(
    root: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    dataset: Annotated[str, typer.Option(help="Layout of ROOT: ffpp, celebdf, dfd or folder.")],
    out: Annotated[Path, typer.Option(help="Output directory (created; resumable).")],
    compression: Annotated[str, typer.Option(help="FF++/DFD quality folder: c0 (raw), c23, c40.")] = "c23",
    methods: Annotated[list[str] | None, typer.Option(
        help="Fake methods to keep, comma-separated or repeated (default: all present).")] = None,
    splits: Annotated[Path | None, typer.Option(
        help="FF++: folder with train/val/test.json; Celeb-DF: test list; folder: a CSV.")] = None,
    keep_splits: Annotated[list[str] | None, typer.Option(
        help="Extract only the videos of these splits, comma-separated (e.g. test: Celeb-DF-v2's 518 "
             "test videos for cross-dataset scoring).")] = None,
    frames: Annotated[int, typer.Option(help="Evenly spaced frames per video.")] = 32,
    every: Annotated[int | None, typer.Option(help="Take every K-th frame instead of --frames.")] = None,
    every_seconds: Annotated[float | None, typer.Option(
        help="Take the frame nearest to every multiple of S seconds of presentation time instead of "
             "--frames (right on variable frame rate video too).")] = None,
    face: Annotated[str, typer.Option(
        help="Which face to keep: track (start from the largest, follow it by overlap), largest or "
             "central.")] = "track",
    detector: Annotated[str, typer.Option(
        help="retinaface-mnet (bundled, offline) or retinaface-resnet50 (facexlib).")] = "retinaface-mnet",
    detector_weights: Annotated[Path | None, typer.Option(
        help="Weights file for retinaface-resnet50 (detection_Resnet50_Final.pth).")] = None,
    threshold: Annotated[float, typer.Option(help="Face score threshold.")] = 0.8,
    det_max_side: Annotated[int, typer.Option(
        help="Frames are downscaled to this long side for detection only.")] = 640,
    crop_size: Annotated[int, typer.Option(help="Side of the square aligned crop.")] = 224,
    margin: Annotated[float, typer.Option(
        help="Extra context around the face, as a fraction of its size, on each side.")] = 0.2,
    image_format: Annotated[str, typer.Option("--format", help="Crop format: png or jpg.")] = "png",
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality with --format jpg.")] = 95,
    backend: Annotated[str, typer.Option(
        help="Video decoder: auto (decord, then OpenCV, then PyAV), decord, opencv or pyav.")] = "auto",
    jobs: Annotated[int, typer.Option(help="Videos processed in parallel (0 = one per core).")] = 1,
    part: Annotated[str, typer.Option(
        help="Process only part i of N (e.g. 2/8), for job arrays; then run `merge`.")] = "1/1",
    batch_size: Annotated[int, typer.Option(
        help="Frames per detector batch (0 = 2 on CPU, 32 on CUDA).")] = 0,
    device: Annotated[str, typer.Option(help="Detector device: cpu or cuda.")] = "cpu",
    overwrite: Annotated[bool, typer.Option(
        help="Discard an earlier output made with another config.")] = False,
    dry_run: Annotated[bool, typer.Option(
        help="Check the settings and the dataset, count the videos to extract; write nothing.")] = False,
) -> None:
    """Sample frames from every video, detect and align one face per frame, write 224×224 crops."""
    from lrerr_tools.extract import ExtractConfig, run, survey

    cfg = ExtractConfig(
        root=str(root), dataset=dataset, out=str(out), compression=compression,
        methods=split_commas(methods), splits=str(splits) if splits else None,
        keep_splits=split_commas(keep_splits),
        frames=frames, every=every, every_seconds=every_seconds, face=face, detector=detector,
        detector_weights=str(detector_weights) if detector_weights else None,
        threshold=threshold, det_max_side=det_max_side, crop_size=crop_size, margin=margin,
        image_format=image_format, jpeg_quality=jpeg_quality, backend=backend, jobs=jobs,
        part=part, batch_size=batch_size, device=device, overwrite=overwrite,
    )
    if dry_run:
        print_counts(f"extract would take (nothing written to {out}):", survey(cfg))
        return
    manifest = run(cfg)
    if manifest is None:
        typer.echo(f"part {part} done; run `lrerr-tools merge {out}` once every part has finished")
        return
    print_counts(f"extract complete: {out}", manifest.counts)


@app.command()
@user_errors
def merge(out: Annotated[Path, typer.Argument(help="The extract directory the parts wrote to.")]) -> None:
    """Join the parts of an `extract --part i/N` run into one manifest."""
    from lrerr_tools.extract import finalize

    manifest = finalize(out)
    if manifest is None:
        raise LrerrError(f"{out}: some videos are not extracted yet — run the missing parts first")
    print_counts(f"merged: {out}", manifest.counts)


@app.command()
@user_errors
def landmarks(
    extract_dir: Annotated[Path, typer.Argument(help="The output directory of `lrerr-tools extract`.")],
    out: Annotated[Path, typer.Option(help="Output directory (created; resumable).")],
    coverage: Annotated[float, typer.Option(
        help="Fraction of the real train faces whose 4 key points (brows, jaw) the key region "
             "must hold.")] = 0.95,
    expand: Annotated[int, typer.Option(help="Pixels to grow the key region by on every side.")] = 8,
    patch: Annotated[int, typer.Option(help="ViT patch side in pixels; T is given on this grid.")] = 16,
    jobs: Annotated[int, typer.Option(help="Videos processed in parallel (0 = one per core).")] = 1,
    overwrite: Annotated[bool, typer.Option(
        help="Discard an earlier output made with another config or from a changed extract.")] = False,
) -> None:
    """dlib 68-point landmarks on every crop, and the key region T (patch ids) LRErr masks."""
    from lrerr_tools.landmarks import IMAGE_FILE, LandmarksConfig, run

    cfg = LandmarksConfig(extract_dir=str(extract_dir), out=str(out), coverage=coverage,
                          expand=expand, patch=patch, jobs=jobs, overwrite=overwrite)
    manifest = run(cfg)
    print_counts(f"landmarks complete: {out}", manifest.counts)
    region = manifest.extra["key_region"]
    typer.echo(f"key region: rect {region['rect']}, {len(region['patches'])} of {region['mask_len']} "
               f"patches, from {region['faces_used']} {region['source']} faces")
    typer.echo(f"check it:   {out / IMAGE_FILE}")


@app.command()
@user_errors
def shard(
    landmarks: Annotated[Path, typer.Argument(help="The landmarks directory to pack.")],
    out: Annotated[Path, typer.Option(help="Output directory (created; resumable).")],
    shard_size: Annotated[int, typer.Option(help="Faces per HDF5 shard.")] = 1024,
    codec: Annotated[str, typer.Option(
        help="Image storage: png (lossless), jpeg (lossy, smallest) or raw (biggest, fastest).")] = "png",
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality with --codec jpeg.")] = 95,
    jobs: Annotated[int, typer.Option(help="Shards written in parallel (0 = one per core).")] = 1,
    overwrite: Annotated[bool, typer.Option(
        help="Discard an earlier output made with another config or landmarks directory.")] = False,
) -> None:
    """Pack the faces with landmarks into HDF5 shards per split, for fast training input."""
    from lrerr_tools.shard import ShardConfig, run

    manifest = run(ShardConfig(landmarks=str(landmarks), out=str(out), shard_size=shard_size,
                               codec=codec, jpeg_quality=jpeg_quality, jobs=jobs, overwrite=overwrite))
    print_counts(f"shard complete: {out}", manifest.counts)


@app.command("train-mae")
@user_errors
def train_mae(
    shard_dir: Annotated[Path, typer.Argument(help="The shard directory (output of `lrerr-tools shard`).")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, log.csv, grids, manifest.")],
    preset: Annotated[str, typer.Option(
        help="Model size: base (ViT-B/16, the paper), small (ViT-S/16) or tiny (CPU demos).")] = "base",
    epochs: Annotated[int, typer.Option(help="Epochs (the paper: 300).")] = 300,
    batch_size: Annotated[int, typer.Option(
        help="Global batch size, split evenly across torchrun processes (the paper: 32).")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate (the paper: 1e-4).")] = 1e-4,
    optimizer: Annotated[str, typer.Option(
        help="adam (the paper: constant lr) or adamw (the MAE recipe: betas 0.9/0.95, weight decay "
             "0.05, warm-up then cosine).")] = "adam",
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs with --optimizer adamw.")] = 15,
    mask_ratio: Annotated[float, typer.Option(help="Share of the 196 patches masked per face.")] = 0.75,
    key_mask_ratio: Annotated[float, typer.Option(
        help="Least share of the key region T masked per face (within the --mask-ratio budget).")] = 0.9,
    key_region: Annotated[str, typer.Option(
        help="T: the dataset-wide key patch set (dataset) or each face's own (per-face).")] = "dataset",
    norm_pix: Annotated[bool, typer.Option(
        help="Predict per-patch normalized pixels (MAE's norm-pix loss); off because the "
             "reconstructions are fed to Xception as images.")] = False,
    init: Annotated[str | None, typer.Option(
        help="Start the encoder from a weights file or a timm model name in the local cache, e.g. "
             "vit_base_patch16_224.mae (never downloaded).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (bfloat16 where supported).")] = True,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 4,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, sample order and masks.")] = 0,
    max_steps: Annotated[int | None, typer.Option(
        help="Cap on steps per epoch (demos, smoke tests).")] = None,
    eval_every: Annotated[int | None, typer.Option(
        help="Validate (all of val, fakes too) and draw the grid every K epochs and after the last "
             "(default: every epoch).")] = None,
    colour_jitter: Annotated[float, typer.Option(
        help="Per-face colour jitter in training, strength in [0, 1): gains, gamma and offset "
             "(0: none, as in the paper).")] = 0.0,
    flip: Annotated[float, typer.Option(
        help="Probability of mirroring a training face, with its key region (0: never, as in the "
             "paper).")] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier run in --out.")] = False,
) -> None:
    """Train the masked autoencoder on real train faces with key-region masking (paper §III.B).

    Multi-GPU: torchrun --nproc_per_node N -m lrerr_tools train-mae ...
    """
    from lrerr_tools.mae.evaluate import premise_lines
    from lrerr_tools.mae.train import GRIDS, MaeTrainConfig, run
    from lrerr_tools.training import is_main_process

    manifest = run(MaeTrainConfig(
        shard_dir=str(shard_dir), out=str(out), preset=preset, epochs=epochs, batch_size=batch_size,
        lr=lr, optimizer=optimizer, warmup_epochs=warmup_epochs, mask_ratio=mask_ratio,
        key_mask_ratio=key_mask_ratio, key_region=key_region, norm_pix=norm_pix, init=init,
        device=device, amp=amp, workers=workers, resume=resume, seed=seed, max_steps=max_steps,
        eval_every=eval_every, colour_jitter=colour_jitter, flip=flip, overwrite=overwrite))
    if not is_main_process():
        return
    print_counts(f"train-mae complete: {out}", manifest.counts)
    best, last = manifest.extra["best"], manifest.extra["last"]
    typer.echo(f"best epoch {best['epoch']} ({best['metric']} {best['value']:.4f}): "
               f"{out / manifest.extra['checkpoints']['best']}")
    for line in premise_lines(last):
        typer.echo(line)
    typer.echo(f"reconstructions: {out / GRIDS}/epoch-{manifest.counts['epochs']:03d}.png")


@app.command("train-moco")
@user_errors
def train_moco(
    shard_dir: Annotated[Path, typer.Argument(help="The shard directory (output of `lrerr-tools shard`).")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, log.csv, manifest.")],
    width: Annotated[float, typer.Option(
        help="Channel multiplier of the Xception encoder; 1, the only width ImageNet weights fit "
             "(smaller: quick CPU tests).")] = 1.0,
    dim: Annotated[int, typer.Option(help="Embedding size of the MLP head (MoCo v2: 128).")] = 128,
    queue_size: Annotated[int, typer.Option(
        help="Negative keys kept, a multiple of --batch-size (MoCo: 65536; less for small shards).")] = 65536,
    momentum: Annotated[float, typer.Option(help="Momentum of the key encoder (MoCo: 0.999).")] = 0.999,
    temperature: Annotated[float, typer.Option(help="InfoNCE temperature (MoCo v2: 0.2).")] = 0.2,
    bn_splits: Annotated[int, typer.Option(
        help="In one process, batch-norm statistics over this many parts of the batch apart "
             "(shuffle-BN); under torchrun each process is one part.")] = 8,
    crop_size: Annotated[int, typer.Option(help="Side of the augmented views in px (MoCo: 224).")] = 224,
    epochs: Annotated[int, typer.Option(help="Epochs (MoCo v2: 200).")] = 200,
    batch_size: Annotated[int, typer.Option(
        help="Global batch size, split evenly across torchrun processes (MoCo: 256).")] = 256,
    lr: Annotated[float, typer.Option(
        help="SGD learning rate for a batch of 256, scaled linearly with --batch-size; cosine "
             "schedule (MoCo v2: 0.03).")] = 0.03,
    weight_decay: Annotated[float, typer.Option(help="Weight decay, not on biases and norms.")] = 1e-4,
    pretrained: Annotated[bool, typer.Option(
        help="Start the encoder from Xception's ImageNet weights in the local cache (MoCo starts "
             "from random weights).")] = False,
    weights: Annotated[str | None, typer.Option(
        help="Start the encoder from this local legacy_xception weights file.")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (bfloat16 where supported).")] = True,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 4,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, sample order and views.")] = 0,
    max_steps: Annotated[int | None, typer.Option(
        help="Cap on steps per epoch (demos, smoke tests).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier run in --out.")] = False,
) -> None:
    """MoCo v2 on the train faces, labels unread: SCL-KD's self-supervised encoder.

    Multi-GPU: torchrun --nproc_per_node N -m lrerr_tools train-moco ...
    """
    from lrerr_tools.moco.train import MocoTrainConfig, run
    from lrerr_tools.training import is_main_process

    manifest = run(MocoTrainConfig(
        shard_dir=str(shard_dir), out=str(out), width=width, dim=dim, queue_size=queue_size,
        momentum=momentum, temperature=temperature, bn_splits=bn_splits, crop_size=crop_size,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, pretrained=pretrained,
        weights=weights, device=device, amp=amp, workers=workers, resume=resume, seed=seed,
        max_steps=max_steps, overwrite=overwrite))
    if not is_main_process():
        return
    print_counts(f"train-moco complete: {out}", manifest.counts)
    last = manifest.extra["last"]
    auc = "n/a" if last["val_knn_auc"] is None else f"{last['val_knn_auc']:.3f}"
    typer.echo(f"last epoch {last['epoch']}: InfoNCE {last['train_loss']:.4f}, queue "
               f"{100 * last['queue_fill']:.0f}% full, val k-NN AUC {auc} (health only): "
               f"{out / manifest.extra['checkpoints']['last']}")


@app.command("train-det", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def train_det(
    ctx: typer.Context,
    shard_dir: Annotated[Path, typer.Argument(help="The shard directory (output of `lrerr-tools shard`).")],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoints, log.csv, manifest.")],
    method: Annotated[str, typer.Option(
        help="A registered method: lrerr (the paper; needs --mae), xception (its baseline), recce, ... "
             "`lrerr-tools methods` lists them with their own options.")] = "lrerr",
    methods: Annotated[list[str] | None, typer.Option(
        help="Fake methods to train on, comma-separated (default: all in the train split); every real "
             "face is kept and val is narrowed the same way.")] = None,
    label_fraction: Annotated[float | None, typer.Option(
        help="Keep the labels of this fraction of the train videos (0-1], stratified by label and fake "
             "method, chosen by a seeded hash of the video id (the few-label protocol). A method that "
             "learns from unlabelled faces (sclkd) still sees the others; any other trains on the "
             "labelled faces alone (default: every label).")] = None,
    pretrained: Annotated[bool, typer.Option(
        help="Start from timm's pretrained weights in the local cache (never downloaded).")] = True,
    weights: Annotated[Path | None, typer.Option(help="Start from this local weights file instead.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (the paper: 30).")] = 30,
    iters_per_epoch: Annotated[int, typer.Option(help="Steps per epoch (the paper: 200).")] = 200,
    batch_size: Annotated[int, typer.Option(
        help="Global batch, half real and half fake on average, split across torchrun processes.")] = 32,
    optimizer: Annotated[str | None, typer.Option(
        help="adam, adamw or sgd (momentum 0.9) (default: the method's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the method's).")] = None,
    weight_decay: Annotated[float | None, typer.Option(
        help="Weight decay, not on biases and norms (default: the method's).")] = None,
    schedule: Annotated[str | None, typer.Option(
        help="Learning-rate schedule: constant, cosine or step (default: the method's).")] = None,
    step_size: Annotated[int | None, typer.Option(
        help="Steps between decays of --schedule step (default: the method's).")] = None,
    gamma: Annotated[float | None, typer.Option(
        help="Factor of each --schedule step decay (default: the method's).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA (bfloat16 where supported).")] = True,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 4,
    cache_gb: Annotated[float | None, typer.Option(
        help="Disk (GB, all processes together) for the faces' frozen inputs in OUT/cache, e.g. LRErr's "
             "attention maps, computed once per face (default: room for every train and val face; "
             "0: none, recompute every time).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation, batches and masks.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Discard an earlier run in --out.")] = False,
) -> None:
    """Train a detection method on the shards: LRErr (paper §III.C), its Xception baseline, RECCE, ...

    A method's own options and parent runs follow the common ones, e.g. `--method lrerr --mae
    RUN --attn-layers block1,block2`; `lrerr-tools methods NAME` lists them with their defaults.

    Multi-GPU: torchrun --nproc_per_node N -m lrerr_tools train-det ...
    """
    from lrerr_tools.calibration import describe as describe_calibration
    from lrerr_tools.detector.train import DetTrainConfig, run
    from lrerr_tools.methods import get_method
    from lrerr_tools.methods.base import parse_cli_args
    from lrerr_tools.training import is_main_process

    options, parents = parse_cli_args(get_method(method), ctx.args)
    manifest = run(DetTrainConfig(
        shard_dir=str(shard_dir), out=str(out), method=method, options=options, parents=parents,
        methods=split_commas(methods), label_fraction=label_fraction, pretrained=pretrained,
        weights=str(weights) if weights else None,
        epochs=epochs, iters_per_epoch=iters_per_epoch, batch_size=batch_size, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, schedule=schedule, step_size=step_size, gamma=gamma, device=device,
        amp=amp, workers=workers, cache_gb=cache_gb, resume=resume, seed=seed, overwrite=overwrite))
    if not is_main_process():
        return
    print_counts(f"train-det complete: {out}", manifest.counts)
    best = manifest.extra["best"]
    typer.echo(f"best epoch {best['epoch']} ({best['metric']} {best['value']:.4f}): "
               f"{out / manifest.extra['checkpoints']['best']}")
    typer.echo(describe_calibration(manifest.extra["calibration"]))


@app.command("methods")
@user_errors
def methods_command(
    names: Annotated[list[str] | None, typer.Argument(help="Methods to describe (default: all).")] = None,
    cost: Annotated[bool, typer.Option(
        help="Count parameters and multiply-adds per 224 px face (builds each network).")] = True,
    tsv: Annotated[bool, typer.Option(
        help="Only a line per method for scripts: name, parent stages (comma-separated), baseline; "
             "tab-separated.")] = False,
) -> None:
    """The registered detection methods: title, parent runs, shard fields, options, recipe and cost."""
    from lrerr_tools.methods.describe import describe_methods, method_rows

    for line in method_rows(names or None) if tsv else describe_methods(names or None, cost=cost):
        typer.echo(line)


@app.command()
@user_errors
def score(
    shard_dir: Annotated[Path, typer.Argument(help="The shard directory to score.")],
    detector: Annotated[Path, typer.Option(help="A finished train-det run.")],
    out: Annotated[Path, typer.Option(help="Output directory: metrics.json, CSVs, plots, manifest.")],
    split: Annotated[str, typer.Option(help="Split to score: test, val, train or unassigned.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Faces per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 4,
    overlays: Annotated[int, typer.Option(
        help="Real and as many fake faces drawn with their attention maps in attention.png.")] = 4,
    cam: Annotated[int, typer.Option(
        help="Grad-CAM in cam.png of the N most confident fakes, the N most confident reals and the N worst "
             "mistakes; 0: none.")] = 0,
    top_fraction: Annotated[float, typer.Option(
        help="top_k_mean aggregator: the mean of a video's k highest frame probs, k = max(1, floor(this × "
             "frames)).")] = 0.25,
    confident_fake_prob: Annotated[float, typer.Option(
        help="confident aggregator (DFDC winner): a frame with prob above this is a confident fake.")] = 0.8,
    confident_real_prob: Annotated[float, typer.Option(
        help="confident aggregator: a frame with prob below this is a confident real.")] = 0.2,
    confident_fake_divisor: Annotated[float, typer.Option(
        help="confident aggregator: the confident fakes' mean when there are more than floor(frames / this) "
             "of them ...")] = 2.5,
    confident_min_fakes: Annotated[int, typer.Option(
        help="... and more than this many.")] = 11,
    confident_real_share: Annotated[float, typer.Option(
        help="confident aggregator: else the confident reals' mean when more than this share of the frames "
             "are; else the mean of all.")] = 0.9,
    resamples: Annotated[int, typer.Option(
        help="Bootstrap resamples of the videos for the 95 % intervals of every Acc, AUC and AP; 0: no "
             "intervals.")] = 1000,
    bootstrap_seed: Annotated[int, typer.Option(help="Seed of the bootstrap's draws.")] = 0,
    perturb: Annotated[str, typer.Option(
        help="Also score the faces under these perturbations, each at its 5 levels: a comma-separated list "
             "of jpeg, blur, noise, saturation, contrast, blocks, pixelation, h264, or all.")] = "",
    perturb_seed: Annotated[int, typer.Option(
        help="Seed of the random perturbations (noise, block positions), with each face's video and "
             "frame.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        help="Discard an earlier score in --out made with another detector, data or config.")] = False,
) -> None:
    """Fake probability per frame and per video (mean of its frames, and the other aggregators), metrics,
    calibration, ROC, reliability and attention plots; with --perturb, the metrics under each perturbation."""
    from lrerr_tools.perturb import parse_perturbations
    from lrerr_tools.score import ScoreConfig, describe, run

    aggregation = dict(top_fraction=top_fraction, fake_prob=confident_fake_prob,
                       real_prob=confident_real_prob, fake_divisor=confident_fake_divisor,
                       min_fakes=confident_min_fakes, real_share=confident_real_share)
    manifest = run(ScoreConfig(shard_dir=str(shard_dir), detector=str(detector), out=str(out), split=split,
                               batch_size=batch_size, device=device, workers=workers, overlays=overlays,
                               aggregation=aggregation, resamples=resamples, bootstrap_seed=bootstrap_seed,
                               perturb=parse_perturbations(perturb), perturb_seed=perturb_seed,
                               overwrite=overwrite, cam=cam))
    for line in describe(out, manifest):
        typer.echo(line)


@app.command()
@user_errors
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Video and image files, and folders of them (searched "
                                                     "recursively).")],
    detector: Annotated[Path, typer.Option(help="A finished train-det run.")],
    out: Annotated[Path, typer.Option(
        help="Output folder: predictions.json, CSVs, plots, annotated copies.")],
    frames: Annotated[int | None, typer.Option(
        help="Score N evenly spaced frames per video (default: sample as the detector's training "
             "faces were).")] = None,
    every: Annotated[int | None, typer.Option(help="Score every K-th frame (1: all) instead.")] = None,
    aggregate: Annotated[str, typer.Option(
        help="A track's score from its faces' p(fake), as score makes a video's: mean, median, max, "
             "top_k_mean or confident; a video's is its most suspicious track's.")] = "mean",
    top_fraction: Annotated[float, typer.Option(
        help="Share of a track's faces, the most suspicious, that --aggregate top_k_mean averages.")] = 0.25,
    threshold: Annotated[float | None, typer.Option(
        help="p(fake) from which a verdict is fake (default: the detector's val calibration, else "
             "0.5).")] = None,
    annotate: Annotated[bool, typer.Option(
        help="Also write each image with its faces boxed, coloured by p(fake), and a copy of each video "
             "so.")] = False,
    batch_size: Annotated[int, typer.Option(help="Faces per forward pass.")] = 32,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    jobs: Annotated[int, typer.Option(
        help="Inputs predicted side by side in this many CPU processes, each with its own copy of the "
             "model and its share of the cores (1 on a GPU).")] = 1,
) -> None:
    """Is this video fake? Every face of the sampled frames scored by a trained detector, linked
    into tracks, with a verdict per track and per input, through the same sampling, face detector,
    alignment and crops as the detector's training faces."""
    from lrerr_tools.predict_media import describe
    from lrerr_tools.predict_media import predict as predict_media

    predictions = predict_media(paths, detector, out=out, frames=frames, every=every, aggregate=aggregate,
                                top_fraction=top_fraction, threshold=threshold, annotate=annotate,
                                batch_size=batch_size, device=device, jobs=jobs,
                                announce=lambda p: typer.echo(describe(p)))
    n = len(predictions)
    typer.echo(f"predict complete: {n} input{'s' * (n != 1)}, "
               f"{sum(p.verdict == 'fake' for p in predictions)} fake; {out / 'predictions.json'}")


@app.command()
@user_errors
def export(
    detector: Annotated[Path, typer.Argument(help="A finished train-det run.")],
    out: Annotated[Path, typer.Option(help="The file to write; its sidecar FILE.json goes beside it.")],
    format: Annotated[str, typer.Option(
        help="torchscript, or onnx (opset 17; onnxruntime runs it).")] = "torchscript",
) -> None:
    """The detector as one graph: uint8 RGB aligned faces (B, 3, 224, 224) in, one logit per face
    out, normalisation and frozen parts (LRErr's MAE and extractor) inside. `predict --detector
    FILE` runs it."""
    from lrerr_tools.export import CHECK_BATCH, export, read_sidecar

    path = export(detector, format, out)
    gap = read_sidecar(path)["check"]["max_logit_difference"]
    typer.echo(f"export complete: {path} ({format}; its logits within {gap:.1g} of PyTorch's on "
               f"{CHECK_BATCH} faces); sidecar {path}.json")


@app.command()
@user_errors
def verify(
    directory: Annotated[Path, typer.Argument(help="Any stage's output directory.")],
    deep: Annotated[bool, typer.Option(
        help="Decode every crop or shard image, not only a sample (slow on big datasets).")] = False,
) -> None:
    """Check a stage directory against its manifest: hashes, schemas, parent, crops or shards."""
    from lrerr_tools.verify import summary
    from lrerr_tools.verify import verify as verify_dir

    problems = verify_dir(directory, deep=deep)
    for line in problems:
        typer.echo(line)
    if problems:
        raise typer.Exit(1)
    typer.echo(summary(directory))


@app.command()
@user_errors
def sample(
    out: Annotated[Path, typer.Argument(help="Folder to write the sample dataset into.")],
    dataset: Annotated[str, typer.Option(
        help="ffpp (FF++ with the DFD actors and DeepFakeDetection fakes in the same root, as "
             "the real download ships them) or celebdf (Celeb-DF-v2 with its test list).")] = "ffpp",
    pairs: Annotated[int | None, typer.Option(
        help="FF++ pairs (default 3), ffpp only; pair k goes to train/val/test in turn.")] = None,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 40,
) -> None:
    """Write a small dataset made from scikit-image's astronaut (needs the dev extra)."""
    from lrerr_tools.datasets.celebdf import TEST_LIST
    from lrerr_tools.synth import make_celebdf_sample, make_ffpp_sample

    if out.exists() and not out.is_dir():
        raise LrerrError(f"{out}: exists and is not a folder — name a folder to write the sample into")
    if dataset == "ffpp":
        root = make_ffpp_sample(out, n_pairs=3 if pairs is None else pairs, n_frames=frames)
        typer.echo(f"sample FF++ dataset with its DFD part: {root} (split lists in {root / 'splits'})")
    elif dataset == "celebdf":
        if pairs is not None:
            raise LrerrError("--pairs applies to --dataset ffpp only")
        root = make_celebdf_sample(out, n_frames=frames)
        typer.echo(f"sample Celeb-DF-v2 dataset: {root} (test list {root / TEST_LIST})")
    else:
        raise LrerrError(f"unknown --dataset {dataset!r}; choose ffpp or celebdf")


@app.command()
@user_errors
def report(
    score_dirs: Annotated[list[Path], typer.Argument(help="Score directories, each with a metrics.json.")],
    out: Annotated[Path, typer.Option(help="Markdown file to write; each table's CSV goes beside it.")],
    level: Annotated[str, typer.Option(help="Metrics level in the tables: frame or video.")] = "frame",
    aggregate: Annotated[str, typer.Option(
        help="With --level video: how a video's prob comes from its frames': mean (the paper's), median, "
             "max, top_k_mean or confident.")] = "mean",
    html: Annotated[bool, typer.Option(
        help="Also write one self-contained HTML page beside the Markdown (same stem, .html): the tables, "
             "ROC and PR curves, the score directories' figures and the frame accounting, images "
             "embedded.")] = False,
) -> None:
    """The paper's tables (in-dataset, cross-manipulation, leave-one-out, cross-dataset, ablation)."""
    from lrerr_tools.report import write_report

    for path in write_report(score_dirs, out, level=level, aggregate=aggregate, html=html):
        typer.echo(f"wrote {path}")


weights_app = typer.Typer(help="Pretrained weights in the local caches; `fetch` is the one command that "
                                "uses the network.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
@user_errors
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="timm model names, e.g. legacy_xception, "
                                               "tf_efficientnet_b4, vit_base_patch16_224.mae.")],
) -> None:
    """Download timm weights into timm's usual cache (Hugging Face or torch-hub), where the
    training commands look; print each file's path and sha256."""
    from lrerr_tools.weights import describe, fetch

    for name in names:
        typer.echo(describe(fetch(name)))


@weights_app.command("list")
@user_errors
def weights_list(
    names: Annotated[list[str] | None, typer.Argument(
        help="timm model names (default: those this toolchain's defaults start from).")] = None,
) -> None:
    """Which weights the local caches hold, with path, size and sha256."""
    from lrerr_tools.weights import USED_HERE, cached, describe

    for name, found in cached(tuple(names or USED_HERE)):
        typer.echo(describe(found) if found else f"{name}: not cached — `lrerr-tools weights fetch {name}`")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    from lrerr_tools.allocator import keep_freed_memory

    keep_freed_memory()
    app()
