"""Exercises of notebook 09 (long contexts and fast inference).

* ``09.1`` (predict) — the fraction of 128 × 128 tiles that FlexAttention skips for a causal
  sliding window of W = 512 at N = 8192, measured on the block mask.
* ``09.2`` (derive) — the FLOPs of one decoding step of multi-head latent attention, naive and
  weight-absorbed, as a formula ``fn(cached, absorbed) -> FLOPs``, checked against PyTorch's
  FLOP counter on the real layer.
* ``09.3`` (debug) — a rolling (ring-buffer) KV-cache update that forgets the newest key.
* ``09.4`` (extend) — a ``mask_mod`` for packed documents that each see only a sliding window of
  their own past: ``fn(doc_ids, window) -> mask_mod``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("09.1", "09.2", "09.3", "09.4"))
True
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch

from . import CheckResult, Mistake, exercise, fail, ok
from .nb01 import _as_number, _close, _gap

# ---------------------------------------------------------------------------------------------
# 09.1 predict: the tiles a sliding window skips
# ---------------------------------------------------------------------------------------------

_N, _W, _TILE = 8192, 512, 128


@cache
def _tile_fractions() -> dict[str, float]:
    """Skipped fractions measured on FlexAttention block masks (computed once)."""
    from course_utils.inference.flex import block_mask, block_stats, causal_mod, sliding_window_mod

    def skipped(mod):
        return block_stats(block_mask(mod, _N, _N, block_size=_TILE))["skipped_fraction"]

    def two_sided(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() < _W

    return {
        "window": skipped(sliding_window_mod(_W)),
        "causal": skipped(causal_mod),
        "two_sided": skipped(two_sided),
    }


def _solution_skipped_fraction() -> float:
    """A query tile (rows 128i .. 128i + 127) sees keys from 128i - 511 to 128i + 127: the tile on
    the diagonal and the 4 before it (the oldest only partly: key 128(i - 4) + 1 onwards). The first
    four query tiles have fewer before them (0, 1, 2, 3)."""
    q_tiles = 8192 // 128  # 64 tiles of queries, 64 of keys
    computed = sum(min(i, 4) + 1 for i in range(q_tiles))  # 1 + 2 + 3 + 4 + 60 * 5 = 310
    return 1 - computed / q_tiles**2  # 0.9243


@exercise(
    "09.1",
    title="Predict the share of tiles a sliding window skips",
    hint="Count, for one row of 128 queries, which 128-key tiles hold at least one key inside the "
    "window of some query of that row; the first rows have fewer tiles before them.",
    solution=_solution_skipped_fraction,
    solution_args=lambda: (_solution_skipped_fraction(),),
    kind="predict",
    minutes=10,
    difficulty=2,
    mistakes=[
        Mistake("the window's share of the keys", (1 - _W / _N,), "partly inside the window"),
        Mistake("the computed share, not the skipped", (1 - 0.924316,), "COMPUTED"),
        Mistake("a percentage", (92.43,), "a fraction"),
        Mistake("the causal mask alone", (1 - 64 * 65 / 2 / 64**2,), "causal mask alone"),
        Mistake("a window on both sides", (0.864,), "both sides"),
    ],
)
def check_skipped_fraction(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction (a fraction between 0 and 1)")
    f = _tile_fractions()
    truth = f["window"]
    said = (
        f"you predicted {pred:.4g}; measured on the block mask: {truth:.4f} of the "
        f"{(_N // _TILE) ** 2} tiles are skipped"
    )
    if _close(pred, truth, 0.002):
        return ok(
            f"Correct! {said}. Only {1 - truth:.2%} of the tiles are computed: the kernel's work "
            "grows like N·W, not N²."
        )
    known = [
        (
            1 - _W / _N,
            "that is 1 - W/N, the share of keys outside one query's window; but a tile is "
            "computed as soon as ONE of its 128 × 128 pairs is allowed, so the tiles that "
            "are partly inside the window count in full",
        ),
        (1 - truth, "that is the share of tiles COMPUTED; the question asks for the share skipped"),
        (100 * truth, "that is a percentage; give a fraction between 0 and 1"),
        (
            f["causal"],
            "that is what the causal mask alone skips (the tiles above the diagonal); the "
            "window also removes the tiles more than W keys in the past",
        ),
        (
            f["two_sided"],
            "that counts a window on both sides (|i - j| < W); this one is causal, so "
            "the tiles above the diagonal are skipped too",
        ),
    ]
    for value, message in known:
        if _close(pred, value, 0.004):
            return fail("values", f"{said}: {message}.")
    return fail(
        "values",
        f"{said}; yours is {_gap(pred, truth)}. How many key tiles does one row "
        "of 128 queries touch?",
    )


# ---------------------------------------------------------------------------------------------
# 09.2 derive: the FLOPs of an MLA decoding step, naive and absorbed
# ---------------------------------------------------------------------------------------------

#: the small MLA layer of notebook 09, section 4
CONFIG = dict(d_model=256, num_heads=8, kv_rank=64, q_rank=96, nope_dim=32, rope_dim=16, v_dim=32)
_CACHED = (0, 7, 100, 1000)


def _solution_mla_step_flops(cached: int, absorbed: bool) -> int:
    """FLOPs (2 per multiply-add) of one new token through the MLA layer with ``cached`` tokens
    already in the latent cache (so it attends to n = cached + 1 keys)."""
    d, h, d_c, d_q, d_h, d_r, d_v = 256, 8, 64, 96, 32, 16, 32
    n = cached + 1
    # the new token's projections: queries (down, then content and RoPE parts), its latent and
    # RoPE key, and the output projection
    macs = d * d_q + d_q * h * d_h + d_q * h * d_r + d * d_c + d * d_r + h * d_v * d
    if absorbed:
        macs += h * d_h * d_c  # W_UKᵀ q: the query moves into latent space
        macs += h * n * (d_c + d_r)  # scores against the n latents and RoPE keys
        macs += h * n * d_c  # weighted sum of the latents
        macs += h * d_c * d_v  # W_UV, once per head, after the sum
    else:
        macs += n * d_c * h * (d_h + d_v)  # up-project EVERY cached latent to keys and values
        macs += h * n * (d_h + d_r)  # scores
        macs += h * n * d_v  # weighted sum of the values
    return 2 * macs


@cache
def _measured_flops(cached: int, absorbed: bool) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from course_utils.inference.latent_attention import MultiHeadLatentAttention

    torch.manual_seed(0)
    layer = MultiHeadLatentAttention(**CONFIG).eval()
    cache = layer.new_cache(batch=1, max_len=cached + 1)
    with torch.no_grad():
        if cached:
            layer(torch.randn(1, cached, CONFIG["d_model"]), cache=cache)
        with FlopCounterMode(display=False) as counter:
            layer(torch.randn(1, 1, CONFIG["d_model"]), cache=cache, absorbed=absorbed)
    return int(counter.get_total_flops())


def _flops_variant(kind: str) -> Callable[[int, bool], int]:
    def fn(cached: int, absorbed: bool) -> int:
        full = _solution_mla_step_flops(cached, absorbed)
        d, h, d_c, d_q, d_h, d_r, d_v = 256, 8, 64, 96, 32, 16, 32
        n = cached + 1
        if kind == "macs":
            return full // 2
        if kind == "no_projections":
            return full - 2 * (
                d * d_q + d_q * h * d_h + d_q * h * d_r + d * d_c + d * d_r + h * d_v * d
            )
        if kind == "naive_keys_only" and not absorbed:
            return full - 2 * n * d_c * h * d_v
        if kind == "cached_not_plus_one":
            return _solution_mla_step_flops(cached - 1, absorbed) if cached else full
        if kind == "absorbed_like_naive":
            return _solution_mla_step_flops(cached, False)
        return full

    return fn


@exercise(
    "09.2",
    title="Derive the FLOPs of an MLA decoding step, naive and absorbed",
    hint="List every matrix product of one step with its shape (M × K) @ (K × N) and count "
    "2·M·K·N. The naive form up-projects all n = cached + 1 latents to keys AND values; the "
    "absorbed form "
    "moves W_UK into the query and applies W_UV after the weighted sum.",
    solution=_solution_mla_step_flops,
    kind="derive",
    minutes=25,
    difficulty=3,
    mistakes=[
        Mistake("multiply-adds, not FLOPs", (_flops_variant("macs"),), "multiply-adds"),
        Mistake(
            "only the attention, not the new token's projections",
            (_flops_variant("no_projections"),),
            "projections of the new token",
        ),
        Mistake(
            "naive form without the values' up-projection",
            (_flops_variant("naive_keys_only"),),
            "values",
        ),
        Mistake(
            "attends to the cached tokens only", (_flops_variant("cached_not_plus_one"),), "itself"
        ),
        Mistake(
            "absorbed counted as naive", (_flops_variant("absorbed_like_naive"),), "absorbed form"
        ),
    ],
)
def check_mla_step_flops(fn: Callable[[int, bool], Any]) -> CheckResult:
    for absorbed in (False, True):
        for cached in _CACHED:
            got = _as_number(fn(cached, absorbed), f"fn({cached}, absorbed={absorbed})")
            want = _measured_flops(cached, absorbed)
            if got == want:
                continue
            where = (
                f"with {cached} tokens cached, absorbed={absorbed}: you said {got:,.0f} FLOPs, "
                f"PyTorch's FLOP counter measured {want:,}"
            )
            d, h, d_c, d_q, d_h, d_r, d_v = 256, 8, 64, 96, 32, 16, 32
            projections = 2 * (
                d * d_q + d_q * h * d_h + d_q * h * d_r + d * d_c + d * d_r + h * d_v * d
            )
            n = cached + 1
            known = [
                (want / 2, "you counted multiply-adds; a multiply-add is 2 FLOPs"),
                (
                    want - projections,
                    "you left out the projections of the new token (its queries, "
                    "latent, RoPE key and the output projection)",
                ),
                (
                    want - 2 * n * d_c * h * d_v,
                    "the naive form also up-projects every latent to the "
                    "values (W_UV c for all n tokens), not only to keys",
                ),
                (
                    _measured_flops(cached - 1, absorbed) if cached else -1,
                    "the new token attends to the cached tokens AND to itself: n = cached + 1 keys",
                ),
                (
                    _measured_flops(cached, False) if absorbed else -1,
                    "that is the naive count; the absorbed form never builds per-head keys or "
                    "values: it attends on the latents directly",
                ),
            ]
            for value, message in known:
                if value >= 0 and _close(got, value, 1e-9):
                    return fail("values", f"{where}: {message}.")
            return fail("values", f"{where} ({_gap(got, want)}).")
    naive, absorbed_ = _measured_flops(1000, False), _measured_flops(1000, True)
    return ok(
        f"Correct! With 1000 tokens cached the naive step costs {naive / absorbed_:.0f}× the "
        "absorbed one: its cost per cached token is d_c·H·(d_h + d_v), the absorbed one's "
        "H·(2·d_c + d_R)."
    )


# ---------------------------------------------------------------------------------------------
# 09.3 debug: a rolling cache that forgets the newest key
# ---------------------------------------------------------------------------------------------


def _solution_rolling_update(k_buf, v_buf, n, k_new, v_new):
    """Write the new token into slot n mod W FIRST, then return every filled slot (the new key
    included): min(n + 1, W) of them."""
    w = k_buf.size(2)
    k_buf[:, :, n % w] = k_new[:, :, 0]
    v_buf[:, :, n % w] = v_new[:, :, 0]
    kept = min(n + 1, w)
    return k_buf[:, :, :kept], v_buf[:, :, :kept]


def _broken_rolling_update(k_buf, v_buf, n, k_new, v_new):
    w = k_buf.size(2)
    kept = min(n, w)
    k, v = k_buf[:, :, :kept].clone(), v_buf[:, :, :kept].clone()
    k_buf[:, :, n % w] = k_new[:, :, 0]
    v_buf[:, :, n % w] = v_new[:, :, 0]
    return k, v


def _off_by_one_slot(k_buf, v_buf, n, k_new, v_new):
    w = k_buf.size(2)
    k_buf[:, :, (n + 1) % w] = k_new[:, :, 0]
    v_buf[:, :, (n + 1) % w] = v_new[:, :, 0]
    return k_buf[:, :, : min(n + 2, w)], v_buf[:, :, : min(n + 2, w)]


def _all_slots(k_buf, v_buf, n, k_new, v_new):
    w = k_buf.size(2)
    k_buf[:, :, n % w] = k_new[:, :, 0]
    v_buf[:, :, n % w] = v_new[:, :, 0]
    return k_buf, v_buf


def _never_overwrites(k_buf, v_buf, n, k_new, v_new):
    w = k_buf.size(2)
    if n < w:
        k_buf[:, :, n] = k_new[:, :, 0]
        v_buf[:, :, n] = v_new[:, :, 0]
    return k_buf[:, :, : min(n + 1, w)], v_buf[:, :, : min(n + 1, w)]


def _decode_with(fn, q, k, v, window):
    """One head decoding token by token through ``fn``'s cache; the outputs (B, H, N, D)."""
    from course_utils.attention import scaled_dot_product_attention

    b, h, n, d = k.shape
    k_buf, v_buf = torch.zeros(b, h, window, d), torch.zeros(b, h, window, d)
    outs = []
    for t in range(n):
        kk, vv = fn(k_buf, v_buf, t, k[:, :, t : t + 1], v[:, :, t : t + 1])
        if (
            not isinstance(kk, torch.Tensor)
            or kk.dim() != 4
            or kk.shape[:2] != (b, h)
            or kk.size(-1) != d
            or kk.shape != vv.shape
        ):
            raise ValueError(
                f"at step {t} your function must return keys and values of shape "
                f"(B, H, kept, D) = ({b}, {h}, kept, {d}), got "
                f"{tuple(getattr(kk, 'shape', ()))} and {tuple(getattr(vv, 'shape', ()))}"
            )
        if kk.size(2) == 0:
            outs.append(torch.zeros(b, h, 1, d))  # nothing to attend to
        else:
            outs.append(scaled_dot_product_attention(q[:, :, t : t + 1], kk, vv))
    return torch.cat(outs, dim=2)


_WINDOW = 4


def _rolling_inputs():
    g = torch.Generator().manual_seed(9)
    return tuple(torch.randn(2, 2, 11, 8, generator=g) for _ in range(3))


@exercise(
    "09.3",
    title="Debug a rolling KV cache",
    hint="Which tokens must the query of step n attend to? Itself and the W - 1 before it. Is the "
    "new key in what the function returns?",
    solution=_solution_rolling_update,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("the broken code, unchanged", (_broken_rolling_update,), "newest key"),
        Mistake("writes the slot after n", (_off_by_one_slot,), "slot n mod W"),
        Mistake("returns the empty slots too", (_all_slots,), "empty (zero) slots"),
        Mistake("stops writing once full", (_never_overwrites,), "oldest"),
    ],
)
def check_rolling_update(fn: Callable[..., Any]) -> CheckResult:
    from course_utils.attention import scaled_dot_product_attention
    from course_utils.inference.sliding_window import window_mask

    q, k, v = _rolling_inputs()
    n = k.size(2)
    want = scaled_dot_product_attention(q, k, v, attn_mask=window_mask(n, n, _WINDOW))
    try:
        got = _decode_with(fn, q, k, v, _WINDOW)
    except ValueError as exc:
        return fail("shape", str(exc))
    if torch.allclose(got, want, atol=1e-5):
        return ok(
            f"Correct! Each step attends to itself and the {_WINDOW - 1} tokens before it, in a "
            f"buffer of {_WINDOW} slots whatever the length."
        )
    for variant, message in [
        (
            _broken_rolling_update,
            "at step 0 the query attends to nothing, and at every step the "
            "newest key is missing from what you return: the keys are read "
            "before the new one is written, so each token attends to the W "
            "tokens BEFORE it instead of itself and the W - 1 before it",
        ),
        (
            _off_by_one_slot,
            "the new key must go into slot n mod W (the slot of the token that just "
            "left the window); writing slot n + 1 overwrites a key that is still "
            "inside the window",
        ),
        (
            _all_slots,
            "before the buffer is full you return all W slots: the query then attends to "
            "the empty (zero) slots too, which are no tokens at all",
        ),
        (
            _never_overwrites,
            "once the buffer is full you stop writing: the cache keeps the oldest W "
            "tokens instead of the newest; the new token must overwrite slot n mod W",
        ),
    ]:
        if torch.allclose(got, _decode_with(variant, q, k, v, _WINDOW), atol=1e-5):
            return fail("values", message)
    bad = (~torch.isclose(got, want, atol=1e-5)).any(-1).any(1).any(0).nonzero()
    step = int(bad[0]) if bad.numel() else 0
    return fail(
        "values",
        f"the output first differs at step {step} (of {n}, window {_WINDOW}): check "
        "which slot you write and which slots you return at that step",
    )


# ---------------------------------------------------------------------------------------------
# 09.4 extend: a sliding window inside each packed document
# ---------------------------------------------------------------------------------------------


def _solution_document_window(doc_ids: torch.Tensor, window: int):
    """Both masks at once: and_masks calls each mask_mod and ANDs the results."""
    from torch.nn.attention.flex_attention import and_masks

    from course_utils.inference.flex import document_mod, sliding_window_mod

    return and_masks(document_mod(doc_ids), sliding_window_mod(window))


def _reference_document_window(doc_ids: torch.Tensor, window: int) -> torch.Tensor:
    """(B, N, N) bool: same document, causal, at most window - 1 tokens back."""
    n = doc_ids.size(1)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    return same & (j <= i) & (i - j < window)


def _mod_variant(kind: str):
    def make(doc_ids, window):
        def mod(b, h, q_idx, kv_idx):
            same = doc_ids[b, q_idx] == doc_ids[b, kv_idx]
            causal = q_idx >= kv_idx
            near = q_idx - kv_idx < window
            if kind == "no_document":
                return causal & near
            if kind == "not_causal":
                return same & ((q_idx - kv_idx).abs() < window)
            if kind == "window_plus_one":
                return same & causal & (q_idx - kv_idx <= window)
            if kind == "or":
                return (same & causal) | (causal & near)
            return same & causal & near

        return mod

    return make


def _grid(mask_mod, batch: int, n: int) -> torch.Tensor:
    b = torch.arange(batch)[:, None, None]
    i = torch.arange(n)[None, :, None]
    j = torch.arange(n)[None, None, :]
    out = mask_mod(b, torch.zeros((), dtype=torch.long), i, j)
    return torch.as_tensor(out).expand(batch, n, n)


def _doc_cases():
    return [
        (
            torch.tensor(
                [
                    [0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2],
                    [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3],
                ]
            ),
            3,
        ),
        (torch.tensor([[0] * 7 + [1] * 9]), 5),
    ]


@exercise(
    "09.4",
    title="A sliding window inside packed documents",
    hint="A key is allowed when three things hold at once: same document, not in the future, and "
    "fewer than `window` positions back. torch.nn.attention.flex_attention.and_masks combines "
    "mask_mods.",
    solution=_solution_document_window,
    kind="extend",
    minutes=15,
    difficulty=2,
    mistakes=[
        Mistake("forgets the documents", (_mod_variant("no_document"),), "other documents"),
        Mistake("a window on both sides", (_mod_variant("not_causal"),), "future"),
        Mistake("window one too wide", (_mod_variant("window_plus_one"),), "one key too many"),
        Mistake("OR instead of AND", (_mod_variant("or"),), "ANDed"),
    ],
)
def check_document_window(fn: Callable[..., Any]) -> CheckResult:
    for doc_ids, window in _doc_cases():
        want = _reference_document_window(doc_ids, window)
        try:
            got = _grid(fn(doc_ids, window), doc_ids.size(0), doc_ids.size(1))
        except RuntimeError as exc:
            if "ambiguous" in str(exc):
                return fail(
                    "error",
                    "a mask_mod is called on tensors of indices: combine conditions "
                    "with & and |, not Python's and / or / if",
                )
            raise
        if got.dtype != torch.bool:
            return fail(
                "dtype", f"a mask_mod must return bools (True = may attend), got {got.dtype}"
            )
        if torch.equal(got, want):
            continue
        for kind, message in [
            (
                "no_document",
                "a token attends to keys of other documents that happen to be within "
                "the window: add the document condition",
            ),
            (
                "not_causal",
                "your window is on both sides: tokens see up to window - 1 keys in the future",
            ),
            (
                "window_plus_one",
                "your window lets each token see one key too many: W keys back plus "
                "itself; the window counts the token itself (q - kv < W)",
            ),
            ("or", "you combined the conditions with OR; all three must hold, so they are ANDed"),
        ]:
            if torch.equal(got, _grid(_mod_variant(kind)(doc_ids, window), *doc_ids.shape)):
                return fail("masking", message)
        b, i, j = (got != want).nonzero()[0].tolist()
        return fail(
            "masking",
            f"row {b}, query {i} (document {int(doc_ids[b, i])}), key {j} "
            f"(document {int(doc_ids[b, j])}), window {window}: got {bool(got[b, i, j])}, "
            f"expected {bool(want[b, i, j])}",
        )
    from course_utils.inference.flex import block_mask, block_stats

    doc_ids, window = _doc_cases()[0]
    stats = block_stats(block_mask(fn(doc_ids, window), 16, 16, batch=2, block_size=4))
    return ok(
        f"Correct! It works in create_block_mask too: with 4 × 4 tiles, "
        f"{stats['skipped_fraction']:.0%} of the tiles of the first case are skipped."
    )
