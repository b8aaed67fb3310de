"""The README is the front door and docs/ holds the rest: every relative link in README.md and docs/*.md must
lead somewhere (a file of the repository and, for ``#anchor``, a heading of it), and every docs page must be
reachable from the README by following links, so that no page is orphaned when the README is rewritten.

Anchors are GitHub's heading slugs: lower case, punctuation dropped (hyphens and underscores kept), each
space a hyphen, and ``-1``, ``-2`` ... for a repeated heading.
"""
from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: [text](target) and ![alt](target), the target up to the first space or ')' (a title may follow)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans: a ``[x](y)`` shown as code is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (markdown emphasis and code marks dropped)."""
    text = re.sub(r"[`*]|_(?=\w)|(?<=\w)_\b", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def _is_relative(target: str) -> bool:
    return not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("//")


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``page`` that leads nowhere (or out of ``root``, the repository), with why."""
    bad = []
    for target in links(page):
        if not _is_relative(target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.relative_to(root)}: {target} (no such file)")
        elif root not in dest.parents and dest != root:
            bad.append(f"{page.relative_to(root)}: {target} (outside the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{page.relative_to(root)}: {target} (no heading with that anchor)")
    return bad


def reachable() -> set[Path]:
    """The Markdown pages of the repository one can reach from README.md by following relative links."""
    seen, todo = {README.resolve()}, [README]
    while todo:
        page = todo.pop()
        for target in links(page):
            path = target.partition("#")[0]
            if not path or not _is_relative(target) or not path.endswith(".md"):
                continue
            dest = (page.parent / path).resolve()
            if dest.is_file() and dest not in seen:
                seen.add(dest)
                todo.append(dest)
    return seen


def test_slugs_are_githubs():
    assert slug("What `pipeline run all` does") == "what-pipeline-run-all-does"
    assert slug("Distributed training (`--nproc`, torchrun)") == "distributed-training---nproc-torchrun"
    assert slug("TensorRT: what is implemented, and what was run") == "tensorrt-what-is-implemented-and-what-was-run"
    assert slug("Web target, `classifier.js` and `pipeline demo`") == "web-target-classifierjs-and-pipeline-demo"


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](x.md) ![b](y.png#z) `[c](no.md)` [d](http://e) [f](#g)\n```\n[h](no2.md)\n```\n")
    assert links(page) == ["x.md", "y.png#z", "http://e", "#g"]


def test_every_relative_link_resolves():
    assert [b for page in _pages() for b in broken(page)] == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    """The check above can fail: a missing file, a missing anchor and a link out of the tree are each named."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Front door\n")
    page = tmp_path / "docs" / "p.md"
    page.write_text("# Top\n[ok](#top) [ok too](../README.md#front-door) [gone](no-such-page.md) "
                    "[bad anchor](../README.md#no-such-heading) [out](../..)\n")
    assert [b.split(" (")[-1] for b in broken(page, tmp_path)] == [
        "no such file)", "no heading with that anchor)", "outside the repository)"]


def test_every_docs_page_is_reachable_from_the_readme():
    orphans = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md") if p.resolve() not in reachable())
    assert orphans == []


def test_the_readme_stays_a_front_door():
    """Issue 22: about 200 lines at most; results, history and details belong in docs/."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 210
