"""`hpclab init`: the probe's parser on output captured from the test cluster, the proposal and
its prompts, TOML written safely (hostile names and paths), the config file appended to without
touching the user's text, and the whole command through LocalRemote with STAND-IN scheduler
commands. `init --yes` followed by a real `up` is in tests/e2e/test_doctor.py."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_json_contract import documented

from conftest import Local
from hpclab.errors import ConfigError
from hpclab.init import (
    Partition,
    Site,
    Source,
    parse_modules,
    parse_probe,
    parse_sinfo,
    profile_block,
    proposal,
    toml_string,
    without_profile,
    write_profile,
)
from hpclab.profiles import from_table, load_profiles

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = ['x"; rm -rf ~; "', "a\nb", "back\\slash", "tab\there", "bell\x07", "]\n[profiles.evil]\nhost = \"evil\"",
           "'single'", "ünïcödé ✓", "#comment", "a=b", "\x7f", '"""', "$(touch /tmp/hpclab-pwned)"]


# -- the probe ----------------------------------------------------------------------------------


def test_the_test_clusters_probe_reads_as_slurm_with_its_partitions_account_and_jupyter_module() -> None:
    site = parse_probe((FIXTURES / "init/probe-testcluster.txt").read_text())
    assert site.scheduler == "slurm"
    assert [(p.name, p.time_limit, p.default) for p in site.partitions] == [
        ("debug", None, True), ("long", 7 * 86400, False), ("shared", 86400, False)]
    assert site.accounts == ["research"] and site.default_account == "research"
    assert [s.label for s in site.sources] == ["module jupyter", "module python"]
    assert site.sources[0].keys == {"modules": ["jupyter"]}


def test_sinfo_gpus_and_node_groups_merge_per_partition() -> None:
    lines = ["gpu|2-00:00:00|gpu:a100:4(S:0-1)|up", "gpu|2-00:00:00|gpu:v100:2,tmpdisk:100|up",
             "cpu*|1:00:00|(null)|up", "down|1:00:00|(null)|down", "bad;name|1:00:00|(null)|up"]
    parts = parse_sinfo(lines)
    assert parts == [Partition("gpu", 2 * 86400, ("gpu:a100:4(S:0-1)", "gpu:v100:2"), False),
                     Partition("cpu", 3600, (), True)]


def test_module_names_that_may_hold_jupyter_once_per_family() -> None:
    lines = ["/opt/modules:", "Python/", "Python/3.11.4", "Python/3.12.1(default)", "anaconda3/2024.02", "gcc/12",
             "jupyterlab/4.1", "Miniforge3/24.3.0-0", "R/4.3", "evil;rm/1", "x y/1"]
    assert parse_modules(lines) == ["Python", "anaconda3", "jupyterlab", "Miniforge3"]


def test_probe_finds_venvs_conda_envs_and_modules_through_local_remote(local: Local) -> None:
    local.fake("sbatch", "#!/bin/sh\nexit 0\n")
    local.fake("sinfo", "#!/bin/sh\nprintf 'batch*|12:00:00|(null)|up\\ngpu|1-00:00:00|gpu:a100:2|up\\n'\n")
    local.fake("sacctmgr", "#!/bin/sh\ncase \"$*\" in *assoc*) printf 'proj1\\nproj2\\n';; *) echo proj2;; esac\n")
    local.fake("module", "#!/bin/sh\nprintf '/site:\\njupyter/4.2\\npython/3.12\\ngcc/13\\n' >&2\n")
    conda_env = local.root / "conda" / "envs" / "lab"
    for env in (conda_env, local.root / "conda" / "envs" / "bare"):
        (env / "bin").mkdir(parents=True)
    (conda_env / "bin" / "jupyter").write_text("#!/bin/sh\n")
    (conda_env / "bin" / "jupyter").chmod(0o755)
    local.fake("conda", f"#!/bin/sh\nprintf '# conda environments:\\n#\\nlab  {conda_env}\\nbare  "
                        f"{conda_env.parent / 'bare'}\\n'\n")
    for venv in ("venvs/lab", ".virtualenvs/other", "venvs/nojupyter"):
        (local.home / venv / "bin").mkdir(parents=True)
        (local.home / venv / "bin" / "activate").write_text("")
        if venv != "venvs/nojupyter":
            (local.home / venv / "bin" / "jupyter").write_text("#!/bin/sh\n")
            (local.home / venv / "bin" / "jupyter").chmod(0o755)
    from hpclab.init import probe

    site = probe(local.remote)
    assert site.scheduler == "slurm" and site.default_partition == Partition("batch", 12 * 3600, (), True)
    assert site.partitions[1].gpus == ("gpu:a100:2",)
    assert site.accounts == ["proj1", "proj2"] and site.default_account == "proj2"
    labels = [s.label for s in site.sources]
    assert labels[:2] == [f"venv {local.home}/venvs/lab", f"venv {local.home}/.virtualenvs/other"]
    assert labels[2] == f"conda env {conda_env}" and f"conda env {conda_env.parent / 'bare'}" not in labels
    assert labels[3] == "module jupyter" and labels[-1] == "module python"  # the PATH's jupyter sits between
    assert site.sources[0].keys == {"venv": "~/venvs/lab"}
    assert site.sources[2].keys == {"conda": str(conda_env)}
    assert local.remote.counters.commands == 1  # one round trip


# -- the proposal -----------------------------------------------------------------------------------


SITE = Site("slurm", [Partition("debug", None, (), True), Partition("short", 1800, ()),
                      Partition("gpu", 86400, ("gpu:a100:4",))],
            ["proj1", "proj2"], "proj2",
            [Source("venv /h/venvs/lab", {"venv": "~/venvs/lab"}, True),
             Source("module jupyter", {"modules": ["jupyter"]}, False)])


def test_yes_takes_the_probed_defaults() -> None:
    assert proposal(SITE, "login", ["-F", "cfg"]) == {
        "host": "login", "ssh_options": ["-F", "cfg"], "scheduler": "slurm", "partition": "debug",
        "account": "proj2", "time": "01:00:00", "venv": "~/venvs/lab"}
    one_account = Site("slurm", SITE.partitions, ["proj1"], "proj1", [])
    assert "account" not in proposal(one_account, "login", [])  # the scheduler's default is the only one
    short = Site("slurm", [Partition("short", 1800, (), True)])
    assert proposal(short, "login", [])["time"] == "00:30:00"  # never above the partition's limit


class Answers:
    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, str, list[str]]] = []

    def __call__(self, question: str, default: str, shown: Sequence[str]) -> str:
        self.asked.append((question, default, list(shown)))
        return self.answers.pop(0)


def test_prompts_offer_the_probed_defaults_and_refuse_bad_answers() -> None:
    ask = Answers("", "nope;rm", "proj1", "3h", "9", "2")
    table = proposal(SITE, "login", [], ask)
    assert [(q, d) for q, d, _ in ask.asked] == [
        ("partition", "debug"), ("account", "proj2"), ("account", "proj2"),
        ("time limit", "01:00:00"), ("where Jupyter comes from", "1"), ("where Jupyter comes from", "1")]
    assert ask.asked[0][2] == ["debug (default): time limit none", "short: time limit 00:30:00",
                               "gpu: time limit 24:00:00, GPUs gpu:a100:4"]
    assert "bad value 'nope;rm'" in ask.asked[2][2][0]  # a refused answer says why and asks again
    assert ask.asked[4][2][1] == "2. module jupyter (jupyter not verified: doctor checks it)"
    assert table == {"host": "login", "scheduler": "slurm", "partition": "debug", "account": "proj1",
                     "time": "3h", "modules": ["jupyter"]}


def test_no_scheduler_found_is_an_error_that_says_what_to_write() -> None:
    with pytest.raises(ConfigError, match="could not tell which scheduler"):
        proposal(Site("none-found"), "login", [])


# -- TOML -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_toml_strings_hold_exactly_the_text(text: str) -> None:
    assert tomllib.loads(f"v = {toml_string(text)}\n") == {"v": text}


@pytest.mark.parametrize("name", [*HOSTILE, "plain", "with.dot", "with space"])
def test_hostile_profile_names_and_values_round_trip_and_inject_nothing(tmp_path: Path, name: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[profiles.keep]\nhost = "keep"\n')
    table = {"host": "login", "setup": [f"module load {v}" for v in HOSTILE], "scheduler": "slurm"}
    write_profile(path, name, table)
    profiles = load_profiles(path)
    assert set(profiles) == {"keep", name} and profiles[name] == table
    assert from_table(name, profiles[name], where="x", source="x").setup == tuple(table["setup"])


def test_a_hostile_venv_path_from_the_cluster_is_only_ever_a_path(tmp_path: Path) -> None:
    """A venv directory whose name is shell code: written, read back and loaded by the job's own
    lines (envs.job_environment), it is a path that does not exist, and nothing runs."""
    from hpclab import envs

    pwned = tmp_path / "pwned"
    home = tmp_path / "home"
    evil = f'{home}/venvs/x"; touch {pwned}; "$(touch {pwned})`touch {pwned}`'
    text = f"@@detect\n@@have sbatch\n@@venvs\n{evil}\n@@home\n{home}\n"
    table = proposal(parse_probe(text), "login", [])
    assert table["venv"] == "~/venvs/x\"; touch " + str(pwned) + '; "$(touch ' + str(pwned) + f")`touch {pwned}`"
    path = tmp_path / "config.toml"
    write_profile(path, "p", table)
    profile = from_table("p", load_profiles(path)["p"], where="x", source="x")
    proc = subprocess.run(["bash", "-c", envs.job_environment(profile.environment)], capture_output=True, text=True,
                          env={**os.environ, "HOME": str(home)})
    assert proc.returncode == envs.ENV_STATUS and "is not a virtual environment" in proc.stderr
    assert not pwned.exists()


# -- the config file ------------------------------------------------------------------------------

USER_TEXT = """# my clusters (hand written)
[profiles.a]
host = "a"   # trailing comment
setup = [
  "module load x",
]

[profiles.b]
host = "b"
[[profiles.b.kernels]]
name = "k"
[profiles.b.more]
x = 1

[profiles.c]
host = "c"
"""


def test_a_new_config_file_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "config.toml"
    old = os.umask(0o022)
    try:
        write_profile(path, "x", {"host": "login"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_profiles(path) == {"x": {"host": "login"}}


def test_appending_keeps_the_users_text_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER_TEXT.rstrip("\n"))  # no final newline either
    path.chmod(0o640)
    write_profile(path, "new", {"host": "n"})
    text = path.read_text()
    assert text.startswith(USER_TEXT.rstrip("\n") + "\n\n[profiles.new]\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the user's own choice, appended to in place
    assert set(load_profiles(path)) == {"a", "b", "c", "new"}


def test_an_existing_profile_is_never_overwritten_without_replace(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER_TEXT)
    with pytest.raises(ConfigError, match="profile 'b' exists"):
        write_profile(path, "b", {"host": "new"})
    assert path.read_text() == USER_TEXT


def test_replacing_removes_that_profile_and_its_subtables_only(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(USER_TEXT)
    write_profile(path, "b", {"host": "new"}, replace=True)
    text = path.read_text()
    assert without_profile(USER_TEXT, "b") in text and "kernels" not in text and "x = 1" not in text
    assert load_profiles(path) == {"a": {"host": "a", "setup": ["module load x"]}, "c": {"host": "c"},
                                   "b": {"host": "new"}}


def test_a_file_that_would_not_read_back_is_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    # a multi-line string whose line looks like a header of the profile being replaced
    tricky = '[profiles.a]\nhost = "a"\nnote = """\n[profiles.b]\n"""\n[profiles.b]\nhost = "b"\n'
    path.write_text(tricky)
    with pytest.raises(ConfigError, match="the file is as it was"):
        write_profile(path, "b", {"host": "new"}, replace=True)
    assert path.read_text() == tricky


def test_a_config_file_that_is_not_toml_is_not_added_to(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[profiles.a\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        write_profile(path, "b", {"host": "b"})
    assert path.read_text() == "[profiles.a\n"


def test_kernels_are_written_as_inline_tables() -> None:
    kernels = [{"name": "r", "modules": ["R/4.3"], "argv": ["R", "-e", 'x"y', "{connection_file}"]}, {"name": "b"}]
    block = profile_block("x", {"host": "h", "kernels": kernels})
    assert 'kernels = [{ name = "r", modules = ["R/4.3"], argv = ["R", "-e", "x\\"y", "{connection_file}"] }, ' \
           '{ name = "b" }]' in block
    assert tomllib.loads(block)["profiles"]["x"]["kernels"] == kernels


def test_profile_block_is_what_the_user_sees() -> None:
    assert profile_block("x y", {"host": "h", "cpus": 2}) == (
        '[profiles."x y"]\n# written by hpclab init; `hpclab doctor` checks it\nhost = "h"\ncpus = 2\n')


# -- the command ----------------------------------------------------------------------------------


def slurm_stand_ins(local: Local) -> None:
    """STAND-INs for sbatch (which also answers --test-only), sinfo and sacctmgr, and a venv with jupyter."""
    local.fake("sbatch", "#!/bin/sh\n[ \"$1\" = --test-only ] && cat >/dev/null && "
                         "echo 'sbatch: Job 1 to start at now in partition batch' >&2\nexit 0\n")
    local.fake("sinfo", "#!/bin/sh\nprintf 'batch*|12:00:00|(null)|up\\n'\n")
    local.fake("sacctmgr", "#!/bin/sh\necho proj\n")
    venv = local.home / "venvs" / "lab" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f'PATH="{venv}:$PATH"\n')
    (venv / "jupyter").write_text('#!/bin/sh\n[ "$1 $2" = "server --version" ] && echo 2.21.1\n')
    (venv / "jupyter").chmod(0o755)
    (local.bin / "jupyter").unlink()  # only the venv has one


def test_init_yes_writes_the_profile_and_runs_doctor_on_it(local: Local) -> None:
    slurm_stand_ins(local)
    rc, out, err = local.hpclab("init", "site", "--host", "localhost", "--yes", "--json")
    doc: dict[str, Any] = json.loads(out)
    assert rc == 0, err
    assert set(doc) == documented()["hpclab init --json"]
    assert [set(c) for c in doc["checks"]] == [documented()["hpclab doctor --json"]] * len(doc["checks"])
    assert doc["written"] == {"host": "localhost", "scheduler": "slurm", "partition": "batch", "time": "01:00:00",
                              "venv": "~/venvs/lab"}
    assert {c["name"]: c["status"] for c in doc["checks"]}["jupyter"] == "ok"
    assert load_profiles(local.state / "config.toml")["site"] == doc["written"]
    assert local.remote.counters.connects == 1  # probe and doctor share one login


def test_init_yes_refuses_to_replace_an_existing_profile_before_connecting(local: Local) -> None:
    before = (local.state / "config.toml").read_text()
    rc, _, err = local.hpclab("init", "local", "--host", "localhost", "--yes")
    assert rc == 2 and "profile 'local' exists" in err and "on a terminal" in err
    assert (local.state / "config.toml").read_text() == before
    assert local.remote.counters.connects == 0


def test_init_refuses_unsafe_ssh_options(local: Local) -> None:
    rc, _, err = local.hpclab("init", "x", "--host", "localhost", "--ssh-options", "-o StrictHostKeyChecking=no",
                              "--yes")
    assert rc == 2 and "StrictHostKeyChecking=no" in err and local.remote.counters.connects == 0


class Terminal(io.StringIO):
    """Answers typed on a terminal."""

    def isatty(self) -> bool:
        return True


def test_on_a_terminal_init_asks_before_replacing_and_asks_each_value(local: Local,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_stand_ins(local)
    config = local.state / "config.toml"
    before = config.read_text()
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    rc, _, err = local.hpclab("init", "local", "--host", "localhost")
    assert rc == 2 and "replace it? (y/N)" in err and "left as it was" in err
    assert config.read_text() == before and local.remote.counters.connects == 0

    # yes; partition: the default; account: another; time: 2h; Jupyter: the first source
    monkeypatch.setattr(sys, "stdin", Terminal("y\n\nother\n2h\n\n"))
    rc, _, err = local.hpclab("init", "local", "--host", "localhost")
    assert rc == 0, err
    assert "partition [batch]: " in err and "time limit [01:00:00]: " in err and "  1. venv " in err
    profiles = load_profiles(config)
    assert profiles["local"] == {"host": "localhost", "scheduler": "slurm", "partition": "batch", "account": "other",
                                 "time": "2h", "venv": "~/venvs/lab"}
    assert profiles["local-auto"]["host"] == "localhost"  # the other profile is as it was


def test_yes_on_a_terminal_never_asks(local: Local, monkeypatch: pytest.MonkeyPatch) -> None:
    slurm_stand_ins(local)
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    rc, _, err = local.hpclab("init", "new", "--host", "localhost", "--yes")
    assert rc == 0 and "partition [" not in err and "replace it" not in err, err


@pytest.mark.parametrize("argv, said", [
    (["init", "x", "--host", "localhost", "--ssh-options", "-F 'unclosed", "--yes"], "cannot read --ssh-options"),
    (["init", " ", "--host", "localhost", "--yes"], "the profile needs a name"),
    (["init", "x", "--host=-oProxyCommand=x", "--yes"], "bad value '-oProxyCommand=x' for 'host'"),
])
def test_bad_arguments_are_refused_before_connecting(local: Local, argv: list[str], said: str) -> None:
    rc, _, err = local.hpclab(*argv)
    assert rc == 2 and said in err and local.remote.counters.connects == 0
