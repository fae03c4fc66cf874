"""Which scheduler a login node runs, from one probe command.

DETECT_SCRIPT is one line of POSIX sh without '!' (it passes through any login shell, csh
included); run it with `remote.shell(DETECT_SCRIPT)`. parse_detect() reads its output.
Every command in the probe reads /dev/null: a qsub that does not know an option must not
wait for a job script on stdin. qstat -help runs first because Grid Engine's qsub does not
know --version; qsub --version runs only when qstat did not name Grid Engine.
"""

from __future__ import annotations

import re

# Sections: "@@have NAME" for each command found, then the first lines of what the
# identifying commands print.
DETECT_SCRIPT = (
    "for c in sbatch qsub qstat bsub bjobs lsid; do command -v $c >/dev/null 2>&1 && echo \"@@have $c\"; done; "
    "if command -v qstat >/dev/null 2>&1; then echo @@qstat-help; qstat -help </dev/null 2>&1 | head -n 1; fi; "
    "if command -v qsub >/dev/null 2>&1; then case \"$(qstat -help </dev/null 2>&1 | head -n 1)\" in "
    "SGE*|GE*|OGS*|UGE*|Univa*|Altair*Grid*|*Grid?Engine*) ;; "
    "*) echo @@qsub-version; qsub --version </dev/null 2>&1 | head -n 3;; esac; fi; "
    "if command -v lsid >/dev/null 2>&1; then echo @@lsid; lsid </dev/null 2>&1 | head -n 2; fi; :"
)

NONE_FOUND = "none-found"

_GRID_ENGINE = re.compile(r"^\s*(SGE|GE|OGS|UGE|Univa|Altair Grid Engine|Son of Grid Engine|Open Grid Scheduler)\b"
                          r"|Grid ?Engine", re.IGNORECASE)
_PBS_PRO = re.compile(r"pbs_version\s*=", re.IGNORECASE)
_TORQUE = re.compile(r"^\s*(Version|version):\s*[0-9]", re.MULTILINE)
_LSF = re.compile(r"\bLSF\b|openlava|Platform LSF", re.IGNORECASE)


def _sections(text: str) -> tuple[set[str], dict[str, str]]:
    have: set[str] = set()
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@@have "):
            have.add(line[len("@@have "):].strip())
            current = None
        elif line.startswith("@@"):
            current = line[2:].strip()
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    return have, sections


def parse_detect(stdout: str) -> str:
    """slurm | pbs | torque | sge | lsf | none-found, from DETECT_SCRIPT's output.

    sbatch wins over any qsub: SLURM ships PBS-style qsub/qstat wrappers. A qsub that
    neither names Grid Engine nor prints a PBS Pro or Torque version is not guessed at:
    none-found, and the user names the scheduler in the profile."""
    have, sections = _sections(stdout)
    if "sbatch" in have:
        return "slurm"
    qstat_help = sections.get("qstat-help", "")
    if "qsub" in have or "qstat" in have:
        if _GRID_ENGINE.search(qstat_help.splitlines()[0] if qstat_help.strip() else ""):
            return "sge"
        version = sections.get("qsub-version", "")
        if _PBS_PRO.search(version):
            return "pbs"
        if _TORQUE.search(version):
            return "torque"
    if "bsub" in have or _LSF.search(sections.get("lsid", "")):
        return "lsf"
    return NONE_FOUND
