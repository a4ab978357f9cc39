"""The systems under test: how each starts, proves it forwards, and stops.

A system is one or more processes ("hops") between the user and the target:

* ``direct``: none; users connect to the target itself;
* ``socat`` / ``haproxy``: one hop (socat forks a process per connection;
  haproxy runs one thread); ``udp=True`` adds a socat UDP hop on the same port
  number (one peer, no fork); ``hops=2``: a chain of two in a row, the second
  terminating TLS from the first when ``tls`` (haproxy only);
* ``nodepass-single``: one ``client://…?mode=1`` process (TCP and UDP);
* ``nodepass-pair``: ``server://…?mode=1`` (entry, flow ``-``) and
  ``client://…?mode=2`` (exit), with a TLS mode and a pool transport.

``start_system`` starts one from its ``SystemSpec``, retries on port clashes
(and once more for a nodepass pair that did not get ready), and checks that
20 echoes pass before it hands the system over.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from np_bench.base import PortClash, StartError, log
from np_bench.net import echo_once, free_port, port_bound, wait_listening
from np_bench.procfs import tree_cpu_seconds, tree_rss_kb
from np_bench.procs import REGISTRY, child_env, nodepass_tree
from np_bench.tools import haproxy_config, make_cert

TUNNEL_KEY = "benchkey"
DEFAULT_SINGLE_CMD = (
    "{python} -m nodepass client://127.0.0.1:{listen}/127.0.0.1:{target}?log=none&mode=1"
)
DEFAULT_SERVER_URL = (
    "server://{key}@127.0.0.1:{tunnel}/127.0.0.1:{entry}?mode=1&tls={tls}&log={log}"
)
DEFAULT_CLIENT_URL = "client://{key}@127.0.0.1:{tunnel}/127.0.0.1:{target}?mode=2&log={log}"
HELP_TRANSPORTS_RE = re.compile(r"type=(\S+) \(([^)]+)\)")
# Transports that always run over TLS, used when the registry cannot be asked
# for their ``minimumTLS`` (QUIC and HTTP/2, the reference's type codes).
ALWAYS_TLS = {"1": "quic", "3": "h2"}


@dataclass(frozen=True)
class Transport:
    code: str  # the value of type=
    name: str  # "tcp", "ws", "h2", "quic", ...
    min_tls: int  # 1: always runs over TLS


TCP_POOL = Transport("0", "tcp", 0)


@dataclass(frozen=True)
class SystemSpec:
    """What to start. ``kind``: direct, socat, haproxy, nodepass-single, nodepass-pair."""

    name: str
    kind: str
    hops: int = 1  # socat/haproxy: 1, or 2 in a row
    tls: int = 0  # haproxy chain: hop 1 talks TLS to hop 2; pair: the server's tls=
    transport: Transport = TCP_POOL  # pair: the pool transport
    udp: bool = False  # socat: also a UDP hop on the same port number
    cmd: str = DEFAULT_SINGLE_CMD  # nodepass-single: {python}, {listen}, {target}

    @property
    def nodepass(self) -> bool:
        return self.kind.startswith("nodepass")


# --------------------------------------------------------------------------
# Hops and systems
# --------------------------------------------------------------------------


@dataclass
class Hop:
    role: str  # "entry" (users connect to it), "exit" (it dials the target), "udp"
    proc: subprocess.Popen[Any]
    log_path: str
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n: int = 10) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-n:])


@dataclass
class System:
    name: str
    port: int  # where users connect (TCP and, where it forwards UDP, UDP)
    hops: list[Hop] = field(default_factory=list)
    killed_reason: str | None = None
    # seconds from the first spawn: "listen", "checkpoint" (nodepass pair), "forward"
    ready: dict[str, float] = field(default_factory=dict)
    t_spawn: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return all(h.alive() for h in self.hops)

    def dead_hops(self) -> str:
        return ", ".join(f"{h.role} rc={h.proc.returncode}" for h in self.hops if not h.alive())

    def pids(self) -> list[int]:
        return [h.pid for h in self.hops]

    def cpu_seconds(self) -> float | None:
        """CPU of every hop's process tree (forks and workers included); None if one is gone."""
        vals = [tree_cpu_seconds(p) for p in self.pids()]
        if not vals or any(v is None for v in vals):
            return None
        return sum(v for v in vals if v is not None)

    def rss_kb(self) -> dict[str, dict[int, int]]:
        """VmRSS of every process of every hop's tree: role -> pid -> kB."""
        return {h.role: tree_rss_kb(h.pid) for h in self.hops}

    def skip_reason(self) -> str:
        return self.killed_reason or f"died ({self.dead_hops()})"

    def death_reason(self) -> str:
        return self.killed_reason or f"died during the test ({self.dead_hops()})"

    def log_tails(self, n: int = 5) -> str:
        return "; ".join(f"{h.role}: {h.log_tail(n)!r}" for h in self.hops if h.log_tail())

    def stop(self) -> None:
        for h in reversed(self.hops):
            REGISTRY.kill(h.proc)


def spawn_hop(role: str, argv: list[str], log_path: str) -> Hop:
    with open(log_path, "wb") as logf:
        try:
            proc = REGISTRY.spawn(
                argv, stdout=logf, stderr=subprocess.STDOUT, cwd=nodepass_tree(), env=child_env()
            )
        except OSError as exc:
            raise StartError(f"cannot run {argv[0]}: {exc}") from exc
    return Hop(role, proc, log_path, argv)


def wait_hop(sysm: System, hop: Hop, port: int, timeout: float) -> None:
    """``hop`` listening on ``port`` within ``timeout``, or the system stopped and an error."""
    if wait_listening(port, timeout, hop.proc):
        return
    tail = hop.log_tail()
    exited = not hop.alive()
    sysm.stop()
    msg = (
        f"{hop.role} exited rc={hop.proc.returncode}"
        if exited
        else f"{hop.role} not listening on {port} after {timeout:.0f}s"
    )
    if tail:
        msg += "; output:\n    " + tail.replace("\n", "\n    ")
    raise (PortClash if exited else StartError)(msg)


# --------------------------------------------------------------------------
# socat and haproxy
# --------------------------------------------------------------------------


def hop_argv(kind: str, listen: int, upstream: int, tmpdir: str, tls: str = "") -> list[str]:
    """argv of one socat/haproxy hop listening on ``listen`` and dialling ``upstream``.

    ``tls``: "" plain, "client" dial ``upstream`` with TLS, "server" terminate TLS.
    """
    if kind == "socat":
        return [
            "socat",
            f"TCP-LISTEN:{listen},fork,reuseaddr,bind=127.0.0.1",
            f"TCP:127.0.0.1:{upstream}",
        ]
    bind_ssl = server_ssl = ""
    if tls == "server":
        bind_ssl = f" ssl crt {make_cert(tmpdir)} ssl-min-ver TLSv1.3"
    elif tls == "client":
        server_ssl = " ssl verify none ssl-min-ver TLSv1.3"
    cfg = os.path.join(tmpdir, f"haproxy-{listen}.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy_config(listen, upstream, bind_ssl, server_ssl))
    return ["haproxy", "-db", "-f", cfg]


def start_proxy(spec: SystemSpec, target: int, tmpdir: str, args: Any) -> System:
    """socat / haproxy: one hop, or two (exit hop started first); socat's UDP hop."""
    name, kind = spec.name, spec.kind
    if spec.hops == 1:
        listen = free_port(udp_too=spec.udp)
        hop = spawn_hop(
            "entry",
            hop_argv(kind, listen, target, tmpdir),
            os.path.join(tmpdir, f"{name}-{listen}.log"),
        )
        sysm = System(name, listen, [hop])
        wait_hop(sysm, hop, listen, args.start_timeout)
        if spec.udp:
            udp = spawn_hop(
                "udp",
                [
                    "socat",
                    f"UDP4-LISTEN:{listen},bind=127.0.0.1,reuseaddr",
                    f"UDP4:127.0.0.1:{target}",
                ],
                os.path.join(tmpdir, f"{name}-udp-{listen}.log"),
            )
            sysm.hops.append(udp)
            deadline = time.monotonic() + args.start_timeout
            while not port_bound(listen, "udp"):
                if not udp.alive() or time.monotonic() >= deadline:
                    sysm.stop()
                    raise PortClash(f"socat UDP hop not bound on {listen}: {udp.log_tail(3)!r}")
                time.sleep(0.02)
        return sysm
    tls = spec.tls > 0
    p_exit = free_port()
    exit_hop = spawn_hop(
        "exit",
        hop_argv(kind, p_exit, target, tmpdir, "server" if tls else ""),
        os.path.join(tmpdir, f"{name}-exit-{p_exit}.log"),
    )
    sysm = System(name, 0, [exit_hop])
    wait_hop(sysm, exit_hop, p_exit, args.start_timeout)
    p_entry = free_port()
    entry_hop = spawn_hop(
        "entry",
        hop_argv(kind, p_entry, p_exit, tmpdir, "client" if tls else ""),
        os.path.join(tmpdir, f"{name}-entry-{p_entry}.log"),
    )
    sysm.hops.insert(0, entry_hop)
    sysm.port = p_entry
    wait_hop(sysm, entry_hop, p_entry, args.start_timeout)
    return sysm


# --------------------------------------------------------------------------
# nodepass
# --------------------------------------------------------------------------


def start_nodepass_single(spec: SystemSpec, target: int, tmpdir: str, args: Any) -> System:
    """One ``client://…?mode=1`` process (or ``spec.cmd``) listening on a TCP+UDP port."""
    listen = free_port(udp_too=True)
    cmd = spec.cmd.format(python=shlex.quote(sys.executable), listen=listen, target=target)
    hop = spawn_hop("entry", shlex.split(cmd), os.path.join(tmpdir, f"{spec.name}-{listen}.log"))
    sysm = System(spec.name, listen, [hop])
    wait_hop(sysm, hop, listen, args.start_timeout)
    sysm.ready["listen"] = time.monotonic() - sysm.t_spawn
    return sysm


def start_nodepass_pair(spec: SystemSpec, target: int, tmpdir: str, args: Any) -> System:
    """Server (entry, flow ``-``) then client (exit); ready at each one's first CHECK_POINT.

    Uses ``args.server_url``, ``args.client_url``, ``args.np_log`` and
    ``args.ready_timeout``. Every wait is bounded by ``--ready-timeout`` from
    the server's start, and a line of progress is logged every 10 s, so that a
    slow transport is seen waiting rather than hanging.
    """
    name, tr = spec.name, spec.transport
    tunnel, entry = free_port(udp_too=True), free_port(udp_too=True)
    fill = {
        "key": TUNNEL_KEY,
        "tunnel": tunnel,
        "entry": entry,
        "target": target,
        "tls": spec.tls,
        "log": args.np_log,
        "type": tr.code,
    }
    server_url = args.server_url.format(**fill)
    if "{type}" not in args.server_url and tr.code != "0":
        server_url += ("&" if "?" in server_url else "?") + f"type={tr.code}"
    py = [sys.executable, "-m", "nodepass"]
    server = spawn_hop(
        "entry", [*py, server_url], os.path.join(tmpdir, f"{name}-server-{tunnel}.log")
    )
    sysm = System(name, entry, [server])
    deadline = sysm.t_spawn + args.ready_timeout
    next_note = time.monotonic() + 10

    def progress(what: str) -> None:
        nonlocal next_note
        if time.monotonic() >= next_note:
            next_note += 10
            log(f"[{name}] still waiting for {what} ({time.monotonic() - sysm.t_spawn:.0f}s)")

    # The client is started once the server listens on the tunnel port, so that
    # its first dial is not refused (it would then wait out the 3 s cooldown).
    # The control channel is TCP for every transport. (QUIC binds its UDP pool
    # port only after the client's handshake: nothing more to wait for here.)
    while not port_bound(tunnel, "tcp"):
        if not server.alive():
            tail = server.log_tail(5)
            sysm.stop()
            raise PortClash(f"server exited rc={server.proc.returncode}: {tail!r}")
        if time.monotonic() >= deadline:
            tail = server.log_tail(5)
            sysm.stop()
            raise StartError(
                f"server not listening on tunnel port {tunnel} after "
                f"{args.ready_timeout:g}s: {tail!r}"
            )
        progress(f"the server's tunnel port {tunnel}")
        time.sleep(0.02)
    sysm.ready["listen"] = time.monotonic() - sysm.t_spawn
    client = spawn_hop(
        "exit",
        [*py, args.client_url.format(**fill)],
        os.path.join(tmpdir, f"{name}-client-{tunnel}.log"),
    )
    sysm.hops.append(client)
    want_checkpoint = args.np_log in ("debug", "info", "warn", "error", "event")
    while time.monotonic() < deadline:
        if not sysm.alive():
            tails = "; ".join(
                f"{h.role}: {h.log_tail(5)!r}" for h in sysm.hops if not h.alive() and h.log_tail()
            )
            sysm.stop()
            raise PortClash(f"{sysm.dead_hops()} during start-up" + (f"; {tails}" if tails else ""))
        if not want_checkpoint:  # nothing to wait for but a working echo (the preflight)
            return sysm
        if all("CHECK_POINT" in h.log_text() for h in sysm.hops):
            sysm.ready["checkpoint"] = time.monotonic() - sysm.t_spawn
            return sysm
        progress("CHECK_POINT from both ends")
        time.sleep(0.05)
    tails = sysm.log_tails()
    sysm.stop()
    raise StartError(f"no CHECK_POINT from both ends within {args.ready_timeout:g}s; {tails}")


_MIN_TLS_PROBE = """\
import json
from nodepass.transports import available
print(json.dumps({c: int(getattr(p, "minimumTLS", 0) or 0) for c, p in available().items()}))
"""


def installed_transports() -> tuple[list[Transport], str]:
    """The pool transports on the last line of ``python -m nodepass --help``, and that line.

    Which of them always run over TLS is asked of the plugin registry
    (``minimumTLS``); if that fails, h2 and quic do.
    """
    try:
        out = subprocess.run(
            [sys.executable, "-m", "nodepass", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=nodepass_tree(),
            env=child_env(),
        )
        text = (out.stdout or "") + (out.stderr or "")
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"python -m nodepass --help failed: {exc}"
    line = next(
        (ln.strip() for ln in reversed(text.splitlines()) if ln.startswith("Pool transports")),
        "",
    )
    found = HELP_TRANSPORTS_RE.findall(line) if line.startswith("Pool transports installed") else []
    mins: dict[str, int] = {}
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _MIN_TLS_PROBE],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=nodepass_tree(),
            env=child_env(),
        )
        mins = {
            str(k): int(v) for k, v in json.loads(probe.stdout.strip().splitlines()[-1]).items()
        }
    except (OSError, subprocess.SubprocessError, ValueError, IndexError, AttributeError):
        pass
    out_list = []
    for code, name in found:
        fallback = 1 if code in ALWAYS_TLS or name in ALWAYS_TLS.values() else 0
        out_list.append(Transport(code, name, mins.get(code, fallback)))
    return out_list, line or "(no 'Pool transports' line in nodepass --help)"


# --------------------------------------------------------------------------
# Any system: start, preflight, retries
# --------------------------------------------------------------------------


def preflight(sysm: System, deadline: float, echo_timeout: float, name: str) -> None:
    """20 echoes through the system before ``deadline`` (failures retried), or StartError.

    A pool transport may accept users before its pool is up, hence the
    retries and a per-echo timeout long enough for a first dial.
    """
    ok, fails, err = 0, 0, ""
    next_note = time.monotonic() + 10
    while ok < 20 and time.monotonic() < deadline:
        if sysm.hops and not sysm.alive():
            break
        try:
            echo_once(sysm.port, timeout=min(echo_timeout, max(0.5, deadline - time.monotonic())))
            ok += 1
        except OSError as exc:
            fails += 1
            err = repr(exc)
            time.sleep(min(0.5, 0.05 * fails))
        if time.monotonic() >= next_note:
            next_note += 10
            log(
                f"[{name}] still waiting for echoes: {ok}/20 passed, {fails} failed "
                f"({time.monotonic() - sysm.t_spawn:.0f}s)"
            )
    if ok < 20:
        tails = sysm.log_tails()
        dead = f" ({sysm.dead_hops()})" if sysm.hops and not sysm.alive() else ""
        sysm.stop()
        raise StartError(
            f"accepts on {sysm.port} but does not forward{dead}: {ok}/20 echoes passed, "
            f"{fails} failed, last {err}" + (f"; {tails}" if tails else "")
        )
    sysm.ready["forward"] = time.monotonic() - sysm.t_spawn
    sysm.ready["echo_failures"] = fails


def start_once(spec: SystemSpec, target: int, tmpdir: str, args: Any) -> System:
    """Start ``spec`` and check that it forwards: 20 echoes through its entry port."""
    if spec.kind == "direct":
        sysm = System(spec.name, target)
    elif spec.kind == "nodepass-pair":
        sysm = start_nodepass_pair(spec, target, tmpdir, args)
    elif spec.kind == "nodepass-single":
        sysm = start_nodepass_single(spec, target, tmpdir, args)
    elif spec.kind in ("socat", "haproxy"):
        sysm = start_proxy(spec, target, tmpdir, args)
    else:
        raise ValueError(spec.kind)
    if spec.kind == "nodepass-pair":
        preflight(sysm, sysm.t_spawn + args.ready_timeout, 5.0, spec.name)
    else:
        preflight(sysm, time.monotonic() + args.start_timeout, 3.0, spec.name)
    return sysm


def start_system(
    spec: SystemSpec, target: int, tmpdir: str, args: Any, warnings: list[str]
) -> System:
    """``start_once`` with new ports after a port clash (3 tries), and one more try for a
    nodepass pair that did not get ready; each failed try is added to ``warnings``.
    A pair then gets ``args.pool_settle`` seconds to top its pool up again."""
    clashes, retried = 0, False
    while True:
        try:
            sysm = start_once(spec, target, tmpdir, args)
            break
        except PortClash as exc:
            clashes += 1
            if clashes >= 3:
                raise
            warnings.append(f"start attempt failed (new ports): {exc}")
        except StartError as exc:
            if retried or spec.kind != "nodepass-pair":
                raise
            retried = True
            warnings.append(f"start attempt failed, retrying once: {exc}")
            log(f"[{spec.name}] start failed, retrying once: {exc}")
    if spec.kind == "nodepass-pair":
        time.sleep(args.pool_settle)  # let the client top its pool up again
    return sysm
