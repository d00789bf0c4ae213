"""Exercises of notebook 07 (a GPT from the course's own blocks).

* ``07.1`` (predict) — the number of parameters of nanoGPT's character-level CPU model (65
  characters, context 64, 4 layers, 4 heads, 128 dims, tied output layer): a number, compared
  with the count of the course's :class:`~course_utils.gpt.GPT` built with that configuration.
* ``07.2`` (derive) — the bytes of a KV cache for a Llama-style configuration with grouped-query
  attention and an explicit head dim:
  ``fn(n_layer, n_head, n_kv_head, head_dim, n_embd, batch, length, bytes_per_element) -> int``,
  compared with the buffers of :class:`~course_utils.kv_cache.KVCache`.
* ``07.3`` (debug) — cached decoding whose new tokens get the wrong position vectors:
  ``fn(model, new_tokens, cache) -> logits (B, T_new, V)`` must equal the last rows of
  ``model(whole_sequence)``.
* ``07.4`` (extend) — min-p sampling (keep the tokens whose probability is at least
  ``p_base`` times that of the most probable one): ``fn(logits (B, V), p_base) -> logits`` with
  ``-inf`` for the tokens dropped, to plug in before ``course_utils.decoding.sample_next``.

>>> from course_utils.exercises import check, solution_answer
>>> all(check(i, *solution_answer(i)).passed for i in ("07.1", "07.2", "07.3", "07.4"))
True
"""

from __future__ import annotations

import math
from typing import Any

import torch

from . import CheckResult, Mistake, exercise, fail, ok

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _as_number(x: Any, what: str) -> float:
    """A predicted number; ``None`` or ``...`` (the notebook's placeholder) reads as not attempted."""
    if x is None or x is Ellipsis:
        raise NotImplementedError
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise TypeError(f"{what} must be a finite number, got {type(x).__name__} {x!r}")
    return float(x)


def _first_difference(got: torch.Tensor, want: torch.Tensor, axes: str, atol: float = 1e-4) -> str:
    bad = ~torch.isclose(got.double(), want.double(), atol=atol, rtol=1e-4)
    index = [int(i) for i in bad.nonzero()[0]]
    where = ", ".join(f"{name}={i}" for name, i in zip(axes.split(","), index, strict=False))
    return (f"the first difference is at ({where}): got {float(got[tuple(index)]):.4g}, expected "
            f"{float(want[tuple(index)]):.4g} ({int(bad.sum())} of {bad.numel()} entries differ)")


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-4))


# ---------------------------------------------------------------------------------------------
# 07.1 predict: the parameters of nanoGPT's CPU model
# ---------------------------------------------------------------------------------------------

_V, _T, _L, _E = 65, 64, 4, 128  # Shakespeare's 65 characters, nanoGPT's CPU configuration


def _measured_parameters() -> int:
    from course_utils.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=_V, block_size=_T, n_layer=_L, n_head=4, n_embd=_E)).num_parameters()


def _solution_parameters() -> int:
    """Count each part; the output layer is the embedding matrix (weight tying): no new numbers."""
    V, T, L, E = 65, 64, 4, 128
    embeddings = V * E + T * E  # token table + learned position table
    attention = 3 * (E * E + E) + (E * E + E)  # q, k, v projections, then the output projection
    mlp = (E * 4 * E + 4 * E) + (4 * E * E + E)  # E -> 4E -> E, with biases
    norms = 2 * (2 * E)  # two LayerNorms per block, a gain and a bias each
    final_norm = 2 * E
    return embeddings + L * (attention + mlp + norms) + final_norm  # 809,856


def _parameter_slips() -> list[tuple[int, str]]:
    truth = _solution_parameters()
    E, L = _E, _L
    return [
        (truth + _V * E, "you counted the output layer as its own (V, E) matrix: with weight tying "
                         "it IS the token embedding, used twice and counted once"),
        (truth - _T * E, "that is the count nanoGPT prints (0.80M): it leaves out the position "
                         "table, 64 × 128 numbers that are parameters all the same"),
        (truth - L * 9 * E, "you left out the biases of the linear layers (q, k, v, out: 4E; the "
                            "MLP: 4E + E per block)"),
        (truth - L * 4 * E - 2 * E, "you left out the LayerNorms: each has a gain and a bias of E "
                                    "numbers, two per block and one at the end"),
        (truth - L * (6 * E * E + 3 * E), "your MLP is E -> E -> E: GPT's hidden layer is 4E wide"),
        (truth - L * 2 * (E * E + E), "you counted two projections in the attention instead of four "
                                      "(q, k, v AND the output projection)"),
    ]


@exercise(
    "07.1",
    title="Predict the parameter count of nanoGPT's CPU model (with weight tying)",
    hint="Count part by part: the token table (V × E), the position table (T × E), per block the "
    "q/k/v/output projections (4 matrices E × E, 4 biases), the MLP (E × 4E and 4E × E, with "
    "biases), two LayerNorms (gain and bias each); one final LayerNorm. The output layer is tied.",
    solution=_solution_parameters,
    solution_args=lambda: (_solution_parameters(),),
    kind="predict",
    minutes=10,
    difficulty=1,
    mistakes=[
        Mistake("untied output layer", (_solution_parameters() + _V * _E,), "weight tying"),
        Mistake("nanoGPT's printed count", (_solution_parameters() - _T * _E,), "nanoGPT prints"),
        Mistake("no biases", (_solution_parameters() - _L * 9 * _E,), "biases"),
        Mistake("no LayerNorms", (_solution_parameters() - _L * 4 * _E - 2 * _E,), "LayerNorms"),
        Mistake("MLP not 4E wide", (_solution_parameters() - _L * (6 * _E * _E + 3 * _E),), "4E wide"),
    ],
)
def check_parameters(prediction: Any) -> CheckResult:
    pred = _as_number(prediction, "your prediction")
    measured = _measured_parameters()
    said = f"you predicted {pred:,.0f}; the course's GPT with this configuration has {measured:,}"
    if pred == measured:
        return ok(f"Correct! {said}. Weight tying saves {_V * _E:,} numbers here; in GPT-2 small "
                  "(V = 50,257, E = 768) it saves 38.6 million, a third of the model.")
    for value, message in _parameter_slips():
        if pred == value:
            return fail("values", f"{said}. {message}.")
    return fail("values", f"{said}: off by {pred - measured:+,.0f}. The parts: embeddings "
                f"{_V * _E + _T * _E:,}, one block {(_measured_parameters() - _V * _E - _T * _E - 2 * _E) // _L:,} "
                f"(× {_L}), final LayerNorm {2 * _E}. Which part is yours missing or doubling?")


# ---------------------------------------------------------------------------------------------
# 07.2 derive: the bytes of a KV cache with grouped-query attention and an explicit head dim
# ---------------------------------------------------------------------------------------------

_CACHE_CONFIGS = [  # n_layer, n_head, n_kv_head, head_dim, n_embd, batch, length, bytes
    (3, 4, 2, 24, 64, 3, 50, 4),
    (32, 32, 8, 128, 4096, 1, 8192, 2),  # a Llama-3-8B-like model, bf16
    (4, 8, 1, 16, 96, 2, 10, 4),  # multi-query attention, head_dim != n_embd / n_head
    (3, 6, 6, 8, 48, 5, 7, 8),  # plain multi-head, float64
]


def _measured_cache_bytes(n_layer, n_head, n_kv_head, head_dim, n_embd, batch, length, nbytes) -> int:
    """The buffers of the course's KVCache, for a model with this configuration."""
    from course_utils.kv_cache import KVCache

    dtype = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}[nbytes]
    if n_layer * batch * n_kv_head * length * head_dim > 50_000_000:  # too big to allocate here:
        small = KVCache(1, 1, n_kv_head, head_dim, 1, dtype=dtype)  # scale one slot up
        return small.nbytes() * n_layer * batch * length
    return KVCache(n_layer, batch, n_kv_head, head_dim, length, dtype=dtype).nbytes()


def _solution_cache_bytes(n_layer, n_head, n_kv_head, head_dim, n_embd, batch, length,
                          bytes_per_element) -> int:
    """A key AND a value per layer, per key/value head (not per query head), per token."""
    per_token_per_layer = 2 * n_kv_head * head_dim  # K and V; head_dim is its own number here
    return n_layer * batch * length * per_token_per_layer * bytes_per_element


def _cache_slip(kind: str):
    def fn(n_layer, n_head, n_kv_head, head_dim, n_embd, batch, length, b):
        heads = n_head if kind == "query heads" else n_kv_head
        dim = n_embd // n_head if kind == "E/H" else head_dim
        two = 1 if kind == "keys only" else 2
        layers = 1 if kind == "one layer" else n_layer
        width = n_embd if kind == "n_embd" else heads * dim
        return layers * batch * length * two * width * b
    return fn


_CACHE_MESSAGES = {
    "query heads": "you count a key and a value for every QUERY head: with grouped-query attention "
                   "n_head / n_kv_head query heads share one key/value head, and only n_kv_head are stored",
    "E/H": "you used n_embd // n_head as the head dim: here head_dim is its own setting (the query "
           "and output projections change width, the cache stores head_dim numbers per head)",
    "keys only": "you count the keys only: the cache holds a key AND a value for each token",
    "one layer": "you count one layer: every layer has its own keys and values",
    "n_embd": "you store n_embd numbers per token: the cache stores n_kv_head × head_dim (the "
              "projected keys), which differs from n_embd with GQA or an explicit head_dim",
}


@exercise(
    "07.2",
    title="Derive the size of a KV cache with grouped-query attention and an explicit head_dim",
    hint="Per layer and per token the cache keeps one key and one value for each key/value head, "
    "each head_dim numbers long. Multiply by layers, batch, length and bytes per number.",
    solution=_solution_cache_bytes,
    kind="derive",
    minutes=10,
    difficulty=1,
    mistakes=[Mistake(name, (_cache_slip(name),), _CACHE_MESSAGES[name].split(":")[0][:40])
              for name in _CACHE_MESSAGES],
)
def check_cache_bytes(fn) -> CheckResult:
    for config in _CACHE_CONFIGS:
        want = _measured_cache_bytes(*config)
        got = fn(*config)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return fail("type", f"your function must return a number of bytes, got {type(got).__name__}")
        if got != want:
            for kind, message in _CACHE_MESSAGES.items():
                if got == _cache_slip(kind)(*config):
                    return fail("values", message)
            names = "n_layer, n_head, n_kv_head, head_dim, n_embd, batch, length, bytes_per_element"
            return fail("values", f"the first difference is for ({names}) = {config}: got {got:,}, "
                        f"expected {want:,} (the buffers of course_utils.kv_cache.KVCache)")
    gib = _solution_cache_bytes(*_CACHE_CONFIGS[1]) / 2**30
    return ok(f"Correct on {len(_CACHE_CONFIGS)} configurations. A Llama-3-8B-like model keeps "
              f"{gib:.2f} GiB of cache for one 8,192-token sequence in bf16; without GQA (32 "
              f"key/value heads instead of 8) it would be {4 * gib:.0f} GiB.")


# ---------------------------------------------------------------------------------------------
# 07.3 debug: cached decoding with the wrong position vectors
# ---------------------------------------------------------------------------------------------


def _solution_cached_logits(model, new_tokens: torch.Tensor, cache) -> torch.Tensor:
    """The new tokens sit at positions cache.length() .. cache.length() + T_new - 1."""
    offset = cache.length(0)  # read BEFORE the blocks append the new keys and values
    x = model.wte(new_tokens)  # (B, T_new, E)
    x = model.pos(x, offset=offset)  # the position vectors of positions offset, offset+1, ...
    for i, block in enumerate(model.blocks):
        x = block.step(x, cache, i)
    return model.lm_head(model.norm_f(x))  # (B, T_new, V)


def _cached_variant(kind: str):
    def fn(model, new_tokens, cache):
        offset = cache.length(0)
        x = model.wte(new_tokens)
        shift = {"no offset": 0, "offset + 1": offset + 1, "twice": offset}.get(kind, offset)
        x = model.pos(x, offset=shift)
        if kind == "twice":
            x = model.pos(x, offset=offset)
        for i, block in enumerate(model.blocks):
            x = block.step(x, cache, i)
        return model.lm_head(x if kind == "no final norm" else model.norm_f(x))
    return fn


_CACHED_MESSAGES = {
    "no offset": "every new token gets the position vector of position 0, 1, ... again: the "
                 "positions restart at each step. The new tokens sit after the cache.length() "
                 "tokens already decoded: pass offset=cache.length(0) to model.pos",
    "offset + 1": "the positions are shifted by one: the first new token sits at position "
                  "cache.length(0), not cache.length(0) + 1 (positions count from 0)",
    "twice": "the position vectors are added twice",
    "no final norm": "the final LayerNorm (model.norm_f) is missing before the output layer",
}


@exercise(
    "07.3",
    title="Debug: cached decoding gives every new token the wrong position",
    hint="A token's position is its index in the whole sequence. How many tokens does the cache "
    "hold when the new ones arrive, and what does model.pos(x, offset=...) do with that number?",
    solution=_solution_cached_logits,
    kind="debug",
    minutes=15,
    difficulty=2,
    mistakes=[Mistake(name, (_cached_variant(name),), message.split(":")[0][:35])
              for name, message in _CACHED_MESSAGES.items()],
)
def check_cached_logits(fn) -> CheckResult:
    from course_utils.gpt import GPT, GPTConfig

    torch.manual_seed(7)
    model = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # make the position table matter as much as the tokens do
        model.pos.weight.normal_(0.0, 0.5)
    tokens = torch.randint(0, 30, (2, 12))
    with torch.no_grad():
        want = model(tokens)  # (B, T, V)
        results = {}
        for name, f in [("yours", fn)] + [(k, _cached_variant(k)) for k in _CACHED_MESSAGES]:
            cache = model.new_cache(2, 12)
            parts = [f(model, tokens[:, :5], cache)]  # a prompt of 5, then one token at a time
            parts += [f(model, tokens[:, t : t + 1], cache) for t in range(5, 12)]
            if not all(isinstance(p, torch.Tensor) for p in parts):
                return fail("type", "your function must return a tensor of logits (B, T_new, V)")
            try:
                results[name] = torch.cat(parts, dim=1)
            except RuntimeError:
                return fail("shape", f"your function returned logits of shapes "
                            f"{[tuple(p.shape) for p in parts[:2]]}: expected (B, T_new, V)")
    got = results["yours"]
    if got.shape != want.shape:
        return fail("shape", f"expected the logits of all 12 tokens {tuple(want.shape)} over the "
                    f"calls, got {tuple(got.shape)}")
    if _same(got, want):
        return ok("Correct! The cached logits equal the last rows of model(whole_sequence): each "
                  "new token gets the position vector of its place in the whole sequence.")
    for name, message in _CACHED_MESSAGES.items():
        if _same(got, results[name]):
            return fail("values", message)
    return fail("values", _first_difference(got, want, "b,t,v"))


# ---------------------------------------------------------------------------------------------
# 07.4 extend: min-p sampling
# ---------------------------------------------------------------------------------------------


def _solution_min_p(logits: torch.Tensor, p_base: float) -> torch.Tensor:
    """Drop every token whose probability is below p_base × the largest probability of its row."""
    probs = logits.softmax(dim=-1)  # (B, V)
    threshold = p_base * probs.amax(dim=-1, keepdim=True)  # (B, 1): relative to the top token
    return logits.masked_fill(probs < threshold, float("-inf"))  # the top token always survives


_MIN_P_CASES = [
    (torch.tensor([[2.0, 1.0, 0.0, -1.0, -3.0], [0.0, 0.0, 0.0, 0.0, 0.0]]), 0.2),
    (torch.tensor([[5.0, 4.9, 1.0, 0.5, 0.0, -2.0]]), 0.1),
    (torch.tensor([[1.0, 3.0, 2.0, 2.9], [4.0, -1.0, 3.5, 0.1]]), 0.5),
]


def _min_p_variant(kind: str):
    def fn(logits, p_base):
        probs = logits.softmax(-1)
        inf = float("-inf")
        if kind == "absolute":
            return logits.masked_fill(probs < p_base, inf)
        if kind == "logits":
            return logits.masked_fill(logits < p_base * logits.amax(-1, keepdim=True), inf)
        if kind == "inverted":
            return logits.masked_fill(probs >= p_base * probs.amax(-1, keepdim=True), inf)
        if kind == "probabilities":
            kept = probs.masked_fill(probs < p_base * probs.amax(-1, keepdim=True), 0.0)
            return kept / kept.sum(-1, keepdim=True)
        raise ValueError(kind)
    return fn


_MIN_P_MESSAGES = {
    "absolute": "you compare each probability with p_base itself: min-p's threshold is RELATIVE, "
                "p_base × the probability of the most likely token, so it tightens when the model "
                "is sure and loosens when it is not",
    "logits": "you compare logits with p_base × the largest logit: the threshold is on "
              "probabilities (softmax first); logits can be negative and are not proportional to "
              "probabilities",
    "inverted": "the mask is inverted: you dropped the likely tokens and kept the unlikely ones",
    "probabilities": "you returned probabilities: return the LOGITS with -inf for the dropped "
                     "tokens, so that sample_next (temperature, softmax) can follow",
}


@exercise(
    "07.4",
    title="Extend: min-p sampling, a threshold relative to the most likely token",
    hint="softmax the logits, take each row's largest probability, and set to -inf the logits of "
    "the tokens whose probability is below p_base times it.",
    solution=_solution_min_p,
    kind="extend",
    minutes=15,
    difficulty=2,
    mistakes=[Mistake(name, (_min_p_variant(name),), message.split(":")[0][:30])
              for name, message in _MIN_P_MESSAGES.items()],
)
def check_min_p(fn) -> CheckResult:
    for logits, p_base in _MIN_P_CASES:
        want = _solution_min_p(logits, p_base)
        got = fn(logits.clone(), p_base)
        if not isinstance(got, torch.Tensor):
            return fail("type", f"your function must return a tensor of logits, got {type(got).__name__}")
        if got.shape != want.shape:
            return fail("shape", f"expected logits of shape {tuple(want.shape)}, got {tuple(got.shape)}")
        if torch.equal(torch.isinf(got), torch.isinf(want)) and _same(got[~torch.isinf(want)],
                                                                     want[~torch.isinf(want)]):
            continue
        for name, message in _MIN_P_MESSAGES.items():
            slip = _min_p_variant(name)(logits, p_base)
            if torch.equal(torch.isinf(got), torch.isinf(slip)) and _same(
                    got.masked_fill(torch.isinf(got), 0.0), slip.masked_fill(torch.isinf(slip), 0.0)):
                return fail("values", message)
        keep_got, keep_want = ~torch.isinf(got), ~torch.isinf(want)
        if not torch.equal(keep_got, keep_want):
            b, v = (int(i) for i in (keep_got != keep_want).nonzero()[0])
            probs = logits.softmax(-1)[b]
            return fail("values", f"for logits {logits[b].tolist()} and p_base = {p_base}, token {v} "
                        f"(probability {probs[v]:.3f}, top {probs.max():.3f}) should be "
                        f"{'kept' if keep_want[b, v] else 'dropped'}")
        return fail("values", "the kept tokens are right but their logits changed: " +
                    _first_difference(got.masked_fill(~keep_got, 0.0), want.masked_fill(~keep_want, 0.0), "b,v"))
    return ok("Correct! min-p keeps the top token always, and more candidates when the model is "
              "unsure: plug it in after the temperature and before the softmax of sample_next.")
