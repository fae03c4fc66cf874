"""Jupyter Notebook 7 (`jupyter notebook`): a Jupyter Server application like JupyterLab, so
the same private config, token, socket, readiness and idle shutdown; it opens on /tree."""

from __future__ import annotations

from .jupyterlab import JupyterLab


class Notebook(JupyterLab):
    name = "notebook"
    title = "Jupyter Notebook"
    subcommand = "notebook"
    programs = ("jupyter", "jupyter-notebook")
    path = "/tree"
    # `jupyter notebook` without Notebook installed says only "command not found": say what is missing.
    check = ('if ! command -v jupyter-notebook >/dev/null 2>&1; then\n'
             '  echo "hpclab: Jupyter Notebook is not installed where the setup lines put jupyter (no '
             'jupyter-notebook on PATH); install it there (pip install \'notebook>=7\') or use --app jupyterlab" >&2\n'
             '  exit 127\n'
             'fi\n')
