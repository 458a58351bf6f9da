"""A full disk (or quota, or another write error) at every stage of every command, injected at the writer
level in this process: one line naming the folder and the file, exit status 4, no temporary file or
folder left, and the next command on a freed disk finishes with the same bytes as an undisturbed one.

The grid runs in this process (each cell's `run_cell`, as in test_reuse), so a fault can be put in any
file a cell writes as well; a cell's kernel on a real full tmpfs is test_reliability's
`test_a_full_disk_is_one_line_status_4_no_temporary_file_and_the_next_run_resumes`."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from segreport.stages import prepare
from segreport import runner
from segreport.core import store
from segreport.cli import NO_SPACE, main
from segreport.lib.demo import write_demo
from segreport.core.store import NoSpaceError, WriteError

from .conftest import make_workdir
from .test_faults import _holder
from .test_reliability import _result_bytes
from .conftest import inline_grid

# the fewest resamples and rows that still write every kind of file (stability, null references, SHAP)
FAST = ("stability_resamples: 2\nnull_references: 1\nnull_sample: 200\nlgbm_folds: 2\nexplain_rows: 150\n"
        "shap_sample: 50\nprojection_sample: 100\nfigure_sample: 100\nsilhouette_sample: 200\nstability_sample: 100\n")
RUN = ["run", "-q", "--data", "data/demo.csv", "--methods", "kmeans", "--k", "2-3", "--workers", "1"]
RENDER = ["render", "--data", "data/demo.csv", "--methods", "kmeans", "--k", "2-3"]
TRACK = ["track", "-q", "--run", "results/demo", "--data", "data/later.csv", "--as-of", "2026-01"]
ASSIGN = ["assign", "--run", "results/demo", "--method", "kmeans", "--k", "3", "--data", "data/later.csv",
          "--out", "out/assigned.csv"]
LIST = ["list", "--run", "results/demo", "--segment", "S1", "--out", "out/list.csv"]
DEMO = ["demo-data", "--rows", "50", "--out", "out/demo.csv"]
COMMANDS = [RUN, TRACK, RENDER, ASSIGN, LIST, DEMO]

# (command, the file the disk fills on, how): each a stage boundary of a run, then the other commands;
# in this order each failed command gets further than the one before, so the walk costs about one run
WALK = [
    (RUN, "results/demo/table.parquet", "enospc"),                   # prepare: the table,
    (RUN, "results/demo/spaces/kmeans/X.npy", "short"),              # a method's space (numpy: no errno),
    (RUN, "results/demo/spaces/common/X.npy", "quota"),              # the common space,
    (RUN, "results/demo/projections/mca.parquet", "enospc"),         # the projections
    (RUN, "results/demo/cells/kmeans/k3/model.joblib", "enospc"),    # the grid: a cell (k2 has finished)
    (RUN, "results/demo/comparison/metrics.parquet", "short"),       # the comparison
    (RUN, "report/figures/kmeans-projections.png", "quota"),         # the render: figures,
    (RUN, "report/downloads/profiles/kmeans-k3.xlsx", "eio"),        # downloads (another write error),
    (RUN, "report/_pages/kmeans.qmd", "enospc"),                     # pages,
    (RUN, "_site/report/figures/kmeans-shap.png", "enospc"),         # the site copy,
    (RUN, "_site/report.pdf", "short"),                              # the PDF
    (TRACK, "results/demo/snapshots/2026-01/labels.parquet", "enospc"),
    (TRACK, "results/demo/tracking/migration.parquet", "short"),
    (RENDER, "report/_pages/appendix.qmd", "enospc"),
    (ASSIGN, "out/assigned.csv", "quota"),
    (LIST, "out/list.csv", "short"),
    (DEMO, "out/demo.csv.demo.json", "enospc"),
]

_TMP_NAME = re.compile(r"\.([^/]+)\.\d+\.[^/.]+\.tmp(?=/)")  # an atomic_folder's temporary name: its target's


def _where(path) -> str:
    """A path as the walk names it: relative to the project, an atomic_folder's temporary folder as its target."""
    return _TMP_NAME.sub(r"\1", os.path.relpath(os.path.abspath(path)))


def _fault(kind: str, size: int) -> OSError:
    return {"enospc": OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
            "quota": OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
            "short": OSError(f"{size} requested and {size // 2} written"),  # numpy's tofile: no errno
            "eio": OSError(errno.EIO, os.strerror(errno.EIO))}[kind]


@contextlib.contextmanager
def disk_fills_on(target, kind: str):
    """The disk fills (or fails: `eio`) while `target` is written (a path as `_where` says it, or a test of
    one): its writer has written half of it when the error comes, from inside the store's writer
    (atomic_output) or a file copy (copy_tree)."""
    real_output, real_copy, real_usage = store.atomic_output, shutil.copy2, shutil.disk_usage
    hit = []
    aimed = target if callable(target) else lambda where: where == target

    @contextlib.contextmanager
    def atomic_output(path):
        with real_output(path) as tmp:
            yield tmp
            if aimed(_where(path)):
                hit.append(path)
                size = tmp.stat().st_size
                os.truncate(tmp, size // 2)
                raise _fault(kind, size)

    def copy2(src, dst, **kwargs):
        if aimed(_where(dst)):
            hit.append(dst)
            Path(dst).write_bytes(Path(src).read_bytes()[: os.stat(src).st_size // 2])
            raise _fault(kind, os.stat(src).st_size)
        return real_copy(src, dst, **kwargs)

    def disk_usage(path):  # a short write is a full disk where the free space says so
        usage = real_usage(path)
        return usage._replace(free=0) if hit and kind == "short" else usage

    with pytest.MonkeyPatch.context() as mp:
        for module in [m for name, m in sys.modules.items() if name.startswith("segreport")]:
            if getattr(module, "atomic_output", None) is real_output:  # store's, and where it was imported by name
                mp.setattr(module, "atomic_output", atomic_output)
        mp.setattr(shutil, "copy2", copy2)
        mp.setattr(shutil, "disk_usage", disk_usage)
        yield hit


def _project(path: Path) -> Path:
    wd = make_workdir(path)
    (wd / "params.yml").write_text(FAST)
    write_demo(wd / "data" / "demo.csv", rows=200, seed=6)
    write_demo(wd / "data" / "later.csv", rows=120, seed=7)
    return wd


def _in_process(mp: pytest.MonkeyPatch) -> None:
    """The grid's cells in this process, one thread each (a shared machine: LightGBM and t-SNE spin)."""
    mp.setattr(runner, "run_grid", inline_grid)
    mp.setattr(prepare, "threads_per_worker", lambda workers: 1)
    mp.setenv("SEGREPORT_THREADS", "1")
    mp.setenv("SEGREPORT_SITE_URL", "")  # the built-in renderer sets it for pandoc


@pytest.fixture(autouse=True)
def _each_in_process(monkeypatch):
    _in_process(monkeypatch)


SITE_VOLATILE = ("report/appendix.html", "report.pdf")  # they show when the run started and how long it took


def _outputs(wd: Path) -> dict:
    """What the commands wrote that must not depend on a fault on the way: the run folder (its volatile
    records aside), the size and sha256 of every file of the site (site.json; the pages that show the run's
    times aside) and the other commands' outputs."""
    out = {f"results/demo/{k}": v for k, v in _result_bytes(wd / "results" / "demo").items()}
    site = json.loads(out.pop("results/demo/site.json"))
    out.update({f"_site/{f}": json.dumps(r) for f, r in site["files"].items() if f not in SITE_VOLATILE})
    out.update({p.relative_to(wd).as_posix(): p.read_bytes() for p in sorted((wd / "out").glob("*"))})
    return out


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """Every command once, without a fault, in a project of its own."""
    wd = _project(tmp_path_factory.mktemp("undisturbed") / "project")
    with pytest.MonkeyPatch.context() as mp:
        _in_process(mp)
        mp.chdir(wd)
        for args in COMMANDS:
            assert main(args) == 0, args
    return wd


def _leftovers(wd: Path) -> list[str]:
    return sorted(p.relative_to(wd).as_posix() for p in wd.rglob("*.tmp"))


def test_a_full_disk_at_every_stage_is_one_line_status_4_and_the_next_run_gives_the_same_bytes(
        undisturbed, tmp_path, monkeypatch, capsys):
    wd = _project(tmp_path / "project")
    monkeypatch.chdir(wd)
    for args, target, kind in WALK:
        with disk_fills_on(target, kind) as hit:
            rc = main(args)
        err = capsys.readouterr().err
        folder, name = os.path.split(target)
        if kind == "eio":
            said = f"segreport: could not write {name} in {folder} (Input/output error); finished cells are kept, " \
                   "run again once it can be written\n"
        else:
            said = f"segreport: no space left on device in {folder} while writing {name}; finished cells are " \
                   "kept, free space and run again\n"
        assert hit, f"{args[0]} never wrote {target}"
        assert (rc, err) == (NO_SPACE, said), (target, kind, err)
        assert _leftovers(wd) == [], (target, kind)
    for args in COMMANDS:  # the disk freed: each command finishes
        assert main(args) == 0, args
    capsys.readouterr()
    assert _leftovers(wd) == []
    got, want = _outputs(wd), _outputs(undisturbed)
    assert sorted(got) == sorted(want)
    assert [f for f in want if got[f] != want[f]] == []
    assert json.loads((wd / "results/demo/manifest.json").read_text())["status"] == "done"


# --------------------------------------------------------------------------- the writers, one by one


@pytest.mark.parametrize("free, said", [(0, NoSpaceError), (1 << 40, WriteError)])
def test_numpy_s_short_write_is_a_full_disk_where_the_disk_has_no_room(tmp_path, monkeypatch, free, said):
    real_save = np.save

    def save(fh, arr, allow_pickle=False):  # what np.save says when the disk fills in its tofile
        real_save(fh, arr[: len(arr) // 2], allow_pickle=allow_pickle)
        raise OSError(f"{arr.nbytes} requested and {arr.nbytes // 2} written")

    monkeypatch.setattr(store.np, "save", save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))
    with pytest.raises(WriteError) as info:
        store.atomic_write_npy(tmp_path / "spaces" / "X.npy", np.zeros(1000))
    assert type(info.value) is said and info.value.path == tmp_path / "spaces" / "X.npy"
    if said is WriteError:
        assert str(info.value) == f"could not write X.npy in {tmp_path / 'spaces'} (short write: 4000 of 8000 bytes written)"
    assert list((tmp_path / "spaces").iterdir()) == []


def test_an_atomic_folder_is_whole_or_absent_and_a_failure_names_the_file_where_it_was_going(tmp_path, monkeypatch):
    site = tmp_path / "_site"
    with store.atomic_folder(site) as tmp:
        store.atomic_write_text(tmp / "report" / "a.html", "first")
    assert (site / "report" / "a.html").read_text() == "first"
    monkeypatch.setattr(store.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(NoSpaceError) as info:
        with store.atomic_folder(site) as tmp:
            store.atomic_write_text(tmp / "report" / "a.html", "second")
    assert info.value.path == site / "report" / "a.html"  # not the temporary folder's name
    assert (site / "report" / "a.html").read_text() == "first"  # the last whole folder stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_site"]
    # a killed writer's temporary folder is swept like its files
    (tmp_path / "._site.123.abc.tmp" / "report").mkdir(parents=True)
    (tmp_path / "._site.123.abc.tmp" / "report" / ".a.html.123.x.tmp").write_text("x")
    assert store.sweep_partial(tmp_path, deep=False) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["_site"]


def test_another_write_error_is_one_line_naming_the_file_with_status_4(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(store.os, "replace", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))
    assert main(DEMO) == NO_SPACE
    assert capsys.readouterr().err == ("segreport: could not write demo.csv in out (Permission denied); finished cells "
                                       "are kept, run again once it can be written\n")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_while_the_lock_is_signed_names_the_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(store.os, "pwrite", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(NoSpaceError, match=r"while writing \.lock$"):
        store.RunLock(tmp_path / "demo").acquire()
    monkeypatch.undo()
    with store.RunLock(tmp_path / "demo").acquire(wait=False):  # the failed one holds nothing
        pass


# --------------------------------------------------------------------------- what round two left alone


def test_track_waits_for_the_run_folder_s_lock(undisturbed, tmp_path, monkeypatch, capsys):
    wd = tmp_path / "project"
    shutil.copytree(undisturbed, wd, symlinks=True)
    monkeypatch.chdir(wd)
    holder = _holder(wd / "results" / "demo", 2)
    assert main([*TRACK[:-1], "2026-02"]) == 0
    err = capsys.readouterr().err
    assert f"results/demo is being written by another segreport run (pid {holder.pid}, started " in err
    assert "waiting for it to finish" in err
    assert holder.wait(5) == 0 and (wd / "results/demo/snapshots/2026-02/snapshot.json").exists()
    # and a track killed while it holds the lock blocks nobody (the kernel drops its flock); what it was
    # writing is removed by the next one
    holder = _holder(wd / "results" / "demo", 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed = wd / "results/demo/snapshots/.2026-03.999999.abc.tmp"
    killed.mkdir()
    (killed / "labels.parquet").write_bytes(b"half")
    assert main(TRACK) == 0 and "taking over its lock" in capsys.readouterr().err
    assert _leftovers(wd) == []


def test_a_damaged_timings_record_is_said_and_its_cell_computed_again(undisturbed, tmp_path, monkeypatch, capsys):
    wd = tmp_path / "project"
    shutil.copytree(undisturbed, wd, symlinks=True)
    monkeypatch.chdir(wd)
    cell = wd / "results/demo/cells/kmeans/k3"
    assert sorted(json.loads((cell / "done.json").read_text())["records"]) == ["timings.json"]  # no notebook here
    (cell / "timings.json").write_text("{}")
    assert main([*RUN, "--no-render"]) == 0
    assert re.search(r"^segreport: results/demo/cells/kmeans/k3/timings.json is damaged \(size differs: 2 bytes, "
                     r"not \d+\): recomputing that cell$", capsys.readouterr().err, re.M)
    m = json.loads((wd / "results/demo/manifest.json").read_text())
    assert not m["cells"]["kmeans/k3"]["reused"] and m["cells"]["kmeans/k2"]["reused"]
    assert _outputs(wd) == _outputs(undisturbed)


def _encode(texts, batch_size=128):
    return np.stack([np.random.default_rng(len(t)).normal(size=8) for t in texts]).astype(np.float32)


def _fake_encoder(*args):
    """An encoder without a model: seeded vectors of each text (the writers are what is tested here)."""
    return _encode


_fake_encoder.cache_clear = lambda: None  # as get_encoder's lru_cache


def test_the_embedding_cache_the_exported_models_and_the_gate_s_record_on_a_full_disk(tmp_path, monkeypatch):
    from segreport.methods.llm import embed, embed_fast as ef

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ef, "get_encoder", _fake_encoder)
    monkeypatch.setattr(ef, "model_fingerprint", lambda name: "model")
    cache = Path(".segreport-cache")
    # a part of the embedding cache (pyarrow's writer)
    part = cache / "embeddings" / "part-0.parquet"
    with disk_fills_on(part.as_posix(), "enospc"), pytest.raises(NoSpaceError) as info:
        embed.embed_part(["a", "bb"], "model", "fp32", 8, part)
    assert info.value.path == part and _leftovers(tmp_path) == []
    # an exported model: the exporter's own write fails (its error, its errno); the folder is removed
    monkeypatch.setattr(ef, "load_model", lambda name: None)

    def exporter(st, kind, out, base, calib):
        (out / "model.onnx").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ef, "_build", exporter)
    with pytest.raises(NoSpaceError) as info:
        ef.exported_model("model", "onnx-base", cache)
    assert info.value.path.parent == cache / "models" and list((cache / "models").iterdir()) == []
    # the gate: a full disk while a candidate is exported stops it (a candidate is not failed for it: the
    # record would keep another path than a run on a freed disk chooses), and its record is written whole
    texts = [f"customer {i} " + "x" * (i % 7) for i in range(40)]
    with pytest.raises(NoSpaceError):
        ef.choose_path(texts, "model", [2], 0, 1, cache, candidates=["onnx-fp32"])
    assert not (cache / "gate").exists()
    with disk_fills_on(lambda where: Path(where).parent.name == "gate", "quota") as hit, \
            pytest.raises(NoSpaceError) as info:  # the gate's record
        ef.choose_path(texts, "model", [2], 0, 1, cache, candidates=["bf16"])
    assert hit and info.value.path == Path(hit[0]) and list((cache / "gate").iterdir()) == []
    assert _leftovers(tmp_path) == []


def test_a_dask_task_s_full_disk_comes_back_as_its_error_not_a_worker_s_traceback(tmp_path):
    """(by hand, `run --executor dask` on a 40 KiB tmpfs: one line naming spaces/kmeans/X.npy, exit 4, and no
    'Compute Failed' traceback of the worker on the terminal)"""
    from segreport.stages import dask_grid

    def build(path):
        store.atomic_write_bytes(path, b"x")

    class Done:  # a finished future
        def __init__(self, value):
            self.value = value

        def result(self):
            return self.value

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        out = dask_grid._said(build, tmp_path / "X.npy")  # what the worker runs: returns, does not raise
    assert isinstance(out, dask_grid._WriteFailed)
    with pytest.raises(NoSpaceError, match="while writing X.npy"):
        dask_grid._result(Done(out))
    assert dask_grid._result(Done(3)) == 3 and list(tmp_path.iterdir()) == []
