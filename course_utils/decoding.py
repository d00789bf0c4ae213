"""Decoding: turn a model's next-token scores into sequences — greedy, beam search, sampling.

Every decoder of the course (the translation and captioning models, the GPT, the small
``DecoderLM`` of the efficient-attention notebook) is driven through one protocol::

    step(tokens, state) -> (logits, state)

* ``tokens (B, t)``: every token of each sequence so far, the prompt (at least a start token)
  and then what was generated. A step with a KV cache feeds only the tokens it has not seen,
  ``tokens[:, cache.length():]``; a step without one re-runs the whole prefix.
* ``state``: whatever the model carries between steps (``None``, a KV cache and the projected
  memory, an RNN's hidden state, ...).
* ``logits (B, V)``: scores of the next token, logits or log-probabilities (the three methods
  take a ``log_softmax`` first, which leaves log-probabilities unchanged).

Beam search also reorders the state when it keeps some hypotheses and drops others:
``reorder(state, index) -> state`` keeps batch rows ``index``. The default,
:func:`reorder_state`, handles tensors (batch first), tuples/lists/dicts of them, ``None``, and
objects with a ``reorder(index)`` method such as :class:`~course_utils.kv_cache.KVCache`.

All three return a :class:`DecodeResult` ``(tokens, scores, state, rows)``: ``tokens (B, t + n)``
with the prompt; after ``eos`` a sequence continues with ``pad`` (or ``eos`` if no ``pad``);
decoding stops early once every sequence has ended. ``suppress`` lists token ids never
generated (e.g. ``<pad>`` and ``<bos>``); beam search removes them after the log-softmax, so
the other tokens keep the probabilities the model gave them.

**Beam search's length penalty** is GNMT's (Wu et al., 2016): a finished hypothesis ``Y`` is
ranked by ``log P(Y) / ((5 + |Y|) / 6) ** α``, ``|Y|`` the generated tokens including ``eos``.
Raw log-probability (``α = 0``) always prefers shorter outputs, since every token multiplies in
a probability below 1; dividing by ``|Y|`` (length normalisation) over-corrects for one- and
two-token outputs. GNMT's penalty moves between the two with one knob: ``α = 0`` is the raw
log-probability and ``α = 1`` is close to the per-token average (the ``+5`` keeps very short
hypotheses from being favoured). ``α`` is best chosen on a validation split; the default, 0.6,
is the translation model's.

>>> table = torch.tensor([[0., 2., 1.], [0., 0., 3.], [5., 0., 0.]])   # logits after a token
>>> def step(tokens, state):                    # a bigram "model": the last token decides
...     return table[tokens[:, -1]], state
>>> greedy(step, torch.tensor([[1]]), max_new_tokens=3).tokens
tensor([[1, 2, 0, 1]])
>>> beam_search(step, torch.tensor([[1]]), max_new_tokens=3, beam_width=2, eos=0).tokens
tensor([[1, 2, 0]])
>>> sample(step, torch.tensor([[1]]), max_new_tokens=3, temperature=0.0).tokens   # = greedy
tensor([[1, 2, 0, 1]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from course_utils.checks import (
    check_float_tensor,
    check_int,
    check_int_tensor,
    check_non_negative_int,
    check_positive_int,
    check_real,
    check_shape,
    describe,
)

__all__ = [
    "DecodeResult",
    "Step",
    "beam_search",
    "filter_top_k",
    "filter_top_p",
    "gnmt_length_penalty",
    "greedy",
    "reorder_state",
    "sample",
    "sample_next",
]

Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
_NEG_INF = float("-inf")


class DecodeResult(NamedTuple):
    """``tokens (B, t + n)`` (prompt included); ``scores (B,)`` the log-probability of the
    generated tokens (for beam search divided by the length penalty); ``state`` after the last
    step; ``rows (B,)`` the row of ``state`` holding each result (beam search keeps ``B·K``
    rows; the others keep ``B`` and ``rows = 0..B-1``)."""

    tokens: torch.Tensor
    scores: torch.Tensor
    state: Any
    rows: torch.Tensor


# ---------------------------------------------------------------------------------------------
# One token from one row of scores
# ---------------------------------------------------------------------------------------------


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row, set the others to ``-inf``.

    >>> filter_top_k(torch.tensor([1., 3., 2., 0.]), 2)
    tensor([-inf, 3., 2., -inf])
    """
    check_float_tensor("logits", logits, min_dims=1)
    check_positive_int("k", k)
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, _NEG_INF)


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the most probable tokens whose total
    probability first reaches ``p`` (always at least one), set the others to ``-inf``.

    A token is kept when the tokens more probable than it hold less than ``p`` in total.

    >>> logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    >>> filter_top_p(logits, 0.75).exp()                  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75
    tensor([0.5000, 0.3000, 0.0000, 0.0000])
    """
    check_float_tensor("logits", logits, min_dims=1)
    check_real("p", p, 0.0, 1.0, low_open=True)
    probs, order = logits.float().softmax(-1).sort(dim=-1, descending=True, stable=True)
    before = probs.cumsum(-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to the vocabulary order
    return logits.masked_fill(drop, _NEG_INF)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row of ``logits (B, V)``: ``(B,)``.

    The logits are divided by ``temperature`` (below 1: sharper, above 1: flatter; ``0``
    means greedy), then filtered by :func:`filter_top_k` and :func:`filter_top_p` (the order of
    Hugging Face's ``generate``), then sampled from their softmax.

    >>> g = torch.Generator().manual_seed(0)
    >>> sample_next(torch.tensor([[0., 9., 0.], [9., 0., 0.]]), top_k=1, generator=g)
    tensor([1, 0])
    """
    check_real("temperature", temperature, 0.0)
    _check_scores("logits", logits, dims=2)
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if top_p is not None:
        check_real("top_p", top_p, 0.0, 1.0, low_open=True)
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)  # (B,)


def gnmt_length_penalty(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT's length penalty ``((5 + |Y|) / 6) ** alpha`` (Wu et al., 2016): divide a
    hypothesis's log-probability by it. ``alpha = 0`` gives 1 (raw log-probabilities).

    >>> gnmt_length_penalty(torch.tensor([1, 7]), 1.0)
    tensor([1., 2.])
    """
    check_real("length_penalty", alpha, 0.0)
    check_int_tensor("lengths", lengths)
    if lengths.numel() and lengths.device.type != "meta" and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got values from {int(lengths.min())}")
    return ((5.0 + lengths.float()) / 6.0) ** alpha


def reorder_state(state: Any, index: torch.Tensor) -> Any:
    """Keep batch rows ``index`` of ``state``: tensors are indexed on dim 0, tuples, lists and
    dicts element by element, objects with ``reorder(index)`` (KV caches) reorder themselves
    in place, ``None`` and other values stay as they are.

    >>> reorder_state({"h": torch.tensor([[1.], [2.]]), "n": 3}, torch.tensor([1, 1, 0]))
    {'h': tensor([[2.],
            [2.],
            [1.]]), 'n': 3}
    """
    check_int_tensor("index", index, dims=1)
    if isinstance(state, torch.Tensor):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= state.size(0)):
            raise ValueError(f"index must hold row numbers in [0, {state.size(0)}), got values "
                             f"from {int(index.min())} to {int(index.max())}")
        return state.index_select(0, index.to(state.device))
    if isinstance(state, (tuple, list)):
        return type(state)(reorder_state(s, index) for s in state)
    if isinstance(state, dict):
        return {key: reorder_state(s, index) for key, s in state.items()}
    if hasattr(state, "reorder"):
        state.reorder(index)
    return state


# ---------------------------------------------------------------------------------------------
# Whole sequences
# ---------------------------------------------------------------------------------------------


def greedy(
    step: Step,
    tokens: torch.Tensor,
    state: Any = None,
    max_new_tokens: int = 20,
    eos: int | None = None,
    pad: int | None = None,
    suppress: Sequence[int] = (),
) -> DecodeResult:
    """Append the most likely token, ``max_new_tokens`` times or until every row has ended.

    ``tokens (B, t)``: the prompts. See the module docstring for the protocol.
    """
    return _decode(step, tokens, state, max_new_tokens, eos, pad, suppress,
                   lambda logits: logits.argmax(-1))


def sample(
    step: Step,
    tokens: torch.Tensor,
    state: Any = None,
    max_new_tokens: int = 20,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos: int | None = None,
    pad: int | None = None,
    suppress: Sequence[int] = (),
) -> DecodeResult:
    """Draw each next token with :func:`sample_next` (temperature, top-k, top-p); pass a
    seeded ``generator`` for a repeatable draw. ``temperature=0`` is greedy decoding."""
    check_real("temperature", temperature, 0.0)
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if top_p is not None:
        check_real("top_p", top_p, 0.0, 1.0, low_open=True)
    return _decode(step, tokens, state, max_new_tokens, eos, pad, suppress,
                   lambda logits: sample_next(logits, temperature, top_k, top_p, generator))


def _decode(step, tokens, state, max_new_tokens, eos, pad, suppress, choose) -> DecodeResult:
    """Greedy or sampled decoding: ``choose(logits (B, V)) -> (B,)`` picks each next token."""
    fill = _check_start(step, tokens, max_new_tokens, eos, pad, suppress)
    b = tokens.size(0)
    done = torch.zeros(b, dtype=torch.bool, device=tokens.device)
    scores = torch.zeros(b, device=tokens.device)
    for _ in range(max_new_tokens):
        logits, state = step(tokens, state)
        logits = _check_logits(logits, b, suppress, eos, pad)  # (B, V)
        nxt = choose(_suppress(logits, suppress))  # (B,)
        logp = F.log_softmax(logits.float(), dim=-1).gather(1, nxt[:, None])[:, 0]
        scores += logp.masked_fill(done, 0.0)
        nxt = nxt.masked_fill(done, fill)  # an ended sequence continues with padding
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)  # (B, t + 1)
        if eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                break
    return DecodeResult(tokens, scores, state, torch.arange(b, device=tokens.device))


def beam_search(
    step: Step,
    tokens: torch.Tensor,
    state: Any = None,
    max_new_tokens: int = 20,
    beam_width: int = 4,
    length_penalty: float = 0.6,
    eos: int | None = None,
    pad: int | None = None,
    suppress: Sequence[int] = (),
    reorder: Callable[[Any, torch.Tensor], Any] = reorder_state,
) -> DecodeResult:
    """Keep the ``beam_width`` most probable continuations of each prompt; return the best.

    Batched over prompts and beams: ``B·K`` rows per step, rows ``b·K .. b·K+K-1`` belonging to
    prompt ``b`` (``state`` is expanded with ``reorder`` before the first step). A hypothesis
    that produced ``eos`` keeps its score and grows only with padding, at no cost. The final
    choice divides each log-probability by :func:`gnmt_length_penalty` (see the module
    docstring for why this convention). ``beam_width=1`` is greedy decoding.
    """
    fill = _check_start(step, tokens, max_new_tokens, eos, pad, suppress)
    check_positive_int("beam_width", beam_width)
    check_real("length_penalty", length_penalty, 0.0)
    b, k, dev = tokens.size(0), beam_width, tokens.device
    expand = torch.arange(b, device=dev).repeat_interleave(k)  # (B·K,): each prompt K times
    tokens, state = tokens[expand], reorder(state, expand)
    scores = torch.zeros(b, k, device=dev)
    scores[:, 1:] = _NEG_INF  # all beams start identical: keep only the first one alive
    finished = torch.zeros(b * k, dtype=torch.bool, device=dev)
    lengths = torch.zeros(b * k, dtype=torch.long, device=dev)
    first_row = (torch.arange(b, device=dev) * k)[:, None]  # (B, 1)
    for _ in range(max_new_tokens):
        logits, state = step(tokens, state)
        logits = _check_logits(logits, b * k, suppress, eos, pad)  # (B·K, V)
        logp = _suppress(F.log_softmax(logits.float(), dim=-1), suppress)
        v = logp.size(-1)
        # a finished hypothesis may only add padding, at no cost
        logp = logp.masked_fill(finished[:, None], _NEG_INF)
        logp[:, fill] = torch.where(finished, 0.0, logp[:, fill])
        candidates = (scores.view(-1, 1) + logp).view(b, k * v)  # (B, K·V)
        scores, flat = candidates.topk(k, dim=-1)  # (B, K)
        rows = (first_row + flat // v).view(-1)  # (B·K,) which hypothesis each survivor extends
        nxt = (flat % v).view(-1)  # (B·K,) and with which token
        state = reorder(state, rows)
        tokens = torch.cat([tokens[rows], nxt[:, None]], dim=1)
        lengths = lengths[rows] + (~finished[rows]).long()
        finished = finished[rows]
        if eos is not None:
            finished |= nxt == eos
            if bool(finished.all()):
                break
    final = (scores.view(-1) / gnmt_length_penalty(lengths, length_penalty)).view(b, k)
    best, rows = final.max(dim=-1)
    rows = first_row[:, 0] + rows  # (B,) the best hypothesis of each prompt
    return DecodeResult(tokens[rows], best, state, rows)


def _check_start(step: object, tokens: object, max_new_tokens: int, eos: int | None,
                 pad: int | None, suppress: object) -> int:
    """Check the step, the prompt and the special ids; return the id after an ended sequence."""
    if not callable(step):
        raise TypeError(f"step must be a function step(tokens, state) -> (logits, state), got "
                        f"{describe(step)}")
    if isinstance(suppress, (str, bytes)) or not isinstance(suppress, (list, tuple, set)):
        raise TypeError(f"suppress must be a list of token ids, got {describe(suppress)}")
    for i, token in enumerate(suppress):
        check_non_negative_int(f"suppress[{i}]", token)
    check_int_tensor("tokens", tokens)
    if tokens.device.type == "meta":
        raise ValueError("tokens must hold values, got a tensor on the meta device")
    check_shape("tokens", tokens, (None, None), what="(B, t): a batch of prompts")
    if tokens.size(1) == 0:
        raise ValueError(f"tokens must hold at least one token per row (a start token), got "
                         f"shape {tuple(tokens.shape)}")
    if tokens.numel() and int(tokens.min()) < 0:
        raise ValueError(f"tokens must hold token ids >= 0, got values from {int(tokens.min())} "
                         f"to {int(tokens.max())}")
    check_non_negative_int("max_new_tokens", max_new_tokens)
    for name, i in (("eos", eos), ("pad", pad)):
        if i is not None:
            check_non_negative_int(name, i)
    return (eos or 0) if pad is None else pad


def _check_logits(logits: object, rows: int, suppress: Sequence[int], eos: int | None,
                  pad: int | None) -> torch.Tensor:
    """The step's logits: float ``(rows, V)``, with every special id in ``[0, V)``."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"step must return (logits, state) with float logits (B, V), got "
                        f"{type(logits).__name__} {getattr(logits, 'dtype', '')}")
    check_shape("logits returned by step", logits, (rows, None), what=f"(B, V) with B = {rows}")
    _check_scores("logits returned by step", logits)
    v = logits.size(-1)
    for name, i in [("eos", eos), ("pad", pad)] + [("suppress[]", s) for s in suppress]:
        if i is not None:
            check_int(name, i, low=0, high=v - 1)
    return logits


def _suppress(scores: torch.Tensor, suppress: Sequence[int]) -> torch.Tensor:
    """``scores`` with the ``suppress`` ids set to ``-inf`` (after the softmax for beam search:
    the other tokens keep the probabilities the model gave them)."""
    if not suppress:
        return scores
    ids = torch.tensor(list(suppress), dtype=torch.long, device=scores.device)
    return scores.index_fill(-1, ids, _NEG_INF)


def _check_scores(name: str, logits: object, dims: int | tuple[int, ...] = (1, 2)) -> None:
    """Float ``(B, V)`` scores a softmax can use: no NaN, no +inf, some token allowed per row."""
    check_float_tensor(name, logits, dims=dims)
    if logits.device.type == "meta":
        raise ValueError(f"{name} must hold values, got a tensor on the meta device")
    bad = logits.isnan() | (logits == float("inf"))
    if bool(bad.any()) or bool((logits == _NEG_INF).all(-1).any()):
        rows = (bad.any(-1) | (logits == _NEG_INF).all(-1)).nonzero().flatten().tolist()
        raise ValueError(f"{name} must be finite or -inf with some token allowed in every row, "
                         f"got NaN, +inf or only -inf in rows {rows} of {describe(logits)}")
