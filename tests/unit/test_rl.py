"""Tests of course_utils.rl: the partial-observation wrapper, the history window across
gymnasium's NEXT_STEP autoresets, GAE against hand-computed numbers, the policies' shapes and
the causal mask of the attention policy, and a tiny PPO run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

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
    record_episode,
    train_ppo,
)

# ------------------------------------------------------------------ wrappers


def test_wrapper_drops_the_velocities():
    raw = gym.make("CartPole-v1")
    wrapped = NoVelocityObservation(gym.make("CartPole-v1"))
    full, _ = raw.reset(seed=3)
    part, _ = wrapped.reset(seed=3)
    assert wrapped.observation_space.shape == (2,)
    np.testing.assert_array_equal(part, full[[0, 2]])  # cart position, pole angle
    for action in [0, 1, 1, 0, 1]:
        full = raw.step(action)[0]
        part = wrapped.step(action)[0]
        np.testing.assert_array_equal(part, full[[0, 2]])
    assert part.dtype == np.float32


def test_wrapper_rejects_other_spaces():
    with pytest.raises(ValueError, match="Box"):
        NoVelocityObservation(gym.make("MountainCar-v0"))


def test_blanked_observation_flag_and_zeros():
    env = BlankedObservation(NoVelocityObservation(gym.make("CartPole-v1")), blank_prob=0.5)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3,) and obs[-1] == 1.0  # the first observation is always seen
    flags = []
    for _ in range(200):
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        flags.append(obs[-1])
        if obs[-1] == 0:
            assert np.all(obs == 0)
        if term or trunc:
            obs, _ = env.reset()
    assert 0.35 < np.mean(flags) < 0.65
    never = BlankedObservation(NoVelocityObservation(gym.make("CartPole-v1")), blank_prob=0.0)
    never.reset(seed=0)
    assert all(never.step(0)[0][-1] == 1.0 for _ in range(5))


# ------------------------------------------------------------------ the history window


def test_history_buffer_by_hand_across_a_next_step_autoreset():
    # One environment, window 3. Its episode ends at the second step (done=True is returned
    # together with the final observation 2.0); with NEXT_STEP autoreset the *following* step
    # ignores the action and returns the first observation of the new episode (10.0).
    buf = HistoryBuffer(num_envs=1, window=3, obs_dim=1)
    buf.reset(np.array([[0.0]]))
    script = [  # (observation returned by step, done returned by step)
        (1.0, False),
        (2.0, True),  # final observation of episode 1
        (10.0, False),  # autoreset: first observation of episode 2
        (11.0, False),
    ]
    expected = [
        ([0, 0, 1], [False, True, True]),
        ([0, 1, 2], [True, True, True]),  # the final observation still belongs to episode 1
        ([0, 0, 10], [False, False, True]),  # episode 2 starts clean
        ([0, 10, 11], [False, True, True]),
    ]
    last_done = False
    for (obs, done), (want_obs, want_valid) in zip(script, expected, strict=True):
        buf.push(np.array([[obs]]), new_episode=np.array([last_done]))
        last_done = done
        got_obs, got_valid = buf.get()
        assert got_obs[0, :, 0].tolist() == want_obs
        assert got_valid[0].tolist() == want_valid


def test_history_buffer_matches_independent_single_environments():
    # Reference: N separate environments stepped by hand (reset when an episode ends, as a
    # single env requires). The vector env's NEXT_STEP autoreset must give the same windows.
    n, k, steps = 3, 4, 120
    rng = np.random.default_rng(0)
    envs = make_vector_env(n)
    obs, _ = envs.reset(seed=7)
    singles = [NoVelocityObservation(gym.make("CartPole-v1")) for _ in range(n)]
    episodes = [[single.reset(seed=7 + i)[0]] for i, single in enumerate(singles)]
    pending_reset = [False] * n
    buf = HistoryBuffer(n, k, 2)
    buf.reset(obs)
    last_done = np.zeros(n, dtype=bool)
    boundaries = 0
    for _ in range(steps):
        actions = rng.integers(0, 2, size=n)
        obs, _, term, trunc, _ = envs.step(actions)
        buf.push(obs, new_episode=last_done)
        last_done = term | trunc
        for i, single in enumerate(singles):
            if pending_reset[i]:  # the vector env ignored this action and reset
                episodes[i] = [single.reset()[0]]
                pending_reset[i] = False
                boundaries += 1
            else:
                o, _, te, tr, _ = single.step(int(actions[i]))
                episodes[i].append(o)
                pending_reset[i] = bool(te or tr)
        window_obs, window_valid = buf.get()
        for i in range(n):
            recent = np.array(episodes[i][-k:])
            m = len(recent)
            np.testing.assert_allclose(window_obs[i, k - m:].numpy(), recent, rtol=0, atol=1e-7)
            assert window_valid[i].tolist() == [False] * (k - m) + [True] * m
            assert torch.all(window_obs[i, : k - m] == 0)
    assert boundaries >= 3  # the random policy ended several episodes: the case was exercised


def test_history_buffer_rejects_wrong_shapes():
    buf = HistoryBuffer(2, 3, 2)
    with pytest.raises(ValueError, match=r"\(num_envs, obs_dim\) = \(2, 2\)"):
        buf.reset(np.zeros((3, 2)))
    buf.reset(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="new_episode"):
        buf.push(np.zeros((2, 2)), new_episode=np.zeros(3, dtype=bool))


# ------------------------------------------------------------------ GAE


def test_gae_hand_computed_with_truncation_bootstrap():
    # Two environments, three steps, gamma 0.9, lambda 0.8. Both episodes end at step 1;
    # env 0 is *truncated* (time limit: bootstrap with V(s2)), env 1 *terminated* (no future).
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    v = torch.tensor([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    term = torch.tensor([[False, False], [False, True], [False, False]])
    trunc = torch.tensor([[False, False], [True, False], [False, False]])
    adv, ret = compute_gae(r, v, term, trunc, gamma=0.9, lam=0.8)
    # by hand: A2 = 1 + 0.9*3 - 2 = 1.7 (both)
    # env 0: A1 = 1 + 0.9*2 - 1 = 1.8 (no flow from A2: done), A0 = (1 + 0.9*1 - 0.5) + 0.72*1.8
    # env 1: A1 = 1 + 0 - 1 = 0,                                A0 = 1.4 + 0.72*0
    expected = torch.tensor([[1.4 + 0.72 * 1.8, 1.4], [1.8, 0.0], [1.7, 1.7]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + v[:-1])


def test_gae_lambda_one_is_the_discounted_return_plus_bootstrap():
    torch.manual_seed(0)
    r, v = torch.rand(5), torch.rand(6)
    no = torch.zeros(5, dtype=torch.bool)
    _, ret = compute_gae(r, v, no, no, gamma=0.9, lam=1.0)
    want = sum(0.9**i * r[i] for i in range(5)) + 0.9**5 * v[5]
    torch.testing.assert_close(ret[0], want)


def test_gae_shape_error():
    with pytest.raises(ValueError, match=r"\(T\+1, \.\.\.\)"):
        compute_gae(torch.zeros(3), torch.zeros(3), torch.zeros(3, dtype=torch.bool),
                    torch.zeros(3, dtype=torch.bool))


# ------------------------------------------------------------------ policies


@pytest.mark.parametrize("make", [
    lambda: MLPPolicy(2, 2, frames=1),
    lambda: MLPPolicy(2, 2, frames=6),
    lambda: AttentionPolicy(2, 2, window=6, d_model=16, nhead=2, num_layers=2),
])
def test_policy_output_shapes(make):
    policy = make()
    obs, valid = torch.randn(7, 6, 2), torch.ones(7, 6, dtype=torch.bool)
    valid[0, :4] = False  # an early step of an episode
    logits, value = policy(obs, valid)
    assert logits.shape == (7, 2) and value.shape == (7,)
    assert torch.isfinite(logits).all() and torch.isfinite(value).all()


def test_memoryless_policy_ignores_the_past():
    policy = MLPPolicy(2, 2, frames=1)
    obs, valid = torch.randn(3, 5, 2), torch.ones(3, 5, dtype=torch.bool)
    other = obs.clone()
    other[:, :-1] = torch.randn(3, 4, 2)
    torch.testing.assert_close(policy(obs, valid), policy(other, valid))


def test_attention_is_causal_future_frames_cannot_influence_the_past():
    torch.manual_seed(0)
    policy = AttentionPolicy(2, 2, window=6, d_model=16, nhead=4, num_layers=2)
    obs, valid = torch.randn(4, 6, 2), torch.ones(4, 6, dtype=torch.bool)
    base = policy.encode(obs, valid)  # (B, K, d)
    for j in range(6):
        changed = obs.clone()
        changed[:, j] += 5.0  # perturb frame j only
        out = policy.encode(changed, valid)
        torch.testing.assert_close(out[:, :j], base[:, :j])  # earlier positions: untouched
        assert (out[:, j:] - base[:, j:]).abs().amax() > 1e-3  # frame j and later: affected
    w = policy.attention_weights(obs, valid)
    assert len(w) == 2 and w[0].shape == (4, 4, 6, 6)
    assert torch.all(w[0].triu(diagonal=1) == 0)  # no weight on the future
    torch.testing.assert_close(w[0].sum(-1), torch.ones(4, 4, 6))


@pytest.mark.parametrize("num_layers", [1, 2])
def test_attention_fast_newest_row_equals_the_full_causal_encoder(num_layers):
    torch.manual_seed(0)
    policy = AttentionPolicy(2, 2, window=6, d_model=16, nhead=4, num_layers=num_layers)
    obs, valid = torch.randn(5, 6, 2), torch.ones(5, 6, dtype=torch.bool)
    valid[0, :4] = False
    valid[1, :1] = False
    full = policy.encode(obs, valid)[:, -1]
    torch.testing.assert_close(policy.newest(obs, valid), full, atol=1e-5, rtol=1e-5)
    logits, value = policy(obs, valid)
    torch.testing.assert_close(logits, policy.actor(full), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, policy.critic(full).squeeze(-1), atol=1e-5, rtol=1e-5)


def test_attention_ignores_padding_slots():
    torch.manual_seed(0)
    policy = AttentionPolicy(2, 2, window=5, d_model=16, nhead=2)
    obs, valid = torch.randn(3, 5, 2), torch.ones(3, 5, dtype=torch.bool)
    valid[:, :3] = False  # only the last two frames exist
    garbage = obs.clone()
    garbage[:, :3] = 100.0
    torch.testing.assert_close(policy(obs, valid), policy(garbage, valid))
    w = policy.attention_weights(obs, valid)[0]
    assert torch.all(w[:, :, -1, :3] == 0)


def test_policy_input_errors():
    policy = AttentionPolicy(2, 2, window=4, d_model=8, nhead=2)
    with pytest.raises(ValueError, match="obs must have shape"):
        policy(torch.randn(3, 4, 3), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        policy(torch.randn(3, 4, 2), torch.ones(3, 4))


# ------------------------------------------------------------------ training and evaluation


def test_ppo_runs_and_evaluates():
    torch.manual_seed(0)
    policy = AttentionPolicy(2, 2, window=4, d_model=16, nhead=2)
    cfg = PPOConfig(total_steps=512, num_envs=4, rollout_len=64, epochs=2, minibatch_size=128)
    result = train_ppo(policy, cfg, seed=1, progress=False)
    assert result.steps == [256, 512]
    assert len(result.returns) == 2 and result.episodes > 0
    assert np.isfinite(result.returns[-1])
    returns = evaluate(policy, episodes=4, greedy=True, max_steps=60)
    assert returns.shape == (4,) and np.all((returns >= 1) & (returns <= 60))
    sampled = evaluate(policy, episodes=4, greedy=False, max_steps=60)
    assert sampled.shape == (4,)
    ep = record_episode(policy, max_steps=10)
    t = len(ep["obs"])
    assert ep["attention"].shape == (t, 2, 4) and ep["obs"].shape == (t, 2)
    np.testing.assert_allclose(ep["attention"].sum(-1), 1.0, rtol=1e-5)


def test_ppo_variant_task_dimensions():
    policy = MLPPolicy(3, 2, frames=4)
    cfg = PPOConfig(total_steps=256, num_envs=4, rollout_len=64, epochs=1, blank_prob=0.5)
    result = train_ppo(policy, cfg, seed=0, progress=False)
    assert result.steps == [256]
    assert evaluate(policy, episodes=3, blank_prob=0.5).shape == (3,)



def _tiny_config():
    from course_utils.rl import PPOConfig

    return PPOConfig(total_steps=512, num_envs=4, rollout_len=64, epochs=1, threads=1)


def test_train_ppo_stops_on_nan_naming_the_update(monkeypatch):
    from course_utils import rl as rl_module
    from course_utils.training import NonFiniteLossError

    # A value loss that turns NaN (as an exploding critic would): training must stop at once.
    monkeypatch.setattr(rl_module.F, "mse_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(NonFiniteLossError, match="PPO loss became nan at update 0; no finite loss"):
        rl_module.train_ppo(MLPPolicy(2, 2, frames=1), _tiny_config(), progress=False)


def test_train_ppo_keeps_the_policy_and_curve_on_interrupt(monkeypatch, capsys):
    from course_utils import rl as rl_module

    calls = {"n": 0}
    real = rl_module._forward_sample

    def interrupt_in_second_update(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 64:  # the first update collects 64 steps; stop during the second
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rl_module, "_forward_sample", interrupt_in_second_update)
    result = rl_module.train_ppo(MLPPolicy(2, 2, frames=1), _tiny_config(), progress=False)
    assert result.interrupted and result.steps == [256]
    assert "Interrupted after 1 of 2 updates" in capsys.readouterr().out
