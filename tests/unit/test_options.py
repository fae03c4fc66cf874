"""The one table of options, and what is generated from it: the `up` flags, the profile's
validation, the JobSpec; shell completion from the same parser."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest

from conftest import Local
from hpclab import cli, options
from hpclab.errors import ConfigError
from hpclab.profiles import Profile, from_table
from hpclab.schedulers import JobSpec


def test_the_table_and_the_profile_agree() -> None:
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name", "source"}
    assert set(options.KEYS) == fields


def test_job_options_are_the_job_spec_fields() -> None:
    spec_fields = {f.name for f in dataclasses.fields(JobSpec)}
    assert set(options.JOB_KEYS) <= spec_fields


def test_every_flag_of_up_comes_from_the_table() -> None:
    up = next(a for a in cli.parser()._actions if a.dest == "command").choices["up"]  # type: ignore[union-attr]
    dests = {a.dest for a in up._actions if a.option_strings}
    assert {o.key for o in options.FLAGS} <= dests
    for o in options.FLAGS:
        assert o.flag_name in up._option_string_actions


@pytest.mark.parametrize(("key", "value"), [
    ("partition", "debug\n"), ("account", "proj\n"), ("host", "login\n"), ("mem", "4G\n"), ("gpus", "1\n"),
    ("partition", "a b"), ("account", "-x"), ("host", "-oProxyCommand=x"), ("mem", "4G;id"), ("env", {"A\n": "x"}),
    ("transport", "socket\n"), ("scheduler", "slurm\n"), ("cpus", True), ("local_port", 80),
])
def test_validators_take_the_whole_value_only(key: str, value: object) -> None:
    table = {"host": "login", key: value}
    with pytest.raises(ConfigError, match=key):
        from_table("p", table, where="[profiles.p]", source="x")


def test_an_unknown_key_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        from_table("p", {"host": "login", "wallclock": "1h"}, where="[profiles.p]", source="x")
    assert "unknown key 'wallclock'" in exc.value.message
    assert "partition" in (exc.value.hint or "") and "time" in (exc.value.hint or "")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_parse(local: Local, shell: str) -> None:
    rc, out, _ = local.hpclab("completion", shell)
    assert rc == 0 and "_complete" in out
    assert ("-l partition" if shell == "fish" else "--partition") in out
    # bash is always here; zsh and fish check their script where they are installed
    if shell == "bash" or shutil.which(shell):
        check = ["-n"] if shell != "fish" else ["--no-execute"]
        subprocess.run([shell, *check], input=out, text=True, check=True)


def test_completion_completes_profiles_and_sessions_from_local_files(local: Local) -> None:
    _rc, out, _ = local.hpclab("_complete", "profiles")
    assert out.split() == ["local", "local-auto"]
    assert local.hpclab("_complete", "sessions")[1] == ""
    doc = local.json("up", "local", "--detach", "--no-browser")
    connects = local.remote.counters.connects
    assert local.hpclab("_complete", "sessions")[1].split() == [doc["id"]]
    assert local.remote.counters.connects == connects  # no connection for completing


def test_bash_completion_offers_commands_flags_and_names(local: Local) -> None:
    _rc, script, _ = local.hpclab("completion", "bash")
    hpclab = local.root / "bin" / "hpclab"
    hpclab.write_text("#!/bin/sh\n[ \"$1\" = _complete ] && [ \"$2\" = profiles ] && echo 'local local-auto'\n")
    hpclab.chmod(0o755)

    def complete(*words: str) -> list[str]:
        program = (script + f"\nCOMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; _hpclab; "
                   'printf "%s\\n" "${COMPREPLY[@]}"')
        env = {"PATH": f"{local.root / 'bin'}:/usr/bin:/bin"}
        return subprocess.run(["bash", "-c", program], capture_output=True, text=True, env=env).stdout.split()

    assert "up" in complete("hpclab", "u") and "attach" not in complete("hpclab", "u")
    assert "--partition" in complete("hpclab", "up", "--p")
    assert complete("hpclab", "up", "l") == ["local", "local-auto"]
    assert complete("hpclab", "up", "--transport", "s") == ["socket"]
