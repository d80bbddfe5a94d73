"""The README and docs/ link only inside the repository, and every link resolves: a file that
exists in the clone and, when the link names a section, a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>\s]*)>")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The page without code: fenced blocks and inline code hold examples, not links."""
    return CODE.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    """Every link target on a page: inline links and images, reference definitions, autolinks."""
    prose = _prose(page.read_text())
    return [m.group(1) for pattern in (INLINE_LINK, REFERENCE_DEF, AUTOLINK) for m in pattern.finditer(prose)]


def anchor(heading: str) -> str:
    """The anchor a heading gets: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for m in HEADING.finditer(FENCE.sub("", page.read_text())):
        base = anchor(m.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def problem(page: Path, target: str) -> str | None:
    """Why a link target is refused, or None when it resolves inside the repository."""
    if SCHEME.match(target):
        return "points outside the repository"
    path, _, fragment = target.partition("#")
    if path.startswith("/"):
        return "is an absolute path; write it relative to the page"
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.is_relative_to(ROOT):
        return "leaves the repository"
    if not resolved.exists():
        return f"names {resolved.relative_to(ROOT)}, which does not exist"
    if fragment:
        if resolved.suffix != ".md":
            return "names a section of a file that is not Markdown"
        if fragment not in anchors(resolved):
            return f"names section #{fragment}, which {resolved.relative_to(ROOT)} has no heading for"
    return None


def test_the_readme_and_every_docs_page_are_checked() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/architecture.md", "docs/rules.md", "docs/log.md"} <= names
    # Each of these pages links somewhere, so a pattern that finds nothing would show here.
    assert [p.name for p in PAGES if p.parent in (ROOT, ROOT / "docs") and not links(p)] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves_inside_the_repository(page: Path) -> None:
    broken = [f"{target}: {why}" for target in links(page) if (why := problem(page, target)) is not None]
    assert broken == []


def test_the_readme_links_every_docs_page() -> None:
    linked = {
        (ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md") if t.partition("#")[0]
    }
    assert [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked] == []


def test_a_link_outside_the_repository_is_refused(tmp_path: Path) -> None:
    page = ROOT / "docs" / "architecture.md"
    assert problem(page, "https://example.com/design.md") == "points outside the repository"
    assert problem(page, "mailto:someone@example.com") == "points outside the repository"
    assert problem(page, "//example.com/x") == "points outside the repository"
    assert problem(page, "../../elsewhere.md") == "leaves the repository"
    assert problem(page, "/etc/passwd") is not None
    assert problem(page, "missing.md") is not None
    assert problem(page, "rules.md#no-such-section") is not None
    assert problem(page, "rules.md#any-reading-counts") is None


def test_links_are_found_in_prose_and_not_in_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "See [the rules](docs/rules.md#validation), <https://example.com> and\n"
        "![a picture](img.png).\n\n[ref]: https://example.org/x\n\n"
        "`[not a link](https://example.net)`\n\n```\n[nor this](https://example.net)\n```\n"
    )
    assert links(page) == [
        "docs/rules.md#validation",
        "img.png",
        "https://example.org/x",
        "https://example.com",
    ]
    assert (
        anchor("`redaction.py`: what redacting an intent costs")
        == "redactionpy-what-redacting-an-intent-costs"
    )
