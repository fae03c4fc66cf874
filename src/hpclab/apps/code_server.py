"""code-server (VS Code in the browser): password login with the session's secret as password.

The password travels like Jupyter's token (SSH stdin -> the session dir's 0600 token file).
The job writes code-server's config file, 0600 in the private runtime dir, with the SHA-256 of
the password as `hashed-password` (code-server's legacy hash method): the password itself is
written nowhere else, and the same hash is what code-server's session cookie holds once the
password was given, so hpclab's probe presents the cookie and never the login form (whose rate
limiter a stranger could drain). With its own --config, code-server neither reads nor creates
~/.config/code-server/config.yaml; user data and extensions stay in the user's usual dirs.

Listens on a 0600 unix socket in the private runtime dir only: code-server reports the port it
bound nowhere but its log, so transport tcp is refused. Idleness: code-server 4.100 has no idle
timeout, and every request (hpclab's own probe included) counts as activity in its heartbeat,
so hpclab does not stop an idle code-server; the session lasts until its time limit or `stop`.
"""

from __future__ import annotations

import hashlib
import html

from .base import App, Ask, Probe

COOKIE = "code-server-session"

START = r"""if ! command -v code-server >/dev/null 2>&1; then
  echo "hpclab: 'code-server' is not on PATH; give the profile modules that provide it (modules = [\"code-server\"]) or a setup line" >&2
  exit 127
fi
# code-server takes a password from PASSWORD or HASHED_PASSWORD over its config file, a config
# file from CODE_SERVER_CONFIG, an address from CODE_SERVER_HOST and PORT: none of a setup line's.
unset PASSWORD HASHED_PASSWORD CODE_SERVER_CONFIG CODE_SERVER_HOST PORT
hpclab_n=$(wc -c < {secret_file}) || exit 1
if [ "$((hpclab_n))" -lt 32 ]; then echo "hpclab: the session password file is empty or short" >&2; exit 1; fi
hpclab_hash=$(sha256sum < {secret_file}) || exit 1
hpclab_config="$hpclab_runtime/code-server.yaml"
( umask 077 && printf 'auth: password\nhashed-password: "%s"\ncert: false\n' "${{hpclab_hash%% *}}" > "$hpclab_config" ) || exit 1
hpclab_hash=
# (with a --config of its own, even --version would write a config file with a password of its making)
hpclab_version=$(command code-server --config "$hpclab_config" --version 2>/dev/null | awk 'NR == 1 {{print $1}}')
cd {notebook_dir} || {{ echo "hpclab: cannot enter the notebook directory" >&2; exit 1; }}

{listen}
# `command`: the code-server program on PATH, never a shell function a setup line defined.
command code-server --config "$hpclab_config" --disable-telemetry --disable-update-check "${{hpclab_listen[@]}}" . &
hpclab_pid=$!

# Ready when its socket exists: code-server makes it when it listens.
hpclab_port=
hpclab_jupyter_server=
while [ ! -S "$hpclab_sock" ]; do
  if ! kill -0 "$hpclab_pid" 2>/dev/null; then
    wait "$hpclab_pid"; hpclab_rc=$?
    echo "hpclab: code-server exited with status $hpclab_rc before it was ready" >&2
    exit "$hpclab_rc"
  fi
  sleep 0.1 2>/dev/null || sleep 1
done"""

LOGIN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>hpclab</title></head><body>
<form method="post" action="{action}"><input type="hidden" name="password" value="{password}">
<noscript><button type="submit">Log in to code-server</button></noscript></form>
<script>document.forms[0].submit()</script></body></html>
"""


def session_cookie(password: str) -> str:
    """What code-server's session cookie holds once `password` was given (hashed-password, SHA-256)."""
    return hashlib.sha256(password.encode()).hexdigest()


class CodeServer(App):
    name = "code-server"
    title = "code-server"
    server = "code-server"
    secret_name = "password"
    programs = ("code-server",)
    jupyter_server = False
    # without a --config of its own, even `code-server --version` writes ~/.config/code-server/config.yaml
    # with a password in it
    version_args = ("--config", "/dev/null", "--version")
    socket_name = "code-server.sock"
    socket_args = '--socket "$hpclab_sock" --socket-mode 600'
    tcp_args = None
    idle = ("none: code-server 4.100 has no idle timeout and counts hpclab's own probe as activity; the "
            "session lasts until its time limit or `hpclab stop`")
    # The first request for / loads VS Code's server before code-server looks at the login.
    check_timeout = 60.0
    check_hint = ("the code-server on the cluster serves without hpclab's password, though hpclab gives it its "
                  "own config file: look for a code-server wrapper, module or setup line that adds --auth none "
                  "or other options, and run `hpclab up` again without it")

    def start(self, notebook_dir: str, listen: str, extra_args: str, secret_file: str) -> str:
        return START.format(notebook_dir=notebook_dir, listen=listen, secret_file=secret_file)

    def probe(self, secret: str) -> Probe:
        # The login page sends a logged-in browser on (302) and shows the form to anyone else
        # (200); it loads nothing of VS Code and writes no setting.
        return Probe("GET", "/login", {"Cookie": f"{COOKIE}={session_cookie(secret)}"}, 302)

    def url(self, port: int, secret: str | None = None) -> str:
        return f"http://127.0.0.1:{port}/"

    def open_page(self, port: int, secret: str) -> str:
        action = html.escape(self.url(port) + "login", quote=True)
        return LOGIN_PAGE.format(action=action, password=html.escape(secret, quote=True))

    def problems(self, ask: Ask, secret: str) -> list[str]:
        found = []
        wrong = session_cookie(secret + "-not-it")
        for what, headers in (("without the password", {}),
                              ("with a wrong session cookie", {"Cookie": f"{COOKIE}={wrong}"})):
            answer = ask("GET", "/", headers)
            location = " ".join(answer.header("Location"))
            if answer.status != 302 or "login" not in location:
                got = f"HTTP {answer.status}" if answer.status else "no answer"
                found.append(f"a request for / {what} got {got}, not the redirect to the login page")
        return found
