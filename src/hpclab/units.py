"""Quantities as people and schedulers write them: durations (parsed once into seconds) and
amounts of memory (into MiB). The one grammar for each; profiles and schedulers both use it."""

from __future__ import annotations

import re

_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
# '4G', '500M', '16GB', '1.5g', '2048' (a bare number is megabytes, as sbatch reads it)
MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)B?", re.IGNORECASE)
_MEM_UNIT = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_duration(text: str | int | float, *, bare_unit: str = "s") -> int:
    """'90s', '10m', '1h30m', '2d', or a bare number in `bare_unit`; also clock forms
    'HH:MM:SS', 'MM:SS' and 'D-HH:MM:SS'. Raises ValueError with what was wrong."""
    if isinstance(text, bool):
        raise ValueError("expected a duration, got a boolean")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return int(text * _UNIT[bare_unit])
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration")
    if value.isdigit():
        return int(value) * _UNIT[bare_unit]
    m = _UNITS_RE.fullmatch(value)
    if m and any(m.groups()):
        d, h, mi, s = (int(g) if g else 0 for g in m.groups())
        return d * 86400 + h * 3600 + mi * 60 + s
    m = _CLOCK_RE.fullmatch(value)
    if m and (m.group(1) or m.group(3)):
        days = int(m.group(1) or 0)
        parts = [int(p) for p in m.group(2, 3, 4) if p is not None]
        if m.group(1) and len(parts) == 1:  # D-HH
            h, mi, s = parts[0], 0, 0
        elif m.group(1) and len(parts) == 2:  # D-HH:MM
            h, mi, s = parts[0], parts[1], 0
        elif len(parts) == 2:  # MM:SS
            h, mi, s = 0, parts[0], parts[1]
        else:
            h, mi, s = parts
        if mi >= 60 or s >= 60:
            raise ValueError(f"minutes and seconds must be below 60 in {text!r}")
        return days * 86400 + h * 3600 + mi * 60 + s
    raise ValueError(f"cannot read {text!r} as a duration (examples: 90s, 30m, 2h, 1-12:00:00)")


def parse_walltime(text: str | int) -> int:
    """A job time limit. A bare number means minutes, as in sbatch/qsub conventions."""
    seconds = parse_duration(text, bare_unit="m")
    if seconds < 60:
        raise ValueError(f"time limit {text!r} is under one minute")
    return seconds


def human(seconds: float) -> str:
    """Short form for status lines: '45s', '12m', '1h05m', '2d03h'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def is_memory(text: str) -> bool:
    """True when the whole of `text` is an amount of memory (no trailing newline, no spaces)."""
    return MEMORY.fullmatch(text) is not None


def mem_mb(mem: str) -> int:
    """'4G', '500M', '16GB', '1.5G', '2048' (megabytes) in whole MiB, rounded up."""
    m = MEMORY.fullmatch(mem)
    if not m:
        raise ValueError(f"cannot read {mem!r} as an amount of memory")
    value = float(m.group(1)) * _MEM_UNIT[m.group(2).upper()]
    return max(1, int(-(-value // 1)))
