"""Where hpclab keeps its files on the laptop. One object, so a test can move all of it.

`HPCLAB_HOME` puts config, state and control sockets under one directory. Without it the
XDG locations are used (`~/.config/hpclab`, `~/.local/state/hpclab`). `HPCLAB_CONFIG`
names the config file alone and wins over both.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# sun_path holds 108 bytes on Linux and 104 on macOS; leave room for ssh's temporary suffix.
_MAX_SOCKET_DIR = 70
# Characters ssh takes literally in a ControlPath (no spaces, quotes, backslash, % or $).
_PLAIN_PATH = re.compile(r"[\w./+,:@=-]+")


@dataclass(frozen=True)
class Paths:
    config_file: Path
    state_dir: Path
    control_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Paths:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("HOME") or Path.home())
        if env.get("HPCLAB_HOME"):
            root = Path(env["HPCLAB_HOME"]).expanduser().absolute()
            config = root / "config.toml"
            state = root / "state"
        else:
            config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
            state_home = Path(env.get("XDG_STATE_HOME") or home / ".local" / "state")
            config = config_home / "hpclab" / "config.toml"
            state = state_home / "hpclab"
        if env.get("HPCLAB_CONFIG"):
            config = Path(env["HPCLAB_CONFIG"]).expanduser().absolute()
        control = state / "ctl"
        if len(os.fsencode(control)) > _MAX_SOCKET_DIR or not _PLAIN_PATH.fullmatch(str(control)):
            # A deep HPCLAB_HOME would overflow sun_path, and ssh splits `-o ControlPath=...`
            # into words and expands % and ${} in it: use a short, plain per-user directory
            # whose name still depends on the state dir, so two homes never share sockets.
            import hashlib  # only here: every command imports this module, few need a digest

            digest = hashlib.sha256(str(state).encode()).hexdigest()[:10]
            control = Path("/tmp") / f"hpclab-{os.getuid()}-{digest}"
        return cls(config_file=config, state_dir=state, control_dir=control)

    @property
    def sessions_dir(self) -> Path:
        return self.state_dir / "sessions"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "lock"

def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700 whatever the umask, and refuse a directory we
    do not own or that others can write: a control socket or token there would not be ours."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a directory", hint="remove it and run hpclab again")
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"{path} belongs to another user",
            hint="set HPCLAB_HOME to a directory of your own",
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write a 0600 file atomically (temp file in the same directory, then rename)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
