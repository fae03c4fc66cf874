"""The check before `hpclab up` says ready: the lab answers to its token and to nothing else.

The job makes Jupyter accept hpclab's session token only, whatever the user's Jupyter config
says (jobscript.SERVER_CONFIG). What hpclab cannot neutralize (a config file that patches
Jupyter's code, an identity provider that gets in some other way) would still leave the lab
open, so before it says ready hpclab asks through the tunnel as a stranger and as a web page
of another origin would, and stops the session when either gets anything.

    labcheck.check(port, token)   # raises UnsafeLabError naming what is open and what to change
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import apps
from .errors import UnsafeLabError
from .tunnel import request

# Authenticated, and not counted as activity by the idle shutdown.
PATH = "/api/status"
# A web page of another origin (.invalid never resolves: nothing is sent anywhere).
FOREIGN_ORIGIN = "http://hpclab-check.invalid"
REFUSED = (401, 403)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


Ask = Callable[[str, str, dict[str, str]], Answer]  # (method, path, headers) -> the lab's answer


def http_ask(port: int, timeout: float = 10.0) -> Ask:
    """Requests to the lab through the local forward on `port` (tunnel.request: only to a
    listener of this user's)."""
    def ask(method: str, path: str, headers: dict[str, str]) -> Answer:
        answer = request(port, method, path, headers, timeout)
        return Answer(answer[0], tuple(answer[1])) if answer else Answer(None)
    return ask


def problems(ask: Ask, token: str) -> list[str]:
    """What is open, in words; [] when a request without the token is refused and no answer
    lets a page of another origin read it."""
    found = []
    for what, path in (("without the token", PATH), ("with an empty token", PATH + "?token=")):
        answer = ask("GET", path, {})
        if answer.status not in REFUSED:
            got = f"HTTP {answer.status}" if answer.status else "no answer"
            found.append(f"a request {what} got {got}, not 403")
    for what, method, headers in (
        ("request with the token", "GET", {"Authorization": f"token {token}", "Origin": FOREIGN_ORIGIN}),
        ("preflight", "OPTIONS", {"Origin": FOREIGN_ORIGIN, "Access-Control-Request-Method": "GET",
                                  "Access-Control-Request-Headers": "authorization"}),
    ):
        allowed = [v for v in ask(method, PATH, headers).header("Access-Control-Allow-Origin") if v.strip()]
        if allowed:
            found.append(f"a {what} from another origin ({FOREIGN_ORIGIN}) may read the answer "
                         f"(Access-Control-Allow-Origin: {allowed[0]})")
    return found


HINT = (
    "something in the Jupyter setup on the cluster turns authentication or origin checks off in a way "
    "hpclab cannot undo: look in ~/.jupyter/jupyter_server_config.py and .json, jupyter_lab_config.*, "
    "the directories on JUPYTER_CONFIG_PATH and the files your setup lines or modules bring, for code "
    "that patches jupyter_server or sets a custom identity_provider_class, token, password or "
    "allow_origin; remove it (or start hpclab with a setup line that does not load it) and run "
    "`hpclab up` again"
)


def check(port: int, token: str, ask: Ask | None = None, app: str = apps.DEFAULT) -> None:
    """Raise UnsafeLabError when the lab behind `port` answers without `token` or lets another
    origin read its answers (an app that is no Jupyter: its own check, see hpclab/apps)."""
    the_app = apps.get(app)
    ask = ask or http_ask(port, the_app.check_timeout)
    found = the_app.problems(ask, token)
    if found is None:
        found = problems(ask, token)
    if found and the_app.secret_name != "token":
        raise UnsafeLabError(f"{the_app.title} does not hold to its {the_app.secret_name}, so hpclab stopped it: "
                             + "; ".join(found), hint=the_app.check_hint)
    if found:
        raise UnsafeLabError("the lab does not hold to its token, so hpclab stopped it: " + "; ".join(found),
                             hint=HINT)
