from __future__ import annotations

import pytest
import torch

from course_utils import training
from course_utils.training import NonFiniteLossError, train_steps


def test_trains_a_real_model_and_logs():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(128, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def step(i):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss, "lr": 0.1}

    history = train_steps(step, 200, log_every=10, disable_progress=True)
    assert history["step"][:3] == [0, 10, 20] and history["step"][-1] == 199
    assert history["lr"][0] == 0.1
    assert history.last_loss < 1e-3 < history["loss"][0]


def test_nan_stops_with_step_and_last_finite_loss():
    losses = [2.0, 1.0, float("inf")]
    with pytest.raises(NonFiniteLossError, match="loss became inf at step 2; the last finite loss was 1 at step 1"):
        train_steps(lambda i: losses[i], 3, disable_progress=True)
    with pytest.raises(NonFiniteLossError, match="no finite loss was seen"):
        train_steps(lambda i: float("nan"), 3, disable_progress=True)


def test_keyboard_interrupt_returns_history(capsys):
    def step(i):
        if i == 4:
            raise KeyboardInterrupt
        return 1.0 / (i + 1)

    history = train_steps(step, 100, disable_progress=True)
    assert history.interrupted and history["step"] == [0, 1, 2, 3]
    assert "Interrupted after 4 of 100 steps" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_steps must be a non-negative int, got -1"):
        train_steps(lambda i: 0.0, -1)
    with pytest.raises(ValueError, match="without a 'loss' entry"):
        train_steps(lambda i: {"acc": 1.0}, 1, disable_progress=True)


def test_interrupt_counts_steps_not_log_entries(capsys):
    def step(i):
        if i == 7:
            raise KeyboardInterrupt
        return 1.0

    history = train_steps(step, 100, log_every=5, disable_progress=True)
    assert history["step"] == [0, 5]
    assert "Interrupted after 7 of 100 steps" in capsys.readouterr().out


@pytest.fixture
def fake_gpu_losses(monkeypatch):
    """Losses that count as living on a GPU; any ``.item()`` fails, every ``.tolist()`` is counted."""
    monkeypatch.setattr(training, "_on_accelerator", lambda metrics: True)
    reads = {"tolist": 0}
    real_tolist = torch.Tensor.tolist

    def counting_tolist(self):
        reads["tolist"] += 1
        return real_tolist(self)

    def no_item(self):
        raise AssertionError(".item() on a GPU loss: one device synchronisation per step")

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    monkeypatch.setattr(torch.Tensor, "item", no_item)
    return reads


def test_gpu_losses_are_read_once_per_block(fake_gpu_losses):
    losses = torch.linspace(2.0, 1.0, 100)
    history = train_steps(lambda i: {"loss": losses[i], "acc": losses[i] / 2}, 100, log_every=10,
                          sync_every=25, disable_progress=True)
    assert fake_gpu_losses["tolist"] == 4  # 100 steps, one transfer every 25
    assert history["step"] == [*range(0, 100, 10), 99]
    expected = [round(float(v), 6) for v in losses[history["step"]].tolist()]
    assert [round(v, 6) for v in history["loss"]] == expected
    assert all(isinstance(v, float) for v in history["acc"])


def test_a_gpu_nan_is_reported_at_its_own_step(fake_gpu_losses):
    losses = torch.ones(60)
    losses[30] = float("nan")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 30; the last finite loss was 1 at step 29"):
        train_steps(lambda i: losses[i], 60, sync_every=25, disable_progress=True)


def test_interrupt_keeps_the_unread_gpu_steps(fake_gpu_losses, capsys):
    def step(i):
        if i == 10:
            raise KeyboardInterrupt
        return torch.tensor(float(i))

    history = train_steps(step, 100, sync_every=25, disable_progress=True)
    assert history.interrupted and history["step"] == list(range(10))
    assert "Interrupted after 10 of 100 steps" in capsys.readouterr().out


def test_sync_every_is_checked():
    with pytest.raises(ValueError, match="sync_every must be an int >= 1, got 0"):
        train_steps(lambda i: 0.0, 1, sync_every=0)


def test_step_fn_and_the_progress_flag_are_checked():
    with pytest.raises(TypeError, match="step_fn must be a callable"):
        train_steps("step", 3)
    with pytest.raises(TypeError, match="disable_progress must be True or False"):
        train_steps(lambda i: 1.0, 3, disable_progress="yes")
    assert train_steps(lambda i: 1.0, 0, disable_progress=True)["loss"] == []
