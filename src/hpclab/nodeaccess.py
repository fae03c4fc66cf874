"""More ways into a running session's node: `forward` (one more port of the node to 127.0.0.1),
`ssh-config` (an OpenSSH Host block that reaches the node as hpclab does) and `code` (VS Code's
Remote-SSH on that block).

A forward goes through the connection the session already has: the node's own master when the
session has one (socket transport: the node's loopback is reachable), else the login master to
the node's address. What listens on the node port is the user's, and so is its security: hpclab
says so, and says who else can reach it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import hostkeys
from .errors import ConfigError, ForwardTaken, NotFoundError, RemoteError
from .paths import private_dir, write_private
from .remote import SAFE_OPTIONS, SshRemote
from .session import Context, find
from .sshconfig import _other_blocks, add_include, alias, block, has_include, include_line
from .state import SessionRecord
from .tunnel import Tunnel, free_local_port, port_free

log = logging.getLogger(__name__)

# -- what listens on a node port ------------------------------------------------------------

# One program for the node: the listening TCP sockets on port $1, as "ADDRESS UID" lines, from
# the kernel's tables (no ss or netstat needed). Addresses are hex, as the kernel writes them.
LISTENERS = ("for t in /proc/net/tcp /proc/net/tcp6; do [ -r $t ] && awk -v p=$(printf '%04X' \"$1\") "
             "'NR > 1 && $4 == \"0A\" { split($2, a, \":\"); if (a[2] == p) print a[1], $8 }' $t; done; true")

LOOPBACK = {"0100007F", "00000000000000000000000001000000"}
WILDCARD = {"00000000", "00000000000000000000000000000000"}


@dataclass(frozen=True)
class Listener:
    address: str  # "loopback", "any", or the address the kernel printed (hex)
    uid: int


def parse_listeners(text: str) -> list[Listener]:
    """LISTENERS' output -> listeners; lines that are not "HEX UID" are ignored (banners)."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) != 2 or not words[1].isdigit() or not all(c in "0123456789ABCDEF" for c in words[0]):
            continue
        kind = "loopback" if words[0] in LOOPBACK else "any" if words[0] in WILDCARD else words[0]
        found.append(Listener(kind, int(words[1])))
    return found


def hex_to_ipv4(text: str) -> str | None:
    """The kernel's little-endian hex IPv4 address -> dotted quad; None for IPv6."""
    if len(text) != 8:
        return None
    return ".".join(str(int(text[i:i + 2], 16)) for i in (6, 4, 2, 0))


# -- forward --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forwarded:
    record: SessionRecord
    node_port: int
    local_port: int
    target: str  # where the node end connects, as ssh's -L target
    warning: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/"


def forward(ctx: Context, session_id: str, node_port: int, local_port: int | None = None) -> Forwarded:
    """Forward 127.0.0.1:LOCAL to port `node_port` of the session's node, through the session's
    own connection; recorded, so that `list` shows it and `stop` removes it. Raises NotFoundError
    when nothing listens there, ForwardTaken when `local_port` is in use."""
    if not 1 <= node_port <= 65535:
        raise ConfigError(f"{node_port} is not a port number", hint="give the node's port, 1 to 65535")
    rec = find(ctx.store, session_id)
    if not rec.node or not rec.job_id:
        raise NotFoundError(f"session {rec.id} has no node yet", hint="wait until `hpclab list` shows it running")
    for entry in rec.forwards:
        if entry.get("node_port") == node_port:
            raise ConfigError(f"port {node_port} of {rec.node} is already forwarded to 127.0.0.1:{entry['local_port']}",
                              hint=f"open http://127.0.0.1:{entry['local_port']}/")
    if local_port is not None and not port_free(local_port):
        raise ForwardTaken(f"127.0.0.1:{local_port} is in use on this computer",
                           hint="choose another --local-port, or leave it out to get a free one")
    cluster = ctx.cluster_for(rec)
    cluster.login.connect()
    if rec.transport == "socket":
        via, via_name = cluster.node(rec.node), "node"
        listeners = parse_listeners(via.shell(LISTENERS, str(node_port), check=False,
                                              what="looking at the node's ports").stdout)
        if not listeners:
            raise NotFoundError(f"nothing listens on port {node_port} of {rec.node}",
                                hint="start the service in the job first (it must listen on a TCP port)")
        usable = [li for li in listeners if li.address in ("loopback", "any")]
        if usable:
            only_loopback = all(li.address == "loopback" for li in listeners)
            target, where = f"127.0.0.1:{node_port}", "loopback" if only_loopback else "any"
        else:
            address = hex_to_ipv4(listeners[0].address)
            if address is None:
                raise NotFoundError(f"port {node_port} of {rec.node} listens on an IPv6 address only",
                                    hint="have the service listen on 127.0.0.1 or the node's IPv4 address")
            target, where = f"{address}:{node_port}", "address"
    else:
        # tcp transport: no connection to the node itself; the login node reaches the node's address.
        via, via_name = cluster.login, "login"
        reach = cluster.login.shell('exec 3<>"/dev/tcp/$1/$2" && echo open', rec.address or rec.node,
                                    str(node_port), check=False, what="trying the node port")
        if "open" not in reach.stdout.split():
            raise NotFoundError(f"nothing the login node can reach listens on port {node_port} of {rec.node}",
                                hint="the service must listen on the node's address (not only 127.0.0.1) "
                                     "when nodes do not accept SSH")
        target, where = f"{rec.address or rec.node}:{node_port}", "address"
    port = local_port or free_local_port(node_port if node_port >= 1024 else None)
    tunnel = Tunnel(via, port, target)
    tunnel.open()
    entry = {"node_port": node_port, "local_port": port, "target": target, "via": via_name}
    rec.forwards = [*rec.forwards, entry]
    ctx.store.update(rec.id, forwards=rec.forwards)
    who = {"loopback": f"other users with a job on {rec.node}",
           "any": "every user of the cluster who can reach the node",
           "address": "every user of the cluster who can reach the node"}[where]
    warning = (f"port {node_port} on {rec.node} is reachable by {who}, not only through this tunnel: "
               "its own authentication is all that protects it")
    return Forwarded(rec, node_port, port, target, warning)


# -- ssh-config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HostBlock:
    record: SessionRecord
    alias: str
    text: str


def ssh_config(ctx: Context, session_id: str) -> HostBlock:
    """The Host block for session `session_id`'s node (see block)."""
    rec = find(ctx.store, session_id)
    if not rec.node or not rec.job_id:
        raise NotFoundError(f"session {rec.id} has no node yet", hint="wait until `hpclab list` shows it running")
    cluster = ctx.cluster_for(rec)
    node = cluster.node(rec.node)
    login = cluster.login
    if not isinstance(node, SshRemote) or not isinstance(login, SshRemote):
        raise ConfigError("ssh-config needs a cluster reached over SSH")
    login.connect()
    base = ["ssh", *SAFE_OPTIONS, *login.ssh_options]
    proc = subprocess.run([*base, "-G", "--", rec.node], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=20)
    if proc.returncode != 0:
        raise RemoteError(f"ssh -G {rec.node} failed", hint=proc.stderr.strip() or None)
    key_options = hostkeys.for_node(login, rec.node, base, login.control_dir)
    proxy = [*base, "-o", f"ControlPath={login.control_path}", "-o", "ControlMaster=no",
             "-W", "%h:%p", "--", login.host]
    comment = (f"hpclab session {rec.id} (job {rec.job_id} on {rec.node}, profile {rec.profile}); "
               "put it before any 'Host *' section: ssh takes the first value it finds")
    return HostBlock(rec, alias(rec), block(alias(rec), rec.node, proc.stdout, proxy, node.control_path,
                                            key_options, comment))



@dataclass(frozen=True)
class Opened:
    record: SessionRecord
    alias: str
    argv: list[str]
    config: Path


def code(ctx: Context, session_id: str, folder: str | None, confirm: Callable[[str], bool],
         user_config: Path | None = None) -> Opened:
    """Open VS Code's Remote-SSH on the session's node: the Host block goes into hpclab's own
    ssh config file (0600), which the user's ~/.ssh/config must Include (asked for, never done
    silently); then `code --remote ssh-remote+hpclab-ID [FOLDER]`."""
    exe = shutil.which("code")
    if exe is None:
        raise NotFoundError("the 'code' command is not on PATH",
                            hint="in VS Code: Command Palette > 'Shell Command: Install code command in PATH', "
                                 "and install the Remote - SSH extension; or use `hpclab ssh-config "
                                 f"{session_id} >> ~/.ssh/config` with any SSH client")
    hb = ssh_config(ctx, session_id)
    path = ctx.paths.state_dir / "ssh_config"
    private_dir(path.parent)
    others = _other_blocks(path, hb.alias)
    write_private(path, others + hb.text)
    user_config = user_config or Path.home() / ".ssh" / "config"
    if not has_include(user_config, path):
        line = include_line(path)
        if not confirm(f"add '{line}' at the top of {user_config}, so that VS Code finds {hb.alias}?"):
            raise ConfigError(f"{user_config} does not include hpclab's host blocks",
                              hint=f"add this line at the top of {user_config}: {line}")
        add_include(user_config, path)
    argv = [exe, "--remote", f"ssh-remote+{hb.alias}", *([folder] if folder else [])]
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    return Opened(hb.record, hb.alias, argv, path)
