"""Session records: atomic private files, a lock, migration, corrupt files reported."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue
import re
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from hpclab.paths import Paths
from hpclab.state import VERSION, SessionRecord, Store


def paths(tmp_path: Path) -> Paths:
    return Paths.from_env({"HPCLAB_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)})


def record(i: int = 0) -> SessionRecord:
    return SessionRecord(id=f"s{i:07d}", profile="p", host="login", ssh_options=[], scheduler="slurm",
                         job_id=str(100 + i), token=f"secret-{i}", created=float(i), local_port=40000 + i)


def test_hpclab_home_moves_everything(tmp_path: Path) -> None:
    p = paths(tmp_path)
    assert p.config_file == tmp_path / "home" / "config.toml"
    assert p.state_dir == tmp_path / "home" / "state"
    assert str(p.control_dir).startswith(str(tmp_path / "home")) or str(p.control_dir).startswith("/tmp/hpclab-")


def test_xdg_and_hpclab_config(tmp_path: Path) -> None:
    p = Paths.from_env({"HOME": str(tmp_path), "HPCLAB_CONFIG": str(tmp_path / "c.toml")})
    assert p.config_file == tmp_path / "c.toml"
    assert p.state_dir == tmp_path / ".local" / "state" / "hpclab"
    assert Paths.from_env({"HOME": str(tmp_path)}).config_file == tmp_path / ".config" / "hpclab" / "config.toml"


def test_long_home_keeps_control_sockets_short(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    p = Paths.from_env({"HPCLAB_HOME": str(deep), "HOME": str(tmp_path)})
    assert len(str(p.control_dir)) + 17 < 104


def test_save_load_roundtrip_private_whatever_the_umask(tmp_path: Path) -> None:
    store = Store(paths(tmp_path))
    old = os.umask(0o022)
    try:
        store.save(record(1))
    finally:
        os.umask(old)
    loaded = store.load("s0000001")
    assert loaded == record(1)
    assert loaded is not None and loaded.url == "http://127.0.0.1:40001/lab?token=secret-1"
    for path in (store.paths.state_dir, store.paths.sessions_dir):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path("s0000001").stat().st_mode) == 0o600
    assert not [p for p in store.paths.sessions_dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_migrates_version_1(tmp_path: Path) -> None:
    store = Store(paths(tmp_path))
    store.paths.sessions_dir.mkdir(parents=True)
    old = {"id": "old1", "profile": "p", "host": "h", "ssh_options": [], "scheduler": "slurm",
           "remote_port": 8888, "token": "t", "obsolete_field": 1}
    store.path("old1").write_text(json.dumps(old))
    rec = store.load("old1")
    assert rec is not None and rec.port == 8888 and rec.version == VERSION


def test_corrupt_record_is_reported_not_a_crash(tmp_path: Path) -> None:
    store = Store(paths(tmp_path))
    store.save(record(1))
    store.path("bad").write_text("{not json")
    store.path("future").write_text(json.dumps(record(2).__dict__ | {"version": 99}))
    assert [r.id for r in store.all()] == ["s0000001"]
    assert sorted(p.path.name for p in store.problems) == ["bad.json", "future.json"]


WRITERS, THREADS, ROUNDS, IDS = 4, 3, 30, 5


def _writer(home: str, barrier: Any, writer: int, errors: Any) -> None:
    """One process: THREADS threads that each save the same IDS records ROUNDS times, all
    released together (the lock is what keeps two saves of one pid from sharing a temp file)."""
    store = Store(Paths.from_env({"HPCLAB_HOME": home, "HOME": home}))
    inner = threading.Barrier(THREADS)

    def run(thread: int) -> None:
        inner.wait()
        for n in range(ROUNDS):
            for i in range(IDS):
                rec = record(i)
                rec.jupyter_server = f"w{writer}t{thread}n{n}"  # who wrote it, to tell versions apart
                try:
                    store.save(rec)
                except Exception as exc:  # reported to the parent, which fails
                    errors.put(f"{writer}/{thread}: {exc!r}")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    barrier.wait()
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Writers in several processes and threads, started together behind a barrier, save the
    same records over and over: every save succeeds, and every record on disk is one whole
    record some writer saved (no mix of two, no temp file left)."""
    home = str(tmp_path / "home")
    Store(Paths.from_env({"HPCLAB_HOME": home, "HOME": home})).save(record(0))  # the dirs exist
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(home, barrier, w, errors)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    failures = []
    with contextlib.suppress(queue.Empty):
        while True:
            failures.append(errors.get(timeout=0.5))
    assert failures == []
    store = Store(Paths.from_env({"HPCLAB_HOME": home, "HOME": home}))
    records = store.all()
    assert store.problems == []
    assert sorted(r.id for r in records) == [record(i).id for i in range(IDS)]
    for r in records:
        assert re.fullmatch(r"w[0-9]+t[0-9]+n[0-9]+", r.jupyter_server or ""), r.jupyter_server
        assert r == SessionRecord(**{**record(int(r.id[1:])).__dict__, "jupyter_server": r.jupyter_server})
    assert not [p.name for p in store.paths.sessions_dir.iterdir() if p.name.startswith(".")]


def test_delete_is_idempotent(tmp_path: Path) -> None:
    store = Store(paths(tmp_path))
    store.save(record(3))
    store.delete("s0000003")
    store.delete("s0000003")
    assert store.load("s0000003") is None


@pytest.mark.parametrize("mode", [0o755, 0o777])
def test_private_dir_repairs_loose_modes(tmp_path: Path, mode: int) -> None:
    p = paths(tmp_path)
    p.state_dir.mkdir(parents=True)
    os.chmod(p.state_dir, mode)
    Store(p).save(record())
    assert stat.S_IMODE(p.state_dir.stat().st_mode) == 0o700
