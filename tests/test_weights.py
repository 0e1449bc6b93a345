"""`lrerr-tools weights`: the caches the training commands read, and the one command that may
use the network. No test here touches the network: name resolution is made to fail."""

import hashlib
import socket

import pytest
from typer.testing import CliRunner

from lrerr_tools import weights
from lrerr_tools.attention import make_backbone
from lrerr_tools.cli import app
from lrerr_tools.errors import LrerrError

XCEPTION_FILE = "xception-43020ad28.pth"  # timm's legacy_xception weights come from a URL


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch-hub cache, and no name resolves."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(weights.socket, "getaddrinfo", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_fetch_without_a_network_is_one_line_naming_where_the_file_belongs(offline):
    result = CliRunner().invoke(app, ["weights", "fetch", "legacy_xception"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "cannot download legacy_xception weights:" in lines[0] and "does not resolve" in lines[0]
    assert str(offline / XCEPTION_FILE) in lines[0]


def test_cached_weights_are_listed_and_fetched_without_the_network(offline):
    result = CliRunner().invoke(app, ["weights", "list", "legacy_xception"])
    assert result.output.strip() == ("legacy_xception: not cached — `lrerr-tools weights fetch "
                                     "legacy_xception`")
    offline.mkdir(parents=True)
    (offline / XCEPTION_FILE).write_bytes(b"weights copied from a connected machine")
    digest = hashlib.sha256(b"weights copied from a connected machine").hexdigest()
    for command in ("list", "fetch"):  # fetch finds it cached: no download is tried
        result = CliRunner().invoke(app, ["weights", command, "legacy_xception"])
        assert result.exit_code == 0, result.output
        expected = f"legacy_xception: {offline / XCEPTION_FILE} (0.0 MiB, sha256 {digest})"
        assert result.output.strip() == expected
    assert weights.cached_file("legacy_xception") == offline / XCEPTION_FILE


def test_training_points_to_weights_fetch_when_the_cache_is_empty(offline):
    with pytest.raises(LrerrError, match=r"not cached locally .* run `lrerr-tools weights fetch "
                                         r"legacy_xception` on a connected machine, pass --weights FILE"):
        make_backbone("legacy_xception", pretrained=True)


def test_an_unknown_name_gets_a_suggestion(offline):
    with pytest.raises(LrerrError, match="no pretrained weights named legacy_xcepton .*did you mean"):
        weights.fetch("legacy_xcepton")


def test_weights_in_the_hugging_face_cache_are_found(offline, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--timm--tf_efficientnet_b4.ns_jft_in1k"  # as the hub client lays it out
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x" * 2**20)
    (name, found), = weights.cached(("tf_efficientnet_b4",))
    assert found.path == repo / "snapshots" / "abc123" / "model.safetensors" and found.bytes == 2**20
    assert weights.fetch("tf_efficientnet_b4") == found  # cached: no download tried
