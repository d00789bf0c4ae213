"""Input checks: one small named helper per kind of mistake, shared by the whole course.

A public function of ``course_utils`` opens with one or two of these calls and then reads as
the maths. Each helper raises at once, with a message that names the argument, says what was
expected and shows what was received::

    >>> check_positive_int("batch_size", 0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive int, got 0
    >>> check_float_tensor("q", torch.ones(2, 3, dtype=torch.long))
    Traceback (most recent call last):
    ...
    TypeError: q must be a floating-point tensor, got a tensor of shape (2, 3) and dtype torch.int64

``TypeError`` means "the wrong kind of thing" (a list where a tensor was expected, integers
where floats were), ``ValueError`` means "the right kind, a wrong value" (a negative size, a
shape that does not fit). Both name the argument, so a learner knows which one to fix.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "broadcasts_to",
    "check_bool",
    "check_bools",
    "check_broadcast_to",
    "check_callable",
    "check_broadcasts",
    "check_device",
    "check_divisible",
    "check_dtype",
    "check_finite",
    "check_float_tensor",
    "check_grouped_heads",
    "check_instance",
    "check_instances",
    "check_int",
    "check_int_tensor",
    "check_like_module",
    "check_mask",
    "check_max_len",
    "check_module_input",
    "check_non_negative_int",
    "check_on_device",
    "check_one_of",
    "check_optional_padding_mask",
    "check_optional_sizes",
    "check_padding_mask",
    "check_path",
    "check_positive_int",
    "check_probability",
    "check_qkv",
    "check_real",
    "check_same_device",
    "check_same_dtype",
    "check_same_size",
    "check_sequence_input",
    "check_sequence_of_str",
    "check_sequences",
    "check_shape",
    "check_sizes",
    "check_str",
    "check_tensor",
    "check_token_ids",
    "describe",
]


def describe(x: Any) -> str:
    """How a received value is shown in an error message.

    >>> describe(torch.zeros(2, 3))
    'a tensor of shape (2, 3) and dtype torch.float32'
    >>> describe("le chat"), describe(None), describe(3)
    ("str 'le chat'", 'None', 'int 3')
    """
    if isinstance(x, torch.Tensor):
        where = "" if x.device.type == "cpu" else f" on {x.device}"
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}{where}"
    if x is None:
        return "None"
    text = repr(x)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(x).__name__} {text}"


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def check_int(name: str, n: Any, low: int | None = None, high: int | None = None) -> None:
    """``n`` is an int (not a bool) with ``low <= n <= high`` where those are given.

    >>> check_int("layer", -1, low=0, high=3)
    Traceback (most recent call last):
    ...
    ValueError: layer must be an int in [0, 3], got -1
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(n)}")
    if (low is not None and n < low) or (high is not None and n > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {n}")


def check_positive_int(name: str, n: Any) -> None:
    """``n`` is an int ≥ 1 (a size, a count, a number of steps)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"{name} must be a positive int, got {n!r}")


def check_non_negative_int(name: str, n: Any) -> None:
    """``n`` is an int ≥ 0 (an offset, a number of warm-up steps)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"{name} must be a non-negative int, got {n!r}")


def check_real(
    name: str,
    x: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``x`` is a finite real number in the interval given (closed unless ``*_open``).

    >>> check_real("gamma", 5.0, 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: gamma must be a real number in [0.0, 1.0], got 5.0
    >>> check_real("lr", 0.0, 0.0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a real number in (0.0, inf), got 0.0
    """
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(x)}")
    x = float(x)
    bad = not math.isfinite(x)
    if low is not None:
        bad = bad or (x <= low if low_open else x < low)
    if high is not None:
        bad = bad or (x >= high if high_open else x > high)
    if bad:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        interval = f"{left}{lo}, {hi}{right}"
        raise ValueError(f"{name} must be a real number in {interval}, got {x}")


def check_probability(name: str, p: Any) -> None:
    """A dropout rate: a real number in [0, 1).

    >>> check_probability("dropout", 1.0)
    Traceback (most recent call last):
    ...
    ValueError: dropout must be a real number in [0.0, 1.0), got 1.0
    """
    check_real(name, p, 0.0, 1.0, high_open=True)


def check_bool(name: str, x: Any) -> None:
    """``x`` is ``True`` or ``False`` (a string such as ``"no"`` is not: it would read as true).

    >>> check_bool("higher_is_better", "no")
    Traceback (most recent call last):
    ...
    TypeError: higher_is_better must be True or False, got str 'no'
    """
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be True or False, got {describe(x)}")


def check_one_of(name: str, x: Any, choices: Iterable[Any]) -> None:
    """``x`` is one of ``choices``.

    >>> check_one_of("activation", "tanh", ("relu", "gelu"))
    Traceback (most recent call last):
    ...
    ValueError: activation must be one of 'relu', 'gelu', got 'tanh'
    """
    choices = tuple(choices)
    if x not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {x!r}")


def check_device(name: str, device: Any) -> torch.device:
    """A device this machine has: a ``torch.device`` or a string such as ``"cpu"``, ``"cuda"``,
    ``"cuda:0"``, ``"mps"``; returns it as a ``torch.device``.

    >>> check_device("device", "cpu")
    device(type='cpu')
    >>> check_device("device", "gpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: device must be a device such as 'cpu', 'cuda' or 'cuda:0', got 'gpu'
    """
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise TypeError(f"{name} must be a device such as 'cpu' or 'cuda', got {describe(device)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:0', got "
                         f"{device!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        have = f"{torch.cuda.device_count()} CUDA GPU(s)" if torch.cuda.is_available() else "none"
        raise ValueError(f"{name} must be a device this machine has, got {device!r}: a CUDA GPU "
                         f"this machine does not have ({have}); use 'cpu', or "
                         "course_utils.get_device()")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                  and torch.backends.mps.is_available()):
        raise ValueError(f"{name} must be a device this machine has, got {device!r}: Apple's "
                         "MPS, which this machine does not have; use 'cpu', or "
                         "course_utils.get_device()")
    return dev


# ---------------------------------------------------------------------------------------------
# Text and files
# ---------------------------------------------------------------------------------------------


def check_path(name: str, path: Any) -> Path:
    """A file or folder path: a non-empty ``str`` or ``os.PathLike``; returns it as a ``Path``.

    >>> check_path("path", 123)
    Traceback (most recent call last):
    ...
    TypeError: path must be a file path (a str or pathlib.Path), got int 123
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"{name} must be a file path (a str or pathlib.Path), got {describe(path)}")
    if not str(os.fspath(path)).strip():
        raise ValueError(f"{name} must be a non-empty path, got {path!r}")
    return Path(path)


def check_str(name: str, x: Any, allow_empty: bool = True) -> None:
    """``x`` is a string (non-empty unless ``allow_empty``)."""
    if not isinstance(x, str):
        raise TypeError(f"{name} must be a str, got {describe(x)}")
    if not allow_empty and not x.strip():
        raise ValueError(f"{name} must be a non-empty str, got {x!r}")


def check_sequence_of_str(name: str, xs: Any, allow_empty: bool = False) -> None:
    """A list (or tuple) of strings, and not a bare string, which would read as its characters.

    >>> check_sequence_of_str("sentences", "le chat")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: sentences must be a list of str (one per sentence), got a single str 'le chat': ...
    """
    if isinstance(xs, str):
        raise TypeError(f"{name} must be a list of str (one per sentence), got a single str "
                        f"{xs!r}: wrap it in a list")
    if not isinstance(xs, Sequence):
        raise TypeError(f"{name} must be a list of str, got {describe(xs)}")
    if not allow_empty and len(xs) == 0:
        raise ValueError(f"{name} must not be empty")
    for i, x in enumerate(xs):
        if not isinstance(x, str):
            raise TypeError(f"{name}[{i}] must be a str, got {describe(x)}")


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------


def check_tensor(name: str, t: Any, dims: int | Sequence[int] | None = None) -> None:
    """``t`` is a tensor, with ``dims`` dimensions (one number, or a list of allowed numbers).

    >>> check_tensor("images", torch.zeros(3, 32, 32), dims=4)
    Traceback (most recent call last):
    ...
    ValueError: images must have 4 dims, got a tensor of shape (3, 32, 32) and dtype torch.float32
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(t)}")
    if dims is not None:
        allowed = (dims,) if isinstance(dims, int) else tuple(dims)
        if t.dim() not in allowed:
            want = " or ".join(map(str, allowed))
            raise ValueError(f"{name} must have {want} dims, got {describe(t)}")


def check_float_tensor(name: str, t: Any, dims: int | Sequence[int] | None = None,
                       min_dims: int = 0, last_dim_multiple_of: int | None = None) -> None:
    """A floating-point tensor (integer inputs would truncate silently in the maths), with a
    last dim that is a multiple of ``last_dim_multiple_of`` if given (pairs, heads)."""
    check_tensor(name, t, dims)
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(t)}")
    if t.dim() < min_dims:
        raise ValueError(f"{name} must have at least {min_dims} dims, got {describe(t)}")
    m = last_dim_multiple_of
    if m is not None and (t.dim() == 0 or t.size(-1) % m != 0):
        raise ValueError(f"the last dim of {name} must be a multiple of {m}, got {describe(t)}")


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int | None], what: str = "") -> None:
    """``t.shape`` equals ``expected``; ``None`` matches any size.

    ``what`` names the axes, e.g. ``"(B, T, d_model)"``, to make the message readable.

    >>> check_shape("x", torch.zeros(2, 5, 32), (None, None, 64), what="(B, T, d_model=64)")
    Traceback (most recent call last):
    ...
    ValueError: x must have shape (B, T, d_model=64), got (2, 5, 32)
    """
    check_tensor(name, t)
    shape = tuple(t.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s
                                             for s, e in zip(shape, expected, strict=True))
    if not ok:
        want = what or "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}, got {shape}")


def check_finite(name: str, t: torch.Tensor) -> None:
    """No NaN or infinity in ``t`` (they would spread silently through every later step).

    A tensor on the ``meta`` device has no values: there is nothing to check."""
    check_tensor(name, t)
    if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values: got {describe(t)} with "
                         f"{int((~torch.isfinite(t)).sum())} of them")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors on one device (``None``: an optional tensor left out); the message
    lists each tensor's device."""
    _check_tensors_or_none(tensors)
    present = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(present.values())) > 1:
        got = ", ".join(f"{name} on {dev}" for name, dev in present.items())
        raise ValueError(f"all inputs must be on the same device, got {got}")


def check_same_dtype(**tensors: torch.Tensor | None) -> None:
    """All given tensors of one dtype (no silent cast of float64 into a float32 buffer).

    >>> check_same_dtype(k_new=torch.zeros(1, dtype=torch.float64), cache=torch.zeros(1))
    Traceback (most recent call last):
    ...
    TypeError: all inputs must have the same dtype, got k_new torch.float64, cache torch.float32
    """
    _check_tensors_or_none(tensors)
    present = {name: t.dtype for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(present.values())) > 1:
        got = ", ".join(f"{name} {dt}" for name, dt in present.items())
        raise TypeError(f"all inputs must have the same dtype, got {got}")


def _check_tensors_or_none(tensors: dict[str, Any]) -> None:
    for name, t in tensors.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (or None), got {describe(t)}")


def check_mask(name: str, mask: Any, shape: Sequence[int] | None = None,
               device: torch.device | None = None, of: str = "the inputs") -> None:
    """A boolean mask (True = may attend) or a float mask (added to the scores), which
    broadcasts to ``shape`` (the scores' shape) and is on ``device`` (the device of ``of``),
    where those are given.

    >>> check_mask("attn_mask", torch.ones(4, 5, dtype=torch.bool), shape=(2, 5, 4))
    Traceback (most recent call last):
    ...
    ValueError: attn_mask must broadcast to the scores shape (2, 5, 4), got (4, 5)
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {describe(mask)}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool tensor (True = may attend) or a float tensor (added to "
            f"the scores), got dtype {mask.dtype}"
        )
    if shape is not None:
        check_broadcasts(name, mask, shape, what="the scores shape")
    _check_device(name, mask, device, of)


def check_token_ids(name: str, ids: Any, vocab_size: int) -> None:
    """An integer tensor of token ids, each in ``[0, vocab_size)``.

    >>> check_token_ids("tokens", torch.tensor([[1, 7]]), vocab_size=5)
    Traceback (most recent call last):
    ...
    ValueError: tokens must hold token ids in [0, 5), got values from 1 to 7
    """
    check_tensor(name, ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got {describe(ids)}")
    if ids.numel() and ids.device.type != "meta" and (int(ids.min()) < 0
                                                      or int(ids.max()) >= vocab_size):
        raise ValueError(f"{name} must hold token ids in [0, {vocab_size}), got values from "
                         f"{int(ids.min())} to {int(ids.max())}")


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """True if a tensor of ``shape`` broadcasts to ``target`` without growing it.

    >>> broadcasts_to((1, 5), (3, 4, 5)), broadcasts_to((4, 1), (3, 5))
    (True, False)
    """
    for name, dims in (("shape", shape), ("target", target)):
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable) or not all(
                isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in dims):
            raise TypeError(f"{name} must be a sequence of ints (a shape), got {describe(dims)}")
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


# ---------------------------------------------------------------------------------------------
# Attention inputs
# ---------------------------------------------------------------------------------------------


def check_qkv(q: Any, k: Any, v: Any, dims: int | None = None, broadcast: bool = True,
              attn_mask: Any = None, scale: Any = None, **flags: Any) -> None:
    """Queries, keys and values that attention can use: ``q (..., Lq, D)``, ``k (..., Lk, D)``,
    ``v (..., Lk, Dv)``, floating point, one dtype, one device, ``D >= 1``, ``Lk >= 1`` if
    ``Lq >= 1``, leading (batch, head) dims that broadcast (unless ``broadcast=False``:
    grouped-query heads check their own); exactly ``dims`` dims each if given. An
    ``attn_mask``, if given, is a bool or float mask on their device that broadcasts to the
    scores ``(..., Lq, Lk)``; ``scale`` a real number or ``None``; each of ``flags``
    (``causal=...``, ``return_weights=...``) a bool.

    >>> check_qkv(torch.zeros(2, 5, 8), torch.zeros(2, 6, 4), torch.zeros(2, 6, 4))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: q and k must have the same last dim (head dim D), got q (2, 5, 8), k (2, 6, 4), ...
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, t, dims=dims, min_dims=2)
    check_same_dtype(q=q, k=k, v=v)
    check_same_device(q=q, k=k, v=v)
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same last dim (head dim D), got {shapes}")
    if q.size(-1) == 0:
        raise ValueError(f"q and k must have a head dim D >= 1, got {shapes}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k and v must have the same number of keys Lk (dim -2), got {shapes}")
    if k.size(-2) == 0 and q.size(-2) > 0:  # no query and no key: an empty result is right
        raise ValueError(f"k must have at least one key (Lk >= 1) for Lq >= 1 queries, got "
                         f"{shapes}")
    lead = q.shape[:-2]
    if broadcast:
        try:
            lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        except RuntimeError:
            raise ValueError(f"the leading (batch, head) dims of q, k and v must broadcast, got "
                             f"{shapes}") from None
    if attn_mask is not None:
        check_mask("attn_mask", attn_mask, shape=(*lead, q.size(-2), k.size(-2)), device=q.device)
    if scale is not None:
        check_real("scale", scale)
    check_bools(**flags)


def check_grouped_heads(q: Any, k: Any, v: Any) -> None:
    """Grouped-query heads: ``q (B, H, Lq, D)``, ``k`` and ``v (B, Hkv, Lk, D)`` of one batch,
    ``H`` a multiple of ``Hkv`` (each key/value head serves ``H / Hkv`` query heads).

    >>> check_grouped_heads(torch.zeros(1, 4, 2, 8), torch.zeros(1, 3, 2, 8),
    ...                     torch.zeros(1, 3, 2, 8))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: the query heads q.size(1) must be divisible by the key/value heads k.size(1), ...
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dims=4)
    check_same_size(0, "batch", q=q, k=k, v=v)
    check_same_size(1, "key/value heads", k=k, v=v)
    check_divisible("the query heads q.size(1)", q.size(1), "the key/value heads k.size(1)",
                    k.size(1))


def check_like_module(name: str, t: torch.Tensor, weight: torch.Tensor) -> None:
    """``t`` has the dtype and device of a module's ``weight`` (else ``F.linear`` fails obscurely).

    Under ``torch.autocast`` the dtypes may differ on purpose, so only the device is checked.

    >>> check_like_module("x", torch.zeros(2, dtype=torch.float64), torch.zeros(3, 2))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: x must have the module's dtype torch.float32, got torch.float64 (convert with ...
    """
    if t.device != weight.device:
        raise ValueError(f"{name} must be on the module's device {weight.device}, got {name} on "
                         f"{t.device} (move one of them with .to(device))")
    try:
        autocast = torch.is_autocast_enabled(t.device.type)
    except (TypeError, RuntimeError):  # an unusual device type: no autocast there
        autocast = False
    if t.dtype != weight.dtype and not autocast:
        raise TypeError(f"{name} must have the module's dtype {weight.dtype}, got {t.dtype} "
                        f"(convert with .to({weight.dtype}) or the module with .to(dtype))")


def check_padding_mask(name: str, mask: Any, batch: int | None = None,
                       length: int | None = None, device: torch.device | None = None,
                       optional: bool = False, source: str = "") -> None:
    """A key padding mask: bool ``(B, L)`` with ``True`` = padding (``None``: any size; ``source``
    names the input the sizes come from); the mask may be ``None`` (no padding) if ``optional``.

    >>> check_padding_mask("key_padding_mask", torch.zeros(2, 3), 2, 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: key_padding_mask must be a bool tensor (True = padding), got a tensor of shape ...
    """
    if optional and mask is None:
        return
    check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = padding), got {describe(mask)}")
    known = batch is not None and length is not None
    what = "(B, Lk)" + (f" = {(batch, length)}" * known) + (f" from {source}" * bool(source))
    check_shape(name, mask, (batch, length), what=what)
    _check_device(name, mask, device)


def _check_device(name: str, t: torch.Tensor, device: torch.device | None,
                  of: str = "the inputs") -> None:
    if device is not None and t.device != torch.device(device):
        raise ValueError(f"{name} must be on {torch.device(device)} (the device of {of}), "
                         f"got {name} on {t.device}")


def check_on_device(name: str, t: Any, device: torch.device, of: str = "the model") -> None:
    """``t`` is a tensor on ``device``, the device of ``of`` (a module's weights, another input).

    >>> check_on_device("x", torch.zeros(2, device="meta"), torch.device("cpu"))
    Traceback (most recent call last):
    ...
    ValueError: x must be on cpu (the device of the model), got x on meta
    """
    check_tensor(name, t)
    _check_device(name, t, device, of)


def check_module_input(name: str, t: Any, weight: torch.Tensor, shape: Sequence[int | None],
                       what: str = "") -> None:
    """What a layer needs of its input: a float tensor of ``shape`` (``None`` = any size) with
    the dtype and device of the layer's ``weight``.

    >>> check_module_input("x", torch.zeros(2, 3, 8), torch.zeros(4, 16), (None, None, 16),
    ...                    what="(B, T, E=16)")
    Traceback (most recent call last):
    ...
    ValueError: x must have shape (B, T, E=16), got (2, 3, 8)
    """
    check_float_tensor(name, t)
    check_like_module(name, t, weight)
    check_shape(name, t, shape, what=what)


def check_divisible(name: str, n: Any, by_name: str | None, by: Any) -> None:
    """``n`` and ``by`` positive ints with ``n % by == 0`` (heads that split a width evenly);
    ``by_name=None`` for a constant ``by`` (``check_divisible("head_dim", d, None, 2)``).

    >>> check_divisible("embed_dim", 10, "num_heads", 4)
    Traceback (most recent call last):
    ...
    ValueError: embed_dim must be divisible by num_heads, got embed_dim=10 and num_heads=4
    """
    check_positive_int(name, n)
    if by_name is not None:
        check_positive_int(by_name, by)
    if n % by != 0:
        got = f"{name}={n}" + ("" if by_name is None else f" and {by_name}={by}")
        raise ValueError(f"{name} must be divisible by {by if by_name is None else by_name}, "
                         f"got {got}")


def check_instance(name: str, x: Any, cls: type | tuple[type, ...]) -> None:
    """``x`` is an instance of ``cls`` (e.g. the torch module a converter copies from).

    >>> check_instance("module", torch.nn.Linear(2, 2), torch.nn.MultiheadAttention)
    Traceback (most recent call last):
    ...
    TypeError: module must be a torch.nn.MultiheadAttention, got Linear
    """
    if not isinstance(x, cls):
        names = " or ".join(map(_qualname, cls if isinstance(cls, tuple) else (cls,)))
        raise TypeError(f"{name} must be a {names}, got {type(x).__name__}")


def _qualname(cls: type) -> str:
    """``torch.nn.MultiheadAttention`` (the public path), ``int`` for a builtin."""
    module = "torch.nn" if cls.__module__.startswith("torch.nn.modules") else cls.__module__
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"


def check_broadcasts(name: str, t: torch.Tensor, shape: Sequence[int], what: str = "") -> None:
    """``t`` broadcasts to ``shape`` (``what`` names it) without growing it.

    >>> check_broadcasts("cos", torch.zeros(5, 4), (2, 3, 4))
    Traceback (most recent call last):
    ...
    ValueError: cos must broadcast to (2, 3, 4), got (5, 4)
    """
    check_tensor(name, t)
    if not broadcasts_to(t.shape, shape):
        raise ValueError(f"{name} must broadcast to {what + ' ' if what else ''}{tuple(shape)}, "
                         f"got {tuple(t.shape)}")


def check_max_len(length: int, max_len: float, offset: int = 0, what: str = "") -> None:
    """Positions ``offset .. offset + length - 1`` fit in a table of ``max_len`` positions.

    >>> check_max_len(11, 10, what="x (1, 11, 8)")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: sequence too long: positions 0..10 need max_len >= 11, got max_len=10 (x ...
    """
    check_sizes(0, length=length, offset=offset)
    if offset + length > max_len:
        raise ValueError(f"sequence too long: positions {offset}..{offset + length - 1} need "
                         f"max_len >= {offset + length}, got max_len={max_len}"
                         + (f" ({what})" if what else ""))


def check_int_tensor(name: str, t: Any, dims: int | Sequence[int] | None = None,
                     last_dim: int | None = None, device: torch.device | None = None,
                     what: str = "") -> None:
    """An integer tensor (positions, indices): not float, not bool (a mask passed by mistake),
    with ``last_dim`` entries along its last dim and on ``device`` where those are given.

    >>> check_int_tensor("positions", torch.ones(3, dtype=torch.bool))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: positions must be an integer tensor, got a tensor of shape (3,) and dtype ...
    """
    check_tensor(name, t, dims)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {describe(t)}")
    if last_dim is not None:
        check_shape(name, t, (*t.shape[:-1], last_dim), what=what)
    _check_device(name, t, device)


def check_same_size(dim: int, what: str = "", **tensors: torch.Tensor) -> None:
    """The given tensors have one size along ``dim`` (one batch size, one sequence length).

    >>> check_same_size(0, "the batch", query=torch.zeros(2, 5), key=torch.zeros(3, 4))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: query and key must have the same size along dim 0 (the batch), got query ...
    """
    for name, t in tensors.items():
        check_tensor(name, t)
    if len({t.size(dim) for t in tensors.values()}) > 1:
        names = ", ".join(list(tensors)[:-1]) + " and " + list(tensors)[-1]
        got = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{names} must have the same size along dim {dim}"
                         + (f" ({what})" if what else "") + f", got {got}")


def check_sequences(weight: torch.Tensor, batch_first: bool = True, same_length: bool = False,
                    flags: dict[str, Any] | None = None, **inputs: tuple[Any, int | None]) -> None:
    """The inputs of a sequence layer: for each ``name=(t, E)`` a float tensor ``(B, T, E)``
    (``(T, B, E)`` unless ``batch_first``; ``E=None``: any width) with the dtype and device of
    the layer's ``weight``, all of one batch size ``B`` (and one length ``T`` if
    ``same_length``, as keys and values); each of ``flags`` (``{"is_causal": ...}``) a bool.

    >>> w = torch.zeros(8, 8)
    >>> check_sequences(w, query=(torch.zeros(2, 5, 8), 8), key=(torch.zeros(3, 4, 8), 8))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: query and key must have the same size along dim 0 (the batch), got query ...
    """
    layout, bdim = ("(B, T, E)", 0) if batch_first else ("(T, B, E)", 1)
    for name, (t, e) in inputs.items():
        check_module_input(name, t, weight, (None, None, e), f"{layout} with E = {e or 'any'}")
    check_same_size(bdim, "the batch", **{name: t for name, (t, _) in inputs.items()})
    if same_length:
        check_same_size(1 - bdim, "the length", **{name: t for name, (t, _) in inputs.items()})
    check_bools(**(flags or {}))


def check_sizes(low: int = 1, **values: Any) -> None:
    """Each named value an int ``>= low``: 1 for sizes and counts, 0 for lengths and offsets.

    >>> check_sizes(query_dim=4, key_dim=0)
    Traceback (most recent call last):
    ...
    ValueError: key_dim must be a positive int, got 0
    >>> check_sizes(0, lq=3, offset=-1)
    Traceback (most recent call last):
    ...
    ValueError: offset must be a non-negative int, got -1
    """
    check = check_positive_int if low == 1 else check_non_negative_int
    for name, n in values.items():
        check(name, n)


def check_sequence_input(name: str, x: Any, width: int, device: torch.device | None = None,
                         offset: int = 0, max_len: float = math.inf,
                         width_name: str = "d_model", positions: Any = None) -> None:
    """A float tensor ``(..., T, width)`` on ``device`` for positions ``offset .. offset+T-1``,
    all below ``max_len`` (a positional table's input); or at the given integer ``positions``,
    ``(T,)`` or ``(B, T)`` on the device of ``x``.

    >>> check_sequence_input("x", torch.zeros(2, 5, 8), 6)
    Traceback (most recent call last):
    ...
    ValueError: x must have shape (..., T, d_model=6), got (2, 5, 8)
    """
    check_float_tensor(name, x, min_dims=2)
    check_shape(name, x, (*x.shape[:-1], width), what=f"(..., T, {width_name}={width})")
    _check_device(name, x, device)
    check_non_negative_int("offset", offset)
    check_max_len(x.size(-2), max_len, offset, what=f"{name} {tuple(x.shape)}")
    if positions is not None:
        t = x.size(-2)
        check_int_tensor("positions", positions, (1, 2), t, x.device, f"(T,) or (B, T), T = {t}")


def check_broadcast_to(target_name: str, target: torch.Tensor, **tensors: Any) -> None:
    """Each given tensor broadcasts to ``target``'s shape and lives on its device.

    >>> x = torch.zeros(2, 3, 4)
    >>> check_broadcast_to("x", x, cos=torch.zeros(3, 4), sin=torch.zeros(5, 4))
    Traceback (most recent call last):
    ...
    ValueError: sin must broadcast to x (2, 3, 4), got (5, 4)
    """
    check_tensor(target_name, target)
    for name, t in tensors.items():
        check_broadcasts(name, t, target.shape, what=target_name)
        _check_device(name, t, target.device, of=target_name)


def check_bools(**flags: Any) -> None:
    """Each named flag is ``True`` or ``False`` (``"no"`` or ``None`` would read as a choice).

    >>> check_bools(causal=True, need_weights="yes")
    Traceback (most recent call last):
    ...
    TypeError: need_weights must be True or False, got str 'yes'
    """
    for name, x in flags.items():
        check_bool(name, x)


def check_optional_sizes(**values: Any) -> None:
    """Each named value ``None`` (take the default) or a positive int.

    >>> check_optional_sizes(kdim=None, vdim=0)
    Traceback (most recent call last):
    ...
    ValueError: vdim must be a positive int, got 0
    """
    for name, n in values.items():
        if n is not None:
            check_positive_int(name, n)


def check_dtype(name: str, dtype: Any, floating: bool = True) -> None:
    """A ``torch.dtype``, a floating-point one if ``floating``.

    >>> check_dtype("dtype", torch.int64)
    Traceback (most recent call last):
    ...
    TypeError: dtype must be a floating-point torch.dtype (torch.float32, ...), got torch.int64
    """
    if not isinstance(dtype, torch.dtype) or (floating and not dtype.is_floating_point):
        kind = "a floating-point torch.dtype (torch.float32, ...)" if floating else "a torch.dtype"
        raise TypeError(f"{name} must be {kind}, got {dtype!r}")


def check_instances(**named: tuple[Any, type | tuple[type, ...]]) -> None:
    """Each ``name=(x, cls)``: ``x`` is an instance of ``cls`` (``type(None)`` allows ``None``).

    >>> check_instances(cache=("x", torch.Tensor))
    Traceback (most recent call last):
    ...
    TypeError: cache must be a torch.Tensor, got str
    """
    for name, (x, cls) in named.items():
        check_instance(name, x, cls)


def check_callable(name: str, fn: Any) -> None:
    """``fn`` can be called (a function, a lambda, a module, a bound method).

    >>> check_callable("step_fn", "train")
    Traceback (most recent call last):
    ...
    TypeError: step_fn must be a callable (a function or a lambda), got str 'train'
    """
    if not callable(fn):
        raise TypeError(f"{name} must be a callable (a function or a lambda), got {describe(fn)}")


def check_optional_padding_mask(name: str, mask: Any, like: torch.Tensor,
                                source: str | None = None) -> None:
    """``None`` (no padding) or a bool ``(B, T)`` padding mask for ``like (B, T, ...)``, the
    input called ``source`` (by default the name before ``_key_padding_mask``), on its device.

    >>> check_optional_padding_mask("src_key_padding_mask", torch.zeros(2, 4, dtype=torch.bool),
    ...                             torch.zeros(2, 3, 8))
    Traceback (most recent call last):
    ...
    ValueError: src_key_padding_mask must have shape (B, Lk) = (2, 3) from src, got (2, 4)
    """
    source = name.removesuffix("_key_padding_mask") if source is None else source
    check_padding_mask(name, mask, *like.shape[:2], like.device, optional=True, source=source)
