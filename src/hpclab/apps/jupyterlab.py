"""JupyterLab (`jupyter lab`): the token from hpclab's private config (jobscript.SERVER_CONFIG),
ready when Jupyter Server has written its server-info file, idle when no kernel, terminal or
request has been busy for idle_timeout (Jupyter Server's own culling and shutdown)."""

from __future__ import annotations

from .base import App, Probe

START = r"""if ! command -v jupyter >/dev/null 2>&1; then
  echo "hpclab: 'jupyter' is not on PATH; give the profile modules, venv or conda that provide it, or a setup line (source .../bin/activate)" >&2
  exit 127
fi
{check}cd {notebook_dir} || {{ echo "hpclab: cannot enter the notebook directory" >&2; exit 1; }}

{listen}
# `command`: the jupyter program on PATH, never a shell function a setup line defined.
command jupyter {subcommand} {jupyter_args} "${{hpclab_listen[@]}}" &
hpclab_pid=$!

# Ready when Jupyter has written its server-info file (it binds in its event loop's first callback,
# right after: the readiness probe through the tunnel waits for that). Looked for every 0.02 s: the
# lab is ready for the user the moment this loop sees it.
hpclab_port=
hpclab_version=
while [ -z "$hpclab_version" ]; do
  if ! kill -0 "$hpclab_pid" 2>/dev/null; then
    wait "$hpclab_pid"; hpclab_rc=$?
    echo "hpclab: jupyter exited with status $hpclab_rc before it was ready" >&2
    exit "$hpclab_rc"
  fi
  sleep 0.02 2>/dev/null || sleep 1
  for hpclab_info in "$JUPYTER_RUNTIME_DIR"/jpserver-*.json; do
    [ -s "$hpclab_info" ] || continue
    # keys are sorted and "version" is the last one: once it is there the file is complete
    hpclab_version=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$hpclab_info")
    hpclab_port=$(sed -n 's/^ *"port": *\([0-9]*\).*/\1/p' "$hpclab_info")
  done
done
hpclab_jupyter_server=$hpclab_version"""


class JupyterLab(App):
    name = "jupyterlab"
    title = "JupyterLab"
    server = "Jupyter"
    subcommand = "lab"
    programs: tuple[str, ...] = ("jupyter",)
    path = "/lab"
    check = ""  # bash run before the start, after `jupyter` was found
    socket_name = "jupyter.sock"
    socket_args = '--ServerApp.sock="$hpclab_sock" --ServerApp.sock_mode=0600'
    tcp_args = '--ServerApp.ip="$hpclab_addr" --ServerApp.port=0 --ServerApp.port_retries=0'
    idle = ("Jupyter Server's own: kernels idle for idle_timeout are culled, and the server shuts down "
            "after idle_timeout without kernels, terminals or requests")

    def start(self, notebook_dir: str, listen: str, extra_args: str, secret_file: str) -> str:
        return START.format(check=self.check, notebook_dir=notebook_dir, listen=listen,
                            subcommand=self.subcommand, jupyter_args=extra_args)

    def probe(self, secret: str) -> Probe:
        # /api/status does not count as activity for the idle shutdown.
        return Probe("GET", "/api/status", {"Authorization": f"token {secret}"}, 200)

    def url(self, port: int, secret: str | None = None) -> str:
        return f"http://127.0.0.1:{port}{self.path}" + (f"?token={secret}" if secret else "")
