"""The README is a page: what taskworker is, the two commands, a short tour, and links
into the documentation site (docs/). Its links are relative, so they work in a clone and
on any Git host; each must name a file of the checkout (setup.py makes them absolute
for PyPI: tests/test_packaging.py). Its tour runs as a marked sample
(tests/test_docs_samples.py).

Pure: no database.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LONGEST = 220  # lines: "a README of about a page" (issue 26)


def outside_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_the_readme_is_about_a_page() -> None:
    lines = README.read_text("utf-8").splitlines()
    assert len(lines) <= LONGEST, f"README.md has {len(lines)} lines: move the rest to docs/"


def test_links_name_files_of_the_checkout() -> None:
    targets = re.findall(r"\]\(([^)\s]+)\)", outside_code(README.read_text("utf-8")))
    relative = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert relative, "no link into the repository"
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"links to nothing in the checkout: {missing}"
    assert not [t for t in relative if t.startswith("#")], "a link to a section of the README"


def test_every_page_of_the_site_is_one_click_away() -> None:
    """The README's Documentation section links the tutorial and every how-to, reference
    and explanation page (the site's navigation has the rest)."""
    text = README.read_text("utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)\)", text))
    pages = {p.relative_to(ROOT).as_posix() for folder in ("how-to", "reference", "explanation")
             for p in (ROOT / "docs" / folder).glob("*.md")}
    pages.add("docs/tutorial.md")
    assert not pages - linked, f"pages the README does not link: {sorted(pages - linked)}"


def test_two_commands_says_what_ci_installs_and_where_the_tests_point() -> None:
    """Every system package .ci/run may install is named under "Two commands", with
    the superuser URL the tests use on the local server (issue 25, item 14)."""
    text = README.read_text("utf-8")
    section = text.split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    installs = re.findall(r'missing="\$missing ([\w-]+)"', (ROOT / ".ci" / "run").read_text())
    assert installs, "no package found in .ci/run"
    for package in installs:
        assert f"`{package}`" in section, package
    assert "postgresql://postgres@127.0.0.1:5432/postgres" in section
    assert "superuser" in section
