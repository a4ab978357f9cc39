"""The names ``bench/master.py`` and ``bench/density.py`` import as ``_common``.

The benchmark helpers now live in small modules in ``bench/np_bench/`` (see
its ``__init__``); this module only re-exports, under their old names, what
those two scripts use. ``python bench/_common.py serve`` and ``… load SPEC_JSON``
still start the target server and the load generator.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from np_bench.__main__ import main
from np_bench.base import BENCH_DIR, HOST, REPO_ROOT, StartError, log
from np_bench.fmt import fmt_num, render_table
from np_bench.net import free_port, port_bound, wait_listening
from np_bench.procfs import (
    TreeMemorySampler,
    proc_cpu_seconds,
    proc_descendants,
    proc_status_kb,
)
from np_bench.procs import REGISTRY, start_run
from np_bench.runner import end_meta, write_json
from np_bench.stats import summarize_latencies
from np_bench.tools import nodepass_version

__all__ = [
    "BENCH_DIR",
    "HOST",
    "REGISTRY",
    "REPO_ROOT",
    "StartError",
    "TreeMemorySampler",
    "end_meta",
    "fmt_num",
    "free_port",
    "log",
    "nodepass_version",
    "port_bound",
    "proc_cpu_seconds",
    "proc_descendants",
    "proc_status_kb",
    "render_table",
    "start_run",
    "summarize_latencies",
    "wait_listening",
    "write_json",
]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
