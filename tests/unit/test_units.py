from __future__ import annotations

import pytest

from hpclab.units import human, is_memory, mem_mb, parse_duration, parse_walltime


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("45", 45), ("01:02:03", 3723),
     ("02:03", 123), ("1-00:00:00", 86400), ("1-02", 93600), ("1-02:30", 95400), (30, 30)],
)
def test_parse_duration(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_walltime_bare_number_is_minutes() -> None:
    assert parse_walltime("90") == 5400
    assert parse_walltime(30) == 1800


@pytest.mark.parametrize("bad", ["", "soon", "1:61:00", "-5", "1h 30m", "10x"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_human() -> None:
    assert [human(s) for s in (5, 125, 3900, 90000)] == ["5s", "2m", "1h05m", "1d01h"]


@pytest.mark.parametrize(("text", "mb"), [("4G", 4096), ("500M", 500), ("16GB", 16384), ("1.5g", 1536),
                                          ("2048", 2048), ("1T", 1048576), ("512K", 1)])
def test_memory_grammar(text: str, mb: int) -> None:
    assert is_memory(text)
    assert mem_mb(text) == mb


@pytest.mark.parametrize("bad", ["", "4 G", "4G\n", " 4G", "4GiB", "-1G", "G", "4G; rm -rf ~", "1e3M"])
def test_memory_grammar_takes_the_whole_value_only(bad: str) -> None:
    assert not is_memory(bad)
    with pytest.raises(ValueError):
        mem_mb(bad)
