"""`--method sclkd`: SCL-KD's student (methods-spec.md, SCL-KD), a compact timm network
(efficientnet_b0, or resnet18) distilled from a frozen teacher run (`--teacher RUN`, a
`sclkd-teacher` run) on every train face, labelled or not (`train-det --label-fraction F`):
α·T²·KL + (1 − α)·BCE on the labelled faces, T²·KL alone on the others
(`blocks/losses.binary_kd_loss`).

The teacher is the method's context, never part of the student's state dict. Its logit is a
function of the face alone, so it is the method's frozen value, cached per face in the run
(`detector/frozen_cache.py`) and computed once however many epochs see the face. `score`
needs no teacher: the student `scores_alone`, so scoring builds no context and does not read
the teacher run, which may be deleted once the student is trained.
"""

from __future__ import annotations

import torch
from torch import nn

from lrerr_tools.blocks.losses import binary_kd_loss
from lrerr_tools.blocks.timm_classifier import TimmClassifier, load_pretrained
from lrerr_tools.detector.checkpoint import LoadedDetector, load_detector
from lrerr_tools.detector.frozen_cache import rounded
from lrerr_tools.detector.predict import EVAL_PRECISION
from lrerr_tools.errors import LrerrError
from lrerr_tools.methods import get_method, register
from lrerr_tools.methods.base import Method, Option, Parent
from lrerr_tools.normalization import normalize_uint8

TEACHER = "sclkd-teacher"


def _check_alpha(alpha: float) -> str | None:
    return None if 0 <= alpha <= 1 else "must be in [0, 1]"


def _check_temperature(temperature: float) -> str | None:
    return None if temperature > 0 else "must be positive"


@register
class SclkdStudent(Method):
    name = "sclkd"
    title = "SCL-KD"
    summary = ("a compact timm student distilled from a sclkd-teacher run (--teacher) on labelled and "
               "unlabelled faces")
    parents = (Parent("teacher", "train-det", "the sclkd-teacher run whose logits the student learns"),)
    options = (Option("backbone", str, "efficientnet_b0", "timm model of the student: efficientnet_b0 or "
                      "resnet18 (the spec's), or another timm name"),
               Option("alpha", float, 0.5, "weight of the KL term on labelled faces (BCE: 1 − alpha)",
                      check=_check_alpha),
               Option("temperature", float, 4.0, "distillation temperature T", check=_check_temperature))
    loss_terms = ("kl", "bce")
    uses_unlabelled = True
    scores_alone = True

    def build(self) -> TimmClassifier:
        return TimmClassifier(self.settings["backbone"])

    def init(self, net: TimmClassifier, pretrained: bool, weights: str | None) -> None:
        load_pretrained(net.backbone, net.name, pretrained, weights)

    def context(self, parents: dict, seed: int, device) -> LoadedDetector:
        run = parents["teacher"]
        method = run.manifest.config.get("method")
        if method != TEACHER:
            raise LrerrError(f"--teacher {run.path}: a {method} run, not a {TEACHER} run — train one with "
                             f"train-det --method {TEACHER} --init MOCO_RUN")
        return load_detector(run.path, device)

    def example_context(self, device) -> LoadedDetector:
        """A randomly initialised full-width teacher, standing in for a teacher run."""
        teacher = get_method(TEACHER).resolve({})
        net = teacher.network().to(device).eval().requires_grad_(False)
        return LoadedDetector(method=teacher, net=net, context=teacher.example_context(device), run=None,
                              parents={})

    def frozen_identity(self, net, context: LoadedDetector | None) -> dict | None:
        """The teacher's logit follows from the face and the teacher run (its manifest hash);
        None when scoring, where no teacher is loaded."""
        if context is None:
            return None
        return {"method": self.name, "teacher_sha256": context.run.sha256, "precision": EVAL_PRECISION}

    @torch.no_grad()
    def frozen(self, net, context: LoadedDetector, batch: dict, device) -> list[torch.Tensor]:
        """The teacher's logit (B, 1), in eval mode at full precision."""
        teacher = context.method
        inputs = teacher.inputs(context.net, context.context, batch, device, None)
        return [context.net(inputs)["logit"].float().view(-1, 1)]

    def inputs(self, net, context: LoadedDetector | None, batch: dict, device, dtype, frozen=None) -> dict:
        images = normalize_uint8(batch["image"].to(device, non_blocking=True), net.mean, net.std)
        if context is None:  # scoring: the student alone
            return {"images": images}
        logits = rounded(self.frozen(net, context, batch, device)) if frozen is None else frozen
        labelled = batch.get("labelled", torch.ones(len(images), dtype=torch.bool))
        return {"images": images, "teacher_logit": logits[0].to(device, torch.float32).flatten(),
                "labelled": labelled.to(device)}

    def cam_layer(self, net: TimmClassifier) -> nn.Module:
        """The student's last feature map (efficientnet_b0's bn2), before its pooled head."""
        return net.last_map()

    def losses(self, outputs: dict, inputs: dict, labels: torch.Tensor, dist) -> dict:
        return binary_kd_loss(outputs["logit"], inputs["teacher_logit"], labels, inputs["labelled"],
                              self.settings["alpha"], self.settings["temperature"])
