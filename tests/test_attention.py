import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrerr_tools.attention import (
    XCEPTION_LAYERS,
    AttentionInjector,
    FeatureTaps,
    local_difference_attention,
    make_backbone,
)
from lrerr_tools.errors import LrerrError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        # In place, as in many backbones: taps must keep what `a` gave, not what act left of it.
        self.act = nn.ReLU(inplace=True)
        self.b = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1))

    def forward(self, x):
        return self.head(self.b(self.act(self.a(self.stem(x)))))


@pytest.fixture
def models():
    torch.manual_seed(0)
    hooked = Tiny().eval()
    return hooked, copy.deepcopy(hooked)


def test_attention_formula():
    f = torch.randn(2, 8, 5, 5)
    assert torch.allclose(local_difference_attention(f, f), torch.zeros(2, 1, 5, 5), atol=1e-6)
    assert torch.allclose(local_difference_attention(f, 3 * f), torch.zeros(2, 1, 5, 5), atol=1e-6)
    assert torch.allclose(local_difference_attention(f, -f), torch.ones(2, 1, 5, 5), atol=1e-6)
    x = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    y = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    assert local_difference_attention(x, y).item() == pytest.approx(0.5)


def test_attention_is_per_location_over_channels():
    f = torch.randn(1, 8, 4, 4)
    g = f.clone()
    g[0, :, 1, 2] = -g[0, :, 1, 2]
    a = local_difference_attention(f, g)
    expected = torch.zeros(1, 1, 4, 4)
    expected[0, 0, 1, 2] = 1
    assert torch.allclose(a, expected, atol=1e-6)
    with pytest.raises(ValueError):
        local_difference_attention(f, f[:, :4])


@pytest.mark.parametrize("form, scale", [("mul", lambda a: a), ("residual", lambda a: 1 + a)])
def test_injector_scales_exactly_the_named_layers(models, form, scale):
    hooked, plain = models
    x = torch.randn(2, 3, 8, 8)
    a_maps = [torch.rand(2, 1, 8, 8), torch.rand(2, 1, 4, 4)]
    injector = AttentionInjector(hooked, ["a", "b"], form)
    # Registered after the injector, so the taps see the scaled outputs.
    taps = FeatureTaps(hooked, ["stem", "a", "b"])
    with torch.no_grad(), injector.maps(a_maps):
        stem, a, b = taps(x)
        logits = taps.model(x)
        p_stem = plain.stem(x)
        p_a = plain.a(p_stem) * scale(a_maps[0])
        p_b = plain.b(p_a.relu()) * scale(a_maps[1])
        assert torch.equal(stem, p_stem)
        assert torch.allclose(a, p_a, atol=1e-6)
        assert torch.allclose(b, p_b, atol=1e-6)
        assert torch.allclose(logits, plain.head(p_b), atol=1e-6)


def test_injector_resizes_maps_bilinearly(models):
    hooked, plain = models
    x = torch.randn(1, 3, 8, 8)
    small = torch.rand(1, 1, 3, 3)
    with torch.no_grad(), AttentionInjector(hooked, ["a"]) as injector, injector.maps([small]):
        got = hooked(x)
    resized = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = plain.head(plain.b((plain.a(plain.stem(x)) * resized).relu()))
    assert torch.allclose(got, expected, atol=1e-6)


def test_no_maps_leaves_the_backbone_unchanged(models):
    hooked, plain = models
    x = torch.randn(2, 3, 8, 8)
    injector = AttentionInjector(hooked, ["a", "b"])
    with torch.no_grad():
        assert torch.equal(hooked(x), plain(x))
        with injector.maps([torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4)]):
            assert not torch.equal(hooked(x), plain(x))
        assert torch.equal(hooked(x), plain(x))
    with pytest.raises(ValueError, match="2 layers"), injector.maps([torch.ones(2, 1, 8, 8)]):
        pass


def test_unknown_layer_names_the_valid_ones(models):
    hooked, _ = models
    with pytest.raises(LrerrError, match=r"no layer stme \(did you mean stem\?\).*stem, a, act, b, head"):
        FeatureTaps(hooked, ["stme"])
    with pytest.raises(LrerrError, match="not a \\(B, C, H, W\\)"):
        FeatureTaps(hooked, ["head"])(torch.randn(1, 3, 8, 8))


def test_legacy_xception_layers(one_torch_thread):
    backbone = make_backbone("legacy_xception", pretrained=False)
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    extractor = backbone.model.eval()
    # Shapes at the paper's 224 px cost nothing on the meta device.
    with FeatureTaps(copy.deepcopy(extractor).to("meta"), XCEPTION_LAYERS) as taps:
        sizes = [f.shape[-1] for f in taps(torch.empty(1, 3, 224, 224, device="meta"))]
    assert sizes == [55, 28, 14]

    trainable = make_backbone("legacy_xception", pretrained=False).model.eval()
    x = torch.randn(2, 3, 32, 32)  # block1..3 give 7, 4 and 2 px
    with torch.no_grad(), FeatureTaps(extractor, XCEPTION_LAYERS) as taps:
        recon = x + 0.5 * torch.randn_like(x)
        maps = [local_difference_attention(o, r) for o, r in zip(taps(x), taps(recon))]
        injector = AttentionInjector(trainable, XCEPTION_LAYERS)
        baseline = trainable(x)
        with injector.maps([torch.ones_like(a) for a in maps]):
            assert torch.allclose(trainable(x), baseline, atol=1e-5)
        with injector.maps(maps):
            attended = trainable(x)
        assert attended.shape == (2, 1) and not torch.allclose(attended, baseline)
    assert all(a.min() >= 0 and a.max() <= 1 and a.shape[1] == 1 for a in maps)


def test_pretrained_weights_come_only_from_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LrerrError, match="not cached locally.*xception-43020ad28.pth.*--no-pretrained"):
        make_backbone(pretrained=True)
    with pytest.raises(LrerrError, match="no such file"):
        make_backbone(pretrained=False, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(LrerrError, match="unknown timm model legacy_xcepton"):
        make_backbone("legacy_xcepton", pretrained=False)

    imagenet = make_backbone(pretrained=False, num_classes=1000).model
    cached = tmp_path / "hub" / "checkpoints" / "xception-43020ad28.pth"
    cached.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), cached)
    for backbone in (make_backbone(pretrained=True), make_backbone(pretrained=False, weights=str(cached))):
        model = backbone.model
        assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
        assert model.fc.out_features == 1
