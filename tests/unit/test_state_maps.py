"""Every raw job state each scheduler documents, against the state hpclab shows.

One table per scheduler, each row taken from the scheduler's own documentation (cited above
the table). hpclab's rules, the same for every scheduler:
- waiting, held, in transit, being provisioned: PENDING;
- suspended or stopped after it started: PENDING too (the lab does not answer, yet the job
  is not over and may resume; RUNNING would send the watcher after a tunnel that cannot work);
- running, or still cleaning up (COMPLETING, E, exiting): RUNNING, so that `stop` waits for
  the final word instead of guessing how the job ended;
- ended, with a known reason: that reason; ended with the reason elsewhere (PBS F, Torque C,
  Grid Engine z): ENDED, which makes the caller read Exit_status or accounting.
"""

from __future__ import annotations

import pytest

from hpclab.schedulers import JobState, get

P, R = JobState.PENDING, JobState.RUNNING

# squeue(1), section JOB STATE CODES (SLURM 22.05, https://slurm.schedmd.com/squeue.html);
# sacct(1) lists the same codes under JOB STATE CODES.
SLURM = {
    "BOOT_FAIL": JobState.NODE_FAIL,  # BF: terminated due to launch failure (node boot)
    "CANCELLED": JobState.CANCELLED,  # CA: explicitly cancelled by the user or administrator
    "COMPLETED": JobState.COMPLETED,  # CD: terminated all processes on all nodes, exit code 0
    "CONFIGURING": P,  # CF: allocated, waiting for resources to become ready (booting)
    "COMPLETING": R,  # CG: in the process of completing; some processes may still be active
    "DEADLINE": JobState.TIMEOUT,  # DL: terminated on deadline
    "FAILED": JobState.FAILED,  # F: non-zero exit code or other failure
    "NODE_FAIL": JobState.NODE_FAIL,  # NF: terminated due to failure of one or more nodes
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,  # OOM: experienced out of memory error
    "PENDING": P,  # PD: awaiting resource allocation
    # PR: terminated due to preemption. No PREEMPTED state in hpclab: the scheduler cancelled
    # the job to make room, and a requeued one shows REQUEUED (pending) instead.
    "PREEMPTED": JobState.CANCELLED,
    "RUNNING": R,  # R: currently has an allocation
    "RESV_DEL_HOLD": P,  # RD: held because its reservation was deleted
    "REQUEUE_FED": P,  # RF: being requeued by a federation
    "REQUEUE_HOLD": P,  # RH: held job being requeued
    "REQUEUED": P,  # RQ: completing job being requeued
    "RESIZING": R,  # RS: about to change size
    "REVOKED": JobState.CANCELLED,  # RV: sibling removed because another cluster started the job
    "SIGNALING": R,  # SI: being signaled
    "SPECIAL_EXIT": P,  # SE: requeued in a special state (held until released)
    "STAGE_OUT": R,  # SO: staging out files
    "STOPPED": P,  # ST: allocation kept, execution stopped with SIGSTOP
    "SUSPENDED": P,  # S: allocation, execution suspended, CPUs released to other jobs
    "TIMEOUT": JobState.TIMEOUT,  # TO: terminated upon reaching its time limit
}

# PBS Professional Reference Guide, "Job States" (qstat(1B), job_state letters), also in
# OpenPBS's qstat man page. F and X are ended; Exit_status (tested with the fixtures) says how.
PBS = {
    "B": R,  # job arrays only: the array has begun
    "E": R,  # exiting after having run
    "F": JobState.ENDED,  # finished
    "H": P,  # held
    "M": P,  # moved to another server (it may still run there and write its rendezvous)
    "Q": P,  # queued
    "R": R,  # running
    "S": P,  # suspended by the server (a higher-priority job needs the resources)
    "T": P,  # in transition (being moved)
    "U": P,  # user-suspended (workstation busy)
    "W": P,  # waiting for its execution time, or a failed stage-in
    "X": JobState.ENDED,  # subjobs only: finished (expired)
}

# Torque Administrator Guide, qstat(1B), the job_state ("S") column of the standard output
# (Adaptive Computing, Torque 4.x/6.x). C is ended; exit_status says how.
TORQUE = {
    "C": JobState.ENDED,  # completed after having run
    "E": R,  # exiting after having run
    "H": P,  # held
    "Q": P,  # queued, eligible to run or be routed
    "R": R,  # running
    "T": P,  # being moved to a new location
    "W": P,  # waiting for its execution time
    "S": P,  # suspended (Unicos-style; some schedulers use it for preemption)
}

# IBM Spectrum LSF 10.1, bjobs command reference, "Description" (JOB STATUS), and "About
# job states" in Administering IBM Spectrum LSF. EXIT is refined by EXIT_REASON (fixtures).
LSF = {
    "PEND": P,  # waiting in a queue for scheduling and dispatch
    "PROV": P,  # dispatched to a power-saved host that is waking up
    "PSUSP": P,  # suspended by its owner or the administrator while pending
    "RUN": R,  # dispatched to a host and running
    "USUSP": P,  # suspended by its owner or the administrator after dispatch (bstop)
    "SSUSP": P,  # suspended by LSF after dispatch (load, preemption, resumed USUSP)
    "DONE": JobState.COMPLETED,  # finished normally with a zero exit value
    "EXIT": JobState.FAILED,  # non-zero exit value (no EXIT_REASON: a plain failure)
    "UNKWN": JobState.UNKNOWN,  # mbatchd lost contact with the sbatchd of the job's host
    "WAIT": P,  # a member of a chunk job waiting to run
    "ZOMBI": JobState.ENDED,  # killed while its host was unreachable
}

# sge_status(5), "Job state" (Grid Engine 8.1.9, Debian's gridengine-common), and qstat(1)'s
# letters: d(eletion) E(rror) h(old) r(unning) R(estarted) s(uspended) S(queue suspended)
# t(ransferring) T(hreshold) w(aiting) q(ueued) z(ombie). A state is a combination.
SGE = {
    "qw": P, "Rq": P,  # pending
    "hqw": P, "hRwq": P,  # pending, user and/or system hold (re-queue)
    "r": R, "t": R, "Rr": R, "Rt": R,  # running, transferring (re-submit)
    "s": P, "ts": P,  # job suspended (qmod -sj)
    "S": P, "tS": P,  # queue suspended
    "T": P, "tT": P,  # queue suspended by alarm (threshold)
    "Rs": P, "Rts": P, "RS": P, "RtS": P, "RT": P, "RtT": P,  # all suspended with re-submit
    "Eqw": JobState.FAILED, "Ehqw": JobState.FAILED, "EhRqw": JobState.FAILED,  # pending with error
    # deletion of running and suspended jobs: not over until qstat drops them
    "dr": R, "dt": R, "dRr": R, "dRt": R,
    "ds": P, "dS": P, "dT": P, "dRs": P, "dRS": P, "dRT": P,
    "hr": R,  # hold on a running job (its array tasks)
    "z": JobState.ENDED,  # zombie (qstat -s z): finished; qacct says how
}

TABLES = {"slurm": SLURM, "pbs": PBS, "torque": TORQUE, "lsf": LSF, "sge": SGE}
ROWS = [(name, raw, state) for name, table in TABLES.items() for raw, state in table.items()]


@pytest.mark.parametrize(("name", "raw", "state"), ROWS, ids=[f"{n}-{r}" for n, r, _ in ROWS])
def test_documented_state(name: str, raw: str, state: JobState) -> None:
    assert get(name).state(raw) is state


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_map_knows_nothing_the_documentation_does_not(name: str) -> None:
    """Every key of the scheduler's map is a documented state (no typo hides a real one)."""
    assert set(get(name).states) <= set(TABLES[name])


@pytest.mark.parametrize("name", ["slurm", "pbs", "torque", "lsf"])
def test_every_documented_state_is_in_the_map(name: str) -> None:
    """Not one documented state falls through to UNKNOWN (Grid Engine reads letters instead)."""
    assert set(TABLES[name]) <= set(get(name).states)


def test_suspended_is_the_same_everywhere() -> None:
    suspended = [("slurm", "SUSPENDED"), ("slurm", "STOPPED"), ("pbs", "S"), ("pbs", "U"), ("torque", "S"),
                 ("lsf", "USUSP"), ("lsf", "SSUSP"), ("sge", "s"), ("sge", "ts"), ("sge", "Rs")]
    assert {get(n).state(raw) for n, raw in suspended} == {JobState.PENDING}


@pytest.mark.parametrize("raw", ["", "x", "qwx", "running"])
def test_sge_letters_it_does_not_know_are_unknown(raw: str) -> None:
    assert get("sge").state(raw) is JobState.UNKNOWN
