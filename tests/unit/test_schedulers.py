"""Every scheduler's parsers on captured output, its state map, its directives."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from hpclab.errors import ConfigError, SchedulerError
from hpclab.schedulers import JobSpec, JobState, get
from hpclab.schedulers.base import GUARD_MARK, gpu_request, guarded, hms, mem_mb, split_guarded

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(scheduler: str, name: str) -> str:
    return (FIXTURES / scheduler / name).read_text()


def spec(**kw: object) -> JobSpec:
    base = dict(session_id="0123abcd", time=5400, output=".hpclab/sessions/0123abcd/job.out",
                error=".hpclab/sessions/0123abcd/job.err")
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


# -- the guard ------------------------------------------------------------------------------


def test_guard_delivers_stdout_exit_status_and_stderr_and_exits_zero() -> None:
    argv = guarded(["sh", "-c", 'echo "{json}"; echo "qstat: Unknown Job Id 7.x" >&2; exit 153'])
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    out = split_guarded(proc.stdout)
    assert out == type(out)('{json}\n', "qstat: Unknown Job Id 7.x", 153)


def test_guard_reports_a_missing_command() -> None:
    proc = subprocess.run(guarded(["hpclab-no-such-command"]), capture_output=True, text=True, check=False)
    out = split_guarded(proc.stdout)
    assert out.returncode == 127 and "not found" in out.stderr


def test_unguarded_text_has_no_exit_status() -> None:
    assert split_guarded("just text").returncode is None
    assert split_guarded(f"{GUARD_MARK} 0\n").returncode == 0


def test_guard_is_one_line_without_bang() -> None:
    script = guarded(["x"])[2]
    assert "\n" not in script and "!" not in script


@pytest.mark.parametrize(("text", "mb"), [("4G", 4096), ("4GB", 4096), ("500M", 500), ("1.5g", 1536), ("2048", 2048),
                                          ("1T", 1048576), ("100K", 1)])
def test_mem_mb(text: str, mb: int) -> None:
    assert mem_mb(text) == mb


def test_mem_mb_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        mem_mb("4G; rm -rf ~")


def test_hms_keeps_hours_past_a_day() -> None:
    assert hms(5400) == "01:30:00" and hms(2 * 86400 + 61) == "48:01:01"


def test_gpu_request() -> None:
    assert gpu_request("2") == (None, 2) and gpu_request("a100:4") == ("a100", 4)


# -- PBS Pro --------------------------------------------------------------------------------


def test_pbs_submit() -> None:
    assert get("pbs").parse_submit(fixture("pbs", "qsub.txt")) == "1234.pbs01"
    assert get("pbs").parse_submit("qsub: warning: something\n1234.pbs01\n") == "1234.pbs01"
    with pytest.raises(SchedulerError):
        get("pbs").parse_submit("qsub: Unknown queue\n")


def test_pbs_running_job() -> None:
    info = get("pbs").parse_status(fixture("pbs", "qstat-running.json"), ["1234.pbs01"])["1234.pbs01"]
    assert info.state is JobState.RUNNING and info.node == "cn042"
    assert info.time_left == 3600 - 750  # walltime 01:00:00, used 00:12:30


def test_pbs_matches_ids_by_sequence_number() -> None:
    # qsub printed the short server name, qstat the long one (or the other way round)
    info = get("pbs").parse_status(fixture("pbs", "qstat-running.json"), ["1234.pbs01.example.org"])
    assert info["1234.pbs01.example.org"].state is JobState.RUNNING


def test_pbs_queued_job_has_reason_and_estimate() -> None:
    info = get("pbs").parse_status(fixture("pbs", "qstat-queued.json"), ["1235.pbs01"])["1235.pbs01"]
    assert info.state is JobState.PENDING and info.node is None
    assert info.reason and info.reason.startswith("Not Running: Insufficient amount of resource")
    assert info.start_time == "Wed Nov 25 22:10:00 2026"


@pytest.mark.parametrize(("name", "job_id", "state"), [
    ("qstat-finished.json", "1236.pbs01", JobState.ENDED),
    ("qstat-deleted.json", "1237.pbs01", JobState.CANCELLED),
    ("qstat-walltime.json", "1238.pbs01", JobState.TIMEOUT),
    ("qstat-oom.json", "1239.pbs01", JobState.OUT_OF_MEMORY),
])
def test_pbs_finished_jobs_by_exit_status(name: str, job_id: str, state: JobState) -> None:
    info = get("pbs").parse_status(fixture("pbs", name), [job_id])[job_id]
    assert info.state is state and info.state.ended and "Exit_status" in info.raw_state


def test_pbs_unknown_id_is_ended_and_the_other_is_still_read() -> None:
    found = get("pbs").parse_status(fixture("pbs", "qstat-one-unknown.guarded"), ["1234.pbs01", "1233.pbs01"])
    assert found["1234.pbs01"].state is JobState.RUNNING
    assert found["1233.pbs01"].state is JobState.ENDED


def test_pbs_failing_query_is_unknown_not_ended() -> None:
    found = get("pbs").parse_status(fixture("pbs", "qstat-server-down.guarded"), ["1234.pbs01"])
    assert found["1234.pbs01"].state is JobState.UNKNOWN


def test_pbs_garbage_is_unknown() -> None:
    assert get("pbs").parse_status(f'{{"Jobs": \n{GUARD_MARK} 0\n', ["1"])["1"].state is JobState.UNKNOWN


def test_pbs_directives() -> None:
    lines = get("pbs").directives(spec(cpus=4, mem="16G", gpus="2", partition="gpu", account="proj1"))
    assert lines == [
        "#PBS -N hpclab-0123abcd",
        "#PBS -o .hpclab/sessions/0123abcd/job.out",
        "#PBS -e .hpclab/sessions/0123abcd/job.err",
        "#PBS -j n",
        "#PBS -k oed",
        "#PBS -S /bin/bash",
        "#PBS -l walltime=01:30:00",
        "#PBS -l select=1:ncpus=4:mem=16384mb:ngpus=2",
        "#PBS -q gpu",
        "#PBS -A proj1",
    ]


def test_pbs_gpu_type_is_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigError) as err:
        get("pbs").directives(spec(gpus="a100:2"))
    assert "skip_directives" in (err.value.hint or "")


# -- Torque ---------------------------------------------------------------------------------


def test_torque_running_job_uses_walltime_remaining() -> None:
    info = get("torque").parse_status(fixture("torque", "qstat-x-running.xml"), ["2345.torque01"])["2345.torque01"]
    assert info.state is JobState.RUNNING and info.node == "cn042" and info.time_left == 2850


def test_torque_queued_job() -> None:
    info = get("torque").parse_status(fixture("torque", "qstat-x-queued.xml"), ["2346.torque01"])["2346.torque01"]
    assert info.state is JobState.PENDING and info.reason and "procs too high" in info.reason


@pytest.mark.parametrize(("name", "job_id", "state"), [
    ("qstat-x-completed.xml", "2347.torque01", JobState.ENDED),
    ("qstat-x-deleted.xml", "2348.torque01", JobState.CANCELLED),
    ("qstat-x-walltime.xml", "2349.torque01", JobState.TIMEOUT),
    ("qstat-x-memory.xml", "2350.torque01", JobState.OUT_OF_MEMORY),
])
def test_torque_completed_jobs_by_exit_status(name: str, job_id: str, state: JobState) -> None:
    assert get("torque").parse_status(fixture("torque", name), [job_id])[job_id].state is state


def test_torque_unknown_id() -> None:
    found = get("torque").parse_status(fixture("torque", "qstat-x-one-unknown.guarded"),
                                       ["2345.torque01", "2344.torque01"])
    assert found["2345.torque01"].state is JobState.RUNNING and found["2344.torque01"].state is JobState.ENDED


def test_torque_directives() -> None:
    lines = get("torque").directives(spec(cpus=8, mem="4G", gpus="1", partition="batch", account="acct"))
    assert "#PBS -l nodes=1:ppn=8:gpus=1" in lines and "#PBS -l mem=4096mb" in lines
    assert "#PBS -l walltime=01:30:00" in lines and "#PBS -S /bin/bash" in lines
    assert "#PBS -q batch" in lines and "#PBS -A acct" in lines


# -- Grid Engine (captured from the real one) ---------------------------------------------------


def test_sge_submit_terse() -> None:
    assert get("sge").parse_submit(fixture("sge", "qsub-terse.txt")) == "2"
    assert get("sge").parse_submit("42.1-10:1\n") == "42"
    with pytest.raises(SchedulerError):
        get("sge").parse_submit('Unable to run job: "job" denied.\n')


def test_sge_running_and_held() -> None:
    found = get("sge").parse_status(fixture("sge", "qstat-xml-running.xml"), ["2", "3", "99"])
    assert found["2"].state is JobState.RUNNING and found["2"].node == "node1"
    assert found["3"].state is JobState.PENDING and found["3"].raw_state == "hqw"
    assert found["99"].state is JobState.UNKNOWN  # unguarded text: no exit status to trust


def test_sge_ended_job_is_gone_from_qstat() -> None:
    text = fixture("sge", "qstat-xml-empty.xml") + f"\n{GUARD_MARK} 0\n"
    assert get("sge").parse_status(text, ["2"])["2"].state is JobState.ENDED
    failed = f"\n{GUARD_MARK} 1\nerror: commlib error: got select error (Connection refused)\n"
    assert get("sge").parse_status(failed, ["2"])["2"].state is JobState.UNKNOWN


@pytest.mark.parametrize(("name", "job_id", "state"), [
    ("qacct-completed.txt", "4", JobState.COMPLETED),
    ("qacct-failed.txt", "5", JobState.FAILED),
    ("qacct-cancelled.txt", "2", JobState.CANCELLED),
    ("qacct-hrt.txt", "6", JobState.TIMEOUT),
])
def test_sge_accounting(name: str, job_id: str, state: JobState) -> None:
    info = get("sge").parse_final(fixture("sge", name), job_id)
    assert info is not None and info.state is state and info.node in ("node1", "node2")


def test_sge_accounting_without_the_job() -> None:
    assert get("sge").parse_final(fixture("sge", "qacct-unknown.txt"), "999999") is None
    assert get("sge").parse_final(fixture("sge", "qacct-completed.txt"), "5") is None


def test_sge_directives() -> None:
    lines = get("sge").directives(spec(cpus=4, mem="8G", partition="all.q", account="proj"))
    assert lines == [
        "#$ -N hpclab-0123abcd",
        "#$ -o .hpclab/sessions/0123abcd/job.out",
        "#$ -e .hpclab/sessions/0123abcd/job.err",
        "#$ -j n",
        "#$ -S /bin/bash",
        "#$ -l h_rt=01:30:00",
        "#$ -pe smp 4",
        "#$ -l h_vmem=2048M",  # per slot
        "#$ -q all.q",
        "#$ -P proj",
    ]
    one = get("sge").directives(spec())
    assert not any("-pe" in ln or "h_vmem" in ln or "-V" in ln.split() for ln in one)


def test_sge_site_pe_through_skip_and_extra() -> None:
    lines = get("sge").directives(spec(cpus=8, skip_directives=("-pe",), extra_directives=("-pe threads 8",)))
    assert "#$ -pe threads 8" in lines and "#$ -pe smp 8" not in lines


# -- LSF ------------------------------------------------------------------------------------


def test_lsf_submit() -> None:
    assert get("lsf").parse_submit(fixture("lsf", "bsub.txt")) == "3456"
    assert get("lsf").parse_submit(fixture("lsf", "bsub-default-queue.txt")) == "3457"
    with pytest.raises(SchedulerError):
        get("lsf").parse_submit("Request aborted by esub. Job not submitted.\n")


def test_lsf_running_and_pending() -> None:
    run = get("lsf").parse_status(fixture("lsf", "bjobs-run.json"), ["3456"])["3456"]
    assert run.state is JobState.RUNNING and run.node == "cn042" and run.time_left == 47 * 60
    pend = get("lsf").parse_status(fixture("lsf", "bjobs-pend.json"), ["3457"])["3457"]
    assert pend.state is JobState.PENDING and pend.reason == "New job is waiting for scheduling"


@pytest.mark.parametrize(("name", "job_id", "state"), [
    ("bjobs-done.json", "3458", JobState.COMPLETED),
    ("bjobs-exit-owner.json", "3459", JobState.CANCELLED),
    ("bjobs-exit-runlimit.json", "3460", JobState.TIMEOUT),
    ("bjobs-exit-failed.json", "3461", JobState.FAILED),
])
def test_lsf_finished(name: str, job_id: str, state: JobState) -> None:
    assert get("lsf").parse_status(fixture("lsf", name), [job_id])[job_id].state is state


def test_lsf_not_found() -> None:
    found = get("lsf").parse_status(fixture("lsf", "bjobs-one-unknown.guarded"), ["3456", "3455"])
    assert found["3456"].state is JobState.RUNNING and found["3455"].state is JobState.ENDED
    in_json = '{"COMMAND":"bjobs","JOBS":1,"RECORDS":[{"ERROR":"Job <3455> is not found"}]}\n' + f"{GUARD_MARK} 255\n"
    assert get("lsf").parse_status(in_json, ["3455"])["3455"].state is JobState.ENDED


def test_lsf_directives_leave_the_warning_to_the_job_script() -> None:
    sched = get("lsf")
    assert not sched.signals_before_end  # -wa would signal the kernels too
    lines = sched.directives(spec(cpus=4, mem="4G", gpus="a100:2", partition="normal", account="p1"))
    assert lines == [
        "#BSUB -J hpclab-0123abcd",
        "#BSUB -o .hpclab/sessions/0123abcd/job.out",
        "#BSUB -e .hpclab/sessions/0123abcd/job.err",
        "#BSUB -W 1:30",
        "#BSUB -n 4",
        '#BSUB -R "span[hosts=1]"',
        '#BSUB -R "rusage[mem=4096MB]"',
        "#BSUB -M 4096MB",
        '#BSUB -gpu "num=2:gmodel=a100"',
        "#BSUB -q normal",
        "#BSUB -P p1",
    ]
    assert sched.submit_shell('"$d/job.sh"') == 'bsub < "$d/job.sh"'


# -- none -----------------------------------------------------------------------------------


def test_none_status_from_real_ps() -> None:
    pid = fixture("none", "ps-pid").strip()
    found = get("none").parse_status(fixture("none", "ps-one.guarded"), [pid, "999999"])
    assert found[pid].state is JobState.RUNNING and found["999999"].state is JobState.ENDED
    assert get("none").parse_status(fixture("none", "ps-none.guarded"), [pid])[pid].state is JobState.ENDED


def test_none_reused_pid_is_not_our_job() -> None:
    text = f"  4242 Ss   /usr/sbin/cron -f\n\n{GUARD_MARK} 0\n"
    assert get("none").parse_status(text, ["4242"])["4242"].state is JobState.ENDED


def test_none_failing_ps_is_unknown() -> None:
    text = f"\n{GUARD_MARK} 127\nsh: 1: ps: not found\n"
    assert get("none").parse_status(text, ["4242"])["4242"].state is JobState.UNKNOWN


def test_none_submit_and_cancel() -> None:
    sched = get("none")
    text = sched.submit_shell('"$d/job.sh"')
    assert "!" not in text and "\n" not in text  # it passes through csh-family login shells
    assert text.startswith("setsid ") and "</dev/null >/dev/null 2>&1 &" in text
    assert sched.cancel_argv("4242") == ["env", "kill", "-TERM", "--", "-4242"]
    assert sched.parse_submit("4242\n") == "4242"
    assert sched.directives(spec()) == [
        'exec </dev/null >>"$HOME"/.hpclab/sessions/0123abcd/job.out 2>>"$HOME"/.hpclab/sessions/0123abcd/job.err'
    ]


def test_none_job_outlives_the_command_and_cancel_ends_its_group(tmp_path: Path) -> None:
    """The real submit text and cancel argv, run locally: the start returns at once with a pid;
    that pid runs the script; kill of its group ends the script and its children."""
    sched = get("none")
    sdir = tmp_path / ".hpclab" / "sessions" / "0123abcd"
    sdir.mkdir(parents=True)
    (sdir / "job.sh").write_text("sleep 60 & wait\n")
    start = subprocess.run(["sh", "-c", f'd={sdir}; {sched.submit_shell(chr(34) + "$d/job.sh" + chr(34))}'],
                           capture_output=True, text=True, timeout=10, check=True)
    pid = sched.parse_submit(start.stdout)
    status = subprocess.run(sched.status_argv([pid]), capture_output=True, text=True, check=True).stdout
    assert sched.parse_status(status, [pid])[pid].state is JobState.RUNNING
    subprocess.run(sched.cancel_argv(pid), check=True)
    for _ in range(50):
        status = subprocess.run(sched.status_argv([pid]), capture_output=True, text=True, check=True).stdout
        if sched.parse_status(status, [pid])[pid].state is JobState.ENDED:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert sched.parse_status(status, [pid])[pid].state is JobState.ENDED
    # the script's child went with it (zombies waiting for a reaper do not count)
    for _ in range(50):
        group = subprocess.run(["ps", "-o", "stat=", "-g", pid], capture_output=True, text=True, check=False)
        alive = [st for st in group.stdout.split() if not st.startswith("Z")]
        if not alive:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert alive == []


# -- all of them ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pbs", "torque", "sge", "lsf", "slurm"])
def test_extra_and_skip_directives(name: str) -> None:
    sched = get(name)
    plain = sched.directives(spec())
    victim = plain[-1][len(sched.directive) + 1:].split("=")[0].split()[0]
    lines = sched.directives(spec(extra_directives=("--site-thing", f"{sched.directive} -x y"),
                                  skip_directives=(victim,)))
    assert f"{sched.directive} --site-thing" in lines and f"{sched.directive} -x y" in lines
    assert not any(ln.startswith(f"{sched.directive} {victim}") for ln in lines)


@pytest.mark.parametrize("name", ["pbs", "torque", "sge", "lsf", "slurm", "none"])
def test_every_state_maps_to_a_job_state(name: str) -> None:
    sched = get(name)
    assert sched.states and all(isinstance(v, JobState) for v in sched.states.values())
    assert sched.state("no such state") is JobState.UNKNOWN


EVIL_IDS = ["1; touch owned", "$(touch owned)", "`touch owned`", "1 2", "-x", "a'b\"c", "new\nline"]


@pytest.mark.parametrize("name", ["pbs", "torque", "sge", "lsf", "none", "slurm"])
def test_adversarial_ids_stay_arguments(name: str, tmp_path: Path) -> None:
    """An id that is shell text reaches the scheduler's tool as one argument, whole, and runs
    nothing: the status argv goes through sh quoted once, as SshRemote sends it."""
    sched = get(name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dump = "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$DUMP\"\n"
    for tool in ("qstat", "bjobs", "ps", "squeue"):
        (bin_dir / tool).write_text(dump)
        (bin_dir / tool).chmod(0o755)
    for evil in EVIL_IDS:
        argv = sched.status_argv([evil, "42"])
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DUMP": str(tmp_path / "argv")}
        subprocess.run(["sh", "-c", shlex.join(argv)], cwd=tmp_path, env=env, check=True, capture_output=True)
        got = (tmp_path / "argv").read_bytes().decode().split("\0")[:-1]
        assert not (tmp_path / "owned").exists(), (name, evil)
        if name in ("sge", "slurm"):
            assert evil not in got  # one query for all the user's jobs: ids never leave hpclab
        elif name == "none":
            assert got[-1] == f"{evil},42"  # ps -p takes one comma-separated list
        else:
            assert got[-2:] == [evil, "42"], (name, evil, got)
        assert sched.parse_status(f"\n{GUARD_MARK} 0\n", [evil])[evil].state in (JobState.ENDED, JobState.UNKNOWN)
        assert sched.cancel_argv(evil) == [*sched.cancel, f"-{evil}" if name == "none" else evil]
