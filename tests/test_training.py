import random

import numpy as np
import pytest
import torch
from torch import nn

import lrerr_tools.training as training
from lrerr_tools.errors import LrerrError
from lrerr_tools.training import (
    CsvLogger,
    Distributed,
    NonFiniteLoss,
    backward_step,
    build_optimizer,
    build_scheduler,
    check_finite,
    epoch_sampler,
    grad_scaler,
    load_checkpoint,
    resolve_device,
    restore_training_state,
    save_checkpoint,
    seed_everything,
    seeded_generator,
)


def test_device_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(LrerrError, match="--device cuda: no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(LrerrError, match="--device must be one of auto, cpu, cuda"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)


def test_seeded_streams_are_reproducible():
    draw = [torch.rand(3, generator=seeded_generator(5, e, r)) for e, r in [(0, 0), (0, 0), (0, 1), (1, 0)]]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[3])


def test_epoch_order_depends_on_seed_and_epoch_only_and_ranks_split_it():
    data = list(range(10))
    single = epoch_sampler(data, Distributed(), seed=3)
    single.set_epoch(4)
    again = epoch_sampler(data, Distributed(), seed=3)
    again.set_epoch(4)
    assert list(single) == list(again)
    again.set_epoch(5)
    assert list(single) != list(again)
    shares = []
    for rank in (0, 1):
        sampler = epoch_sampler(data, Distributed(rank, 2, rank), seed=3)
        sampler.set_epoch(4)
        shares.append(list(sampler))
    assert sorted(shares[0] + shares[1]) == data


def test_warmup_then_cosine_and_constant_adam():
    model = nn.Linear(2, 2)
    adamw = build_optimizer(model, "adamw", 1.0, weight_decay=0.05, betas=(0.9, 0.95))
    assert adamw.defaults["betas"] == (0.9, 0.95)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 0.05]  # no decay on the bias
    schedule = build_scheduler(adamw, "cosine", warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(adamw.param_groups[0]["lr"])
        adamw.step()
        schedule.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.05
    adam = build_optimizer(model, "adam", 1e-4)
    constant = build_scheduler(adam, "constant", 10)
    for _ in range(3):
        adam.step()
        constant.step()
    assert adam.param_groups[0]["lr"] == 1e-4
    with pytest.raises(LrerrError, match="--optimizer must be one of adam, adamw, sgd"):
        build_optimizer(model, "lamb", 1.0)


def test_sgd_with_momentum_and_a_step_schedule():
    model = nn.Linear(2, 2)
    sgd = build_optimizer(model, "sgd", 0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert sorted(g["weight_decay"] for g in sgd.param_groups) == [0.0, 1e-4]
    schedule = build_scheduler(sgd, "step", total_steps=10, step_size=3, gamma=0.5)
    lrs = []
    for _ in range(7):
        lrs.append(sgd.param_groups[0]["lr"])
        sgd.step()
        schedule.step()
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    with pytest.raises(LrerrError, match="--step-size must be at least 1"):
        build_scheduler(sgd, "step", total_steps=10)
    frozen = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    frozen[0].requires_grad_(False)
    adam = build_optimizer(frozen, "adam", 1e-3)
    assert [p for g in adam.param_groups for p in g["params"]] == list(frozen[1].parameters())


def train_a_little(model, optimizer, scheduler, steps, seed=0):
    scaler = grad_scaler(torch.device("cpu"), None)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(4, 3, generator=g)).pow(2).mean()
        backward_step(loss, optimizer, scaler)
        scheduler.step()
    return scaler


def test_checkpoint_restores_everything_for_an_exact_resume(tmp_path):
    seed_everything(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = build_optimizer(model, "adamw", 1e-2, weight_decay=0.05)
    scheduler = build_scheduler(optimizer, "cosine", 20, warmup_steps=2)
    scaler = train_a_little(model, optimizer, scheduler, 3)
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, model, config={"lr": 1e-2}, parent={"path": "/x", "sha256": "0" * 64},
                    epoch=1, step=3, model_config={"width": 8}, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, extra={"history": [{"epoch": 1, "auc": None}]})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    train_a_little(model, optimizer, scheduler, 2, seed=1)
    reference = [p.detach().clone() for p in model.parameters()]

    other = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer2 = build_optimizer(other, "adamw", 1e-2, weight_decay=0.05)
    scheduler2 = build_scheduler(optimizer2, "cosine", 20, warmup_steps=2)
    checkpoint = load_checkpoint(path)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["config"]) == (1, 3, {"lr": 1e-2})
    assert checkpoint["extra"]["history"] == [{"epoch": 1, "auc": None}]
    assert checkpoint["model_config"] == {"width": 8}
    restore_training_state(checkpoint, other, optimizer2, scheduler2, grad_scaler(torch.device("cpu"), None))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
    assert scheduler2.last_epoch == 3
    train_a_little(other, optimizer2, scheduler2, 2, seed=1)
    for a, b in zip(other.parameters(), reference):
        assert torch.equal(a, b)


def test_weights_only_checkpoints_cannot_be_resumed(tmp_path):
    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "best.pt", model, config={}, parent=None, epoch=1, step=1)
    checkpoint = load_checkpoint(tmp_path / "best.pt")
    assert "optimizer" not in checkpoint and torch.equal(checkpoint["model"]["weight"], model.weight)
    optimizer = build_optimizer(model, "adam", 1e-3)
    with pytest.raises(LrerrError, match="weights only"):
        restore_training_state(checkpoint, model, optimizer, build_scheduler(optimizer, "constant", 1),
                               grad_scaler(torch.device("cpu"), None))


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, nn.Linear(2, 2), config={"v": 1}, parent=None, epoch=1, step=1)
    before = path.read_bytes()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(training.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, nn.Linear(2, 2), config={"v": 2}, parent=None, epoch=2, step=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_unreadable_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(LrerrError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(LrerrError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(LrerrError, match="not a lrerr-tools checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_csv_log_appends_and_a_resume_rewrites_it_from_the_checkpoints_history(tmp_path):
    path, fields = tmp_path / "log.csv", ["epoch", "loss", "auc"]
    log = CsvLogger(path, fields)
    history = [{"epoch": epoch, "loss": 1 / epoch, "auc": None if epoch == 1 else 0.5} for epoch in (1, 2, 3)]
    for record in history:
        log.log(record)
    assert path.read_text().splitlines() == ["epoch,loss,auc", "1,1.0,", "2,0.5,0.5", f"3,{1 / 3},0.5"]
    with open(path, "a") as f:
        f.write("4,0.2")  # a row a kill cut short
    # resumed after epoch 2: epochs 3 and 4 were logged but never checkpointed
    CsvLogger(path, fields, history[:2]).log({"epoch": 3, "loss": 9, "auc": 1})
    assert path.read_text().splitlines()[1:] == ["1,1.0,", "2,0.5,0.5", "3,9,1"]
    CsvLogger(path, fields)  # a fresh run starts a fresh log
    assert path.read_text().splitlines() == ["epoch,loss,auc"]


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path):
    last = tmp_path / "last.pt"
    check_finite(0.5, 1, 1, last)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch 2, step 7: .* no checkpoint had been"):
        check_finite(float("nan"), 2, 7, last)
    last.write_bytes(b"x")
    with pytest.raises(LrerrError, match=rf"inf .*{last.name}, is kept .* --resume"):
        check_finite(float("inf"), 2, 7, last)
