"""The documentation's runnable samples: how a page marks them, read back as steps.

A page marks a code block with an HTML comment on the line before it (blank lines
between are allowed); the comments show nothing on the site:

- `<!-- file: PATH -->`: the block is written to PATH (relative) in the page's
  working folder, an empty temporary folder of its own;
- `<!-- run -->`: the block is run in that folder, a `python` block with the
  test's interpreter, a `sh` (or `bash`, `console`-free shell) block with bash; it
  must exit 0;
- `<!-- output -->`: the block is what the run before it printed (stdout; each
  line's trailing spaces ignored);
- `<!-- serve: ARGS -->` (no block): starts `taskworker serve ARGS` in the working
  folder; it runs until the page's samples are done, then gets Ctrl+C and must exit
  0 with no traceback.

A page's steps run in the order they appear, against a fresh migrated database of
its own (`DATABASE_URL`), with the working folder first on `PYTHONPATH`.
tests/test_docs_samples.py runs every page that has one, and the README's.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
DIRECTIVE = re.compile(r"^<!-- (run|output|file: *(?P<path>\S+)|serve:(?P<args>[^>]*)) -->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str  # run, output, file, serve
    line: int  # of the directive, 1-based, for messages
    lang: str = ""  # the block's language (run)
    code: str = ""  # the block's text
    path: str = ""  # file
    args: tuple[str, ...] = ()  # serve


def steps(page: Path) -> list[Step]:
    """The marked samples of `page`, in order. A directive not followed by a code
    block (serve excepted) is an error, so a sample cannot drop out unnoticed."""
    lines = page.read_text("utf-8").splitlines()
    found: list[Step] = []
    i = 0
    in_fence = ""
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line.strip())
        if in_fence:
            if line.strip().startswith(in_fence):
                in_fence = ""
            i += 1
            continue
        if fence:
            in_fence = fence.group("fence")
            i += 1
            continue
        m = DIRECTIVE.match(line.strip())
        if not m:
            i += 1
            continue
        kind = m.group(1).split(":")[0]
        if kind == "serve":
            found.append(Step("serve", i + 1, args=tuple(m.group("args").split())))
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        opening = FENCE.match(lines[j].strip()) if j < len(lines) else None
        if opening is None:
            raise ValueError(f"{page}:{i + 1}: {line.strip()} is not followed by a code block")
        indent = len(lines[j]) - len(lines[j].lstrip())
        end = j + 1
        while end < len(lines) and not lines[end].strip().startswith(opening.group("fence")):
            end += 1
        code = "\n".join(text[indent:] for text in lines[j + 1:end]) + "\n"
        found.append(Step(kind, i + 1, lang=opening.group("lang"), code=code,
                          path=m.group("path") or ""))
        i = end + 1
    return found


def pages() -> list[Path]:
    """Every page of the site that has a marked sample, and the README."""
    return sorted(p for p in [REPO / "README.md", *DOCS.rglob("*.md")] if steps(p))
