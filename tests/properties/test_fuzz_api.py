"""Fuzzing the public API: hypothesis throws bad inputs at every public function; only the
documented exceptions may come out, each naming what was expected and what was received.

The inputs start from a *valid* call and mutate some of its arguments: a wrong rank, a wrong
size, a wrong dtype (int, bool, complex, another float), another device (``meta``), an empty
dimension, NaN/inf values, or something that is not a tensor at all. Then:

* an exception must be ``ValueError`` or ``TypeError`` (or a documented subclass/exception:
  ``NonFiniteLossError`` from ``train_steps``, ``TargetMissed`` from ``record_result``) and its
  message must say what it got (the course's ``"..., got ..."`` convention);
* a call whose only mutations are NaN/inf values must succeed;
* a valid call with finite inputs must give finite outputs.

NaN policy (documented here and in the report): NaN/inf **inputs** may propagate to the outputs
they touch, as in PyTorch (a NaN key poisons every query that may attend to it, and a NaN value
at a masked-out key still gives ``0 · NaN = NaN``). What must never happen: NaN from finite
inputs (in particular from a fully masked query row: zeros there, always), or an error that
does not say what was wrong. Finite inputs are kept to ``|x| <= 10``: with values near the
float limits, ``q @ kᵀ`` overflows to inf in any implementation.

Every test is derandomized, with no example database and no deadline, so CI is deterministic.
``test_zz_examples_run`` prints how many examples ran per function (``pytest -s``) and checks
that the fuzzing was not silently skipped.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_utils import attention as A
from course_utils import efficient as EF
from course_utils import positional as P
from course_utils import precision as PR
from course_utils import results as R
from course_utils import runtime as RT
from course_utils import timing as TI
from course_utils import training as TR
from course_utils import transformer as T

COUNTS: Counter[str] = Counter()
# "got ..." (the course's convention); TargetMissed and NonFiniteLossError name the value in prose
GOT = re.compile(r"\bgot\b|missed its target|is not a finite number|loss became", re.IGNORECASE)
DOCUMENTED = (ValueError, TypeError)


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


def call(name: str, fn, *args, allowed=DOCUMENTED, says: re.Pattern = GOT,
         blame: str | None = None, **kwargs):
    """Run ``fn``; return ``(True, result)`` or ``(False, exception)`` for a documented error.

    Anything else (RuntimeError, IndexError, AttributeError, ...) propagates: hypothesis then
    shrinks the input and the test fails with it. ``blame`` (a regex, see :func:`blame`) must
    match the message of an error when exactly one argument was mutated: it names it.
    """
    COUNTS[name] += 1
    try:
        return True, fn(*args, **kwargs)
    except allowed as exc:
        msg = str(exc)
        assert says.search(msg), f"{name}: {type(exc).__name__} does not say what it got: {msg!r}"
        if blame is not None:
            assert re.search(blame, msg), f"{name}: the message does not name {blame}: {msg!r}"
        return False, exc


def blame(mutations: dict[str, str], aliases: dict[str, str] | None = None) -> str | None:
    """The argument an error must name: the only one mutated beyond NaN/inf, as a word regex
    (``aliases`` gives other names it goes by after a reshape, e.g. ``key`` -> ``k``)."""
    bad = [name for name, m in mutations.items() if m not in HARMLESS]
    if len(bad) != 1:
        return None
    alias = (aliases or {}).get(bad[0])  # a regex of other names
    return rf"\b{re.escape(bad[0])}\b" + (rf"|\b(?:{alias})\b" if alias else "")


# ---- building blocks: tensors that start valid and may be mutated ---------------------------

FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
OTHER_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]
NON_TENSORS = [None, 3, 2.5, "x", [1.0, 2.0], np.zeros((2, 2), dtype=np.float32)]
VALID = "valid"
MUTATIONS = ["rank+", "rank-", "size", "empty", "dtype", "meta", "nan", "inf", "object"]
HARMLESS = {VALID, "nan", "inf"}  # the call must succeed with these


def _values(shape, dtype, seed: int, special: str | None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    if special is not None and x.numel():
        hit = torch.rand(shape, generator=g) < 0.3
        hit.view(-1)[0] = True
        x = x.masked_fill(hit, {"nan": math.nan, "inf": math.inf}[special])
    if dtype == torch.bool:
        return x > 0
    if dtype.is_complex:
        return x.to(dtype)
    if not dtype.is_floating_point:
        return x.nan_to_num(0.0, 0.0, 0.0).clamp(-100, 100).to(dtype)
    return x.to(dtype)


@st.composite
def tensors(draw, shape, dtype=torch.float32, mutate: bool = True, p_valid: int = 4):
    """``(value, mutation)``: a tensor of ``shape`` and ``dtype``, possibly mutated once."""
    mutation = draw(st.sampled_from([VALID] * p_valid + MUTATIONS)) if mutate else VALID
    shape = list(shape)
    special = None
    device = "cpu"
    if mutation == "rank+":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(1, 3)))
    elif mutation == "rank-":
        if shape:
            shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif mutation == "size" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.integers(1, 5).filter(lambda n, s=shape[i]: n != s))
    elif mutation == "empty" and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    elif mutation == "dtype":
        dtype = draw(st.sampled_from([d for d in FLOAT_DTYPES + OTHER_DTYPES if d != dtype]))
    elif mutation == "meta":
        device = "meta"
    elif mutation in ("nan", "inf"):
        special = mutation
    elif mutation == "object":
        return draw(st.sampled_from(NON_TENSORS)), mutation
    seed = draw(st.integers(0, 2**16))
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta"), mutation
    return _values(tuple(shape), dtype, seed, special), mutation


def _finite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.device.type == "meta" or not x.is_floating_point() or bool(torch.isfinite(x).all())
    if isinstance(x, (tuple, list)):
        return all(_finite(t) for t in x if t is not None)
    return True


def _check_outcome(name: str, ok: bool, result, mutations: list[str]) -> None:
    if set(mutations) <= HARMLESS:
        assert ok, f"{name}: a valid call (mutations {mutations}) raised {result!r}"
    if ok and set(mutations) <= {VALID}:
        assert _finite(result), f"{name}: finite inputs gave a non-finite output"


# ---- attention -------------------------------------------------------------------------------


@st.composite
def sdpa_calls(draw):
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    lq, lk, d, dv = (draw(st.integers(1, 4)) for _ in range(4))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    q, mq = draw(tensors((*lead, lq, d), dtype))
    k, mk = draw(tensors((*lead, lk, d), dtype))
    v, mv = draw(tensors((*lead, lk, dv), dtype))
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    mask, mm = None, VALID
    if mask_kind != "none":
        mask, mm = draw(tensors((lq, lk), torch.bool if mask_kind == "bool" else dtype))
        if mask_kind == "float" and isinstance(mask, torch.Tensor) and mm == VALID:
            mask = torch.where(mask > 0, 0.0, -math.inf).to(mask.dtype)  # allow/forbid, some rows dead
    kwargs = dict(causal=draw(st.booleans()), return_weights=draw(st.booleans()))
    dropout = draw(st.sampled_from([0.0, 0.0, 0.3, -0.1, 1.0, math.nan, "0.1"]))
    scale = draw(st.sampled_from([None, None, 0.5, 0.0, -1.0, math.nan, "1", True]))
    extra = []
    if dropout != 0.0:
        kwargs["dropout_p"] = dropout
        extra.append(VALID if dropout == 0.3 else "arg")
    if scale is not None:
        kwargs["scale"] = scale
        extra.append(VALID if scale in (0.5, 0.0, -1.0) and scale is not True else "arg")  # NaN: an error
    return (q, k, v, mask), kwargs, [mq, mk, mv, mm, *extra]


@fuzz_settings(400)
@given(sdpa_calls())
def test_scaled_dot_product_attention(case):
    (q, k, v, mask), kwargs, mutations = case
    named = dict(zip(["q", "k", "v", "attn_mask"], mutations[:4], strict=True))
    if any(m not in HARMLESS for m in mutations[4:]):  # dropout_p or scale: blame no tensor
        named["dropout_p/scale"] = "arg"
    ok, out = call("scaled_dot_product_attention", A.scaled_dot_product_attention, q, k, v, mask,
                   blame=blame(named, {"dropout_p/scale": "dropout_p|scale"}), **kwargs)
    _check_outcome("scaled_dot_product_attention", ok, out, mutations)
    if ok and mask is not None and mask.dtype == torch.bool and not kwargs.get("causal") and q.device.type == "cpu":
        dead = ~mask.any(-1)  # (Lq,) rows that may attend to nothing
        o = out[0] if kwargs.get("return_weights") else out
        assert (o[..., dead, :] == 0).all(), "a fully masked row must be exactly zero, even with NaN inputs"


@fuzz_settings(150)
@given(st.data())
def test_masked_softmax(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    scores, ms = data.draw(tensors(shape))
    mask, mm = data.draw(st.one_of(st.just((None, VALID)), tensors(shape, torch.bool)))
    dim = data.draw(st.sampled_from([-1, -1, 0, 5, -9, "x"]))
    mutations = [ms, mm, VALID if dim in (-1, 0) else "arg"]
    ok, w = call("masked_softmax", A.masked_softmax, scores, mask, dim=dim)
    _check_outcome("masked_softmax", ok, w, mutations)


@fuzz_settings(80)
@given(st.data())
def test_masks_and_heads(data):
    lq = data.draw(st.sampled_from([0, 1, 3, -1, 2.0, True, "3", None]))
    lk = data.draw(st.sampled_from([None, 0, 2, -2, 1.5]))
    device = data.draw(st.sampled_from([None, "cpu", "meta", torch.device("cpu")]))
    good = isinstance(lq, int) and not isinstance(lq, bool) and lq >= 0 and (lk is None or (isinstance(lk, int) and lk >= 0))
    ok, m = call("causal_mask", A.causal_mask, lq, lk, device=device)
    assert ok == good, (lq, lk, m)

    pad, mp = data.draw(tensors((2, 5), torch.bool))
    ok, m = call("padding_mask_to_attn_mask", A.padding_mask_to_attn_mask, pad)
    _check_outcome("padding_mask_to_attn_mask", ok, m, [mp])

    x, mx = data.draw(tensors((2, 3, 8)))
    h = data.draw(st.sampled_from([1, 2, 4, 3, 0, -2, 2.0, None]))
    ok, y = call("split_heads", A.split_heads, x, h)
    _check_outcome("split_heads", ok, y, [mx, VALID if h in (1, 2, 4) and not isinstance(h, float) else "arg"])
    ok, y = call("merge_heads", A.merge_heads, x)
    _check_outcome("merge_heads", ok, y, [mx])


E, H = 8, 2
torch.manual_seed(0)
MHA = A.MultiHeadAttention(E, H, kdim=6, vdim=5).eval()
ADD = A.AdditiveAttention(query_dim=4, key_dim=6, hidden_dim=8).eval()


@fuzz_settings(250)
@given(st.data())
def test_multi_head_attention_forward(data):
    b, lq, lk = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    q, m1 = data.draw(tensors((b, lq, E)))
    k, m2 = data.draw(tensors((b, lk, 6)))
    v, m3 = data.draw(tensors((b, lk, 5)))
    pad, m4 = data.draw(st.one_of(st.just((None, VALID)), tensors((b, lk), torch.bool)))
    am, m5 = data.draw(st.one_of(st.just((None, VALID)), tensors((lq, lk), torch.bool)))
    kwargs = dict(key_padding_mask=pad, attn_mask=am, is_causal=data.draw(st.booleans()),
                  need_weights=data.draw(st.booleans()), average_attn_weights=data.draw(st.booleans()))
    MHA.use_sdpa = data.draw(st.booleans())
    try:
        named = dict(zip(["query", "key", "value", "key_padding_mask", "attn_mask"],
                         [m1, m2, m3, m4, m5], strict=True))
        ok, out = call("MultiHeadAttention.forward", MHA, q, k, v, **kwargs,
                       blame=blame(named, {"key": "k", "value": "v"}))
    finally:
        MHA.use_sdpa = False
    _check_outcome("MultiHeadAttention.forward", ok, out, [m1, m2, m3, m4, m5])


@fuzz_settings(60)
@given(st.data())
def test_module_constructors(data):
    n = st.sampled_from([8, 4, 2, 0, -4, 3, 2.0, True, None, "8"])
    p = st.sampled_from([0.0, 0.1, -0.1, 1.0, math.nan, "0.1"])
    for name, cls, args in (
        ("MultiHeadAttention()", A.MultiHeadAttention, (data.draw(n), data.draw(n))),
        ("AdditiveAttention()", A.AdditiveAttention, (data.draw(n), data.draw(n), data.draw(n))),
        ("TransformerEncoderLayer()", T.TransformerEncoderLayer, (data.draw(n), data.draw(n), data.draw(n))),
        ("TransformerDecoderLayer()", T.TransformerDecoderLayer, (data.draw(n), data.draw(n), data.draw(n))),
    ):
        call(name, cls, *args, dropout=data.draw(p))
    call("TransformerEncoder()", T.TransformerEncoder, T.TransformerEncoderLayer(8, 2, 16), data.draw(n))
    call("LearnedPositionalEmbedding()", P.LearnedPositionalEmbedding, data.draw(n), data.draw(n))
    call("SinusoidalPositionalEncoding()", P.SinusoidalPositionalEncoding, data.draw(n), data.draw(n))
    call("RotaryEmbedding()", P.RotaryEmbedding, data.draw(n))
    call("sinusoidal_table", P.sinusoidal_table, data.draw(n), data.draw(n))


@fuzz_settings(200)
@given(st.data())
def test_additive_attention_forward(data):
    b, lk = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    one_step = data.draw(st.booleans())
    q, m1 = data.draw(tensors((b, 4) if one_step else (b, 2, 4)))
    keys, m2 = data.draw(tensors((b, lk, 6)))
    values, m3 = data.draw(st.one_of(st.just((None, VALID)), tensors((b, lk, 3))))
    pad, m4 = data.draw(st.one_of(st.just((None, VALID)), tensors((b, lk), torch.bool)))
    ok, out = call("AdditiveAttention.forward", ADD, q, keys, values, key_padding_mask=pad)
    _check_outcome("AdditiveAttention.forward", ok, out, [m1, m2, m3, m4])
    if ok and pad is not None and m4 == VALID and set([m1, m2, m3]) <= {VALID}:
        dead = pad.all(-1)
        assert (out[0][dead] == 0).all() and (out[1][dead] == 0).all()
    ok, pk = call("AdditiveAttention.project_keys", ADD.project_keys, keys)
    _check_outcome("AdditiveAttention.project_keys", ok, pk, [m2])


# ---- transformer -------------------------------------------------------------------------------

torch.manual_seed(0)
ENC = T.TransformerEncoder(T.TransformerEncoderLayer(E, H, dim_feedforward=16, dropout=0.0), 2).eval()
DEC = T.TransformerDecoder(T.TransformerDecoderLayer(E, H, dim_feedforward=16, dropout=0.0, norm_first=True), 2).eval()


@fuzz_settings(150)
@given(st.data())
def test_transformer_forward(data):
    b, t, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    src, m1 = data.draw(tensors((b, s, E)))
    tgt, m2 = data.draw(tensors((b, t, E)))
    src_pad, m3 = data.draw(st.one_of(st.just((None, VALID)), tensors((b, s), torch.bool)))
    tgt_mask, m4 = data.draw(st.one_of(st.just((None, VALID)), tensors((t, t), torch.bool)))
    enc_ok, mem = call("TransformerEncoder.forward", ENC, src, src_key_padding_mask=src_pad,
                       is_causal=data.draw(st.booleans()))
    _check_outcome("TransformerEncoder.forward", enc_ok, mem, [m1, m3])
    memory = mem if enc_ok else torch.randn(b, s, E)
    ok, out = call("TransformerDecoder.forward", DEC, tgt, memory, tgt_mask=tgt_mask,
                   memory_key_padding_mask=src_pad, tgt_is_causal=data.draw(st.booleans()))
    _check_outcome("TransformerDecoder.forward", ok, out, [m2, m3, m4] + ([m1] if enc_ok else []))


# ---- positional --------------------------------------------------------------------------------

SIN = P.SinusoidalPositionalEncoding(d_model=6, max_len=8)
LEARNED = P.LearnedPositionalEmbedding(max_len=8, d_model=6)
ROPE = P.RotaryEmbedding(head_dim=4)


@fuzz_settings(250)
@given(st.data())
def test_positional(data):
    t = data.draw(st.integers(1, 5))
    x, mx = data.draw(tensors((2, t, 6)))
    offset = data.draw(st.sampled_from([0, 0, 2, 3, 8, -1, -9, 1.5, None, "1"]))
    om = VALID if offset in (0, 2, 3) and not isinstance(offset, float) else "arg"
    for name, mod in (("SinusoidalPositionalEncoding.forward", SIN), ("LearnedPositionalEmbedding.forward", LEARNED)):
        ok, y = call(name, mod, x, offset=offset)
        _check_outcome(name, ok, y, [mx, om])

    r, mr = data.draw(tensors((2, 3, t, 4)))
    positions, mp = data.draw(st.one_of(st.just((None, VALID)), tensors((t,), torch.int64), tensors((2, t), torch.int64)))
    ok, y = call("RotaryEmbedding.forward", ROPE, r, positions)
    _check_outcome("RotaryEmbedding.forward", ok, y, [mr, mp])
    ok, y = call("RotaryEmbedding.rotate", ROPE.rotate, r, offset=offset)
    _check_outcome("RotaryEmbedding.rotate", ok, y, [mr, om])
    ok, y = call("rotate_half", P.rotate_half, r)
    _check_outcome("rotate_half", ok, y, [mr])
    cos, mc = data.draw(tensors((t, 4)))
    ok, y = call("apply_rotary", P.apply_rotary, r, cos, cos)
    _check_outcome("apply_rotary", ok, y, [mr, mc])


# ---- runtime, results, timing, precision ------------------------------------------------------

ANY = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                st.text(max_size=6), st.sampled_from(["cpu", "meta", "cuda:7", "gpu", "", "mps",
                                                      torch.device("cpu"), torch.zeros(2), torch.tensor(1.5)]))


@fuzz_settings(150)
@given(ANY, ANY, ANY)
def test_runtime_results_precision(a, b, c):
    call("by_mode", RT.by_mode, a, b)
    # a device that is not here is a RuntimeError by design (documented in get_device)
    call("get_device", RT.get_device, a, allowed=(ValueError, TypeError, RuntimeError),
         says=re.compile(GOT.pattern + r"|was requested but \w+ is not available", re.IGNORECASE))
    call("seed_everything", RT.seed_everything, a)
    call("check_target", R.check_target, "acc", a, b, allowed=(ValueError, TypeError, R.TargetMissed))
    call("record_result", R.record_result, "fuzz", a, b, notebook="doctest",
         allowed=(ValueError, TypeError, R.TargetMissed))
    call("amp_dtype", PR.amp_dtype, a)
    call("MixedPrecision()", PR.MixedPrecision, "cpu", dtype=c if not isinstance(c, str) else None)
    call("precision_report", PR.precision_report, a)


def _noop():
    return None


@fuzz_settings(40)
@given(ANY, ANY)
def test_timing(a, b):
    call("benchmark", TI.benchmark, a, label="x", min_run_time=0.001, warmup=0, min_blocks=1)
    if not (isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0):  # a valid one would run for a seconds
        call("benchmark(min_run_time)", TI.benchmark, _noop, min_run_time=a, warmup=0, min_blocks=1)
    call("compare", TI.compare, [a] if a is not None else [], baseline=b if isinstance(b, str) else None)
    call("synchronize", TI.synchronize, a)


# ---- training ----------------------------------------------------------------------------------


@fuzz_settings(150)
@given(st.one_of(ANY, st.sampled_from([torch.tensor([1.0, 2.0]), torch.zeros(0), {"acc": 1.0},
                                       {"loss": "x"}, {"loss": 1.0, "acc": None}, torch.tensor(math.nan),
                                       torch.tensor(1, dtype=torch.int64)])),
       st.sampled_from([3, 0, -1, 2.5, None, True]), st.sampled_from([1, 0, -3, 1.5, "2"]))
def test_train_steps(loss, num_steps, log_every):
    call("train_steps", TR.train_steps, lambda step: loss, num_steps, log_every=log_every,
         disable_progress=True, allowed=(ValueError, TypeError, TR.NonFiniteLossError))


# ---- efficient attention ---------------------------------------------------------------------


@st.composite
def padding_masks(draw, b, lk):
    """``(mask, mutation)``: a bool (B, Lk) key-padding mask, None, or a mutated one."""
    if draw(st.booleans()):
        return None, VALID
    return draw(tensors((b, lk), torch.bool))


@fuzz_settings(300)
@given(st.data())
def test_efficient_attention(data):
    b, h, lq, lk, d, dv = (data.draw(st.integers(1, 4)) for _ in range(6))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    q, mq = data.draw(tensors((b, h, lq, d), dtype))
    k, mk = data.draw(tensors((b, h, lk, d), dtype))
    v, mv = data.draw(tensors((b, h, lk, dv), dtype))
    pad, mp = data.draw(padding_masks(b, lk))
    causal = data.draw(st.booleans())
    block_q, block_k = data.draw(st.sampled_from([1, 2, 3, 256, 0, -1, 2.5, True, "4"])), data.draw(st.integers(1, 5))
    mutations = [mq, mk, mv, mp]
    who = blame(dict(zip(["q", "k", "v", "key_padding_mask"], mutations, strict=True)))
    ok, out = call("naive_attention", EF.naive_attention, q, k, v, causal=causal,
                   key_padding_mask=pad, blame=who)
    _check_outcome("naive_attention", ok, out, mutations)
    block_ok = isinstance(block_q, int) and not isinstance(block_q, bool) and block_q >= 1
    ok, out = call("tiled_attention", EF.tiled_attention, q, k, v, causal=causal, key_padding_mask=pad,
                   block_q=block_q, block_k=block_k, blame=who if block_ok else None)
    _check_outcome("tiled_attention", ok, out, mutations + ([VALID] if block_ok else ["arg"]))
    x, mx = data.draw(tensors((b, lq, d), dtype))
    ok, out = call("online_softmax", EF.online_softmax, x, block=block_k)
    _check_outcome("online_softmax", ok, out, [mx])


@fuzz_settings(300)
@given(st.data())
def test_grouped_query_attention(data):
    b, hkv, group, lq, lk, d = (data.draw(st.integers(1, 3)) for _ in range(6))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    q, mq = data.draw(tensors((b, hkv * group, lq, d), dtype))
    k, mk = data.draw(tensors((b, hkv, lk, d), dtype))
    v, mv = data.draw(tensors((b, hkv, lk, d), dtype))
    pad, mp = data.draw(padding_masks(b, lk))
    ok, out = call("grouped_query_attention", EF.grouped_query_attention, q, k, v,
                   causal=data.draw(st.booleans()), key_padding_mask=pad,
                   blame=blame(dict(zip(["q", "k", "v", "key_padding_mask"], [mq, mk, mv, mp],
                                        strict=True))))
    _check_outcome("grouped_query_attention", ok, out, [mq, mk, mv, mp])
    n_rep = data.draw(st.sampled_from([1, 2, 3, 0, -1, 1.5, True, "2", None]))
    rep_ok = isinstance(n_rep, int) and not isinstance(n_rep, bool) and n_rep >= 1
    ok, out = call("repeat_kv", EF.repeat_kv, k, n_rep)
    _check_outcome("repeat_kv", ok, out, [mk] + ([VALID] if rep_ok else ["arg"]))


# ---- KV cache, cached attention, decoding, ALiBi ------------------------------------------------

from course_utils import decoding as DE  # noqa: E402
from course_utils import kv_cache as KV  # noqa: E402

LAYER_VALUES = [0, 1, 0, -1, 2, 1.0, True, None, "0"]


@fuzz_settings(200)
@given(st.data())
def test_kv_cache_update(data):
    cache = KV.KVCache(2, batch=2, num_heads=2, head_dim=3, max_len=4)
    layer = data.draw(st.sampled_from(LAYER_VALUES))
    t = data.draw(st.integers(1, 5))
    k, mk = data.draw(tensors((2, 2, t, 3)))
    v, mv = data.draw(tensors((2, 2, t, 3)))
    layer_ok = layer in (0, 1) and not isinstance(layer, bool) and isinstance(layer, int)
    named = {"layer": VALID if layer_ok else "arg", "k_new": mk, "v_new": mv}
    ok, out = call("KVCache.update", cache.update, layer, k, v, blame=blame(named))
    if set(named.values()) <= HARMLESS and t <= 4:
        assert ok, out
    if ok:  # what comes back is exactly what went in, in the cache's dtype (no silent cast)
        assert out[0].dtype == torch.float32 and k.dtype == torch.float32
        torch.testing.assert_close(out[0], k, rtol=0, atol=0, equal_nan=True)
    index, mi = data.draw(tensors((2,), torch.int64))
    call("KVCache.reorder", cache.reorder, index.clamp(0, 1) if mi == VALID else index)


def _table_step(v: int, kind: str):
    table = torch.randn(v, v, generator=torch.Generator().manual_seed(v))

    def step(tokens, state):
        logits = table[tokens[:, -1].clamp(0, v - 1)]
        if kind == "3d":
            logits = logits[:, None]
        elif kind == "int":
            logits = logits.long()
        elif kind == "nan":
            logits = logits.clone().fill_(math.nan)
        elif kind == "list":
            logits = logits.tolist()
        return logits, state
    return step


@fuzz_settings(200)
@given(st.data())
def test_decoding(data):
    v = 5
    # tokens on the meta device hold no values: which device they live on is the step's business
    tokens, mt = data.draw(tensors((2, data.draw(st.integers(1, 3))), torch.int64).filter(
        lambda tm: tm[1] != "meta"))
    if mt in HARMLESS:
        tokens = tokens.abs() % v
    kind = data.draw(st.sampled_from(["ok", "ok", "ok", "3d", "int", "nan", "list"]))
    n = data.draw(st.sampled_from([0, 3, 3, -1, 2.5, None]))
    eos = data.draw(st.sampled_from([None, 1, 4, 5, -1, 1.0]))
    named = {"tokens": mt, "step": VALID if kind == "ok" else "arg",
             "max_new_tokens": VALID if n in (0, 3) and not isinstance(n, float) else "arg",
             "eos": VALID if eos in (None, 1, 4) and not isinstance(eos, float) else "arg"}
    aliases = {"step": "logits returned by step|step"}
    for name, fn, kwargs in (
        ("decoding.greedy", DE.greedy, {}),
        ("decoding.sample", DE.sample, {"generator": torch.Generator().manual_seed(0)}),
        ("decoding.beam_search", DE.beam_search, {"beam_width": 2}),
    ):
        ok, out = call(name, fn, _table_step(v, kind), tokens, None, n, eos=eos,
                       blame=blame(named, aliases), **kwargs)
        if set(named.values()) <= {VALID}:
            assert ok, out
            assert out.tokens.shape[0] == 2 and ((out.tokens >= 0) & (out.tokens < v)).all()


@fuzz_settings(150)
@given(st.data())
def test_sampling_filters(data):
    # sampling needs the values: meta tensors hold none (PyTorch's sampling refuses them too)
    logits, ml = data.draw(tensors((2, 6)).filter(lambda tm: tm[1] != "meta"))
    k = data.draw(st.sampled_from([1, 3, 6, 9, 0, -1, 1.5, None]))
    p = data.draw(st.sampled_from([0.5, 1.0, 0.0, 1.5, math.nan, "0.5"]))
    temperature = data.draw(st.sampled_from([1.0, 0.0, 0.7, -1.0, math.inf, math.nan]))
    k_ok = isinstance(k, int) and not isinstance(k, bool) and k >= 1
    ok, out = call("filter_top_k", DE.filter_top_k, logits, k)
    if ml == VALID and k_ok:
        assert ok and (out.isfinite().sum(-1) == min(k, 6)).all()
    p_ok = p in (0.5, 1.0)
    ok, out = call("filter_top_p", DE.filter_top_p, logits, p)
    if ml == VALID and p_ok:
        assert ok and (out.isfinite().sum(-1) >= 1).all()
    t_ok = temperature in (1.0, 0.0, 0.7)
    ok, out = call("sample_next", DE.sample_next, logits, temperature,
                   generator=torch.Generator().manual_seed(0),
                   blame=None if t_ok else r"\btemperature\b")


@fuzz_settings(80)
@given(st.sampled_from([0, 1, 3, 8, 12, -2, 2.0, True, None, "4"]),
       st.sampled_from([0, 1, 5, -1, 2.5, None]), st.sampled_from([0, 2, -1, 1.5]))
def test_alibi_and_causal_offsets(heads, lq, offset):
    ok, slopes = call("alibi_slopes", P.alibi_slopes, heads)
    heads_ok = isinstance(heads, int) and not isinstance(heads, bool) and heads >= 1
    assert ok == heads_ok
    if ok:  # a geometric sequence in (0, 1) for a power of two
        assert ((slopes > 0) & (slopes < 1)).all() and slopes.numel() == heads
    call("alibi_bias", P.alibi_bias, heads, lq, offset=offset)
    call("causal_mask", A.causal_mask, lq, 4, offset=offset)


@fuzz_settings(150)
@given(st.data())
def test_cached_modules(data):
    torch.manual_seed(0)
    gqa = A.GroupedQueryAttention(8, 4, 2, head_dim=3, rope=None).eval()
    rope_mha = A.MultiHeadAttention(8, 2, rope=P.RotaryEmbedding(4)).eval()
    t = data.draw(st.integers(1, 3))
    x, mx = data.draw(tensors((2, t, 8)))
    positions, mp = data.draw(st.one_of(st.just((None, VALID)), tensors((t,), torch.int64)))
    if mp == VALID and positions is not None:
        positions = positions.abs()
    cache = KV.KVCache(1, 2, 2, 3, 4)
    ok, out = call("GroupedQueryAttention.forward", gqa, x, is_causal=True, cache=cache,
                   blame=blame({"x": mx}, {"x": "k_new"}))  # a batch the cache does not hold
    cache = KV.KVCache(1, 2, 2, 4, 4)
    ok, out = call("MultiHeadAttention.forward(cache, rope)", rope_mha, x, is_causal=True,
                   cache=cache, positions=positions,
                   blame=blame({"query": mx, "positions": mp}, {"query": "k_new"}))
    dec = DEC  # the 2-layer decoder above
    memory_kv = dec.project_memory(torch.randn(2, 3, E))
    ok, out = call("TransformerDecoder.step", dec.step, x, dec.new_cache(2, 4), memory_kv,
                   blame=blame({"tgt": mx}, {"tgt": "k_new"}))


SIZES = st.sampled_from([1, 2, 4, 0, -1, 2.0, True, None, "2"])


@fuzz_settings(80)
@given(SIZES, SIZES, SIZES, SIZES, SIZES)
def test_spine_constructors_and_small_functions(a, b, c, d, e):
    from course_utils import monitor as MO
    from course_utils import triton_attention as TA

    call("KVCache()", KV.KVCache, a, b, c, d, e)
    call("GroupedQueryAttention()", A.GroupedQueryAttention, 8, a, b, head_dim=c)
    call("DecoderLM()", EF.DecoderLM, a, d_model=8, nhead=b, num_layers=c, max_len=d)
    call("attention_flops", TA.attention_flops, a, b, c, d, e)
    call("gnmt_length_penalty", DE.gnmt_length_penalty, torch.tensor([1, 2]), a)
    call("PeakMemory()", MO.PeakMemory, "cpu", interval=a)
    call("Monitor()", MO.Monitor, interval=a)
    if not (isinstance(a, int) and not isinstance(a, bool) and a >= 1):  # a valid one measures
        call("peak_memory_table", MO.peak_memory_table, ["naive"], [128], parallel=a)
    call("DEC.new_cache", DEC.new_cache, a, b)


@fuzz_settings(80)
@given(st.data())
def test_decoder_lm_and_projections(data):
    torch.manual_seed(0)
    lm = EF.DecoderLM(vocab=7, d_model=8, nhead=2, num_layers=1, max_len=6).eval()
    memory, mm = data.draw(tensors((2, 3, 8)))
    start, ms = data.draw(tensors((2, 1), torch.int64).filter(lambda tm: tm[1] != "meta"))
    if ms in HARMLESS:
        start = start.abs() % 7
    steps = data.draw(st.sampled_from([0, 2, 5, 6, -1, 1.5, None]))
    named = {"memory": mm, "start": ms,
             "steps": VALID if steps in (0, 2, 5) and not isinstance(steps, float) else "arg"}
    for use_cache in (True, False):
        ok, out = call("DecoderLM.generate", lm.generate, memory, start, steps,
                       use_cache=use_cache, blame=blame(named, {"steps": "max_len"}))
        if set(named.values()) <= {VALID}:
            assert ok and out.shape == (2, 1 + steps)
    key, mk = data.draw(tensors((2, 3, 6)))
    value, mv = data.draw(tensors((2, 3, 5)))
    ok, kv = call("MultiHeadAttention.project_kv", MHA.project_kv, key, value,
                  blame=blame({"key": mk, "value": mv}))
    ok, kv = call("TransformerDecoder.project_memory", DEC.project_memory, memory,
                  blame=blame({"memory": mm}))


def test_zz_examples_run():
    """The count of fuzz examples per public function (printed with ``pytest -s``)."""
    total = sum(COUNTS.values())
    print(f"\nfuzz examples run: {total} calls over {len(COUNTS)} public functions")
    for name, n in sorted(COUNTS.items()):
        print(f"  {name:40s} {n}")
    # every function that was fuzzed in this process got a real number of examples (under
    # xdist the tests of this file may be spread over workers, so no global total is asserted)
    assert all(n >= 30 for n in COUNTS.values()), COUNTS
