"""FlexAttention: one attention kernel, many masks and biases, each written as a tiny function.

``torch.nn.attention.flex_attention`` computes ``softmax(q kᵀ · scale + bias) v`` where the bias
and the mask are Python functions of *indices*, evaluated by the kernel itself:

* a ``score_mod(score, b, h, q_idx, kv_idx) -> score`` changes one score (ALiBi's
  ``-m_h · |i - j|``, a soft cap, a relative-position bias);
* a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` says whether query ``q_idx`` may attend to key
  ``kv_idx`` (True = may attend, the course's convention): causal, sliding window, documents
  packed in one row, prefix-LM.

:func:`block_mask` evaluates a ``mask_mod`` once over the whole ``(Lq, Lk)`` grid and cuts it into
tiles (128 × 128 by default); for each tile it records whether it is *empty* (skipped, never
computed), *full* (computed without evaluating the mask) or *partial*. ``torch.compile`` turns
``flex_attention`` into one fused kernel that walks only the non-empty tiles with an online
softmax (as notebook 08's tiled attention) and never materialises the ``N × N`` scores. On a CPU
the kernel is C++ that Inductor generates and compiles: the first call takes tens of seconds, and
Inductor keeps the result in its on-disk cache, so the next process that needs the same kernel
loads it in about a second.

Each ``*_mod`` here has an explicit-mask twin built another way (``tril``, comparisons of
broadcast index grids; the sliding window's is
:func:`~course_utils.inference.sliding_window.window_mask`): the tests prove ``flex_attention``
with the mod equal to the course's
:func:`~course_utils.attention.scaled_dot_product_attention` with the mask.

>>> from course_utils.attention import scaled_dot_product_attention
>>> from course_utils.inference.sliding_window import window_mask
>>> q = k = v = torch.randn(1, 2, 16, 8)
>>> out = flex(q, k, v, block_mask=block_mask(sliding_window_mod(4), 16, 16, block_size=8),
...            compiled=False)
>>> ref = scaled_dot_product_attention(q, k, v, attn_mask=window_mask(16, 16, window=4))
>>> torch.allclose(out, ref, atol=1e-6)
True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from course_utils.attention import causal_mask
from course_utils.checks import (
    check_bool,
    check_device,
    check_finite,
    check_float_tensor,
    check_int,
    check_positive_int,
    check_qkv,
    check_shape,
    check_tensor,
    describe,
)

__all__ = [
    "alibi_score_mod",
    "block_mask",
    "block_stats",
    "causal_mod",
    "document_mask",
    "document_mod",
    "flex",
    "prefix_lm_mask",
    "prefix_lm_mod",
    "sliding_window_mod",
    "tile_map",
]

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ScoreMod = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


# ---------------------------------------------------------------------------------------------
# mask_mods and score_mods: functions of indices
# ---------------------------------------------------------------------------------------------


def causal_mod(
    b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
) -> torch.Tensor:
    """Query ``i`` may attend to keys ``j <= i``."""
    return q_idx >= kv_idx


def sliding_window_mod(window: int) -> MaskMod:
    """Causal attention to the last ``window`` keys only: ``i - window < j <= i`` (the query's own
    key included, so ``window=1`` attends to itself alone).

    >>> mod = sliding_window_mod(3)
    >>> i, j = torch.tensor(5), torch.arange(8)
    >>> mod(0, 0, i, j).int().tolist()
    [0, 0, 0, 1, 1, 1, 0, 0]
    """
    check_positive_int("window", window)

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return sliding_window


def document_mod(doc_ids: torch.Tensor, causal: bool = True) -> MaskMod:
    """Several sequences packed in one row: a query attends only to keys of its own document
    (``doc_ids (B, N)`` gives each position's document number), causally if ``causal``.

    Packing ragged sequences into one row wastes no compute on padding; the mask keeps them
    from seeing each other.
    """
    _check_doc_ids(doc_ids)
    check_bool("causal", causal)

    def document(b, h, q_idx, kv_idx):
        same = doc_ids[b, q_idx] == doc_ids[b, kv_idx]
        return same & (q_idx >= kv_idx) if causal else same

    return document


def prefix_lm_mod(prefix_len: int | torch.Tensor) -> MaskMod:
    """Prefix-LM (T5, UniLM): the first ``prefix_len`` tokens (the prompt) see each other in both
    directions; every later token is causal. ``prefix_len`` is an int or a ``(B,)`` tensor.
    """
    prefix = _check_prefix(prefix_len)

    def prefix_lm(b, h, q_idx, kv_idx):
        p = prefix[b] if isinstance(prefix, torch.Tensor) else prefix
        return (kv_idx < p) | (q_idx >= kv_idx)

    return prefix_lm


def alibi_score_mod(slopes: torch.Tensor) -> ScoreMod:
    """ALiBi (Press et al., 2022) as a ``score_mod``: ``score - m_h · |i - j|``, with the per-head
    slopes ``m_h`` of :func:`~course_utils.positional.alibi_slopes` (a ``(H,)`` tensor).

    Equal to adding :func:`~course_utils.positional.alibi_bias` to the scores; combined with the
    causal ``block_mask`` it is Press et al.'s decoder bias ``m_h · (j - i)``.
    """
    check_float_tensor("slopes", slopes, dims=1)
    _check_has_values("slopes", slopes)
    check_finite("slopes", slopes)

    def alibi(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx).abs()

    return alibi


# ---------------------------------------------------------------------------------------------
# The same masks, explicit: (Lq, Lk) or (B, 1, Lq, Lk) bool tensors, True = may attend
# ---------------------------------------------------------------------------------------------


def document_mask(doc_ids: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """``(B, 1, N, N)`` bool: query and key in the same document (and causal, if ``causal``).

    >>> document_mask(torch.tensor([[0, 0, 1]]))[0, 0].int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [0, 0, 1]], dtype=torch.int32)
    """
    _check_doc_ids(doc_ids)
    check_bool("causal", causal)
    same = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, N, N)
    if causal:
        same = same & causal_mask(doc_ids.size(1), device=doc_ids.device)
    return same[:, None]  # (B, 1, N, N): broadcasts over heads


def prefix_lm_mask(
    n: int, prefix_len: int | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """``(n, n)`` bool for an int ``prefix_len``, ``(B, 1, n, n)`` for a ``(B,)`` tensor: the causal
    mask with the first ``prefix_len`` columns opened to every query.

    >>> prefix_lm_mask(4, 2).int()
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    check_positive_int("n", n)
    prefix = _check_prefix(prefix_len)
    device = None if device is None else check_device("device", device)
    if isinstance(prefix, torch.Tensor):
        cols = torch.arange(n, device=prefix.device)
        opened = cols[None, None, :] < prefix[:, None, None]  # (B, 1, n): prompt columns
        return (causal_mask(n, device=prefix.device) | opened)[:, None]  # (B, 1, n, n)
    mask = causal_mask(n, device=device)
    mask[:, :prefix] = True
    return mask


# ---------------------------------------------------------------------------------------------
# Block masks and the call
# ---------------------------------------------------------------------------------------------


def block_mask(
    mask_mod: MaskMod,
    lq: int,
    lk: int,
    batch: int | None = None,
    heads: int | None = None,
    block_size: int = 128,
    device: torch.device | str = "cpu",
) -> BlockMask:
    """``create_block_mask`` for a ``mask_mod``: which ``block_size × block_size`` tiles to skip.

    ``batch`` / ``heads`` are needed only when the mask depends on them (``None`` = the same for
    every row / head). ``lq`` and ``lk`` need not be multiples of ``block_size``.
    """
    if not callable(mask_mod):
        raise TypeError(
            f"mask_mod must be a function (b, h, q_idx, kv_idx) -> bool, got {describe(mask_mod)}"
        )
    for name, n in (("lq", lq), ("lk", lk), ("block_size", block_size)):
        check_positive_int(name, n)
    for name, n in (("batch", batch), ("heads", heads)):
        if n is not None:
            check_positive_int(name, n)
    device = check_device("device", device)
    return create_block_mask(mask_mod, batch, heads, lq, lk, device=device, BLOCK_SIZE=block_size)


def block_stats(mask: BlockMask) -> dict[str, float]:
    """How many tiles of a :class:`BlockMask` are computed and how many are skipped.

    Returns ``tiles`` (all tiles of the grid, every batch row and head), ``partial`` (the mask
    must be evaluated inside), ``full`` (computed without it) and ``skipped_fraction``: the share
    of tiles the kernel never touches, read from the block mask's own counts.

    >>> stats = block_stats(block_mask(causal_mod, 512, 512, block_size=128))
    >>> stats["tiles"], stats["partial"], stats["full"], stats["skipped_fraction"]
    (16, 4, 6, 0.375)
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a BlockMask (from block_mask), got {describe(mask)}")
    kv_blocks = -(-mask.seq_lengths[1] // mask.BLOCK_SIZE[1])
    tiles = mask.kv_num_blocks.numel() * kv_blocks  # (B, H, q_blocks) rows of kv_blocks tiles
    partial = int(mask.kv_num_blocks.sum())
    full = int(mask.full_kv_num_blocks.sum()) if mask.full_kv_num_blocks is not None else 0
    return {
        "tiles": tiles,
        "partial": partial,
        "full": full,
        "skipped_fraction": 1.0 - (partial + full) / tiles,
    }


def tile_map(mask: BlockMask, batch: int = 0, head: int = 0) -> torch.Tensor:
    """``(q_tiles, kv_tiles)`` int map of one (batch row, head): 0 = skipped, 1 = partial (the
    mask is evaluated inside), 2 = full (computed without evaluating it), read from the block
    mask's own index lists.

    >>> tile_map(block_mask(causal_mod, 384, 384, block_size=128)).tolist()
    [[1, 0, 0], [2, 1, 0], [2, 2, 1]]
    """
    if not isinstance(mask, BlockMask):
        raise TypeError(f"mask must be a BlockMask (from block_mask), got {describe(mask)}")
    check_int("batch", batch, low=0, high=mask.kv_num_blocks.size(0) - 1)
    check_int("head", head, low=0, high=mask.kv_num_blocks.size(1) - 1)
    kv_tiles = -(-mask.seq_lengths[1] // mask.BLOCK_SIZE[1])
    rows = mask.kv_num_blocks.size(-1)
    out = torch.zeros(rows, kv_tiles + 1, dtype=torch.long)  # the last column catches padding
    for kind, num, idx in (
        (1, mask.kv_num_blocks, mask.kv_indices),
        (2, mask.full_kv_num_blocks, mask.full_kv_indices),
    ):
        if num is None:
            continue
        num, idx = num[batch, head].cpu(), idx[batch, head].cpu()  # (rows,), (rows, max_tiles)
        listed = torch.arange(idx.size(-1))[None, :] < num[:, None]
        cols = torch.where(listed, idx.long(), kv_tiles)
        out.scatter_(1, cols, kind)
    return out[:, :kv_tiles]


_COMPILED: Callable | None = None


def compiled_flex_attention() -> Callable:
    """``torch.compile(flex_attention)``, built once per process (each new ``score_mod`` /
    ``mask_mod`` or new shape still compiles its own kernel on first use)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    score_mod: ScoreMod | None = None,
    block_mask: BlockMask | None = None,
    scale: float | None = None,
    compiled: bool = True,
) -> torch.Tensor:
    """``flex_attention(q, k, v, score_mod, block_mask)`` on ``(B, H, L, D)`` tensors.

    ``compiled=True`` runs the fused kernel of ``torch.compile`` (tens of seconds the first time a
    kernel is built on a CPU, then fast). ``compiled=False`` runs PyTorch's reference
    implementation, which materialises the whole score matrix (fine for small checks; PyTorch
    warns about it, and since here it is chosen on purpose that warning is silenced).
    A query row whose keys are all masked gets a zero output, as everywhere in the course.
    """
    check_qkv(q, k, v, dims=4, broadcast=False, scale=scale, compiled=compiled)
    _check_same_lead(q, k, v)
    if score_mod is not None and not callable(score_mod):
        raise TypeError(
            f"score_mod must be a function (score, b, h, q_idx, kv_idx) -> score, got "
            f"{describe(score_mod)}"
        )
    if block_mask is not None and not isinstance(block_mask, BlockMask):
        raise TypeError(
            f"block_mask must be a BlockMask (from block_mask()), got {describe(block_mask)}"
        )
    if block_mask is not None and tuple(block_mask.seq_lengths) != (q.size(-2), k.size(-2)):
        raise ValueError(
            f"block_mask was built for (Lq, Lk) = {tuple(block_mask.seq_lengths)}, got q "
            f"{tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if compiled:
        return compiled_flex_attention()(
            q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------


def _check_doc_ids(doc_ids: object) -> None:
    check_tensor("doc_ids", doc_ids, dims=2)
    if doc_ids.is_floating_point() or doc_ids.dtype == torch.bool:
        raise TypeError(
            f"doc_ids must be an integer tensor (B, N) of document numbers, got {describe(doc_ids)}"
        )
    _check_has_values("doc_ids", doc_ids)


def _check_has_values(name: str, t: torch.Tensor) -> None:
    """A tensor a mod keeps to index later: not empty, and not on the ``meta`` device (where a
    tensor has a shape but no values to look up)."""
    if t.numel() == 0 or t.device.type == "meta":
        raise ValueError(f"{name} must hold values (at least one, not on the meta device), got "
                         f"{describe(t)}")


def _check_same_lead(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """``k`` and ``v`` have the batch and head sizes ``(B, H)`` of ``q``."""
    b, h = q.shape[:2]
    for name, t in (("k", k), ("v", v)):
        check_shape(name, t, (b, h, None, None), what=f"(B, H, Lk, D) with (B, H) = {(b, h)} of q")


def _check_prefix(prefix_len: object) -> int | torch.Tensor:
    if isinstance(prefix_len, torch.Tensor):
        check_tensor("prefix_len", prefix_len, dims=1)
        if (
            prefix_len.is_floating_point()
            or prefix_len.dtype == torch.bool
            or bool((prefix_len < 0).any())
        ):
            raise ValueError(
                f"prefix_len must hold non-negative integers (one per batch row), got "
                f"{describe(prefix_len)}"
            )
        return prefix_len
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(
            f"prefix_len must be a non-negative int or a (B,) integer tensor, got "
            f"{describe(prefix_len)}"
        )
    return prefix_len
