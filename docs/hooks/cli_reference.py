"""MkDocs hook: the command-line reference, generated from the typer app at build time so it cannot drift.

A page holding the marker `<!-- cli-reference -->` gets one section per command: its help text and a table of
its arguments and options with their defaults.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- cli-reference -->"


def _default(param: Any) -> str:
    value = param.default
    if value is None or value == () or value == [] or callable(value) or getattr(param, "is_flag", False) and value is False:
        return ""
    return f"`{getattr(value, 'value', value)}`"  # an Enum choice shows as the word typed, not Engine.uvicorn


def _command_markdown(name: str, command: Any) -> list[str]:
    out = [f"## `kdnas-deploy {name}`", "", (command.help or "").strip(), ""]
    rows = []
    for param in command.params:
        if param.param_type_name == "argument":
            label = f"`{param.name.upper()}`"
            help_text = getattr(param, "help", None) or ""
        else:
            flags = [*param.opts, *getattr(param, "secondary_opts", [])]
            label = ", ".join(f"`{f}`" for f in flags)
            help_text = param.help or ""
        rows.append(f"| {label} | {help_text.replace('|', '/')} | {_default(param)} |")
    if rows:
        out += ["| argument or option | meaning | default |", "|---|---|---|", *rows, ""]
    return out


def reference() -> str:
    import typer

    from kdnas_deploy.cli import app

    lines: list[str] = []

    def walk(prefix: str, group: Any) -> None:
        for name in sorted(group.commands):
            command = group.commands[name]
            if hasattr(command, "commands"):  # a command group (`table`): its own commands, named in full
                walk(f"{prefix}{name} ", command)
            else:
                lines.extend(_command_markdown(prefix + name, command))

    walk("", typer.main.get_command(app))
    return "\n".join(lines)


def _object(path: str) -> Any:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _fields(path: str) -> str:
    """A table of a pydantic model's or dataclass's fields: name, type, default."""
    import dataclasses

    cls = _object(path)
    rows = []
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            default = "" if f.default is dataclasses.MISSING else f"`{f.default!r}`"
            rows.append((f.name, str(f.type), default))
    else:
        for name, f in cls.model_fields.items():
            default = "" if f.is_required() else f"`{f.default!r}`"
            rows.append((name, getattr(f.annotation, "__name__", str(f.annotation)), default))
    return "\n".join(["| field | type | default |", "|---|---|---|",
                      *(f"| `{n}` | `{t.replace('|', '/')}` | {d.replace('|', '/')} |" for n, t, d in rows)])


def on_page_markdown(markdown: str, **_: Any) -> str:
    import re

    markdown = markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
    markdown = re.sub(r"<!-- fields:([\w.]+) -->", lambda m: _fields(m.group(1)), markdown)
    return re.sub(r"<!-- schema:([\w.]+) -->", lambda m: f"```sql\n{_object(m.group(1)).strip()}\n```", markdown)
