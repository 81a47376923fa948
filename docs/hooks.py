"""MkDocs hook: pages that are generated from the code, so that they cannot drift.

`<!-- settings-table -->` on a page becomes the table of every setting: the
variables of `taskworker.settings.FIELDS`, the default each has in `Settings`, the
option of `serve` (or `dashboard`) whose help names it, and its meaning from
`settings.MEANINGS`. tests/test_docs_reference.py renders the same table and
checks it against the code again, as a user reads it.

`<!-- every-log-line -->` becomes the list of every line the package logs: each
call of a logger's level method (`log.info("Fetched %d tasks", n)`) found in the
source, its format shown with `N` for a number and `…` for a text.

Runnable samples carry HTML comments (`<!-- run -->`, `<!-- file: PATH -->`, ...:
tests/docs_samples.py); they stay in the page source and show nothing.
"""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

MARKER = "<!-- settings-table -->"
LOG_MARKER = "<!-- every-log-line -->"
PACKAGE = Path(__file__).resolve().parent.parent / "taskworker"
LEVELS = ("debug", "info", "warning", "error", "exception", "critical")


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


class LogCall(ast.NodeVisitor):
    """The logging calls of one module: (level, format) for each message it can log."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []
        self.unread: list[str] = []  # calls whose message is not a literal

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        logs = (isinstance(func, ast.Attribute) and func.attr in LEVELS
                and "log" in ast.unparse(func.value).lower())
        # The monitor thread writes its warnings itself (the hub is blocked).
        writes = isinstance(func, ast.Attribute) and func.attr == "_write"
        if (logs or writes) and node.args and isinstance(func, ast.Attribute):
            message = node.args[0]
            options = ([message.body, message.orelse] if isinstance(message, ast.IfExp)
                       else [message])
            for option in options:
                text = self.literal(option)
                if text is None:
                    self.unread.append(ast.unparse(message))
                else:
                    self.found.append(("warning" if writes else func.attr, text))
        self.generic_visit(node)

    @staticmethod
    def literal(node: ast.expr) -> str | None:
        """A message as a %-format: a string, or an f-string whose values become %s
        (%d for a number formatted as one)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.Constant):
                    parts.append(str(value.value))
                elif isinstance(value, ast.FormattedValue):
                    spec = ast.unparse(value.format_spec) if value.format_spec else ""
                    parts.append("%d" if re.search(r"[dfg]", spec) else "%s")
            return "".join(parts)
        return None


def log_calls() -> tuple[list[tuple[str, str, str]], list[str]]:
    """(module, level, format) of every logging call in the package, and the calls
    whose message is not a literal (there should be none)."""
    found, unread = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        visitor = LogCall()
        visitor.visit(ast.parse(path.read_text("utf-8")))
        module = path.relative_to(PACKAGE.parent).with_suffix("").as_posix().replace("/", ".")
        found += [(module, level, text) for level, text in visitor.found]
        unread += [f"{module}: {text}" for text in visitor.unread]
    return found, unread


def shown_format(text: str) -> str:
    """A %-format as the reader sees it: numbers as N, texts as an ellipsis."""
    text = re.sub(r"%\.?\d*[dfg]", "N", text)
    text = re.sub(r"%[sr]", "…", text)
    return text.replace("%%", "%").replace("|", "\\|")


def log_table() -> str:
    found, _unread = log_calls()
    lines = ["| Level | Line | Logged by |", "|---|---|---|"]
    seen = set()
    for module, level, text in found:
        if (level, text, module) in seen:
            continue
        seen.add((level, text, module))
        shown = "ERROR" if level in ("exception", "critical") else level.upper()
        lines.append(f"| {shown} | `{shown_format(text)}` | `{module}` |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, settings_table())
    if LOG_MARKER in markdown:
        markdown = markdown.replace(LOG_MARKER, log_table())
    return markdown
