"""The shared network blocks and RECCE: the Xception layout against timm's, the vectorised graph
reasoning against a per-vertex loop, RecceNet's outputs, the losses, and their DDP exactness
(RECCE's and its descendants', RLGC's and CRL's, whose other tests are in test_method_rlgc_crl.py)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from lrerr_tools.blocks.crl import CrlNet, crl_losses
from lrerr_tools.blocks.graph_reasoning import GraphReasoning
from lrerr_tools.blocks.losses import flooded_bce, metric_loss, real_l1
from lrerr_tools.blocks.recce import RecceNet, recce_losses
from lrerr_tools.blocks.rlgc import RlgcNet, rlgc_losses
from lrerr_tools.blocks.sobel import sobel_magnitude
from lrerr_tools.blocks.xception import XceptionLayers, load_legacy_xception, xception_channels
from lrerr_tools.errors import LrerrError
from lrerr_tools.training import Distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = 1 / 16
SINGLE = Distributed()


# --- graph reasoning ---------------------------------------------------------------------

def loop_graph_reasoning(gr: GraphReasoning, vert_a: torch.Tensor, *maps: torch.Tensor) -> torch.Tensor:
    """The spec read literally, one A vertex at a time, with its neighbours cut out by slicing."""
    batch, _, height, width = vert_a.shape
    emb_a = gr.embed_a(vert_a)
    gates = [1 - torch.sigmoid(gate(vert_a)) for gate in gr.gates]
    fused = torch.zeros(batch, gr.embed * (len(maps) + 1), height, width)
    for i in range(height):
        for j in range(width):
            parts = []
            for k, (nbr, r) in enumerate(zip(maps, gr.ratios)):
                window = nbr[:, :, r * i:r * (i + 1), r * j:r * (j + 1)].flatten(2).transpose(1, 2)
                emb = gr.embed_nbr[k](window)  # (B, r², E)
                pair = torch.cat([emb_a[:, :, i, j].unsqueeze(1).expand_as(emb), emb], dim=-1)
                weights = torch.softmax(F.relu(gr.scorers[k](pair)), dim=1)
                parts.append((weights * emb).sum(1) * gates[k][:, :, i, j])
            parts.append(emb_a[:, :, i, j])
            fused[:, :, i, j] = torch.sigmoid(torch.cat(parts, dim=1))
    return gr.reproject(fused)


@pytest.mark.parametrize(("a_channels", "embed", "neighbours", "size"), [
    (728, 256, [(256, 2), (128, 4)], (4, 4)),            # RECCE's own shapes
    (46, 16, [(16, 2), (8, 4), (8, 4)], (3, 5)),          # a JointGR-like fourth set, non-square
])
def test_vectorised_graph_reasoning_matches_a_per_vertex_loop(a_channels, embed, neighbours, size):
    torch.manual_seed(0)
    gr = GraphReasoning(a_channels, embed, neighbours, dropout=0.2).eval()
    with torch.no_grad():
        for scorer in gr.scorers:  # peaked attention, so a neighbour mix-up would show
            scorer.weight.mul_(20)
    h, w = size
    vert_a = torch.randn(2, a_channels, h, w)
    maps = [torch.randn(2, c, r * h, r * w) for c, r in neighbours]
    with torch.no_grad():
        fast = gr(vert_a, *maps)
        slow = loop_graph_reasoning(gr, vert_a, *maps)
        shuffled = gr(vert_a, *[m.flip(-1) for m in maps])
    assert fast.shape == (2, a_channels, h, w)
    assert (fast - slow).abs().max() < 1e-5
    assert (shuffled - slow).abs().max() > 1e-3  # the check sees which neighbours a vertex gets


def test_graph_reasoning_refuses_maps_of_the_wrong_size():
    gr = GraphReasoning(8, 4, [(4, 2)])
    with pytest.raises(ValueError, match="expected 2×"):
        gr(torch.randn(1, 8, 3, 3), torch.randn(1, 4, 5, 6))


# --- Xception ----------------------------------------------------------------------------

def test_xception_layers_at_width_1_are_legacy_xception_without_its_head():
    reference = timm.create_model("legacy_xception", pretrained=False).eval()
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    layers = XceptionLayers(1.0).eval()
    assert {k: tuple(v.shape) for k, v in layers.state_dict().items()} == expected

    load_legacy_xception(layers, reference.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(layers(x), reference.forward_features(x), atol=1e-5)

    weights = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_legacy_xception(layers, weights)  # older checkpoints lack the BN counters
    with pytest.raises(LrerrError, match="unexpected: extra.weight"):
        load_legacy_xception(layers, {**reference.state_dict(), "extra.weight": torch.zeros(1)})


def test_legacy_xception_weights_do_not_load_at_another_width():
    state = timm.create_model("legacy_xception", pretrained=False).state_dict()
    with pytest.raises(LrerrError, match="width 1 only.*width 0.25"):
        load_legacy_xception(XceptionLayers(0.25), state)


def test_xception_cut_after_block3_takes_the_first_layers_of_legacy_xception_weights():
    reference = timm.create_model("legacy_xception", pretrained=False).eval()
    layers = XceptionLayers(1.0, last_block=3).eval()
    assert [name for name, _ in layers.named_children()][-1] == "block3"
    load_legacy_xception(layers, reference.state_dict())  # block4 … conv4 and fc left out
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        r = reference
        stem = r.act2(r.bn2(r.conv2(r.act1(r.bn1(r.conv1(x))))))
        assert torch.allclose(layers(x), r.block3(r.block2(r.block1(stem))), atol=1e-5)
    with pytest.raises(LrerrError, match="missing: block3"):
        load_legacy_xception(layers, {k: v for k, v in reference.state_dict().items() if "block3" not in k})


def test_channel_counts_scale_and_stay_at_least_4():
    assert xception_channels(1.0) == {"stem1": 32, "stem2": 64, "entry1": 128, "entry2": 256,
                                      "middle": 728, "exit": 1024, "conv3": 1536, "features": 2048}
    tiny = xception_channels(TINY)
    assert tiny["stem1"] == 4 and tiny["middle"] == 46 and tiny["features"] == 128


# --- RecceNet ----------------------------------------------------------------------------

def test_recce_outputs_at_224_px():
    torch.manual_seed(0)
    net = RecceNet(width=TINY)
    ch = net.encoder.channels
    images = torch.rand(3, 3, 224, 224) * 2 - 1
    out = net({"images": images})
    assert out["logit"].shape == (3,)
    assert out["recon"].shape == (3, 3, 224, 224)
    assert out["recon"].min() >= -1 and out["recon"].max() <= 1
    assert [tuple(e.shape) for e in out["embeddings"]] == [(3, ch["middle"]), (3, ch["entry2"]),
                                                           (3, ch["entry1"])]
    assert out["attention"].shape == (3, 1, 14, 14)
    assert out["attention"].min() >= 0 and out["attention"].max() <= 1

    # x̂ reaches the logit only through the attention mask: a detached x̂ would give no gradient.
    out["logit"].sum().backward()
    assert net.decoder6[0].weight.grad.abs().sum() > 0

    net.eval()
    with torch.no_grad():
        single = net({"images": images[:1]})
        batch = net({"images": images})
    assert single["logit"].shape == (1,)
    assert torch.allclose(single["logit"], batch["logit"][:1], atol=1e-5)


def test_recce_at_width_1_takes_legacy_xception_weights_into_its_encoder():
    net = RecceNet(width=1.0)
    state = timm.create_model("legacy_xception", pretrained=False).state_dict()
    load_legacy_xception(net.encoder, state)
    assert torch.equal(net.encoder.block7.rep[1].pointwise.weight, state["block7.rep.1.pointwise.weight"])


# --- losses ------------------------------------------------------------------------------

def test_real_l1_uses_reals_only():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    recon = torch.rand(4, 3, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])

    by_hand = ((recon[0] - images[0]).abs().mean() + (recon[2] - images[2]).abs().mean()) / 2
    assert torch.allclose(real_l1(recon, images, labels, SINGLE), by_hand)

    changed = recon.detach().clone()
    changed[1] += 5
    assert torch.allclose(real_l1(changed, images, labels, SINGLE), by_hand)

    only_fakes = real_l1(recon, images, torch.ones(4, dtype=torch.long), SINGLE)
    assert only_fakes.item() == 0
    only_fakes.backward()
    assert torch.isfinite(recon.grad).all() and recon.grad.abs().sum() == 0


def test_metric_loss_on_known_embeddings():
    labels = torch.tensor([0, 0, 1, 1])
    real, fake = [1.0, 0.0], [0.0, 1.0]
    # reals identical (sim 1), fakes orthogonal to them (corr 0.5): 1 − 1 + 0.5 per embedding
    same = torch.tensor([real, real, fake, fake])
    assert torch.allclose(metric_loss([same, same * 3], labels, SINGLE), torch.tensor(1.0))
    # fake–fake corr goes from 1 to 0, real–fake stays 0.5
    opposed = torch.tensor([real, real, fake, [0.0, -1.0]])
    assert torch.allclose(metric_loss([opposed], labels, SINGLE), torch.tensor(0.5))
    # a fake moved towards the reals does count
    closer = torch.tensor([real, real, fake, [1.0, 1.0]])
    assert metric_loss([closer], labels, SINGLE) > 0.6


def test_metric_loss_with_empty_pair_sets_is_finite():
    emb = torch.randn(3, 5, requires_grad=True)
    for labels, expected in ((torch.tensor([0, 1, 1]), None), (torch.tensor([1, 1, 1]), 1.0),
                             (torch.tensor([0, 0, 0]), None)):
        value = metric_loss([emb], labels, SINGLE)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
        if expected is not None:
            assert value.item() == expected
        emb.grad = None
    one_real = metric_loss([emb], torch.tensor([0, 1, 1]), SINGLE)
    normed = F.normalize(emb.detach(), dim=1)
    assert torch.allclose(one_real, 1 + ((normed[0] @ normed[1:].T + 1) / 2).mean())


def test_flooded_bce_reverses_below_the_flood_level():
    labels = torch.tensor([1.0, 0.0])
    confident = torch.tensor([6.0, -6.0], requires_grad=True)
    plain = F.binary_cross_entropy_with_logits(confident, labels)
    assert plain < 0.04
    flooded = flooded_bce(confident, labels, SINGLE)
    assert torch.allclose(flooded, 0.08 - plain)
    flooded.backward()
    plain_grad = torch.autograd.grad(F.binary_cross_entropy_with_logits(confident, labels), confident)[0]
    assert torch.equal(torch.sign(confident.grad), -torch.sign(plain_grad))

    unsure = torch.tensor([0.1, 0.2])
    plain = F.binary_cross_entropy_with_logits(unsure, labels)
    assert torch.allclose(flooded_bce(unsure, labels, SINGLE), plain)


# --- DDP ---------------------------------------------------------------------------------

GLOBAL_LABELS = [0, 0, 1, 0, 1, 1]  # rank 0 holds two reals, rank 1 one: masked means must weigh them
DDP_SIZE = 64
# RECCE and its descendants, in one pair of processes (starting them is most of the cost):
# RLGC with both attentions, CRL with its default loss and with the EMA centre and Sobel view.
DDP_CASES = ("recce", "rlgc-bidir", "crl", "crl-centre-sobel")


def ddp_setup(case: str):
    """The network of `case`, its inputs for the global batch, and its losses, alike in every process."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    faces = torch.rand(len(GLOBAL_LABELS), 3, DDP_SIZE, DDP_SIZE, generator=generator)  # in [0, 1]
    if case == "rlgc-bidir":
        net = RlgcNet(TINY, bidirectional=True)
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in (net.mean, net.std))
        inputs = {"images": (faces - mean) / std, "gradient": sobel_magnitude(faces)}

        def losses(out, inputs, labels, dist):
            return rlgc_losses(out, inputs["images"], inputs["gradient"], labels, dist)
    elif case.startswith("crl"):
        centre = case == "crl-centre-sobel"
        net, inputs = CrlNet(TINY, centres=centre), {"images": faces * 2 - 1}

        def losses(out, inputs, labels, dist):
            return crl_losses(out, inputs["images"], labels, dist, sobel_view=centre)
    else:
        net, inputs = RecceNet(width=TINY), {"images": faces * 2 - 1}

        def losses(out, inputs, labels, dist):
            return recce_losses(out, inputs["images"], labels, dist)
    return net.eval(), inputs, torch.tensor(GLOBAL_LABELS), losses


def ddp_step(case: str, dist: Distributed, part: slice) -> dict:
    """`case`'s loss terms on the faces of `part`, their gradients, and the network's buffers."""
    net, inputs, labels, losses = ddp_setup(case)
    inputs = {k: v[part] for k, v in inputs.items()}
    terms = losses(net(inputs), inputs, labels[part], dist)
    terms["total"].backward()
    grads = {name: param.grad if param.grad is not None else torch.zeros_like(param)
             for name, param in net.named_parameters()}
    return {"terms": {k: v.item() for k, v in terms.items()}, "grads": grads,
            "buffers": {name: b.clone() for name, b in net.named_buffers()}}


def ddp_worker(rank: int, world_size: int, folder: str):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous",
                                         rank=rank, world_size=world_size)
    try:
        share = len(GLOBAL_LABELS) // world_size
        results = {}
        for case in DDP_CASES:
            part = slice(rank * share, (rank + 1) * share)
            result = ddp_step(case, Distributed(rank, world_size, rank), part)
            for grad in result["grads"].values():
                torch.distributed.all_reduce(grad)
                grad /= world_size
            results[case] = result
        torch.save(results, f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory):
    """Each rank's results of every case, from one run of two gloo processes."""
    folder = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        mp.spawn(ddp_worker, args=(2, str(folder)), nprocs=2, join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


def assert_ddp_equals_one_process(case: str, ranks: list[dict]) -> None:
    """The ranks' mean of each term, the averaged gradients and the buffers (CRL's EMA
    centres) equal one process's on the whole batch."""
    whole = ddp_step(case, SINGLE, slice(None))
    for term, value in whole["terms"].items():
        ddp_mean = sum(rank[case]["terms"][term] for rank in ranks) / 2
        assert abs(ddp_mean - value) < 1e-5, (case, term)
    for name, grad in whole["grads"].items():
        assert (ranks[0][case]["grads"][name] - grad).abs().max() < 1e-5, (case, name)
    # most gradients here are far below 1e-5, so also compare the whole gradient relatively
    got = torch.cat([ranks[0][case]["grads"][name].flatten() for name in whole["grads"]])
    want = torch.cat([grad.flatten() for grad in whole["grads"].values()])
    assert (got - want).norm() < 1e-5 * want.norm(), case
    for name, buffer in whole["buffers"].items():
        assert torch.allclose(ranks[0][case]["buffers"][name], buffer, atol=1e-6), (case, name)
        assert torch.equal(ranks[0][case]["buffers"][name], ranks[1][case]["buffers"][name]), (case, name)


def test_recce_losses_under_ddp_equal_one_process_on_the_global_batch(ddp_ranks):
    assert_ddp_equals_one_process("recce", ddp_ranks)
    assert ddp_ranks[0]["recce"]["terms"]["rec"] != ddp_ranks[1]["recce"]["terms"]["rec"]  # shares differ


@pytest.mark.parametrize("case", DDP_CASES[1:])
def test_rlgc_and_crl_losses_under_ddp_equal_one_process_on_the_global_batch(case, ddp_ranks):
    assert_ddp_equals_one_process(case, ddp_ranks)
    if case == "crl-centre-sobel":
        assert ddp_ranks[0][case]["buffers"]["centre_features"].norm() > 0  # the reals moved it


def test_the_decoder_learns_to_reconstruct_real_faces():
    # A few dozen steps on one batch: the reconstruction loss must fall well below where it
    # starts, or x̂ (and the figure and attention built on it) would stay a flat grey.
    from skimage.data import astronaut

    torch.manual_seed(0)
    face = torch.from_numpy(astronaut()[30:230, 140:340].copy()).permute(2, 0, 1).float()
    images = F.interpolate(face[None], size=(64, 64), mode="area").repeat(4, 1, 1, 1) / 127.5 - 1
    images = images + 0.05 * torch.randn_like(images)
    labels = torch.zeros(4)
    net = RecceNet(width=TINY)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        rec = real_l1(net({"images": images})["recon"], images, labels, SINGLE)
        optimizer.zero_grad()
        rec.backward()
        optimizer.step()
        losses.append(rec.item())
    assert losses[-1] < 0.6 * losses[0], losses[::10]
