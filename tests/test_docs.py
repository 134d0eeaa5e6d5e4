"""The repository stands alone: what its docs and code refer to is inside it."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
TEXT = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ""}


def tracked_text_files() -> list[Path]:
    """Files git tracks (every file of the tree when this is not a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
        files = [ROOT / f for f in out]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "data", "runs", "__pycache__"}
        files = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    return [f for f in files if f.is_file() and f.suffix in TEXT]


def test_nothing_points_to_the_teams_private_material():
    # the team's notes live beside the repository, never in it: a user has no such folder
    outside = re.compile(r"\.\./" + "shared|\\bshared/" + r"[A-Z]+\w*\.md")
    hits = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
            for f in tracked_text_files()
            for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
            if outside.search(line)]
    assert not hits, "\n".join(hits)


def test_relative_links_of_the_docs_resolve_inside_the_repository():
    link = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
    bad = []
    for f in tracked_text_files():
        if f.suffix != ".md":
            continue
        for target, _ in link.findall(f.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path = (f.parent / target).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                bad.append(f"{f.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_section_references_name_headings_of_the_method_page():
    headings = {int(n) for n in re.findall(r"^## (\d+)\. ", METHOD.read_text(), re.M)}
    assert headings == set(range(1, len(headings) + 1)) and len(headings) >= 8
    refs = []
    for f in tracked_text_files():
        text = f.read_text(errors="replace")
        refs += [(f, int(n)) for n in re.findall(r"METHOD\.md,? sections? (\d+)", text)]
        if f == METHOD:
            refs += [(f, int(n)) for n in re.findall(r"\bsection (\d+)", text)]
    assert len(refs) >= 10  # the code cites it
    missing = [f"{f.relative_to(ROOT)}: section {n}" for f, n in refs if n not in headings]
    assert not missing, missing
