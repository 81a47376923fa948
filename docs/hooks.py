"""MkDocs hook: pages that are generated from the code, so that they cannot drift.

`<!-- settings-table -->` on a page becomes the table of every setting: the
variables of `taskworker.settings.FIELDS`, the default each has in `Settings`, the
option of `serve` (or `dashboard`) whose help names it, and its meaning from
`settings.MEANINGS`. tests/test_docs_reference.py renders the same table and
checks it against the code again, as a user reads it.

Runnable samples carry HTML comments (`<!-- run -->`, `<!-- file: PATH -->`, ...:
tests/docs_samples.py); they stay in the page source and show nothing.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

MARKER = "<!-- settings-table -->"


def shown_default(value: object, parse: Any) -> str:
    """A default as the table shows it: durations (settings whose parser takes
    `1s`) as `5s`, lists and None as `none`."""
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        try:
            parse("1s")
        except ValueError:
            return f"`{value:g}`"
        return f"`{value:g}s`"
    return f"`{value}`"


def options() -> dict[str, str]:
    """Variable -> the `--option` of serve or dashboard whose help says
    `[env VARIABLE`."""
    from taskworker.commands import dashboard, serve

    found: dict[str, str] = {}
    for command in (serve.serve, dashboard.dashboard):
        for param in command.params:
            help_text = getattr(param, "help", None) or ""
            m = re.search(r"\[env ([A-Z0-9_]+)", help_text)
            if m and param.opts:
                long = [o for o in param.opts if o.startswith("--")]
                found.setdefault(m.group(1), long[0] if long else param.opts[0])
    return found


def settings_table() -> str:
    """The table of every setting, in FIELDS' order; a variable whose meaning is
    empty shares the row before it (`A` / `B`, their defaults likewise)."""
    from taskworker import settings

    fields = {f.name: f for f in dataclasses.fields(settings.Settings)}
    opts = options()
    rows: list[list[Any]] = []
    for var, (name, parse) in settings.FIELDS.items():
        default = (settings.DEFAULT_DATABASE_URL if var == "DATABASE_URL"
                   else fields[name].default)
        meaning = settings.MEANINGS[var]
        if not meaning and rows:
            rows[-1][0].append(var)
            rows[-1][1].append(shown_default(default, parse))
            continue
        rows.append([[var], [shown_default(default, parse)], opts.get(var, ""), meaning])
    lines = ["| Variable | Option | Default | Meaning |", "|---|---|---|---|"]
    for variables, defaults, option, meaning in rows:
        lines.append("| {} | {} | {} | {} |".format(
            " / ".join(f"`{v}`" for v in variables), f"`{option}`" if option else "",
            " / ".join(defaults), meaning))
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, settings_table())
    return markdown
