"""The NodePass benchmark runner, in small modules shared by ``bench/*.py``.

* ``base``: paths, ``log``, ``StartError``;
* ``procs``: child processes (each in its own group, all killed at the end), signals;
* ``net``: ports, readiness, one echo;
* ``procfs``: CPU time and memory of process trees from ``/proc``;
* ``target``: the target server (TCP sink, echo and source; UDP echo), its own process;
* ``loadgen``: the load generator, its own process (one JSON result per run);
* ``tools``: socat/haproxy (apt-get), haproxy configs, versions, the test certificate;
* ``systems``: how each system under test starts (direct, socat, haproxy, their chains,
  nodepass single-end and pairs) and stops;
* ``phases``: the measurements, run against a started system;
* ``runner``: rounds (ABBA), run metadata, JSON;
* ``stats``: percentiles, medians over rounds, ratios;
* ``fmt``: tables and numbers as printed;
* ``options``: the command-line options the benchmarks share.

``python -m np_bench serve`` and ``python -m np_bench load SPEC_JSON`` (run from
``bench/``) start the target and the load generator; the benchmarks do that themselves.
"""
