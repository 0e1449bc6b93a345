"""`--method sclkd-teacher`: SCL-KD's teacher (methods-spec.md, SCL-KD), the MoCo encoder of
a `train-moco` run (`--init RUN`) with a new fake logit, trained with BCE on the labelled
faces (`train-det --label-fraction F`).

The encoder starts from the MoCo run's query encoder (its last epoch: that stage selects
nothing) and is fine-tuned at `encoder_lr_scale` × the run's lr, or frozen with
`--linear-probe` (its batch-norm statistics too), which trains the classifier alone. The
encoder's width must be the MoCo run's; the network is fully convolutional, so it reads the
shards' faces at their size whatever crop MoCo trained on. Its state dict holds every weight,
so `score` of a teacher reads the MoCo run only to check it is the one trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrerr_tools.blocks.xception import XceptionLayers
from lrerr_tools.errors import LrerrError
from lrerr_tools.methods import register
from lrerr_tools.methods.base import Method, Option, Parent, check_fraction
from lrerr_tools.moco.model import Moco
from lrerr_tools.normalization import normalize_uint8
from lrerr_tools.run_dir import last_checkpoint
from lrerr_tools.training import load_checkpoint

ENCODER_PREFIX = "encoder_q.backbone."  # the MoCo checkpoint's query encoder, without its MLP head


class TeacherNet(nn.Module):
    """A width-scaled Xception (MoCo's encoder, same parameter names), global average pooling
    and one fake logit; `forward({"images"})` → {"logit": (B,)}."""

    mean, std = Moco.mean, Moco.std

    def __init__(self, width: float, linear_probe: bool):
        super().__init__()
        self.encoder = XceptionLayers(width)
        self.classifier = nn.Linear(self.encoder.channels["features"], 1)
        self.linear_probe = linear_probe
        if linear_probe:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherNet:
        super().train(mode)
        if self.linear_probe:
            self.encoder.eval()  # a frozen encoder keeps its batch-norm statistics as well
        return self

    def forward(self, inputs: dict) -> dict:
        return {"logit": self.classifier(self.encoder(inputs["images"]).mean((2, 3))).flatten()}


@dataclass
class MocoEncoderWeights:
    """The teacher's context: the query encoder of its MoCo run."""

    sha256: str
    width: float
    state: dict


@register
class SclkdTeacher(Method):
    name = "sclkd-teacher"
    title = "SCL-KD teacher"
    summary = "the MoCo encoder of a train-moco run (--init) with a fake logit, fine-tuned with BCE"
    parents = (Parent("init", "train-moco",
                      "the train-moco run whose query encoder the teacher starts from"),)
    options = (Option("width", float, 1.0, "channel multiplier of the encoder: the MoCo run's --width",
                      check=check_fraction),
               Option("encoder_lr_scale", float, 0.1, "the encoder's lr as a share of --lr (the classifier "
                      "trains at --lr)", check=check_fraction),
               Option("linear_probe", bool, False, "freeze the encoder and train the classifier alone"))

    def build(self) -> TeacherNet:
        return TeacherNet(self.settings["width"], self.settings["linear_probe"])

    def caveats(self, pretrained: bool, weights: str | None) -> list[str]:
        return ["linear probe"] if self.settings["linear_probe"] else []

    def check_start(self, pretrained: bool, weights: str | None) -> None:
        if weights is not None:
            raise LrerrError("--method sclkd-teacher starts from its --init MoCo run: --weights has no "
                             "place here")

    def context(self, parents: dict, seed: int, device) -> MocoEncoderWeights:
        run = parents["init"]
        width = run.manifest.extra["model"]["width"]
        if width != self.settings["width"]:
            raise LrerrError(f"the MoCo run {run.path} has --width {width}, the teacher "
                             f"{self.settings['width']} — pass --width {width}")
        model = load_checkpoint(last_checkpoint(run.path))["model"]
        state = {k[len(ENCODER_PREFIX):]: v for k, v in model.items() if k.startswith(ENCODER_PREFIX)}
        return MocoEncoderWeights(run.sha256, width, state)

    def init_from_parents(self, net: TeacherNet, context: MocoEncoderWeights) -> None:
        net.encoder.load_state_dict(context.state)

    def lr_scale(self, param_name: str) -> float:
        return self.settings["encoder_lr_scale"] if param_name.startswith("encoder.") else 1.0

    def inputs(self, net, context, batch: dict, device, dtype, frozen=None) -> dict:
        return {"images": normalize_uint8(batch["image"].to(device, non_blocking=True), net.mean, net.std)}

    def cam_layer(self, net: TeacherNet) -> nn.Module:
        """The encoder's stride-32 map (Xception's act4), which the classifier pools."""
        return net.encoder.act4

    def losses(self, outputs: dict, inputs: dict, labels: torch.Tensor, dist) -> dict:
        bce = F.binary_cross_entropy_with_logits(outputs["logit"].float(), labels)
        return {"total": bce, "bce": bce}
