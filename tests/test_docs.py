"""The documentation site (mkdocs.yml, docs/): ``mkdocs build --strict`` passes (no broken link or
anchor, no page outside the nav, no name mkdocstrings cannot find); the API reference renders every
name of ``deepworks.__all__`` as the object ``import deepworks`` gives; the CLI reference lists every
subcommand and option of the live command tree; every YAML snippet of the docs and the README is a
valid config; the getting-started page's Python runs as written; the README's links lead somewhere."""

from __future__ import annotations

import html
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import deepworks
from deepworks.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once for the module, from this checkout's sources."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)
    return out


def _text(fragment: str) -> str:
    """Rendered HTML as the words a reader sees."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment)))


def _sections(page: str, pattern: str) -> dict[str, str]:
    """The page's HTML cut at each element whose id matches ``pattern`` (its first group names it)."""
    marks = list(re.finditer(pattern, page))
    return {m.group(1): page[m.start():(marks[i + 1].start() if i + 1 < len(marks) else len(page))]
            for i, m in enumerate(marks)}


def test_the_site_has_every_page_of_the_nav(site):
    for page in PAGES:
        if page.name == "index.md":
            continue
        built = site / page.relative_to(DOCS).with_suffix("") / "index.html"
        assert built.is_file(), f"{page.relative_to(ROOT)} was not built"
    assert "Benchmark results" in (site / "benchmarks" / "index.html").read_text()  # benchmarks/RESULTS.md included


def test_api_reference_renders_every_public_name_as_the_object_deepworks_gives(site):
    page = (site / "reference" / "api" / "index.html").read_text()
    sections = _sections(page, r'id="deepworks\.(\w+)"')
    missing = [name for name in deepworks.__all__ if name not in sections]
    assert not missing, f"docs/reference/api.md does not render {missing}: add a `::: deepworks.NAME` line"
    for name in deepworks.__all__:
        doc = inspect.getdoc(getattr(deepworks, name)) or ""
        first = re.sub(r":\w+:`~?|`", "", doc.split("\n")[0])[:60]  # as rendered: roles and code marks dropped
        assert first and "".join(first.split()) in "".join(_text(sections[name]).split()), (
            f"deepworks.{name}: the API reference shows another object than `deepworks.{name}` "
            f"(its docstring begins {first!r})")


def _commands(command, path):
    """(command path, click command) of every command under ``command``, itself included."""
    yield path, command
    if hasattr(command, "list_commands"):  # a group (typer's click objects)
        ctx = command.context_class(command, info_name=path)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if not sub.hidden:
                yield from _commands(sub, f"{path} {name}")


def test_cli_reference_lists_every_subcommand_and_option(site):
    import typer

    from deepworks.cli import app

    page = (site / "reference" / "cli" / "index.html").read_text()
    sections = _sections(page, r'<h\d id="cli-([\w-]+)"')
    commands = list(_commands(typer.main.get_command(app), "deepworks"))[1:]
    assert len(commands) >= 10
    for path, command in commands:
        anchor = "-".join(path.split()[1:])
        assert anchor in sections, f"the CLI reference has no section for `{path}`"
        shown = _text(sections[anchor])
        if command.help:
            assert " ".join(inspect.cleandoc(command.help).split())[:50] in shown, f"`{path}`: its help is not shown"
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            names = [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else [param.name]
            for name in names:
                assert name in shown, f"the CLI reference does not show {name} of `{path}`"


def _yaml_snippets() -> list:
    found = []
    for page in [*PAGES, ROOT / "README.md"]:
        text = page.read_text()
        for block in FENCE.finditer(text):
            if block.group(1) == "yaml":
                line = text[:block.start()].count("\n") + 1
                found.append(pytest.param(page, block.group(2), id=f"{page.relative_to(ROOT)}:{line}"))
    return found


@pytest.mark.parametrize("page,snippet", _yaml_snippets())
def test_every_yaml_snippet_is_a_valid_config(page, snippet, tmp_path, monkeypatch):
    """A ```yaml block is a config or part of one (a fragment gets the smallest data section); YAML that
    is not a config is fenced as ```text. A page's own modules (a ```python block opening with
    ``# NAME.py``) are importable, as the page tells the reader to make them."""
    raw = yaml.safe_load(snippet)
    assert isinstance(raw, dict), "a ```yaml snippet must be a mapping of config keys"
    if page.name == "concepts.md":  # its snippets are whole configs: save one as run.yaml and train it
        assert "data" in raw and "model" in raw
    for block in FENCE.finditer(page.read_text()):
        module = re.match(r"# (\w+)\.py\b", block.group(2))
        if block.group(1) == "python" and module:
            (tmp_path / f"{module.group(1)}.py").write_text(block.group(2))
            monkeypatch.syspath_prepend(str(tmp_path))
            monkeypatch.delitem(sys.modules, module.group(1), raising=False)
    cfg = load_config({"data": {"dataset": "digits"}, **raw})
    assert cfg.data is not None


def test_getting_started_python_runs_as_written(tmp_path, monkeypatch, capsys):
    """The page's ```python blocks, in order, in one namespace, in an empty folder (runs go to runs/)."""
    blocks = [b.group(2) for b in FENCE.finditer((DOCS / "getting-started.md").read_text()) if b.group(1) == "python"]
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/getting-started.md, python block {i}", "exec"), namespace)
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((run / "report.html").is_file() for run in runs)
    assert namespace["run"].summary["test"]["accuracy"] > 0.5


def test_readme_is_a_landing_page_whose_links_lead_somewhere():
    text = (ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text  # the two commands (CI and the first run use them)
    assert text.count("\n") <= 250
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"
