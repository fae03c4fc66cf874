"""Environments as data: validation, the bash that loads them (run here with real bash), the
kernel specs and launchers, and the probe's parser on output captured on the test cluster."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpclab import envs
from hpclab.envs import Environment, Kernel, check_conda, check_kernels, check_modules, check_venv, parse_probe

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


def run_probe(env: Environment, kernels: tuple[Kernel, ...] = (), home: Path | None = None) -> envs.EnvReport:
    environ = {"PATH": os.environ["PATH"], "HOME": str(home or Path.cwd())}
    out = subprocess.run(["bash", "-s"], input=envs.probe_program(env, kernels), capture_output=True, text=True,
                         env=environ, timeout=60, check=False)
    return parse_probe(out.stdout)


def test_probe_venv_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "plain dir").mkdir()
    report = run_probe(Environment(venv="~/plain dir"), home=tmp_path)
    assert report.complete
    step = report.steps[0]
    assert (step.step, step.what, step.ok) == ("venv", "~/plain dir", False)
    assert f"{tmp_path}/plain dir is not a virtual environment" in step.error


def test_probe_hostile_names_stay_data(tmp_path: Path) -> None:
    kernels = tuple(Kernel(f"k{i}", env=Environment(venv=v)) for i, v in enumerate(HOSTILE))
    report = run_probe(Environment(venv=HOSTILE[0]), kernels, home=tmp_path)
    assert report.complete
    assert [s.what for k in report.kernels for s in k.steps] == list(HOSTILE)
    assert not (tmp_path / "owned").exists() and not (Path.cwd() / "owned").exists()


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
