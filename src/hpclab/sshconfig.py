"""OpenSSH Host blocks that reach a session's node the way hpclab does, and hpclab's own ssh
config file that holds them (`hpclab ssh-config`, `hpclab code`). Pure text and local files:
nothing here connects."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from .hostkeys import _quote
from .paths import private_dir, write_private
from .remote import SAFE_OPTIONS
from .state import SessionRecord


def alias(rec: SessionRecord) -> str:
    return f"hpclab-{rec.id}"


def _value(text: str) -> str:
    """A value for ssh_config: '%' kept literal (ssh expands %-tokens in paths), quoted when it
    has spaces or quotes."""
    text = text.replace("%", "%%")
    return _quote(text) if any(c in text for c in ' \t"\\') else text


# What the node connection needs to authenticate and to trust the node's key, from `ssh -G`
# with the user's options for the node: copied so that the block also works on its own (-F).
COPIED = {"user": "User", "port": "Port", "identityfile": "IdentityFile", "certificatefile": "CertificateFile",
          "identitiesonly": "IdentitiesOnly", "identityagent": "IdentityAgent", "hostkeyalias": "HostKeyAlias",
          "userknownhostsfile": "UserKnownHostsFile", "globalknownhostsfile": "GlobalKnownHostsFile"}
PATH_KEYS = {"identityfile", "certificatefile", "identityagent", "userknownhostsfile", "globalknownhostsfile"}


def block(name: str, node: str, ssh_g: str, proxy: Sequence[str], control_path: str,
          key_options: Sequence[str], comment: str) -> str:
    """The Host block: what `ssh -G` said for the node (auth and known hosts), the node keys the
    login node publishes (key_options: -o GlobalKnownHostsFile=...), hpclab's safety options,
    the node master's ControlPath (used while it runs) and a ProxyCommand through the login
    master (which logs in again, visibly, if that master is gone)."""
    lines = [f"# {comment}", f"Host {name}", f"    HostName {node}"]
    seen: dict[str, list[str]] = {}
    for line in ssh_g.splitlines():
        key, _, value = line.partition(" ")
        if key in COPIED and value and value != "none":
            seen.setdefault(key, []).append(value)
    extra: dict[str, str] = {}
    for opt in key_options[1::2]:
        k, _, v = opt.partition("=")
        extra[k.lower()] = v
    for key, word in COPIED.items():
        if key == "globalknownhostsfile" and key in extra:
            lines.append(f"    {word} {extra[key]}")  # hostkeys quoted each file already
            continue
        for value in seen.get(key, []):
            if key in ("userknownhostsfile", "globalknownhostsfile"):
                value = " ".join(_value(v) for v in value.split())
            elif key in PATH_KEYS:
                value = _value(value)
            lines.append(f"    {word} {value}")
    for opt in SAFE_OPTIONS[1::2]:
        k, _, v = opt.partition("=")
        lines.append(f"    {k} {v}")
    lines += [
        "    ControlMaster no",
        f"    ControlPath {_value(control_path)}",
        "    ProxyCommand " + " ".join(shlex.quote(a).replace("%", "%%") if a != "%h:%p" else a for a in proxy),
    ]
    return "\n".join(lines) + "\n"


def include_line(path: Path) -> str:
    return f"Include {_value(str(path))}"


def has_include(user_config: Path, path: Path) -> bool:
    try:
        text = user_config.read_text()
    except OSError:
        return False
    want = {str(path), _value(str(path)), str(path).replace(str(Path.home()), "~", 1)}
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].lower() == "include" and words[1].strip().strip('"') in want:
            return True
    return False


def add_include(user_config: Path, path: Path) -> None:
    """Put `Include path` at the top of the user's ssh config (before any Host section, where
    an Include applies to every host), keeping the file's mode and the rest of its text."""
    private_dir(user_config.parent)
    old = user_config.read_text() if user_config.exists() else ""
    mode = user_config.stat().st_mode & 0o777 if user_config.exists() else 0o600
    tmp = user_config.with_name(user_config.name + ".hpclab.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, mode)  # the file's own mode, whatever the umask
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# added by hpclab: the Host blocks of running sessions (hpclab-ID)\n{include_line(path)}\n\n{old}")
    os.replace(tmp, user_config)


def _other_blocks(path: Path, name: str) -> str:
    """The blocks in hpclab's ssh config file other than `name`'s (each block: its comment line,
    'Host NAME' and the indented lines after it)."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    out: list[str] = []
    pending: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.startswith("# "):
            pending = [line]
            continue
        if line.startswith("Host "):
            skipping = line.split()[1] == name
            if not skipping:
                out += pending
            pending = []
            if skipping:
                continue
        elif skipping:
            continue
        out.append(line)
    return "".join(out)


def drop_block(state_dir: Path, rec: SessionRecord) -> None:
    """Remove an ended session's block from hpclab's ssh config file, if it has one."""
    path = state_dir / "ssh_config"
    if path.exists():
        rest = _other_blocks(path, alias(rec))
        write_private(path, rest)
