"""Output folders: one run at a time (a real lock between real processes), atomic writes, TOML that round-trips."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedsim._atomic import atomic_write_bytes, remove_stale_temporaries
from fedsim._lock import OutputFolderBusy, OutputLock
from fedsim._toml import dumps, format_value
from fedsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _holder(folder, ready):
    """A real process that takes the lock, says so, and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from fedsim._lock import OutputLock
        lock = OutputLock({str(folder)!r}).acquire()
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while not ready.exists():
        assert proc.poll() is None, "lock holder died"
        assert time.time() < deadline, "lock holder did not start"
        time.sleep(0.05)
    return proc


def test_second_process_is_refused_and_dead_holder_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "out"
    proc = _holder(folder, tmp_path / "ready")
    try:
        with pytest.raises(OutputFolderBusy, match=f"pid {proc.pid}"):
            OutputLock(folder).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with caplog.at_level("WARNING", logger="fedsim"):
        with OutputLock(folder) as lock:
            assert str(os.getpid()) in lock.path.read_text()
    assert any("taking over" in r.getMessage() and str(proc.pid) in r.getMessage() for r in caplog.records)
    assert (folder / ".fedsim.lock").read_text() == ""  # released cleanly


def test_two_locks_in_one_process_exclude_each_other(tmp_path):
    first = OutputLock(tmp_path).acquire()
    errors = []

    def second():
        try:
            OutputLock(tmp_path).acquire()
        except OutputFolderBusy as exc:
            errors.append(exc)

    t = threading.Thread(target=second)
    t.start()
    t.join()
    assert len(errors) == 1
    first.release()
    OutputLock(tmp_path).acquire().release()


def test_concurrent_atomic_writers_never_mix_or_collide(tmp_path):
    target = tmp_path / "checkpoint.ckpt"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    failures = []

    def write(data):
        try:
            for _ in range(5):
                atomic_write_bytes(target, data)
        except Exception as exc:  # noqa: BLE001 - any failure is what the test looks for
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert target.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.ckpt"]


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.bin"
    code = textwrap.dedent(f"""
        import os, sys, tempfile
        sys.path.insert(0, {str(ROOT)!r})
        fd, tmp = tempfile.mkstemp(prefix=".model.bin.tmp-%d-" % os.getpid(), dir={str(tmp_path)!r})
        os.write(fd, b"x" * 1000)
        os.kill(os.getpid(), 9)
    """)
    subprocess.run([sys.executable, "-c", code])
    assert len(list(tmp_path.glob(".model.bin.tmp-*"))) == 1
    mine = tmp_path / f".model.bin.tmp-{os.getpid()}-live"
    mine.write_bytes(b"in progress")  # a live writer's temporary is left alone
    atomic_write_bytes(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "model.bin"]
    assert remove_stale_temporaries(target) == []


def test_atomic_write_goes_through_a_symlink(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and real.read_text() == "new"


_scalars = st.one_of(
    st.booleans(), st.integers(-2**63, 2**63 - 1),
    st.floats(allow_nan=False), st.text(alphabet=st.characters(blacklist_categories=("Cs",))))


@given(st.dictionaries(st.sampled_from(["label", "rule", "k", "lr", "name", "x y", "ü"]),
                       st.one_of(_scalars, st.lists(_scalars, max_size=4)),
                       max_size=6))
def test_toml_round_trips_every_value(table):
    text = dumps({"rule": table}, [("methods", [table, table])])
    loaded = tomllib.loads(text)
    assert loaded["rule"] == table
    assert loaded["methods"] == [table, table]


def test_toml_writes_emoji_and_controls_and_refuses_lone_surrogates():
    for text in ("fs 🚀 run", "tab\there", "nul\x00del\x7f", 'quote " back \\'):
        assert tomllib.loads(f"v = {format_value(text)}")["v"] == text
    with pytest.raises(ConfigError, match="surrogate"):
        format_value("bad \ud800")
