"""Stand-ins for PBS Pro, Torque and LSF commands that run jobs through the test cluster's SLURM.

FOR TESTS ONLY, and named so: no such scheduler runs here. Each command reads its real
counterpart's input (a job script with #PBS or #BSUB directives on stdin, job ids) and prints
exactly the format hpclab parses from the real tool, the same shapes as tests/unit/fixtures/.
Underneath: sbatch, squeue, sacct, scancel as the calling user.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent
SERVER = "tc-login"


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def directives(script: str, prefix: str) -> list[list[str]]:
    """The option words of each `prefix` line before the first command."""
    found = []
    for line in script.splitlines()[1:]:
        if line.startswith(prefix + " "):
            found.append(shlex.split(line[len(prefix):]))
        elif line.strip() and not line.startswith("#"):
            break
    return found


def clock_seconds(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return h * 3600 + m * 60 + s


def submit(script: str, *, name: str, out: str, err: str, seconds: int, cpus: int, id_var: str, suffix: str,
           extra: list[str] | None = None, spool_output: bool = False, warn: tuple[str, int] | None = None) -> str:
    """sbatch a wrapper that sets the emulated scheduler's job id variable and runs `script`.

    spool_output: the job writes to a spool file that is copied to `out`/`err` only when it
    ends (Torque's pbs_mom without direct output). warn: (signal, seconds before the limit)
    sent to every process of the job, as LSF's bsub -wa/-wt does."""
    spool = HERE / "spool"
    spool.mkdir(exist_ok=True)
    path = spool / f"{uuid.uuid4().hex}.sh"
    path.write_text(script)
    lines = ["#!/bin/bash", f'export {id_var}="$SLURM_JOB_ID{suffix}"']
    if warn:
        sig, before = warn
        # Every process of the job, as LSF's process tracking finds them: the job script's
        # whole tree of descendants, also those in sessions of their own (Jupyter's kernels).
        # SLURM's scancel --full reaches only the batch script's process group.
        lines.append("emu_top=$$")
        lines.append(
            f"( sleep {max(1, seconds - before)}; pids=$emu_top; all=$emu_top; "
            "while [ -n \"$pids\" ]; do pids=$(ps -e -o pid=,ppid= | "
            "awk -v p=\" $pids \" 'index(p, \" \" $2 \" \") {print $1}' | tr '\\n' ' '); "
            "all=\"$all $pids\"; done; "
            f"for p in $all; do [ \"$p\" = \"$BASHPID\" ] || kill -{sig} \"$p\"; done ) >/dev/null 2>&1 &"
        )
    if spool_output:
        job_out, job_err = f"{path}.OU", f"{path}.ER"
        # the copy happens when the job script has ended, whatever ended it; a TERM from
        # scancel reaches this shell too, which waits for the script instead of dying
        lines += ["trap '' TERM INT HUP", f"/bin/bash {shlex.quote(str(path))} >{shlex.quote(job_out)} "
                  f"2>{shlex.quote(job_err)} & wait $!; rc=$?",
                  f"cat {shlex.quote(job_out)} >>{shlex.quote(out)}; cat {shlex.quote(job_err)} >>{shlex.quote(err)}",
                  "exit $rc"]
        out = err = "/dev/null"
    else:
        lines.append(f"exec /bin/bash {shlex.quote(str(path))}")
    argv = ["sbatch", "--parsable", "-J", name, "-o", out, "-e", err, "-t", str(max(1, -(-seconds // 60))),
            "-N", "1", "-n", "1", "-c", str(cpus), *(extra or [])]
    proc = run(argv, "\n".join(lines) + "\n")
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit(proc.returncode)
    return proc.stdout.strip().split(";")[0]


def forced_state() -> str | None:
    """A state to report for every job that has not ended, e.g. H or S (PBS), USUSP (LSF):
    the first word of the file `force-state` next to this module, if there is one."""
    try:
        return (HERE / "force-state").read_text().split()[0]
    except (OSError, IndexError):
        return None


def queue() -> dict[str, dict[str, str]]:
    """The user's SLURM jobs, as squeue sees them (ended ones for a while too)."""
    fields = ("id", "state", "nodes", "limit", "used", "left", "reason", "start")
    proc = run(["squeue", "--me", "--states=all", "-h", "-o", "%i|%T|%N|%l|%M|%L|%r|%S"])
    jobs = {}
    for line in proc.stdout.splitlines():
        values = line.split("|")
        if len(values) == len(fields):
            jobs[values[0]] = dict(zip(fields, values, strict=True))
    return jobs


def accounting(job_id: str) -> dict[str, str] | None:
    """sacct's record: ExitCode is "status:signal", the job script's exit status or the
    signal that killed it."""
    proc = run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,NodeList,Timelimit,Elapsed"])
    for line in proc.stdout.splitlines():
        values = line.split("|")
        if len(values) == 6 and values[0] == job_id:
            code, _, sig = values[2].partition(":")
            return {"id": job_id, "state": values[1].split()[0], "exit": code, "signal": sig or "0",
                    "nodes": values[3], "limit": values[4], "used": values[5], "left": "", "reason": "", "start": ""}
    return None


def lookup(job_ids: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """SLURM's word on each id (squeue, else sacct); the ids neither knows."""
    jobs = queue()
    found, unknown = {}, []
    for job_id in job_ids:
        seq = job_id.split(".")[0]
        info = jobs.get(seq) or accounting(seq)
        if info is None or not seq.isdigit():
            unknown.append(job_id)
        else:
            found[job_id] = info
    return found, unknown


def duration(text: str) -> int:
    """squeue/sacct time ("1-02:03:04", "12:34", "5:00:00") in seconds; 0 for anything else."""
    m = re.match(r"^(?:(\d+)-)?(\d+(?::\d+){0,2})$", text.strip())
    if not m:
        return 0
    return int(m.group(1) or 0) * 86400 + clock_seconds(m.group(2))


def hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def pbs_json(value: object, level: int = 0) -> str:
    """JSON the way PBS Pro's qstat -F json lays it out (19.x, as published in buildtest's and
    MetaCentrum's examples): four spaces per level, no space after the colon, one member a line."""
    pad = "    " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{pad}{json.dumps(k)}:{pbs_json(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "    " * level + "}"
    if isinstance(value, list):
        items = [f"{pad}{pbs_json(v, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "    " * level + "]"
    return json.dumps(value)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"}


# -- PBS Pro -------------------------------------------------------------------------------------


def pbs_qsub(torque: bool = False) -> None:
    script = sys.stdin.read()
    name, out, err, seconds, cpus = "STDIN", "", "", 3600, 1
    for words in directives(script, "#PBS"):
        for opt, val in zip(words[::2], words[1::2], strict=False):
            if opt == "-N":
                name = val
            elif opt == "-o":
                out = val
            elif opt == "-e":
                err = val
            elif opt == "-l":
                for item in val.split(","):
                    key, _, value = item.partition("=")
                    if key == "walltime":
                        seconds = clock_seconds(value)
                    elif key in ("select", "nodes"):
                        m = re.search(r"(?:ncpus|ppn)=(\d+)", value)
                        cpus = int(m.group(1)) if m else cpus
    job = submit(script, name=name, out=out or f"{name}.o%j", err=err or f"{name}.e%j", seconds=seconds, cpus=cpus,
                 id_var="PBS_JOBID", suffix=f".{SERVER}", spool_output=torque)
    print(f"{job}.{SERVER}")


def torque_qsub() -> None:
    # Torque's pbs_mom keeps the job's output in its spool and copies it to -o/-e when the
    # job ends (PBS Pro's -k oed writes it in place; Torque has no such option).
    pbs_qsub(torque=True)


def pbs_state(info: dict[str, str]) -> str:
    state = info["state"]
    if state in FINAL:
        return "F"
    if forced_state():
        return forced_state() or ""
    if state in RUNNING:
        return "R"
    return "H" if info["reason"].startswith("JobHeld") else "Q"


def pbs_exit(info: dict[str, str], walltime: int, memory: int) -> int:
    """Exit_status from what the job did: the server's own code for a limit it enforced,
    256 + N when signal N killed the job's shell, else the shell's exit status. A job that
    qdel's SIGTERM made exit on its own (hpclab's job script traps it) reports that status."""
    state = info["state"]
    if state == "TIMEOUT":
        return walltime
    if state == "OUT_OF_MEMORY":
        return memory
    if int(info.get("signal") or 0):
        return 256 + int(info["signal"])
    return int(info.get("exit") or 0)


def pbs_qstat() -> None:
    ids = [a for a in sys.argv[1:] if not a.startswith("-") and a != "json"]
    found, unknown = lookup(ids)
    jobs = {}
    for job_id, info in found.items():
        seq = job_id.split(".")[0]
        if info["state"] in FINAL and "exit" not in info:
            info = accounting(seq) or info
        state = pbs_state(info)
        limit = duration(info["limit"])
        job: dict[str, object] = {
            "Job_Name": "", "Job_Owner": f"{os.environ.get('USER', '')}@{SERVER}", "job_state": state,
            "queue": "workq", "server": SERVER, "Resource_List": {"ncpus": 1, "nodect": 1, "select": "1",
                                                                 "walltime": hms(limit)},
        }
        if state in ("R", "F") and info["nodes"] and info["nodes"] != "None assigned":
            job["exec_host"] = f"{info['nodes'].split(',')[0]}/0"
            job["resources_used"] = {"walltime": hms(duration(info["used"]))}
        if state in ("Q", "H"):
            job["comment"] = f"Not Running: {info['reason']}"
            if info["start"] not in ("", "N/A"):
                job["estimated"] = {"start_time": info["start"]}
        if state == "F":
            job["Exit_status"] = pbs_exit(info, -29, -27)
        jobs[f"{seq}.{SERVER}"] = job
    print(pbs_json({"timestamp": int(time.time()), "pbs_version": "19.0.0", "pbs_server": SERVER, "Jobs": jobs}))
    for job_id in unknown:
        print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
    sys.exit(153 if unknown else 0)


def pbs_qdel(torque: bool = False) -> None:
    """qdel each id: an unknown one is PBSE_UNKJOBID (15001, exit 153); a finished one is
    PBS Pro's PBSE_HISTJOBID (15139, exit 35, "qdel: Job ID has finished") or, for Torque,
    PBSE_BADSTATE on a completed job (15018, exit 170)."""
    rc = 0
    found, unknown = lookup([a for a in sys.argv[1:] if not a.startswith("-")])
    for job_id in unknown:
        print(f"qdel: Unknown Job Id {job_id}", file=sys.stderr)
        rc = 153
    for job_id, info in found.items():
        if info["state"] in FINAL:
            if torque:
                print(f"qdel: Invalid state for job - COMPLETE {job_id}", file=sys.stderr)
                rc = 170
            else:
                print(f"qdel: Job {job_id} has finished", file=sys.stderr)
                rc = 35
        elif run(["scancel", job_id.split(".")[0]]).returncode != 0:
            print(f"qdel: Unknown Job Id {job_id}", file=sys.stderr)
            rc = 153
    sys.exit(rc)


def torque_qdel() -> None:
    pbs_qdel(torque=True)


# -- Torque --------------------------------------------------------------------------------------


def torque_qstat() -> None:
    ids = [a for a in sys.argv[1:] if not a.startswith("-")]
    found, unknown = lookup(ids)
    parts = []
    for job_id, info in found.items():
        seq = job_id.split(".")[0]
        state = pbs_state(info)
        state = "C" if state == "F" else state
        limit = duration(info["limit"])
        xml = f"<Job><Job_Id>{seq}.{SERVER}</Job_Id><job_state>{state}</job_state><queue>batch</queue>"
        if state in ("R", "C") and info["nodes"] and info["nodes"] != "None assigned":
            xml += f"<exec_host>{escape(info['nodes'].split(',')[0])}/0</exec_host>"
            xml += f"<resources_used><walltime>{hms(duration(info['used']))}</walltime></resources_used>"
        xml += f"<Resource_List><nodect>1</nodect><walltime>{hms(limit)}</walltime></Resource_List>"
        if state == "R":
            xml += f"<Walltime><Remaining>{duration(info['left'])}</Remaining></Walltime>"
        if state in ("Q", "H"):
            xml += f"<comment>{escape(info['reason'])}</comment>"
        if state == "C":
            xml += f"<exit_status>{pbs_exit(accounting(seq) or info, -11, -10)}</exit_status>"
        parts.append(xml + "</Job>")
    if parts:
        print("<Data>" + "".join(parts) + "</Data>")
    for job_id in unknown:
        print(f"qstat: Unknown Job Id Error {job_id}", file=sys.stderr)
    sys.exit(153 if unknown else 0)


# -- LSF -----------------------------------------------------------------------------------------


def lsf_bsub() -> None:
    script = sys.stdin.read()
    name, out, err, seconds, cpus, warn, action = "STDIN", "", "", 3600, 1, None, "USR1"
    for words in directives(script, "#BSUB"):
        opt, val = [*words, ""][:2]
        if opt == "-J":
            name = val
        elif opt == "-o":
            out = val
        elif opt == "-e":
            err = val
        elif opt == "-W":
            seconds = clock_seconds(val + ":00") if ":" in val else int(val) * 60
        elif opt == "-n":
            cpus = int(val)
        elif opt == "-wa":
            action = val.removeprefix("SIG")
        elif opt == "-wt":
            warn = int(val.split(":")[-1]) * 60
    # -wa SIGNAL -wt MINUTES: LSF sends the signal to every process of the job (bsub -wa:
    # "the job action ... sent to the job"), not only to the job script as SLURM's B: would.
    job = submit(script, name=name, out=out or "/dev/null", err=err or out or "/dev/null", seconds=seconds,
                 cpus=cpus, id_var="LSB_JOBID", suffix="", warn=(action, warn) if warn else None)
    print(f"Job <{job}> is submitted to default queue <normal>.")


def lsf_bjobs() -> None:
    args = sys.argv[1:]
    ids = [a for i, a in enumerate(args) if a.isdigit() and args[i - 1] != "-o"]
    found, unknown = lookup(ids)
    records = []
    for job_id, info in found.items():
        state = info["state"]
        stat = ("DONE" if state == "COMPLETED" else "EXIT") if state in FINAL else (
            forced_state() or ("RUN" if state in RUNNING else "PEND"))
        rec = {"JOBID": job_id, "STAT": stat, "EXEC_HOST": "", "PEND_REASON": "", "TIME_LEFT": "", "EXIT_CODE": "",
               "EXIT_REASON": ""}
        if stat != "PEND" and info["nodes"] and info["nodes"] != "None assigned":
            rec["EXEC_HOST"] = info["nodes"].split(",")[0]
        if stat == "RUN":
            left = duration(info["left"])
            rec["TIME_LEFT"] = f"{left // 3600}:{left % 3600 // 60:02d} L"
        if stat == "PEND":
            rec["PEND_REASON"] = f"{info['reason']};"
        if stat == "EXIT":
            rec["EXIT_REASON"] = {
                "CANCELLED": "TERM_OWNER: job killed by owner",
                "TIMEOUT": "TERM_RUNLIMIT: job killed after reaching LSF run time limit",
            }.get(state, "")
            acct = accounting(job_id) or info
            sig = int(acct.get("signal") or 0)
            # what the job did: 128 + N when signal N killed it, else its exit status
            rec["EXIT_CODE"] = str(128 + sig) if sig else acct.get("exit", "1")
        records.append(rec)
    print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2).replace('": ', '":'))
    for job_id in unknown:
        print(f"Job <{job_id}> is not found", file=sys.stderr)
    sys.exit(255 if unknown else 0)


def lsf_bkill() -> None:
    """bkill each id: "Job <ID> is being terminated", or for a job that has ended "Job <ID>:
    Job has already finished", for one LSF does not know "Job <ID>: No matching job found";
    exit 255 when any failed."""
    rc = 0
    ids = [a for a in sys.argv[1:] if not a.startswith("-")]
    found, unknown = lookup(ids)
    for job_id in ids:
        if job_id in unknown:
            print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
            rc = 255
        elif found[job_id]["state"] in FINAL:
            print(f"Job <{job_id}>: Job has already finished", file=sys.stderr)
            rc = 255
        elif run(["scancel", job_id]).returncode == 0:
            print(f"Job <{job_id}> is being terminated")
        else:
            print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
            rc = 255
    sys.exit(rc)


COMMANDS = {
    ("pbs", "qsub"): pbs_qsub, ("pbs", "qstat"): pbs_qstat, ("pbs", "qdel"): pbs_qdel,
    ("torque", "qsub"): torque_qsub, ("torque", "qstat"): torque_qstat, ("torque", "qdel"): torque_qdel,
    ("lsf", "bsub"): lsf_bsub, ("lsf", "bjobs"): lsf_bjobs, ("lsf", "bkill"): lsf_bkill,
}


def main(path: str) -> None:
    me = Path(path)
    COMMANDS[(me.parent.name, me.name)]()
