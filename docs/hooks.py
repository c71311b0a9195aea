"""mkdocs hooks (mkdocs.yml ``hooks:``): the CLI reference is written from the command tree itself.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time it is replaced by
one section per ``deepworks`` subcommand (its help, usage, arguments and options), read from the
click command that typer builds, so the page cannot drift from the commands.
"""

from __future__ import annotations

import html
import inspect
import re
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
SRC = Path(__file__).resolve().parents[1] / "src"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())


def cli_reference() -> str:
    """Markdown for every command under ``deepworks``, in the order ``deepworks --help`` lists them."""
    if str(SRC) not in sys.path:  # document this checkout, not whatever deepworks is installed
        sys.path.insert(0, str(SRC))
    import typer

    from deepworks.cli import app

    root = typer.main.get_command(app)
    context = typer.Context(root, info_name="deepworks")
    return "\n".join(_command(root, context, level=2))


def _command(command, context, level: int) -> list[str]:
    """A command's section, then its subcommands' (typer's click objects: a group has ``list_commands``)."""
    path = context.command_path
    lines = []
    if context.parent is not None:
        anchor = "cli-" + "-".join(path.split()[1:])
        lines += [f"{'#' * level} `{path}` {{#{anchor}}}", ""]
    if command.help:
        lines += [_text(inspect.cleandoc(command.help)), ""]
    lines += ["```text", command.get_usage(context), "```", ""]
    rows = []
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if getattr(param, "hidden", False) or record is None:
            continue
        names, help_text = record
        rows.append(f"| `{names}` | {_text(help_text).replace(chr(10), ' ')} |")
    if rows:
        lines += ["| argument or option | what it does |", "|---|---|", *rows, ""]
    if hasattr(command, "list_commands"):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is None or sub.hidden:
                continue
            lines += _command(sub, type(context)(sub, info_name=name, parent=context), level + (context.parent is not None))
    return lines


def _text(text: str) -> str:
    """Help text as Markdown that shows it as written: ``code`` spans kept, elsewhere HTML and the
    emphasis and link marks escaped; table pipes escaped everywhere."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([*_\[\]])", r"\\\1", html.escape(parts[i], quote=False))
    return "".join(parts).replace("|", "\\|")


# The docstrings are written for Sphinx-style readers (``code``, :func:`name`, ``>>>`` examples,
# literal blocks after ``::``); the API reference renders them as Markdown, so this griffe extension
# (mkdocs.yml: mkdocstrings' ``extensions``) turns those three constructs into their Markdown forms.
import griffe  # noqa: E402

ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


class SphinxToMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = sphinx_to_markdown(obj.docstring.value)


def sphinx_to_markdown(doc: str) -> str:
    lines, out, i = doc.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):  # a doctest: up to the next blank line
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(re.sub(r"\s*# doctest:.*$", "", lines[i]))
                i += 1
            out += ["```pycon", *block, "```"]
            continue
        if line.rstrip().endswith("::"):  # a literal block: the indented lines after it
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            base = len(line) - len(line.lstrip())
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                text = line.rstrip()[:-1].rstrip()
                out += [text + ":" if text else "", "", "```text", *inspect.cleandoc("\n".join(block)).split("\n"), "```", ""]
                i = j
                continue
        out.append(line)
        i += 1
    return ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", "\n".join(out))
