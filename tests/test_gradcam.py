"""Grad-CAM (`gradcam.py`) of every registered method's tiny shared run, on the layer the method
names, and the choice of the faces `score --cam` shows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from test_shard import shared_png_shards
from test_train_det import shared_detector
from torch.utils.data import default_collate

from lrerr_tools.detector.checkpoint import load_detector
from lrerr_tools.gradcam import cam_picks, grad_cam
from lrerr_tools.methods import all_methods
from lrerr_tools.normalization import normalize_uint8
from lrerr_tools.shard_dataset import ShardDataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def real_and_fake(ffpp_root, tmp_path_factory):
    """The test split's first real face and first fake, as one shard batch."""
    dataset = ShardDataset(shared_png_shards(ffpp_root, tmp_path_factory), split="test", fields=("key_mask",))
    real, fake = (int(np.flatnonzero(dataset.labels == label)[0]) for label in (0, 1))
    return default_collate([dataset[real], dataset[fake]])


def scaled_to_faces(evidence: np.ndarray) -> np.ndarray:
    """(B, h, w) maps, each resized to 224 px (bilinear) and then scaled to [0, 1]."""
    faces = np.stack([cv2.resize(e, (224, 224)) for e in evidence])
    faces -= faces.min((1, 2), keepdims=True)
    top = faces.max((1, 2), keepdims=True)
    return faces / np.where(top > 0, top, 1)


def autograd_cam(method, net, context, batch) -> np.ndarray:
    """Grad-CAM by its definition, with torch.autograd rather than pytorch_grad_cam's hooks: the
    layer's map A, weighted by the mean over positions of d logit / dA, summed, ReLU."""
    kept = {}
    layer = method.cam_layer(net)
    handle = layer.register_forward_hook(lambda module, inputs, output: kept.update(map=output))
    try:
        inputs = method.inputs(net, context, batch, CPU, None)
        logit = net({**inputs, "images": inputs["images"].requires_grad_()})["logit"]
    finally:
        handle.remove()
    [grad] = torch.autograd.grad(logit.sum(), kept["map"])
    evidence = (grad.mean((2, 3), keepdim=True) * kept["map"]).sum(1).clamp(min=0)
    return scaled_to_faces(evidence.detach().numpy())


@pytest.mark.parametrize("method", sorted(all_methods()))
def test_each_method_maps_its_fake_logit_over_the_face(method, real_and_fake, ffpp_root, tmp_path_factory):
    loaded = load_detector(shared_detector(method, ffpp_root, tmp_path_factory), CPU)
    layer = loaded.method.cam_layer(loaded.net)
    shapes = []
    handle = layer.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape))
    try:
        cam = grad_cam(loaded.method, loaded.net, loaded.context, real_and_fake, CPU)
    finally:
        handle.remove()
    [shape] = shapes  # the layer ran once, in the scored forward pass
    assert len(shape) == 4 and shape[0] == 2 and min(shape[2:]) > 1  # a spatial map of each face
    assert cam.shape == (2, 224, 224) and np.isfinite(cam).all()
    assert cam.min() >= 0 and cam.max() <= 1
    # Face by face, the definition's map of the logit `score` reports. That a map differs between
    # faces is checked below on a head known to give positive evidence: a tiny run's evidence for
    # fake can be negative everywhere on every face (xception, lrerr, sclkd and crl here), and
    # its maps then all 0 (the ReLU), or one positive unit at the same place on two faces.
    expected = autograd_cam(loaded.method, loaded.net, loaded.context, real_and_fake)
    assert np.abs(cam - expected).max() < 1e-4


def test_behind_a_pooled_linear_head_grad_cam_is_the_class_activation_map(real_and_fake, ffpp_root,
                                                                           tmp_path_factory):
    """logit = w · mean(A) + b makes every position's gradient w / (h·w), so Grad-CAM is
    ReLU(Σ_k w_k A_k) (Zhou et al.'s CAM), scaled to [0, 1] and resized to the face. With every
    w_k > 0 the evidence is positive wherever A is, so neither map is flat."""
    loaded = load_detector(shared_detector("xception", ffpp_root, tmp_path_factory), CPU)
    backbone = loaded.net.backbone
    head = backbone.get_classifier()
    with torch.no_grad():
        head.weight.abs_()
        images = normalize_uint8(real_and_fake["image"], loaded.net.mean, loaded.net.std)
        maps = backbone.forward_features(images)  # (2, C, 7, 7)
        expected = scaled_to_faces(torch.einsum("c,bchw->bhw", head.weight[0], maps).clamp(min=0).numpy())
    cam = grad_cam(loaded.method, loaded.net, loaded.context, real_and_fake, CPU)
    assert np.abs(cam - expected).max() < 1e-4
    assert cam.max((1, 2)).min() > 0.99 and np.abs(cam[0] - cam[1]).max() > 0.05


def test_the_faces_shown_are_the_most_confident_of_each_class_and_the_worst_mistakes():
    labels = np.array([1, 1, 1, 0, 0, 0, 1])
    probs = np.array([0.9, 0.2, 0.95, 0.1, 0.6, 0.3, 0.9])
    picks = cam_picks(probs, labels, 2)
    assert picks == {"most confident fakes": [2, 0], "most confident reals": [3, 5],
                     "worst mistakes": [1, 4]}
    everything = cam_picks(probs, labels, 100)  # more than the split holds: all there are
    assert everything["most confident fakes"] == [2, 0, 6, 1] and everything["worst mistakes"] == [1, 4]
    assert cam_picks(np.array([0.2, 0.7]), np.array([0, 1]), 3)["worst mistakes"] == []
