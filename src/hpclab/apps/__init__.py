"""What a session runs: JupyterLab, Jupyter Notebook 7 or code-server. One small module per
app holds its differences as data and a few functions; the job script, the probe, the lab
check and the browser ask it, nobody else knows an app by name.

    app = apps.get("code-server")
    app.socket_args, app.start(notebook_dir, extra_args)   # the job script's part
    app.probe(secret)                                     # the authenticated readiness request
    app.url(port, secret), app.open_page(url, secret)      # what the user opens
"""

from __future__ import annotations

from .base import App, Probe
from .code_server import CodeServer
from .jupyterlab import JupyterLab
from .notebook import Notebook

__all__ = ["APPS", "DEFAULT", "App", "Probe", "get", "names"]

APPS: dict[str, App] = {app.name: app for app in (JupyterLab(), Notebook(), CodeServer())}
DEFAULT = "jupyterlab"


def names() -> tuple[str, ...]:
    return tuple(APPS)


def get(name: str | None) -> App:
    """The app called `name` (None: the default); KeyError for an unknown one."""
    return APPS[name or DEFAULT]
