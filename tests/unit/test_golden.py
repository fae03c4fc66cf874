"""The job script each scheduler renders, byte for byte, and the rule that adding a scheduler
is adding one module plus its fixtures and golden file.

An intended change to a rendered script: HPCLAB_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py,
then review the diff of tests/unit/golden/ like any other change.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import shlex
import subprocess
from pathlib import Path

import pytest

import hpclab.schedulers as schedulers_pkg
from hpclab.envs import Environment, Kernel
from hpclab.jobscript import JobOptions, render
from hpclab.schedulers import JobSpec, Scheduler, get, names, registry

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
FIXTURES = HERE / "fixtures"
HELPER_MODULES = {"base", "detect"}  # in schedulers/ but not schedulers themselves
DATA = ("name", "title", "directive", "submit", "cancel", "job_id_var", "states")

SPEC = JobSpec(
    session_id="0123abcd", time=5400, output=".hpclab/sessions/0123abcd/job.out",
    error=".hpclab/sessions/0123abcd/job.err", partition="batch", account="proj1", cpus=4, mem="8G", gpus="2",
    extra_directives=("--site-option",), skip_directives=(),
)
OPTS = JobOptions(session_id="0123abcd", transport="auto", setup=("module load python/3.11",),
                  notebook_dir="~/work", idle_timeout=3600, env=(("LANG", "C.UTF-8"),))
# Grid Engine has no standard GPU request: its golden spec asks for one through the site's own directive.
SPEC_FOR = {"sge": JobSpec(**{**SPEC.__dict__, "gpus": None, "extra_directives": ("-l gpu=2",)})}


def rendered(name: str) -> str:
    return render(get(name), SPEC_FOR.get(name, SPEC), OPTS)


@pytest.mark.parametrize("name", names())
def test_golden_job_script(name: str) -> None:
    path = GOLDEN / f"{name}.sh"
    text = rendered(name)
    if os.environ.get("HPCLAB_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with HPCLAB_UPDATE_GOLDEN=1 pytest {__file__}"
    if path.read_text() != text:
        pytest.fail(
            f"the {name} job script differs from {path.relative_to(HERE.parent.parent)}.\n"
            f"If the change is intended: HPCLAB_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py, "
            f"then review and commit the diff of tests/unit/golden/.",
            pytrace=False,
        )


@pytest.mark.parametrize("name", names())
def test_rendered_script_is_valid_bash(name: str) -> None:
    subprocess.run(["bash", "-n"], input=rendered(name), text=True, check=True)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("evil", ["x; rm -rf ~", "$(touch /tmp/hpclab-owned)", "a'b\"c", "`id`"])
def test_adversarial_setup_and_dir_stay_valid_bash(name: str, evil: str) -> None:
    # setup lines are shell by design; the notebook dir and env values are data
    opts = JobOptions("0123abcd", "tcp", setup=(f"echo {shlex.quote(evil)}",), notebook_dir=f"~/{evil}",
                      env=(("X", evil),))
    spec = SPEC_FOR.get(name, SPEC)
    subprocess.run(["bash", "-n"], input=render(get(name), spec, opts), text=True, check=True)


def scheduler_modules() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(schedulers_pkg.__path__) if m.name not in HELPER_MODULES]


def test_every_module_defines_exactly_one_registered_scheduler() -> None:
    reg = registry()
    for module_name in scheduler_modules():
        module = importlib.import_module(f"hpclab.schedulers.{module_name}")
        own = [obj for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, Scheduler)
               and obj.__module__ == module.__name__]
        assert len(own) == 1, f"schedulers/{module_name}.py should define one Scheduler, not {own}"
        assert reg.get(own[0].name) is own[0], f"{own[0].__name__} is not registered under {own[0].name!r}"


@pytest.mark.parametrize("name", names())
def test_every_scheduler_is_data_plus_fixtures_and_golden(name: str) -> None:
    cls = registry()[name]
    missing = [attr for attr in DATA if not hasattr(cls, attr)]
    assert not missing, f"{cls.__name__} lacks {missing}"
    # Scheduler is an ABC: what a scheduler must say for itself (directives, submit and status
    # parsing) is abstract there, so a class that forgets one cannot be made.
    assert not inspect.isabstract(cls), f"{cls.__name__} leaves {sorted(cls.__abstractmethods__)} undefined"
    assert isinstance(cls.signals_before_end, bool)
    fixtures = FIXTURES / name
    assert fixtures.is_dir() and any(fixtures.iterdir()), f"captured output for {name} belongs in {fixtures}"
    assert (GOLDEN / f"{name}.sh").exists()


def test_signal_before_end_is_asked_for_or_timed() -> None:
    """A scheduler that sends SIGUSR1 before the end says so in a directive; the others get the timer."""
    for name in names():
        text = rendered(name)
        timer = "kill -USR1 $$" in text
        assert timer != get(name).signals_before_end, name


# Environments (envs.py): modules, a venv, and kernels; one scheduler is enough, the part is the same for all.
ENV_OPTS = dataclasses.replace(
    OPTS, environment=Environment(modules=("python/3.11", "jupyter"), venv="~/venvs/lab"),
    kernels=(Kernel("torch", display_name="PyTorch 2", env=Environment(venv="~/venvs/torch")),
             Kernel("r", env=Environment(modules=("R/4.3",)),
                    argv=("R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}")),
             Kernel("bio", env=Environment(conda="bio"))),
)


def test_golden_job_script_with_environments() -> None:
    path = GOLDEN / "slurm-envs.sh"
    text = render(get("slurm"), SPEC, ENV_OPTS)
    if os.environ.get("HPCLAB_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"no golden file {path}; create it with HPCLAB_UPDATE_GOLDEN=1 pytest {__file__}"
    if path.read_text() != text:
        pytest.fail(
            f"the slurm job script with environments differs from {path.relative_to(HERE.parent.parent)}.\n"
            f"If the change is intended: HPCLAB_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py, "
            f"then review and commit the diff of tests/unit/golden/.",
            pytrace=False,
        )
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
