"""Property tests: our attention equals PyTorch's over random shapes, masks and dtypes.

Every test draws 200 cases (derandomized, no example database, so CI is deterministic).
Shapes are small on purpose (a few ms per case) but always allow Lq != Lk and Dv != D, so
a missing or extra transpose cannot pass.

Fully masked query rows: PyTorch's kernels may return NaN (or zeros, depending on the
version and backend) there; we compare only rows that can attend to at least one key, and
check separately that our output and weights are exactly zero on the others.

Tolerances: float64 atol 1e-10; float32 atol 1e-5; bfloat16: against a float32 reference
computed from the same (bf16-rounded) inputs, atol 1e-2 x max(1, max|reference|) — bf16
has an 8-bit mantissa (relative step 2^-8 = 0.0039) and the output is rounded to bf16 once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from course_utils.attention import MultiHeadAttention, scaled_dot_product_attention

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],  # a loaded CI machine is not a bug
)
NEG_INF = float("-inf")
MASK_KINDS = ["none", "bool", "float", "float_inf", "causal", "causal+bool", "causal+float"]


@st.composite
def sdpa_cases(draw: st.DrawFn) -> dict:
    n_lead = draw(st.integers(0, 2))
    lead = tuple(draw(st.integers(1, 3)) for _ in range(n_lead))
    lq, lk = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    d, dv = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    kind = draw(st.sampled_from(MASK_KINDS))
    # the mask broadcasts: it may drop leading dims and have size 1 in any dim but Lk
    n_mask_lead = draw(st.integers(0, n_lead))
    mask_lead = tuple(draw(st.sampled_from([s, 1])) for s in lead[n_lead - n_mask_lead :])
    mask_shape = (*mask_lead, draw(st.sampled_from([lq, 1])), lk)
    scale = draw(st.one_of(st.none(), st.floats(0.05, 2.0)))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(
        lead=lead,
        lq=lq,
        lk=lk,
        d=d,
        dv=dv,
        kind=kind,
        mask_shape=mask_shape,
        scale=scale,
        seed=seed,
    )


def make_inputs(case: dict, dtype: torch.dtype):
    """q, k, v, our (mask, causal) and the equivalent single mask for F.sdpa."""
    g = torch.Generator().manual_seed(case["seed"])
    lead, lq, lk = case["lead"], case["lq"], case["lk"]
    q = torch.randn(*lead, lq, case["d"], generator=g, dtype=torch.float64)
    k = torch.randn(*lead, lk, case["d"], generator=g, dtype=torch.float64)
    v = torch.randn(*lead, lk, case["dv"], generator=g, dtype=torch.float64)
    kind, shape = case["kind"], case["mask_shape"]
    bool_mask = torch.rand(shape, generator=g) < 0.7  # True = may attend
    float_mask = torch.randn(shape, generator=g, dtype=torch.float64)
    inf_mask = float_mask.masked_fill(torch.rand(shape, generator=g) < 0.3, NEG_INF)
    tril = torch.ones(lq, lk, dtype=torch.bool).tril()

    mask, causal, ref_mask, ref_causal = None, False, None, False
    if kind == "bool":
        mask = ref_mask = bool_mask
    elif kind == "float":
        mask = ref_mask = float_mask
    elif kind == "float_inf":
        mask = ref_mask = inf_mask
    elif kind == "causal":
        causal = ref_causal = True
    elif kind == "causal+bool":
        mask, causal, ref_mask = bool_mask, True, bool_mask & tril
    elif kind == "causal+float":
        mask, causal, ref_mask = inf_mask, True, inf_mask.masked_fill(~tril, NEG_INF)

    def cast(t):
        return t if t is None or t.dtype == torch.bool else t.to(dtype)

    return q.to(dtype), k.to(dtype), v.to(dtype), cast(mask), causal, cast(ref_mask), ref_causal


def alive_rows(ref_mask: torch.Tensor | None, scores_shape: tuple[int, ...]) -> torch.Tensor:
    """(..., Lq) bool: True where the query row may attend to at least one key."""
    if ref_mask is None:
        return torch.ones(scores_shape[:-1], dtype=torch.bool)
    allowed = ref_mask if ref_mask.dtype == torch.bool else ref_mask != NEG_INF
    return allowed.expand(scores_shape).any(-1)


def check_against_torch(case: dict, dtype: torch.dtype, atol: float) -> None:
    q, k, v, mask, causal, ref_mask, ref_causal = make_inputs(case, dtype)
    out, w = scaled_dot_product_attention(
        q, k, v, attn_mask=mask, causal=causal, scale=case["scale"], return_weights=True
    )
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    assert out.shape == (*batch, case["lq"], case["dv"])
    assert w.shape == (*batch, case["lq"], case["lk"])
    assert out.dtype == w.dtype == dtype

    if dtype == torch.bfloat16:  # reference: float32 on the same bf16-rounded inputs
        ref = F.scaled_dot_product_attention(
            q.float(),
            k.float(),
            v.float(),
            attn_mask=None
            if ref_mask is None
            else (ref_mask if ref_mask.dtype == torch.bool else ref_mask.float()),
            is_causal=ref_causal,
            scale=case["scale"],
        )
    else:
        ref = F.scaled_dot_product_attention(
            q, k, v, attn_mask=ref_mask, is_causal=ref_causal, scale=case["scale"]
        )
    alive = alive_rows(ref_mask, w.shape)  # (..., Lq)
    out, ref = out.to(ref.dtype), ref
    if dtype == torch.bfloat16:
        atol = atol * max(1.0, ref[alive].abs().max().item() if alive.any() else 1.0)
    torch.testing.assert_close(out[alive], ref[alive], atol=atol, rtol=0)
    # rows with no key: zero output and zero weights, never NaN
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (out[~alive] == 0).all() and (w[~alive] == 0).all()
    # live rows: a probability distribution over the allowed keys
    wsum = w.float().sum(-1)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(wsum[alive], torch.ones_like(wsum[alive]), atol=tol, rtol=0)


@SETTINGS
@given(case=sdpa_cases())
def test_sdpa_matches_torch_float32(case: dict) -> None:
    check_against_torch(case, torch.float32, atol=1e-5)


@SETTINGS
@given(case=sdpa_cases())
def test_sdpa_matches_torch_float64(case: dict) -> None:
    check_against_torch(case, torch.float64, atol=1e-10)


@SETTINGS
@given(case=sdpa_cases())
def test_sdpa_matches_float32_reference_bfloat16(case: dict) -> None:
    check_against_torch(case, torch.bfloat16, atol=1e-2)


@SETTINGS
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 3),
    lq=st.integers(1, 5),
    lk=st.integers(1, 5),
    d=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_sdpa_broadcasts_leading_dims(b, h, lq, lk, d, seed) -> None:
    """k/v shared across the batch (leading dim 1) equals explicitly repeated k/v."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g)
    k, v = torch.randn(1, h, lk, d, generator=g), torch.randn(1, h, lk, d + 1, generator=g)
    out = scaled_dot_product_attention(q, k, v)
    ref = scaled_dot_product_attention(q, k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------
# MultiHeadAttention against nn.MultiheadAttention
# ---------------------------------------------------------------------------------------------


@st.composite
def mha_cases(draw: st.DrawFn) -> dict:
    h = draw(st.integers(1, 3))
    e = h * draw(st.integers(1, 4))
    cross = draw(st.booleans())
    return dict(
        h=h,
        e=e,
        b=draw(st.integers(1, 3)),
        lq=draw(st.integers(1, 5)),
        lk=draw(st.integers(1, 5)) if cross else None,
        kdim=draw(st.sampled_from([None, 3, 5])) if cross else None,
        vdim=draw(st.sampled_from([None, 2, 7])) if cross else None,
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        use_sdpa=draw(st.booleans()),
        need_weights=draw(st.booleans()),
        average=draw(st.booleans()),
        padding=draw(st.booleans()),
        mask=draw(st.sampled_from(["none", "bool2d", "bool3d", "bool4d", "float2d", "float4d"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def to_torch_mask(mask: torch.Tensor, b: int, h: int) -> torch.Tensor:
    """Our mask (True = may attend; 2-D, (B, Lq, Lk) or (B, H, Lq, Lk)) -> torch's layout."""
    if mask.dtype == torch.bool:
        mask = ~mask  # torch: True = NOT allowed
    if mask.dim() == 3:
        mask = mask.repeat_interleave(h, dim=0)  # (B*H, Lq, Lk), batch-major
    elif mask.dim() == 4:
        mask = mask.flatten(0, 1)
    return mask


@SETTINGS
@given(case=mha_cases())
def test_mha_from_torch_matches_torch(case: dict) -> None:
    g = torch.Generator().manual_seed(case["seed"])
    torch.manual_seed(case["seed"])
    h, e, b, lq = case["h"], case["e"], case["b"], case["lq"]
    cross = case["lk"] is not None
    lk = case["lk"] if cross else lq
    ref = nn.MultiheadAttention(
        e,
        h,
        bias=case["bias"],
        kdim=case["kdim"],
        vdim=case["vdim"],
        batch_first=case["batch_first"],
    ).eval()
    if case["bias"]:  # torch initialises biases to zero: make them count
        with torch.no_grad():
            ref.in_proj_bias.normal_(generator=g)
            ref.out_proj.bias.normal_(generator=g)
    ours = MultiHeadAttention.from_torch(ref).eval()
    ours.use_sdpa = case["use_sdpa"]
    assert ours.batch_first == case["batch_first"]

    def seq(n, dim):  # (B, T, dim) or (T, B, dim)
        x = torch.randn(b, n, dim, generator=g)
        return x if case["batch_first"] else x.transpose(0, 1)

    query = seq(lq, e)
    key = seq(lk, case["kdim"] or e) if cross else query
    value = seq(lk, case["vdim"] or e) if cross else query

    # masks keep key 0 always allowed, so that no row is fully masked (torch would give NaN)
    kpm = None
    if case["padding"]:
        kpm = torch.rand(b, lk, generator=g) < 0.4
        kpm[:, 0] = False
    kind = case["mask"]
    mask = None
    if kind != "none":
        shape = {"2d": (lq, lk), "3d": (b, lq, lk), "4d": (b, h, lq, lk)}[kind[-2:]]
        if kind.startswith("bool"):
            mask = torch.rand(shape, generator=g) < 0.6
            mask[..., 0] = True
        else:
            mask = torch.randn(shape, generator=g)
    torch_mask = None if mask is None else to_torch_mask(mask, b, h)
    torch_kpm = kpm
    if kpm is not None and mask is not None and mask.is_floating_point():
        # torch wants both masks of the same kind; as a float: -inf where padding
        torch_kpm = torch.zeros(b, lk).masked_fill(kpm, NEG_INF)

    out, w = ours(
        query,
        key,
        value,
        key_padding_mask=kpm,
        attn_mask=mask,
        need_weights=case["need_weights"],
        average_attn_weights=case["average"],
    )
    ref_out, ref_w = ref(
        query,
        key,
        value,
        key_padding_mask=torch_kpm,
        attn_mask=torch_mask,
        need_weights=case["need_weights"],
        average_attn_weights=case["average"],
    )
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    if case["need_weights"]:
        assert w is not None and w.shape == ref_w.shape
        torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=0)
    else:
        assert w is None


def test_property_tests_run_200_examples() -> None:
    """The contract: at least 200 examples per property test."""
    assert SETTINGS.max_examples >= 200
    assert SETTINGS.derandomize and SETTINGS.database is None


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
