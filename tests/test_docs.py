"""Docs: every document a docstring or comment cites is in the repository (not only in ../shared)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("vespo_cli", "tests", "reports")
# A citation: a path under docs/ or reports/, or a bare CAPITALISED name such as README.md.
# Lower-case bare names (report.md, latest.md) and OUT/…, /tmp/… are files a command writes.
CITATION = re.compile(r"(?<![\w/.-])((?:docs|reports)/[\w./-]*\w\.md|[A-Z][A-Z_-]*\.md)\b")


def _cited_text(source: str) -> list[str]:
    """The docstrings and comments of a Python source file."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                out.append(doc)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append(tok.string)
    return out


def citations() -> dict[str, set[str]]:
    """{cited document: the files citing it} over the project's Python sources."""
    found: dict[str, set[str]] = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            for text in _cited_text(path.read_text(encoding="utf-8")):
                for doc in CITATION.findall(text):
                    found.setdefault(doc, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_cited_doc_exists_in_the_repository():
    found = citations()
    assert {"docs/objectives.md", "docs/training.md", "docs/shards.md"} <= set(found)  # the walk sees them
    missing = {doc: sorted(files) for doc, files in found.items() if not (ROOT / doc).is_file()}
    assert missing == {}


def test_the_citation_pattern():
    text = 'see docs/training.md, DESIGN.md "Shards", README.md; writes OUT/report.md and latest.md'
    assert CITATION.findall(text) == ["docs/training.md", "DESIGN.md", "README.md"]


def test_readme_verdict_sentences_are_the_reports_own():
    """Every verdict sentence in README.md (a bullet with a bold verdict) is, word for word, one the committed
    report's summary.json gives (`verdict_sentence`, `reports/verdict_sentences.py`): no result typed by hand."""
    import json

    from vespo_cli.compare.markdown import verdict_sentence

    sentences = set()
    for summary in sorted((ROOT / "reports").glob("*/summary.json")):
        sentences |= {verdict_sentence(r) for r in json.loads(summary.read_text()).get("verdict") or []}
    verdicts = ("supported", "contradicted", "not resolved", "interim")
    bullets = re.split(r"\n\s*- ", (ROOT / "README.md").read_text())
    quoted = [" ".join(b.split()) for b in bullets if any(f": **{v}** (" in b for v in verdicts)]
    assert quoted, "the walk sees the README's verdict sentences"
    for sentence in quoted:  # a bullet may go on after its sentence
        assert any(sentence.startswith(s) for s in sentences), sentence
