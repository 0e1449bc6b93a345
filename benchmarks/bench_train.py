"""Time training steps of the LRErr models.

    python benchmarks/bench_train.py mae [--presets tiny,base] [--steps 5] [--batch 8]
    python benchmarks/bench_train.py det [--methods lrerr,recce,xception] [--steps 3] [--cpu-batch 8]
    python benchmarks/bench_train.py det --methods sclkd --against sclkd-teacher
    python benchmarks/bench_train.py det --runs [--epochs 3] [--iters 3] [--frames 12]
    python benchmarks/bench_train.py moco [--steps 3] [--cpu-batch 8]

`mae`: one train-mae step (key-region masking at 0.75, forward, loss on the masked patches,
backward, Adam) against the plain encoder's forward+backward (+ Adam on its weights) on all
196 patches, i.e. what a step would cost without MAE's trick of encoding the visible patches
only. Forward+backward and the Adam update are timed apart: Adam's cost grows with the
parameter count, not the batch, and weighs heavily at the small batches a CPU can run. Data
are random uint8 images with a fixed key region, so this is the model's cost, not the
loader's. Each (device, preset) runs in its own process, so the peak memory is its own:
peak RSS on the CPU (it includes ~0.4 GB for Python, torch and timm themselves; the "+MB"
column is above the RSS measured just before the model was built), and
`torch.cuda.max_memory_allocated` on a GPU. GPU runs use the trainer's precision (AMP:
bfloat16 where supported).

`det`: one train-det step and the scoring forward pass of every registered method (default
options, random weights, 224 px random uint8 faces) against the plain Xception baseline in the
same run. A step is split into the method's no-grad input step (LRErr: the MAE
reconstruction of a random base-preset MAE and the frozen extractor; nothing for the others)
and the trainable step (forward, the method's losses, backward, its optimizer); the ratio
columns say how much slower than Xception (or the method `--against` names) each method is.

`det --runs`: whole 3-epoch `train-det` runs (training steps and val pass) of LRErr, with its
frozen cache and with `--cache-gb 0`, against Xception on the same synthetic shards: each
epoch's wall time, cold (epoch 1) and warm (the later ones).

`moco`: one train-moco step at MoCo v2's settings (two aug-plus views of 224 px random uint8
faces made on the device, the query encoder's forward and backward, the momentum update, the
shuffled key encoder, InfoNCE against a queue of 65536, SGD) against one supervised step of the
Xception baseline (`det`'s) at the same batch: 'prep' is the augmentation (nothing for
Xception), 'step' the rest.

A subcommand per model: add one with its own `add_parser` and bench function.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

KEY_PATCHES = [r * 14 + c for r in range(4, 13) for c in range(3, 11)]  # 72 patches, like the demo's T
BASELINE = "xception"  # what `det` measures every method against, unless --against names another


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _time_steps(phases, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Median seconds of each phase (callables run in turn, one step = all of them)."""
    times = [[] for _ in phases]
    for i in range(warmup + steps):
        for phase, kept in zip(phases, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            phase()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                kept.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def mae_case(preset: str, mode: str, device_name: str, batch: int, warmup: int, steps: int) -> dict:
    """One measurement, in a fresh process: `mode` is `mae` (a train-mae step) or `encoder`
    (the encoder on all 196 patches, forward+backward)."""
    from lrerr_tools.mae.masking import key_region_mask
    from lrerr_tools.mae.model import MaskedAutoencoder
    from lrerr_tools.normalization import to_mae_input
    from lrerr_tools.training import amp_dtype, autocast, grad_scaler, seeded_generator

    device = torch.device(device_name)
    rss_before = _peak_rss_mb()
    torch.manual_seed(0)
    model = MaskedAutoencoder(preset).to(device)
    dtype = amp_dtype(device, amp=True)
    scaler = grad_scaler(device, dtype)
    images = to_mae_input(torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)).to(device)
    key = torch.zeros(batch, 196, dtype=torch.bool)
    key[:, KEY_PATCHES] = True
    generator = seeded_generator(0)
    nothing_hidden = torch.zeros(batch, 196, dtype=torch.bool, device=device)
    if mode == "mae":
        params = list(model.parameters())
    else:
        params = [p for n, p in model.named_parameters() if not n.startswith(("decoder", "mask_token"))]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def forward_backward():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            if mode == "mae":
                _, loss = model(images, key_region_mask(key, 0.75, 0.9, generator).to(device))
            else:
                loss = model.forward_encoder(images, nothing_hidden).float().pow(2).mean()
        scaler.scale(loss).backward()

    def update():
        scaler.step(optimizer)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fwd_bwd, adam = _time_steps([forward_backward, update], device, warmup, steps)
    result = {"preset": preset, "mode": mode, "device": device_name, "batch": batch, "steps": steps,
              "fwd_bwd_s": fwd_bwd, "adam_s": adam, "images_per_s": batch / (fwd_bwd + adam)}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
        result["dtype"] = str(dtype)
    else:
        result["peak_mb"] = _peak_rss_mb()
        result["added_mb"] = result["peak_mb"] - rss_before
    return result


def _as_the_cli_runs(fn, *args) -> dict:
    from lrerr_tools.allocator import keep_freed_memory

    keep_freed_memory()  # the CLI tunes malloc at start; a case measures what a user's run gets
    return fn(*args)


def run_isolated(fn, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_as_the_cli_runs, fn, *args).result()


def bench_mae(args: argparse.Namespace) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for preset in args.presets.split(","):
            cpu_batch = args.tiny_batch if preset == "tiny" else args.cpu_batch
            batch = args.gpu_batch if device == "cuda" else cpu_batch
            steps = args.gpu_steps if device == "cuda" else args.steps
            pair = {mode: run_isolated(mae_case, preset, mode, device, batch, args.warmup, steps)
                    for mode in ("mae", "encoder")}
            rows.append(pair)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    gpu = next((r["mae"]["gpu"] for r in rows if "gpu" in r["mae"]), None)
    if gpu:
        print(f"GPU: {gpu} ({next(r['mae']['dtype'] for r in rows if 'gpu' in r['mae'])} autocast)")
    print("img/s: batch / (median forward+backward + median Adam time); 'fwd+bwd' and 'step' "
          "ratios: MAE time / encoder-on-196-patches time")
    print(f"{'device':<7}{'preset':<7}{'batch':>6}{'steps':>6}{'MAE img/s':>11}{'enc img/s':>11}"
          f"{'fwd+bwd':>9}{'step':>7}{'MAE Adam s':>12}{'MAE peak MB':>14}{'enc peak MB':>14}")
    for pair in rows:
        mae, enc = pair["mae"], pair["encoder"]

        def memory(r):
            return f"{r['peak_mb']:.0f}" + (f" (+{r['added_mb']:.0f})" if "added_mb" in r else "")

        step = (mae["fwd_bwd_s"] + mae["adam_s"]) / (enc["fwd_bwd_s"] + enc["adam_s"])
        print(f"{mae['device']:<7}{mae['preset']:<7}{mae['batch']:>6}{mae['steps']:>6}"
              f"{mae['images_per_s']:>11.1f}{enc['images_per_s']:>11.1f}"
              f"{mae['fwd_bwd_s'] / enc['fwd_bwd_s']:>8.2f}x{step:>6.2f}x{mae['adam_s']:>12.3f}"
              f"{memory(mae):>14}{memory(enc):>14}")


def det_case(name: str, device_name: str, batch: int, warmup: int, steps: int, nchw: bool = False) -> dict:
    """One measurement, in a fresh process: `name`'s input step and trainable step, then the
    input step and forward in eval mode without gradients, as `score` runs them. `nchw`: the
    network in PyTorch's default layout, as every stage ran it before `memory_format.py`."""
    from lrerr_tools.methods import get_method
    from lrerr_tools.methods.describe import example_batch
    from lrerr_tools.training import (
        Distributed,
        amp_dtype,
        autocast,
        backward_step,
        build_optimizer,
        grad_scaler,
    )

    device = torch.device(device_name)
    rss_before = _peak_rss_mb()
    torch.manual_seed(0)
    method = get_method(name).resolve({})
    net = method.network().to(device)
    if nchw:
        net.to(memory_format=torch.contiguous_format)
    context = method.example_context(device)
    data = example_batch(batch)
    labels = data["label"].float().to(device)
    dtype = amp_dtype(device, amp=True)
    scaler = grad_scaler(device, dtype)
    recipe = method.recipe
    optimizer = build_optimizer(net, recipe.optimizer, recipe.lr, weight_decay=recipe.weight_decay)
    state = {}

    def prepare():
        state["inputs"] = method.inputs(net, context, data, device, dtype)

    def train_step():
        with autocast(device, dtype):
            outputs = net(state["inputs"])
        terms = method.losses(outputs, state["inputs"], labels, Distributed())
        backward_step(terms["total"], optimizer, scaler)

    def score_prepare():
        # What `score` runs: a method that scores alone (SCL-KD's student) without its context.
        state["inputs"] = method.inputs(net, None if method.scores_alone else context, data, device, dtype)

    def score_forward():
        with torch.no_grad(), autocast(device, dtype):
            net(state["inputs"])

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    prep_s, step_s = _time_steps([prepare, train_step], device, warmup, steps)
    net.eval()
    score_prep_s, score_fwd_s = _time_steps([score_prepare, score_forward], device, warmup, steps)
    result = {"method": name, "device": device_name, "batch": batch, "steps": steps,
              "prep_s": prep_s, "step_s": step_s, "train_img_s": batch / (prep_s + step_s),
              "score_img_s": batch / (score_prep_s + score_fwd_s)}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
        result["dtype"] = str(dtype)
    else:
        result["peak_mb"] = _peak_rss_mb()
        result["added_mb"] = result["peak_mb"] - rss_before
    return result


def bench_det(args: argparse.Namespace) -> None:
    from lrerr_tools.methods import all_methods

    names = args.methods.split(",") if args.methods else list(all_methods())
    against = args.against
    if against not in names:
        names.append(against)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    runs = []
    for device in devices:
        batch = args.gpu_batch if device == "cuda" else args.cpu_batch
        steps = args.gpu_steps if device == "cuda" else args.steps
        runs.append({name: run_isolated(det_case, name, device, batch, args.warmup, steps) for name in names})
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    gpu = next((r[against]["gpu"] for r in runs if "gpu" in r[against]), None)
    if gpu:
        print(f"GPU: {gpu} ({next(r[against]['dtype'] for r in runs if 'gpu' in r[against])} autocast)")
    print("default options at 224 px, random weights; medians. 'prep': the method's no-grad input step "
          "(LRErr: base MAE reconstruction + attention maps); 'step': forward+losses+backward+optimizer; "
          f"'score': prep + eval forward. Ratios: {against} img/s / the method's (how much slower it is)")
    print(f"{'device':<7}{'batch':>6}{'steps':>6}{'method':>15}{'prep s':>8}{'step s':>8}{'train img/s':>13}"
          f"{'score img/s':>13}{'train ×':>9}{'score ×':>9}{'peak MB':>14}")
    for run in runs:
        base = run[against]
        for name, r in run.items():
            memory = f"{r['peak_mb']:.0f}" + (f" (+{r['added_mb']:.0f})" if "added_mb" in r else "")
            train, score = (base[k] / r[k] for k in ("train_img_s", "score_img_s"))
            print(f"{r['device']:<7}{r['batch']:>6}{r['steps']:>6}{name:>15}{r['prep_s']:>8.3f}"
                  f"{r['step_s']:>8.3f}{r['train_img_s']:>13.1f}{r['score_img_s']:>13.1f}"
                  f"{train:>8.2f}x{score:>8.2f}x{memory:>14}")
    if args.layouts:
        print("the networks' layout: NHWC (channels-last, what the stages run) against NCHW (before it), "
              "same device, batch and steps; gain = NCHW time / NHWC time")
        print(f"{'device':<7}{'method':>15}{'NCHW step s':>13}{'NHWC step s':>13}{'step gain':>11}"
              f"{'NCHW score/s':>14}{'NHWC score/s':>14}{'score gain':>12}")
        for device, run in zip(devices, runs):
            batch = args.gpu_batch if device == "cuda" else args.cpu_batch
            steps = args.gpu_steps if device == "cuda" else args.steps
            for name, r in run.items():
                old = run_isolated(det_case, name, device, batch, args.warmup, steps, True)
                print(f"{device:<7}{name:>15}{old['step_s']:>13.3f}{r['step_s']:>13.3f}"
                      f"{old['step_s'] / r['step_s']:>10.2f}x{old['score_img_s']:>14.1f}"
                      f"{r['score_img_s']:>14.1f}{r['score_img_s'] / old['score_img_s']:>11.2f}x")


def moco_case(device_name: str, batch: int, warmup: int, steps: int) -> dict:
    """One train-moco step, in a fresh process, timed as `det_case` times a method's."""
    from lrerr_tools.moco.augment import aug_plus
    from lrerr_tools.moco.model import Moco
    from lrerr_tools.moco.train import MocoTrainConfig
    from lrerr_tools.normalization import normalize_uint8
    from lrerr_tools.training import (
        amp_dtype,
        autocast,
        backward_step,
        build_optimizer,
        grad_scaler,
        seeded_generator,
    )

    device = torch.device(device_name)
    rss_before = _peak_rss_mb()
    torch.manual_seed(0)
    cfg = MocoTrainConfig(shard_dir="", out="", batch_size=batch)
    splits = next(n for n in (cfg.bn_splits, 4, 2, 1) if batch % n == 0)  # the most that divide the batch
    model = Moco(queue_size=cfg.queue_size, bn_splits=splits)
    model.to(device).train()
    faces = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8).to(device)
    dtype = amp_dtype(device, amp=True)
    scaler = grad_scaler(device, dtype)
    optimizer = build_optimizer(model, "sgd", cfg.scaled_lr, weight_decay=cfg.weight_decay)
    generator, state = seeded_generator(0), {}

    def prepare():
        state["inputs"] = {name: normalize_uint8(aug_plus(faces, 224, generator) * 255, Moco.mean, Moco.std)
                           for name in ("query", "key")}
        state["inputs"]["shuffle"] = torch.randperm(batch, generator=generator).to(device)

    def train_step():
        with autocast(device, dtype):
            loss = model(state["inputs"])["loss"]
        backward_step(loss, optimizer, scaler)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prep_s, step_s = _time_steps([prepare, train_step], device, warmup, steps)
    result = {"method": "moco", "device": device_name, "batch": batch, "steps": steps, "prep_s": prep_s,
              "step_s": step_s, "train_img_s": batch / (prep_s + step_s)}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_mb"] = _peak_rss_mb()
        result["added_mb"] = result["peak_mb"] - rss_before
    return result


def bench_moco(args: argparse.Namespace) -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}")
    print("224 px, random weights; medians. 'prep': MoCo's two aug-plus views (none for Xception); 'step': "
          "forward+loss+backward+optimizer (MoCo: and the key encoder). Ratio: Xception img/s / MoCo's")
    print(f"{'device':<7}{'batch':>6}{'steps':>6}{'run':>10}{'prep s':>8}{'step s':>8}{'train img/s':>13}"
          f"{'×':>8}{'peak MB':>14}")
    for device in devices:
        batch = args.gpu_batch if device == "cuda" else args.cpu_batch
        steps = args.gpu_steps if device == "cuda" else args.steps
        base = run_isolated(det_case, BASELINE, device, batch, args.warmup, steps)
        moco = run_isolated(moco_case, device, batch, args.warmup, steps)
        for r in (base, moco):
            memory = f"{r['peak_mb']:.0f}" + (f" (+{r['added_mb']:.0f})" if "added_mb" in r else "")
            print(f"{device:<7}{batch:>6}{steps:>6}{r['method']:>10}{r['prep_s']:>8.3f}{r['step_s']:>8.3f}"
                  f"{r['train_img_s']:>13.1f}{base['train_img_s'] / r['train_img_s']:>7.2f}x{memory:>14}")


def run_case(method: str, shards: str, mae: str, out: str, overrides: dict) -> dict:
    """One whole `train-det` run, in a fresh process: the wall time of each epoch, from the
    start of its training steps to the end of its validation pass."""
    import lrerr_tools.detector.train as train_det

    ends, starts = [], []
    real_train_epoch, real_validate = train_det._Trainer.train_epoch, train_det._Trainer.validate

    def train_epoch(self):
        starts.append(time.perf_counter())
        return real_train_epoch(self)

    def validate(self):
        result = real_validate(self)
        ends.append(time.perf_counter())
        return result

    train_det._Trainer.train_epoch, train_det._Trainer.validate = train_epoch, validate
    options = {"backbone": "legacy_xception", **overrides.pop("options", {})}
    if method == "lrerr":
        options["random_extractor"] = True  # no weights are downloaded; the cost is the same
    cfg = train_det.DetTrainConfig(shard_dir=shards, out=out, method=method, options=options,
                                   parents={"mae": mae} if method == "lrerr" else {}, pretrained=False,
                                   **overrides)
    manifest = train_det.run(cfg)
    return {"epochs": [end - start for start, end in zip(starts, ends)],
            "val_faces": manifest.counts["val_real"] + manifest.counts["val_fake"]}


def bench_det_runs(args: argparse.Namespace) -> None:
    """Whole 3-epoch runs of LRErr (the cache on and off) and Xception on the same shards;
    `--repeats` rounds of all of them in turn, so that a slow minute of a shared machine falls
    on one round, and the medians are printed."""
    import tempfile
    from dataclasses import fields
    from pathlib import Path

    from lrerr_tools.detector.train import DetTrainConfig
    from lrerr_tools.extract import ExtractConfig
    from lrerr_tools.extract import run as run_extract
    from lrerr_tools.landmarks import LandmarksConfig
    from lrerr_tools.landmarks import run as run_landmarks
    from lrerr_tools.mae.train import MaeTrainConfig
    from lrerr_tools.mae.train import run as run_mae
    from lrerr_tools.shard import ShardConfig
    from lrerr_tools.shard import run as run_shard
    from lrerr_tools.synth import make_ffpp_sample

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.gpu_batch if device == "cuda" else args.cpu_batch
    common = dict(epochs=args.epochs, iters_per_epoch=args.iters, batch_size=batch, workers=args.workers,
                  device=device)
    variants = {"xception": ("xception", {}), "lrerr": ("lrerr", {})}
    if "cache_gb" in {f.name for f in fields(DetTrainConfig)}:  # the code before the cache had none
        variants["lrerr, no cache"] = ("lrerr", {"cache_gb": 0.0})
    from lrerr_tools.methods import get_method

    if "mae_precision" in {o.name for o in get_method("lrerr").options}:  # the code before had float32 only
        variants["lrerr, float32 MAE"] = ("lrerr", {"options": {"mae_precision": "float32"}})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_ffpp_sample(tmp / "sample", n_pairs=3, methods=("Deepfakes", "FaceSwap"),
                                n_frames=args.frames + 4)
        run_extract(ExtractConfig(root=str(root), dataset="ffpp", splits=str(root / "splits"),
                                  out=str(tmp / "extract"), frames=args.frames, jobs=2))
        run_landmarks(LandmarksConfig(extract_dir=str(tmp / "extract"), out=str(tmp / "landmarks"), jobs=2))
        run_shard(ShardConfig(landmarks=str(tmp / "landmarks"), out=str(tmp / "shards")))
        run_mae(MaeTrainConfig(shard_dir=str(tmp / "shards"), out=str(tmp / "mae"), preset="base", epochs=1,
                               batch_size=4, max_steps=1, workers=0, device=device))
        rounds = [{name: run_isolated(run_case, method, str(tmp / "shards"), str(tmp / "mae"),
                                      str(tmp / f"{round_}-{name}".replace(", ", "-").replace(" ", "-")),
                                      {**common, **overrides})
                   for name, (method, overrides) in variants.items()} for round_ in range(args.repeats)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}, device {device}")
    val = rounds[0][BASELINE]["val_faces"]
    print(f"{args.epochs} epochs x {args.iters} steps x batch {batch} = {args.iters * batch} train faces an "
          f"epoch, {val} val faces; legacy_xception (random weights), base MAE; epoch = train + val, s; "
          f"medians of {args.repeats} rounds, each ratio against the baseline of its own round")

    def phases(epochs: list[float]) -> tuple[float, float, float]:
        return epochs[0], statistics.mean(epochs[1:] or epochs), sum(epochs)

    print(f"{'run':<20}{'cold s':>9}{'warm s':>9}{'total s':>9}{'cold ×':>9}{'warm ×':>9}   warm × per round")
    for name in variants:
        times = [phases(r[name]["epochs"]) for r in rounds]
        ratios = [[t / b for t, b in zip(phases(r[name]["epochs"]), phases(r[BASELINE]["epochs"]))]
                  for r in rounds]
        cold, warm, total = (statistics.median(column) for column in zip(*times))
        cold_x, warm_x, _ = (statistics.median(column) for column in zip(*ratios))
        each = " ".join(f"{r[1]:.2f}" for r in ratios)
        print(f"{name:<20}{cold:>9.2f}{warm:>9.2f}{total:>9.2f}{cold_x:>8.2f}x{warm_x:>8.2f}x   {each}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    models = parser.add_subparsers(dest="model", required=True)
    mae = models.add_parser("mae", help="train-mae step vs the encoder on all patches")
    mae.add_argument("--presets", default="tiny,base", help="comma-separated MAE presets")
    mae.add_argument("--steps", type=int, default=5, help="timed steps on the CPU")
    mae.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    mae.add_argument("--tiny-batch", type=int, default=32, help="CPU batch for the tiny preset")
    mae.add_argument("--cpu-batch", type=int, default=8, help="CPU batch for the other presets")
    mae.add_argument("--gpu-batch", type=int, default=64, help="batch on a GPU")
    mae.add_argument("--gpu-steps", type=int, default=20, help="timed steps on a GPU")
    mae.set_defaults(run=bench_mae)
    det = models.add_parser("det", help="train-det step and scoring of each method vs the Xception baseline")
    det.add_argument("--steps", type=int, default=3, help="timed steps on the CPU")
    det.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    det.add_argument("--cpu-batch", type=int, default=8, help="batch on the CPU")
    det.add_argument("--gpu-batch", type=int, default=32, help="batch on a GPU (the paper's)")
    det.add_argument("--gpu-steps", type=int, default=20, help="timed steps on a GPU")
    det.add_argument("--methods", default="", help="comma-separated methods (default: every registered one)")
    det.add_argument("--against", default=BASELINE,
                     help="the method the ratios are against, e.g. sclkd-teacher for SCL-KD's student")
    det.add_argument("--layouts", action="store_true",
                     help="also time each method's network in NCHW, against the NHWC the stages use")
    det.add_argument("--runs", action="store_true",
                     help="time whole train-det runs (epochs with validation) instead of single steps")
    det.add_argument("--epochs", type=int, default=3, help="--runs: epochs per run")
    det.add_argument("--iters", type=int, default=3, help="--runs: steps per epoch")
    det.add_argument("--frames", type=int, default=12, help="--runs: faces per video of the sample")
    det.add_argument("--workers", type=int, default=0, help="--runs: DataLoader workers")
    det.add_argument("--repeats", type=int, default=3, help="--runs: rounds of every run, in turn")
    det.set_defaults(run=lambda args: (bench_det_runs if args.runs else bench_det)(args))
    moco = models.add_parser("moco", help="train-moco step vs a supervised Xception step")
    moco.add_argument("--steps", type=int, default=3, help="timed steps on the CPU")
    moco.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    moco.add_argument("--cpu-batch", type=int, default=8, help="batch on the CPU")
    moco.add_argument("--gpu-batch", type=int, default=256, help="batch on a GPU (MoCo's)")
    moco.add_argument("--gpu-steps", type=int, default=20, help="timed steps on a GPU")
    moco.set_defaults(run=bench_moco)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
