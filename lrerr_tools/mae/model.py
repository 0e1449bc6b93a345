"""The ViT masked autoencoder of paper §III.B.2, built from timm's `PatchEmbed` and `Block`.

The encoder sees only the visible patches (plus a cls token); the decoder gets their
features back in place, a shared learnable mask token everywhere else, and predicts the
pixels of every patch. The loss counts masked patches only. The layout follows the MAE
release (He et al., 2022): encoder parameter names match timm's VisionTransformer, so timm
or MAE encoder weights load straight in (`pretrained.py`).

Masks are given, never drawn here: `masking.key_region_mask` decides what is hidden, and a
caller that passes the same mask gets the same reconstruction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from lrerr_tools.errors import LrerrError

IMAGE_SIZE = 224
PATCH = 16
GRID = IMAGE_SIZE // PATCH  # 14: the grid the key patch ids T are given on
NUM_PATCHES = GRID * GRID


@dataclass(frozen=True)
class MaePreset:
    embed_dim: int
    depth: int
    num_heads: int
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    mlp_ratio: float = 4.0


PRESETS = {
    "base": MaePreset(768, 12, 12, 512, 8, 16),  # ViT-B/16 + the MAE paper's decoder
    "small": MaePreset(384, 12, 6, 256, 4, 8),   # ViT-S/16
    "tiny": MaePreset(96, 4, 3, 64, 2, 2),       # trains in minutes on 2 CPU cores: demos, tests
}


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (1 + grid*grid, dim), row 0 (cls) zero.

    Same layout as the MAE release (first half from the column, second from the row,
    computed in float64), so its pretrained encoders see the positions they learned with.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4 (got {dim})")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")

    def axis(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([axis(cols), axis(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


class MaskedAutoencoder(nn.Module):
    """MAE on 224x224 RGB in ImageNet normalization, 16x16 patches (196, row-major ids)."""

    def __init__(self, preset: str | MaePreset = "base", norm_pix: bool = False):
        super().__init__()
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise LrerrError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
            preset = PRESETS[preset]
        self.preset, self.norm_pix = preset, norm_pix
        p = preset
        # encoder: the names timm's VisionTransformer uses
        self.patch_embed = PatchEmbed(IMAGE_SIZE, PATCH, 3, p.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, p.embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(p.embed_dim, GRID)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(p.embed_dim, p.num_heads, p.mlp_ratio, qkv_bias=True)
                                    for _ in range(p.depth))
        self.norm = nn.LayerNorm(p.embed_dim, eps=1e-6)
        # decoder
        self.decoder_embed = nn.Linear(p.embed_dim, p.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, p.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(p.decoder_embed_dim, GRID)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(p.decoder_embed_dim, p.decoder_num_heads, p.mlp_ratio, qkv_bias=True)
            for _ in range(p.decoder_depth))
        self.decoder_norm = nn.LayerNorm(p.decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(p.decoder_embed_dim, PATCH * PATCH * 3)
        self._init_weights()

    @property
    def config(self) -> dict:
        """Everything needed to rebuild this architecture (`from_config`)."""
        return {**asdict(self.preset), "norm_pix": self.norm_pix}

    @classmethod
    def from_config(cls, config: dict) -> MaskedAutoencoder:
        fields = dict(config)
        norm_pix = fields.pop("norm_pix")
        return cls(MaePreset(**fields), norm_pix=norm_pix)

    def _init_weights(self) -> None:
        # MAE's init: the patch projection like a Linear (xavier on the flattened kernel),
        # tokens N(0, 0.02), Linears xavier-uniform with zero bias.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def patchify(images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, 196, 16*16*3), each patch's pixels row by row, RGB last."""
        b = images.shape[0]
        x = images.reshape(b, 3, GRID, PATCH, GRID, PATCH)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, NUM_PATCHES, PATCH * PATCH * 3)

    @staticmethod
    def unpatchify(patches: torch.Tensor) -> torch.Tensor:
        b = patches.shape[0]
        x = patches.reshape(b, GRID, GRID, PATCH, PATCH, 3)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(b, 3, IMAGE_SIZE, IMAGE_SIZE)

    @staticmethod
    def _order(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Patch ids sorted visible-first (each group in id order), and the visible count."""
        if mask.shape[1:] != (NUM_PATCHES,):
            raise ValueError(f"mask must be (B, {NUM_PATCHES}) (got {tuple(mask.shape)})")
        counts = mask.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError("every row of the mask must hide the same number of patches")
        # Distinct keys (masked after visible, then by id) make a plain sort as stable as a
        # stable one; ONNX has no stable sort, and `export` puts this in its graph.
        ids = torch.arange(NUM_PATCHES, device=mask.device)
        return (mask.long() * NUM_PATCHES + ids).argsort(dim=1), NUM_PATCHES - int(counts[0])

    def forward_encoder(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Features (B, 1 + visible, D) of the cls token and the visible patches, in id order."""
        order, visible = self._order(mask)
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        keep = order[:, :visible, None].expand(-1, -1, x.shape[-1])
        x = torch.gather(x, 1, keep)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted pixels (B, 196, 16*16*3) of every patch from the encoder's features."""
        order, visible = self._order(mask)
        x = self.decoder_embed(latent)
        b, d = x.shape[0], x.shape[-1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, NUM_PATCHES - visible, -1)], dim=1)
        restore = order.argsort(dim=1)[:, :, None].expand(-1, -1, d)
        x = torch.cat([x[:, :1], torch.gather(tokens, 1, restore)], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """What `pred` is trained to match: the patches, normalized per patch with norm-pix."""
        patches = self.patchify(images)
        if not self.norm_pix:
            return patches
        mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
        return (patches - mean) / (var + 1e-6).sqrt()

    def patch_loss(self, images: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Mean squared error of every patch's prediction, (B, 196), in float32."""
        return (pred.float() - self.targets(images.float())).pow(2).mean(dim=-1)

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Paper eq. (1): the MSE over the masked patches only."""
        m = mask.float()
        return (self.patch_loss(images, pred) * m).sum() / m.sum()

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images: (B, 3, 224, 224) MAE-normalized; mask: (B, 196) bool, True = hidden, the
        same count per row. Returns (pred (B, 196, 768), loss on the masked patches)."""
        pred = self.forward_decoder(self.forward_encoder(images, mask), mask)
        return pred, self.loss(images, pred, mask)

    def reconstruct(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image the detector compares with its input, (B, 3, 224, 224), MAE-normalized:
        the visible patches are the input's own pixels (bit for bit), the masked ones the
        prediction. No loss: nobody reads it here."""
        pred = self.forward_decoder(self.forward_encoder(images, mask), mask)
        return self.paste(images, pred, mask)

    def paste(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`reconstruct` from a prediction already made: masked patches from `pred`, the rest
        from `images`.

        With norm-pix the prediction is per-patch normalized; it is mapped back with the
        *input's* patch mean and variance, as the MAE release visualizes it. That lends the
        masked patches their true colour statistics, which is why norm-pix is off by default.
        """
        patches = self.patchify(images)
        pred = pred.to(patches.dtype)
        if self.norm_pix:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mean
        return self.unpatchify(torch.where(mask[:, :, None], pred, patches))
