"""The command line run in the test's own process (``deepworks.cli.main``), for tests that check
what it prints and its exit status: imported by the test modules beside this file."""

from __future__ import annotations

from deepworks.cli import main


def run(args, capsys):
    """Exit status, standard output, and standard error with its whitespace folded to single spaces."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())


def refused(args, capsys, *needles, one_line=False):
    """Standard error of a refused command: exit 2, an ``error:`` line and no traceback, holding every
    needle (and, with ``one_line``, a single line)."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    out, err = captured.out, " ".join(captured.err.split())
    assert code == 2, out + err
    assert "Traceback" not in err and err.startswith("error:"), err
    if one_line:  # on the standard error as printed, before its whitespace is folded
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    for needle in needles:
        assert needle in err, err
    return err
