"""environment.yml must not drift from pyproject.toml, the one source of truth."""

from __future__ import annotations

import re
import sys

import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a test extra)
    import tomli as tomllib

from conftest import REPO  # noqa: E402


def _env():
    return yaml.safe_load((REPO / "environment.yml").read_text())


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_environment_installs_the_course_from_pyproject():
    deps = _env()["dependencies"]
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert pip_sections == [["-e .[test]"]], "environment.yml must install the course with `pip: [-e .[test]]`"
    assert "pip" in deps


def test_environment_lists_no_package_of_its_own():
    # Any conda package besides python/pip would be a second, drifting list of dependencies.
    names = {re.split(r"[<>=! ]", d)[0] for d in _env()["dependencies"] if isinstance(d, str)}
    assert names == {"python", "pip"}, f"environment.yml lists {sorted(names - {'python', 'pip'})}; put them in pyproject.toml"


def test_python_floor_agrees():
    floor = _pyproject()["project"]["requires-python"]
    python = next(d for d in _env()["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert floor.removeprefix(">=") == python.removeprefix("python>="), (floor, python)


def test_channels():
    assert _env()["channels"] == ["conda-forge", "nodefaults"]


def test_dependencies_are_ranges_that_admit_this_machine():
    deps = _pyproject()["project"]["dependencies"] + _pyproject()["project"]["optional-dependencies"]["test"]
    for dep in deps:
        assert "==" not in dep, f"{dep} is a hard pin; use a range"
    torch = next(d for d in deps if d.startswith("torch>="))
    vision = next(d for d in deps if d.startswith("torchvision>="))
    assert tuple(map(int, torch.split(">=")[1].split("."))) <= (2, 14, 1)
    assert tuple(map(int, vision.split(">=")[1].split("."))) <= (0, 29, 1)
