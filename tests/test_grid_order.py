"""The grid's scheduling: the longest cells first, and one warm kernel per cell running at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from segreport.stages.grid import _IDLE, ensure_kernel, longest_first, warm_kernel


def test_longest_first_uses_each_methods_past_cells_then_k():
    todo = [("kmeans", 9, "a"), ("kprototypes", 9, "b"), ("llm", 9, "c"), ("kmeans", 10, "d")]
    past = {"kmeans/k2": {"wall_seconds": 20.0}, "kmeans/k3": {"wall_seconds": 22.0},
            "kprototypes/k2": {"wall_seconds": 28.0}, "llm/k2": {"wall_seconds": 35.0},
            "llm/k3": {"status": "failed", "wall_seconds": None}}
    assert [c[2] for c in longest_first(todo, past)] == ["c", "b", "d", "a"]
    # a first run has no history: the larger k first, the methods' order kept among equals
    assert [c[2] for c in longest_first(todo, {})] == ["d", "a", "b", "c"]


def test_a_process_keeps_one_kernel_per_cell_running_at_once(tmp_path):
    """A Dask worker runs its cells on whichever thread is free: the idle kernel is reused by the next
    cell, whatever its thread; two cells at once get two kernels."""
    ensure_kernel()
    _IDLE.clear()
    seen = []

    def one_cell():
        with warm_kernel(str(tmp_path), tmp_path / "kernel.log") as km:
            seen.append(km)

    one_cell()
    t = threading.Thread(target=one_cell)
    t.start()
    t.join()
    assert seen[0] is seen[1] and len(_IDLE) == 1  # another thread, the same kernel, reset between
    barrier = threading.Barrier(2)

    def two_at_once():
        with warm_kernel(str(tmp_path), tmp_path / "kernel.log") as km:
            barrier.wait(timeout=120)
            return km

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: two_at_once(), range(2))
    assert a is not b and seen[0] in (a, b) and len(_IDLE) == 2
    for kernel in list(_IDLE):
        kernel["km"].shutdown_kernel(now=True)
    _IDLE.clear()


def test_a_kernel_whose_port_was_taken_is_started_again_on_new_ports(tmp_path, monkeypatch):
    """Between the parent picking a kernel's ports and the kernel binding them, another process may take
    one: that kernel dies ('Address already in use'); a new one is started on new ports."""
    import socket

    import jupyter_client.manager as jm

    from segreport.stages import grid

    ensure_kernel()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    made = []

    class FirstOnATakenPort(jm.KernelManager):
        def __init__(self, **kw):
            super().__init__(**kw, **({} if made else {"shell_port": port, "cache_ports": False}))
            made.append(self)

    monkeypatch.setattr(jm, "KernelManager", FirstOnATakenPort)
    try:
        km = grid._start_kernel(str(tmp_path), tmp_path / "kernel.log")
        assert len(made) == 2 and km is made[1] and km.is_alive() and not made[0].is_alive()
        assert "Address already in use" in (tmp_path / "kernel.log").read_text()
        km.shutdown_kernel(now=True)
    finally:
        taken.close()
