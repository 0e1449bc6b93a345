"""`lrerr-tools export`: a finished detector run as one graph, for deployment without this
package, and the model `predict --detector FILE` runs.

    FILE          TorchScript (torch.jit.trace) or ONNX (opset 17, onnxruntime runs it)
    FILE.json     what `predict` needs besides the graph: the run's provenance, its val
                  calibration, and the path its training faces took (extract config, shard
                  codec); and the file's sha256, so a sidecar is never paired with another graph

The graph's input `faces` is aligned faces as extract and `predict` crop them: uint8 RGB,
(B, 3, 224, 224), values 0-255, unnormalised (the normalisation is inside). Its output
`logit` is (B,) float32; p(fake) = sigmoid(logit). LRErr's graph holds the frozen MAE and
the frozen extractor too, with one key-region mask for every face, drawn from the run seed
(`Reconstructor.fixed_mask`), and the MAE at float32: a run's own masks are seeded by a hash
of each face's bytes, which no graph computes, and its MAE may run in bfloat16, so an exported
LRErr scores a face close to, not exactly as, the run.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrerr_tools import __version__
from lrerr_tools.atomic_io import atomic_write_bytes, atomic_write_json, sha256_file
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.detector.predict import EVAL_PRECISION
from lrerr_tools.errors import LrerrError
from lrerr_tools.predict_media import Scorer, training_path

FORMATS = ("torchscript", "onnx")
OPSET = 17
TRACE_BATCH = 2  # traced at 2 faces; the batch size stays free (dynamic in ONNX)
CHECK_BATCH, TOLERANCE = 3, 1e-4  # each export is read back and checked on 3 other faces
META_SUFFIX = ".json"


class DetectorGraph(nn.Module):
    """uint8 faces (B, 3, S, S) → logits (B,), through the method's own `inputs` and network,
    with its frozen part (`Method.graph_frozen`) computed inside."""

    def __init__(self, method, net: nn.Module, context):
        super().__init__()
        self.net = net
        self.method, self.context = method, context

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        frozen = self.method.graph_frozen(self.net, self.context, faces)
        inputs = self.method.inputs(self.net, self.context, {"image": faces}, faces.device, None, frozen)
        return self.net(inputs)["logit"].float()


def example_faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """`n` random uint8 faces: what a graph is traced and checked with."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def export(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """Write the detector run `run_dir` as a `fmt` graph to `out` and its sidecar beside it;
    refuse a graph whose logits, read back, differ from PyTorch's by more than TOLERANCE on
    CHECK_BATCH faces (another batch size than it was traced with)."""
    if fmt not in FORMATS:
        raise LrerrError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    out = Path(out)
    if out.is_dir():
        raise LrerrError(f"--out {out}: is a folder; name the file to write")
    loaded = load_detector(run_dir, torch.device("cpu"))
    training = training_path(loaded.run)  # refused now if the provenance predict needs is gone
    if loaded.method.face_fields(loaded.context):
        raise LrerrError(f"{loaded.run.path}: {loaded.method.name} reads each face's own "
                         f"{', '.join(loaded.method.face_fields(loaded.context))}, from dlib's points on the "
                         "face, which no exported graph computes — not exported")
    graph = DetectorGraph(loaded.method, loaded.net, loaded.context).eval()
    size = int(training["extract"]["crop_size"])
    check = example_faces(CHECK_BATCH, size, seed=1)
    with torch.no_grad():
        # Run once before tracing, so what a method caches (LRErr's fixed mask) is made as a
        # tensor, not traced from the faces' shape.
        expected = graph(check).numpy()
    atomic_write_bytes(out, graph_bytes(graph, example_faces(TRACE_BATCH, size), fmt))
    gap = float(np.abs(load_graph(out, fmt, torch.device("cpu"))(check) - expected).max())
    if not gap <= TOLERANCE:
        out.unlink()
        raise LrerrError(f"the {fmt} graph's logits differ from PyTorch's by up to {gap:.2g} (more than "
                         f"{TOLERANCE:g}) on {CHECK_BATCH} faces — not exported")
    run = loaded.run
    atomic_write_json(sidecar(out), {
        "version": __version__, "format": fmt, "sha256": sha256_file(out),
        "input": {"name": "faces", "dtype": "uint8", "shape": ["batch", 3, size, size],
                  "layout": "RGB, 0-255, aligned as extract crops them, unnormalised"},
        "output": {"name": "logit", "dtype": "float32", "shape": ["batch"], "prob": "sigmoid(logit)"},
        "detector": {"path": str(run.path.resolve()), "sha256": run.sha256, "method": loaded.method.name,
                     "epoch": run.manifest.extra["best"]["epoch"], "precision": EVAL_PRECISION},
        "calibration": run.manifest.extra.get("calibration"),
        "training": training, "check": {"faces": CHECK_BATCH, "max_logit_difference": gap},
    })
    return out


def graph_bytes(graph: DetectorGraph, faces: torch.Tensor, fmt: str) -> bytes:
    buffer = io.BytesIO()
    # torch calls TorchScript deprecated, and the tracer warns of every Python-side shape
    # check it records as a constant; the read-back check on other faces is what tells.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if fmt == "torchscript":
            # check_trace off: it reruns the graph and compares, which `export` does after
            torch.jit.save(torch.jit.trace(graph, (faces,), check_trace=False), buffer)
        else:
            torch.onnx.export(graph, (faces,), buffer, dynamo=False, opset_version=OPSET,
                              input_names=["faces"], output_names=["logit"],
                              dynamic_axes={"faces": {0: "batch"}, "logit": {0: "batch"}})
    return buffer.getvalue()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + META_SUFFIX)


def read_sidecar(path: Path) -> dict:
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise LrerrError(f"{path}: no {meta_path.name} beside it — predict takes an exported model with the "
                         "sidecar `lrerr-tools export` writes (or give the train-det run)")
    meta = json.loads(meta_path.read_text())
    if meta.get("sha256") != sha256_file(path):
        raise LrerrError(f"{path}: is not the graph {meta_path.name} describes (sha256 differs) — "
                         "export it again")
    return meta


def load_graph(path: Path, fmt: str, device: torch.device):
    """A function from uint8 faces (B, 3, S, S) to logits (B,) as numpy float32."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch calls TorchScript deprecated
            module = torch.jit.load(str(path), map_location=device).eval()

        def run(faces: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return module(faces.to(device)).float().cpu().numpy()

        return run
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    session = ort.InferenceSession(str(path), providers=[*providers, "CPUExecutionProvider"])
    return lambda faces: session.run(None, {"faces": faces.numpy()})[0]


def exported_scorer(path: Path, device: torch.device) -> Scorer:
    """An exported graph as `predict`'s model: its faces need no shard fields."""
    meta = read_sidecar(path)
    logits_of = load_graph(path, meta["format"], device)

    def probs(items: list[dict], batch_size: int) -> list[float]:
        out = []
        for start in range(0, len(items), batch_size):
            faces = torch.stack([item["image"] for item in items[start:start + batch_size]])
            out += torch.sigmoid(torch.from_numpy(logits_of(faces))).tolist()
        return out

    provenance = {**meta["detector"], "exported": {"path": str(path.resolve()), "sha256": meta["sha256"],
                                                   "format": meta["format"]}}
    return Scorer(provenance, (), (), meta["training"], meta["calibration"], probs)
