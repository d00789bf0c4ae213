"""The bad-input census as a test: every bad call of every public name of ``course_utils`` gets
a clear error (or is valid input, listed with its reason), none hangs.

* Every public name of every module has an entry in ``census_registry.py``: a new function
  cannot skip the census.
* Each module's bad calls run in a worker process (a hang is stopped after its time limit and
  reported, it never blocks the suite); an obscure error, a silent answer or a hang fails the
  test, unless it is listed in ``census_known.json`` (failures handed to owners still at work on
  their files). A listed failure that is fixed fails the test too, so the list only shrinks:
  ``python scripts/bad_input_census.py --update-known`` drops it.
* The census itself is tested: it must call a truncating integer input *silent*, a message
  that does not name the argument *obscure*, a loop that never ends a *hang*.

``python scripts/bad_input_census.py`` prints the counts and writes the report.
"""

from __future__ import annotations

import collections
import inspect

import census_engine as E
import pytest
import torch
from census_owners import OPEN, owner

from course_utils.checks import check_positive_int

E.load_registry()
NAMES = sorted(E.REGISTRY)
SLOW = [n for n in NAMES if E.REGISTRY[n].slow]
_MODULES = collections.defaultdict(list)
for _n in NAMES:
    if not E.REGISTRY[_n].slow:
        _MODULES[E.REGISTRY[_n].module].append(_n)
MODULES = sorted(_MODULES)


def problems(outcomes: list[E.Outcome]) -> list[str]:
    """What is wrong: failures not listed as known, and known failures that are fixed."""
    out = []
    for o in outcomes:
        listed = E.KNOWN.get(o.entry, {}).get(f"{o.arg}:{o.mutation}")
        if o.outcome in E.FAILURES and listed is None:
            out.append(f"{o.outcome}: {o.entry}({o.arg}={o.mutation}): {o.detail}")
        elif o.outcome not in E.FAILURES and listed is not None:
            out.append(f"fixed, now {o.outcome}: {o.entry}({o.arg}={o.mutation}) is listed in "
                       "census_known.json: take it off with python scripts/bad_input_census.py "
                       f"--no-faults --update-known --only {o.entry}")
    return out


def run_entries(census: E.Census, names: list[str]) -> None:
    found, broken = [], []
    for name in names:
        try:
            outcomes = census.run(name)
        except RuntimeError as exc:
            broken.append(str(exc))
            continue
        planned = {f"{o.arg}:{o.mutation}" for o in outcomes}
        stale = set(E.KNOWN.get(name, {})) - planned
        found += problems(outcomes) + [f"stale: {name}({key}) is listed in census_known.json "
                                       "but no longer derived" for key in sorted(stale)]
    assert not broken, "valid calls that fail:\n" + "\n".join(broken)
    assert not found, f"{len(found)} bad calls without a clear error:\n" + "\n".join(found)


@pytest.fixture(scope="class")
def census(tmp_path_factory):
    with E.Census(str(tmp_path_factory.mktemp("census"))) as c:
        yield c


# Two classes, so that `pytest -n 2 --dist loadscope` runs the halves side by side.
class TestCensusFirstHalf:
    @pytest.mark.parametrize("module", MODULES[: len(MODULES) // 2])
    def test_module(self, module, census):
        run_entries(census, _MODULES[module])


class TestCensusSecondHalf:
    @pytest.mark.parametrize("module", MODULES[len(MODULES) // 2:])
    def test_module(self, module, census):
        run_entries(census, _MODULES[module])


@pytest.mark.slow
class TestCensusSlow:
    @pytest.mark.parametrize("name", SLOW)
    def test_entry(self, name, census):
        run_entries(census, [name])


# ---- the registry covers everything ---------------------------------------------------------


def test_every_public_name_has_a_census_entry():
    public = {f"{m}.{n}" for m, names in E.public_names().items() for n in names}
    missing = sorted(public - set(NAMES))
    assert not missing, ("public names without a census entry (add a valid call, or a record "
                         "with its reason, to tests/properties/census_registry.py):\n"
                         + "\n".join(missing))


def test_census_entries_are_public_names_or_their_methods():
    public = {f"{m}.{n}" for m, names in E.public_names().items() for n in names}
    strays = [n for n in NAMES if n not in public and n.rsplit(".", 1)[0] not in public]
    assert not strays, f"census entries for names that are not public: {strays}"


def test_known_failures_belong_to_owners_still_at_work():
    wrong = [f"{entry} ({owner(entry)})" for entry in E.KNOWN if owner(entry) not in OPEN]
    assert not wrong, f"failures listed as known in modules that must have none: {wrong}"
    unknown = [entry for entry in E.KNOWN if entry not in E.REGISTRY]
    assert not unknown, f"census_known.json names entries that do not exist: {unknown}"
    outcomes = {v for keys in E.KNOWN.values() for v in keys.values()}
    assert outcomes <= set(E.FAILURES), outcomes


def test_every_entry_derives_bad_calls_or_says_why_not():
    for name in NAMES:
        entry = E.REGISTRY[name]
        if entry.factory is None:
            assert entry.record, name
        else:
            assert E.planned(entry) or entry.skip or name.endswith(".plot"), \
                f"{name}: no bad call derived from its valid call"


# ---- the census itself ----------------------------------------------------------------------


def _entry(fn, *args, **options) -> E.Entry:
    return E.Entry(f"selftest.{fn.__name__}", lambda: E.Call(fn, *args), **options)


def _outcomes(entry: E.Entry) -> dict[str, E.Outcome]:
    valid = E.run_call(entry.factory())
    return {f"{a}:{m}": E.evaluate(entry, a, m, make, valid) for a, m, make in E.planned(entry)}


def halve(x: torch.Tensor) -> torch.Tensor:
    """Silent on integers: the result keeps the input's dtype, so 3 // 2 gives 1."""
    out = torch.zeros_like(x)
    out += x / 2 if x.is_floating_point() else x // 2
    return out


def add_one(x: torch.Tensor) -> torch.Tensor:
    """Obscure: whatever goes wrong is PyTorch's message, which does not name ``x``."""
    return x + torch.ones(3)


def checked_scale(x: torch.Tensor, n: int) -> torch.Tensor:
    """Clear: each argument checked by name."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {x!r}")
    check_positive_int("n", n)
    return x * n


def test_census_calls_a_truncating_integer_input_silent():
    got = _outcomes(_entry(halve, torch.tensor([3.0, 5.0, 1.0])))
    assert got["x:int dtype"].outcome == "silent", got["x:int dtype"]
    assert "another answer" in got["x:int dtype"].detail
    assert got["x:nan"].outcome == "accepted"  # NaN in, NaN out: visible


def test_census_calls_an_unnamed_error_obscure_and_a_named_one_clear():
    got = _outcomes(_entry(add_one, torch.tensor([1.0, 2.0, 3.0])))
    assert got["x:str"].outcome == "obscure" and got["x:size"].outcome == "obscure"
    got = _outcomes(_entry(checked_scale, torch.tensor([1.0, 2.0]), 3))
    assert {k: o.outcome for k, o in got.items() if k.startswith("n:")} == {
        "n:None": "clear", "n:str": "clear", "n:float": "clear", "n:zero": "clear",
        "n:negative": "clear"}
    assert got["x:int dtype"].outcome == "clear" and got["x:str"].outcome == "clear"
    assert got["x:rank+"].outcome == "silent"  # returned a (2, 2) tensor: nobody checked


def test_census_stops_a_hang_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("CENSUS_SELFTEST", "1")
    with E.Census(str(tmp_path)) as census:
        outcomes = census.run("selftest.spin")
    by_key = {f"{o.arg}:{o.mutation}": o.outcome for o in outcomes}
    assert by_key["n:negative"] == "hang"  # the loop never ends for n < 0 ...
    assert by_key["n:zero"] == "silent" and by_key["n:str"] == "obscure"  # ... and the rest ran


def test_census_does_not_wait_again_for_a_known_hang(tmp_path, monkeypatch):
    known = tmp_path / "known.json"
    known.write_text('{"selftest.spin": {"n:negative": "hang"}}', encoding="utf-8")
    monkeypatch.setenv("CENSUS_SELFTEST", "1")
    monkeypatch.setenv("CENSUS_KNOWN_PATH", str(known))
    with E.Census(str(tmp_path)) as census:
        outcomes = census.run("selftest.spin")
    hang = next(o for o in outcomes if o.mutation == "negative")
    assert (hang.outcome, hang.detail) == ("hang", "a known hang, not run again")


def test_a_mutation_equal_to_the_default_is_not_a_bad_input():
    def f(x: torch.Tensor, suppress: tuple = ()) -> torch.Tensor:
        return x

    entry = E.Entry("selftest.f", lambda: E.Call(f, torch.zeros(2), (1,)))
    assert ("suppress", "empty") not in {(a, m) for a, m, _ in E.planned(entry)}
    assert inspect.signature(f).parameters["suppress"].default == ()
