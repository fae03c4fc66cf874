"""Environments as data: validation, the bash that loads them (run here with real bash), the
kernel specs and launchers, and the probe's parser on output captured on the test cluster."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from hpclab import cli, envs
from hpclab.envs import Environment, Kernel, check_conda, check_kernels, check_modules, check_venv, parse_probe
from hpclab.errors import ConfigError
from hpclab.jobscript import JobOptions, render
from hpclab.profiles import Profile, resolve
from hpclab.schedulers import JobSpec, get

FIXTURES = Path(__file__).parent / "fixtures" / "envs"
HOSTILE = ("x; touch owned", "$(touch owned)", "`touch owned`", "a'b", 'a"b', "a b", "x\ntouch owned", "-rf")


# -- the probe's parser ------------------------------------------------------------------------


def test_probe_good_profile() -> None:
    report = parse_probe((FIXTURES / "probe-good.txt").read_text())
    assert report.complete and report.ok
    assert [(s.step, s.what) for s in report.steps] == [("module", "jupyter"),
                                                        ("jupyter", "/opt/hpclab-jupyter/bin/jupyter")]
    assert report.jupyter == "/opt/hpclab-jupyter/bin/jupyter"
    assert report.jupyter_server == "2.21.1"
    assert [k.name for k in report.kernels] == ["env2", "python"]
    env2 = report.kernels[0]
    assert env2.ok and env2.steps[-1].step == "ipykernel" and env2.steps[-1].detail == "7.4.0"
    assert report.kernels[1].steps[-1].what == "/opt/hpclab-jupyter/bin/python3"


def test_probe_names_what_failed() -> None:
    report = parse_probe((FIXTURES / "probe-failures.txt").read_text())
    assert report.complete and not report.ok
    failed = {(s.kernel, s.step, s.what): s for s in report.failed}
    assert set(failed) == {
        ("", "module", "nope/1.0"), ("", "module", "broken"), ("", "jupyter", "/opt/hpclab-env2/bin/jupyter"),
        ("bad", "venv", "~/not a venv"), ("noipy", "ipykernel", "/opt/hpclab-python/3.11/bin/python"),
        ("r", "program", "R"), ("c", "conda", "lab"),
    }
    assert "The following module(s) are unknown" in failed["", "module", "nope/1.0"].error
    assert "cuda" in failed["", "module", "broken"].error
    assert "is not a virtual environment" in failed["bad", "venv", "~/not a venv"].error
    assert "No module named 'ipykernel'" in failed["noipy", "ipykernel", "/opt/hpclab-python/3.11/bin/python"].error
    assert "no conda, mamba or micromamba found" in failed["c", "conda", "lab"].error
    assert report.jupyter == "/opt/hpclab-env2/bin/jupyter" and report.jupyter_server is None
    # a kernel whose environment did not load is not checked further
    assert [s.step for s in next(k for k in report.kernels if k.name == "bad").steps] == ["venv"]
    assert next(k for k in report.kernels if k.name == "env2").ok


def test_probe_cut_short_is_not_ok() -> None:
    text = (FIXTURES / "probe-good.txt").read_text()
    report = parse_probe(text.replace('@@hpclab-env {"step": "end"}\n', ""))
    assert not report.complete and not report.ok and not report.failed


def test_probe_banner_lines_are_not_steps() -> None:
    text = 'ok\n{"step": "module"}\nx@@hpclab-env {"step": "end"}\n@@hpclab-env not json\n'
    report = parse_probe(text)
    assert report.steps == () and not report.complete


# -- the probe, run here with real bash (no modules, no conda on this machine) ----------------


def run_probe(env: Environment, kernels: tuple[Kernel, ...], home: Path) -> envs.EnvReport:
    environ = {"PATH": os.environ["PATH"], "HOME": str(home)}
    out = subprocess.run(["bash", "-s"], input=envs.probe_program(env, kernels), capture_output=True, text=True,
                         env=environ, timeout=60, check=False, cwd=home)
    return parse_probe(out.stdout)


def test_probe_venv_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "plain dir").mkdir()
    report = run_probe(Environment(venv="~/plain dir"), (Kernel("k", env=Environment(venv="~/plain dir")),), tmp_path)
    assert report.complete
    step = report.steps[0]
    assert (step.step, step.what, step.ok) == ("venv", "~/plain dir", False)
    assert f"{tmp_path}/plain dir is not a virtual environment" in step.error
    # the kernel's launcher would stop there: what it would start is not checked
    assert [(s.step, s.ok) for s in report.kernels[0].steps] == [("venv", False)]


def test_probe_hostile_names_stay_data(tmp_path: Path) -> None:
    kernels = tuple(Kernel(f"k{i}", env=Environment(venv=v)) for i, v in enumerate(HOSTILE))
    report = run_probe(Environment(venv=HOSTILE[0]), kernels, tmp_path)
    assert report.complete
    assert [s.what for k in report.kernels for s in k.steps] == list(HOSTILE)
    assert not (tmp_path / "owned").exists()


# -- validation --------------------------------------------------------------------------------


def test_modules() -> None:
    assert check_modules(["python/3.11", "R/4.3.1-foss-2023a", "gcc@12.2+cuda"]) == (
        "python/3.11", "R/4.3.1-foss-2023a", "gcc@12.2+cuda")
    assert check_modules("python/3.11, jupyter") == ("python/3.11", "jupyter")
    for bad in (*HOSTILE, "jupyter\n", ""):
        with pytest.raises(ValueError, match="module names"):
            check_modules([bad])
    with pytest.raises(ValueError):
        check_modules("jupyter; rm -rf ~")


def test_venv_and_conda() -> None:
    assert check_venv("~/venvs/my lab") == "~/venvs/my lab"
    for bad in ("", " ", "a\nb", 3):
        with pytest.raises(ValueError, match="virtual environment"):
            check_venv(bad)
    assert check_conda("lab") == "lab" and check_conda("~/envs/x y") == "~/envs/x y"
    assert check_conda("/opt/conda/envs/bio") == "/opt/conda/envs/bio"
    for bad in ("a b", "x;y", "$(x)", "-n", "", "~/a\nb"):
        with pytest.raises(ValueError, match="conda environment name"):
            check_conda(bad)


def test_kernels() -> None:
    (k,) = check_kernels([{"name": "torch", "venv": "~/venvs/torch", "modules": ["cuda/12"],
                           "display_name": 'PyTorch "2" </script>'}])
    assert k == Kernel("torch", 'PyTorch "2" </script>', Environment(("cuda/12",), "~/venvs/torch"))
    with pytest.raises(ValueError, match=r"only the keys argv, conda, display_name, modules, name, venv "
                                         r"\(unknown key 'env' in kernel 'x'\)"):
        check_kernels([{"name": "x", "env": "y"}])
    with pytest.raises(ValueError, match="plain word"):
        check_kernels([{"venv": "/x"}])
    for name in ("a b", "x;y", "../x", "-x", "x\n"):
        with pytest.raises(ValueError, match="plain word"):
            check_kernels([{"name": name}])
    with pytest.raises(ValueError, match="venv or conda, not both"):
        check_kernels([{"name": "x", "venv": "/v", "conda": "c"}])
    with pytest.raises(ValueError, match="appears twice"):
        check_kernels([{"name": "x"}, {"name": "X"}])
    with pytest.raises(ValueError, match="module names"):
        check_kernels([{"name": "x", "modules": ["a b"]}])
    with pytest.raises(ValueError, match="argv"):
        check_kernels([{"name": "x", "argv": "R"}])
    with pytest.raises(ValueError, match="list of tables"):
        check_kernels({"name": "x"})


# -- the job's environment, run with real bash -------------------------------------------------

STANDIN = Path(__file__).parents[1] / "e2e" / "emulators" / "conda"
# `module` as a shell function, like Lmod's: it logs what it was asked and fails for "broken*".
FAKE_MODULE = ('module() { printf "%s\\n" "$@" >> "$LOG"; '
               'case $2 in broken*) echo "no such: $2" >&2; return 3;; esac; }\n')


def bash(script: str, home: Path, path: str = "/usr/bin:/bin", **extra: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": path, "HOME": str(home), "LOG": str(home / "log"), **extra}
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=environ, timeout=60,
                          cwd=home, check=False)


def make_venv(where: Path, python: str | None = None) -> Path:
    """A directory that is a venv as far as activation goes: bin/activate logs and prepends bin."""
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "activate").write_text(
        'echo "activate $VIRTUAL_ENV_NAME" >> "$LOG"\nexport VIRTUAL_ENV=' + shlex.quote(str(where))
        + '\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n')
    if python is not None:
        (where / "bin" / "python").write_text(python)
        (where / "bin" / "python").chmod(0o755)
    return where


def log(home: Path) -> list[str]:
    return (home / "log").read_text().splitlines() if (home / "log").exists() else []


def test_job_environment_loads_modules_then_venv(tmp_path: Path) -> None:
    make_venv(tmp_path / "venvs" / "my lab")
    env = Environment(modules=("python/3.11", "jupyter"), venv="~/venvs/my lab")
    out = bash(FAKE_MODULE + envs.job_environment(env) + 'echo "VIRTUAL_ENV=$VIRTUAL_ENV"', tmp_path)
    assert out.returncode == 0, out.stderr
    assert log(tmp_path) == ["load", "python/3.11", "load", "jupyter", "activate "]
    assert f"VIRTUAL_ENV={tmp_path}/venvs/my lab" in out.stdout


def test_job_environment_nothing_for_no_environment() -> None:
    assert envs.job_environment(Environment()) == ""
    assert envs.job_kernels(()) == ""


def test_job_stops_at_a_module_that_fails(tmp_path: Path) -> None:
    make_venv(tmp_path / "v")
    env = Environment(modules=("ok", "broken/1", "later"), venv="~/v")
    out = bash(FAKE_MODULE + envs.job_environment(env) + "echo reached", tmp_path)
    assert out.returncode == envs.ENV_STATUS
    assert "hpclab: module load broken/1 failed with status 3" in out.stderr
    assert log(tmp_path) == ["load", "ok", "load", "broken/1"]  # nothing after it ran
    assert "reached" not in out.stdout


def test_job_refuses_a_venv_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "not a venv").mkdir()
    out = bash(envs.job_environment(Environment(venv="~/not a venv")) + "echo reached", tmp_path)
    assert out.returncode == envs.ENV_STATUS
    assert f"hpclab: {tmp_path}/not a venv is not a virtual environment (there is no " in out.stderr
    assert "reached" not in out.stdout


@pytest.mark.parametrize("evil", HOSTILE)
def test_job_environment_names_are_data(tmp_path: Path, evil: str) -> None:
    # validation refuses these; the rendering must not need it to
    out = bash(FAKE_MODULE + envs.job_environment(Environment(modules=(evil,), venv=evil)), tmp_path)
    assert log(tmp_path) == ["load", evil] if "\n" not in evil else ["load", *evil.split("\n")]
    assert out.returncode == envs.ENV_STATUS and "is not a virtual environment" in out.stderr
    assert not (tmp_path / "owned").exists()
    out = bash(envs.job_environment(Environment(conda=evil)), tmp_path)
    assert out.returncode == envs.ENV_STATUS and not (tmp_path / "owned").exists()


# -- conda, against the stand-in ---------------------------------------------------------------


def install_standin(root: Path, envs_: tuple[str, ...] = ("bio",)) -> Path:
    import shutil

    shutil.copytree(STANDIN, root)
    (root / "conda-meta").mkdir()
    for name in envs_:
        (root / "envs" / name / "conda-meta").mkdir(parents=True)
        (root / "envs" / name / "bin").mkdir()
    return root


@pytest.mark.parametrize("place", ["miniforge3", "miniconda3", "anaconda3", "mambaforge"])
def test_conda_found_in_the_usual_places_without_conda_init(tmp_path: Path, place: str) -> None:
    install_standin(tmp_path / place)
    script = envs.job_environment(Environment(conda="bio")) + 'echo "$CONDA_DEFAULT_ENV|$CONDA_PREFIX|$PATH"'
    out = bash(script, tmp_path)
    assert out.returncode == 0, out.stderr
    root = tmp_path / place
    # base, activated by the hook, gives its place on PATH to bio (as conda does without --stack)
    assert out.stdout.strip() == f"bio|{root}/envs/bio|{root}/envs/bio/bin:/usr/bin:/bin"


def test_conda_from_conda_exe_and_path_and_by_prefix(tmp_path: Path) -> None:
    root = install_standin(tmp_path / "site conda")
    show = 'echo "$CONDA_DEFAULT_ENV|$CONDA_PREFIX"'
    out = bash(envs.job_environment(Environment(conda="bio")) + show, tmp_path, CONDA_EXE=str(root / "bin" / "conda"))
    assert out.stdout.strip() == f"bio|{root}/envs/bio", out.stderr
    out = bash(envs.job_environment(Environment(conda="bio")) + show, tmp_path, path=f"{root}/bin:/usr/bin:/bin")
    assert out.stdout.strip() == f"bio|{root}/envs/bio", out.stderr
    out = bash(envs.job_environment(Environment(conda="~/site conda/envs/bio")) + show, tmp_path,
               path=f"{root}/bin:/usr/bin:/bin")
    assert out.stdout.strip() == f"{root}/envs/bio|{root}/envs/bio", out.stderr


def test_conda_unknown_environment_is_a_job_error(tmp_path: Path) -> None:
    install_standin(tmp_path / "miniforge3")
    out = bash(envs.job_environment(Environment(conda="nope")) + "echo reached", tmp_path)
    assert out.returncode == envs.ENV_STATUS and "reached" not in out.stdout
    assert "EnvironmentNameNotFound: Could not find conda environment: nope" in out.stderr
    assert "hpclab: conda activate nope failed with status 1" in out.stderr


def test_no_conda_anywhere_is_a_job_error(tmp_path: Path) -> None:
    out = bash(envs.job_environment(Environment(conda="bio")) + "echo reached", tmp_path)
    assert out.returncode == envs.ENV_STATUS and "reached" not in out.stdout
    assert "hpclab: cannot activate the conda environment bio: no conda, mamba or micromamba found" in out.stderr


# -- kernels -----------------------------------------------------------------------------------


def render_kernels(tmp_path: Path, kernels: tuple[Kernel, ...], **extra: str) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "run time"
    runtime.mkdir(mode=0o700)
    script = (envs.JSON_FUNCTION + f"hpclab_runtime={shlex.quote(str(runtime))}\n" + envs.job_kernels(kernels)
              + 'echo "JUPYTER_PATH=$JUPYTER_PATH"; echo "VIRTUAL_ENV=${VIRTUAL_ENV:-}"')
    return bash(script, tmp_path, **extra)


def spec(tmp_path: Path, name: str) -> dict[str, object]:
    path = tmp_path / "run time" / "share" / "kernels" / name / "kernel.json"
    data: dict[str, object] = json.loads(path.read_text())
    return data


FAKE_PYTHON = """#!/bin/bash
if [ "$1" = -c ]; then exit "${HAS_IPYKERNEL:-0}"; fi
printf '%s\\n' "$0" "$@" "$VIRTUAL_ENV" > "$HOME/started"
"""


def start_kernel(tmp_path: Path, name: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """What jupyter_client does: the spec's argv with {connection_file} replaced, run as a process."""
    argv = [str(a).replace("{connection_file}", str(tmp_path / "kernel-1.json")) for a in spec(tmp_path, name)["argv"]]
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LOG": str(tmp_path / "log"), **extra}
    return subprocess.run(argv, capture_output=True, text=True, env=environ, timeout=60, check=False, cwd=tmp_path)


def test_kernel_specs_and_launchers_are_private(tmp_path: Path) -> None:
    make_venv(tmp_path / "venvs" / "env 2", FAKE_PYTHON)
    title = 'Env "2" \\ </script>\n\u00e9'
    out = render_kernels(tmp_path, (Kernel("env2", title, Environment(venv="~/venvs/env 2")),),
                         JUPYTER_PATH="/site/share")
    assert out.returncode == 0, out.stderr
    kdir = tmp_path / "run time" / "share" / "kernels" / "env2"
    assert f"JUPYTER_PATH={tmp_path}/run time/share:/site/share" in out.stdout
    assert "VIRTUAL_ENV=\n" in out.stdout  # the kernel's environment is not the job's
    data = spec(tmp_path, "env2")
    assert data["argv"] == [data["argv"][0], f"{kdir}/launch", "{connection_file}"]  # type: ignore[index]
    assert str(data["argv"][0]).endswith("bash")  # type: ignore[index]
    assert data["display_name"] == title and data["language"] == "python"
    for path in (kdir, kdir / "launch", kdir / "kernel.json", kdir.parent, kdir.parent.parent):
        assert path.stat().st_mode & 0o077 == 0, path
    started = start_kernel(tmp_path, "env2")
    assert started.returncode == 0, started.stderr
    assert (tmp_path / "started").read_text().splitlines() == [
        f"{tmp_path}/venvs/env 2/bin/python", "-m", "ipykernel_launcher", "-f", f"{tmp_path}/kernel-1.json",
        f"{tmp_path}/venvs/env 2"]
    assert log(tmp_path) == ["activate "]


def test_kernel_without_ipykernel_says_so(tmp_path: Path) -> None:
    make_venv(tmp_path / "v", FAKE_PYTHON)
    assert render_kernels(tmp_path, (Kernel("k", env=Environment(venv="~/v")),)).returncode == 0
    started = start_kernel(tmp_path, "k", HAS_IPYKERNEL="1")
    assert started.returncode == 1 and not (tmp_path / "started").exists()
    assert f"hpclab: kernel k: ipykernel is not installed in its environment ({tmp_path}/v/bin/python)" \
        in started.stderr


def test_kernel_whose_environment_fails(tmp_path: Path) -> None:
    assert render_kernels(tmp_path, (Kernel("k", env=Environment(venv="~/missing")),)).returncode == 0
    started = start_kernel(tmp_path, "k")
    assert started.returncode == 1 and "missing is not a virtual environment" in started.stderr


def test_kernel_argv_with_the_connection_file(tmp_path: Path) -> None:
    prog = tmp_path / "bin" / "my kernel"
    prog.parent.mkdir()
    prog.write_text('#!/bin/bash\nprintf "%s\\n" "$@" "$CONDA_DEFAULT_ENV" > "$HOME/started"\n')
    prog.chmod(0o755)
    install_standin(tmp_path / "miniforge3", ("r",))
    argv = (str(prog), "--f={connection_file}", "x; touch owned", "$(touch owned)", "")
    out = render_kernels(tmp_path, (Kernel("r", env=Environment(conda="r"), argv=argv),))
    assert out.returncode == 0, out.stderr
    assert spec(tmp_path, "r")["language"] == "my kernel"
    started = start_kernel(tmp_path, "r")
    assert started.returncode == 0, started.stderr
    assert (tmp_path / "started").read_text().split("\n")[:5] == [
        f"--f={tmp_path}/kernel-1.json", "x; touch owned", "$(touch owned)", "", "r"]
    assert not (tmp_path / "owned").exists()


def test_hostile_kernel_values_are_data(tmp_path: Path) -> None:
    kernels = tuple(Kernel(f"k{i}", display_name=evil, env=Environment(venv=evil), argv=(evil, "{connection_file}"))
                    for i, evil in enumerate(HOSTILE))
    out = render_kernels(tmp_path, kernels)
    assert out.returncode == 0, out.stderr
    for i, evil in enumerate(HOSTILE):
        assert spec(tmp_path, f"k{i}")["display_name"] == evil
        assert start_kernel(tmp_path, f"k{i}").returncode == 1
    assert not (tmp_path / "owned").exists() and not (tmp_path / "run time" / "owned").exists()


# -- profile keys and flags --------------------------------------------------------------------


def profile_from(tmp_path: Path, text: str, **flags: object) -> Profile:
    path = tmp_path / "config.toml"
    path.write_text("[profiles.p]\nhost = \"login\"\n" + text)
    return resolve("p", path, flags)


def test_profile_keys(tmp_path: Path) -> None:
    p = profile_from(tmp_path, '''
modules = ["python/3.11", "jupyter"]
venv = "~/venvs/lab"
kernels = [
  { name = "torch", venv = "~/venvs/torch", display_name = "PyTorch" },
  { name = "r", modules = ["R/4.3"], argv = ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"] },
  { name = "bio", conda = "bio" },
]
''')
    assert p.environment == Environment(("python/3.11", "jupyter"), "~/venvs/lab")
    assert [k.name for k in p.kernels] == ["torch", "r", "bio"]
    assert p.kernels[1].argv[-1] == "{connection_file}" and p.kernels[2].env.conda == "bio"


def test_flags(tmp_path: Path) -> None:
    p = profile_from(tmp_path, 'venv = "~/v"\n', modules="python/3.11, jupyter", conda="bio")
    assert p.environment == Environment(("python/3.11", "jupyter"), None, "bio")  # --conda replaces the venv
    p = profile_from(tmp_path, 'conda = "bio"\n', venv="~/w")
    assert p.environment == Environment((), "~/w", None)
    up = cli.parser().parse_args(["up", "p", "--modules", "a/1,b", "--venv", "~/v", "--conda", "c"])
    assert (up.modules, up.venv, up.conda) == ("a/1,b", "~/v", "c")


def test_venv_and_conda_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        profile_from(tmp_path, 'venv = "~/v"\nconda = "bio"\n')
    assert exc.value.message.startswith("both 'venv' and 'conda' in [profiles.p]")
    assert "keep venv or conda, not both" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="both 'venv' and 'conda' in command-line flag"):
        profile_from(tmp_path, "", venv="~/v", conda="bio")


def test_bad_values_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        profile_from(tmp_path, 'kernels = [{ name = "x", venv = "/v", vnev = "/w" }]\n')
    assert "for 'kernels' in [profiles.p]" in exc.value.message
    assert "only the keys argv, conda, display_name, modules, name, venv (unknown key 'vnev' in kernel 'x')" \
        in (exc.value.hint or "")
    with pytest.raises(ConfigError) as exc:
        profile_from(tmp_path, 'modules = ["jupyter; rm -rf ~"]\n')
    assert "for 'modules'" in exc.value.message and "module names" in (exc.value.hint or "")
    with pytest.raises(ConfigError, match="'conda'"):
        profile_from(tmp_path, "", conda="a b")


def test_the_job_script_gets_the_environment(tmp_path: Path) -> None:
    opts = JobOptions("0123abcd", "tcp", setup=("echo setup",), environment=Environment(("jupyter",), "~/v"),
                      kernels=(Kernel("env2", env=Environment(venv="/opt/env2")),))
    script = render(get("slurm"), JobSpec(session_id="0123abcd", time=600, output="o", error="e"), opts)
    # modules, then the venv, then the setup lines; the kernels after the safety settings
    order = [script.index(s) for s in ("hpclab_module jupyter ||", "hpclab_venv \"$HOME\"/v ||", "echo setup",
                                       "export JUPYTER_RUNTIME_DIR=", "share/kernels/\"env2", "JUPYTER_PATH=",
                                       "command jupyter lab")]
    assert order == sorted(order)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_a_value_that_spells_the_heredoc_end_stays_data(tmp_path: Path) -> None:
    # a line "HPCLAB_KERNEL" inside a launcher would end its here-document early and run the rest
    evil = "a\nHPCLAB_KERNEL\ntouch owned\nHPCLAB_KERNEL_\ntouch owned"
    out = render_kernels(tmp_path, (Kernel("k", argv=("printf", "%s", evil, "{connection_file}")),))
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "owned").exists()
    started = start_kernel(tmp_path, "k")
    assert started.stdout == evil + f"{tmp_path}/kernel-1.json"
