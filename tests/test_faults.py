"""Faults injected into the library, in this process: a full disk in every writer, damaged files,
the run folder's lock held, killed and stale, leftovers of killed writers in a shared folder.
(The same faults through whole runs are in test_reliability.py.)"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segreport import SegreportError
from segreport.core import store
from segreport.cli import NO_SPACE, main
from segreport.core.store import NoSpaceError, RunLock, damage, file_record, say_damaged, sweep_orphans, verify

ARTIFACTS = {"a.json": {"x": 1}, "a.parquet": pd.DataFrame({"x": np.arange(1000)}), "a.npy": np.arange(1000.0),
             "a.joblib": {"model": list(range(1000))}, "a.bin": b"\0" * 1000}


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["replace", "fsync"])
@pytest.mark.parametrize("name", sorted(ARTIFACTS))
def test_a_full_disk_in_any_writer_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, name, where):
    monkeypatch.setattr(store.os, where, _full)
    target = tmp_path / "run" / name
    with pytest.raises(NoSpaceError) as info:
        store.write_artifact(target, ARTIFACTS[name])
    assert info.value.errno == errno.ENOSPC and info.value.path == target
    assert str(info.value) == f"no space left on device in {tmp_path / 'run'} while writing {name}"
    assert list((tmp_path / "run").iterdir()) == []  # neither the file nor its temporary file


def test_pyarrow_and_quota_errors_count_as_a_full_disk(tmp_path):
    assert store.no_space(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"))
    assert store.no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert store.no_space("NoSpaceError: no space left on device in results/demo/cells/kmeans/k3 while writing x")
    assert not store.no_space(OSError(errno.EACCES, "Permission denied")) and not store.no_space(None)
    with pytest.raises(NoSpaceError, match="while writing a.parquet"):
        with store.atomic_output(tmp_path / "a.parquet"):
            raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_worker_s_full_disk_survives_pickling_and_text():
    import pickle

    exc = NoSpaceError("results/demo/cells/kmeans/k3/labels.parquet")
    again = pickle.loads(pickle.dumps(exc))
    assert isinstance(again, NoSpaceError) and str(again) == str(exc)
    from_kernel = NoSpaceError.from_text(f"NoSpaceError: {exc}", "elsewhere/notebook.ipynb")
    assert from_kernel.path == Path("results/demo/cells/kmeans/k3/labels.parquet")
    assert NoSpaceError.from_text("OSError: [Errno 28] No space left on device", "c/notebook.ipynb").path == \
        Path("c/notebook.ipynb")


def test_cli_says_a_full_disk_in_one_line_with_status_4(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(store.os, "replace", _full)
    rc = main(["demo-data", "--rows", "50", "--out", "data/demo.csv"])
    err = capsys.readouterr().err
    assert rc == NO_SPACE == 4
    assert err == ("segreport: no space left on device in data while writing demo.csv; finished cells are kept, "
                   "free space and run again\n")
    assert list((tmp_path / "data").iterdir()) == []


def _bitflip(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def test_verify_tells_a_cut_a_flipped_and_a_missing_file(tmp_path, capsys):
    for name, obj in ARTIFACTS.items():
        store.write_artifact(tmp_path / name, obj)
    records = {name: file_record(tmp_path / name) for name in ARTIFACTS}
    assert verify(tmp_path, records) is None
    (tmp_path / "a.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:100])
    _bitflip(tmp_path / "a.parquet")
    (tmp_path / "a.json").unlink()
    assert damage(tmp_path / "a.npy", records["a.npy"]) == f"size differs: 100 bytes, not {records['a.npy']['size']}"
    assert damage(tmp_path / "a.parquet", records["a.parquet"]) == "hash differs"
    assert damage(tmp_path / "a.json", records["a.json"]) == "missing"
    assert verify(tmp_path, records) == (tmp_path / "a.json", "missing")
    say_damaged(tmp_path / "a.parquet", "hash differs", "recomputing that cell")
    assert capsys.readouterr().err == f"segreport: {tmp_path / 'a.parquet'} is damaged (hash differs): recomputing that cell\n"


HOLD = """
import sys, time
from segreport.core.store import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def _holder(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_stops_no_wait_and_is_waited_for(tmp_path, capsys):
    folder = tmp_path / "results" / "demo"
    proc = _holder(folder, 3)
    with pytest.raises(SegreportError, match=rf"is being written by another segreport run \(pid {proc.pid}, started "):
        RunLock(folder).acquire(wait=False)
    t0 = time.time()
    with RunLock(folder):  # waits for the holder, saying so once
        assert time.time() - t0 > 1  # after the holder released it
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(pid {proc.pid}, started " in err and "waiting for it to finish" in err
    assert (folder / ".lock").read_text() == ""  # released: no record of a stopped run
    proc.wait()


def test_a_killed_holder_s_lock_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "demo"
    proc = _holder(folder, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunLock(folder).acquire(wait=False):  # the kernel released its flock: no wait
        pass
    err = capsys.readouterr().err
    assert f"the run that was writing it (pid {proc.pid}, started " in err and "taking over its lock" in err
    # a lock file some other way left with a record (copied folder, crash): the same
    (folder / ".lock").write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "started": "then"}))
    with RunLock(folder).acquire(wait=False):
        pass
    assert "(pid 999999999 on elsewhere, started then)" in capsys.readouterr().err


def test_orphans_of_dead_writers_are_swept_from_a_shared_folder(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    old_dead = tmp_path / f".part-a.parquet.{dead}.x1_y.tmp"
    new_dead = tmp_path / f".part-b.parquet.{dead}.x2_y.tmp"
    old_alive = tmp_path / f".part-c.parquet.{os.getpid()}.x3_y.tmp"
    part = tmp_path / "part-d.parquet"
    for p in (old_dead, new_dead, old_alive, part):
        p.write_bytes(b"x")
    for p in (old_dead, old_alive, part):
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    assert sweep_orphans(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (new_dead, old_alive, part))
