"""The example configs, shipped inside the package so that an installed deepworks has them too
(``deepworks examples``): ``configs/`` holds one YAML per capability, ``data/`` the small data files
some of them read. A config names such a file by a path relative to the working folder
(``examples/data/penguins.csv``), as in the repository, whose ``examples/configs`` and
``examples/data`` are these folders; a copied example takes its data files with it.

>>> from deepworks.examples import example_path
>>> example_path("quickstart").name
'quickstart.yaml'
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from deepworks.errors import ConfigError, UnknownNameError

CONFIGS = Path(__file__).parent / "configs"
DATA = Path(__file__).parent / "data"
DATA_PREFIX = "examples/data/"  # how a config names a file of DATA (relative to the working folder)

__all__ = ["list_examples", "example_path", "copy_example"]


def list_examples() -> list[dict[str, Any]]:
    """Every example: its name, a one-sentence description (from the config's first comment) and its path."""
    return [{"name": path.stem, "description": _description(path), "path": str(path)}
            for path in sorted(CONFIGS.glob("*.yaml"))]


def example_path(name: str) -> Path:
    """The installed path of the example config ``name`` (``quickstart``, or ``quickstart.yaml``)."""
    stem = name.removesuffix(".yaml")
    path = CONFIGS / f"{stem}.yaml"
    if not path.is_file():
        raise UnknownNameError("example", name, [p.stem for p in CONFIGS.glob("*.yaml")], where="deepworks examples")
    return path


def copy_example(name: str, dest: str | Path | None = None) -> dict[str, Any]:
    """Copy the example ``name`` to ``dest``: a ``.yaml`` file, or a folder (made if missing) that
    gets ``<name>.yaml``; default ``./<name>.yaml``. The data files the config reads
    (``examples/data/...``) are copied to the same relative path under the config's folder, the
    folder to train it from. Nothing is overwritten: an existing config, or a data file that is
    not the shipped one, stops the copy before anything is written. Returns ``{"config": path, "data": [paths], "folder": path}``."""
    source = example_path(name)
    dest = Path(dest) if dest is not None else Path(source.name)
    target = dest if dest.suffix.lower() in (".yaml", ".yml") else dest / source.name
    folder = target.parent
    copies = [(source, target)] + [(DATA / rel.removeprefix(DATA_PREFIX), folder / rel) for rel in _data_files(source)]
    for i, (src, dst) in enumerate(copies):  # a data file already there as shipped (another example's) is kept
        if dst.exists() and (i == 0 or not (dst.is_file() and dst.read_bytes() == src.read_bytes())):
            raise ConfigError(f"deepworks examples {source.stem} --copy: {dst} exists already and is not overwritten. "
                              f"Fix: remove it, or copy to another place (deepworks examples {source.stem} --copy DEST).")
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return {"config": target, "data": [dst for _, dst in copies[1:]], "folder": folder}


def _data_files(config: Path) -> list[str]:
    """The files of DATA that ``config`` reads, as it names them (``examples/data/penguins.csv``)."""
    path = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("path")
    return [path] if isinstance(path, str) and path.startswith(DATA_PREFIX) else []


def _description(config: Path) -> str:
    """The first sentence of the comment that opens ``config``, or, past a table row's width, its first line."""
    lines = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    end = re.search(r"\.(\s|$)", text)
    sentence = text[: end.start() + 1] if end else text
    return sentence if len(sentence) <= 120 or not lines else lines[0] + " ..."
