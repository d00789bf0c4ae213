"""Exercises of notebook 14 (an attention agent: PPO on CartPole without velocities).

* ``14.1`` (predict) — before training: what greedy return will the memoryless MLP reach on
  CartPole without velocities? The checker measures three rules that see only the current
  observation (random, always push the same way, push towards the side the pole leans) on the
  notebook's evaluation seeds, and explains where a memoryless policy must end up.
* ``14.2`` (derive) — which samples does PPO's clipped objective give *no* gradient?
  ``fn(ratio (B,), advantages (B,), clip) -> (B,) bool``, True where the gradient is zero. The
  checker differentiates :func:`course_utils.rl.ppo_loss` with autograd.
* ``14.3`` (debug) — a history window that breaks at episode boundaries under gymnasium's
  next-step autoreset: ``fn(obs (T, D), done (T,), window) -> (windows (T, K, D), valid (T, K))``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("14.1", "14.2", "14.3"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from course_utils.rl import HistoryBuffer, make_vector_env, ppo_loss

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _as_tensor, _diagnose, _first_difference

__all__ = ["check_clipped_gradient", "check_episode_windows", "check_memoryless_return"]


# --------------------------------------------------------------------------------------------
# 14.1 predict: how long can a policy without memory balance the pole?
# --------------------------------------------------------------------------------------------

_EPISODES, _EVAL_SEED = 20, 10_000  # the notebook's greedy evaluation: 20 episodes from seed 10 000


def _rule_return(rule: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> float:
    """Mean return of a rule ``(obs (N, 2), rng) -> actions (N,)`` on the evaluation episodes."""
    envs = make_vector_env(_EPISODES)
    obs, _ = envs.reset(seed=_EVAL_SEED)
    rng = np.random.default_rng(0)
    total, running = np.zeros(_EPISODES), np.ones(_EPISODES, dtype=bool)
    for _ in range(500):
        obs, reward, term, trunc, _ = envs.step(rule(obs, rng))
        total += reward * running
        running &= ~(term | trunc)
        if not running.any():
            break
    envs.close()
    return float(total.mean())


def _memoryless_rules() -> dict[str, float]:
    return {
        "random": _rule_return(lambda obs, rng: rng.integers(0, 2, size=len(obs))),
        "always right": _rule_return(lambda obs, rng: np.ones(len(obs), dtype=np.int64)),
        "push towards the lean": _rule_return(lambda obs, rng: (obs[:, 1] > 0).astype(np.int64)),
    }


def _solution_memoryless_return() -> float:
    # A memoryless policy sees (x, theta): it can push towards the side the pole leans, which
    # beats acting at random (about 23 steps), but it cannot tell a pole falling from one already
    # swinging back, so it overshoots and the swing grows. The best it can do is about what the
    # "push towards the lean" rule gets: a few tens of steps, far from the 500 of the time limit.
    return 45.0


@exercise(
    "14.1",
    title="Predict: the greedy return of a policy without memory",
    hint="What can a policy do that sees the angle but not the angular velocity? Compare it with "
    "acting at random (episodes of about 20 steps) and with a controller that knows the velocity "
    "(500 steps, the time limit).",
    solution=_solution_memoryless_return,
    solution_args=lambda: (_solution_memoryless_return(),),
    kind="predict",
    minutes=5,
    difficulty=1,
    mistakes=[
        Mistake("it solves the task", (500.0,), "time limit"),
        Mistake("no better than random", (22.0,), "random policy"),
        Mistake("always pushes one way", (9.0,), "always pushes"),
        Mistake("halfway", (250.0,), "overshoots"),
    ],
)
def check_memoryless_return(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (a return, in steps)")
    rules = _memoryless_rules()
    lean, rand, right = rules["push towards the lean"], rules["random"], rules["always right"]
    said = (f"You predicted {pred:.0f}; measured on the notebook's {_EPISODES} evaluation episodes, rules "
            f"that see only the current observation: random {rand:.1f}, always push right {right:.1f}, "
            f"push towards the side the pole leans {lean:.1f}")
    if 0.65 * lean <= pred <= 1.5 * lean:
        return ok(f"Right! {said}. A memoryless policy can push against the lean, so it beats random, "
                  "but without the angular velocity it cannot tell a pole falling from one already "
                  "swinging back: it pushes too late and too long, and the swing grows until the pole "
                  "falls. Training finds about the lean rule, not more: that is the memoryless "
                  "MLP's plateau in section 7.")
    if pred >= 300:
        return fail("values", f"{said}. 500 is the time limit, reached only by a policy that damps the "
                    "swing, which needs the velocity: from one observation a pole falling right and one "
                    "swinging back left look the same.")
    if abs(pred - right) <= max(3.0, 0.3 * right):
        return fail("values", f"{said}. That is what a policy gets that always pushes the same way; "
                    "the memoryless MLP still sees the angle and pushes against the lean.")
    if abs(pred - rand) <= 0.3 * rand:
        return fail("values", f"{said}. That is what a random policy gets; seeing the angle is "
                    "worth about twice that (the lean rule), though not more without the velocity.")
    if pred > 1.5 * lean:
        return fail("values", f"{said}. Yours is too high: pushing against the lean overshoots, because "
                    "the policy cannot see that the pole is already swinging back, and a trained "
                    "memoryless MLP does no better than that rule.")
    return fail("values", f"{said}. Yours is too low: even without memory a policy sees the angle and "
                "can push against the lean.")


# --------------------------------------------------------------------------------------------
# 14.2 derive: where the clipped surrogate has no gradient
# --------------------------------------------------------------------------------------------


def _solution_clipped_gradient(ratio: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    # min(rho A, clip(rho) A) takes the clipped, constant term only when it is the smaller one:
    # A > 0 and rho > 1 + eps (the policy already moved far enough towards a good action), or
    # A < 0 and rho < 1 - eps (far enough away from a bad one). Elsewhere the gradient flows.
    too_far_up = (advantages > 0) & (ratio > 1 + clip)
    too_far_down = (advantages < 0) & (ratio < 1 - clip)
    return too_far_up | too_far_down  # (B,) True = zero gradient


def _clip_case() -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(0)
    ratio = torch.cat([torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1, 0.9]), 0.4 + 1.2 * torch.rand(58, generator=g)])
    adv = torch.cat([torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0]), torch.randn(58, generator=g)])
    keep = ((ratio - 1.2).abs() > 1e-3) & ((ratio - 0.8).abs() > 1e-3) & (adv.abs() > 1e-3)  # no ties
    return ratio[keep], adv[keep], 0.2


def _zero_gradient_by_autograd(ratio: torch.Tensor, adv: torch.Tensor, clip: float) -> torch.Tensor:
    """Measured: which samples' logits get no gradient from ppo_loss's policy term."""
    logits = torch.zeros(len(ratio), 2, requires_grad=True)  # a uniform policy, pi(a=0) = 1/2
    old_log_probs = torch.log(0.5 / ratio)  # so that pi / pi_old = ratio
    loss, _ = ppo_loss(logits, torch.zeros(len(ratio), dtype=torch.long), old_log_probs, adv,
                       torch.zeros(len(ratio)), torch.zeros(len(ratio)), clip=clip, vf_coef=0.0,
                       normalize_advantages=False)
    loss.backward()
    return logits.grad.abs().sum(-1) == 0


def _outside(ratio, adv, clip):
    return (ratio - 1).abs() > clip


def _swapped(ratio, adv, clip):
    return ((adv < 0) & (ratio > 1 + clip)) | ((adv > 0) & (ratio < 1 - clip))


def _upper_only(ratio, adv, clip):
    return (adv > 0) & (ratio > 1 + clip)


def _complement(ratio, adv, clip):
    return ~_solution_clipped_gradient(ratio, adv, clip)


@exercise(
    "14.2",
    title="Derive: which samples get no gradient from PPO's clipped objective?",
    hint="Write d/dρ of min(ρA, clip(ρ, 1-ε, 1+ε)·A) case by case: for A > 0 and for A < 0, which of "
    "the two terms is the smaller one when ρ is above 1+ε, inside, below 1-ε? The clipped term is "
    "constant in ρ.",
    solution=_solution_clipped_gradient,
    kind="derive",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("every ratio outside [1-ε, 1+ε]", (_outside,), "only in the direction"),
        Mistake("signs swapped", (_swapped,), "swapped"),
        Mistake("upper side only", (_upper_only,), "lower side"),
        Mistake("True where the gradient flows", (_complement,), "polarity"),
    ],
)
def check_clipped_gradient(fn: Callable[..., Any]) -> CheckResult:
    ratio, adv, clip = _clip_case()
    expected = _zero_gradient_by_autograd(ratio, adv, clip)
    got = _as_tensor(fn(ratio.clone(), adv.clone(), clip), "your mask")
    if isinstance(got, CheckResult):
        return got
    if got.dtype != torch.bool:
        return fail("dtype", f"return a bool tensor (True = no gradient), got dtype {got.dtype}")
    if got.shape != expected.shape:
        return fail("shape", f"expected one flag per sample, shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    if torch.equal(got, expected):
        return ok(f"Correct: your mask matches autograd through course_utils.rl.ppo_loss on {len(ratio)} "
                  f"samples ({int(expected.sum())} with no gradient). PPO stops pushing only where the "
                  "new policy already moved far enough in the direction the advantage asks for; a move "
                  "in the wrong direction is never clipped, so it can always be undone.")
    known = _diagnose(got.float(), [
        ("values", _outside(ratio, adv, clip).float(), "PPO clips only in the direction that would "
         "increase the objective: a ratio of 1.5 with A < 0 keeps its gradient (min picks the "
         "unclipped, worse term 1.5·A), and so does 0.5 with A > 0"),
        ("values", _swapped(ratio, adv, clip).float(), "you swapped the signs: the gradient stops for "
         "ρ > 1+ε when A > 0 (and for ρ < 1-ε when A < 0), not the other way round"),
        ("values", _upper_only(ratio, adv, clip).float(), "you have the upper side; the lower side "
         "clips too: ρ < 1-ε with A < 0 gets no gradient"),
        ("values", _complement(ratio, adv, clip).float(), "your mask has the wrong polarity: True must "
         "mark the samples whose gradient is zero"),
    ])
    if known is not None:
        return known
    i = int((got != expected).nonzero()[0])
    return fail("values", f"first difference at sample {i}: ratio {float(ratio[i]):.3f}, advantage "
                f"{float(adv[i]):+.3f}, ε = {clip}: you say {'no ' if bool(got[i]) else ''}gradient, autograd "
                f"says {'none' if bool(expected[i]) else 'there is one'} ({int((got != expected).sum())} of "
                f"{len(ratio)} samples differ)")


# --------------------------------------------------------------------------------------------
# 14.3 debug: the history window at an episode boundary
# --------------------------------------------------------------------------------------------


def buggy_episode_windows(obs: torch.Tensor, done: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The broken version the notebook hands over.

    ``obs (T, D)`` is what step ``t`` of one environment returned under gymnasium's NEXT_STEP
    autoreset, ``done (T,)`` its done flag. Returns what the policy sees after each step:
    ``windows (T, K, D)`` (oldest first) and ``valid (T, K)``. The window starts empty.
    """
    t_len, d = obs.shape
    win, valid = torch.zeros(window, d), torch.zeros(window, dtype=torch.bool)
    windows, valids = [], []
    for t in range(t_len):
        win = torch.cat([win[1:], obs[t][None]])  # (K, D): the oldest drops out
        valid = torch.cat([valid[1:], torch.tensor([True])])
        if done[t]:  # the episode ended: start afresh
            win[:-1] = 0.0
        windows.append(win.clone())
        valids.append(valid.clone())
    return torch.stack(windows), torch.stack(valids)


def _solution_episode_windows(obs: torch.Tensor, done: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    t_len, d = obs.shape
    win, valid = torch.zeros(window, d), torch.zeros(window, dtype=torch.bool)
    windows, valids = [], []
    previous_done = False  # fix 1: obs[t] starts a new episode iff step t-1 returned done
    for t in range(t_len):
        win = torch.cat([win[1:], obs[t][None]])  # (K, D)
        valid = torch.cat([valid[1:], torch.tensor([True])])
        if previous_done:  # the final observation (returned with done) belonged to the old episode
            win[:-1] = 0.0
            valid[:-1] = False  # fix 2: the cleared slots hold no observation
        previous_done = bool(done[t])
        windows.append(win.clone())
        valids.append(valid.clone())
    return torch.stack(windows), torch.stack(valids)


def _windows_variant(delay: int | None, clear_valid: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """Clear ``delay`` steps after a done (0: on the done step itself; None: never)."""
    def fn(obs, done, window):
        t_len, d = obs.shape
        win, valid = torch.zeros(window, d), torch.zeros(window, dtype=torch.bool)
        windows, valids = [], []
        for t in range(t_len):
            win = torch.cat([win[1:], obs[t][None]])
            valid = torch.cat([valid[1:], torch.tensor([True])])
            if delay is not None and t - delay >= 0 and bool(done[t - delay]):
                win[:-1] = 0.0
                if clear_valid:
                    valid[:-1] = False
            windows.append(win.clone())
            valids.append(valid.clone())
        return torch.stack(windows), torch.stack(valids)
    return fn


def _windows_case() -> tuple[torch.Tensor, torch.Tensor, int]:
    # one environment: episode 1 is observations 1..4 (its final one, 4, comes with done), then the
    # autoreset step returns 10 (the first of episode 2), ... ; episode 2 ends at 13
    obs = torch.tensor([1.0, 2, 3, 4, 10, 11, 12, 13, 20, 21, 22, 23, 24, 25])[:, None]  # (T, D=1)
    done = torch.zeros(len(obs), dtype=torch.bool)
    done[[3, 7]] = True
    return obs, done, 3


def _reference_windows(obs: torch.Tensor, done: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The course's HistoryBuffer, one environment, starting empty."""
    buf = HistoryBuffer(num_envs=1, window=window, obs_dim=obs.size(1))
    windows, valids = [], []
    previous_done = torch.zeros(1, dtype=torch.bool)
    for t in range(len(obs)):
        buf.push(obs[t][None], new_episode=previous_done)
        previous_done = done[t][None]
        w, v = buf.get()
        windows.append(w[0])
        valids.append(v[0])
    return torch.stack(windows), torch.stack(valids)


@exercise(
    "14.3",
    title="Debug: a history window that breaks at every episode boundary",
    hint="Under NEXT_STEP autoreset the observation returned *with* done=True is the last one of the "
    "old episode; the next step returns the first one of the new episode. Print the windows around "
    "t = 3, 4, 5 for the example and compare with HistoryBuffer. And what does valid say about a "
    "slot you just cleared?",
    solution=_solution_episode_windows,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (buggy_episode_windows,), "both bugs"),
        Mistake("cleared on the right step, valid left True", (_windows_variant(1, False),), "marked valid"),
        Mistake("valid cleared, but on the done step", (_windows_variant(0, True),), "returned done"),
        Mistake("never cleared", (_windows_variant(None, False),), "mix two episodes"),
        Mistake("cleared one step late", (_windows_variant(2, True),), "one step late"),
    ],
)
def check_episode_windows(fn: Callable[..., Any]) -> CheckResult:
    obs, done, k = _windows_case()
    want_w, want_v = _reference_windows(obs, done, k)
    got = fn(obs.clone(), done.clone(), k)
    if not isinstance(got, tuple) or len(got) != 2:
        return fail("type", f"return a pair (windows (T, K, D), valid (T, K)), got {type(got).__name__}")
    got_w, got_v = (_as_tensor(x, name) for x, name in zip(got, ("windows", "valid"), strict=True))
    for r in (got_w, got_v):
        if isinstance(r, CheckResult):
            return r
    if got_w.shape != want_w.shape or got_v.shape != want_v.shape:
        return fail("shape", f"expected windows {tuple(want_w.shape)} and valid {tuple(want_v.shape)}, got "
                    f"{tuple(got_w.shape)} and {tuple(got_v.shape)}")
    if got_v.dtype != torch.bool:
        return fail("dtype", f"valid must be a bool tensor, got dtype {got_v.dtype}")
    if torch.equal(got_w, want_w) and torch.equal(got_v, want_v):
        return ok("Correct: every window holds observations of one episode only, and valid marks exactly "
                  "those (your windows equal HistoryBuffer's). The final observation stays in its "
                  "episode's window, and the attention policy's padding mask hides the cleared slots.")
    both = torch.cat([got_w.flatten(1), got_v.float()], 1)
    variant = lambda f: torch.cat([f(obs, done, k)[0].flatten(1), f(obs, done, k)[1].float()], 1)  # noqa: E731
    known = _diagnose(both, [
        ("values", variant(buggy_episode_windows), "both bugs are still there: the window is cleared on "
         "the step that returned done (too early: that observation is the old episode's last), and the "
         "cleared slots stay valid"),
        ("masking", variant(_windows_variant(1, False)), "the window is cleared on the right step, but "
         "the cleared slots are still marked valid: the attention policy would attend to zeros as if "
         "they were observations. Set valid[:-1] = False too"),
        ("values", variant(_windows_variant(0, True)), "you clear the window on the step that returned "
         "done: that observation is the *final* one of the old episode, and the new episode starts on "
         "the next step (NEXT_STEP autoreset). Remember done and clear one step later"),
        ("values", variant(_windows_variant(None, False)), "your windows never clear: after an episode "
         "ends they mix two episodes (the pole that fell is still in the new episode's window)"),
        ("values", variant(_windows_variant(2, True)), "you clear one step late: for one step the new "
         "episode's window still holds the old episode's final observation"),
    ])
    if known is not None:
        return known
    bad_t = int(((got_w != want_w).flatten(1).any(1) | (got_v != want_v).any(1)).nonzero()[0])
    return fail("values", f"first difference after step {bad_t} (obs {obs[bad_t].tolist()}, done "
                f"{bool(done[bad_t])}): windows {got_w[bad_t, :, 0].tolist()} valid {got_v[bad_t].int().tolist()}, "
                f"expected {want_w[bad_t, :, 0].tolist()} valid {want_v[bad_t].int().tolist()}"
                + ("" if torch.equal(got_w, want_w) else "; windows " + _first_difference(got_w, want_w, "t, slot, d")))
