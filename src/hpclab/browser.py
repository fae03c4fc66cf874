"""Open the lab in the user's browser without putting the token on a command line. For an app
that logs in with a password (code-server) the private page submits it to the app's login."""

from __future__ import annotations

import html

from . import apps
from .paths import Paths, private_dir, write_private
from .state import SessionRecord


def open_lab(paths: Paths, rec: SessionRecord) -> bool:
    """Open the lab through a private local redirect file, as Jupyter itself does: the
    browser's command line then carries a file path, not the token. False when no browser
    could be started here."""
    import webbrowser  # slow to import; only `up` and `attach` need it

    if not rec.url or not rec.local_port:
        return False
    page = private_dir(paths.state_dir / "open") / f"{rec.id}.html"
    url = html.escape(rec.url, quote=True)
    login = apps.get(rec.app).open_page(rec.local_port, rec.token)
    write_private(page, login if login is not None else f'<!DOCTYPE html><html><head><meta charset="utf-8">'
                        f'<meta http-equiv="refresh" content="0;url={url}"><title>hpclab</title></head>'
                        f'<body><a href="{url}">Open JupyterLab</a></body></html>\n')
    try:
        return webbrowser.open(page.as_uri())
    except webbrowser.Error:
        return False
