"""The front door holds: the README is short, every command the README and docs/USAGE.md show
parses with the CLI it names (its config keys too), every link to a section finds it, the
presets table is the one configs/ makes, and every option of every command says what it does."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from cosalign.cli import ListAction, build_parser
from cosalign.config import Config, flatten, to_dict
from cosalign.methods import method_config

ROOT = Path(__file__).resolve().parents[1]
README, USAGE = ROOT / "README.md", ROOT / "docs" / "USAGE.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _shell_lines(text: str) -> list[str]:
    """The commands of a page: each line of its ```bash blocks (continuations joined, comments
    dropped) and each inline `code` that is a command with options."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    # inline: a command with options (not a command's bare name in a sentence)
    lines += [c for c in re.findall(r"`((?:\.venv/bin/)?cosalign [^`]+)`", text) if " --" in c]
    return lines


def _cosalign_args(line: str) -> list[str] | None:
    """The arguments of a `cosalign` command line (plain, .venv/bin/, torchrun -m), else None."""
    words = shlex.split(line.replace("$PWD", "/x").replace("$method", "ours"))
    for i, w in enumerate(words):
        if w in ("cosalign", ".venv/bin/cosalign"):
            return words[i + 1:]
        if w == "cosalign.cli" and i and words[i - 1] == "-m":
            return words[i + 1:]
    return None


def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for page in (README, USAGE):
        for line in _shell_lines(page.read_text()):
            args = _cosalign_args(line)
            if args is not None and "--help" not in args and args != ["<command>"]:
                out.append((f"{page.name}: {line}", args))
    return out


COMMANDS = _commands()


def _check_keys(ns: argparse.Namespace, where: str) -> None:
    """What parsing leaves unchecked: a train command's preset, method and --set keys load;
    report's --by keys are config keys (or the run's name)."""
    if ns.command == "train" and ns.config:
        method_config(ns.config, [s for s in ns.set if s != "..."], ns.method)
    if ns.command == "report":
        assert set(ns.by) <= set(flatten(to_dict(Config()))) | {"run"}, where


def _write_class_sets(folder: Path) -> None:
    """The class set files the pages write (```yaml blocks that start with # NAME.yaml)."""
    for page in (README, USAGE):
        for name, body in re.findall(r"```yaml\n# (\S+\.yaml)\n(.*?)```", page.read_text(), re.S):
            (folder / name).write_text(body)


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) < 200


def test_the_pages_show_commands():
    # the check below reads them: the quick start's and USAGE's (several per section)
    assert sum(p.startswith("README") for p, _ in COMMANDS) >= 2
    assert sum(p.startswith("USAGE") for p, _ in COMMANDS) >= 20


@pytest.mark.parametrize("where,args", COMMANDS, ids=[c[0][:80] for c in COMMANDS])
def test_every_command_shown_parses(where, args, tmp_path, monkeypatch):
    try:
        ns = build_parser().parse_args([a for a in args if a != "..."])
    except SystemExit as e:
        pytest.fail(f"{where}: does not parse (exit {e.code})")
    monkeypatch.chdir(tmp_path)
    _write_class_sets(tmp_path)
    _check_keys(ns, where)


def test_a_wrong_command_is_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--methd", "ours"])
    with pytest.raises(Exception, match="unknown config key"):
        method_config("minicity", ["align.tauu=0.5"], "ours")


def test_scripts_and_make_targets_shown_exist():
    makefile = (ROOT / "Makefile").read_text()
    for page in (README, USAGE):
        for line in _shell_lines(page.read_text()):
            for script in re.findall(r"(?:^|\s)((?:benchmarks|tools)/\w+\.py)", line):
                assert (ROOT / script).is_file(), f"{page.name}: {line}"
            if line.startswith("make "):
                assert re.search(rf"^{line.split()[1]}:", makefile, re.M), f"{page.name}: {line}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    heads = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_link_to_a_section_names_a_heading():
    """(test_docs.py checks that the files exist; this, that the #anchors do)"""
    checked = 0
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for path, anchor in re.findall(r"\]\(([^)\s#]*)#([^)\s]+)\)", text):
            file = (page.parent / path).resolve() if path else page
            assert anchor in _anchors(file), f"{page.relative_to(ROOT)}: no #{anchor} in {file}"
            checked += 1
    assert checked >= 10


def test_the_presets_table_is_made_from_configs():
    from cosalign.config import preset_names
    from tools.presets_table import current, table

    made = table()
    assert current(USAGE.read_text()) == made, (
        "docs/USAGE.md's presets table is stale: run .venv/bin/python tools/presets_table.py "
        "--write")
    rows = made.splitlines()[2:]
    assert [re.match(r"\| `(\w+)`", row).group(1) for row in rows] == preset_names()
    assert len(preset_names()) >= 7


def _parsers(parser: argparse.ArgumentParser, name: str = "cosalign"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _parsers(p, f"{name} {sub}")


def test_every_option_has_help_and_every_command_examples():
    for name, parser in _parsers(build_parser()):
        text = parser.format_help()
        if name != "cosalign data":
            assert "examples:" in text, name
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings[0]}: no help"
        # a default is shown where there is one
        for action in parser._actions:
            if (action.option_strings and isinstance(action.default, str) and action.default
                    and action.default != argparse.SUPPRESS):
                assert f"default: {action.default}" in " ".join(text.split()), (
                    f"{name} {action.option_strings[0]}")


def test_every_example_of_the_help_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_class_sets(tmp_path)
    examples = 0
    for name, parser in _parsers(build_parser()):
        for line in (parser.epilog or "").split("examples:\n")[-1].splitlines():
            args = _cosalign_args(line.strip())
            if not args or args[-1] == "--help":
                continue
            _check_keys(build_parser().parse_args(args), f"{name} --help: {line}")
            examples += 1
    assert examples >= 25


def test_lists_are_comma_separated_and_spaces_are_accepted():
    p = build_parser()
    for argv in (["eval", "--checkpoint", "c.pt", "--scales", "0.75,1,1.25"],
                 ["eval", "--checkpoint", "c.pt", "--scales", "0.75", "1", "1.25"],
                 ["eval", "--checkpoint", "c.pt", "--scales", "0.75,1", "1.25"]):
        assert p.parse_args(argv).scales == [0.75, 1.0, 1.25]
    assert p.parse_args(["demo", "--methods", "source_only,dacs"]).methods == [
        "source_only", "dacs"]
    assert isinstance(next(a for a in p._subparsers._group_actions[0].choices["demo"]._actions
                           if a.dest == "methods"), ListAction)
    with pytest.raises(SystemExit):
        p.parse_args(["eval", "--checkpoint", "c.pt", "--scales", "0.75,x"])
    # a --set list takes the same syntax, and YAML's
    cfg = method_config("cityscapes_to_acdc", ["data.target.conditions=fog,night"], "ours")
    assert cfg.data.target.conditions == ["fog", "night"]
    cfg = method_config("cityscapes_to_acdc", ["data.target.conditions=[fog,night]"], "ours")
    assert cfg.data.target.conditions == ["fog", "night"]


def test_version(capsys):
    from cosalign import __version__

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cosalign {__version__}"
