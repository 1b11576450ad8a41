"""Every citation in the repository can be followed inside it: a cited file exists, a cited section heading exists,
and nothing cites a document kept outside the repository.

Comments, docstrings, configs and docs say where a rule comes from (a file, `docs/design.md#lal`, or a paper). A
citation of a file that moved, of a heading that was renamed, or of notes that live beside the checkout leaves a
reader with nothing to open; each one is listed with its file and line. Pure Python (no torch): run
`python tests/test_citations.py` to print the list.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("pal/**/*.py", "tests/*.py", "pal/configs/**/*.yaml", "docs/**/*.md", "README.md", "ARCHITECTURE.md",
           "Makefile", "pyproject.toml", "constraints.txt", ".ci/run")

# Notes kept beside the repository, not in it: cite docs/design.md or the paper instead.
OUTSIDE = [
    (re.compile(r"\b(?:pal|sslam)[-_ ]spec\b", re.IGNORECASE), "a specification kept outside the repository"),
    (re.compile(r"\b(?:DESIGN|STYLE)\.md\b"), "a design or style note kept outside the repository"),
    (re.compile(r"\b(?:ecosystem|environment|real-sounds)\.md\b"), "a reference note kept outside the repository"),
    (re.compile(r"(?:shared/|\b)reference/[\w.-]*\w"), "a reference note kept outside the repository"),
]
# `../shared` beside the checkout (PAL_SHARED) holds the official implementations' test fixtures: the folder may be
# named, and paths into it only under fixtures/.
SHARED = re.compile(r"\.\./shared(/[\w./-]*)?")
# Paths of this repository named in text (`docs/<name>.md#<anchor>`, `pal/<...>.py`, `tests/<name>.py`,
# `pal/configs/<...>.yaml`, the root documents); after another path character it is someone else's path (a run's
# `<out>/README.md`).
REPO_FILE = re.compile(r"(?<![\w./:$~-])((?:docs|pal|tests|recipes)/[\w./-]*\.(?:py|md|yaml|json)|README\.md|"
                       r"ARCHITECTURE\.md)(#[\w-]+)?")
REPO_DIR = re.compile(r"(?<![\w./:$~-])((?:docs|pal|tests|recipes)(?:/[\w.-]+)*/)(?![\w.-])")
# `pal:NAME` configs shipped in pal/configs (an upper-case NAME is a placeholder in usage text).
SHIPPED_CONFIG = re.compile(r"\bpal:((?:[\w.-]+/)*[a-z0-9][\w.-]*\.(?:yaml|json))")
BARE_MARKDOWN = re.compile(r"(?<![\w./:$~-])([\w-]+\.md)\b(?![/\w])")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A section named in words: a file (a doc, the README, or a module), a comma, then the heading, bold label or phrase in
# double quotes.
NAMED_SECTION = re.compile(r"(?<![\w./-])((?:docs/[\w./-]+\.md)|README(?:\.md)?|ARCHITECTURE(?:\.md)?|[\w/]+\.py)`?, "
                           r"\"([^\"]+)\"")
# Markdown files the toolkit writes at run time (a data card, a report, a model card), named in the docs.
GENERATED_MARKDOWN = {"card.md", "data_card.md", "report.md"}


def scanned_files() -> list[Path]:
    files = {p for pattern in SCANNED for p in ROOT.glob(pattern) if p.is_file()}
    return sorted(files)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().rstrip("#").strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def prose_lines(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, line, inside a fenced code block) for every line of a file."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if path.suffix == ".md" and line.lstrip().startswith("```"):
            fenced = not fenced
            out.append((number, line, True))
            continue
        out.append((number, line, fenced))
    return out


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a Markdown file's headings (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    for _, line, fenced in prose_lines(path):
        match = re.match(r"#{1,6}\s+(.*)", line)
        if fenced or not match:
            continue
        anchor = github_anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        if count:
            seen[f"{anchor}-{count}"] = 1
    return frozenset(seen)


@cache
def repo_markdown_names() -> frozenset[str]:
    """Names of the repository's own Markdown files (not those of installed packages in a local virtualenv)."""
    return frozenset(p.name for pattern in ("*.md", "docs/**/*.md", "pal/**/*.md", "tests/**/*.md")
                     for p in ROOT.glob(pattern))


def _unknown_markdown(name: str) -> bool:
    """A bare Markdown file name that is neither a file of the repository, nor one the toolkit writes, nor an outside
    note (those are reported as such)."""
    outside = any(pattern.search(name) for pattern, _ in OUTSIDE)
    return not outside and name not in repo_markdown_names() and name not in GENERATED_MARKDOWN


def _target_problem(target: Path, anchor: str | None) -> tuple[str, str] | None:
    """(kind, why) when a cited file, or its heading, cannot be found; None when it can."""
    if not target.exists():
        return "file", "no such file in the repository"
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return "anchor", f"no heading with the anchor #{anchor} in {target.relative_to(ROOT).as_posix()}"
    return None


def _named_section_problem(cited: str, section: str) -> tuple[str, str] | None:
    """(kind, why) when `section` is not a heading (or bold label) of the Markdown file, or not text of the module."""
    if cited.endswith(".py"):
        found = [ROOT / cited] if (ROOT / cited).is_file() else [
            p for p in ROOT.glob(f"pal/**/{Path(cited).name}") if p.relative_to(ROOT).as_posix().endswith(cited)]
        if not found:
            return "file", "no such module in the repository"
        return None if section in found[0].read_text(encoding="utf-8") else ("anchor", f"no {section!r} in {cited}")
    target = ROOT / (cited if cited.endswith(".md") else cited + ".md")
    if not target.is_file():
        return "file", "no such file in the repository"
    if github_anchor(section) in anchors(target) or f"**{section}**" in target.read_text(encoding="utf-8"):
        return None
    return "anchor", f"no heading {section!r} in {target.relative_to(ROOT).as_posix()}"


def line_problems(path: Path, line: str, fenced: bool) -> list[tuple[str, str, str]]:
    """[(kind, what is cited, why it points nowhere)] for one line; kind: outside, file or anchor."""
    found = []
    if path != Path(__file__).resolve():  # this file spells the patterns out
        found += [("outside", m.group(0), why) for pattern, why in OUTSIDE for m in pattern.finditer(line)]
    for match in SHARED.finditer(line):
        rest = (match.group(1) or "").rstrip("/.")
        if rest and not rest.startswith("/fixtures") and not rest.startswith("/reference"):  # references: above
            found.append(("outside", match.group(0), "outside the repository (only ../shared/fixtures is)"))
    for match in REPO_FILE.finditer(line):
        problem = _target_problem(ROOT / match.group(1), match.group(2)[1:] if match.group(2) else None)
        if problem:
            found.append((problem[0], match.group(0), problem[1]))
    for match in NAMED_SECTION.finditer(line):
        problem = _named_section_problem(match.group(1), match.group(2))
        if problem:
            found.append((problem[0], match.group(0), problem[1]))
    for match in REPO_DIR.finditer(line):
        if not (ROOT / match.group(1)).is_dir():
            found.append(("file", match.group(1), "no such folder in the repository"))
    if not path.relative_to(ROOT).as_posix().startswith("tests/"):  # tests name missing configs on purpose
        for match in SHIPPED_CONFIG.finditer(line):
            if not (ROOT / "pal" / "configs" / match.group(1)).is_file():
                found.append(("file", match.group(0), "no such config under pal/configs"))
    prose = path.suffix == ".md" and not fenced
    if prose:
        for match in LINK.finditer(line):
            href = match.group(1)
            if re.match(r"[a-z]+:", href):  # https:, mailto:
                continue
            file_part, _, anchor = href.partition("#")
            problem = _target_problem((path.parent / file_part).resolve() if file_part else path, anchor or None)
            if problem:
                found.append((problem[0], href, problem[1]))
    for match in BARE_MARKDOWN.finditer(LINK.sub("", line) if prose else line):
        if _unknown_markdown(match.group(1)):
            found.append(("file", match.group(1), "no Markdown file of that name in the repository"))
    return found


@cache
def find_problems() -> tuple[tuple[str, str, int, str, str], ...]:
    """→ ((kind, file, line, what is cited, why it points nowhere), ...) over every scanned file."""
    problems = []
    for path in scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        for number, line, fenced in prose_lines(path):
            problems += [(kind, rel, number, cited, why) for kind, cited, why in line_problems(path, line, fenced)]
    return tuple(problems)


def _listing(problems) -> str:
    return "\n".join(f"{file}:{line}: cites {cited!r}: {why}" for _, file, line, cited, why in problems)


def _of_kind(kind: str):
    return [p for p in find_problems() if p[0] == kind]


def test_nothing_cites_notes_kept_outside_the_repository():
    problems = _of_kind("outside")
    assert not problems, "cite docs/design.md or the paper instead:\n" + _listing(problems)


def test_every_cited_file_exists():
    problems = _of_kind("file")
    assert not problems, "cited files that are not in the repository:\n" + _listing(problems)


def test_every_cited_section_exists():
    problems = _of_kind("anchor")
    assert not problems, "cited sections with no such heading:\n" + _listing(problems)


def test_anchors_follow_githubs_rules():
    assert github_anchor("PAL's claims") == "pals-claims"
    assert github_anchor("Stage 1: EAT") == "stage-1-eat"
    assert github_anchor("What `make demo` gives you") == "what-make-demo-gives-you"
    assert github_anchor("[Findings](findings.md) at scale") == "findings-at-scale"


if __name__ == "__main__":
    found = find_problems()
    print(_listing(found) or "every citation resolves")
    sys.exit(1 if found else 0)
