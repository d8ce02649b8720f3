"""The commands, names, paths and config snippets the docs give a reader exist as written.

A reader copies what README.md and docs/*.md show; each test below fails, naming the file and
the stale text, when the code moves and the docs do not.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from pipeline.config import load_estimators_config

from .helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
PROJECT_DIRS = ("configs", "pipeline", "stages", "tests", "examples", "benchmarks", "docs")


def code_spans(path: Path) -> list[str]:
    """The lines of fenced code blocks and the inline `code` spans of a Markdown file."""
    text = path.read_text()
    lines = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for line in block.splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return lines + re.findall(r"`([^`\n]+)`", prose)


def spans() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), span) for path in DOCS for span in code_spans(path)]


def module_commands() -> list[tuple[str, str, list[str]]]:
    """(file, module, flags) for every `python -m module ...` shown, make's ARGS included."""
    found = []
    for where, span in spans():
        span = span.split("  #")[0]
        for module, rest in re.findall(r"python -m ([\w.]+)([^`]*)", span):
            found.append((where, module, re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)))
        target = re.match(r"\s*make ([\w-]+)(.*)", span)
        if target and target.group(1) in make_stages():
            args = re.findall(r'ARGS="([^"]*)"', target.group(2))
            flags = [flag for arg in args for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", arg)]
            found.append((where, make_stages()[target.group(1)], flags))
    return found


@cache
def makefile() -> str:
    return (ROOT / "Makefile").read_text()


@cache
def make_stages() -> dict[str, str]:
    """Make target -> the stage module its recipe runs (`$(PY) -m stages.x`)."""
    rules = re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile(), re.M)
    return {target: stage for target, recipe in rules
            for stage in re.findall(r"\$\(PY\) -m (stages\.\w+)", recipe)[:1]}


@cache
def help_text(module: str) -> str:
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"`python -m {module} --help` failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def test_every_module_the_docs_run_exists_and_takes_the_flags_shown():
    commands = module_commands()
    assert len({module for _, module, _ in commands}) >= 10  # the scan finds the docs' commands
    with_flags = sorted({module for _, module, flags in commands
                         if flags and importlib.util.find_spec(module)})
    with ThreadPoolExecutor(4) as pool:  # each `--help` is a fresh interpreter: run them side by side
        list(pool.map(help_text, with_flags))
    stale = []
    for where, module, flags in commands:
        if importlib.util.find_spec(module) is None:
            stale.append(f"{where}: no module {module}")
            continue
        stale += [f"{where}: `python -m {module}` has no option {flag}"
                  for flag in flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", help_text(module))]
    assert not stale, "\n".join(stale)


def test_every_make_target_and_variable_the_docs_use_exists():
    targets, variables = set(), set()
    for where, span in spans():
        match = re.match(r"\s*make ([\w-]+)(.*)", span)
        if match:
            targets.add((where, match.group(1)))
            variables |= {(where, name) for name in re.findall(r"\b([A-Z][A-Z_]+)=", match.group(2))}
    assert len(targets) >= 8
    stale = [f"{where}: no make target {t}" for where, t in targets
             if not re.search(rf"^{re.escape(t)}:", makefile(), re.M)]
    stale += [f"{where}: make has no variable {v}" for where, v in variables
              if not re.search(rf"\$\({v}\)", makefile())]
    assert not stale, "\n".join(stale)


def resolves(dotted: str) -> bool:
    """`pipeline.a.b` names a module or an attribute, walked from the package down."""
    first, *rest = dotted.split(".")
    obj, path = importlib.import_module(first), first
    for attr in rest:
        path = f"{path}.{attr}"
        if not hasattr(obj, attr) and hasattr(obj, "__path__") and importlib.util.find_spec(path):
            importlib.import_module(path)
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


def test_every_library_name_the_docs_cite_exists():
    names = {(where, name) for where, span in spans()
             for name in re.findall(r"(?<![\w/.])((?:pipeline|stages|benchmarks)(?:\.\w+)+)(?![\w/])", span)
             if not name.endswith(".md")}
    assert len(names) >= 20
    stale = [f"{where}: {name} does not resolve" for where, name in sorted(names) if not resolves(name)]
    assert not stale, "\n".join(stale)


def test_every_project_path_and_link_the_docs_give_exists():
    stale = []
    for path in DOCS:
        where = path.relative_to(ROOT).as_posix()
        for span in code_spans(path):
            for rel in re.findall(rf"(?<![\w/.])((?:{'|'.join(PROJECT_DIRS)})/[\w./-]*\w)", span):
                if "*" not in rel and not (ROOT / rel).exists():
                    stale.append(f"{where}: no {rel}")
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            if not (path.parent / link).exists():
                stale.append(f"{where}: broken link {link}")
    assert not stale, "\n".join(stale)


def test_the_estimator_config_the_readme_shows_loads(tmp_path):
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    estimator_blocks = [b for b in blocks if b.lstrip().startswith("[estimators.")]
    assert estimator_blocks
    for block in estimator_blocks:
        (tmp_path / "estimators.toml").write_text(block)
        config = load_estimators_config(tmp_path / "estimators.toml")
        assert config.estimators  # every key of the snippet passed the loader's checks


def test_every_docs_section_the_code_and_docs_name_exists():
    """`docs/x.md ("Section")` and `section "Section"` in docstrings, comments and docs name a
    heading of the docs (its beginning: "Diagnostics" for "Diagnostics: cells ...")."""
    headings = [line.lstrip("#").strip().lower() for path in DOCS for line in path.read_text().splitlines()
                if line.startswith("#")]
    code = [path for folder in ("pipeline", "stages", "benchmarks", "examples")
            for path in (ROOT / folder).rglob("*.py")]
    sources = [*DOCS, *code, *(ROOT / "configs").glob("*.toml")]
    named, stale = 0, []
    for path in sources:
        text = re.sub(r"\s+", " ", path.read_text())
        for match in re.finditer(r'(?:\.md\b[^"]{0,25}|\bsections? )\(?"([A-Z][^"]{4,90})"'
                                 r'(?:\s*(?:and|,)\s*"([A-Z][^"]{4,90})")?', text):
            for section in filter(None, match.groups()):
                named += 1
                if not any(h.startswith(section.lower().rstrip(".")) for h in headings):
                    stale.append(f"{path.relative_to(ROOT)}: no section {section!r} in the docs")
    assert named >= 15
    assert not stale, "\n".join(stale)
