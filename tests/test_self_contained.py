"""The repository stands alone: its files cite its own documentation (docs/), never design
notes kept outside the repository, and every section they cite exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Built from parts so that this file does not cite them itself.
OUTSIDE_NOTES = tuple(stem + ".md" for stem in ("ALGORITHMS", "DATA", "ARCHITECTURE"))
_NUMS = r"(\d+(?:\s*(?:-|–|,|and)\s*\d+)*)"


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [f for f in out.stdout.decode().split("\0") if f and (ROOT / f).is_file()]


def _text(rel: str) -> str | None:
    raw = (ROOT / rel).read_bytes()
    if b"\0" in raw[:8192]:
        return None  # binary
    return raw.decode("utf-8", errors="replace")


def _numbers(group: str) -> set[int]:
    """'2-6' -> {2, ..., 6}; '5 and 6', '8, 9' -> {5, 6}, {8, 9}."""
    out: set[int] = set()
    for a, b in re.findall(r"(\d+)(?:\s*[-–]\s*(\d+))?", group):
        out.update(range(int(a), int(b or a) + 1))
    return out


def _sections(doc: Path) -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", doc.read_text(), flags=re.M)}


def test_no_tracked_file_outside_docs_cites_the_outside_notes():
    offenders = []
    for rel in _tracked():
        if rel.startswith("docs/"):
            continue
        text = _text(rel)
        if text is None:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            if any(name in line for name in OUTSIDE_NOTES):
                offenders.append(f"{rel}:{i}: {line.strip()[:100]}")
    assert not offenders, (f"{len(offenders)} line(s) cite notes outside the repository; cite docs/algorithms.md, "
                           "docs/data.md or docs/architecture.md instead:\n" + "\n".join(offenders))


def test_docs_exist_and_cite_nothing_outside_the_repository():
    for name in ("README.md", "algorithms.md", "data.md", "architecture.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"
    for doc in DOCS.glob("*.md"):
        text = doc.read_text()
        for name in OUTSIDE_NOTES:
            assert name not in text, f"docs/{doc.name} cites {name}, which is not in the repository"
        assert "/work/" not in text, f"docs/{doc.name} names a path outside the repository"
    readme = (ROOT / "README.md").read_text()
    for name in ("docs/README.md", "docs/algorithms.md", "docs/data.md", "docs/architecture.md"):
        assert name in readme, f"README.md does not link {name}"


def test_docs_keep_the_section_numbers_code_cites():
    """docs/algorithms.md and docs/data.md are numbered as the citations in the code expect
    (sections 1-10 and 1-5), so 'section N' citations can point at them unchanged."""
    assert _sections(DOCS / "algorithms.md") == set(range(1, 11))
    assert _sections(DOCS / "data.md") == set(range(1, 6))
    arch = (DOCS / "architecture.md").read_text()
    assert re.search(r"^## The Ray design$", arch, flags=re.M), "docs/architecture.md needs '## The Ray design'"


def test_every_cited_section_exists():
    """Every 'docs/algorithms.md section N' / 'docs/data.md section N' citation in a tracked file
    names a section that exists (and so does every legacy citation still to be replaced)."""
    have = {"algorithms": _sections(DOCS / "algorithms.md"), "data": _sections(DOCS / "data.md")}
    legacy = {"ALGORITHMS": "algorithms", "DATA": "data"}
    pattern = re.compile(r"(docs/algorithms|docs/data|ALGORITHMS|DATA)\.md,?\s+sections?\s+" + _NUMS)
    missing, n_cites = [], 0
    for rel in _tracked():
        text = _text(rel)
        if text is None:
            continue
        for m in pattern.finditer(text):
            doc = legacy.get(m.group(1), m.group(1).removeprefix("docs/"))
            n_cites += 1
            for n in _numbers(m.group(2)):
                if n not in have[doc]:
                    missing.append(f"{rel}: {m.group(0)!r} -> docs/{doc}.md has no section {n}")
    assert n_cites > 10  # the package does cite its documentation
    assert not missing, "\n".join(missing)
