"""Tests of course_utils.rl: the partial-observation wrapper, the history window across
gymnasium's NEXT_STEP autoresets, GAE against hand-computed numbers, the policies' shapes and
the causal mask of the attention policy, and a tiny PPO run."""

from __future__ import annotations

import math

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


# ------------------------------------------------------------------ the PPO loss, by hand

def _uniform_logits(b: int, n_actions: int = 2) -> torch.Tensor:
    return torch.zeros(b, n_actions, requires_grad=True)  # pi(a) = 1 / n_actions for every a


def _old_log_probs_for(ratios: list[float], n_actions: int = 2) -> torch.Tensor:
    # the new policy is uniform, so ratio = (1/n) / pi_old  <=>  pi_old = (1/n) / ratio
    return torch.log(torch.tensor([(1.0 / n_actions) / r for r in ratios]))


def test_ppo_loss_clips_on_both_sides_and_stops_their_gradient():
    from course_utils.rl import ppo_loss

    # ratio 1.5 with A > 0 and ratio 0.5 with A < 0 leave the trust region in the direction that
    # would *increase* the objective: clipped (1.2·1, 0.8·-1), no gradient. Ratio 0.5 with A > 0
    # and ratio 1.5 with A < 0 are kept as they are (the min picks the unclipped, worse term).
    ratios, adv = [1.5, 0.5, 0.5, 1.5], torch.tensor([1.0, -1.0, 1.0, -1.0])
    logits = _uniform_logits(4)
    actions = torch.zeros(4, dtype=torch.long)
    loss, stats = ppo_loss(logits, actions, _old_log_probs_for(ratios), adv, torch.zeros(4), torch.zeros(4),
                           clip=0.2, vf_coef=0.0, ent_coef=0.0, normalize_advantages=False)
    terms = [1.2 * 1.0, 0.8 * -1.0, 0.5 * 1.0, 1.5 * -1.0]
    torch.testing.assert_close(loss, torch.tensor(-sum(terms) / 4))  # = 0.15
    torch.testing.assert_close(stats["policy"], torch.tensor(0.15))
    assert stats["clip_fraction"].item() == 1.0  # |ratio - 1| = 0.5 > 0.2 for all four
    loss.backward()
    row_grad = logits.grad.abs().sum(-1)
    assert row_grad[0] == 0 and row_grad[1] == 0, "clipped samples must not push the policy further"
    assert row_grad[2] > 0 and row_grad[3] > 0, "unclipped samples must get a gradient"
    # d(-rho A / 4) / d logit_0 = -A/4 * rho * (1 - pi(a=0)) = -A/4 * rho / 2
    torch.testing.assert_close(logits.grad[2, 0], torch.tensor(-1.0 / 4 * 0.5 / 2))
    torch.testing.assert_close(logits.grad[3, 0], torch.tensor(1.0 / 4 * 1.5 / 2))


def test_ppo_loss_inside_the_trust_region_is_the_plain_surrogate():
    from course_utils.rl import ppo_loss

    ratios, adv = [1.1, 1.0, 0.9], torch.tensor([1.0, 2.0, 3.0])
    old = _old_log_probs_for(ratios)
    zeros = torch.zeros(3)
    loss, stats = ppo_loss(_uniform_logits(3), torch.zeros(3, dtype=torch.long), old, adv, zeros, zeros,
                           vf_coef=0.0, normalize_advantages=False)
    torch.testing.assert_close(loss, torch.tensor(-(1.1 * 1 + 1.0 * 2 + 0.9 * 3) / 3))
    assert stats["clip_fraction"].item() == 0.0


def test_ppo_loss_normalises_advantages_with_the_unbiased_std():
    from course_utils.rl import ppo_loss

    ratios = [1.1, 1.0, 0.9]
    old = _old_log_probs_for(ratios)
    zeros = torch.zeros(3)
    args = (torch.zeros(3, dtype=torch.long), old)
    # [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1]
    loss, _ = ppo_loss(_uniform_logits(3), *args, torch.tensor([1.0, 2.0, 3.0]), zeros, zeros, vf_coef=0.0)
    torch.testing.assert_close(loss, torch.tensor(-(1.1 * -1 + 0 + 0.9 * 1) / 3))
    # the scale and the offset of the advantages no longer matter
    shifted, _ = ppo_loss(_uniform_logits(3), *args, torch.tensor([110.0, 120.0, 130.0]), zeros, zeros,
                          vf_coef=0.0)
    torch.testing.assert_close(shifted, loss)
    # a minibatch of one has no std: it is left as it is
    one, _ = ppo_loss(_uniform_logits(1), torch.zeros(1, dtype=torch.long), old[:1], torch.tensor([5.0]),
                      torch.zeros(1), torch.zeros(1), vf_coef=0.0)
    torch.testing.assert_close(one, torch.tensor(-min(1.1 * 5.0, 1.2 * 5.0)))


def test_ppo_loss_value_term_and_entropy_bonus_compose_with_their_signs():
    from course_utils.rl import ppo_loss

    logits = _uniform_logits(2, n_actions=3)  # entropy ln 3
    old = _old_log_probs_for([1.0, 1.0], n_actions=3)  # ratio 1
    adv = torch.tensor([2.0, -2.0])  # policy term: -mean(2, -2) = 0
    values, returns = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    loss, stats = ppo_loss(logits, torch.tensor([0, 2]), old, adv, values, returns,
                           vf_coef=0.5, ent_coef=0.1, normalize_advantages=False)
    value_loss = 0.5 * (1.0**2 + 3.0**2) / 2  # ½ mean squared error = 2.5
    torch.testing.assert_close(stats["value"], torch.tensor(value_loss))
    torch.testing.assert_close(stats["entropy"], torch.log(torch.tensor(3.0)))
    torch.testing.assert_close(stats["policy"], torch.tensor(0.0))
    expected = 0.0 + 0.5 * value_loss - 0.1 * math.log(3.0)  # entropy is a *bonus*: subtracted
    torch.testing.assert_close(loss, torch.tensor(expected))
    torch.testing.assert_close(stats["approx_kl"], torch.tensor(0.0))  # same policy: KL 0


def test_ppo_loss_value_gradient_pulls_the_value_towards_the_return():
    from course_utils.rl import ppo_loss

    values = torch.tensor([1.0, 3.0], requires_grad=True)
    old = _old_log_probs_for([1.0, 1.0])
    loss, _ = ppo_loss(_uniform_logits(2), torch.zeros(2, dtype=torch.long), old, torch.zeros(2), values,
                       torch.zeros(2), vf_coef=0.5, normalize_advantages=False)
    loss.backward()
    # d/dV of 0.5 * 0.5 * mean((V - R)^2) = 0.5 * (V - R) / 2
    torch.testing.assert_close(values.grad, torch.tensor([0.25, 0.75]))


def test_ppo_loss_accepts_autocast_outputs_and_computes_in_float32():
    from course_utils.rl import ppo_loss

    logits = torch.randn(8, 2).to(torch.bfloat16)
    loss, _ = ppo_loss(logits, torch.zeros(8, dtype=torch.long), torch.full((8,), -0.69), torch.randn(8),
                       torch.randn(8).to(torch.bfloat16), torch.randn(8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_ppo_loss_reads_nothing_back_from_the_device():
    # On a "meta" tensor (shapes, no data) every value read-back raises: the loss must build
    # without one, so that on a GPU it never waits for the device inside a training step.
    from course_utils.rl import ppo_loss

    meta = lambda *shape, dtype=torch.float32: torch.empty(*shape, dtype=dtype, device="meta")  # noqa: E731
    loss, stats = ppo_loss(meta(16, 2), meta(16, dtype=torch.long), meta(16), meta(16), meta(16), meta(16))
    assert loss.device.type == "meta" and stats["clip_fraction"].device.type == "meta"


@pytest.mark.parametrize("change, error, says", [
    ({"advantages": torch.tensor([1, 2, 3])}, TypeError, "advantages must be a floating-point tensor"),
    ({"actions": torch.tensor([0.0, 1.0, 0.0])}, TypeError, "actions must be an integer tensor"),
    ({"actions": torch.tensor([0, 2, 1])}, ValueError, "actions must be in [0, 2)"),
    ({"returns": torch.zeros(4)}, ValueError, "returns must have shape (B,) = (3,)"),
    ({"logits": torch.zeros(3)}, ValueError, "logits must have 2 dims"),
    ({"clip": 0.0}, ValueError, "clip must be a real number in (0.0, inf)"),
    ({"ent_coef": -0.01}, ValueError, "ent_coef must be a real number in [0.0, inf)"),
    ({"normalize_advantages": "yes"}, TypeError, "normalize_advantages must be True or False"),
])
def test_ppo_loss_bad_input_names_the_argument(change, error, says):
    from course_utils.rl import ppo_loss

    args = dict(logits=torch.zeros(3, 2), actions=torch.tensor([0, 1, 0]), old_log_probs=torch.zeros(3),
                advantages=torch.zeros(3), values=torch.zeros(3), returns=torch.zeros(3))
    with pytest.raises(error) as info:
        ppo_loss(**{**args, **change})
    assert says in str(info.value)


def test_the_training_loop_takes_its_loss_from_ppo_loss(monkeypatch):
    from course_utils import rl as rl_module

    calls = []
    real = rl_module.ppo_loss

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(rl_module, "ppo_loss", spy)
    cfg = PPOConfig(total_steps=512, num_envs=4, rollout_len=64, epochs=2, minibatch_size=128,
                    clip=0.3, vf_coef=0.7, ent_coef=0.01)
    result = train_ppo(MLPPolicy(2, 2), cfg, progress=False)
    # 2 updates x 2 epochs x 2 minibatches (of at most 256 real steps, minus the autoreset no-ops)
    assert 2 * 2 * 1 < len(calls) <= 2 * 2 * 2
    assert all(c == {"clip": 0.3, "vf_coef": 0.7, "ent_coef": 0.01} for c in calls)
    assert len(result.losses) == len(result.entropies) == len(result.clip_fractions) == 2
    assert all(np.isfinite(result.losses)) and all(0 <= f <= 1 for f in result.clip_fractions)


def test_training_reads_the_losses_back_once_per_update_not_once_per_step(monkeypatch):
    from course_utils import rl as rl_module

    reads = {"item": 0, "tolist": 0, "steps": 0}
    real_item, real_tolist, real_loss = torch.Tensor.item, torch.Tensor.tolist, rl_module.ppo_loss

    def item(self):
        reads["item"] += 1
        return real_item(self)

    def tolist(self):
        reads["tolist"] += 1
        return real_tolist(self)

    def counted_loss(*args, **kwargs):
        reads["steps"] += 1
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(rl_module, "ppo_loss", counted_loss)
    cfg = PPOConfig(total_steps=768, num_envs=4, rollout_len=64, epochs=3, minibatch_size=64)
    train_ppo(MLPPolicy(2, 2), cfg, progress=False)
    assert reads["steps"] >= 3 * 3 * 3  # 3 updates x 3 epochs x at least 3 minibatches
    assert reads["item"] == 0 and reads["tolist"] == 3  # one read-back per update


def test_autocast_on_request_runs_the_update_in_bfloat16_on_the_cpu():
    policy = MLPPolicy(2, 2, frames=1)
    dtypes = set()
    policy.actor[-1].register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
    cfg = PPOConfig(total_steps=256, num_envs=4, rollout_len=64, epochs=1, autocast=True)
    result = train_ppo(policy, cfg, progress=False)
    assert torch.bfloat16 in dtypes and np.isfinite(result.losses).all()
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # the weights stay fp32
    dtypes.clear()
    train_ppo(policy, PPOConfig(total_steps=256, num_envs=4, rollout_len=64, epochs=1), progress=False)
    assert dtypes == {torch.float32}  # default on the CPU: no autocast


@pytest.mark.filterwarnings("ignore:.*GradScaler is enabled, but CUDA is not available")
def test_autocast_is_on_by_default_for_cuda_and_off_for_the_cpu():
    from course_utils import rl as rl_module
    from course_utils.precision import amp_dtype

    mp = rl_module._mixed_precision(torch.device("cuda"), None)
    assert mp.enabled and mp.dtype == amp_dtype("cuda")  # the course's rule for this GPU generation
    assert not rl_module._mixed_precision(torch.device("cuda"), False).enabled
    assert not rl_module._mixed_precision(torch.device("cpu"), None).enabled
    forced = rl_module._mixed_precision(torch.device("cpu"), True)
    assert forced.enabled and forced.dtype == torch.bfloat16


# ------------------------------------------------------------------ defaults, pinned to their sources


def test_ppo_defaults_are_rl_zoo_cartpole_and_stable_baselines3():
    import inspect

    from course_utils.rl import ppo_loss

    cfg = PPOConfig()
    # RL Zoo (rl-baselines3-zoo, hyperparams/ppo.yml, CartPole-v1): n_envs 8, n_steps 32,
    # batch_size 256, gae_lambda 0.8, gamma 0.98, ent_coef 0.0, learning_rate lin_1e-3
    assert (cfg.num_envs, cfg.rollout_len, cfg.minibatch_size) == (8, 32, 256)
    assert (cfg.gamma, cfg.gae_lambda, cfg.ent_coef, cfg.lr) == (0.98, 0.8, 0.0, 1e-3)
    # Stable-Baselines3 PPO defaults (clip_range 0.2 is also the paper's epsilon)
    assert (cfg.clip, cfg.vf_coef, cfg.max_grad_norm) == (0.2, 0.5, 0.5)
    # documented departures: 10 epochs (RL Zoo: 20), 200k steps (RL Zoo: 100k)
    assert (cfg.epochs, cfg.total_steps) == (10, 200_000)
    assert cfg.blank_prob == 0.0 and cfg.autocast is None
    loss_defaults = {k: p.default for k, p in inspect.signature(ppo_loss).parameters.items()
                     if p.default is not inspect.Parameter.empty}
    assert loss_defaults == {"clip": 0.2, "vf_coef": 0.5, "ent_coef": 0.0, "normalize_advantages": True}
    gae = inspect.signature(compute_gae).parameters
    assert (gae["gamma"].default, gae["lam"].default) == (0.99, 0.95)  # GAE paper / SB3


def test_adam_epsilon_and_linear_learning_rate_annealing(monkeypatch):
    # "The 37 implementation details of PPO": Adam eps 1e-5, learning rate annealed linearly
    seen = {}
    real = torch.optim.Adam

    def adam(params, **kwargs):
        opt = real(params, **kwargs)
        seen["kwargs"], seen["opt"] = kwargs, opt
        return opt

    monkeypatch.setattr(torch.optim, "Adam", adam)
    lrs = []
    from course_utils import rl as rl_module

    real_loss = rl_module.ppo_loss

    def record_lr(*args, **kwargs):
        lrs.append(seen["opt"].param_groups[0]["lr"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(rl_module, "ppo_loss", record_lr)
    train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=1024, num_envs=4, rollout_len=64, epochs=1,
                                         minibatch_size=512, lr=2e-3), progress=False)
    assert seen["kwargs"]["eps"] == 1e-5 and seen["kwargs"]["lr"] == 2e-3
    assert lrs == pytest.approx([2e-3, 1.5e-3, 1e-3, 0.5e-3])  # 4 updates, 1 minibatch each


def test_policy_initialisation_is_orthogonal_with_ppo_gains():
    policy = MLPPolicy(2, 2, frames=1, hidden=64)
    for net, out_gain in ((policy.actor, 0.01), (policy.critic, 1.0)):
        linears = [m for m in net if isinstance(m, torch.nn.Linear)]
        for layer in linears:
            gain = out_gain if layer is linears[-1] else math.sqrt(2)
            w = layer.weight
            gram = w @ w.T if w.size(0) <= w.size(1) else w.T @ w  # orthogonal rows or columns
            torch.testing.assert_close(gram, gain**2 * torch.eye(min(w.shape)), atol=1e-5, rtol=1e-4)
            assert torch.all(layer.bias == 0)
    att = AttentionPolicy(2, 2)
    layer = att.encoder.layers[0]
    assert layer.norm_first and att.encoder.norm is not None  # pre-LN with a final LayerNorm
    assert (att.window, layer.self_attn.num_heads, att.embed.out_features) == (8, 4, 32)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, says", [
    ({"total_steps": -1}, "total_steps must be a positive int, got -1"),
    ({"total_steps": 100}, "total_steps must be at least num_envs * rollout_len = 8 * 32 = 256"),
    ({"gamma": 5.0}, "gamma must be a real number in [0.0, 1.0], got 5.0"),
    ({"gae_lambda": -0.1}, "gae_lambda must be a real number in [0.0, 1.0]"),
    ({"lr": 0.0}, "lr must be a real number in (0.0, inf)"),
    ({"lr": float("nan")}, "lr must be a real number"),
    ({"clip": -0.2}, "clip must be a real number in (0.0, inf)"),
    ({"num_envs": 0}, "num_envs must be a positive int"),
    ({"epochs": 2.0}, "epochs must be a positive int"),
    ({"minibatch_size": True}, "minibatch_size must be a positive int"),
    ({"blank_prob": 1.5}, "blank_prob must be a real number in [0.0, 1.0]"),
    ({"max_grad_norm": 0}, "max_grad_norm must be a real number in (0.0, inf)"),
    ({"threads": 0}, "threads must be a positive int"),
    ({"autocast": "yes"}, "autocast must be True or False"),
])
def test_ppo_config_rejects_bad_settings(kwargs, says):
    with pytest.raises((ValueError, TypeError)) as info:
        PPOConfig(**kwargs)
    assert says in str(info.value)


def test_ppo_config_checks_again_after_replace():
    from dataclasses import replace

    with pytest.raises(ValueError, match="blank_prob"):
        replace(PPOConfig(), blank_prob=-0.5)


def test_gae_on_integer_rewards_is_an_error_not_a_truncated_answer():
    values = torch.zeros(5)
    no = torch.zeros(4, dtype=torch.bool)
    with pytest.raises(TypeError, match="rewards must be a floating-point tensor"):
        compute_gae(torch.ones(4, dtype=torch.long), values, no, no, gamma=0.9, lam=1.0)
    _, ret = compute_gae(torch.ones(4), values, no, no, gamma=0.9, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([1 + 0.9 + 0.81 + 0.729, 1 + 0.9 + 0.81, 1.9, 1.0]))


@pytest.mark.parametrize("change, error, says", [
    ({"values": torch.zeros(5, dtype=torch.long)}, TypeError, "values must be a floating-point tensor"),
    ({"values": torch.zeros(5, dtype=torch.float64)}, TypeError, "rewards and values must have the same dtype"),
    ({"terminated": torch.zeros(4)}, TypeError, "terminated must be a bool tensor"),
    ({"truncated": torch.zeros(3, dtype=torch.bool)}, ValueError, "truncated must have shape"),
    ({"gamma": 5.0}, ValueError, "gamma must be a real number in [0.0, 1.0], got 5.0"),
    ({"lam": -1.0}, ValueError, "lam must be a real number in [0.0, 1.0]"),
    ({"rewards": torch.tensor([1.0, float("nan"), 1.0, 1.0])}, ValueError, "rewards contains NaN"),
    ({"values": torch.tensor([0.0, 0.0, float("inf"), 0.0, 0.0])}, ValueError, "values contains NaN or infinite"),
    ({"rewards": [1.0, 1.0, 1.0, 1.0]}, TypeError, "rewards must be a torch.Tensor"),
])
def test_gae_bad_input_names_the_argument(change, error, says):
    no = torch.zeros(4, dtype=torch.bool)
    args = dict(rewards=torch.ones(4), values=torch.zeros(5), terminated=no, truncated=no)
    with pytest.raises(error) as info:
        compute_gae(**{**args, **change})
    assert says in str(info.value)


def test_history_buffer_bad_input():
    buf = HistoryBuffer(2, 3, 2)
    buf.reset(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="new_episode must be a bool tensor or array"):
        buf.push(np.zeros((2, 2)), new_episode=np.array([0.5, 0.0]))
    with pytest.raises(ValueError, match="obs contains NaN"):
        buf.push(np.array([[0.0, np.nan], [0.0, 0.0]]), new_episode=np.zeros(2, dtype=bool))
    with pytest.raises(TypeError, match="obs must be a tensor or a NumPy array"):
        buf.push([[0.0, 0.0], [0.0, 0.0]], new_episode=np.zeros(2, dtype=bool))
    with pytest.raises(TypeError, match="obs must hold real numbers"):
        buf.reset(np.zeros((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="window must be a positive int, got 0"):
        HistoryBuffer(2, 0, 2)


@pytest.mark.parametrize("make, error, says", [
    (lambda: MLPPolicy(0, 2), ValueError, "obs_dim must be a positive int, got 0"),
    (lambda: MLPPolicy(2, 2, frames=-1), ValueError, "frames must be a positive int"),
    (lambda: MLPPolicy(2, 2, obs_scale=(2.4, 0.0)), ValueError, "obs_scale[1] must be a real number in (0.0, inf)"),
    (lambda: MLPPolicy(2, 2, obs_scale=(1.0, 1.0, 1.0)), ValueError, "obs_scale must have at most obs_dim=2"),
    (lambda: AttentionPolicy(2, 2, window=0), ValueError, "window must be a positive int"),
    (lambda: AttentionPolicy(2, 0), ValueError, "n_actions must be a positive int"),
])
def test_policy_construction_errors(make, error, says):
    with pytest.raises(error) as info:
        make()
    assert says in str(info.value)


def test_policy_rejects_integer_observations_and_default_scale_fits_any_obs_dim():
    policy = MLPPolicy(2, 2)
    with pytest.raises(TypeError, match="obs must be a floating-point tensor"):
        policy(torch.zeros(3, 1, 2, dtype=torch.long), torch.ones(3, 1, dtype=torch.bool))
    assert MLPPolicy(1, 2).obs_scale.tolist() == pytest.approx([2.4])  # the default scale, cut to obs_dim
    assert MLPPolicy(3, 2).obs_scale[-1] == 1.0  # the "seen" flag of the blanked variant: unscaled


def test_training_and_evaluation_check_the_policy_and_their_arguments():
    with pytest.raises(ValueError, match=r"policy.obs_dim must be 3 \(x, theta, seen\) for blank_prob=0.5, got 2"):
        train_ppo(MLPPolicy(2, 2), PPOConfig(total_steps=256, blank_prob=0.5), progress=False)
    with pytest.raises(TypeError, match="config must be a PPOConfig"):
        train_ppo(MLPPolicy(2, 2), {"total_steps": 256}, progress=False)
    with pytest.raises(TypeError, match="policy must be an nn.Module with attributes window and obs_dim"):
        train_ppo(torch.nn.Linear(2, 2), progress=False)
    with pytest.raises(ValueError, match="seed must be an int in"):
        train_ppo(MLPPolicy(2, 2), seed=-1, progress=False)
    with pytest.raises(ValueError, match="episodes must be a positive int, got 0"):
        evaluate(MLPPolicy(2, 2), episodes=0)
    with pytest.raises(TypeError, match="greedy must be True or False"):
        evaluate(MLPPolicy(2, 2), greedy="no")
    with pytest.raises(ValueError, match="max_steps must be a positive int"):
        evaluate(MLPPolicy(2, 2), max_steps=0)
    with pytest.raises(TypeError, match="policy must be an AttentionPolicy"):
        record_episode(MLPPolicy(2, 2))
    with pytest.raises(ValueError, match="blank_prob must be a real number in"):
        make_vector_env(2, blank_prob=-0.5)
    with pytest.raises(ValueError, match="num_envs must be a positive int"):
        make_vector_env(0)


def test_exercises_of_notebook_14_think_beyond_the_cells():
    from course_utils.exercises import check, exercises
    from course_utils.exercises.nb14 import _memoryless_rules

    mine = {i: ex for i, ex in exercises().items() if i.startswith("14.")}
    assert len(mine) >= 3 and sum(ex.kind in ("predict", "derive", "debug", "extend") for ex in mine.values()) >= 2
    assert all(len(ex.mistakes) >= 3 and ex.minutes and ex.difficulty for ex in mine.values())
    rules = _memoryless_rules()  # the measurements the predict checker compares with
    assert rules["always right"] < rules["random"] < rules["push towards the lean"] < 100
    assert check("14.1", None).kind == "not attempted"
    off_by_one_sample = check("14.2", lambda r, a, c: ((a > 0) & (r > 1 + c)) | ((a < 0) & (r < 1 - c - 0.05)))
    assert "first difference at sample" in off_by_one_sample.message


def test_wrappers_name_a_wrong_env():
    with pytest.raises(TypeError, match="env must be a gymnasium.Env"):
        NoVelocityObservation("CartPole-v1")
    with pytest.raises(TypeError, match="env must be a gymnasium.Env"):
        BlankedObservation(None, blank_prob=0.5)
    with pytest.raises(ValueError, match="blank_prob must be a real number in"):
        BlankedObservation(NoVelocityObservation(gym.make("CartPole-v1")), blank_prob=float("nan"))
