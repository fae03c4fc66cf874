"""How commands reach the cluster: a Remote. SshRemote is the real one: the system OpenSSH
client, one ControlMaster per host. LocalRemote runs the same commands with `sh -c` on this
machine, in a directory that plays $HOME: the use cases run through it in unit tests, as an
ordinary user, without a cluster.

The master is the one authentication of a session (the user's ~/.ssh/config, agent, jump
hosts, Kerberos and 2FA prompts all work because this is plain `ssh`). Every later command,
file transfer and port forward is multiplexed over it. A connection to a compute node is a
second master whose transport is a `-W` stdio channel through the login master, so it costs
no further login-node authentication.

Argument lists are quoted once, here, where they cross to the remote shell; secrets and
scripts travel on stdin, never in a command line.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import logging
import os
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import hostkeys
from .errors import ConnectError, ForwardTaken, HostKeyError, LoginRefused, MasterGone, RemoteError, Unreachable
from .paths import private_dir

log = logging.getLogger(__name__)

# First on the command line, so they win over ~/.ssh/config and the profile's ssh_options.
SAFE_OPTIONS = (
    "-o", "ForwardAgent=no",
    "-o", "ForwardX11=no",
    "-o", "StrictHostKeyChecking=yes",
    "-o", "GatewayPorts=no",
    "-o", "PermitLocalCommand=no",
)
# Commands, file transfers and forwards go over the master only. Were it gone, ssh would open a
# connection of its own: a second login, perhaps a 2FA prompt. ssh runs a ProxyCommand only for such
# a connection of its own, so this one makes that fail at once, with a word hpclab recognises, and
# BatchMode forbids any prompt. Only `connect()` logs in.
NO_MASTER = "hpclab-no-master-7c2e"
MUX_ONLY = (
    "-o", "BatchMode=yes",
    "-o", f"ProxyCommand=sh -c 'echo {NO_MASTER} >&2; exit 1'",
)
# An unused master (no command, no connection through a forward) exits after this long, so a master
# that no session needs does not stay logged in forever, even if hpclab never runs again.
MASTER_IDLE = "1h"
MASTER_OPTIONS = (
    "-o", "ControlMaster=yes",
    "-o", f"ControlPersist={MASTER_IDLE}",
    "-o", "ClearAllForwardings=yes",
    "-o", "ExitOnForwardFailure=yes",
    "-o", "ServerAliveInterval=10",
    "-o", "ServerAliveCountMax=3",
    "-o", "ConnectTimeout=20",
)
# Login shells run the user's rc files before the command, and some print banners on stdout in
# every shell. The command first prints this line; what came before it is not the command's.
# One word, no '!' or newline: the same in sh, bash, zsh, fish, csh and tcsh.
OUTPUT_MARK = "hpclab-output-begins-3f9a1c"


def after_mark(stdout: str) -> str:
    """The command's own output: everything after the first OUTPUT_MARK line (all of `stdout`
    when the mark is missing, as with a forced command that ignores the one sent)."""
    line = OUTPUT_MARK + "\n"
    if stdout.startswith(line):
        return stdout[len(line):]
    at = stdout.find("\n" + line)
    return stdout[at + len(line) + 1 :] if at >= 0 else stdout


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Counters:
    """What a session cost: benchmarks print these."""

    connects: int = 0
    commands: int = 0


# Two logins of one command closer together than this are a loop, not a blip: hpclab stops asking.
RECONNECT_GAP = 600.0


def _classify(host: str, stderr: str) -> ConnectError:
    text = stderr.strip()
    low = text.lower()
    if "remote host identification has changed" in low or "host key verification failed" in low:
        if "has changed" in low:
            return HostKeyError(
                f"the host key of {host} has changed: hpclab stopped before sending anything",
                hint="if the cluster's admins announced new host keys, remove the old one with "
                f"`ssh-keygen -R {host}` and verify the new fingerprint; otherwise someone may be "
                "intercepting the connection",
            )
        return HostKeyError(
            f"the host key of {host} is not known or does not match",
            hint=f"connect once with `ssh {host}` to verify and accept the host key, then retry",
        )
    if any(s in low for s in ("permission denied", "too many authentication failures", "access denied",
                              "connection closed", "authentication failed")):
        return LoginRefused(
            f"{host} refused the login",
            hint=f"check that `ssh {host} true` works (key, agent, user name)"
            + (f"\nssh said: {text[-300:]}" if text else ""),
        )
    if "could not resolve hostname" in low:
        return Unreachable(f"cannot resolve the host name {host}", hint="check `host` in the profile or ~/.ssh/config")
    if any(s in low for s in ("no route to host", "connection refused", "timed out", "network is unreachable")):
        return Unreachable(
            f"cannot reach {host}",
            hint=f"ssh said: {text[-300:]}\ncheck the network, VPN, or the host name",
        )
    return ConnectError(f"ssh to {host} failed", hint=text[-500:] or None)


class Remote(abc.ABC):
    """Commands on one host. The constructor only stores; `connect()` (or first use) opens
    the connection; `close()` ends it and its forwards."""

    host: str
    counters: Counters

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the connection unless it is open. Raises ConnectError with what went wrong."""

    @abc.abstractmethod
    def alive(self) -> bool: ...

    def user(self) -> str | None:
        """The account this connection logs in as, where it can be told without logging in."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True,
            timeout: float | None = 120, what: str | None = None) -> Completed:
        """Run `argv` on the host (quoted once, here). Raises ConnectError when the connection
        failed, RemoteError when the command failed and `check` is set."""

    @abc.abstractmethod
    def forward(self, spec: str) -> None:
        """Hold the local forward `127.0.0.1:PORT:TARGET` (TARGET "host:port" or a socket path):
        returns when this connection holds it now, whether it had it already or bound it now,
        so a success proves the port is hpclab's. Raises ForwardTaken when another program holds
        the port, MasterGone when the connection is gone (it does not connect)."""

    @abc.abstractmethod
    def cancel_forward(self, spec: str) -> None: ...

    @abc.abstractmethod
    def hop(self, dest: str) -> Remote:
        """A Remote for `dest` reached through this host (a compute node behind the login node)."""

    def _finish(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str, *, check: bool,
                what: str | None) -> Completed:
        """The command's result; RemoteError with what it said when it failed and `check` is set."""
        if check and returncode != 0:
            raise RemoteError(f"{what or argv[0]} exited {returncode} on {self.host}",
                              hint=stderr.strip()[-800:] or None, returncode=returncode, stdout=stdout, stderr=stderr)
        return Completed(tuple(argv), returncode, stdout, stderr)

    def _timed_out(self, argv: Sequence[str], timeout: float | None, what: str | None) -> RemoteError:
        return RemoteError(f"{what or argv[0]} on {self.host} did not answer in {timeout:.0f} s")

    def shell(self, script: str, *args: str, **kw: Any) -> Completed:
        """Run a POSIX sh `script` with positional `args`. The script must be one line and
        free of '!' so that csh-family login shells pass it through unchanged."""
        assert "\n" not in script and "!" not in script, script
        return self.run(["sh", "-c", script, "hpclab", *args], **kw)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SshRemote(Remote):
    """Commands on one SSH destination through a ControlMaster.

    The constructor only stores; `connect()` (or first use) opens the master; `close()`
    ends it. `via` makes this a connection to a host behind another SshRemote (a compute
    node behind the login node)."""

    def __init__(
        self,
        host: str,
        ssh_options: Sequence[str],
        control_dir: Path,
        *,
        via: SshRemote | None = None,
        counters: Counters | None = None,
        notify: Callable[[str], None] | None = None,
        key_options: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.host = host
        self.ssh_options = tuple(ssh_options)
        self.control_dir = control_dir
        self.via = via
        self.counters: Counters = counters or (via.counters if via else Counters())
        # says "logging in again" to the user; a login must never happen unseen after the first
        self.notify: Callable[[str], None] = notify or (via.notify if via else log.warning)
        self._logged_in_at: float | None = None  # when this object's master last authenticated
        self._relogged_at: float | None = None  # ... the last time that replaced a lost master
        self._refused: ConnectError | None = None  # a login that failed is not tried again
        # Host-key options the master needs (a node's key published by the login node), asked
        # for only when a master is made: a command over a live master needs none of them.
        self._key_options = key_options
        self._user: str | None = None  # user(), once asked
        key = "\0".join((host, *self.ssh_options, via.control_path if via else ""))
        self.control_path: str = str(control_dir / hashlib.sha256(key.encode()).hexdigest()[:16])

    # -- argv building -----------------------------------------------------------------

    def _base(self, *, mux_only: bool = False, extra: Sequence[str] = ()) -> list[str]:
        """ssh, hpclab's options first (ssh takes the first value of an option), then the user's.
        `mux_only`: through the master or not at all (commands, forwards); otherwise how to make
        the master itself (for a node: through the login master, whatever the user's options say)."""
        argv = ["ssh", *SAFE_OPTIONS]
        if mux_only:
            argv += MUX_ONLY
        elif self.via is not None:
            # ssh expands %h:%p in the -W argument; every other % (a user's own "%h" included)
            # must reach the inner ssh unchanged, so it is escaped as %%.
            words = [shlex.quote(a).replace("%", "%%") for a in self.via.argv_for(["-W", "HOST:PORT"])]
            words[-3] = "%h:%p"  # argv_for ends with: -W HOST:PORT -- host
            # A node is reached with the keys the user already has: never a prompt of its own.
            argv += ["-o", "BatchMode=yes", "-o", "ProxyCommand=" + " ".join(words)]
        return [*argv, *self.ssh_options, *extra, "-o", f"ControlPath={self.control_path}"]

    def master_argv(self) -> list[str]:
        """The ssh that authenticates and becomes the master (it forks into the background)."""
        extra = self._key_options() if self._key_options else ()
        return [*self._base(extra=extra), *MASTER_OPTIONS, "-f", "-N", "--", self.host]

    def argv_for(self, extra: Sequence[str]) -> list[str]:
        """ssh argv through this master and only through it: `ssh OPTS EXTRA -- HOST`."""
        return [*self._base(mux_only=True), "-o", "ControlMaster=no", *extra, "--", self.host]

    # -- lifetime ----------------------------------------------------------------------

    def alive(self) -> bool:
        if not os.path.exists(self.control_path):
            return False
        proc = subprocess.run(
            [*self._base(mux_only=True), "-O", "check", "--", self.host],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True,
            timeout=10,
        )
        return proc.returncode == 0

    def user(self) -> str | None:
        """The user ssh logs in as here (`ssh -G`: the user's config and options; no network)."""
        if self._user is None:
            proc = subprocess.run([*self._base(), "-G", "--", self.host], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=20)
            users = [ln.split(None, 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("user ")]
            self._user = users[0].strip() if proc.returncode == 0 and users else ""
        return self._user or None

    def connect(self) -> None:
        """Open the master unless one is alive: the one login of a command. A master that died
        is replaced once, visibly (`notify`); a login that failed, or a second loss within
        RECONNECT_GAP, raises instead of asking again (a loop of 2FA prompts can lock an account).
        Raises ConnectError (HostKeyError, LoginRefused, Unreachable, MasterGone) with what ssh said."""
        if self.alive():
            return
        if self._refused is not None:
            raise self._refused
        if self.via is not None:
            self.via.connect()
        private_dir(self.control_dir)
        # Commands started together (five `hpclab up` at once) make one master: the first one
        # logs in, the others wait for it here and then use it.
        with open(self.control_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.alive():
                self._login()

    def _login(self) -> None:
        # A login after this command's own first one, or replacing a master an earlier command
        # made: the user must see it, and one such soon after another is a loop.
        relogin = self.via is None and (self._logged_in_at is not None or os.path.exists(self.control_path))
        if relogin:
            if self._relogged_at is not None and time.monotonic() - self._relogged_at < RECONNECT_GAP:
                raise MasterGone(
                    f"the connection to {self.host} dropped again within {RECONNECT_GAP / 60:.0f} minutes; "
                    "hpclab does not log in again by itself",
                    hint="check the network, then run the command again (`hpclab attach ID` brings a tunnel back)",
                )
            self.notify(f"the connection to {self.host} is gone; logging in again")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)  # a stale socket of a dead master
        argv = self.master_argv()
        log.debug("connect: %s", shlex.join(argv))
        # The master forks into the background after authenticating; its stderr must not be a
        # pipe we read to EOF, or we would wait for the master to exit.
        with tempfile.TemporaryFile(mode="w+") as err:
            started = time.monotonic()
            try:
                rc = subprocess.run(argv, stdin=None, stdout=subprocess.DEVNULL, stderr=err, timeout=300).returncode
            except subprocess.TimeoutExpired:
                raise Unreachable(f"ssh to {self.host} did not finish authenticating in 300 s") from None
            err.seek(0)
            stderr = err.read()
        self.counters.connects += 1
        log.debug("connect: rc=%s in %.2fs", rc, time.monotonic() - started)
        if rc != 0:
            error = _classify(self.host.rpartition("@")[2], stderr)  # a host name, for ssh-keygen -R too
            if not isinstance(error, Unreachable):
                self._refused = error  # the host answered and said no: asking again would not help
            raise error
        self._logged_in_at = time.monotonic()
        if relogin:
            self._relogged_at = self._logged_in_at

    def close(self) -> None:
        if os.path.exists(self.control_path):
            subprocess.run(
                [*self._base(mux_only=True), "-O", "exit", "--", self.host],
                stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True, timeout=10,
            )

    def hop(self, dest: str) -> SshRemote:
        # The node's host key may be one the verified login node publishes (hostkeys.py): added
        # to what the user's configuration trusts, never relaxed; read when the node's master is made.
        def key_options() -> list[str]:
            return hostkeys.for_node(self, dest, ["ssh", *SAFE_OPTIONS, *self.ssh_options], self.control_dir)

        return SshRemote(dest, self.ssh_options, self.control_dir, via=self, key_options=key_options)

    # -- commands ----------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float | None = 120,
        what: str | None = None,
    ) -> Completed:
        """Run `argv` on the host (quoted once here), over the master only: with no master,
        `connect()` opens one (see there) and the command runs once more. Raises ConnectError
        when there is no master to be had, RemoteError when the command failed and `check` is set."""
        command = shlex.join(argv)
        full = [*self.argv_for(["-T"]), f"echo {OUTPUT_MARK}; {command}"]
        log.debug("run on %s: %s", self.host, command if len(command) < 400 else command[:400] + "...")
        for attempt in (1, 2):
            self.counters.commands += 1
            try:
                proc = subprocess.run(
                    full,
                    input=input if input is not None else "",
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    start_new_session=True,  # Ctrl-C must not kill a cleanup command halfway
                )
            except subprocess.TimeoutExpired:
                raise self._timed_out(argv, timeout, what) from None
            if proc.returncode == 255 and NO_MASTER in proc.stderr:
                if attempt == 2:
                    raise MasterGone(f"the connection to {self.host} closed as soon as it was made")
                self.connect()
                continue
            break
        return self._finish(argv, proc.returncode, after_mark(proc.stdout), proc.stderr, check=check, what=what)

    # -- forwards ----------------------------------------------------------------------

    def forward(self, spec: str) -> None:
        """Add a local forward `127.0.0.1:PORT:TARGET` to the running master."""
        self._control("forward", spec)

    def cancel_forward(self, spec: str) -> None:
        self._control("cancel", spec, check=False)

    def _control(self, op: str, spec: str, check: bool = True) -> None:
        # The master answers an identical forward it already has with success, and one whose
        # port another program holds with "Port forwarding failed": `forward` is a proof.
        argv = [*self._base(mux_only=True), "-o", "ExitOnForwardFailure=yes", "-O", op, "-L", spec, "--", self.host]
        log.debug("%s forward %s", op, spec)
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              start_new_session=True, timeout=20)
        if check and proc.returncode != 0:
            said = proc.stderr.strip()
            if "control socket connect" in said.lower():
                raise MasterGone(f"the connection to {self.host} is gone", hint=said or None)
            kind = ForwardTaken if "forwarding failed" in said.lower() else RemoteError
            raise kind(f"could not {op} the forward {spec} on the connection to {self.host}", hint=said or None)


class LocalRemote(Remote):
    """The same commands on this machine: `sh -c COMMAND` with HOME set to `home`, run from
    there, as SshRemote's login shell would. Forwards are relay threads in this process.
    `hop()` returns another LocalRemote on the same home: "the node" is this machine too.
    For tests and for trying hpclab without a cluster; it authenticates nobody."""

    def __init__(self, home: Path, host: str = "localhost", *, env: dict[str, str] | None = None,
                 counters: Counters | None = None, forwards: dict[tuple[str, str], _Relay] | None = None,
                 masters: set[str] | None = None, via: LocalRemote | None = None) -> None:
        self.home = home
        self.host = host
        self.env = env
        self.counters = counters or Counters()
        self.via = via
        # Shared with hop()s, as ssh masters are processes that outlive one Remote object: which
        # hosts have an open "master", and each one's forwards. Closing the login's ends every
        # node's too, as a node master's connection runs through the login master.
        self._masters: set[str] = set() if masters is None else masters
        self._forwards: dict[tuple[str, str], _Relay] = {} if forwards is None else forwards

    def connect(self) -> None:
        if self.host not in self._masters:
            self._masters.add(self.host)
            self.counters.connects += 1

    def alive(self) -> bool:
        return self.host in self._masters

    def close(self) -> None:
        for host, spec in list(self._forwards):
            if self.via is None or host == self.host:
                self._forwards.pop((host, spec)).close()
        if self.via is None:
            self._masters.clear()
        self._masters.discard(self.host)

    def run(self, argv: Sequence[str], *, input: str | None = None, check: bool = True,
            timeout: float | None = 120, what: str | None = None) -> Completed:
        self.connect()
        command = shlex.join(argv)
        env = dict(self.env if self.env is not None else os.environ, HOME=str(self.home))
        self.counters.commands += 1
        log.debug("run locally: %s", command if len(command) < 400 else command[:400] + "...")
        try:
            proc = subprocess.run(["sh", "-c", command], input=input if input is not None else "",
                                  capture_output=True, text=True, timeout=timeout, cwd=self.home, env=env,
                                  start_new_session=True)
        except subprocess.TimeoutExpired:
            raise self._timed_out(argv, timeout, what) from None
        return self._finish(argv, proc.returncode, proc.stdout, proc.stderr, check=check, what=what)

    def forward(self, spec: str) -> None:
        if not self.alive():
            raise MasterGone(f"the connection to {self.host} is gone")
        if (self.host, spec) in self._forwards:
            return  # as an ssh master answers a forward it has already
        bind, _, target = spec.partition(":")[2].partition(":")
        try:
            self._forwards[self.host, spec] = _Relay(int(bind), target)
        except OSError as exc:
            raise ForwardTaken(f"could not forward the forward {spec} on the connection to {self.host}",
                               hint=str(exc)) from None

    def cancel_forward(self, spec: str) -> None:
        relay = self._forwards.pop((self.host, spec), None)
        if relay is not None:
            relay.close()

    def hop(self, dest: str) -> LocalRemote:
        return LocalRemote(self.home, dest, env=self.env, counters=self.counters, forwards=self._forwards,
                           masters=self._masters, via=self)


class _Relay:
    """127.0.0.1:port relayed to "host:port" or a unix socket path, one thread per direction."""

    def __init__(self, port: int, target: str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect(self) -> socket.socket:
        if self.target.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.target)
            return s
        host, _, port = self.target.rpartition(":")
        return socket.create_connection((host, int(port)))

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect()
            except OSError:
                client.close()  # as ssh does: accept, then drop when the target refuses
                continue
            threading.Thread(target=_relay_pair, args=(client, upstream), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _relay_pair(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both sides have finished, then close both."""
    other = threading.Thread(target=_pump, args=(b, a), daemon=True)
    other.start()
    _pump(a, b)
    other.join()
    a.close()
    b.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
