"""What course_utils.rl computes, beyond test_rl.py: the PPO loss's defaults and edge cases by hand,
the training loop's bookkeeping against independent references (gymnasium's episode statistics,
GAE's own arguments, every sample once per epoch, the gradient clip), the policies' pinned
architecture, the observation wrappers, and the messages bad input gets."""

from __future__ import annotations

import math
from dataclasses import asdict

import gymnasium as gym
import numpy as np
import pytest
import torch

from course_utils import rl
from course_utils.rl import (
    AttentionPolicy,
    BlankedObservation,
    HistoryBuffer,
    MLPPolicy,
    NoVelocityObservation,
    PPOConfig,
    compute_gae,
    evaluate,
    make_vector_env,
    ppo_loss,
    train_ppo,
)


def _uniform(b: int, n_actions: int = 2) -> torch.Tensor:
    return torch.zeros(b, n_actions)  # pi(a) = 1/n for every action


def _old_for(ratios: list[float], n_actions: int = 2) -> torch.Tensor:
    return torch.log(torch.tensor([(1.0 / n_actions) / r for r in ratios]))


def _tiny(**kw) -> PPOConfig:
    return PPOConfig(**{"total_steps": 256, "num_envs": 4, "rollout_len": 64, "epochs": 1, **kw})


# ------------------------------------------------------------------ the PPO loss


def test_ppo_loss_defaults_are_a_clip_of_0_2_half_the_value_loss_and_no_entropy_bonus():
    ratios, adv = [1.5, 0.5], torch.tensor([1.0, -1.0])
    values, returns = torch.tensor([1.0, 3.0]), torch.zeros(2)
    args = (_uniform(2), torch.tensor([0, 0]), _old_for(ratios), adv, values, returns)
    loss, stats = ppo_loss(*args, normalize_advantages=False)
    policy = -(1.2 * 1.0 + 0.8 * -1.0) / 2  # clipped at 1 ± 0.2 on both sides
    value = 0.5 * (1.0 + 9.0) / 2
    torch.testing.assert_close(stats["policy"], torch.tensor(policy))
    torch.testing.assert_close(loss, torch.tensor(policy + 0.5 * value))  # no entropy term
    explicit, _ = ppo_loss(*args, clip=0.2, vf_coef=0.5, ent_coef=0.0, normalize_advantages=True)
    default, _ = ppo_loss(*args)
    torch.testing.assert_close(default, explicit)  # normalisation is on by default


def test_ppo_loss_normalises_a_minibatch_of_two_and_its_epsilon_keeps_a_flat_one_small():
    old = _old_for([1.1, 0.9])
    zeros = torch.zeros(2)
    two, _ = ppo_loss(_uniform(2), torch.tensor([0, 0]), old, torch.tensor([1.0, 3.0]), zeros, zeros)
    a = 1 / math.sqrt(2)  # [1, 3]: mean 2, unbiased std sqrt(2)
    torch.testing.assert_close(two, torch.tensor(-(1.1 * -a + 0.9 * a) / 2))
    # advantages 1e-8 apart: std 7.07e-9 is below the epsilon 1e-8, which keeps them below 1
    flat, _ = ppo_loss(_uniform(2), torch.tensor([0, 0]), old, torch.tensor([0.0, 1e-8]), zeros, zeros)
    n = 5e-9 / (1e-8 / math.sqrt(2) + 1e-8)
    torch.testing.assert_close(flat, torch.tensor(-(1.1 * -n + 0.9 * n) / 2))


def test_ppo_loss_counts_a_ratio_exactly_at_the_clip_edge_as_inside():
    logits, actions, old = _uniform(2), torch.tensor([0, 0]), _old_for([1.25, 1.0])
    ratio = (torch.log_softmax(logits, -1)[:, 0] - old).exp()
    edge = float((ratio[0] - 1).abs())  # the float32 value the loss compares with
    _, stats = ppo_loss(logits, actions, old, torch.ones(2), torch.zeros(2), torch.zeros(2), clip=edge)
    assert stats["clip_fraction"].item() == 0.0  # strictly outside counts, as Stable-Baselines3
    _, stats = ppo_loss(logits, actions, old, torch.ones(2), torch.zeros(2), torch.zeros(2), clip=edge * 0.99)
    assert stats["clip_fraction"].item() == 0.5


def test_ppo_loss_approximate_kl_is_schulmans_k3_estimator():
    ratios = [1.5, 0.5]
    _, stats = ppo_loss(_uniform(2), torch.tensor([0, 1]), _old_for(ratios), torch.ones(2), torch.zeros(2),
                        torch.zeros(2))
    want = sum((r - 1) - math.log(r) for r in ratios) / 2  # = 0.1438
    torch.testing.assert_close(stats["approx_kl"], torch.tensor(want))


def test_gae_of_a_single_step():
    adv, ret = compute_gae(torch.tensor([1.0]), torch.tensor([0.5, 2.0]), torch.tensor([False]),
                           torch.tensor([False]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([1.0 + 0.9 * 2.0 - 0.5]))
    torch.testing.assert_close(ret, torch.tensor([1.0 + 0.9 * 2.0]))


# ------------------------------------------------------------------ the training loop


def _spy(monkeypatch, name: str, record: list):
    real = getattr(rl, name)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        record.append((args, kwargs, out))
        return out

    monkeypatch.setattr(rl, name, spy)


def test_training_takes_gae_with_the_configs_gamma_and_lambda(monkeypatch):
    calls = []
    _spy(monkeypatch, "compute_gae", calls)
    train_ppo(MLPPolicy(2, 2), _tiny(gamma=0.9, gae_lambda=0.7), progress=False)
    assert len(calls) == 1 and calls[0][0][4:] == (0.9, 0.7)


def test_every_epoch_passes_over_every_real_step_once(monkeypatch):
    gae, losses = [], []
    _spy(monkeypatch, "compute_gae", gae)
    _spy(monkeypatch, "ppo_loss", losses)
    train_ppo(MLPPolicy(2, 2), _tiny(epochs=3, minibatch_size=64), progress=False)
    term, trunc = gae[0][0][2], gae[0][0][3]  # (T, N): the one update's episode ends
    done = term | trunc
    no_ops = int(done[:-1].sum())  # the step after an episode's end is gymnasium's autoreset no-op
    real_steps = 64 * 4 - no_ops
    assert len(losses) % 3 == 0
    per_epoch = len(losses) // 3
    epochs = [losses[e * per_epoch:(e + 1) * per_epoch] for e in range(3)]
    samples = [torch.cat([c[0][2] for c in epoch]).sort().values for epoch in epochs]  # old log-probs
    assert [len(s) for s in samples] == [real_steps] * 3
    torch.testing.assert_close(samples[1], samples[0], rtol=0, atol=0)
    torch.testing.assert_close(samples[2], samples[0], rtol=0, atol=0)
    orders = [torch.cat([c[0][2] for c in epoch]) for epoch in epochs]
    assert not torch.equal(orders[0], orders[1])  # reshuffled between epochs


def test_the_update_clips_the_gradient_norm_to_max_grad_norm(monkeypatch):
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def clip(parameters, max_norm, *args, **kwargs):
        norms.append(max_norm)
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    train_ppo(MLPPolicy(2, 2), _tiny(max_grad_norm=0.3, minibatch_size=64), progress=False)
    assert len(norms) >= 3 and set(norms) == {0.3}


def test_learning_curve_and_episode_count_match_gymnasiums_episode_statistics(monkeypatch):
    wrapped = []

    def make(num_envs, blank_prob=0.0):
        envs = gym.wrappers.vector.RecordEpisodeStatistics(make_vector_env(num_envs, blank_prob))
        wrapped.append(envs)
        return envs

    monkeypatch.setattr(rl, "make_vector_env", make)
    returns_at = []
    real_gae = rl.compute_gae

    def gae(*args, **kwargs):  # called once per update, after the rollout
        returns_at.append(list(wrapped[0].return_queue))
        return real_gae(*args, **kwargs)

    monkeypatch.setattr(rl, "compute_gae", gae)
    result = train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=768, num_envs=4, rollout_len=64, epochs=1),
                       seed=3, progress=False)
    assert result.episodes == len(wrapped[0].return_queue) > 20  # fewer than its 100-long buffer
    for got, finished in zip(result.returns, returns_at, strict=True):
        assert got == pytest.approx(np.mean(finished[-20:]))  # the mean of the last 20 episodes


def test_wall_and_rollout_times_sum_over_the_updates(monkeypatch):
    ticks = iter(range(10_000))
    monkeypatch.setattr(rl.time, "perf_counter", lambda: float(next(ticks)))
    result = train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=768, num_envs=4, rollout_len=64, epochs=1),
                       progress=False)
    # each clock read advances one tick: 1 tick of rollout per update (t0, then after GAE)
    assert result.rollout_time_s == 3.0
    assert result.wall_time_s == next(ticks) - 1  # from the first reading to the last


def test_the_result_carries_the_config_and_the_mean_minibatch_statistics(monkeypatch):
    losses = []
    _spy(monkeypatch, "ppo_loss", losses)
    cfg = _tiny(minibatch_size=64, ent_coef=0.01)
    result = train_ppo(MLPPolicy(2, 2), cfg, progress=False)
    assert result.config == asdict(cfg)
    stats = [c[2][1] for c in losses]
    assert result.losses == pytest.approx([np.mean([c[2][0].item() for c in losses])])
    assert result.entropies == pytest.approx([np.mean([s["entropy"].item() for s in stats])])
    assert result.clip_fractions == pytest.approx([np.mean([s["clip_fraction"].item() for s in stats])])


def test_a_nan_after_the_first_update_names_the_last_finite_loss(monkeypatch):
    losses, updates = [], []
    _spy(monkeypatch, "ppo_loss", losses)
    real_gae = rl.compute_gae

    def gae(*args, **kwargs):
        updates.append(len(losses))  # minibatches before this update
        return real_gae(*args, **kwargs)

    monkeypatch.setattr(rl, "compute_gae", gae)
    real_mse = rl.F.mse_loss

    def mse(*args, **kwargs):
        out = real_mse(*args, **kwargs)
        return out * float("nan") if len(updates) > 1 else out

    monkeypatch.setattr(rl.F, "mse_loss", mse)
    with pytest.raises(rl.NonFiniteLossError) as info:
        train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=512, num_envs=4, rollout_len=64, epochs=1),
                  progress=False)
    last = losses[updates[1] - 1][2][0].item()
    assert str(info.value) == (f"PPO loss became nan at update 1; the last finite loss was {last:.4g} at update 0. "
                               "Lower the learning rate or check the observations for NaN.")


def test_an_interrupt_says_what_it_returns(monkeypatch, capsys):
    real = rl._forward_sample
    calls = []

    def stop(*args, **kwargs):
        calls.append(1)
        if len(calls) > 64:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rl, "_forward_sample", stop)
    train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=512, num_envs=4, rollout_len=64, epochs=1), progress=False)
    assert capsys.readouterr().out == ("Interrupted after 1 of 2 updates; returning the policy trained so far "
                                       "and its learning curve.\n")


def test_the_progress_bar_is_labelled_shows_the_return_and_is_cleared(monkeypatch, capsys):
    made = []
    real = rl.tqdm

    def bar(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(rl, "tqdm", bar)
    result = train_ppo(MLPPolicy(2, 2), _tiny(), progress=True)
    assert "PPO: " in capsys.readouterr().err
    shown = made[-1]
    assert shown.desc == "PPO" and shown.total == 1
    assert shown.postfix == f"ret={result.returns[-1]:.0f}"
    assert shown.leave is False  # the finished bar does not stay in the notebook
    train_ppo(MLPPolicy(2, 2), _tiny(), desc="attention", progress=True)
    assert made[-1].desc == "attention" and "attention: " in capsys.readouterr().err
    train_ppo(MLPPolicy(2, 2), _tiny(), progress=False)
    assert capsys.readouterr().err == ""


def test_training_is_reproducible_from_its_seed_which_defaults_to_0():
    def run(**seed):
        torch.manual_seed(0)
        policy = MLPPolicy(2, 2)
        return train_ppo(policy, _tiny(total_steps=512), progress=False, **seed), policy

    (a, pa), (b, pb), (c, _) = run(), run(seed=0), run(seed=1)
    assert a.losses == b.losses and a.returns == b.returns
    assert all(torch.equal(x, y) for x, y in zip(pa.parameters(), pb.parameters(), strict=True))
    assert a.losses != c.losses


def test_rollouts_sample_from_the_policy_and_greedy_takes_the_most_likely_action():
    torch.manual_seed(0)

    class Fixed(torch.nn.Module):  # logits ln(0.8), ln(0.2) for every row
        def forward(self, obs, valid):
            b = obs.shape[0]
            return torch.log(torch.tensor([[0.8, 0.2]])).expand(b, 2), torch.zeros(b)

    obs, valid = torch.zeros(4000, 1, 2), torch.ones(4000, 1, dtype=torch.bool)
    action, logp, value = rl._forward_sample(Fixed(), obs, valid)  # the default: sample
    assert 0.18 < action.float().mean().item() < 0.22  # P(action 1) = 0.2
    torch.testing.assert_close(logp, torch.log(torch.where(action == 0, 0.8, 0.2)))
    greedy, _, _ = rl._forward_sample(Fixed(), obs, valid, greedy=True)
    assert torch.all(greedy == 0) and value.dtype == torch.float32


def test_the_policy_device_is_where_its_parameters_are():
    assert rl._policy_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert rl._policy_device(torch.nn.Identity()) == torch.device("cpu")  # no parameters at all


# ------------------------------------------------------------------ the policies


def test_mlp_policy_defaults_are_stable_baselines3s_64_by_64_on_the_newest_frame():
    policy = MLPPolicy(obs_dim=2, n_actions=2)
    assert policy.window == 1
    assert [m.out_features for m in policy.actor if isinstance(m, torch.nn.Linear)] == [64, 64, 2]
    assert [m.out_features for m in policy.critic if isinstance(m, torch.nn.Linear)] == [64, 64, 1]
    assert policy.actor[0].in_features == 2


def test_mlp_policy_divides_by_the_scale_and_reads_the_validity_of_stacked_frames():
    policy = MLPPolicy(2, 2, frames=2)
    assert policy.actor[0].in_features == 2 * 2 + 2  # two frames and their two validity bits
    obs = torch.tensor([[[1.2, 0.1], [2.4, -0.2]]])
    valid = torch.tensor([[False, True]])
    scale = torch.tensor(rl.CARTPOLE_SCALE, dtype=torch.float32)
    torch.testing.assert_close(policy.features(obs, valid), torch.cat([(obs[0] / scale).flatten(),
                                                                        torch.tensor([0.0, 1.0])])[None])
    seen = policy(obs, torch.tensor([[True, True]]))
    assert not torch.equal(seen[0], policy(obs, valid)[0])  # "no frame yet" differs from a frame
    logits, value = MLPPolicy(2, 2, frames=1)(obs, valid)
    assert value.shape == (1,)


def test_the_observation_scale_is_a_setting_not_a_saved_weight():
    for policy in (MLPPolicy(2, 2), AttentionPolicy(2, 2)):
        assert "obs_scale" not in policy.state_dict()
        assert policy.obs_scale.tolist() == pytest.approx(list(rl.CARTPOLE_SCALE))


def test_attention_policy_defaults_and_initialisation_are_pinned():
    torch.manual_seed(0)
    policy = AttentionPolicy(obs_dim=2, n_actions=2)
    layer = policy.encoder.layers[0]
    assert len(policy.encoder.layers) == 1 and policy.window == 8
    assert (layer.linear1.in_features, layer.linear1.out_features) == (32, 64)
    torch.testing.assert_close(layer.activation(torch.tensor([-1.0, 1.0])),
                               torch.nn.functional.gelu(torch.tensor([-1.0, 1.0])))
    assert [m.out_features for m in policy.actor if isinstance(m, torch.nn.Linear)] == [64, 64, 2]
    for net, gain in ((policy.actor, 0.01), (policy.critic, 1.0)):
        w = net[-1].weight
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(w.shape[0]), atol=1e-6, rtol=1e-4)
    # the observations are divided by CartPole's thresholds before the embedding
    raw = AttentionPolicy(2, 2, obs_scale=None)
    raw.load_state_dict(policy.state_dict())
    obs, valid = torch.randn(3, 8, 2), torch.ones(3, 8, dtype=torch.bool)
    scale = torch.tensor(rl.CARTPOLE_SCALE, dtype=torch.float32)
    torch.testing.assert_close(policy(obs, valid), raw(obs / scale, valid))


# ------------------------------------------------------------------ the observation wrappers


def _blanked(p: float) -> BlankedObservation:
    return BlankedObservation(NoVelocityObservation(gym.make("CartPole-v1")), blank_prob=p)


def test_blanked_observation_space_and_dtype():
    env = _blanked(0.5)
    box = env.observation_space
    assert box.dtype == np.float32 and box.shape == (3,)
    assert box.low[-1] == 0.0 and box.high[-1] == 1.0  # the seen flag
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and box.contains(obs)


def test_blanking_follows_its_own_generator_seeded_from_the_reset_seed():
    env = _blanked(0.5)
    env.reset(seed=5)
    rng = np.random.default_rng(5 + 1_000_003)  # the stored results of notebook 14 depend on this rule
    for _ in range(30):
        obs, _, term, trunc, _ = env.step(0)
        assert obs[-1] == float(rng.random() >= 0.5)
        if term or trunc:
            break


def test_blanked_reset_passes_seed_and_options_and_every_episode_starts_seen():
    plain = NoVelocityObservation(gym.make("CartPole-v1"))
    env = _blanked(1.0)
    first, _ = env.reset(seed=11)
    np.testing.assert_array_equal(first[:-1], plain.reset(seed=11)[0])
    start, _ = env.reset(seed=0, options={"low": 0.03, "high": 0.03})  # CartPole's start-state range
    np.testing.assert_allclose(start, [0.03, 0.03, 1.0])
    assert env.step(0)[0][-1] == 0.0
    again, _ = env.reset()  # a second episode, no seed: seen again, generator kept
    assert again[-1] == 1.0 and env.step(0)[0][-1] == 0.0


def test_blanking_works_without_a_seeded_reset():
    env = _blanked(0.5)
    env.reset()
    assert env.step(0)[0].shape == (3,)


# ------------------------------------------------------------------ the history buffer


def test_history_buffer_takes_integer_and_tensor_observations_and_keeps_float32():
    buf = HistoryBuffer(2, 3, 2)
    buf.reset(np.array([[1, 2], [3, 4]]))
    buf.push(np.array([[0.5, 0.25], [1.0, 2.0]], dtype=np.float64), new_episode=np.array([False, False]))
    buf.push(torch.tensor([[1, 1], [2, 2]]), new_episode=torch.tensor([False, True]))
    buf.push(torch.tensor([[1.5, 1.5], [2.5, 2.5]]), new_episode=torch.tensor([False, False]))
    assert buf.obs.dtype == torch.float32
    assert buf.obs[0].tolist() == [[0.5, 0.25], [1.0, 1.0], [1.5, 1.5]]
    assert buf.obs[1].tolist() == [[0.0, 0.0], [2.0, 2.0], [2.5, 2.5]]


@pytest.mark.parametrize("obs, says", [
    (torch.ones(2, 2, dtype=torch.bool), "obs must hold real numbers, got dtype torch.bool"),
    (torch.ones(2, 2, dtype=torch.complex64), "obs must hold real numbers, got dtype torch.complex64"),
    ([[0.0, 0.0]], "obs must be a tensor or a NumPy array of shape (num_envs, obs_dim), got list [[0.0, 0.0]]"),
])
def test_history_buffer_observation_errors(obs, says):
    buf = HistoryBuffer(2, 3, 2)
    with pytest.raises(TypeError) as info:
        buf.reset(obs)
    assert str(info.value) == says


def test_history_buffer_size_and_new_episode_errors_name_the_argument():
    for args, name in (((0, 3, 2), "num_envs"), ((2, 3, 0), "obs_dim")):
        with pytest.raises(ValueError, match=f"^{name} must be a positive int, got 0"):
            HistoryBuffer(*args)
    buf = HistoryBuffer(2, 3, 2)
    buf.reset(np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"got list \[True, False\]$"):
        buf.push(np.zeros((2, 2)), new_episode=[True, False])


# ------------------------------------------------------------------ bad input, by name


def _policy_input_error(obs, valid) -> str:
    with pytest.raises((TypeError, ValueError)) as info:
        MLPPolicy(2, 2)(obs, valid)
    return str(info.value)


def test_policy_input_errors_say_what_was_expected():
    assert _policy_input_error(torch.zeros(3, 4, 2), [[True]]).startswith("valid must be a torch.Tensor")
    assert _policy_input_error(torch.zeros(3, 4, 2), torch.ones(3, 4)) == (
        "valid must be a bool tensor of shape (B, K) = (3, 4), the first two dims of obs (3, 4, 2), "
        "got (3, 4) torch.float32")


@pytest.mark.parametrize("make, says", [
    (lambda: MLPPolicy(2, 0), "n_actions must be a positive int, got 0"),
    (lambda: MLPPolicy(2, 2, hidden=0), "hidden must be a positive int, got 0"),
    (lambda: AttentionPolicy(0, 2), "obs_dim must be a positive int, got 0"),
    (lambda: AttentionPolicy(2, 2, hidden=0), "hidden must be a positive int, got 0"),
    (lambda: MLPPolicy(2, 2, obs_scale=2.4),
     "obs_scale must be a sequence of positive numbers (or None), got float 2.4"),
    (lambda: MLPPolicy(2, 2, obs_scale="2.4"),
     "obs_scale must be a sequence of positive numbers (or None), got str '2.4'"),
])
def test_policy_construction_errors_name_the_argument(make, says):
    with pytest.raises((TypeError, ValueError)) as info:
        make()
    assert str(info.value).startswith(says)


@pytest.mark.parametrize("change, error, says", [
    ({"rewards": torch.tensor(1.0)}, ValueError, "rewards must have at least 1 dims"),
    ({"values": torch.tensor(1.0)}, ValueError, "values must have at least 1 dims"),
    ({"terminated": [False] * 4}, TypeError, "terminated must be a torch.Tensor"),
    ({"terminated": torch.zeros(4)}, TypeError,
     "terminated must be a bool tensor (True where the episode ended), got a tensor of shape (4,) and dtype "
     "torch.float32"),
    ({"truncated": torch.zeros(3, dtype=torch.bool)}, ValueError,
     "truncated must have shape (T, ...) = (4,) like rewards"),
])
def test_gae_input_errors_name_the_argument(change, error, says):
    no = torch.zeros(4, dtype=torch.bool)
    args = dict(rewards=torch.ones(4), values=torch.zeros(5), terminated=no, truncated=no)
    with pytest.raises(error) as info:
        compute_gae(**{**args, **change})
    assert str(info.value).startswith(says)


@pytest.mark.parametrize("change, error, says", [
    ({"actions": torch.zeros(3, 1, dtype=torch.long)}, ValueError, "actions must have 1 dims"),
    ({"actions": [0, 1, 0]}, TypeError, "actions must be a torch.Tensor"),
    ({"actions": torch.tensor([True, False, True])}, TypeError,
     "actions must be an integer tensor of action indices, got a tensor of shape (3,) and dtype torch.bool"),
    ({"old_log_probs": torch.zeros(2)}, ValueError, "old_log_probs must have shape (B,) = (3,)"),
    ({"values": torch.zeros(2)}, ValueError, "values must have shape (B,) = (3,)"),
    ({"vf_coef": -0.5}, ValueError, "vf_coef must be a real number in [0.0, inf)"),
])
def test_ppo_loss_input_errors_name_the_argument(change, error, says):
    args = dict(logits=torch.zeros(3, 2), actions=torch.tensor([0, 1, 0]), old_log_probs=torch.zeros(3),
                advantages=torch.zeros(3), values=torch.zeros(3), returns=torch.zeros(3))
    with pytest.raises(error) as info:
        ppo_loss(**{**args, **change})
    assert str(info.value).startswith(says)


@pytest.mark.parametrize("kwargs, says", [
    ({"ent_coef": -0.1}, "ent_coef must be a real number in [0.0, inf)"),
    ({"vf_coef": -0.1}, "vf_coef must be a real number in [0.0, inf)"),
])
def test_ppo_config_coefficients_are_checked(kwargs, says):
    with pytest.raises(ValueError) as info:
        PPOConfig(**kwargs)
    assert str(info.value).startswith(says)


def test_training_and_evaluation_arguments_are_checked_by_name():
    policy = MLPPolicy(2, 2)
    with pytest.raises(TypeError) as info:
        train_ppo(torch.nn.Linear(2, 2), progress=False)
    assert str(info.value) == ("policy must be an nn.Module with attributes window and obs_dim (MLPPolicy, "
                               "AttentionPolicy or one of the same interface), got Linear Linear(in_features=2, "
                               "out_features=2, bias=True)")
    with pytest.raises(ValueError) as info:
        train_ppo(MLPPolicy(3, 2), _tiny(), progress=False)
    assert str(info.value) == "policy.obs_dim must be 2 (x, theta) for blank_prob=0.0, got 3"
    with pytest.raises(TypeError, match=r"config must be a PPOConfig, got dict \{'total_steps': 256\}"):
        train_ppo(policy, {"total_steps": 256}, progress=False)
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match=rf"^blank_prob must be a real number in \[0.0, 1.0\], got {bad}"):
            evaluate(policy, blank_prob=bad)
        with pytest.raises(ValueError, match=r"^blank_prob must be a real number in \[0.0, 1.0\]"):
            _blanked(bad)
    with pytest.raises(ValueError, match=r"^blank_prob must be a real number in \[0.0, 1.0\], got 1.5"):
        make_vector_env(2, blank_prob=1.5)
    with pytest.raises(ValueError, match=r"^seed must be an int in \[0, "):
        evaluate(policy, seed=-1)
    assert evaluate(policy, episodes=1, seed=0, max_steps=5).shape == (1,)  # seed 0 is allowed
    with pytest.raises(TypeError, match=r"got str 'CartPole-v1'$"):
        NoVelocityObservation("CartPole-v1")


def test_the_curve_is_nan_until_an_episode_ends_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        # one environment, 5 steps an update: the pole cannot fall that fast
        result = train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=10, num_envs=1, rollout_len=5, epochs=1,
                                                      minibatch_size=5), progress=False)
    assert result.episodes == 0 and len(result.returns) == 2 and all(math.isnan(r) for r in result.returns)
