"""`export`: every registered method's tiny shared run as one graph, read back and checked
against PyTorch; `predict --detector FILE` runs it."""

from __future__ import annotations

import json

import pytest
import torch
from jsonschema import validate
from test_extract_bad_input import clip, invoke
from test_train_det import shared_detector

from lrerr_tools.atomic_io import atomic_write_json
from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.errors import LrerrError
from lrerr_tools.export import DetectorGraph, example_faces, export, load_graph
from lrerr_tools.manifest import schema
from lrerr_tools.methods import all_methods
from lrerr_tools.predict_media import predict, run_scorer
from lrerr_tools.synth import write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_each_method_exports_to_torchscript_and_reads_back(method, ffpp_root, tmp_path_factory, tmp_path):
    run = shared_detector(method, ffpp_root, tmp_path_factory)
    path = export(run, "torchscript", tmp_path / "model.pt")
    meta = json.loads((tmp_path / "model.pt.json").read_text())
    assert meta["format"] == "torchscript" and meta["detector"]["method"] == method
    assert meta["check"]["max_logit_difference"] <= 1e-4
    assert meta["training"]["extract"]["crop_size"] == 224 and meta["training"]["shard_codec"] == "png"

    faces = example_faces(4, 224, seed=7)  # neither the traced batch nor the checked one
    loaded = load_detector(run, CPU)
    with torch.no_grad():
        expected = DetectorGraph(loaded.method, loaded.net, loaded.context).eval()(faces).numpy()
    got = load_graph(path, "torchscript", CPU)(faces)
    assert got.shape == (4,) and abs(got - expected).max() <= 1e-4
    if loaded.method.frozen_identity(loaded.net, loaded.context) is None:
        # no frozen part: the graph is the run's own scoring, face for face
        items = [{"image": face, "label": -1, "video_id": "x", "frame_index": i, "method": ""}
                 for i, face in enumerate(faces)]
        probs = run_scorer(run, CPU).probs(items, 2)
        assert torch.sigmoid(torch.from_numpy(got)).tolist() == pytest.approx(probs, abs=1e-6)


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_each_method_exports_to_onnx_and_onnxruntime_gives_its_logits(method, ffpp_root, tmp_path_factory,
                                                                        tmp_path):
    run = shared_detector(method, ffpp_root, tmp_path_factory)
    path = export(run, "onnx", tmp_path / "model.onnx")
    loaded = load_detector(run, CPU)
    faces = example_faces(4, 224, seed=7)
    with torch.no_grad():
        expected = DetectorGraph(loaded.method, loaded.net, loaded.context).eval()(faces).numpy()
    assert abs(load_graph(path, "onnx", CPU)(faces) - expected).max() <= 1e-4


def test_predict_runs_an_exported_model(ffpp_root, tmp_path_factory, tmp_path):
    run = shared_detector("xception", ffpp_root, tmp_path_factory)
    video = write_video(tmp_path / "v.mp4", clip(6))
    result = invoke("export", str(run), "--out", str(tmp_path / "x.pt"))
    assert result.exit_code == 0 and result.output.startswith(f"export complete: {tmp_path / 'x.pt'}")
    out = tmp_path / "out"
    result = invoke("predict", str(video), "--detector", str(tmp_path / "x.pt"), "--out", str(out),
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "predictions.json").read_text())
    validate(document, schema("predictions"))
    assert document["detector"]["exported"]["format"] == "torchscript"
    meta = json.loads((tmp_path / "x.pt.json").read_text())
    assert document["detector"]["sha256"] == meta["detector"]["sha256"]  # the run's, beside the file's
    [by_run] = predict([video], run, device="cpu", progress=False)
    exported = [f["prob"] for f in document["inputs"][0]["faces"]]
    assert len(exported) == 4 and exported == pytest.approx([f.prob for f in by_run.faces], abs=1e-6)

    atomic_write_json(tmp_path / "x.pt.json", {**meta, "sha256": "0" * 64})
    with pytest.raises(LrerrError, match="is not the graph x.pt.json describes"):
        predict([video], tmp_path / "x.pt", device="cpu", progress=False)
    with pytest.raises(LrerrError, match="--format must be one of torchscript, onnx"):
        export(run, "tflite", tmp_path / "m")
