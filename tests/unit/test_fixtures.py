"""The hand-written fixtures (PBS, Torque, LSF) hold together and are in the tools' own layout.

No PBS, Torque or LSF runs here, so their fixtures are written from published output. A
fixture that contradicts itself (a job killed at its walltime that used 12 minutes of an
hour, a date on a weekday it is not) would let a parser pass on output no real tool prints.
The e2e emulators print PBS's JSON with the same function that is checked here.
"""

from __future__ import annotations

import calendar
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parents[1] / "e2e" / "emulators"))
from emulate import pbs_json  # noqa: E402

# `qstat -Q -f -F json` of PBS Pro 19.0.0 as published in buildtest's documentation
# (docs/batch_support.rst): four spaces a level, no space after the colon.
PUBLISHED = """{
    "timestamp":1615924938,
    "pbs_version":"19.0.0",
    "pbs_server":"pbs",
    "Queue":{
        "workq":{
            "queue_type":"Execution",
            "total_jobs":0,
            "state_count":"Transit:0 Queued:0 Held:0 Waiting:0 Running:0 Exiting:0 Begun:0 ",
            "resources_assigned":{
                "mem":"0kb",
                "ncpus":0,
                "nodect":0
            },
            "hasnodes":"True",
            "enabled":"True",
            "started":"True"
        }
    }
}"""


def test_pbs_layout_is_the_published_one() -> None:
    assert pbs_json(json.loads(PUBLISHED)) == PUBLISHED


def stdout_of(path: Path) -> str:
    text = path.read_text()
    return text.split("\n@@hpclab-guard ")[0].rstrip("\n") + "\n" if path.suffix == ".guarded" else text


def pbs_fixtures() -> list[Path]:
    paths = sorted((FIXTURES / "pbs").glob("qstat-*.json")) + sorted((FIXTURES / "pbs").glob("qstat-*.guarded"))
    return [p for p in paths if stdout_of(p).strip()]  # qstat-server-down: nothing on stdout


def seconds(hms: str) -> int:
    h, m, s = (int(p) for p in hms.split(":"))
    return h * 3600 + m * 60 + s


def kb(amount: str) -> int:
    m = re.fullmatch(r"(\d+)(kb|mb|gb)", amount)
    assert m, amount
    return int(m.group(1)) * {"kb": 1, "mb": 1024, "gb": 1024 * 1024}[m.group(2)]


def pbs_time(text: str) -> int:
    """PBS's ctime() dates, checked to be real dates (the weekday must match)."""
    epoch = calendar.timegm(time.strptime(text, "%a %b %d %H:%M:%S %Y"))
    assert time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(epoch)) == text, f"{text!r} is not a real date"
    return epoch


@pytest.mark.parametrize("path", pbs_fixtures(), ids=lambda p: p.name)
def test_pbs_fixture_is_consistent(path: Path) -> None:
    text = stdout_of(path)
    data = json.loads(text)
    assert pbs_json(data) + "\n" == text, "not in qstat -F json's layout"
    version = (FIXTURES / "pbs" / "qsub-version.txt").read_text().split("=")[1].strip()
    assert data["pbs_version"] == version
    for job_id, job in data["Jobs"].items():
        check_pbs_job(job_id, job, data["timestamp"])


def check_pbs_job(job_id: str, job: dict[str, Any], now: int) -> None:
    state = job["job_state"]
    created = pbs_time(job["ctime"])
    assert created <= pbs_time(job["qtime"]) <= pbs_time(job["mtime"]) <= now
    limit = seconds(job["Resource_List"]["walltime"])
    mem_limit = kb(job["Resource_List"]["mem"])
    if state == "Q":
        assert "stime" not in job and "resources_used" not in job and "exec_host" not in job
        return
    started = pbs_time(job["stime"])
    used = seconds(job["resources_used"]["walltime"])
    mem_used = kb(job["resources_used"]["mem"])
    assert created <= started
    if state == "R":
        assert "Exit_status" not in job and now == started + used and used < limit and mem_used < mem_limit
        return
    assert state == "F"
    ended = job["history_timestamp"]
    assert ended == started + used == pbs_time(job["mtime"]) and ended <= now, job_id
    code = job["Exit_status"]
    if code == -29:  # JOB_EXEC_KILL_WALLTIME: it ran to its limit
        assert used >= limit
    elif code in (-27, -26):  # JOB_EXEC_KILL_MEM / VMEM: it went over its memory
        assert mem_used > mem_limit
    else:
        assert used < limit and mem_used < mem_limit, f"{job_id}: Exit_status {code} with the limits reached"


def torque_jobs() -> list[tuple[str, ET.Element]]:
    found = []
    for path in sorted((FIXTURES / "torque").glob("qstat-x-*")):
        text = stdout_of(path)
        assert text.startswith("<Data><Job>") and text.count("\n") == 1, f"{path.name}: qstat -x prints one line"
        found += [(path.name, job) for job in ET.fromstring(text).iter("Job")]
    return found


@pytest.mark.parametrize(("name", "job"), torque_jobs(), ids=[n for n, _ in torque_jobs()])
def test_torque_fixture_is_consistent(name: str, job: ET.Element) -> None:
    def num(tag: str) -> int:
        return int(job.findtext(tag) or "")

    state = job.findtext("job_state")
    assert time.gmtime(num("ctime")).tm_year == 2026  # the same days as the PBS and SLURM fixtures' 2026
    assert num("ctime") <= num("qtime") <= num("etime") <= num("mtime")
    limit = seconds(job.findtext("Resource_List/walltime") or "")
    mem_limit = kb(job.findtext("Resource_List/mem") or "")
    if state == "Q":
        assert job.find("resources_used") is None and job.find("exec_host") is None
        return
    used = seconds(job.findtext("resources_used/walltime") or "")
    mem_used = kb(job.findtext("resources_used/mem") or "")
    if state == "R":
        assert num("Walltime/Remaining") == limit - used and job.find("exit_status") is None
        return
    assert state == "C"
    assert num("comp_time") - num("start_time") == used and num("mtime") == num("comp_time")
    code = num("exit_status")
    if code == -11:  # walltime limit
        assert used >= limit
    elif code == -10:  # memory limit
        assert mem_used > mem_limit
    else:
        assert used < limit and mem_used < mem_limit, f"{name}: exit_status {code} with the limits reached"


LSF_STATES = {"PEND", "PSUSP", "RUN", "USUSP", "SSUSP", "DONE", "EXIT", "UNKWN", "WAIT", "ZOMBI", "PROV"}


@pytest.mark.parametrize("path", sorted((FIXTURES / "lsf").glob("bjobs-*")), ids=lambda p: p.name)
def test_lsf_fixture_is_consistent(path: Path) -> None:
    text = stdout_of(path)
    data = json.loads(text)
    # bjobs -json: two spaces a level, no space after the colon
    assert text == json.dumps(data, indent=2).replace('": ', '":') + "\n"
    assert data["COMMAND"] == "bjobs" and data["JOBS"] == len(data["RECORDS"])
    for rec in data["RECORDS"]:
        stat = rec["STAT"]
        assert stat in LSF_STATES
        assert bool(rec["EXEC_HOST"]) == (stat != "PEND")
        assert bool(rec["PEND_REASON"]) == (stat == "PEND")
        assert bool(rec["TIME_LEFT"]) == (stat == "RUN")
        assert bool(rec["EXIT_CODE"]) == (stat == "EXIT")  # DONE means exit code 0, shown empty
        if rec["EXIT_REASON"].startswith("TERM_OWNER"):
            assert int(rec["EXIT_CODE"]) > 128  # bkill's signals
