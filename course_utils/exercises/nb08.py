"""Exercises of notebook 08 (efficient attention).

* ``08.1`` (derive) — combine the online-softmax statistics ``(m, ℓ)`` of two parts of a row into
  those of the whole row, ``fn(m_a, l_a, m_b, l_b) -> (m, l)``: how split-K decoding and
  FlashAttention-2 merge partial results computed in parallel.
* ``08.2`` (predict) — the peak extra memory (MiB) of the naive attention for B = 3, H = 4,
  N = 2000, D = 32 in float32, measured in a fresh process.
* ``08.3`` (derive) — the bytes of a KV cache for a model configuration,
  ``fn(num_layers, num_heads, num_kv_heads, head_dim, seq_len, batch, bytes_per_value)``,
  compared with the course's :class:`~course_utils.kv_cache.KVCache`.
* ``08.4`` (debug) — a KV cache that forgets the newest key: ``fn()`` returns the fixed cache
  class (or pass the class itself).

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("08.1", "08.3", "08.4"))
True
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from course_utils.attention import MultiHeadAttention
from course_utils.kv_cache import KVCache, KVCacheBase

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _close, _first_difference, _gap

__all__ = ["check_kv_cache_bytes", "check_kv_cache_class", "check_merge_stats",
           "check_naive_memory"]


# --------------------------------------------------------------------------------------------
# 08.1 derive: merge two online-softmax states
# --------------------------------------------------------------------------------------------


def _solution_merge_stats(m_a, l_a, m_b, l_b):
    """(m, l) of a row made of two parts, from each part's max m and sum l = Σ exp(x - m)."""
    m = torch.maximum(m_a, m_b)  # the max of the whole row
    # each part's sum was taken against its own max: bring both to the new one
    return m, l_a * torch.exp(m_a - m) + l_b * torch.exp(m_b - m)


def _merge_no_rescale(m_a, l_a, m_b, l_b):
    return torch.maximum(m_a, m_b), l_a + l_b


def _merge_wrong_sign(m_a, l_a, m_b, l_b):
    m = torch.maximum(m_a, m_b)
    return m, l_a * torch.exp(m - m_a) + l_b * torch.exp(m - m_b)


def _merge_one_side(m_a, l_a, m_b, l_b):
    m = torch.maximum(m_a, m_b)
    return m, l_a * torch.exp(m_a - m) + l_b


def _merge_min(m_a, l_a, m_b, l_b):
    m = torch.minimum(m_a, m_b)
    return m, l_a * torch.exp(m_a - m) + l_b * torch.exp(m_b - m)


def _merge_case() -> tuple[torch.Tensor, ...]:
    x = torch.randn(6, 30, generator=torch.Generator().manual_seed(8)) * 4
    x[:3, :11] += 6.0  # rows 0-2: part a holds the maximum
    x[3:, 11:] += 6.0  # rows 3-5: part b does
    a, b = x[:, :11], x[:, 11:]
    stats = [(p.amax(-1), torch.exp(p - p.amax(-1, keepdim=True)).sum(-1)) for p in (a, b)]
    return x, stats[0], stats[1]


@exercise(
    "08.1",
    title="Merge the online-softmax statistics of two parts of a row",
    hint="The max of the whole row is the larger of the two maxima. Each part's sum was taken "
    "against its own max: multiply it by exp(old max − new max) before adding.",
    solution=_solution_merge_stats,
    kind="derive",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("adds the sums as they are", (_merge_no_rescale,), "against its own maximum"),
        Mistake("rescales the wrong way", (_merge_wrong_sign,), "exp(m_a − m), not exp(m − m_a)"),
        Mistake("rescales one part only", (_merge_one_side,), "both parts"),
        Mistake("keeps the smaller maximum", (_merge_min,), "larger of the two maxima"),
    ],
)
def check_merge_stats(fn) -> CheckResult:
    x, (m_a, l_a), (m_b, l_b) = _merge_case()
    m, l = fn(m_a, l_a, m_b, l_b)  # noqa: E741
    want_m = x.amax(-1)
    want_l = torch.exp(x - want_m[:, None]).sum(-1)
    known = [
        (_merge_min, "m must be the larger of the two maxima (the max of the whole row)"),
        (_merge_no_rescale, "each ℓ was summed against its own maximum: rescale it to the new "
                            "one, ℓ_a·exp(m_a − m), before adding"),
        (_merge_wrong_sign, "the factor is exp(m_a − m), not exp(m − m_a): the new maximum is "
                            "at least the old one, so the factor is at most 1"),
        (_merge_one_side, "rescale both parts: the part whose maximum is not the new one "
                          "changes too"),
    ]
    if torch.allclose(m, want_m) and torch.allclose(l, want_l, rtol=1e-5):
        return ok("Correct: this merge is associative, so parts can be combined in any order "
                  "(split-K decoding, FlashAttention-2's parallel blocks).")
    for wrong, message in known:
        wm, wl = wrong(m_a, l_a, m_b, l_b)
        if torch.allclose(m, wm) and torch.allclose(l, wl, rtol=1e-5):
            return fail("values", message)
    if not torch.allclose(m, want_m):
        return fail("values", f"m differs {_first_difference(m, want_m, 'row')}")
    return fail("values", f"ℓ differs {_first_difference(l, want_l, 'row', atol=1e-4)}")


# --------------------------------------------------------------------------------------------
# 08.2 predict: the peak memory of the naive attention
# --------------------------------------------------------------------------------------------

_B, _H, _N, _D = 3, 4, 2000, 32


@functools.lru_cache(maxsize=1)
def _measured_naive_mib() -> float:
    from course_utils.monitor import peak_memory_mb

    return peak_memory_mb("naive", _N, b=_B, h=_H, d=_D, threads=1)


def _solution_naive_memory() -> float:
    """q kᵀ (B, H, N, N), then its scaled copy while it is alive, then the softmax of that copy
    while the copy is alive: two (B, H, N, N) float32 matrices at once, plus a small output."""
    B, H, N = 3, 4, 2000
    one_matrix = B * H * N * N * 4 / 2**20  # MiB
    return 2 * one_matrix


@exercise(
    "08.2",
    title="Predict the peak memory of the naive attention",
    hint="Count the (B, H, N, N) float32 matrices that exist at the same moment in "
    "softmax((q @ k.T) * scale) @ v: an operation's input is still alive while its output is "
    "written.",
    solution=_solution_naive_memory,
    solution_args=lambda: (_solution_naive_memory(),),
    kind="predict",
    minutes=10,
    difficulty=2,
    mistakes=[
        Mistake("one matrix", (183.1,), "two (B, H, N, N) matrices"),
        Mistake("forgets the heads", (91.55,), "one matrix per head"),
        Mistake("forgets the batch", (122.07,), "every sequence of the batch"),
        Mistake("megabytes instead of MiB", (384.0,), "megabytes"),
        Mistake("scores, scaled scores and weights all at once", (549.3,), "freed"),
    ],
)
def check_naive_memory(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (MiB)")
    measured = _measured_naive_mib()
    one = _B * _H * _N * _N * 4 / 2**20
    said = (f"you predicted {pred:g} MiB; measured in a fresh process: {measured:.1f} MiB "
            f"(one (B, H, N, N) float32 matrix is {one:.1f} MiB)")
    known = [
        (one, "two (B, H, N, N) matrices are alive at the peak: the input of each step (q kᵀ, "
              "then the scaled scores) is still there while its output is written"),
        (2 * one / _H, "one matrix per head: every one of the H = 4 heads has its own scores"),
        (2 * one / _B, "every sequence of the batch (B = 3) has its own scores"),
        (2 * one * 2**20 / 1e6, "that is megabytes (10⁶ bytes); a MiB is 2²⁰ bytes"),
        (3 * one, "not all three at once: q kᵀ is freed as soon as its scaled copy exists"),
    ]
    for value, message in known:
        if _close(pred, value, 0.01):
            return fail("values", f"{said}. {message}.")
    if _close(pred, 2 * one, 0.01) or _close(pred, measured, 0.03):
        return ok(f"Correct! {said}: two matrices at the peak, and a little more for the output "
                  "and the allocator. The tiled attention holds one (block_q, block_k) tile.")
    return fail("values", f"{said}; yours is {_gap(pred, measured)}. Count B·H·N·N numbers of "
                          "4 bytes, and how many such matrices exist at once.")


# --------------------------------------------------------------------------------------------
# 08.3 derive: the size of a KV cache
# --------------------------------------------------------------------------------------------

_CONFIGS = [  # (layers, heads, kv heads, head dim, tokens, batch, bytes per value)
    (32, 32, 32, 128, 4096, 1, 2),  # a 7B multi-head model in fp16 (Llama-2-7B's shape)
    (80, 64, 8, 128, 4096, 1, 2),  # a 70B grouped-query model (Llama-2-70B's shape)
    (2, 4, 1, 16, 100, 3, 4),  # a small multi-query model in fp32, batch 3
]


def _solution_kv_cache_bytes(num_layers, num_heads, num_kv_heads, head_dim, seq_len, batch,
                             bytes_per_value):
    """Keys and values (2) of every layer, batch row, key/value head and token."""
    return 2 * num_layers * batch * num_kv_heads * seq_len * head_dim * bytes_per_value


def _measured_kv_bytes(layers, heads, kv_heads, head_dim, tokens, batch, nbytes) -> int:
    dtype = {2: torch.float16, 4: torch.float32}[nbytes]
    # the meta device allocates nothing: the cache of a 70B model costs no memory here
    return KVCache(layers, batch, kv_heads, head_dim, tokens, dtype=dtype, device="meta").nbytes()


def _kv_no_values(layers, heads, kv_heads, head_dim, tokens, batch, nbytes):
    return layers * batch * kv_heads * tokens * head_dim * nbytes


def _kv_query_heads(layers, heads, kv_heads, head_dim, tokens, batch, nbytes):
    return 2 * layers * batch * heads * tokens * head_dim * nbytes


def _kv_one_layer(layers, heads, kv_heads, head_dim, tokens, batch, nbytes):
    return 2 * batch * kv_heads * tokens * head_dim * nbytes


def _kv_bits(layers, heads, kv_heads, head_dim, tokens, batch, nbytes):
    return 2 * layers * batch * kv_heads * tokens * head_dim * nbytes * 8


@exercise(
    "08.3",
    title="Derive the size of a KV cache",
    hint="Per layer, per batch row and per token the cache keeps one key and one value for every "
    "key/value head: 2 · H_kv · head_dim numbers.",
    solution=_solution_kv_cache_bytes,
    kind="derive",
    minutes=8,
    difficulty=1,
    mistakes=[
        Mistake("keys only", (_kv_no_values,), "values too"),
        Mistake("counts the query heads", (_kv_query_heads,), "key/value heads"),
        Mistake("one layer", (_kv_one_layer,), "every layer"),
        Mistake("bits", (_kv_bits,), "bytes, not bits"),
    ],
)
def check_kv_cache_bytes(fn) -> CheckResult:
    known = [
        (_kv_no_values, "the cache keeps the values too: 2 tensors per layer"),
        (_kv_query_heads, "grouped-query attention caches only the key/value heads (H_kv), "
                          "not the query heads"),
        (_kv_one_layer, "every layer has its own cache"),
        (_kv_bits, "bytes, not bits: bytes_per_value is already in bytes"),
    ]
    for config in _CONFIGS:
        got, want = fn(*config), _measured_kv_bytes(*config)
        if got == want:
            continue
        for wrong, message in known:
            if got == wrong(*config):
                return fail("values", f"for {_describe(config)} you give {got:,} bytes; "
                                      f"the KVCache holds {want:,}: {message}")
        return fail("values", f"for {_describe(config)} you give {got:,} bytes; the KVCache "
                              f"holds {want:,} ({_gap(float(got), float(want))})")
    seven_b = _measured_kv_bytes(*_CONFIGS[0]) / 2**30
    seventy_b = _measured_kv_bytes(*_CONFIGS[1]) / 2**30
    return ok(f"Correct: at 4,096 tokens the 7B multi-head model caches {seven_b:.1f} GiB per "
              f"sequence, the 70B grouped-query model {seventy_b:.2f} GiB: 8 key/value heads "
              "instead of 64 make a ten-times-larger model's cache smaller.")


def _describe(config: tuple) -> str:
    names = ("layers", "heads", "kv_heads", "head_dim", "tokens", "batch", "bytes")
    return ", ".join(f"{n}={v}" for n, v in zip(names, config, strict=True))


# --------------------------------------------------------------------------------------------
# 08.4 debug: a KV cache that forgets the newest key
# --------------------------------------------------------------------------------------------


class _ListCache(KVCacheBase):
    """A cache kept as growing tensors (the notebook's broken one, fixed)."""

    def __init__(self, num_layers, batch, num_heads, head_dim, max_len):
        self.num_layers = num_layers
        self.reset()

    def reset(self):
        self.k = [None] * self.num_layers
        self.v = [None] * self.num_layers

    def length(self, layer=0):
        return 0 if self.k[layer] is None else self.k[layer].size(2)


class _SolutionCache(_ListCache):
    def update(self, layer, k_new, v_new):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k_new, v_new
        else:  # the old entries, then the new ones
            self.k[layer] = torch.cat([self.k[layer], k_new], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v_new], dim=2)
        return self.k[layer], self.v[layer]


def _solution_kv_cache_class():
    """The fixed cache: return the keys and values *after* appending the new ones."""

    class FixedCache(_ListCache):
        def update(self, layer, k_new, v_new):
            if self.k[layer] is None:
                self.k[layer], self.v[layer] = k_new, v_new
            else:
                self.k[layer] = torch.cat([self.k[layer], k_new], dim=2)
                self.v[layer] = torch.cat([self.v[layer], v_new], dim=2)
            return self.k[layer], self.v[layer]  # every key so far, the newest included

    return FixedCache


class _ForgetsNewest(_ListCache):
    def update(self, layer, k_new, v_new):
        old = (k_new[:, :, :0], v_new[:, :, :0]) if self.k[layer] is None else (self.k[layer],
                                                                               self.v[layer])
        self.k[layer] = torch.cat([old[0], k_new], dim=2)
        self.v[layer] = torch.cat([old[1], v_new], dim=2)
        return old[0] if old[0].size(2) else k_new, old[1] if old[1].size(2) else v_new


class _Overwrites(_ListCache):
    def update(self, layer, k_new, v_new):
        self.k[layer], self.v[layer] = k_new, v_new  # the past is lost
        return k_new, v_new


class _SwapsKV(_SolutionCache):
    def update(self, layer, k_new, v_new):
        k, v = super().update(layer, k_new, v_new)
        return v, k


class _NewestFirst(_ListCache):
    def update(self, layer, k_new, v_new):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k_new, v_new
        else:
            self.k[layer] = torch.cat([k_new, self.k[layer]], dim=2)
            self.v[layer] = torch.cat([v_new, self.v[layer]], dim=2)
        return self.k[layer], self.v[layer]


def _decode_with(cache_class) -> tuple[torch.Tensor, torch.Tensor]:
    """(token-by-token outputs through the cache, the full causal attention)."""
    torch.manual_seed(84)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        full = mha(x, is_causal=True)[0]
        cache = cache_class(1, 2, 4, 4, 7)
        # a prompt of 3 tokens, a chunk of 2, then one token at a time
        steps = [mha(x[:, a:b], is_causal=True, cache=cache)[0] for a, b in
                 ((0, 3), (3, 5), (5, 6), (6, 7))]
    return torch.cat(steps, 1), full


@exercise(
    "08.4",
    title="Debug a KV cache that forgets the newest key",
    hint="At step t the new token must attend to itself too. What does update return: the keys "
    "before the new ones were added, or after?",
    solution=_solution_kv_cache_class,
    kind="debug",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("still forgets the newest key", (_ForgetsNewest,), "before the new ones"),
        Mistake("overwrites the past", (_Overwrites,), "keeps only the newest token"),
        Mistake("returns (v, k)", (_SwapsKV,), "keys and values swapped"),
        Mistake("puts the newest first", (_NewestFirst,), "in order"),
    ],
)
def check_kv_cache_class(cache_class) -> CheckResult:
    if callable(cache_class) and not isinstance(cache_class, type):
        cache_class = cache_class()  # the notebook's fixed_cache_class(): it returns the class
    if not (isinstance(cache_class, type) and issubclass(cache_class, KVCacheBase)):
        return fail("type", f"pass the fixed class itself (a KVCacheBase subclass), got "
                            f"{type(cache_class).__name__}")
    got, want = _decode_with(cache_class)
    if torch.allclose(got, want, atol=1e-5):
        return ok("Correct: each new token attends to every earlier token and to itself, and the "
                  "cached decoding equals full causal attention.")
    known = [
        (_ForgetsNewest, "update returns the keys from before the new ones were added: the new "
                         "token never sees itself"),
        (_Overwrites, "the cache keeps only the newest token: append (torch.cat on dim 2) "
                      "instead of replacing"),
        (_SwapsKV, "keys and values swapped: update must return (k, v)"),
        (_NewestFirst, "the keys must stay in order, oldest first: the causal mask and RoPE "
                       "count positions from the left"),
    ]
    for wrong, message in known:
        if torch.allclose(got, _decode_with(wrong)[0], atol=1e-5):
            return fail("values", message)
    return fail("values", f"cached decoding differs from full attention "
                          f"{_first_difference(got, want, 'b, t, e')}")
