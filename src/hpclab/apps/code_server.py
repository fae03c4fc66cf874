"""code-server (VS Code in the browser): password login with the session's secret as password.

The password travels like Jupyter's token (SSH stdin -> the session dir's 0600 token file).
The job writes code-server's config file, 0600 in the private runtime dir, with the SHA-256 of
the password as `hashed-password` (code-server's legacy hash method): the password itself is
written nowhere else, and the same hash is what code-server's session cookie holds once the
password was given, so hpclab's probe presents the cookie and never the login form (whose rate
limiter a stranger could drain). With its own --config, code-server neither reads nor creates
~/.config/code-server/config.yaml; user data and extensions stay in the user's usual dirs.

Listens on a 0600 unix socket in the private runtime dir, or in tcp mode on the node's own
address (never a wildcard) at a port the job chooses: code-server reports the port it bound
nowhere but its log, so the job picks a port no socket of the node uses (the kernel's tables),
passes --bind-addr ADDR:PORT, and counts code-server as ready only when the listening socket at
ADDR:PORT is one of code-server's own (its inode among the fds of code-server's processes): a
port another user took in between is retried, a few times, with another one. In tcp mode the
password login is what keeps other cluster users out. Idleness: code-server 4.100 has no idle
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
hpclab_jupyter_server=
hpclab_port=
hpclab_try=0
while :; do
  if [ "$hpclab_mode" = tcp ]; then
    hpclab_cs_tcp_port || exit 1
    hpclab_listen=(--bind-addr "$hpclab_addr:$hpclab_port")
  fi
  # `command`: the code-server program on PATH, never a shell function a setup line defined.
  command code-server --config "$hpclab_config" --disable-telemetry --disable-update-check "${{hpclab_listen[@]}}" . &
  hpclab_pid=$!
  # Ready when its socket exists (code-server makes it when it listens), or in tcp mode when
  # the listener at ADDR:PORT is code-server's own.
  hpclab_state=wait
  while :; do
    if [ "$hpclab_mode" = tcp ]; then hpclab_cs_tcp_state; elif [ -S "$hpclab_sock" ]; then hpclab_state=ours; fi
    [ "$hpclab_state" = ours ] && break
    if [ "$hpclab_state" = foreign ]; then kill -TERM "$hpclab_pid" 2>/dev/null; fi
    if [ "$hpclab_state" = foreign ] || ! kill -0 "$hpclab_pid" 2>/dev/null; then
      wait "$hpclab_pid"; hpclab_rc=$?
      hpclab_pid=
      if [ "$hpclab_mode" = tcp ]; then hpclab_cs_tcp_state; fi
      break
    fi
    sleep 0.1 2>/dev/null || sleep 1
  done
  [ "$hpclab_state" = ours ] && break
  if [ "$hpclab_state" = foreign ] && [ "$hpclab_try" -lt 5 ]; then
    echo "hpclab: port $hpclab_port of $hpclab_addr was taken before code-server listened on it; trying another" >&2
    continue
  fi
  if [ "$hpclab_state" = foreign ]; then
    echo "hpclab: code-server could not listen on $hpclab_addr: $hpclab_try ports in a row were taken by another program; try again" >&2
    exit 1
  fi
  echo "hpclab: code-server exited with status $hpclab_rc before it was ready" >&2
  exit "$hpclab_rc"
done"""

# transport tcp: the node's own address (LISTEN_TCP's, never a wildcard), a port that no socket
# of the node uses, and the test that the listener there is code-server's: bash cannot bind, so
# the kernel's socket tables stand in for a bind test, and a port taken in between is retried.
TCP = r"""hpclab_cs_hex() {{  # an IPv4 address as /proc/net/tcp prints it on a little-endian node
  local IFS=.
  set -- $1
  printf '%02X%02X%02X%02X' "$4" "$3" "$2" "$1"
}}
hpclab_cs_tcp_port() {{
  case $hpclab_addr in
    *[!0-9.]*|''|0.0.0.0|127.*) echo "hpclab: code-server needs this node's own IPv4 address in transport tcp, not '$hpclab_addr'" >&2; return 1 ;;
  esac
  local lo=32768 hi=60999 used
  read -r lo hi 2>/dev/null < /proc/sys/net/ipv4/ip_local_port_range
  [ "$((hi))" -gt "$((lo))" ] 2>/dev/null || {{ lo=32768; hi=60999; }}
  hpclab_try=$((hpclab_try + 1))
  while :; do
    hpclab_port=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
    used=$(awk -v p="$(printf ':%04X' "$hpclab_port")" 'NR > 1 && substr($2, length($2) - 4) == p {{print "used"; exit}}' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    [ -z "$used" ] && return 0
  done
}}
# (an IPv6 listener on the port, [::] say, keeps code-server's bind from working: another program's)
hpclab_cs_tcp_state() {{  # hpclab_state: ours (code-server listens at ADDR:PORT), foreign (another program does), wait
  local inode fd pid
  inode=$(awk -v a="$(hpclab_cs_hex "$hpclab_addr")" -v b="$(printf '%02X%02X%02X%02X' ${{hpclab_addr//./ }})" \
    -v p="$(printf '%04X' "$hpclab_port")" \
    'FNR > 1 && $4 == "0A" && ($2 == a ":" p || $2 == b ":" p || $2 == "00000000:" p || (FILENAME ~ /6$/ && $2 ~ ":" p "$")) {{print $10; exit}}' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  hpclab_state=wait
  [ -n "$inode" ] || return 0
  hpclab_state=foreign
  [ -n "$hpclab_pid" ] || return 0
  # Only this user's processes' fds are readable: a socket found there belongs to a process of
  # the user, which must also be code-server or one of its children.
  for fd in /proc/[0-9]*/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ] || continue
    pid=${{fd#/proc/}}; pid=${{pid%%/*}}
    while [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
      if [ "$pid" = "$hpclab_pid" ]; then hpclab_state=ours; return 0; fi
      pid=$(awk '{{sub(/^.*\) /, ""); print $2}}' "/proc/$pid/stat" 2>/dev/null)
    done
  done
  return 0
}}
"""

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
    tcp_args = ""  # the start part chooses the port and sets --bind-addr ADDR:PORT (TCP above)
    idle = ("none: code-server 4.100 has no idle timeout and counts hpclab's own probe as activity; the "
            "session lasts until its time limit or `hpclab stop`")
    # The first request for / loads VS Code's server before code-server looks at the login.
    check_timeout = 60.0
    check_hint = ("the code-server on the cluster serves without hpclab's password, though hpclab gives it its "
                  "own config file: look for a code-server wrapper, module or setup line that adds --auth none "
                  "or other options, and run `hpclab up` again without it")

    def start(self, notebook_dir: str, listen: str, extra_args: str, secret_file: str) -> str:
        return TCP.format() + START.format(notebook_dir=notebook_dir, listen=listen, secret_file=secret_file)

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
