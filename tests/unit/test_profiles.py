"""Profiles: TOML to a frozen Profile, every bad value refused with file, profile, key and choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpclab.errors import ConfigError
from hpclab.profiles import KEYS, Profile, resolve


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_full_profile_and_flag_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, """
[profiles.gpu]
host = "me@login.example.org"
ssh_options = ["-F", "/home/me/.ssh/other config"]
scheduler = "slurm"
partition = "gpu"
account = "proj-42"
time = "1-12:00:00"
cpus = 8
mem = "32G"
gpus = "a100:2"
setup = '''
module load python/3.11
source ~/venvs/lab/bin/activate
'''
notebook_dir = "~/projects"
transport = "socket"
extra_directives = ["--constraint=a100"]
local_port = 9999
idle_timeout = "2h"
walltime_warnings = ["2m", "15m"]
""")
    p = resolve("gpu", path, {"time": "45m", "cpus": None, "partition": "debug"})
    assert p == Profile(
        name="gpu", host="me@login.example.org", source=str(path),
        ssh_options=("-F", "/home/me/.ssh/other config"), scheduler="slurm", partition="debug",
        account="proj-42", time=45 * 60, cpus=8, mem="32G", gpus="a100:2",
        setup=("module load python/3.11", "source ~/venvs/lab/bin/activate"), notebook_dir="~/projects",
        transport="socket", extra_directives=("--constraint=a100",), local_port=9999, idle_timeout=7200,
        walltime_warnings=(900, 120),
    )


def test_defaults(tmp_path: Path) -> None:
    p = resolve("x", write(tmp_path, '[profiles.x]\nhost = "login"\n'))
    assert (p.scheduler, p.time, p.transport, p.idle_timeout, p.walltime_warnings) == ("slurm", 3600, "auto", 3600,
                                                                                      (600, 120))


def test_unknown_key_names_file_profile_key_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.gpu]\nhost = "login"\nwallclock = "1h"\n')
    with pytest.raises(ConfigError) as exc:
        resolve("gpu", path)
    assert exc.value.message == f"unknown key 'wallclock' in [profiles.gpu] in {path}"
    assert exc.value.hint == "valid keys: " + ", ".join(KEYS)
    assert "account, conda, cpus, env, extra_directives, gpus, host" in exc.value.hint


def test_missing_host(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing key 'host'"):
        resolve("x", write(tmp_path, '[profiles.x]\ntime = "1h"\n'))


def test_unknown_profile_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve("nope", write(tmp_path, '[profiles.a]\nhost = "l"\n[profiles.b]\nhost = "l"\n'))
    assert exc.value.hint == "profiles defined there: a, b"


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config file"):
        resolve("x", tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve("x", write(tmp_path, "[profiles.x\n"))


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("time", '"forever"', "a time limit"),
        ("time", '"30s"', "under one minute"),
        ("transport", '"udp"', "one of auto, socket, tcp"),
        ("scheduler", '"condor"', "one of "),
        ("partition", '"debug; touch /tmp/owned"', "no spaces or shell characters"),
        ("account", '"$(id)"', "no spaces or shell characters"),
        ("partition", '"-p"', "plain name"),
        ("cpus", "0", "positive whole number"),
        ("cpus", "true", "positive whole number"),
        ("mem", '"lots"', "an amount like"),
        ("gpus", '"2; reboot"', "a count"),
        ("local_port", "80", "between 1024 and 65535"),
        ("host", '"-oProxyCommand=touch /tmp/x"', "not starting with '-'"),
        ("host", '"login host"', "no spaces"),
        ("ssh_options", '["-A"]', "free of '-A'"),
        ("ssh_options", '["-vA"]', "free of '-vA'"),
        ("ssh_options", '["-g"]', "free of '-g'"),
        ("ssh_options", '["-o", "StrictHostKeyChecking=no"]', "free of 'StrictHostKeyChecking=no'"),
        ("ssh_options", '["-oStrictHostKeyChecking no"]', "free of"),
        ("ssh_options", '["-o", "stricthostkeychecking=accept-new"]', "never relaxes host-key checking"),
        ("ssh_options", '["-o", "UserKnownHostsFile=/dev/null"]', "free of"),
        ("ssh_options", '["-o", "ForwardAgent=yes"]', "free of"),
        ("ssh_options", '["-o", "GatewayPorts=yes"]', "free of"),
        ("ssh_options", '["-o", "ControlPath=/tmp/x"]', "connection sharing"),
        ("ssh_options", '["-L", "8888:node:8888"]', "free of '-L'"),
        ("extra_directives", '["a\\nb"]', "single-line"),
        ("idle_timeout", '"soon"', "a duration"),
        ("walltime_warnings", '"10m"', "a list of durations"),
    ],
)
def test_bad_values_are_refused(tmp_path: Path, key: str, value: str, expect: str) -> None:
    host = "" if key == "host" else 'host = "login"\n'
    path = write(tmp_path, f"[profiles.x]\n{host}{key} = {value}\n")
    with pytest.raises(ConfigError) as exc:
        resolve("x", path)
    assert f"for '{key}' in [profiles.x] in {path}" in exc.value.message
    assert expect in (exc.value.hint or "")


def test_ordinary_ssh_options_pass(tmp_path: Path) -> None:
    opts = '["-F", "/x/-A config", "-p", "2222", "-i", "~/.ssh/id", "-v", "-o", "ProxyJump=bastion", "-4"]'
    path = write(tmp_path, f'[profiles.x]\nhost = "login"\nssh_options = {opts}\n')
    assert resolve("x", path).ssh_options[1] == "/x/-A config"


def test_flags_are_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.x]\nhost = "login"\n')
    with pytest.raises(ConfigError, match="bad value 'x; y' for 'partition' in command-line flag"):
        resolve("x", path, {"partition": "x; y"})


def test_notebook_dir_with_spaces_quotes_and_newline_is_data(tmp_path: Path) -> None:
    path = write(tmp_path, "[profiles.x]\nhost = \"login\"\nnotebook_dir = \"my dir/it's \\\"here\\\"\\nnext\"\n")
    assert resolve("x", path).notebook_dir == "my dir/it's \"here\"\nnext"
