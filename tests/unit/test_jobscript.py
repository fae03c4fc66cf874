"""The rendered job script: private, secret-free, and valid bash whatever the input."""

from __future__ import annotations

import json
import subprocess

import pytest

from hpclab.errors import ConfigError
from hpclab.jobscript import BODY, JobOptions, jupyter_args, render, shell_path
from hpclab.schedulers import JobSpec, get


def spec(**kw: object) -> JobSpec:
    base = dict(session_id="0123abcd", time=1800, output=".hpclab/sessions/0123abcd/job.out",
                error=".hpclab/sessions/0123abcd/job.err")
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["socket", "tcp", "auto"])
def test_script_is_valid_bash_and_private(transport: str) -> None:
    text = render(get("slurm"), spec(), JobOptions("0123abcd", transport, setup=("module load x",)))
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    assert text.startswith("#!/bin/bash\n#SBATCH --job-name=hpclab-0123abcd\n")
    assert "\numask 077\n" in text
    assert "unset XDG_RUNTIME_DIR JUPYTER_PORT JUPYTER_TOKEN" in text
    assert 'export JUPYTER_TOKEN_FILE="$HPCLAB_DIR/token"' in text
    assert "--no-browser" in text
    assert "token=" not in text.lower().replace("jupyter_token_file", "")
    assert "0.0.0.0" not in text and "--ip='*'" not in text and '--ip="*"' not in text


def test_transports_listen_where_they_should() -> None:
    sock = render(get("slurm"), spec(), JobOptions("0123abcd", "socket"))
    tcp = render(get("slurm"), spec(), JobOptions("0123abcd", "tcp"))
    assert "--ServerApp.sock_mode=0600" in sock and "--ServerApp.ip" not in sock
    assert '--ServerApp.ip="$hpclab_addr" --ServerApp.port=0 --ServerApp.port_retries=0' in tcp


def test_jupyter_hardening_arguments() -> None:
    args = jupyter_args(JobOptions("x", "socket", idle_timeout=900))
    assert "--KernelManager.transport=ipc" in args
    assert "--ServerApp.shutdown_no_activity_timeout=900" in args
    assert not any("shutdown_no_activity" in a for a in jupyter_args(JobOptions("x", "socket", idle_timeout=0)))


def test_scheduler_without_pre_end_signal_gets_a_timer() -> None:
    slurm = render(get("slurm"), spec(), JobOptions("0123abcd", "tcp"))
    assert "--signal=B:USR1@90" in slurm and "kill -USR1 $$" not in slurm


def test_template_override() -> None:
    text = render(get("slurm"), spec(), JobOptions("0123abcd", "tcp"),
                  template="#!/bin/bash\n{directives}\n#SBATCH --qos=site\n{body}")
    assert "#SBATCH --qos=site\n" in text and "hpclab_write rendezvous.json" in text


@pytest.mark.parametrize("path", ["~/my dir", "/data/it's \"q\"", "/x/new\nline", "~", "$(touch /tmp/owned)"])
def test_shell_path_is_data(path: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(["bash", "-c", f"printf %s {shell_path(path)}"], capture_output=True, text=True,
                         env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True).stdout
    expected = str(tmp_path) + path[1:] if path.startswith("~") else path
    assert out == expected


def test_a_template_keeps_its_own_braces_and_needs_a_body() -> None:
    template = '#!/bin/bash\n{directives}\nsite_setup() { echo "${SITE:-x}"; }\n{body}\n'
    text = render(get("slurm"), spec(), JobOptions("0123abcd", "tcp"), template=template)
    assert 'site_setup() { echo "${SITE:-x}"; }\n' in text
    assert "#SBATCH --job-name=hpclab-0123abcd" in text and "hpclab_write rendezvous.json" in text
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    with pytest.raises(ConfigError, match=r"no \{body\}"):
        render(get("slurm"), spec(), JobOptions("0123abcd", "tcp"), template="#!/bin/bash\n{directives}\n")


def _json_function() -> str:
    body = BODY.replace("{{", "{").replace("}}", "}")
    start = body.index("hpclab_json() {")
    return body[start:body.index("\n}\n", start) + 3]


@pytest.mark.parametrize("value", ["node1", 'a"b', "back\\slash", "tab\there", "new\nline", "q'uote", "ünï", "",
                                   "/tmp/with space", "\x01\x1f"])
def test_the_rendezvous_is_valid_json_whatever_the_host_name_or_tmpdir(value: str) -> None:
    out = subprocess.run(["bash", "-c", _json_function() + 'hpclab_json "$1"', "x", value],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == value
