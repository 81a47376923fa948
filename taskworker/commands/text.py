"""Small text formatting shared by the commands' output."""
from __future__ import annotations

import time
from collections.abc import Sequence


def table(rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Rows as lines with aligned columns (those in `right` aligned right)."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if c in right else cell.ljust(w)
                 for c, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def age(seconds: float) -> str:
    """3d 4h, 2h 5m, 4m 12s, 12s, 0.4s."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60),
                                      ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // sub_size}{sub}"
    return f"{s}s"


def tasks(n: int) -> str:
    """1 task, 2 tasks."""
    return f"{n} task" if n == 1 else f"{n} tasks"


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def printable(text: str) -> str:
    """Control characters escaped, except newlines and tabs."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def one_line(text: str | None, limit: int) -> str:
    """Whitespace runs folded to one space, cut to `limit` characters."""
    if text is None:
        return "(null)"
    flat = printable(" ".join(text.split()))
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."
