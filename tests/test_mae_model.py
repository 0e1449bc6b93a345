import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lrerr_tools.errors import LrerrError
from lrerr_tools.mae.masking import key_region_mask
from lrerr_tools.mae.model import MaePreset, MaskedAutoencoder, sincos_pos_embed
from lrerr_tools.mae.pretrained import load_encoder
from lrerr_tools.normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    XCEPTION_MEAN,
    XCEPTION_STD,
    from_mae,
    mae_to,
    normalize_uint8,
    to_mae_input,
)
from lrerr_tools.synth import astronaut_rgb
from lrerr_tools.training import seeded_generator

KEY = torch.zeros(196, dtype=torch.bool)
KEY[[59, 60, 61, 73, 74, 75, 87, 88, 89]] = True


def masks(batch, seed=0, ratio=0.75):
    return key_region_mask(KEY.expand(batch, -1), ratio, 0.9, seeded_generator(seed))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MaskedAutoencoder("tiny").eval()


def test_shapes_and_patch_layout(tiny):
    images = torch.randn(2, 3, 224, 224)
    pred, loss = tiny(images, masks(2))
    assert pred.shape == (2, 196, 768) and loss.ndim == 0
    patches = tiny.patchify(images)
    assert torch.equal(tiny.unpatchify(patches), images)
    # patch 15 = row 1, column 1 of the 14x14 grid; its pixels row by row, RGB last
    assert torch.equal(patches[0, 15].view(16, 16, 3), images[0, :, 16:32, 16:32].permute(1, 2, 0))


def test_position_embeddings_are_fixed_sin_cos(tiny):
    names = dict(tiny.named_parameters())
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    assert "pos_embed" not in tiny.state_dict()
    table = sincos_pos_embed(96, 14)
    assert torch.equal(tiny.pos_embed[0], table) and table[0].abs().sum() == 0
    assert len({tuple(row.tolist()) for row in table[1:]}) == 196
    # first half of the channels encodes the column: patches 0 and 14 (same column) share it
    assert torch.equal(table[1, :48], table[15, :48]) and not torch.equal(table[1, 48:], table[15, 48:])


def test_loss_counts_masked_patches_only(tiny):
    images = torch.randn(3, 3, 224, 224)
    mask = masks(3)
    with torch.no_grad():
        pred, loss = tiny(images, mask)
        other = pred + 5.0 * (~mask)[:, :, None]  # change every visible patch's prediction
        assert torch.equal(tiny.loss(images, other, mask), loss)
        worse = pred + 5.0 * mask[:, :, None]
        assert tiny.loss(images, worse, mask) > loss + 20
        per_patch = (pred - tiny.patchify(images)).pow(2).mean(dim=-1)
        torch.testing.assert_close(loss, per_patch[mask].mean())


def test_the_encoder_never_sees_masked_pixels(tiny):
    images = torch.randn(2, 3, 224, 224)
    mask = masks(2)
    pixel_mask = tiny.unpatchify(mask[:, :, None].float().expand(-1, -1, 768)).bool()
    scribbled = torch.where(pixel_mask, torch.randn_like(images), images)
    with torch.no_grad():
        assert torch.equal(tiny(images, mask)[0], tiny(scribbled, mask)[0])


def test_reconstruct_keeps_visible_patches_bit_exact(tiny):
    images = to_mae_input(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    mask = masks(2)
    with torch.no_grad():
        recon = tiny.reconstruct(images, mask)
        pred, _ = tiny(images, mask)
    got, source = tiny.patchify(recon), tiny.patchify(images)
    assert torch.equal(got[~mask], source[~mask])
    assert torch.equal(got[mask], pred[mask])


def test_norm_pix_predictions_are_mapped_back_to_pixels():
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny", norm_pix=True).eval()
    images = torch.randn(1, 3, 224, 224) * 0.3 + 0.7
    mask = masks(1)
    target = model.targets(images)
    torch.testing.assert_close(target.mean(dim=-1), torch.zeros(1, 196), atol=1e-5, rtol=0)
    # a perfect normalized prediction pastes back the original pixels
    torch.testing.assert_close(model.paste(images, target, mask), images, atol=1e-4, rtol=0)


def test_masks_must_hide_the_same_count_per_row(tiny):
    mask = masks(2)
    mask[0, mask[0].nonzero()[0]] = False
    with pytest.raises(ValueError, match="same number"):
        tiny(torch.randn(2, 3, 224, 224), mask)


def astronaut_crops(n):
    """n 224x224 crops of the astronaut around her face, shifted a little each."""
    image = astronaut_rgb()
    crops = [image[20 + 6 * i:244 + 6 * i, 110 + 5 * i:334 + 5 * i] for i in range(n)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def test_a_tiny_mae_learns_to_reconstruct_a_face():
    torch.manual_seed(0)
    model = MaskedAutoencoder("tiny")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = to_mae_input(astronaut_crops(4))
    generator = seeded_generator(0)
    held_out = masks(4, seed=99)
    with torch.no_grad():
        before = model(images, held_out)[1].item()
    for _ in range(40):
        _, loss = model(images, key_region_mask(KEY.expand(4, -1), 0.75, 0.9, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model(images, held_out)[1].item()
    assert after < 0.5 * before, (before, after)


def test_normalization_round_trips():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = to_mae_input(images)
    torch.testing.assert_close(x, normalize_uint8(images, IMAGENET_MEAN, IMAGENET_STD))
    torch.testing.assert_close(from_mae(x), images.float() / 255, atol=1e-6, rtol=0)
    torch.testing.assert_close(mae_to(x, XCEPTION_MEAN, XCEPTION_STD), images.float() / 127.5 - 1,
                               atol=1e-5, rtol=0)
    assert from_mae(torch.full((1, 3, 2, 2), 50.0)).max() == 1  # predictions overshooting are clamped
    assert images.dtype == torch.uint8 and x.dtype == torch.float32


def encoder_state(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("decoder", "mask_token"))}


def test_init_copies_the_encoder_from_a_file(tmp_path):
    torch.manual_seed(1)
    source = MaskedAutoencoder("tiny")
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "mae.pth")
    save_file(encoder_state(source), tmp_path / "encoder.safetensors")
    for name in ("mae.pth", "encoder.safetensors"):
        torch.manual_seed(2)
        model = MaskedAutoencoder("tiny")
        decoder_before = model.decoder_pred.weight.clone()
        assert load_encoder(model, str(tmp_path / name)) == str(tmp_path / name)
        for key, value in encoder_state(source).items():
            assert torch.equal(model.state_dict()[key], value), key
        assert torch.equal(model.decoder_pred.weight, decoder_before)
    with pytest.raises(LrerrError, match="preset expects"):
        load_encoder(MaskedAutoencoder(MaePreset(192, 4, 3, 64, 2, 2)), str(tmp_path / "mae.pth"))
    torch.save({"model": {"head.weight": torch.zeros(2)}}, tmp_path / "head.pth")
    with pytest.raises(LrerrError, match="has no encoder weight"):
        load_encoder(MaskedAutoencoder("tiny"), str(tmp_path / "head.pth"))


def test_init_from_a_timm_name_uses_only_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    model = MaskedAutoencoder("tiny")
    with pytest.raises(LrerrError, match="not cached locally .* weights fetch vit_base_patch16_224.mae"):
        load_encoder(model, "vit_base_patch16_224.mae")
    with pytest.raises(LrerrError, match="neither a file nor a timm model"):
        load_encoder(model, "no_such_model_anywhere")
    # lay out the cache as huggingface_hub does: a snapshot named by refs/main
    repo = tmp_path / "hf" / "models--timm--vit_base_patch16_224.mae"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    save_file(encoder_state(model), repo / "snapshots" / "abc123" / "model.safetensors")
    with pytest.raises(LrerrError, match="--preset"):  # found, but a ViT-S has 12 blocks, not 4
        load_encoder(MaskedAutoencoder("small"), "vit_base_patch16_224.mae")
    assert load_encoder(model, "vit_base_patch16_224.mae").endswith("model.safetensors")
