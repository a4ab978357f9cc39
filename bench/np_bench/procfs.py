"""CPU time and memory of a process and its descendants, from ``/proc``."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, *fields: str) -> dict[str, int]:
    """Selected ``kB`` fields of /proc/<pid>/status (missing ones are absent)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return kids


def proc_descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = proc_children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(proc_children(p))
    return out


def set_tree_affinity(pid: int, cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of ``pid`` and of its descendants.

    ``sched_setaffinity`` acts on one thread, so each task is set separately.
    Children forked later inherit the affinity of the thread that forks them.
    """
    for p in [pid, *proc_descendants(pid)]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def proc_cpu_seconds(pid: int, reaped: bool = True) -> float | None:
    """user+sys CPU of ``pid``, plus (``reaped``) that of the children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime..cstime are fields 14..17
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    if not reaped:
        cutime = cstime = 0
    return (utime + stime + cutime + cstime) / CLK_TCK


class TreeMemorySampler(threading.Thread):
    """Samples the memory of a process and all its descendants.

    * ``main_hwm_kb``: VmHWM (kernel-tracked peak RSS) of the main process,
      read at :meth:`stop` - exact.
    * ``tree_peak_kb``: peak of the sum of VmRSS over the main process and
      its live descendants, sampled every ``interval`` s (misses short peaks,
      over-counts pages that forked children share copy-on-write). At least
      ``main_hwm_kb``.
    * ``child_hwm_max_kb``: largest VmHWM seen in any descendant.
    * ``max_children``: most descendants seen alive at once.

    If ``limit_kb`` is set and the tree grows past it, ``on_limit`` is called
    once (the benchmark kills the forwarder: protection against a forwarder
    that buffers without back-pressure).
    """

    def __init__(
        self,
        pid: int,
        interval: float = 0.1,
        limit_kb: int | None = None,
        on_limit: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.limit_kb = limit_kb
        self.on_limit = on_limit
        self.tree_peak_kb = 0
        self.child_hwm_max_kb = 0
        self.max_children = 0
        self.main_hwm_kb = 0
        self.limit_hit_kb: int | None = None
        self._stop_evt = threading.Event()

    def sample(self) -> None:
        main = proc_status_kb(self.pid, "VmRSS", "VmHWM")
        if not main:
            return
        self.main_hwm_kb = max(self.main_hwm_kb, main.get("VmHWM", 0))
        total = main.get("VmRSS", 0)
        kids = proc_descendants(self.pid)
        self.max_children = max(self.max_children, len(kids))
        for kid in kids:
            st = proc_status_kb(kid, "VmRSS", "VmHWM")
            total += st.get("VmRSS", 0)
            self.child_hwm_max_kb = max(self.child_hwm_max_kb, st.get("VmHWM", 0))
        self.tree_peak_kb = max(self.tree_peak_kb, total, self.main_hwm_kb)
        if self.limit_kb is not None and self.limit_hit_kb is None and total > self.limit_kb:
            self.limit_hit_kb = total
            if self.on_limit is not None:
                self.on_limit(total)

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, int]:
        self.sample()
        self._stop_evt.set()
        self.join(timeout=2)
        return {
            "main_hwm_kb": self.main_hwm_kb,
            "tree_peak_kb": self.tree_peak_kb,
            "child_hwm_max_kb": self.child_hwm_max_kb,
            "max_children": self.max_children,
        }


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    return [pid, *proc_descendants(pid)]


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU of ``pid``'s process tree: every live process with the children it reaped.

    Each process counts once: alive, by its own figures; exited and reaped, in
    its reaper's. A forwarder with worker processes is thus measured whole.
    None when ``pid`` itself is gone.
    """
    own = proc_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(proc_cpu_seconds(k) or 0.0 for k in proc_descendants(pid))


def tree_rss_kb(pid: int) -> dict[int, int]:
    """VmRSS (kB) of every live process of ``pid``'s tree, by pid."""
    out = {}
    for p in tree_pids(pid):
        rss = proc_status_kb(p, "VmRSS").get("VmRSS")
        if rss is not None:
            out[p] = rss
    return out
