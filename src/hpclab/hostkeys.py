"""Compute-node host keys that the login node publishes.

Sites list their nodes' host keys in the login node's /etc/ssh/ssh_known_hosts, so that users
can ssh from the login node to a node; a user's laptop usually knows only the login node's key.
hpclab's connection to a node runs through the login node's authenticated master, so what
that file says comes from the verified login node: hpclab may trust it for the node, and for
nothing else. It never relaxes StrictHostKeyChecking and never accepts a key it was not given.

The pieces are pure: `select` keeps the published lines that apply to the name ssh will look
up, `write_known_hosts` stores them in a private file in hpclab's control directory, and
`global_files_option` adds that file to the global known-hosts files the user's configuration
already has (`ssh -G` tells which), so that everything the user trusted stays trusted and
nothing else is added. `node_options` and `for_node` put them together.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import HpclabError
from .paths import private_dir

if TYPE_CHECKING:  # remote.py may call into this module; nothing here needs it at run time
    from .remote import SshRemote

log = logging.getLogger(__name__)

PUBLISHED = "/etc/ssh/ssh_known_hosts"
_MARKERS = ("@cert-authority", "@revoked")
_KEYTYPE = re.compile(r"(ssh|ecdsa|sk)-[A-Za-z0-9@._+-]{1,100}\Z")


def parse_ssh_g(text: str) -> dict[str, str]:
    """`ssh -G` output as {lowercase keyword: value}; the first line of a keyword wins."""
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key.lower() not in config:
            config[key.lower()] = value.strip()
    return config


def lookup_name(config: Mapping[str, str]) -> str:
    """The name ssh looks the host key up under: HostKeyAlias, else HostName, with `[name]:port`
    when the port is not 22 (as in known_hosts files)."""
    alias = config.get("hostkeyalias", "")
    if alias and alias.lower() != "none":
        return alias.lower()
    name = config.get("hostname", "").lower()
    port = config.get("port", "22")
    return name if port == "22" else f"[{name}]:{port}"


def split_files(value: str) -> list[str]:
    """The file list of a `globalknownhostsfile` line of `ssh -G`. ssh prints the (expanded,
    absolute) paths separated by spaces without quoting, so a word that does not start with
    '/' continues the path before it."""
    files: list[str] = []
    for word in value.split(" "):
        if files and not word.startswith("/"):
            files[-1] += " " + word
        elif word:
            files.append(word)
    return [f for f in files if f.lower() != "none"]


def _hashed_match(entry: str, name: str) -> bool:
    """`|1|salt|hash` (HashKnownHosts): HMAC-SHA1 of the name keyed with the salt."""
    parts = entry.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt, digest = base64.b64decode(parts[2], validate=True), base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)


def _key_ok(keytype: str, data: str) -> bool:
    """A key line's type and base64 blob agree: the blob starts with its own type name."""
    if not _KEYTYPE.match(keytype):
        return False
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    n = int.from_bytes(blob[:4], "big")
    return len(blob) > 4 + n and blob[4 : 4 + n] == keytype.encode()


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's wildcards: only * and ? (no character classes: `[host]:port` is literal)."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name) is not None


def _patterns_match(patterns: str, name: str) -> bool:
    """OpenSSH's rule: no negated pattern (`!pat`) may match, and some plain pattern must."""
    if patterns.startswith("|"):
        return _hashed_match(patterns, name)
    found = False
    for pattern in patterns.lower().split(","):
        negated = pattern.startswith("!")
        if _glob(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            found = True
    return found


def select(published: str, name: str) -> list[str]:
    """The lines of a known_hosts text that apply to `name`, each rewritten to name only it
    (hashed ones kept as they are). Comments, malformed lines and lines for other hosts are
    dropped. `@revoked` lines are kept: they can only take trust away."""
    name = name.lower()
    kept: list[str] = []
    for raw in published.splitlines():
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        marker = ""
        if words[0].startswith("@"):
            if words[0] not in _MARKERS:
                continue
            marker, words = words[0] + " ", words[1:]
        if len(words) < 3 or not _key_ok(words[1], words[2]):
            continue
        if not _patterns_match(words[0], name):
            continue
        host = words[0] if words[0].startswith("|") else name
        kept.append(f"{marker}{host} {words[1]} {words[2]}")
    return kept


def known_hosts_path(control_dir: Path, tag: str) -> Path:
    """Where the keys for one node of one login connection live: the same path every time."""
    return control_dir / ("known_hosts-" + hashlib.sha256(tag.encode()).hexdigest()[:16])


def write_known_hosts(control_dir: Path, tag: str, lines: Sequence[str]) -> Path:
    """Write `lines` to a 0600 file in the (private) control directory, atomically; return it."""
    private_dir(control_dir)
    path = known_hosts_path(control_dir, tag)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
    return path


def _quote(path: str) -> str:
    # ssh splits the option's value into words itself; double quotes keep spaces, and a
    # backslash escapes a quote or a backslash inside them.
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def global_files_option(current: Sequence[str], extra: Path) -> list[str]:
    """`-o GlobalKnownHostsFile=...`: the global files the user's config already has, plus `extra`.
    Given first on the command line it wins over the config, so it must repeat what the config said."""
    files = [*current, str(extra)]
    return ["-o", "GlobalKnownHostsFile=" + " ".join(_quote(f) for f in files)]


def node_options(published: str, ssh_g: str, control_dir: Path, tag: str) -> list[str]:
    """The ssh options that let a node connection also trust the keys `published` lists for the
    node, given the connection's `ssh -G` output. [] when nothing published applies (the
    connection then checks keys exactly as the user's configuration says)."""
    config = parse_ssh_g(ssh_g)
    name = lookup_name(config)
    lines = select(published, name) if name else []
    if not lines:
        return []
    path = write_known_hosts(control_dir, f"{tag}\0{name}", lines)
    return global_files_option(split_files(config.get("globalknownhostsfile", "")), path)


def for_node(login: SshRemote, dest: str, ssh_argv: Sequence[str], control_dir: Path) -> list[str]:
    """Read the login node's published keys over its (verified) master and return the options
    for the connection to `dest` (see node_options); `ssh_argv` is the ssh command with the
    options that connection will have (for `ssh -G`). Any failure to read them means no extra
    options: the node connection then fails or succeeds on the user's own known_hosts."""
    try:
        published = login.run(["cat", PUBLISHED], check=False, what="reading the published host keys").stdout
    except HpclabError as exc:
        log.debug("published host keys not read: %s", exc)
        return []
    proc = subprocess.run(
        [*ssh_argv, "-G", "--", dest],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    if proc.returncode != 0:
        log.debug("ssh -G %s failed: %s", dest, proc.stderr.strip())
        return []
    return node_options(published, proc.stdout, control_dir, login.control_path)
