"""requirements.lock and pyproject.toml agree, and the lock is the whole environment."""

import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from tools.lock import read_lock

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and its dev extra (what `make setup` installs)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in
            project["dependencies"] + project["optional-dependencies"]["dev"]]


def locked() -> dict[str, Version]:
    _, pins = read_lock(ROOT / "requirements.lock")
    return {canonical(n): Version(v) for n, (v, _) in pins.items()}


def test_lock_pins_every_requirement_of_pyproject_within_its_range():
    pins = locked()
    for req in project_requirements():
        name = canonical(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: " \
                             "run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name} {pins[name]}, pyproject.toml asks {req}: "
            "run `make lock`")
    assert pins["torch"] == Version("2.13.0+cpu")


def test_every_line_has_one_sha256_and_the_platform_is_named():
    plat, pins = read_lock(ROOT / "requirements.lock")
    assert re.fullmatch(r"cp3\d+-\w+-\w+", plat)
    assert pins and all(re.fullmatch(r"[0-9a-f]{64}", h) for _, h in pins.values())


def test_the_lock_is_closed_and_is_what_is_installed():
    """Walks the dependencies of what is installed from cosalign[dev] down: every package
    reached is pinned at the installed version, and nothing else is pinned. Only meaningful in
    the environment `make setup` made from the lock (elsewhere, e.g. a GPU machine's own
    Python, other versions are expected)."""
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("not the project's .venv: the installed versions are not the lock's")
    pins = locked()
    env = default_environment()
    reached, todo = set(), [(Requirement(r), "") for r in
                            [str(r) for r in project_requirements()] + ["torch"]]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonical(req.name)
        version = Version(md.version(req.name))
        assert name in pins, f"{req.name} {version} is installed as a dependency but not locked"
        assert pins[name] == version, f"{req.name}: installed {version}, locked {pins[name]}"
        assert req.specifier.contains(version, prereleases=True), f"{req} but {version}"
        if name in reached:
            continue
        reached.add(name)
        for extra_name in sorted(req.extras) or [""]:
            todo += [(Requirement(r), extra_name) for r in md.requires(req.name) or []]
    assert set(pins) - reached == set(), "locked but not needed: run `make lock`"
