"""The bad-input census: from one valid call of a public function, derive bad calls and classify
what each one does.

A registry (``census_registry.py``) holds one *valid* example call for every public function
and class of every ``course_utils`` module. For each argument of that call, :func:`mutations`
derives bad values by kind:

* wrong type: a str where a tensor / number / sequence is expected, a bare str where a list of
  str is expected, ``None`` where ``None`` is not allowed, a float where an int is expected;
* tensors: integer dtype where float is needed, float64 mixed with float32, NaN / inf values,
  an empty first dim, the ``meta`` device, one dim more / less, the last size off by one;
  integer tensors: floats, a negative value, a huge value;
* numbers: zero, negative, NaN, inf; strings: empty, unknown; sequences: empty.

Each bad call runs (in a worker process, with a time limit) and gets one of these outcomes:

``clear``     ``ValueError`` / ``TypeError`` (or a documented subclass) whose message names the
              argument;
``obscure``   any other exception, or a message that does not name the argument;
``silent``    returned without error although the input is invalid, or gave another answer
              than a reference (integer input that truncates, float64 cast down to float32);
``hang``      did not return within the time limit;
``accepted``  the input is in fact valid: the call returned the right answer (listed in the
              registry with a one-line reason, or judged automatically: integers converted
              exactly, float64 promoted as PyTorch does, NaN that propagates visibly, an
              empty batch giving an empty result, the ``meta`` device carried through).

``accepted`` calls are not bad inputs: the census counts *bad inputs tried* = clear + obscure +
silent + hang.

Run as a script (``python census_engine.py --worker``) this module is the worker: it reads
entry names on stdin and writes one JSON line per call on its own copy of stdout (the
functions' prints go to stderr), so that the parent can stop a call that hangs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import inspect
import itertools
import json
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTCOMES = ("clear", "obscure", "silent", "hang")
FAILURES = ("obscure", "silent", "hang")
DEFAULT_TIMEOUT_S = 30.0
KNOWN_PATH = Path(os.environ.get("CENSUS_KNOWN_PATH") or HERE / "census_known.json")


def load_known() -> dict[str, dict[str, str]]:
    """Failures handed to their owners: ``{entry: {"arg:mutation": outcome}}``."""
    if not KNOWN_PATH.exists():
        return {}
    return json.loads(KNOWN_PATH.read_text(encoding="utf-8"))


KNOWN = load_known()


# ---------------------------------------------------------------------------------------------
# The registry's vocabulary
# ---------------------------------------------------------------------------------------------


class Call:
    """One call: ``fn(*args, **kwargs)``. ``fn`` may be a bound method (``cache.update``)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def run(self) -> Any:
        return self.fn(*self.args, **self.kwargs)


@dataclass
class Entry:
    """The census of one public name.

    ``factory`` builds a fresh valid :class:`Call` (called again for every bad call, so that a
    call that changes its objects cannot spoil the next). Rule keys are ``"arg:mutation"``
    patterns (``fnmatch``: ``"x:rank*"``, ``"*:nan"``, several comma-separated):

    * ``accept``: the input is valid; the value is the one-line reason;
    * ``skip``: arguments not mutated (value: why), e.g. the label of a check helper.

    Failures in files whose owners have not fixed them yet are listed in ``census_known.json``
    (the test tolerates them, and fails once one is fixed, so that the list shrinks).
    """

    name: str
    factory: Callable[[], Call] | None
    accept: dict[str, str] = field(default_factory=dict)
    skip: dict[str, str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # arg -> regex of other names it goes by
    documented: tuple[type[BaseException], ...] = ()
    record: str | None = None  # why no bad input is derived (a result record, no arguments)
    slow: bool = False
    checker: bool = False  # an exercise checker: a failing CheckResult that names it is clear
    timeout: float = DEFAULT_TIMEOUT_S
    defaults: bool = True  # mutate parameters left at their (non-None) defaults too

    @property
    def module(self) -> str:
        parts = self.name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in sys.modules:
                return ".".join(parts[:i])
        return ".".join(parts[:2])


REGISTRY: dict[str, Entry] = {}


def entry(name: str, **options: Any) -> Callable[[Callable[[], Call]], Callable[[], Call]]:
    """Register ``factory`` (a function returning a valid :class:`Call`) for ``name``."""

    def register(factory: Callable[[], Call]) -> Callable[[], Call]:
        if name in REGISTRY:
            raise ValueError(f"{name} is registered twice")
        REGISTRY[name] = Entry(name, factory, **options)
        return factory

    return register


def record(name: str, reason: str) -> None:
    """Register ``name`` with no bad input derived, and why (no arguments; a result record)."""
    if name in REGISTRY:
        raise ValueError(f"{name} is registered twice")
    REGISTRY[name] = Entry(name, None, record=reason)


def _match(key: str, pattern: str) -> bool:
    """``fnmatch`` with ``*`` and ``?`` as wildcards and brackets taken literally (``args[0]``)."""
    literal = pattern.strip().replace("[", "\0").replace("]", "[]]").replace("\0", "[[]")
    return fnmatch.fnmatchcase(key, literal)


def rule(rules: Mapping[str, str], arg: str, mutation: str) -> str | None:
    """The value of the first rule whose pattern matches ``arg:mutation``."""
    key = f"{arg}:{mutation}"
    for pattern, value in rules.items():
        if any(_match(key, p) for p in pattern.split(",")):
            return value
    return None


# ---------------------------------------------------------------------------------------------
# Deriving bad calls
# ---------------------------------------------------------------------------------------------


@dataclass
class Slot:
    """One argument of a call: its name, its valid value and how it may be replaced."""

    name: str
    value: Any
    none_ok: bool
    zero_ok: bool
    default: Any = inspect.Parameter.empty


def _bind(call: Call) -> tuple[inspect.BoundArguments | None, inspect.Signature | None]:
    try:
        sig = inspect.signature(call.fn)
        return sig.bind(*call.args, **call.kwargs), sig
    except (TypeError, ValueError):
        return None, None


def slots(call: Call, with_defaults: bool = True) -> list[Slot]:
    """The arguments of ``call`` that the census mutates, in signature order."""
    bound, sig = _bind(call)
    if bound is None:
        return []
    given = set(bound.arguments)
    if with_defaults:
        bound.apply_defaults()
    out = []
    for pname, p in sig.parameters.items():
        if pname not in bound.arguments:
            continue
        value = bound.arguments[pname]
        ann = str(p.annotation)
        none_ok = p.default is None or "None" in ann or "Optional" in ann
        if p.kind is p.VAR_POSITIONAL:
            out += [Slot(f"{pname}[{i}]", v, False, False) for i, v in enumerate(value)]
            continue
        if p.kind is p.VAR_KEYWORD:
            out += [Slot(k, v, False, False) for k, v in value.items()]
            continue
        if pname not in given and (p.default is None or callable(p.default)):
            continue  # left at None or at a function: no valid kind to start from
        zero_ok = p.default is not p.empty and _is_zero(p.default)
        out.append(Slot(pname, value, none_ok, zero_ok, p.default))
    return out


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def replace(call: Call, name: str, value: Any) -> Call:
    """``call`` with argument ``name`` (a parameter, ``args[i]`` or a ``**kwargs`` key) set."""
    bound, sig = _bind(call)
    bound.apply_defaults()
    m = re.fullmatch(r"(\w+)\[(\d+)\]", name)
    if m:
        items = list(bound.arguments[m.group(1)])
        items[int(m.group(2))] = value
        bound.arguments[m.group(1)] = tuple(items)
    elif name in bound.arguments:
        bound.arguments[name] = value
    else:  # a **kwargs key
        var_kw = next(p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD)
        bound.arguments[var_kw.name] = {**bound.arguments[var_kw.name], name: value}
    return Call(call.fn, *bound.args, **bound.kwargs)


def _torch():
    import torch

    return torch


def _float_tensors(call: Call) -> list[Any]:
    """Float tensors the call works with: its arguments and the parameters of its modules."""
    torch = _torch()
    found: list[Any] = []

    def visit(x: Any, depth: int = 0) -> None:
        if depth > 2:
            return
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            found.append(x)
        elif isinstance(x, torch.nn.Module):
            found.extend(p for p in x.parameters() if p.is_floating_point())
        elif isinstance(x, (list, tuple)):
            for y in x[:8]:
                visit(y, depth + 1)

    for a in (*call.args, *call.kwargs.values(), getattr(call.fn, "__self__", None)):
        visit(a)
    return found


def mutations(call: Call, slot: Slot) -> list[tuple[str, Callable[[Any], Any]]]:
    """``(mutation, make)`` pairs for one argument; ``make(valid_value)`` gives the bad value."""
    torch = _torch()
    import numpy as np

    v = slot.value
    out: list[tuple[str, Callable[[Any], Any]]] = []

    def add(name: str, make: Callable[[Any], Any]) -> None:
        out.append((name, make))

    if not slot.none_ok and v is not None:
        add("None", lambda x: None)
    if isinstance(v, bool):
        add("str", lambda x: "no")
        add("int", lambda x: 2)
    elif isinstance(v, int) and not isinstance(v, bool) or isinstance(v, np.integer):
        add("str", lambda x: str(int(x)))
        add("float", lambda x: int(x) + 0.5)
        if v != 0 and not slot.zero_ok:
            add("zero", lambda x: 0)
        if v >= 0:
            add("negative", lambda x: -1 if x == 0 else -int(x))
    elif isinstance(v, float):
        add("str", lambda x: str(x))
        add("nan", lambda x: math.nan)
        add("inf", lambda x: math.inf)
        add("negative", lambda x: -abs(x) if x else -1.0)
    elif isinstance(v, str):
        add("int", lambda x: 123)
        if v:
            add("empty", lambda x: "")
        add("unknown", lambda x: x + "_xyz" if x else "xyz")
    elif isinstance(v, torch.Tensor):
        out += _tensor_mutations(call, v)
    elif isinstance(v, np.ndarray):
        add("str", lambda x: "x")
        if v.dtype.kind == "f" and v.size:
            add("nan", lambda x: _np_special(x, math.nan))
        if v.ndim and v.size:
            add("empty", lambda x: x[:0])
            add("rank-", lambda x: x[..., 0])
        add("rank+", lambda x: np.stack([x, x], -1))
    elif isinstance(v, (list, tuple)):
        if v and all(isinstance(s, str) for s in v):
            add("bare str", lambda x: " ".join(x))
            add("item", lambda x: type(x)([123, *x[1:]]))
        else:
            add("str", lambda x: "x")
        if v:
            add("empty", lambda x: type(x)())
        if v and all(isinstance(s, float) for s in v):
            add("nan", lambda x: type(x)([math.nan, *x[1:]]))
    elif isinstance(v, Mapping):
        add("str", lambda x: "x")
        if v:
            add("empty", lambda x: type(x)() if not isinstance(x, types.MappingProxyType) else {})
    elif isinstance(v, torch.dtype):
        add("str", lambda x: "float32")
        add("int dtype", lambda x: torch.int64)
    elif isinstance(v, torch.device):
        add("str", lambda x: "nowhere")
    elif isinstance(v, Path):
        add("int", lambda x: 123)
    else:  # a module, a function, a dataset, a generator, a config: the wrong kind of thing
        add("str", lambda x: "x")
    return out


def _np_special(x, value):
    x = x.copy()
    x.reshape(-1)[0] = value
    return x


def _tensor_mutations(call: Call, t: Any) -> list[tuple[str, Callable[[Any], Any]]]:
    torch = _torch()
    out: list[tuple[str, Callable[[Any], Any]]] = [("str", lambda x: "x")]
    is_float = t.is_floating_point()
    is_bool = t.dtype == torch.bool
    if is_float:
        out.append(("int dtype", lambda x: x.round().to(torch.int64)))
        others = [o for o in _float_tensors(call) if o is not t]
        if t.dtype == torch.float32 and any(o.dtype == torch.float32 for o in others):
            out.append(("float64", lambda x: x.double()))
        if t.numel():
            out.append(("nan", lambda x: _special(x, math.nan)))
            out.append(("inf", lambda x: _special(x, math.inf)))
    elif is_bool:
        out.append(("float dtype", lambda x: x.float()))
    else:
        out.append(("float dtype", lambda x: x.float()))
        if t.numel():
            out.append(("negative", lambda x: _special(x, -1)))
            out.append(("huge", lambda x: _special(x, 10**6)))
    if t.dim() and t.numel():
        out.append(("empty", lambda x: x[:0]))
    out.append(("meta", lambda x: x.to("meta")))
    out.append(("rank+", lambda x: torch.stack([x, x], -1)))
    if t.dim():
        out.append(("rank-", lambda x: x[..., 0]))
        out.append(("size", lambda x: torch.cat([x, x[..., :1]], -1)))
    return out


def _special(x, value):
    x = x.clone()
    x.view(-1)[0] = value
    return x


# ---------------------------------------------------------------------------------------------
# Judging outcomes
# ---------------------------------------------------------------------------------------------


def leaves(x: Any, depth: int = 0) -> list[Any]:
    """The values an output is made of (tensors, arrays, numbers, strings), in a fixed order."""
    torch = _torch()
    import numpy as np

    if depth > 6:
        return []
    if isinstance(x, torch.Tensor):
        return [x.detach()]
    if isinstance(x, np.ndarray):
        return [torch.from_numpy(x.copy()) if x.dtype.kind in "biuf" else x.tolist()]
    if isinstance(x, (bool, int, float, np.number)):
        return [torch.tensor(float(x), dtype=torch.float64)]
    if isinstance(x, (str, bytes)) or x is None:
        return [x]
    if isinstance(x, torch.nn.Module):
        return [t.detach() for t in x.state_dict().values()][:64]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return leaves([getattr(x, f.name) for f in dataclasses.fields(x)], depth + 1)
    if isinstance(x, Mapping):
        return [y for k in sorted(x, key=repr) for y in leaves(x[k], depth + 1)]
    if isinstance(x, (list, tuple)):
        return [y for item in list(x)[:256] for y in leaves(item, depth + 1)]
    return []


def _tensors(ls: list[Any]) -> list[Any]:
    torch = _torch()
    return [t for t in ls if isinstance(t, torch.Tensor)]


def same_answer(a: Any, b: Any, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    """``a`` and ``b`` (outputs) hold the same values (any dtype, NaN equal to NaN)."""
    torch = _torch()
    la, lb = leaves(a), leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if not isinstance(x, torch.Tensor):
            if x != y:
                return False
            continue
        if x.shape != y.shape or x.device != y.device:
            return False
        if x.device.type == "meta":
            continue
        if x.is_complex() or y.is_complex():
            return False
        xd, yd = x.double(), y.double()
        if not torch.allclose(xd, yd, rtol=rtol, atol=atol, equal_nan=True):
            return False
    return True


def consume(result: Any) -> Any:
    """Iterate a lazy result (a generator of batches) so that its errors happen now."""
    if isinstance(result, Iterator) and not isinstance(result, (str, bytes)):
        return list(itertools.islice(result, 64))
    return result


@dataclass
class Outcome:
    entry: str
    arg: str
    mutation: str
    outcome: str  # clear / obscure / silent / hang / accepted
    detail: str  # the exception and its message, or why it was accepted / silent
    known: str | None = None  # the outcome recorded in census_known.json, if listed there

    def key(self) -> str:
        return f"{self.entry} {self.arg}:{self.mutation}"


def _names_arg(entry: Entry, arg: str, message: str) -> bool:
    base = re.sub(r"\[\d+\]$", "", arg)
    pattern = rf"(?<![\w.]){re.escape(base)}(?!\w)"
    alias = entry.names.get(arg) or entry.names.get(base)
    if alias:
        pattern += f"|{alias}"
    return re.search(pattern, message) is not None


def classify_error(entry: Entry, arg: str, exc: BaseException) -> tuple[str, str]:
    message = str(exc)
    detail = f"{type(exc).__name__}: {message}"[:400]
    documented = (ValueError, TypeError, *entry.documented)
    if not isinstance(exc, documented):
        return "obscure", detail
    if not _names_arg(entry, arg, message):
        return "obscure", "does not name the argument: " + detail
    return "clear", detail


def classify_checker(entry: Entry, arg: str, result: Any) -> tuple[str, str] | None:
    """An exercise checker answers a bad answer with a failing ``CheckResult``: clear when its
    message says what it received, instead of a crash report."""
    from course_utils.exercises import CheckResult

    if not isinstance(result, CheckResult):
        return None
    text = f"[{result.kind}] {result.message}"
    if result.passed:
        return "silent", "the checker passed a wrong answer: " + text[:300]
    if result.kind == "error" or "raised" in result.message:
        return "obscure", "reported as a crash of the learner's code: " + text[:300]
    return "clear", text[:300]


def judge_success(call: Call, valid_out: Any, arg: str, mutation: str, out: Any,
                  reference: Callable[[], Any] | None) -> tuple[str, str]:
    """A bad call returned: is that right after all (``accepted``) or a silent answer?"""
    torch = _torch()
    ls = leaves(out)
    tens = _tensors(ls)
    if mutation in ("nan", "inf"):
        if any(t.is_floating_point() and t.device.type != "meta" and not torch.isfinite(t).all()
               for t in tens):
            return "accepted", "NaN/inf propagates to the output, visibly (as in PyTorch)"
        return "silent", "a NaN/inf input gave a finite output"
    if mutation == "meta":
        if tens and all(t.device.type == "meta" for t in tens):
            return "accepted", "runs on the meta device it was given"
        return "silent", "a meta tensor gave an output off the meta device"
    if mutation == "empty":
        if any(t.numel() == 0 for t in tens) and all(
                not t.is_floating_point() or t.device.type == "meta" or torch.isfinite(t).all()
                for t in tens):
            return "accepted", "an empty input gives an empty result"
        return "silent", f"an empty input returned {_short(out)}"
    if mutation in ("int dtype", "float dtype") and reference is not None:
        try:
            ref = reference()
        except Exception as exc:  # noqa: BLE001
            return "silent", f"returned although the same values as {mutation} fail " \
                             f"({type(exc).__name__})"
        if same_answer(out, ref):
            return "accepted", "the same answer as with the values given as the right dtype"
        return "silent", "another answer than the same values in the right dtype " \
                         f"(got {_short(out)}, reference {_short(ref)})"
    if mutation == "float64":
        promoted = any(t.dtype == torch.float64 for t in tens)
        if promoted and same_answer(out, valid_out, rtol=1e-3, atol=1e-4):
            return "accepted", "float64 promoted as PyTorch does, same answer"
        if not promoted:
            return "silent", "float64 input cast down silently (no float64 in the output)"
        return "silent", "float64 input changed the answer"
    return "silent", f"returned {_short(out)}"


def _short(x: Any) -> str:
    torch = _torch()
    if isinstance(x, torch.Tensor):
        if x.numel() <= 6 and x.device.type != "meta":
            return f"tensor {x.tolist()}"
        return f"a tensor {tuple(x.shape)} {x.dtype}"
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------------
# Running one entry (inside the worker)
# ---------------------------------------------------------------------------------------------


def planned(entry: Entry) -> list[tuple[str, str, Callable[[Any], Any]]]:
    """The bad calls of ``entry``: ``(arg, mutation, make)``, derived from a fresh valid call."""
    if entry.factory is None:
        return []
    call = entry.factory()
    plan = []
    for slot in slots(call, entry.defaults):
        if any(_match(slot.name, p) for p in entry.skip):
            continue
        for mutation, make in mutations(call, slot):
            if _is_default(slot, make):
                continue  # the parameter's own default: valid by definition
            plan.append((slot.name, mutation, make))
    return plan


def _is_default(slot: Slot, make: Callable[[Any], Any]) -> bool:
    if slot.default is inspect.Parameter.empty or not isinstance(
            slot.default, (str, int, float, tuple, type(None))):
        return False
    try:
        bad = make(slot.value)
        return type(bad) is type(slot.default) and bool(bad == slot.default)
    except Exception:  # noqa: BLE001
        return False


@contextlib.contextmanager
def _preserved_state():
    """Undo what a call may change globally: dtype, determinism, threads, env, cwd, figures."""
    torch = _torch()
    dtype, det = torch.get_default_dtype(), torch.are_deterministic_algorithms_enabled()
    threads, env, cwd = torch.get_num_threads(), dict(os.environ), os.getcwd()
    grad = torch.is_grad_enabled()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        if dict(os.environ) != env:
            os.environ.clear()
            os.environ.update(env)
        if os.getcwd() != cwd:
            os.chdir(cwd)
        try:
            import matplotlib.pyplot as plt

            plt.close("all")
        except Exception:  # noqa: BLE001
            pass


def run_call(call: Call) -> Any:
    with _preserved_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return consume(call.run())


def evaluate(entry: Entry, arg: str, mutation: str, make: Callable[[Any], Any],
             valid_out: Any) -> Outcome:
    """Run one bad call of ``entry`` and classify it."""
    call = entry.factory()
    valid_value = _value_of(call, arg)
    bad_value = make(valid_value)
    bad = replace(call, arg, bad_value)
    reference = None
    if mutation in ("int dtype", "float dtype") and isinstance(bad_value, _torch().Tensor):

        def reference() -> Any:
            fresh = entry.factory()
            same = bad_value.to(_value_of(fresh, arg).dtype)
            return run_call(replace(fresh, arg, same))

    try:
        out = run_call(bad)
    except (KeyboardInterrupt, SystemExit) as exc:
        outcome, detail = "obscure", f"{type(exc).__name__}: {exc}"
    except BaseException as exc:  # noqa: BLE001
        outcome, detail = classify_error(entry, arg, exc)
    else:
        verdict = classify_checker(entry, arg, out) if entry.checker else None
        if verdict is not None:
            outcome, detail = verdict
        else:
            outcome, detail = judge_success(bad, valid_out, arg, mutation, out, reference)
    if outcome != "accepted" and outcome != "clear":
        reason = rule(entry.accept, arg, mutation)
        if reason is not None:
            if outcome == "silent":
                outcome, detail = "accepted", reason
    known = known_failure(entry, arg, mutation) if outcome in FAILURES else None
    return Outcome(entry.name, arg, mutation, outcome, detail, known)


def known_failure(entry: Entry, arg: str, mutation: str) -> str | None:
    """The outcome recorded for this bad call in ``census_known.json``, if it is listed."""
    return KNOWN.get(entry.name, {}).get(f"{arg}:{mutation}")


def _value_of(call: Call, name: str) -> Any:
    bound, _ = _bind(call)
    bound.apply_defaults()
    m = re.fullmatch(r"(\w+)\[(\d+)\]", name)
    if m:
        return bound.arguments[m.group(1)][int(m.group(2))]
    if name in bound.arguments:
        return bound.arguments[name]
    for value in bound.arguments.values():
        if isinstance(value, dict) and name in value:
            return value[name]
    raise KeyError(name)


# ---------------------------------------------------------------------------------------------
# The worker process and its driver
# ---------------------------------------------------------------------------------------------


def worker_main() -> None:
    """Read ``{"entry": name, "start": i}`` lines; write ``{"i": i, ...}`` per bad call."""
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    _torch().set_num_threads(1)
    sys.path.insert(0, str(HERE))
    import census_registry  # noqa: F401  (fills REGISTRY)

    def send(**msg: Any) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    send(ready=True)
    for line in sys.stdin:
        request = json.loads(line)
        name, start = request["entry"], request.get("start", 0)
        entry = REGISTRY[name]
        try:
            plan = planned(entry)
            valid_out = run_call(entry.factory()) if entry.factory else None
        except BaseException as exc:  # noqa: BLE001
            send(broken=f"the valid call fails: {type(exc).__name__}: {exc}"[:500])
            continue
        send(plan=[[a, m] for a, m, _ in plan], timeout=entry.timeout)
        skip_hangs = os.environ.get("CENSUS_RUN_KNOWN_HANGS") != "1"
        for i, (arg, mutation, make) in enumerate(plan):
            if i < start:
                continue
            if skip_hangs and known_failure(entry, arg, mutation) == "hang":
                send(i=i, **dataclasses.asdict(Outcome(name, arg, mutation, "hang",
                                                       "a known hang, not run again", "hang")))
                continue
            send(begin=i)
            try:
                outcome = evaluate(entry, arg, mutation, make, valid_out)
            except BaseException as exc:  # noqa: BLE001  (the census itself failed: say so)
                outcome = Outcome(name, arg, mutation, "obscure",
                                  f"census could not build the call: {type(exc).__name__}: {exc}")
            send(i=i, **dataclasses.asdict(outcome))
        send(end=True)


class Census:
    """Runs entries in a worker process; a call past its time limit is a hang (the worker,
    and every process it started, is ended and a fresh one continues)."""

    def __init__(self, log_dir: str | None = None) -> None:
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.owned = log_dir is None  # a folder of its own: removed when the census ends
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="census-"))
        self.work_dir = self.log_dir / "cwd"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # the calls' own temporary folders go under the census's folder, not the system's
        self.tmp_dir = self.log_dir / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)

    def _start(self) -> None:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
                   COURSE_REPORTS_DIR=str(self.log_dir / "reports"), PYTHONWARNINGS="ignore",
                   TMPDIR=str(self.tmp_dir), TEMP=str(self.tmp_dir), TMP=str(self.tmp_dir))
        env.pop("COURSE_RECORD", None)
        env.pop("COURSE_FAST", None)
        self.log = open(self.log_dir / "worker.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "census_engine.py"), "--worker"], cwd=self.work_dir,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
            text=True, encoding="utf-8", bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        msg = self._next(180.0)
        if msg is None or not msg.get("ready"):
            raise RuntimeError(f"the census worker did not start; see {self.log_dir}/worker.log")

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def _next(self, timeout: float) -> dict | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        return None if line is None else json.loads(line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            from course_utils.process_guard import end_process_tree

            end_process_tree(self.proc.pid, grace_s=1.0)
        if self.proc is not None:
            self.proc.wait()
            self.log.close()
        self.proc = None

    def run(self, name: str) -> list[Outcome]:
        """Every bad call of entry ``name``, classified (hangs included)."""
        outcomes: list[Outcome] = []
        start = 0
        while True:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            self.proc.stdin.write(json.dumps({"entry": name, "start": start}) + "\n")
            self.proc.stdin.flush()
            msg = self._next(600.0)
            if msg is None:
                self.stop()
                raise RuntimeError(f"{name}: the valid call did not finish")
            if "broken" in msg:
                raise RuntimeError(f"{name}: {msg['broken']}")
            plan, timeout = msg["plan"], msg["timeout"]
            current = None
            while True:
                msg = self._next(timeout)
                if msg is None:  # silence past the limit: the current call hangs (or crashed)
                    crashed = self.proc.poll() is not None
                    self.stop()
                    if current is None:
                        raise RuntimeError(f"{name}: the worker stopped between calls")
                    arg, mutation = plan[current]
                    what = "the worker process died" if crashed else \
                        f"no answer within {timeout:.0f} s"
                    outcome = "obscure" if crashed else "hang"
                    known = KNOWN.get(name, {}).get(f"{arg}:{mutation}")
                    outcomes.append(Outcome(name, arg, mutation, outcome, what, known))
                    start = current + 1
                    break
                if "begin" in msg:
                    current = msg["begin"]
                elif "i" in msg:
                    msg.pop("i")
                    outcomes.append(Outcome(**msg))
                    current = None
                elif msg.get("end"):
                    return outcomes
            if start >= len(plan):
                return outcomes

    def __enter__(self) -> Census:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self.owned and exc[0] is None:  # kept after a failure: its worker.log says why
            shutil.rmtree(self.log_dir, ignore_errors=True)


def load_registry() -> dict[str, Entry]:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import census_registry  # noqa: F401

    return REGISTRY


def public_names() -> dict[str, list[str]]:
    """Every public name of every ``course_utils`` module: ``__all__``, or the functions and
    classes the module defines without a leading underscore where it has no ``__all__``."""
    import importlib
    import pkgutil

    import course_utils

    out: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(course_utils.__path__, "course_utils."):
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            names = list(module.__all__)
        else:
            names = [n for n, v in vars(module).items()
                     if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
                     and getattr(v, "__module__", None) == info.name]
        out[info.name] = sorted(n for n in names if callable(getattr(module, n, None)))
    return out


if __name__ == "__main__" and "--worker" in sys.argv:
    # The registry imports this file as ``census_engine``: share one REGISTRY with it.
    sys.modules["census_engine"] = sys.modules["__main__"]
    worker_main()
