"""deepworks as an installed package: its version, shell completion, the example configs that ship
inside it, and the wheel installed into a fresh virtual environment outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli_in_process import refused, run
from deepworks.cli import main
from deepworks.pipeline import prepare_data
from deepworks.version import __version__

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"  # the repository's path of the shipped configs (a link into the package)


def test_version_option_prints_the_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out == f"deepworks {__version__}\n"


def test_the_command_line_starts_without_torch_and_the_public_names_load_on_use():
    """`import deepworks.cli` (every command, --version, each completion TAB) imports no torch; the public
    names of deepworks load on first use and are the objects their modules define."""
    code = ("import sys, deepworks.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "import deepworks; assert set(deepworks.__all__) <= set(dir(deepworks)); "
            "assert 'torch' not in sys.modules; "
            "from deepworks.front import train; from deepworks.reporting import write_report; "
            "assert deepworks.train is train and deepworks.report is write_report; "
            "import deepworks.evaluation.metrics as m; assert deepworks.evaluation.metrics is m; "
            "assert callable(deepworks.evaluate) and all(getattr(deepworks, n) is not None for n in deepworks.__all__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        import deepworks

        deepworks.no_such_name  # noqa: B018


def test_bash_completion_installs_and_completes(tmp_path, monkeypatch, capsys):
    """`deepworks --install-completion` writes a script that bash loads for `deepworks`; on TAB the script
    runs `deepworks` with the words typed in $COMP_WORDS, which answers with the completions."""
    monkeypatch.setenv("HOME", str(tmp_path))
    # the shell is named rather than found from the process tree, which depends on what runs the tests
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    with pytest.raises(SystemExit) as done:
        main(["--install-completion", "bash"])
    assert done.value.code == 0 and "bash completion installed" in capsys.readouterr().out
    loaded = subprocess.run(["bash", "-c", "source ~/.bashrc && complete -p deepworks && type _deepworks_completion"],
                            capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=60)
    assert loaded.returncode == 0 and "-F _deepworks_completion deepworks" in loaded.stdout, loaded.stdout + loaded.stderr
    assert "_DEEPWORKS_COMPLETE=complete_bash" in loaded.stdout  # what the function sets before running deepworks

    for words, cword, expected in (("deepworks l", "1", ["lab", "lr-find"]), ("deepworks examples quick", "2", ["quickstart"])):
        monkeypatch.setenv("_DEEPWORKS_COMPLETE", "complete_bash")
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", cword)
        with pytest.raises(SystemExit):
            main([])
        assert sorted(capsys.readouterr().out.split()) == expected


def test_examples_lists_every_shipped_config_with_its_first_comment(capsys):
    code, out, _ = run(["examples"], capsys)
    assert code == 0
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert len(names) >= 10 and all(name in out for name in names)
    first = (CONFIGS / "quickstart.yaml").read_text().splitlines()[0].removeprefix("# ")  # one sentence, one line
    assert " ".join(first.split()) in " ".join(out.replace("│", " ").split())


def test_examples_prints_the_path_of_the_shipped_config(capsys):
    code, out, _ = run(["examples", "quickstart"], capsys)
    path = Path(out.strip())
    assert code == 0 and path.is_absolute() and path.parent.parent.name == "examples"
    assert path.read_bytes() == (CONFIGS / "quickstart.yaml").read_bytes()
    refused(["examples", "quickstrat"], capsys, "unknown example 'quickstrat'", "Did you mean 'quickstart'?")


def test_a_copied_example_takes_its_data_and_reads_it_from_its_folder(tmp_path, monkeypatch, capsys):
    """penguins.yaml reads examples/data/penguins.csv relative to the working folder: the copy brings
    it along, training from the copy's folder works, and a second copy overwrites nothing."""
    import deepworks

    code, out, _ = run(["examples", "penguins", "--copy", tmp_path / "mine"], capsys)
    copied = tmp_path / "mine" / "penguins.yaml"
    assert code == 0 and f"cd {tmp_path / 'mine'} && deepworks train penguins.yaml" in " ".join(out.split())
    assert copied.read_bytes() == (CONFIGS / "penguins.yaml").read_bytes()
    data = yaml.safe_load(copied.read_text())["data"]["path"]
    assert (tmp_path / "mine" / data).read_bytes() == (ROOT / data).read_bytes()

    monkeypatch.chdir(tmp_path / "mine")  # where the printed command trains it: its data is read from there
    prepared = prepare_data(deepworks.load_config("penguins.yaml"))
    assert sum(prepared.info["sizes"].values()) == len(pd.read_csv(tmp_path / "mine" / data)) == 344

    copied.write_text("# my edits\n")
    refused(["examples", "penguins", "--copy", "."], capsys, "penguins.yaml exists already and is not overwritten",
            "Fix:", one_line=True)
    assert copied.read_text() == "# my edits\n"


def done(*args, **popen) -> str:
    """The standard output of a command that must succeed (its output is the failure's message)."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **popen)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_trains_the_quickstart(tmp_path):
    """The wheel, built from the working tree, installed with pip into a new virtual environment outside
    the repository; from an empty folder: `deepworks --version`, the quickstart copied from `deepworks
    examples` and trained, and the installed distribution's license and metadata. The new environment
    takes torch and the other dependencies from the test environment's site-packages (a .pth file), so
    nothing is downloaded or installed twice; deepworks itself comes from the wheel alone."""
    source = tmp_path / "source"  # a copy: the build's build/ and egg-info stay out of the repository
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    done(sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", source)
    wheel, = (tmp_path / "dist").glob("deepworks-*.whl")

    venv = tmp_path / "venv"
    done(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(done(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    # the test environment's packages, after the venv's own (a path line: .pth files there, such as an
    # editable install's path to the repository's src, are not read)
    (site / "test-environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    done(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"

    def user(*args):
        return done(*args, cwd=work, env=env)

    assert user("deepworks", "--version") == f"deepworks {__version__}\n"
    # one interpreter for the installed metadata and `deepworks examples quickstart --copy` (the same command
    # as the console script runs: an interpreter start fewer)
    installed = json.loads(user(python, "-c", """if True:
        import contextlib, importlib.metadata as md, io, json
        import deepworks
        from deepworks.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["examples", "quickstart", "--copy"]) == 0
        dist = md.distribution("deepworks")
        meta = dist.metadata
        print(json.dumps({"file": deepworks.__file__, "version": meta["Version"], "license": meta["License-Expression"],
                          "author": meta["Author"],
                          "license_file": str(dist.locate_file(next(f for f in dist.files if f.name == "LICENSE"))),
                          "scripts": [e.name for e in dist.entry_points if e.group == "console_scripts"]}))"""))
    assert Path(installed["file"]).is_relative_to(site), installed  # the wheel's files, not the repository's
    assert installed["version"] == __version__ and installed["license"] == "MIT"
    assert installed["author"] == "The deepworks authors" and installed["scripts"] == ["deepworks"]
    assert Path(installed["license_file"]).read_text() == (ROOT / "LICENSE").read_text()

    assert (work / "quickstart.yaml").read_bytes() == (CONFIGS / "quickstart.yaml").read_bytes()
    user("deepworks", "train", "quickstart.yaml", "--set", "train.epochs=1", "--set", "train.progress=none",
         "--set", "report=false")
    summary = json.loads(next((work / "runs").glob("quickstart-*/summary.json")).read_text())
    assert summary["epochs_run"] == 1 and summary["test"]["accuracy"] > 0.2  # ten digit classes
    assert summary["versions"]["deepworks"] == __version__
