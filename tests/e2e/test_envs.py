"""Environments as profile keys on the real test cluster: JupyterLab from the Lmod module `jupyter`
alone (no setup line), kernels from other environments run in the browser, JupyterLab from a
conda environment, and an environment that does not load ending the job with a clear error.

Real parts: Lmod and its module tree, the second environment /opt/hpclab-env2 (the only one with
`tabulate`), SLURM, JupyterLab, Chromium. conda cannot be installed here: the conda environment
comes from the conda STAND-IN of tests/e2e/emulators/conda (conda's documented `shell.bash hook`
and `activate`), copied into the test user's home for the test and removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import URL_RE, Hpclab, hpclab, lab_api, profile_text, run_cell, session_dirs, tc, tcx, user_jobs, wait_for

__all__ = ["hpclab"]

STANDIN = Path(__file__).parent / "emulators" / "conda"
ENV2 = "/opt/hpclab-env2"
JUPYTER_DATA = Path("/home") / "hpcuser" / ".local" / "share" / "jupyter"


@pytest.fixture
def conda_standin() -> Iterator[Path]:
    """The conda stand-in in the test user's home, with an environment `bio` whose python is
    env2's (so it has ipykernel and tabulate) and one, `lab`, whose jupyter is the cluster's;
    its bin/conda path is returned."""
    user = tc("TC_USER")
    root = Path("/home") / user / f".hpclab-conda-standin-{os.urandom(4).hex()}"
    try:
        shutil.copytree(STANDIN, root)
        (root / "conda-meta").mkdir()
        bio = root / "envs" / "bio"
        (bio / "conda-meta").mkdir(parents=True)
        (bio / "bin").mkdir()
        (bio / "bin" / "python").write_text(f'#!/bin/sh\nexec {ENV2}/bin/python "$@"\n')
        (bio / "bin" / "python").chmod(0o755)
        # an environment `lab` whose jupyter notes the environment it was started in
        lab = root / "envs" / "lab"
        (lab / "conda-meta").mkdir(parents=True)
        (lab / "bin").mkdir()
        (lab / "bin" / "jupyter").write_text(
            '#!/bin/sh\necho "$CONDA_DEFAULT_ENV $CONDA_PREFIX" > "$CONDA_PREFIX/started-in"\n'
            f'exec {tc("TC_JUPYTER_VENV")}/bin/jupyter "$@"\n')
        (lab / "bin" / "jupyter").chmod(0o755)
        subprocess.run(["chown", "-R", f"{user}:{user}", str(root)], check=True)
        yield root / "bin" / "conda"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def config(extra: str) -> str:
    """The test cluster's profile without its setup line, plus `extra` (TOML lines)."""
    lines = [ln for ln in profile_text().splitlines() if not ln.startswith("setup =")]
    return "\n".join(lines) + "\n" + extra


def user_kernels() -> list[str]:
    kernels = JUPYTER_DATA / "kernels"
    return sorted(p.name for p in kernels.iterdir()) if kernels.is_dir() else []


def run_in(url: str, code: str, kernel: str) -> str:
    """run_cell with that kernel, then its session ended: the next notebook run_cell makes gets the
    same name (the last one was deleted), and a session still open for it would bring its kernel."""
    try:
        return run_cell(url, code, kernel=kernel)
    finally:
        for session in lab_api(url, "/api/sessions"):
            lab_api(url, f"/api/sessions/{session['id']}", method="DELETE")


def start_kernel(url: str, name: str) -> None:
    """POST /api/kernels for kernel spec `name`; a kernel that dies at once may or may not be refused."""
    m = URL_RE.search(url)
    assert m, url
    req = urllib.request.Request(f"http://127.0.0.1:{m.group(1)}/api/kernels", method="POST",
                                 data=json.dumps({"name": name}).encode(),
                                 headers={"Authorization": f"token {m.group(2)}", "Content-Type": "application/json"})
    with contextlib.suppress(urllib.error.HTTPError), urllib.request.urlopen(req, timeout=60):
        pass


def test_lab_from_modules_alone_with_kernels_from_other_environments(hpclab: Hpclab, conda_standin: Path) -> None:
    before, had_dir = user_kernels(), (JUPYTER_DATA / "kernels").is_dir()
    hpclab.write_config(config(
        'modules = ["jupyter"]\n'
        f'env = {{ CONDA_EXE = "{conda_standin}" }}\n'
        'kernels = [\n'
        f'  {{ name = "env2", venv = "{ENV2}", display_name = "Env 2 \\"tabulate\\" </b>" }},\n'
        '  { name = "bio", conda = "bio" },\n'
        '  { name = "envmod", modules = ["env2"] },\n'
        '  { name = "noipy", modules = ["python"] },\n'
        ']\n'))
    try:
        lab_with_kernels(hpclab, conda_standin)
    finally:  # a session's kernels written into the user's own Jupyter directory would stay there
        for name in set(user_kernels()) - set(before):
            shutil.rmtree(JUPYTER_DATA / "kernels" / name)
        if not had_dir and (JUPYTER_DATA / "kernels").is_dir() and not user_kernels():
            (JUPYTER_DATA / "kernels").rmdir()
    assert user_kernels() == before


def lab_with_kernels(hpclab: Hpclab, conda_standin: Path) -> None:
    before = user_kernels()
    info = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    assert info["state"] == "running"

    specs = lab_api(info["url"], "/api/kernelspecs")["kernelspecs"]
    assert {"env2", "bio", "envmod"} <= set(specs)
    assert specs["env2"]["spec"]["display_name"] == 'Env 2 "tabulate" </b>'
    rdv = json.loads((Path("/home") / tc("TC_USER") / ".hpclab" / "sessions" / info["id"] / "rendezvous.json")
                     .read_text())
    runtime = rdv["runtime_dir"]
    launcher = specs["env2"]["spec"]["argv"][1]
    assert launcher == f"{runtime}/share/kernels/env2/launch"
    # nothing of the session in the user's own Jupyter data directory
    assert user_kernels() == before and "env2" not in before and "bio" not in before

    # the lab's own kernel is the module's (no tabulate) and has none of the kernels' environments
    out = run_in(info["url"], "import os, importlib.util as u\n"
                 "print(os.environ.get('VIRTUAL_ENV'), os.environ.get('CONDA_DEFAULT_ENV'), u.find_spec('tabulate'))",
                 kernel="Python 3 (ipykernel)")
    assert out.strip() == f"{tc('TC_JUPYTER_VENV')} None None"
    out = run_in(info["url"], "import sys, tabulate; print(sys.prefix, tabulate.__name__)",
                 kernel='Env 2 "tabulate" </b>')
    assert out.strip() == f"{ENV2} tabulate"
    out = run_in(info["url"], "import os, tabulate\n"
                 "print(os.environ['CONDA_DEFAULT_ENV'], os.environ['CONDA_PREFIX'])", kernel="bio")
    assert out.strip() == f"bio {conda_standin.parent.parent}/envs/bio"
    out = run_in(info["url"], "import sys, tabulate; print(sys.prefix)", kernel="envmod")  # Lmod's env2 module
    assert out.strip() == ENV2

    # an environment without ipykernel: the kernel says so (in the job's error output), and dies
    start_kernel(info["url"], "noipy")
    err = Path("/home") / tc("TC_USER") / ".hpclab" / "sessions" / info["id"] / "job.err"
    wait_for(lambda: "hpclab: kernel noipy: ipykernel is not installed in its environment" in err.read_text(), 60,
             what="the kernel's error")

    tcx(rdv["node"], ["test", "-f", launcher])
    assert hpclab("stop", info["id"]).returncode == 0
    # the specs and launchers went with the session's private runtime dir
    assert tcx(rdv["node"], ["test", "-e", launcher], check=False).returncode == 1
    assert user_jobs(tc("TC_USER")) == []


def test_lab_from_a_conda_environment(hpclab: Hpclab, conda_standin: Path) -> None:
    hpclab.write_config(config(f'conda = "lab"\nenv = {{ CONDA_EXE = "{conda_standin}" }}\n'))
    info = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    assert info["state"] == "running"
    prefix = conda_standin.parent.parent / "envs" / "lab"
    assert (prefix / "started-in").read_text() == f"lab {prefix}\n"
    assert hpclab("stop", info["id"]).returncode == 0


@pytest.mark.parametrize(("extra", "says"), [
    ('modules = ["jupyter", "nosuchmodule/1.0"]\n',
     ["The following module(s) are unknown", "hpclab: module load nosuchmodule/1.0 failed with status 1"]),
    ('modules = ["broken"]\nvenv = "/opt/hpclab-jupyter"\n',
     ["Cannot load module \"broken/1.0\"", "hpclab: module load broken failed with status 1"]),
    ('venv = "/opt/hpclab-modules"\n',
     ["hpclab: /opt/hpclab-modules is not a virtual environment (there is no /opt/hpclab-modules/bin/activate)"]),
    ('conda = "nope"\nenv = { CONDA_EXE = "@CONDA@" }\n',
     ["EnvironmentNameNotFound: Could not find conda environment: nope", "hpclab: conda activate nope failed"]),
], ids=["unknown-module", "module-that-fails", "not-a-venv", "unknown-conda-env"])
def test_an_environment_that_does_not_load_is_a_job_error(hpclab: Hpclab, conda_standin: Path, extra: str,
                                                           says: list[str]) -> None:
    hpclab.write_config(config(extra.replace("@CONDA@", str(conda_standin))))
    proc = hpclab("up", "testcluster", "--no-browser")
    assert proc.returncode == 5, proc.stderr
    assert "ended before Jupyter was ready" in proc.stderr and "(exit status 78)" in proc.stderr
    for text in says:
        assert text in proc.stderr
    assert user_jobs(tc("TC_USER")) == []
    assert session_dirs(tc("TC_USER")) == []
