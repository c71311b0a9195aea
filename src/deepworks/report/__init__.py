"""Reports on runs: ``compare.py`` (several runs side by side, a self-contained compare.html)."""
