"""The bash script a job runs: private runtime dir, token file, the app, rendezvous file.

The script holds no secret: Jupyter reads the token from a 0600 file through
JUPYTER_TOKEN_FILE. When Jupyter has bound its socket or port it writes its server-info file
into the private runtime dir; the script then writes `rendezvous.json` (atomically) into the
session directory, which hpclab reads. Jupyter's log is never parsed. The part that starts
the app and waits until it listens is the app's (hpclab/apps): code-server makes its own 0600
config file from the token file and is ready when its socket exists (in tcp mode, when its own
process listens at the port the job chose).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from . import apps, envs
from .errors import ConfigError
from .schedulers import JobSpec, Scheduler
from .sessiondir import RENDEZVOUS_VERSION, SessionDir


@dataclass(frozen=True)
class JobOptions:
    session_id: str
    transport: str  # "socket" or "tcp"
    setup: tuple[str, ...] = ()
    notebook_dir: str | None = None
    idle_timeout: int = 3600
    env: tuple[tuple[str, str], ...] = ()
    environment: envs.Environment = field(default_factory=envs.Environment)  # modules, venv or conda: before the setup lines
    kernels: tuple[envs.Kernel, ...] = ()
    app: str = apps.DEFAULT


def shell_path(path: str) -> str:
    """Quote a cluster path for the job's shell, keeping a leading ~ meaning $HOME. A relative
    path that starts with '-' gets './' in front, so that `cd` cannot read it as an option."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    if path.startswith("-"):
        path = "./" + path
    return shlex.quote(path)


def jupyter_args(opts: JobOptions) -> list[str]:
    args = [
        "--no-browser",
        # Kernels talk over unix sockets in the private runtime dir, not TCP ports on the node.
        "--KernelManager.transport=ipc",
        # Only a local Host header (the tunnel's 127.0.0.1:PORT) is served: a web page whose name
        # resolves to 127.0.0.1 (DNS rebinding) is refused. Jupyter turns this check off by
        # itself when it listens on a non-loopback address, as in tcp mode.
        "--ServerApp.allow_remote_access=False",
    ]
    if opts.idle_timeout > 0:
        interval = max(10, min(60, opts.idle_timeout // 2))
        args += [
            f"--ServerApp.shutdown_no_activity_timeout={opts.idle_timeout}",
            f"--MappingKernelManager.cull_idle_timeout={opts.idle_timeout}",
            f"--MappingKernelManager.cull_interval={interval}",
            "--MappingKernelManager.cull_connected=False",
        ]
    return args


# hpclab's own jupyter_server config, written by the job after the setup lines into its private
# runtime dir, first on JUPYTER_CONFIG_PATH, with a first line `TOKEN_FILE = "<path>"`.
# Config files cannot be trusted to keep the lab closed: the user's (~/.jupyter, a module's, a
# setup line's JUPYTER_CONFIG_PATH) may set an empty token, a password, allow_origin '*',
# disable_check_xsrf, or tornado_settings, which override the server's own settings, and a
# subclass's config section wins over its parents'. So the identity provider enforces in code,
# when the server creates it (init_configurables: after every config file and the command line
# have been read, before the web application is built from these settings). Stock
# jupyter_server also trusts any web page that presents the token (no origin check, its Origin
# copied into Access-Control-Allow-Origin); here the token counts only from the lab's own
# origin or from a program that sends no Origin, so a page of another origin is not a token
# holder and gets the origin checks (and no CORS header) of everyone else.
SERVER_CONFIG = """\
import os
from urllib.parse import urlparse

from jupyter_server.auth.identity import PasswordIdentityProvider

# tornado_settings keys that override the server's own settings of the same name
HPCLAB_OVERRIDDEN = ("allow_origin", "allow_origin_pat", "allow_credentials", "disable_check_xsrf",
                     "xsrf_cookies", "allow_remote_access", "local_hostnames", "identity_provider",
                     "authenticate_prometheus", "cookie_secret")


def hpclab_foreign(handler):
    origin = handler.request.headers.get("Origin") or handler.request.headers.get("Sec-Websocket-Origin")
    return origin is not None and urlparse(origin.lower()).netloc != handler.request.headers.get("Host")


class HpclabIdentityProvider(PasswordIdentityProvider):
    \"\"\"hpclab's session token and nothing else, whatever the config files say.\"\"\"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        with open(TOKEN_FILE) as fh:
            token = fh.read()
        if len(token.strip()) < 32:
            raise ValueError("hpclab: the session token file is empty or short: " + TOKEN_FILE)
        self.token = token
        self.hashed_password = ""  # no password login
        self.password_required = False  # (would stop the server now that there is no password)
        self.allow_password_change = False  # the login page cannot set one either
        app = self.parent
        app.allow_origin = ""
        app.allow_origin_pat = ""
        app.allow_credentials = False
        app.disable_check_xsrf = False
        app.local_hostnames = ["localhost"]
        app.authenticate_prometheus = True  # /metrics too wants the token
        # a secret of this server alone signs its login cookies: one a config file sets (or a
        # cookie_secret_file kept between sessions) would let whoever knows it forge a login
        app.cookie_secret = os.urandom(32)
        settings = {k: v for k, v in app.tornado_settings.items() if k not in HPCLAB_OVERRIDDEN}
        headers = settings.get("headers") or {}
        settings["headers"] = {k: v for k, v in headers.items() if not k.lower().startswith("access-control-")}
        app.tornado_settings = settings

    async def get_user_token(self, handler):
        if hpclab_foreign(handler):
            return None  # a web page of another origin that presents the token gets nothing for it
        return await super().get_user_token(handler)


c.ServerApp.identity_provider_class = HpclabIdentityProvider
"""


BODY = r"""
# hpclab session {session_id}: generated by hpclab; no secret is written in this file.
umask 077
HPCLAB_SESSION={session_id}
HPCLAB_DIR="$HOME/{session_dir}"
HPCLAB_JOB_ID="{job_id_var}"
hpclab_pid=
hpclab_timer=
hpclab_reason=exited

hpclab_write() {{  # atomic: readers see the whole file or none; 0600 whatever umask a setup line set
  ( umask 077 && printf '%s\n' "$2" > "$HPCLAB_DIR/.$1.tmp" ) 2>/dev/null && mv -f "$HPCLAB_DIR/.$1.tmp" "$HPCLAB_DIR/$1" 2>/dev/null
}}
hpclab_json() {{  # $1 as a JSON string, whatever it holds (a host name, $TMPDIR, a user name)
  local s=$1 out= c i
  for (( i = 0; i < ${{#s}}; i++ )); do
    c=${{s:i:1}}
    case $c in
      \\) out+='\\' ;;
      \") out+='\"' ;;
      [[:cntrl:]]) printf -v c '\\u%04x' "'$c"; out+=$c ;;
      *) out+=$c ;;
    esac
  done
  printf '"%s"' "$out"
}}
hpclab_stop() {{
  hpclab_reason=$1
  if [ -n "$hpclab_pid" ]; then kill -TERM "$hpclab_pid" 2>/dev/null; else exit "$2"; fi
}}
hpclab_end() {{
  hpclab_rc=$?
  trap - ERR
  if [ -n "$hpclab_timer" ]; then kill "$hpclab_timer" 2>/dev/null; fi
  rm -rf "$hpclab_runtime"
  hpclab_write {ended} "{{\"reason\": \"$hpclab_reason\", \"exit_code\": $hpclab_rc}}"
}}
trap 'hpclab_stop timelimit 0' USR1
trap 'hpclab_stop cancelled 143' TERM
trap 'hpclab_stop cancelled 130' INT
trap 'hpclab_stop cancelled 129' HUP

hpclab_runtime=$(mktemp -d "${{TMPDIR:-/tmp}}/hpclab-$HPCLAB_SESSION.XXXXXX") || exit 1
trap hpclab_end EXIT
hpclab_write {started} "$(hostname)"
{timer}{env}{environment}
# --- setup lines from the profile ---
trap 'echo "hpclab: a setup line failed with status $?: $BASH_COMMAND" >&2' ERR
set -e
{setup}
set +e
trap - ERR
# --- end of setup lines ---

# What the job sets for safety comes after the setup lines, so that none of them can undo it:
# no token, config switch or runtime dir of theirs reaches Jupyter. JUPYTER_NO_CONFIG would
# drop the config path below, JUPYTER_ALLOW_INSECURE_WRITES Jupyter's own mode checks.
unset XDG_RUNTIME_DIR JUPYTER_PORT JUPYTER_TOKEN JUPYTER_NO_CONFIG JUPYTER_ALLOW_INSECURE_WRITES
export JUPYTER_RUNTIME_DIR="$hpclab_runtime"
export JUPYTER_TOKEN_FILE="$HPCLAB_DIR/{token}"
# hpclab's own server config, first on the config path (its sections win over those of the
# user's files, ~/.jupyter included): see SERVER_CONFIG in hpclab's jobscript.py.
( umask 077 && mkdir "$hpclab_runtime/config" && {{
  printf 'TOKEN_FILE = %s\n' "$(hpclab_json "$JUPYTER_TOKEN_FILE")"
  cat <<'HPCLAB_CONFIG'
{server_config}HPCLAB_CONFIG
}} > "$hpclab_runtime/config/jupyter_server_config.py" ) || exit 1
export JUPYTER_CONFIG_PATH="$hpclab_runtime/config${{JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}}"
{kernels}
{start}
hpclab_write {rendezvous} "{{\"version\": {version}, \"session\": \"$HPCLAB_SESSION\", \"job_id\": $(hpclab_json "$HPCLAB_JOB_ID"), \"node\": $(hpclab_json "$(hostname)"), \"user\": $(hpclab_json "$(id -un)"), \"transport\": \"$hpclab_mode\", \"address\": $(hpclab_json "$hpclab_addr"), \"port\": ${{hpclab_port:-0}}, \"socket\": $(hpclab_json "$hpclab_sock"), \"pid\": $hpclab_pid, \"runtime_dir\": $(hpclab_json "$hpclab_runtime"), \"jupyter_server\": $(hpclab_json "$hpclab_jupyter_server"), \"app\": \"{app}\", \"app_version\": $(hpclab_json "$hpclab_version")}}"

while :; do
  wait "$hpclab_pid"; hpclab_rc=$?
  kill -0 "$hpclab_pid" 2>/dev/null || break
done
exit "$hpclab_rc"
"""

LISTEN_SOCKET = """hpclab_mode=socket
hpclab_addr=
hpclab_sock="$hpclab_runtime/{socket_name}"
hpclab_listen=({socket_args})"""

# The node's own address: the name the login node knows it by, never a wildcard.
LISTEN_TCP = """hpclab_mode=tcp
hpclab_sock=
hpclab_addr=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk '$1 !~ /^127\\./ {print $1; exit}')
if [ -z "$hpclab_addr" ]; then hpclab_addr=$(hostname -I 2>/dev/null | awk '{print $1}'); fi
if [ -z "$hpclab_addr" ]; then echo "hpclab: cannot find this node's address" >&2; exit 1; fi
hpclab_listen=({tcp_args})"""

# transport "auto": hpclab tries SSH to this node while the job starts and writes the
# answer into the `listen` file; without an answer in 60 s the job falls back to tcp.
LISTEN_AUTO = """hpclab_mode=tcp
hpclab_i=0
while [ "$hpclab_i" -lt 600 ]; do
  if [ -s "$HPCLAB_DIR/{listen}" ]; then hpclab_mode=$(cat "$HPCLAB_DIR/{listen}"); break; fi
  sleep 0.1 2>/dev/null || sleep 1
  hpclab_i=$((hpclab_i + 1))
done
if [ "$hpclab_mode" = socket ]; then
{socket}
else
{tcp}
fi"""

# For schedulers that send no signal before the time limit, the job keeps its own clock.
TIMER = """( sleep {delay} && kill -USR1 $$ ) >/dev/null 2>&1 &
hpclab_timer=$!
"""


def render(scheduler: Scheduler, spec: JobSpec, opts: JobOptions, template: str | None = None) -> str:
    """The whole job script for `scheduler`. `template`, if given, is a site's own script
    with a `{body}` placeholder and, usually, `{directives}`; other braces (bash's ${VAR},
    functions) are left as they are."""
    sdir = SessionDir(opts.session_id)
    app = apps.get(opts.app)
    socket = LISTEN_SOCKET.replace("{socket_name}", app.socket_name).replace("{socket_args}", app.socket_args)
    tcp = LISTEN_TCP.replace("{tcp_args}", app.tcp_args)
    listen = {
        "socket": socket,
        "tcp": tcp,
        "auto": LISTEN_AUTO.format(socket=_indent(socket), tcp=_indent(tcp), listen=sdir.listen),
    }[opts.transport]
    timer = ""
    if not scheduler.signals_before_end:
        timer = TIMER.format(delay=max(1, spec.time - spec.signal_before))
    env = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in opts.env)
    body = BODY.format(
        session_id=opts.session_id,
        session_dir=sdir.path,
        token=sdir.token,
        started=sdir.started,
        rendezvous=sdir.rendezvous,
        ended=sdir.ended,
        version=RENDEZVOUS_VERSION,
        job_id_var=scheduler.job_id_var,
        timer=timer,
        env=env,
        environment=envs.job_environment(opts.environment),
        kernels=envs.job_kernels(opts.kernels),
        setup="\n".join(opts.setup) if opts.setup else ":",
        server_config=SERVER_CONFIG,
        start=app.start(
            notebook_dir=shell_path(opts.notebook_dir) if opts.notebook_dir else '"$HOME"', listen=listen,
            extra_args=" ".join(shlex.quote(a) for a in jupyter_args(opts)), secret_file=f'"$HPCLAB_DIR/{sdir.token}"',
        ),
        app=app.name,
    )
    directives = "\n".join(scheduler.directives(spec))
    if template is None:
        return f"#!/bin/bash\n{directives}\n{body}"
    if "{body}" not in template:
        raise ConfigError("the job script template has no {body} placeholder",
                          hint="put {body} where hpclab's part of the script goes, and {directives} "
                               "where the scheduler directives go")
    # One pass, so that a {directives} inside the body or the directives is not replaced again.
    return re.sub(r"\{(directives|body)\}", lambda m: directives if m.group(1) == "directives" else body, template)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def read_template(path: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the job script template {path}: {exc.strerror}") from None
