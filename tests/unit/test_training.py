from __future__ import annotations

import pytest
import torch

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
