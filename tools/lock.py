"""The locked environment of the two README commands (``make demo``, ``make test``).

``requirements.lock`` pins every package the demo and the tests import, with the sha256 of the
exact file pip chose for the platform named in its header (this project's development machine:
CPython 3.11 on Linux x86_64, the CPU build of torch). Two commands:

    python3 tools/lock.py install VENV   # what `make setup` runs: the lock into VENV, then
                                         # cosalign itself (editable, no dependencies)
    python3 tools/lock.py refresh        # re-resolve pyproject.toml and rewrite the lock
                                         # (`make lock`; commit the result)

On the locked platform ``install`` is ``pip install --require-hashes --no-deps``: the same bytes
on every machine. Elsewhere (another Python, macOS, ARM) the hashes cannot match the files pip
finds, so it installs the same versions without hashes, says so, and the results are then
"within the seed spread", not bit for bit (docs/REPRODUCIBILITY.md).
``tests/test_lock.py`` checks that the lock satisfies pyproject.toml and is closed under the
dependencies of what it pins. Needs nothing but the standard library and pip.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
TORCH = "torch==2.13.0"  # the CPU wheel (the machine's pip finds it on local disk)


def this_platform() -> str:
    """What the lock's hashes are valid for: the interpreter's minor version, OS and machine."""
    major, minor = sys.version_info[:2]
    return f"cp{major}{minor}-{sys.platform}-{platform.machine()}"


def read_lock(path: Path = LOCK) -> tuple[str, dict[str, tuple[str, str]]]:
    """``(platform, {name: (version, sha256)})`` from a lock file."""
    plat, pins = "", {}
    for line in path.read_text().splitlines():
        if line.startswith("# platform:"):
            plat = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            req, _, digest = line.partition(" --hash=sha256:")
            name, _, version = req.partition("==")
            pins[name.strip().lower()] = (version.strip(), digest.strip())
    return plat, pins


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], check=True)


def install(venv: Path) -> None:
    plat, pins = read_lock()
    if plat == this_platform():
        pip(venv, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(LOCK))
    else:
        print(f"requirements.lock was made for {plat}, this is {this_platform()}: installing the "
              "same versions without hashes (results agree within the seed spread, not bit for "
              "bit)", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            constraints = Path(tmp) / "constraints.txt"
            # local version labels (+cpu) exist only on the index they came from
            constraints.write_text("".join(f"{n}=={v.split('+')[0]}\n"
                                           for n, (v, _) in pins.items()))
            pip(venv, "install", "--quiet", TORCH)
            pip(venv, "install", "--quiet", "-c", str(constraints), "-e", f"{ROOT}[dev]")
        return
    # the project itself, from the source tree, with the locked setuptools as build backend
    pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", str(ROOT))


def refresh() -> None:
    """Resolve ``torch==2.13.0`` and ``cosalign[dev]`` afresh and write the lock."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run",
                        "--ignore-installed", "--report", str(report), TORCH,
                        "-e", f"{ROOT}[dev]"], check=True)
        installs = json.loads(report.read_text())["install"]
    rows = []
    for item in installs:
        name, version = item["metadata"]["name"].lower(), item["metadata"]["version"]
        if name == "cosalign":
            continue
        digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
        rows.append(f"{name}=={version} --hash=sha256:{digest}")
    LOCK.write_text(
        "# The locked environment of `make demo` and `make test`: every package with the hash\n"
        "# of the file installed. Made by `make lock` (tools/lock.py refresh); do not edit.\n"
        f"# platform: {this_platform()}\n" + "\n".join(sorted(rows)) + "\n")
    print(f"wrote {LOCK} ({len(rows)} packages, {this_platform()})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install the lock into a virtual environment").add_argument(
        "venv", type=Path)
    sub.add_parser("refresh", help="re-resolve pyproject.toml and rewrite requirements.lock")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.venv)
    else:
        refresh()


if __name__ == "__main__":
    main()
