"""requirements-lock.txt (issue 20): the exact versions `make setup` installs and CI tests. It pins every package
that requirements.txt and requirements-hear.txt name, within their ranges, and the environment running the tests
is the locked one."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def read(name: str) -> list[Requirement]:
    lines = (ROOT / name).read_text().splitlines()
    return [Requirement(line.split(" #")[0]) for line in lines if line.strip() and not line.startswith("#")]


def lock() -> dict[str, str]:
    pins = {}
    for req in read("requirements-lock.txt"):
        (spec,) = req.specifier  # exactly one ==version each
        assert spec.operator == "==", f"{req} is not an exact pin"
        assert req.marker is None or req.marker == Marker('platform_system == "Linux" and platform_machine == "x86_64"')
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_the_lock_pins_every_requirement_within_its_range():
    pins = lock()
    for req in read("requirements.txt") + read("requirements-hear.txt"):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in the requirements but not in requirements-lock.txt"
        assert req.specifier.contains(pins[name]), f"lock {name}=={pins[name]} is outside {req}"


def test_the_tested_environment_is_the_locked_one():
    """The requirements' packages installed here are the lock's versions (make setup installs the lock)."""
    pins = lock()
    for req in read("requirements.txt"):
        name = canonicalize_name(req.name)
        assert importlib.metadata.version(req.name) == pins[name], f"{name}: installed != requirements-lock.txt"
