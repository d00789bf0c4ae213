"""Reinforcement learning with attention: PPO on CartPole without velocities (notebook 14).

The pieces, in the order the notebook meets them:

* :class:`NoVelocityObservation` — a ``gymnasium.ObservationWrapper`` that keeps the cart
  position and the pole angle of ``CartPole-v1`` and drops both velocities, so that one
  observation is not enough to balance the pole (the task becomes partially observable).
  :class:`BlankedObservation` additionally hides whole observations at random (the variant
  task). :func:`make_vector_env` builds ``gymnasium.vector.SyncVectorEnv`` of either.
* :class:`HistoryBuffer` — the last ``K`` observations of every environment of a vector env,
  with a validity mask. Gymnasium 1.x vector environments reset an environment on the step
  *after* its episode ended (``AutoresetMode.NEXT_STEP``): that step ignores the action,
  returns the first observation of the new episode and reward 0. The buffer clears the
  history of exactly those environments, so that no window mixes two episodes.
* Three policies with the same interface ``policy(obs (B, K, D), valid (B, K)) ->
  (logits (B, A), value (B,))``: :class:`MLPPolicy` with ``frames=1`` (memoryless),
  :class:`MLPPolicy` with ``frames=K`` (frame stacking) and :class:`AttentionPolicy` (causal
  self-attention over the last ``K`` observations, built from the course's
  :class:`~course_utils.transformer.TransformerEncoderLayer`).
* :func:`compute_gae` (generalised advantage estimation, bootstrapping at time-limit
  truncation), :func:`ppo_loss` (the clipped surrogate, the value loss and the entropy bonus,
  a pure function of one minibatch), :func:`train_ppo` (one PPO loop for every policy, on the
  policy's device; autocast on CUDA) and :func:`evaluate` (greedy or stochastic returns).

References: Schulman et al. (2017), *Proximal Policy Optimization Algorithms*; Schulman et al.
(2016), *High-Dimensional Continuous Control Using Generalized Advantage Estimation*;
Huang et al. (2022), *The 37 Implementation Details of Proximal Policy Optimization*.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checks import (
    check_bool,
    check_device,
    check_finite,
    check_float_tensor,
    check_int,
    check_like_module,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_str,
    check_tensor,
    describe,
)
from .positional import LearnedPositionalEmbedding
from .precision import MixedPrecision
from .training import NonFiniteLossError
from .transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = [
    "AttentionPolicy",
    "BlankedObservation",
    "HistoryBuffer",
    "MLPPolicy",
    "NoVelocityObservation",
    "PPOConfig",
    "TrainResult",
    "compute_gae",
    "evaluate",
    "make_vector_env",
    "ppo_loss",
    "record_episode",
    "train_ppo",
]

# CartPole ends an episode when |x| > 2.4 or |theta| > 12 degrees: natural scales for the inputs.
CARTPOLE_SCALE = (2.4, 12 * 2 * np.pi / 360)


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------


def _check_env(env: object) -> None:
    if not isinstance(env, gym.Env):
        raise TypeError(f"env must be a gymnasium.Env such as gym.make('CartPole-v1'), got {describe(env)}")


class NoVelocityObservation(gym.ObservationWrapper):
    """CartPole without velocities: ``(x, x_dot, theta, theta_dot) -> (x, theta)``.

    One observation says where the pole is, not where it is going: a policy that sees only
    the current observation cannot balance it for long. Two consecutive observations are
    enough to estimate the velocities (a finite difference), so memory solves the task.

    >>> env = NoVelocityObservation(gym.make("CartPole-v1"))
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape, env.observation_space.shape
    ((2,), (2,))
    """

    KEEP = (0, 2)  # cart position, pole angle

    def __init__(self, env: gym.Env) -> None:
        _check_env(env)
        super().__init__(env)
        box = env.observation_space
        if not isinstance(box, gym.spaces.Box) or box.shape != (4,):
            raise ValueError(
                f"NoVelocityObservation expects CartPole's Box(4,) observations, got {box}"
            )
        keep = list(self.KEEP)
        self.observation_space = gym.spaces.Box(box.low[keep], box.high[keep], dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[list(self.KEEP)].astype(np.float32)


class BlankedObservation(gym.ObservationWrapper):
    """Hide each observation with probability ``blank_prob`` (the variant task).

    The output is ``(*obs, seen)``: the observation (zeros when hidden) and a flag, 1 when the
    observation is real, 0 when it was blanked. The first observation of an episode is never
    hidden. The blanking uses its own random generator, seeded by ``reset(seed=...)``.

    >>> env = BlankedObservation(NoVelocityObservation(gym.make("CartPole-v1")), blank_prob=1.0)
    >>> obs, _ = env.reset(seed=0)
    >>> obs[-1], env.step(0)[0].tolist()      # the first is seen, then everything is blanked
    (np.float32(1.0), [0.0, 0.0, 0.0])
    """

    def __init__(self, env: gym.Env, blank_prob: float) -> None:
        _check_env(env)
        check_real("blank_prob", blank_prob, 0.0, 1.0)
        super().__init__(env)
        box = env.observation_space
        self.blank_prob = blank_prob
        self.observation_space = gym.spaces.Box(
            np.append(box.low, 0.0).astype(np.float32),
            np.append(box.high, 1.0).astype(np.float32),
            dtype=np.float32,
        )
        self._rng = np.random.default_rng()
        self._first = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed + 1_000_003)
        self._first = True
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        seen = self._first or self._rng.random() >= self.blank_prob
        self._first = False
        out = np.append(observation, 1.0).astype(np.float32)
        return out if seen else np.zeros_like(out)


def make_vector_env(num_envs: int, blank_prob: float = 0.0) -> gym.vector.SyncVectorEnv:
    """``num_envs`` no-velocity CartPoles in one ``SyncVectorEnv`` (gymnasium's default autoreset,
    ``NEXT_STEP``). ``blank_prob > 0`` adds :class:`BlankedObservation`. Seed them with
    ``envs.reset(seed=s)``: environment ``i`` gets seed ``s + i``.

    >>> envs = make_vector_env(4)
    >>> obs, _ = envs.reset(seed=0)
    >>> obs.shape
    (4, 2)
    """
    check_positive_int("num_envs", num_envs)
    check_real("blank_prob", blank_prob, 0.0, 1.0)

    def make() -> gym.Env:
        env: gym.Env = NoVelocityObservation(gym.make("CartPole-v1"))
        if blank_prob > 0:
            env = BlankedObservation(env, blank_prob)
        return env

    return gym.vector.SyncVectorEnv([make for _ in range(num_envs)])


# ---------------------------------------------------------------------------------------------
# The history window
# ---------------------------------------------------------------------------------------------


class HistoryBuffer:
    """The last ``window`` observations of each of ``num_envs`` environments, oldest first.

    ``obs`` is ``(N, K, D)`` and ``valid`` is ``(N, K)`` (True = a real observation of the
    current episode). Slots before the start of the episode hold zeros and ``valid=False``.

    ``push(obs, new_episode)`` appends the newest observations. ``new_episode`` (N,) says which
    environments *start a new episode with this observation*; with gymnasium 1.x's
    ``NEXT_STEP`` autoreset that is every environment whose **previous** ``step`` returned
    ``terminated or truncated`` (the observation returned *with* the done flag is still the
    last one of the old episode).

    >>> buf = HistoryBuffer(num_envs=2, window=3, obs_dim=1)
    >>> buf.reset(torch.tensor([[1.0], [10.0]]))
    >>> buf.push(torch.tensor([[2.0], [11.0]]), new_episode=torch.tensor([False, False]))
    >>> buf.push(torch.tensor([[3.0], [0.0]]), new_episode=torch.tensor([False, True]))
    >>> buf.obs[..., 0]
    tensor([[1., 2., 3.],
            [0., 0., 0.]])
    >>> buf.valid
    tensor([[ True,  True,  True],
            [False, False,  True]])
    """

    def __init__(self, num_envs: int, window: int, obs_dim: int, device: torch.device | str = "cpu") -> None:
        for name, n in (("num_envs", num_envs), ("window", window), ("obs_dim", obs_dim)):
            check_positive_int(name, n)
        if device is not None:
            device = check_device("device", device)
        self.num_envs, self.window, self.obs_dim = num_envs, window, obs_dim
        self.obs = torch.zeros(num_envs, window, obs_dim, device=device)  # (N, K, D)
        self.valid = torch.zeros(num_envs, window, dtype=torch.bool, device=device)  # (N, K)

    def _as_tensor(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(obs, np.ndarray):
            real = np.issubdtype(obs.dtype, np.integer) or np.issubdtype(obs.dtype, np.floating)
        elif isinstance(obs, torch.Tensor):
            real = obs.dtype != torch.bool and not obs.is_complex()
        else:
            raise TypeError(f"obs must be a tensor or a NumPy array of shape (num_envs, obs_dim), "
                            f"got {describe(obs)}")
        if not real:
            raise TypeError(f"obs must hold real numbers, got dtype {obs.dtype}")
        _check_has_data("obs", obs)
        obs = torch.as_tensor(obs, dtype=torch.float32)  # checked on the CPU: no device sync
        if obs.shape != (self.num_envs, self.obs_dim):
            raise ValueError(
                f"obs must have shape (num_envs, obs_dim) = {(self.num_envs, self.obs_dim)}, "
                f"got {tuple(obs.shape)}"
            )
        if obs.device.type == "cpu":
            check_finite("obs", obs)
        return obs.to(self.obs.device)

    def reset(self, obs: torch.Tensor | np.ndarray) -> None:
        """Start every environment afresh with its first observation ``obs (N, D)``."""
        obs = self._as_tensor(obs)
        self.obs.zero_()
        self.valid.zero_()
        self.obs[:, -1] = obs
        self.valid[:, -1] = True

    def push(self, obs: torch.Tensor | np.ndarray, new_episode: torch.Tensor | np.ndarray) -> None:
        """Append ``obs (N, D)``; clear the older slots where ``new_episode (N,)`` is True."""
        obs = self._as_tensor(obs)
        if not isinstance(new_episode, (torch.Tensor, np.ndarray)) or new_episode.dtype not in (torch.bool, np.bool_):
            raise TypeError(f"new_episode must be a bool tensor or array of shape ({self.num_envs},) "
                            f"(True = this environment starts a new episode), got {describe(new_episode)}")
        _check_has_data("new_episode", new_episode)
        new = torch.as_tensor(new_episode, device=self.obs.device)
        if new.shape != (self.num_envs,):
            raise ValueError(f"new_episode must have shape ({self.num_envs},), got {tuple(new.shape)}")
        self.obs = torch.cat([self.obs[:, 1:], obs[:, None]], dim=1)  # shift left: oldest drops out
        self.valid = torch.cat([self.valid[:, 1:], torch.ones_like(self.valid[:, :1])], dim=1)
        if new.any():
            self.obs[new, :-1] = 0.0
            self.valid[new, :-1] = False

    def get(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(obs (N, K, D), valid (N, K))`` — copies, safe to store."""
        return self.obs.clone(), self.valid.clone()


# ---------------------------------------------------------------------------------------------
# Policies: (obs (B, K, D), valid (B, K)) -> (logits (B, A), value (B,))
# ---------------------------------------------------------------------------------------------


def _check_has_data(name: str, x: object) -> None:
    """Observations are read on the CPU: a tensor on the ``meta`` device has no values to read."""
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        raise ValueError(f"{name} must hold values (a tensor on the CPU or a GPU), got {describe(x)}")


def _check_policy_input(obs: torch.Tensor, valid: torch.Tensor, window: int, obs_dim: int,
                        weight: torch.Tensor) -> None:
    check_float_tensor("obs", obs)
    check_like_module("obs", obs, weight)
    check_tensor("valid", valid)
    check_same_device(obs=obs, valid=valid)
    if obs.dim() != 3 or obs.size(-1) != obs_dim or obs.size(1) < window:
        raise ValueError(
            f"obs must have shape (B, K >= {window}, obs_dim={obs_dim}), got {tuple(obs.shape)}"
        )
    if valid.shape != obs.shape[:2] or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of shape (B, K) = {tuple(obs.shape[:2])}, the first two "
            f"dims of obs {tuple(obs.shape)}, got {tuple(valid.shape)} {valid.dtype}"
        )


def _mlp(inp: int, hidden: int, out: int, out_gain: float) -> nn.Sequential:
    """Two tanh hidden layers, orthogonal initialisation (PPO implementation detail #2)."""
    layers = [nn.Linear(inp, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            gain = out_gain if layer.out_features == out else np.sqrt(2)
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


class MLPPolicy(nn.Module):
    """Actor and critic MLPs on the last ``frames`` observations, flattened.

    ``frames=1`` is the memoryless baseline; ``frames=K`` is frame stacking (the validity bits
    of the frames are inputs too, so the network can tell "no frame yet" from "a frame of
    zeros"). Observations are divided by ``obs_scale`` (CartPole's termination thresholds).

    >>> policy = MLPPolicy(obs_dim=2, n_actions=2, frames=4)
    >>> logits, value = policy(torch.randn(5, 4, 2), torch.ones(5, 4, dtype=torch.bool))
    >>> logits.shape, value.shape
    (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(self, obs_dim: int, n_actions: int, frames: int = 1, hidden: int = 64,
                 obs_scale: tuple[float, ...] | None = CARTPOLE_SCALE) -> None:
        super().__init__()
        _check_sizes(obs_dim=obs_dim, n_actions=n_actions, frames=frames, hidden=hidden)
        self.obs_dim, self.n_actions, self.window = obs_dim, n_actions, frames
        inp = frames * obs_dim + (frames if frames > 1 else 0)
        self.actor = _mlp(inp, hidden, n_actions, out_gain=0.01)
        self.critic = _mlp(inp, hidden, 1, out_gain=1.0)
        self.register_buffer("obs_scale", _scale(obs_scale, obs_dim), persistent=False)

    def features(self, obs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        _check_policy_input(obs, valid, self.window, self.obs_dim, self.actor[0].weight)
        obs, valid = obs[:, -self.window:] / self.obs_scale, valid[:, -self.window:]  # (B, F, D)
        x = obs.flatten(1)  # (B, F*D)
        return torch.cat([x, valid.float()], dim=1) if self.window > 1 else x

    def forward(self, obs: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(obs, valid)
        return self.actor(x), self.critic(x).squeeze(-1)


def _check_sizes(**sizes: int) -> None:
    for name, n in sizes.items():
        check_positive_int(name, n)


def _scale(obs_scale: tuple[float, ...] | None, obs_dim: int) -> torch.Tensor:
    """``(obs_dim,)`` divisors of the observations: ``obs_scale`` first, 1 for the rest."""
    scale = torch.ones(obs_dim)
    if obs_scale is None:
        return scale
    if isinstance(obs_scale, (str, bytes)) or not hasattr(obs_scale, "__len__"):
        raise TypeError(f"obs_scale must be a sequence of positive numbers (or None), got {describe(obs_scale)}")
    if obs_scale is CARTPOLE_SCALE:  # the default: (x, theta) first, whatever obs_dim is
        obs_scale = obs_scale[:obs_dim]
    if len(obs_scale) > obs_dim:
        raise ValueError(f"obs_scale must have at most obs_dim={obs_dim} entries, got {len(obs_scale)}: "
                         f"{tuple(obs_scale)}")
    for i, v in enumerate(obs_scale):
        check_real(f"obs_scale[{i}]", v, 0.0, low_open=True)  # 0 would divide by zero
    scale[:len(obs_scale)] = torch.tensor([float(v) for v in obs_scale], dtype=torch.float32)
    return scale


class AttentionPolicy(nn.Module):
    r"""Causal self-attention over the last ``window`` observations, then actor and critic heads.

    ``obs (B, K, D)`` -> linear embedding + learned position embedding ``(B, K, d_model)`` ->
    ``num_layers`` pre-LN :class:`~course_utils.transformer.TransformerEncoderLayer` with a
    causal mask (position ``i`` sees ``j <= i``) and a key-padding mask (slots before the
    episode started) -> LayerNorm -> the feature of the **newest** position -> two MLP heads.

    Set ``store_attention = True`` (or call :meth:`attention_weights`) to keep each layer's
    weights ``(B, H, K, K)``.

    >>> policy = AttentionPolicy(obs_dim=2, n_actions=2, window=8)
    >>> obs, valid = torch.randn(5, 8, 2), torch.ones(5, 8, dtype=torch.bool)
    >>> logits, value = policy(obs, valid)
    >>> logits.shape, value.shape
    (torch.Size([5, 2]), torch.Size([5]))
    >>> [w.shape for w in policy.attention_weights(obs, valid)]   # one (B, H, K, K) per layer
    [torch.Size([5, 4, 8, 8])]
    """

    def __init__(self, obs_dim: int, n_actions: int, window: int = 8, d_model: int = 32,
                 nhead: int = 4, num_layers: int = 1, dim_feedforward: int = 64, hidden: int = 64,
                 obs_scale: tuple[float, ...] | None = CARTPOLE_SCALE) -> None:
        super().__init__()
        _check_sizes(obs_dim=obs_dim, n_actions=n_actions, window=window, hidden=hidden,
                     d_model=d_model, nhead=nhead, num_layers=num_layers,
                     dim_feedforward=dim_feedforward)
        self.obs_dim, self.n_actions, self.window = obs_dim, n_actions, window
        self.embed = nn.Linear(obs_dim, d_model)
        self.pos = LearnedPositionalEmbedding(window, d_model)
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward=dim_feedforward,
                                        dropout=0.0, activation="gelu", norm_first=True)  # pre-LN
        self.encoder = TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model))
        self.actor = _mlp(d_model, hidden, n_actions, out_gain=0.01)
        self.critic = _mlp(d_model, hidden, 1, out_gain=1.0)
        self.register_buffer("obs_scale", _scale(obs_scale, obs_dim), persistent=False)

    @property
    def store_attention(self) -> bool:
        return self.encoder.layers[0].self_attn.store_weights

    @store_attention.setter
    def store_attention(self, value: bool) -> None:
        for layer in self.encoder.layers:
            layer.self_attn.store_weights = value

    def encode(self, obs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Per-position features ``(B, K, d_model)``; position ``i`` depends on frames ``<= i`` only."""
        _check_policy_input(obs, valid, self.window, self.obs_dim, self.embed.weight)
        obs, valid = obs[:, -self.window:], valid[:, -self.window:]
        x = self.pos(self.embed(obs / self.obs_scale))  # (B, K, d_model)
        return self.encoder(x, src_key_padding_mask=~valid, is_causal=True)  # (B, K, d_model)

    def newest(self, obs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``encode(obs, valid)[:, -1]`` (B, d_model), computing only the row the heads read.

        In the last layer only the newest position's output is used, and the newest position
        may attend to every earlier one (the causal mask removes nothing from its row). So
        the last layer runs one query against the ``K`` keys instead of ``K`` queries, and the
        feed-forward block on one position instead of ``K``: several times cheaper in training,
        and equal to the full causal computation (``tests/unit/test_rl.py`` checks it).
        """
        _check_policy_input(obs, valid, self.window, self.obs_dim, self.embed.weight)
        obs, valid = obs[:, -self.window:], valid[:, -self.window:]
        pad = ~valid  # (B, K), True = no observation there
        x = self.pos(self.embed(obs / self.obs_scale))  # (B, K, d_model)
        *lower, last = self.encoder.layers
        for layer in lower:
            x = layer(x, src_key_padding_mask=pad, is_causal=True)
        kv = last.norm1(x)  # pre-LN: (B, K, d_model)
        attn, _ = last.self_attn(kv[:, -1:], kv, kv, key_padding_mask=pad)  # (B, 1, d_model)
        h = x[:, -1:] + last.dropout1(attn)
        ff = last.linear2(last.dropout(last.activation(last.linear1(last.norm2(h)))))
        h = h + last.dropout2(ff)  # (B, 1, d_model)
        if self.encoder.norm is not None:
            h = self.encoder.norm(h)
        return h[:, 0]

    def forward(self, obs: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.newest(obs, valid)  # (B, d_model): the newest position
        return self.actor(h), self.critic(h).squeeze(-1)

    @torch.no_grad()
    def attention_weights(self, obs: torch.Tensor, valid: torch.Tensor) -> list[torch.Tensor]:
        """The weights ``(B, H, K, K)`` of every layer for this input (rows: queries)."""
        before = self.store_attention
        self.store_attention = True
        try:
            self.encode(obs, valid)
            return [layer.self_attn.last_attn_weights for layer in self.encoder.layers]
        finally:
            self.store_attention = before


# ---------------------------------------------------------------------------------------------
# Generalised advantage estimation
# ---------------------------------------------------------------------------------------------


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, terminated: torch.Tensor,
                truncated: torch.Tensor, gamma: float = 0.99, lam: float = 0.95,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Advantages and returns by GAE (Schulman et al., 2016), time along dim 0.

    ``rewards``, ``terminated``, ``truncated`` are ``(T, ...)``: step ``t`` went from the
    observation ``s_t`` to ``s_{t+1}``. ``values`` is ``(T+1, ...)``: ``values[t] = V(s_t)``,
    where ``s_{t+1}`` is the observation *returned by* step ``t`` — when the episode ended
    there, the final observation (gymnasium's ``NEXT_STEP`` autoreset returns it).
    ``rewards`` and ``values`` are floating-point (integer rewards would truncate every
    discounted sum), ``terminated`` and ``truncated`` boolean. The defaults ``gamma=0.99``,
    ``lam=0.95`` are the GAE paper's and Stable-Baselines3's.

    .. math::
        \delta_t = r_t + \gamma V(s_{t+1})(1 - \text{terminated}_t) - V(s_t), \qquad
        A_t = \delta_t + \gamma\lambda (1 - \text{done}_t) A_{t+1}

    A **terminated** episode (the pole fell) has no future: no bootstrap. A **truncated** one
    (the 500-step time limit) would have gone on: bootstrap with ``V`` of the final
    observation. In both cases the advantage does not flow back across the episode boundary.

    >>> r = torch.tensor([1.0, 1.0])
    >>> v = torch.tensor([0.5, 0.5, 2.0])
    >>> no = torch.tensor([False, False])
    >>> adv, ret = compute_gae(r, v, terminated=no, truncated=torch.tensor([False, True]),
    ...                        gamma=0.5, lam=1.0)
    >>> ret                                    # 1 + 0.5 * (1 + 0.5 * 2.0)
    tensor([2., 2.])
    """
    _check_gae_inputs(rewards, values, terminated, truncated, gamma, lam)
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - (terminated | truncated).float()
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * values[t + 1] * not_term[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values[:-1]


def _check_gae_inputs(rewards, values, terminated, truncated, gamma, lam) -> None:
    check_float_tensor("rewards", rewards, min_dims=1)
    check_float_tensor("values", values, min_dims=1)
    if values.shape[0] != rewards.shape[0] + 1 or values.shape[1:] != rewards.shape[1:]:
        raise ValueError(
            f"values must have shape (T+1, ...) for rewards (T, ...) = {tuple(rewards.shape)}, "
            f"got {tuple(values.shape)}"
        )
    if values.dtype != rewards.dtype:
        raise TypeError(f"rewards and values must have the same dtype, got rewards {rewards.dtype} "
                        f"and values {values.dtype}")
    for name, flags in (("terminated", terminated), ("truncated", truncated)):
        check_tensor(name, flags)
    check_same_device(rewards=rewards, values=values, terminated=terminated, truncated=truncated)
    for name, flags in (("terminated", terminated), ("truncated", truncated)):
        if flags.dtype != torch.bool:
            raise TypeError(f"{name} must be a bool tensor (True where the episode ended), got {describe(flags)}")
        check_shape(name, flags, rewards.shape, what=f"(T, ...) = {tuple(rewards.shape)} like rewards")
    check_real("gamma", gamma, 0.0, 1.0)
    check_real("lam", lam, 0.0, 1.0)
    check_finite("rewards", rewards)
    check_finite("values", values)


# ---------------------------------------------------------------------------------------------
# PPO
# ---------------------------------------------------------------------------------------------


def ppo_loss(logits: torch.Tensor, actions: torch.Tensor, old_log_probs: torch.Tensor,
             advantages: torch.Tensor, values: torch.Tensor, returns: torch.Tensor,
             clip: float = 0.2, vf_coef: float = 0.5, ent_coef: float = 0.0,
             normalize_advantages: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""PPO's loss on one minibatch (Schulman et al., 2017): a pure function, no optimiser.

    ``logits (B, A)`` and ``values (B,)`` are the current policy's outputs; ``actions (B,)``,
    ``old_log_probs (B,)`` (of those actions under the policy that collected them),
    ``advantages (B,)`` and ``returns (B,)`` come from the rollout.

    .. math::
        \rho = \frac{\pi_\theta(a\mid h)}{\pi_{\text{old}}(a\mid h)}, \quad
        \mathcal{L} = -\,\overline{\min\big(\rho A,\ \text{clip}(\rho, 1-\epsilon, 1+\epsilon) A\big)}
        + c_v\,\overline{\tfrac12 (V - \hat R)^2} - c_e\,\overline{\mathcal{H}[\pi_\theta]}

    With ``normalize_advantages`` (the default, as Stable-Baselines3 and CleanRL) the
    advantages are first standardised over the minibatch, ``(A - mean) / (std + 1e-8)`` with
    the unbiased std (a minibatch of one is left as it is). The value loss has the factor ½
    (as CleanRL; Stable-Baselines3 leaves it out). Defaults: ``clip=0.2`` (the paper's
    :math:`\epsilon`), ``vf_coef=0.5``, ``ent_coef=0.0`` (Stable-Baselines3's).

    Returns ``(loss, stats)``: ``stats`` holds detached 0-d tensors ``policy``, ``value``,
    ``entropy``, ``clip_fraction`` (share of samples with :math:`|\rho - 1| > \epsilon`) and
    ``approx_kl`` (an estimate of KL(old ‖ new)) — tensors, so that reading them is a choice
    (on a GPU each ``.item()`` waits for the device).

    >>> logits = torch.zeros(2, 2)                          # uniform policy: entropy ln 2
    >>> old = torch.log(torch.tensor([0.5 / 1.5, 0.5 / 0.5]))   # ratios 1.5 and 0.5
    >>> loss, stats = ppo_loss(logits, torch.tensor([0, 1]), old, torch.tensor([1.0, -1.0]),
    ...                        torch.zeros(2), torch.zeros(2), normalize_advantages=False)
    >>> round(stats["policy"].item(), 4)            # -mean(min(1.5, 1.2), min(-0.5, -0.8))
    -0.2
    >>> round(stats["entropy"].item(), 4), stats["clip_fraction"].item()
    (0.6931, 1.0)
    """
    _check_ppo_inputs(logits, actions, old_log_probs, advantages, values, returns)
    check_real("clip", clip, 0.0, low_open=True)
    check_real("vf_coef", vf_coef, 0.0)
    check_real("ent_coef", ent_coef, 0.0)
    check_bool("normalize_advantages", normalize_advantages)
    logits, values = logits.float(), values.float()  # under autocast they may be bf16 / fp16
    dist = torch.distributions.Categorical(logits=logits, validate_args=False)
    log_probs = dist.log_prob(actions)  # (B,)
    if normalize_advantages and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = (log_probs - old_log_probs).exp()  # (B,)
    policy_loss = -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages).mean()
    value_loss = 0.5 * F.mse_loss(values, returns)
    entropy = dist.entropy().mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy
    with torch.no_grad():
        log_ratio = log_probs - old_log_probs
        stats = {
            "policy": policy_loss.detach(),
            "value": value_loss.detach(),
            "entropy": entropy.detach(),
            "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),  # Schulman's k3 estimator, >= 0
        }
    return loss, stats


def _check_ppo_inputs(logits, actions, old_log_probs, advantages, values, returns) -> None:
    check_float_tensor("logits", logits, dims=2)
    b, n_actions = logits.shape
    check_tensor("actions", actions, dims=1)
    if actions.is_floating_point() or actions.is_complex() or actions.dtype == torch.bool:
        raise TypeError(f"actions must be an integer tensor of action indices, got {describe(actions)}")
    for name, t in (("actions", actions), ("old_log_probs", old_log_probs), ("advantages", advantages),
                    ("values", values), ("returns", returns)):
        if name != "actions":
            check_float_tensor(name, t)
        check_shape(name, t, (b,), what=f"(B,) = ({b},), one per row of logits")
    check_same_device(logits=logits, actions=actions, old_log_probs=old_log_probs,
                      advantages=advantages, values=values, returns=returns)
    if actions.device.type == "cpu" and b and (int(actions.min()) < 0 or int(actions.max()) >= n_actions):
        # (only on the CPU: reading the values back from a GPU would wait for it every step)
        raise ValueError(f"actions must be in [0, {n_actions}) for logits of {n_actions} actions, got "
                         f"values from {int(actions.min())} to {int(actions.max())}")


@dataclass
class PPOConfig:
    """PPO's settings. Every field is checked when the config is made.

    The defaults follow RL Zoo's tuned PPO for ``CartPole-v1`` (Raffin et al.): 8 environments
    × 32 steps per update, minibatches of 256, learning rate 1e-3 annealed linearly to 0,
    ``gamma=0.98``, ``gae_lambda=0.8``, no entropy bonus; and Stable-Baselines3's PPO defaults
    for ``clip=0.2`` (the paper's), ``vf_coef=0.5`` and ``max_grad_norm=0.5``. Where they differ
    from RL Zoo: 10 epochs per update instead of 20, a constant clip range instead of an
    annealed one, and 200k environment steps instead of 100k (without velocities the task is
    harder). ``autocast`` ``None`` means: on when the policy is on a CUDA device (bf16, or fp16
    with a ``GradScaler`` before Ampere), off on the CPU; ``True``/``False`` forces it.
    """

    total_steps: int = 200_000
    num_envs: int = 8
    rollout_len: int = 32  # steps per environment between updates
    epochs: int = 10
    minibatch_size: int = 256
    lr: float = 1e-3  # annealed linearly to 0
    gamma: float = 0.98
    gae_lambda: float = 0.8
    clip: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    blank_prob: float = 0.0  # > 0: the variant task with blanked observations
    threads: int | None = 1  # torch threads while training (small nets: 1 is fastest)
    autocast: bool | None = None  # None: on for CUDA, off for the CPU

    def __post_init__(self) -> None:
        for name in ("total_steps", "num_envs", "rollout_len", "epochs", "minibatch_size"):
            check_positive_int(name, getattr(self, name))
        batch = self.num_envs * self.rollout_len
        if self.total_steps < batch:
            raise ValueError(
                f"total_steps must be at least num_envs * rollout_len = {self.num_envs} * "
                f"{self.rollout_len} = {batch} (one update), got {self.total_steps}"
            )
        check_real("lr", self.lr, 0.0, low_open=True)
        check_real("gamma", self.gamma, 0.0, 1.0)
        check_real("gae_lambda", self.gae_lambda, 0.0, 1.0)
        check_real("clip", self.clip, 0.0, low_open=True)
        check_real("ent_coef", self.ent_coef, 0.0)
        check_real("vf_coef", self.vf_coef, 0.0)
        check_real("max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        check_real("blank_prob", self.blank_prob, 0.0, 1.0)
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        if self.autocast is not None:
            check_bool("autocast", self.autocast)


@dataclass
class TrainResult:
    """What :func:`train_ppo` returns: the curve, the losses, the wall time and the settings.

    ``losses``, ``entropies`` and ``clip_fractions`` are per update, averaged over its
    minibatches (read back from the device once per update, not once per step).
    """

    steps: list[int] = field(default_factory=list)  # env steps at each update
    returns: list[float] = field(default_factory=list)  # mean return of episodes finished so far (last 20)
    losses: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    clip_fractions: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    rollout_time_s: float = 0.0  # of which: collecting experience (env + policy forward)
    episodes: int = 0
    config: dict = field(default_factory=dict)
    interrupted: bool = False  # True when training was stopped with Ctrl-C / the stop button


def _forward_sample(policy: nn.Module, obs: torch.Tensor, valid: torch.Tensor, greedy: bool = False):
    logits, value = policy(obs, valid)
    dist = torch.distributions.Categorical(logits=logits.float(), validate_args=False)
    action = logits.argmax(-1) if greedy else dist.sample()
    return action, dist.log_prob(action), value.float()


def _policy_device(policy: nn.Module) -> torch.device:
    param = next(policy.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_policy(policy: object, blank_prob: float) -> None:
    """A policy of this module's interface, reading the observations the environment gives."""
    if not isinstance(policy, nn.Module) or not all(hasattr(policy, a) for a in ("window", "obs_dim")):
        raise TypeError("policy must be an nn.Module with attributes window and obs_dim (MLPPolicy, "
                        f"AttentionPolicy or one of the same interface), got {describe(policy)}")
    want = 2 + (blank_prob > 0)  # (x, theta), plus the seen flag when observations are blanked
    if policy.obs_dim != want:
        extra = " (x, theta, seen)" if blank_prob > 0 else " (x, theta)"
        raise ValueError(f"policy.obs_dim must be {want}{extra} for blank_prob={blank_prob}, "
                         f"got {policy.obs_dim}")


def _mixed_precision(device: torch.device, autocast: bool | None) -> MixedPrecision:
    """Autocast (and a GradScaler for fp16) on CUDA by default; off on the CPU unless forced."""
    enabled = device.type == "cuda" if autocast is None else autocast
    return MixedPrecision(device, enabled=enabled)


def train_ppo(policy: nn.Module, config: PPOConfig | None = None, seed: int = 0,
              desc: str = "PPO", progress: bool | None = None) -> TrainResult:
    """Train ``policy`` with PPO on no-velocity CartPole; return the learning curve.

    One loop for every policy: it only needs ``policy.window`` (how many observations it
    reads) and ``policy.obs_dim``. The rollout handles the ``NEXT_STEP`` autoreset: the step
    taken on an episode's final observation is a no-op for the environment, so it is stored
    but excluded from the loss (``valid_step``), and the history of the environment is
    cleared when its new episode starts. The loss of each minibatch is :func:`ppo_loss`.

    Training runs on the policy's device. On CUDA the update runs under autocast (see
    :class:`PPOConfig`), and the losses are read back once per update, never once per step.

    >>> policy = MLPPolicy(obs_dim=2, n_actions=2)
    >>> result = train_ppo(policy, PPOConfig(total_steps=512, num_envs=4, rollout_len=64,
    ...                                      epochs=1), progress=False)
    >>> result.steps
    [256, 512]
    """
    cfg = PPOConfig() if config is None else config
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"config must be a PPOConfig, got {describe(cfg)}")
    _check_policy(policy, cfg.blank_prob)
    check_int("seed", seed, low=0)
    check_str("desc", desc)
    if progress is not None:
        check_bool("progress", progress)
    torch.manual_seed(seed)
    np.random.seed(seed)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    try:
        return _train(policy, cfg, seed, desc, progress, start)
    finally:
        torch.set_num_threads(old_threads)


def _train(policy, cfg: PPOConfig, seed: int, desc: str, progress: bool | None, start: float) -> TrainResult:
    n, t_len, k = cfg.num_envs, cfg.rollout_len, policy.window
    device = _policy_device(policy)
    envs = make_vector_env(n, blank_prob=cfg.blank_prob)
    obs, _ = envs.reset(seed=seed)
    hist = HistoryBuffer(n, k, policy.obs_dim, device=device)
    hist.reset(obs)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
    mp = _mixed_precision(device, cfg.autocast)
    batch = n * t_len
    num_updates = cfg.total_steps // batch
    result = TrainResult(config=asdict(cfg))

    last_done = torch.zeros(n, dtype=torch.bool)  # did the previous step end each episode?
    ep_return = np.zeros(n)
    finished: list[float] = []
    zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
    buf_obs = zeros(t_len, n, k, policy.obs_dim)  # (T, N, K, D)
    buf_valid = zeros(t_len, n, k, dtype=torch.bool)  # (T, N, K)
    buf_act = zeros(t_len, n, dtype=torch.long)
    buf_logp = zeros(t_len, n)
    buf_val = zeros(t_len + 1, n)
    buf_rew = zeros(t_len, n)
    buf_term = zeros(t_len, n, dtype=torch.bool)
    buf_trunc = zeros(t_len, n, dtype=torch.bool)
    buf_step_ok = zeros(t_len, n, dtype=torch.bool)  # False on the autoreset no-op steps

    bar = tqdm(range(num_updates), desc=desc, disable=progress is False, leave=False)
    last_finite: tuple[int, float] | None = None
    try:
        for update in bar:
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * (1.0 - update / num_updates)
            # ---- collect t_len steps from each of the n environments ----
            t0 = time.perf_counter()
            policy.eval()
            with torch.no_grad():
                for t in range(t_len):
                    x, m = hist.obs, hist.valid
                    with mp.autocast():
                        action, logp, value = _forward_sample(policy, x, m)
                    buf_obs[t], buf_valid[t], buf_act[t], buf_logp[t], buf_val[t] = x, m, action, logp, value
                    buf_step_ok[t] = ~last_done  # acting on a final observation does nothing
                    obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
                    buf_rew[t] = torch.from_numpy(reward).float()
                    buf_term[t], buf_trunc[t] = torch.from_numpy(term), torch.from_numpy(trunc)
                    ep_return += reward
                    done = term | trunc
                    for i in np.flatnonzero(done):
                        finished.append(float(ep_return[i]))
                    ep_return[done] = 0.0
                    hist.push(obs, new_episode=last_done)  # new episode iff the *previous* step ended one
                    last_done = torch.from_numpy(done)
                with mp.autocast():
                    buf_val[t_len] = policy(hist.obs, hist.valid)[1].float()  # bootstrap value of the next observation
            adv, ret = compute_gae(buf_rew, buf_val, buf_term, buf_trunc, cfg.gamma, cfg.gae_lambda)
            result.rollout_time_s += time.perf_counter() - t0

            # ---- PPO update on the real (non-no-op) steps ----
            policy.train()
            ok = buf_step_ok.flatten()
            b_obs, b_valid = buf_obs.flatten(0, 1)[ok], buf_valid.flatten(0, 1)[ok]
            b_act, b_logp = buf_act.flatten()[ok], buf_logp.flatten()[ok]
            b_adv, b_ret = adv.flatten()[ok], ret.flatten()[ok]
            size = b_act.numel()
            logged: list[torch.Tensor] = []  # (loss, entropy, clip fraction) per minibatch, on the device
            for _ in range(cfg.epochs):
                perm = torch.randperm(size).to(device)
                for lo in range(0, size, cfg.minibatch_size):
                    idx = perm[lo:lo + cfg.minibatch_size]
                    with mp.autocast():
                        logits, value = policy(b_obs[idx], b_valid[idx])
                    loss, stats = ppo_loss(logits, b_act[idx], b_logp[idx], b_adv[idx], value, b_ret[idx],
                                           clip=cfg.clip, vf_coef=cfg.vf_coef, ent_coef=cfg.ent_coef)
                    optimizer.zero_grad(set_to_none=True)
                    mp.step(loss, optimizer, clip_grad_norm=cfg.max_grad_norm, parameters=policy.parameters())
                    logged.append(torch.stack([loss.detach(), stats["entropy"], stats["clip_fraction"]]))
            # one read-back per update (a device sync on a GPU), not one per minibatch
            losses, entropies, clip_fractions = torch.stack(logged).T.tolist() if logged else ([], [], [])
            bad = [v for v in losses if not np.isfinite(v)]
            if bad:
                where = (f"the last finite loss was {last_finite[1]:.4g} at update {last_finite[0]}"
                         if last_finite else "no finite loss was seen before it")
                raise NonFiniteLossError(f"PPO loss became {bad[0]} at update {update}; {where}. "
                                         "Lower the learning rate or check the observations for NaN.")
            if losses:
                last_finite = (update, losses[-1])
                result.losses.append(float(np.mean(losses)))
                result.entropies.append(float(np.mean(entropies)))
                result.clip_fractions.append(float(np.mean(clip_fractions)))
            result.steps.append((update + 1) * batch)
            recent = finished[-20:]
            result.returns.append(float(np.mean(recent)) if recent else float("nan"))
            bar.set_postfix(ret=f"{result.returns[-1]:.0f}", refresh=False)
    except KeyboardInterrupt:  # the notebook's stop button: keep the policy and the curve so far
        result.interrupted = True
        print(f"Interrupted after {len(result.steps)} of {num_updates} updates; "
              "returning the policy trained so far and its learning curve.")
    bar.close()
    envs.close()
    policy.eval()
    result.episodes = len(finished)
    result.wall_time_s = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(policy: nn.Module, episodes: int = 20, greedy: bool = True, seed: int = 10_000,
             blank_prob: float = 0.0, max_steps: int = 500) -> np.ndarray:
    """Returns of ``episodes`` episodes (run side by side, one per environment).

    ``greedy=True`` takes the most likely action; ``False`` samples from the policy, as in
    training. Evaluation seeds (default from 10 000) differ from the training seeds.

    >>> returns = evaluate(MLPPolicy(obs_dim=2, n_actions=2), episodes=3)
    >>> returns.shape
    (3,)
    """
    _check_run_args(policy, blank_prob, seed, max_steps)
    check_positive_int("episodes", episodes)
    check_bool("greedy", greedy)
    policy.eval()
    envs = make_vector_env(episodes, blank_prob=blank_prob)
    obs, _ = envs.reset(seed=seed)
    hist = HistoryBuffer(episodes, policy.window, policy.obs_dim, device=_policy_device(policy))
    hist.reset(obs)
    total = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    for _ in range(max_steps):
        action, _, _ = _forward_sample(policy, hist.obs, hist.valid, greedy=greedy)
        obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
        total += reward * running
        running &= ~(term | trunc)
        if not running.any():
            break
        hist.push(obs, new_episode=torch.zeros(episodes, dtype=torch.bool))
    envs.close()
    return total


@torch.no_grad()
def record_episode(policy: AttentionPolicy, seed: int = 20_000, blank_prob: float = 0.0,
                   max_steps: int = 500) -> dict[str, np.ndarray]:
    """Run one greedy episode and keep, at every step, what the newest position attended to.

    Returns ``{"obs": (T, D), "state": (T, 4), "features": (T, d_model), "attention": (T, H, K)}``:
    what the agent saw, the true CartPole state (with the hidden velocities), the feature of the
    newest position (what the heads read) and the last layer's weights of the newest query over
    the window (slot ``K-1`` is the current observation, ``K-2`` the one before, ...).

    >>> ep = record_episode(AttentionPolicy(obs_dim=2, n_actions=2, window=4), max_steps=5)
    >>> ep["attention"].shape[1:]
    (4, 4)
    """
    if not isinstance(policy, AttentionPolicy):
        raise TypeError(f"policy must be an AttentionPolicy (its attention is recorded), got {describe(policy)}")
    _check_run_args(policy, blank_prob, seed, max_steps)
    policy.eval()
    envs = make_vector_env(1, blank_prob=blank_prob)
    obs, _ = envs.reset(seed=seed)
    hist = HistoryBuffer(1, policy.window, policy.obs_dim, device=_policy_device(policy))
    hist.reset(obs)
    seen, states, features, attention = [], [], [], []
    before = policy.store_attention
    policy.store_attention = True
    try:
        for _ in range(max_steps):
            features.append(policy.encode(hist.obs, hist.valid)[0, -1].float().cpu().numpy())  # (d_model,)
            weights = policy.encoder.layers[-1].self_attn.last_attn_weights  # (1, H, K, K)
            attention.append(weights[0, :, -1].float().cpu().numpy())  # (H, K): the newest query's row
            seen.append(hist.obs[0, -1].cpu().numpy())
            states.append(np.array(envs.envs[0].unwrapped.state, dtype=np.float32))
            action, _, _ = _forward_sample(policy, hist.obs, hist.valid, greedy=True)
            obs, _, term, trunc, _ = envs.step(action.cpu().numpy())
            if term[0] or trunc[0]:
                break
            hist.push(obs, new_episode=torch.zeros(1, dtype=torch.bool))
    finally:
        envs.close()
        policy.store_attention = before
    return {"obs": np.stack(seen), "state": np.stack(states), "features": np.stack(features),
            "attention": np.stack(attention)}


def _check_run_args(policy: nn.Module, blank_prob: float, seed: int, max_steps: int) -> None:
    check_real("blank_prob", blank_prob, 0.0, 1.0)
    _check_policy(policy, blank_prob)
    check_int("seed", seed, low=0)
    check_positive_int("max_steps", max_steps)
