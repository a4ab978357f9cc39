"""``nodepass doctor URL``: check a tunnel URL step by step and say what is wrong.

The doctor does what a person debugging a tunnel would do by hand, in order, and stops at
the first step whose failure makes the rest meaningless:

1. the URL parses (and what its defaults mean);
2. the names resolve;
3. for a dual-end client: the server's tunnel port accepts TCP, the handshake answers (a
   wrong key is 401; something else on the port is named), TLS mode, version, certificate
   subject, expiry and fingerprint (and a ``pin`` mismatch), and one pool connection comes
   up; for a server or a single-end forwarder: the listening address can be bound here;
4. the targets are reachable from this side (where this side dials them);
5. for a ``master://`` URL: the API answers, and the key given with ``--key`` works.

Every step has a timeout, so the whole run is bounded.  The doctor is a command-line tool
with plain blocking sockets and no reactor: it never runs inside an instance.

A word on the handshake: a NodePass server accepts one client per cycle, so an authenticated
handshake from the doctor makes the server drop a client that is connected, or take the
doctor for its client until the doctor closes (the real client then reconnects within a few
seconds).  ``--passive`` skips the authenticated steps.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from typing import IO, Any, Final

from attrs import define, field

from nodepass.errors import URLError
from nodepass.url import Config, HostPort, parse

__all__ = ["Report", "Step", "diagnose", "main"]

#: Seconds each network step may take.
STEP_TIMEOUT: Final = 5.0

#: How many bytes of an unexpected answer are looked at.
_PEEK: Final = 512


@define
class Step:
    """
    One check: its name, whether it passed, what was found and, when it failed, what to do.
    """

    name: str
    ok: bool
    detail: str
    advice: str = ""

    def asJSON(self) -> dict[str, Any]:
        return {"step": self.name, "ok": self.ok, "detail": self.detail, "advice": self.advice}


@define
class Report:
    steps: list[Step] = field(factory=list)

    @property
    def healthy(self) -> bool:
        return all(step.ok for step in self.steps)

    def add(self, name: str, ok: bool, detail: str, advice: str = "") -> bool:
        self.steps.append(Step(name, ok, detail, advice))
        return ok


# -- small network helpers ----------------------------------------------------------------------


def _resolve(address: HostPort, timeout: float) -> list[str]:
    """
    The IP addresses of C{address.host} (an IP literal resolves to itself).
    """
    if address.isIP or not address.host:
        return [address.host or "0.0.0.0"]
    deadline = time.monotonic() + timeout
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    if time.monotonic() > deadline:
        raise TimeoutError(f"resolving {address.host} took longer than {timeout:g}s")
    seen: list[str] = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in seen:
            seen.append(ip)
    return seen


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _canBind(host: str, port: int) -> str | None:
    """
    C{None} when C{host:port} can be bound for TCP here, else why not.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as e:
        return e.strerror or str(e)
    finally:
        probe.close()
    return None


def _describeAnswer(data: bytes) -> str:
    """
    What kind of service sent C{data} as the first bytes of its answer.
    """
    if not data:
        return "it closed the connection without answering"
    if data[:1] in (b"\x15", b"\x16"):
        return "a TLS service answered (it expects a TLS client hello)"
    if data.startswith(b"HTTP/"):
        line = data.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        server = ""
        for header in data.split(b"\r\n")[1:]:
            if header.lower().startswith(b"server:"):
                server = header.split(b":", 1)[1].strip().decode("latin-1", "replace")
        return f"an HTTP server answered {line!r}" + (f" (Server: {server})" if server else "")
    if data.startswith(b"SSH-"):
        banner = data.split(b"\r", 1)[0].decode("latin-1", "replace")
        return f"an SSH server answered {banner!r}"
    if len(data) == 4:
        return "4 binary bytes came back: a NodePass server in its pool phase"
    return f"it answered {len(data)} bytes that are not HTTP: {data[:16].hex()}..."


def _readAnswer(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """
    What the peer answered within C{timeout}, and whether the time ran out (a port that
    accepts and then says nothing, rather than one that closes).
    """
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    timedOut = False
    while size < 65536:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            timedOut = True
            break
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        whole = b"".join(chunks)
        if b"\r\n\r\n" in whole:
            head, _, body = whole.partition(b"\r\n\r\n")
            length = _contentLength(head)
            if length is not None and len(body) >= length:
                break
        elif len(whole) == 4 and not whole.startswith(b"HTTP"):
            break  # a pool ID
        if time.monotonic() > deadline:
            timedOut = True
            break
    return b"".join(chunks), timedOut


def _contentLength(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


# -- the steps ----------------------------------------------------------------------------------


def _explain(config: Config) -> str:
    role = config.scheme
    if role == "client":
        mode = {0: "auto (single-end if the tunnel address binds here, else dual-end)"}.get(
            config.mode, {1: "single-end forwarder", 2: "dual-end client"}.get(config.mode, "")
        )
    elif role == "server":
        mode = {
            0: "auto",
            1: "reverse: users connect to this server, the client dials the targets",
            2: "forward: users connect to the client, this server dials the targets",
        }.get(config.mode, "")
    else:
        mode = ""
    targets = ", ".join(t.text for t in config.targets) or "none"
    parts = [f"{role}", f"tunnel {config.tunnel.text}", f"targets {targets}"]
    if mode:
        parts.append(f"mode {config.mode} ({mode})")
    if role in ("server", "master"):
        parts.append(f"tls {config.effectiveTLS if role == 'master' else config.tls}")
    if role == "server":
        parts.append(f"type {config.type}")
    return "; ".join(parts)


def _handshake(
    report: Report, config: Config, ip: str, timeout: float
) -> tuple[dict[str, Any], socket.socket | None] | None:
    from nodepass.tunnel.handshake import decodeConfig, token

    port = config.tunnel.port
    try:
        sock = _connect(ip, port, timeout)
    except OSError as e:
        report.add(
            "tunnel port",
            False,
            f"{ip}:{port} does not accept TCP: {e.strerror or e}",
            "Is the server running, listening on this address, and is the port open in the "
            "firewall between here and there?",
        )
        return None
    report.add("tunnel port", True, f"{ip}:{port} accepts TCP connections")
    host = config.serverName or "none"
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token(config.key)}\r\n"
        "X-NodePass-Ext: 1\r\nConnection: close\r\n\r\n"
    ).encode("ascii", "replace")
    try:
        sock.sendall(request)
        answer, timedOut = _readAnswer(sock, timeout)
    except OSError as e:
        report.add("handshake", False, f"the connection failed: {e.strerror or e}")
        return None
    finally:
        sock.close()
    if not answer and timedOut:
        report.add(
            "handshake",
            False,
            f"the port accepted the connection but sent nothing within {timeout:g}s",
            "Something listens there but does not speak HTTP first: not a NodePass server "
            "(or one stuck); check what runs on that port.",
        )
        return None
    if answer.startswith(b"HTTP/1.1 401") or answer.startswith(b"HTTP/1.0 401"):
        report.add(
            "handshake",
            False,
            "the server refused the key (401 Unauthorized)",
            "The key before '@' must be the server's key (the one in its own URL).",
        )
        return None
    if answer.startswith(b"HTTP/1.1 200") or answer.startswith(b"HTTP/1.0 200"):
        body = answer.partition(b"\r\n\r\n")[2]
        try:
            announced = decodeConfig(body)
        except Exception:
            report.add(
                "handshake",
                False,
                f"{_describeAnswer(answer)}, but not with a NodePass tunnel config",
                "This port runs another HTTP service, not a NodePass server.",
            )
            return None
        values = {"flow": announced.flow, "max": announced.max, "tls": announced.tls}
        values["type"] = announced.type
        report.add(
            "handshake",
            True,
            "the server accepted the key: flow {flow}, max {max}, tls {tls}, type {type}".format(
                **values
            ),
        )
        return values, None
    what = _describeAnswer(answer)
    advice = "This port does not run a NodePass server waiting for a client."
    if "pool phase" in what or not answer:
        advice = (
            "A NodePass server that already has a client answers this way (one client per "
            "server): stop the other client, or check that this is the right server."
        )
    report.add("handshake", False, what, advice)
    return None


def _tlsCheck(report: Report, config: Config, ip: str, mode: str, timeout: float) -> bool:
    from nodepass.tls import fingerprint

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        raw = _connect(ip, config.tunnel.port, timeout)
        with context.wrap_socket(raw, server_hostname=config.serverName or None) as tls:
            der = tls.getpeercert(binary_form=True) or b""
            version = tls.version() or "?"
            tls.settimeout(timeout)
            ident = b""
            while len(ident) < 4:
                chunk = tls.recv(4 - len(ident))
                if not chunk:
                    break
                ident += chunk
    except (OSError, ssl.SSLError) as e:
        report.add(
            "tls",
            False,
            f"TLS to the tunnel port failed: {e}",
            "The server announced TLS; check its certificate files and that nothing "
            "between here and there intercepts TLS.",
        )
        return False
    detail = f"{version}, certificate {fingerprint(der)}"
    try:
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        subject = cert.subject.rfc4514_string() or "(empty subject)"
        expires = cert.not_valid_after_utc
        days = (expires - datetime.datetime.now(datetime.UTC)).days
        detail += f", subject {subject}, expires {expires:%Y-%m-%d} ({days} days)"
        if days < 0:
            return report.add("tls", False, detail, "The server's certificate has expired.")
    except Exception:
        pass
    pin = getattr(config, "pin", "")
    if pin and pin != fingerprint(der):
        return report.add(
            "tls",
            False,
            f"{detail}; the pin {pin} does not match",
            "The server presents another certificate than the pinned one: check that this is "
            "the right server, or pin its new certificate.",
        )
    if mode == "2":
        problem = _verify(der, config.serverName or config.tunnel.host)
        if problem is not None:
            return report.add(
                "tls",
                False,
                f"{detail}; not trusted here: {problem}",
                "With tls=2 the client checks the server's certificate against this machine's "
                "trusted CAs and the server name: install a certificate from a CA it trusts, "
                "or use tls=1 with pin=<fingerprint>.",
            )
    report.add("tls", True, f"mode {mode}: {detail}")
    return report.add(
        "pool",
        len(ident) == 4,
        f"a pool connection came up (id {ident.hex()})" if len(ident) == 4 else "no pool id",
    )


def _verify(der: bytes, name: str) -> str | None:
    """
    Why a certificate fails the checks a tls=2 client makes (this machine's trusted CAs, the
    server name), or L{None} when it passes.  Checked on the certificate already received:
    a second connection could find the server in another phase of its cycle.
    """
    import ipaddress

    from OpenSSL import crypto
    from service_identity import VerificationError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    store = crypto.X509Store()
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile or paths.openssl_cafile
    capath = paths.capath or paths.openssl_capath
    try:
        store.load_locations(
            cafile if cafile and os.path.isfile(cafile) else None,
            capath if capath and os.path.isdir(capath) else None,
        )
    except crypto.Error:
        pass  # no trust store here: nothing verifies, which is what a tls=2 client finds
    certificate = crypto.X509.from_cryptography(_load(der))
    try:
        crypto.X509StoreContext(store, certificate).verify_certificate()
    except crypto.X509StoreContextError as e:
        return f"the certificate chain does not verify ({e})"
    try:
        try:
            verify_certificate_ip_address(_load(der), str(ipaddress.ip_address(name)))
        except ValueError:
            verify_certificate_hostname(_load(der), name)
    except VerificationError as e:
        return f"the certificate is not for {name} ({e})"
    return None


def _load(der: bytes) -> Any:
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


def _poolCheck(report: Report, config: Config, ip: str, timeout: float) -> bool:
    try:
        with _connect(ip, config.tunnel.port, timeout) as sock:
            sock.settimeout(timeout)
            ident = b""
            while len(ident) < 4:
                chunk = sock.recv(4 - len(ident))
                if not chunk:
                    break
                ident += chunk
    except OSError as e:
        return report.add("pool", False, f"the pool connection failed: {e.strerror or e}")
    if len(ident) != 4:
        return report.add(
            "pool",
            False,
            "the server closed the pool connection without an id",
            "The server accepts pool connections only from the address that did the handshake.",
        )
    return report.add("pool", True, f"a pool connection came up (id {ident.hex()})")


def _targets(report: Report, config: Config, timeout: float) -> None:
    for target in config.targets:
        try:
            addresses = _resolve(target, timeout)
        except (OSError, TimeoutError) as e:
            report.add(
                f"target {target.text}",
                False,
                f"{target.host} does not resolve: {e}",
                "Check the name, or this machine's DNS settings.",
            )
            continue
        ip = addresses[0]
        try:
            started = time.monotonic()
            with _connect(ip, target.port, timeout):
                pass
            elapsed = (time.monotonic() - started) * 1000
            report.add(
                f"target {target.text}", True, f"{ip}:{target.port} accepts TCP ({elapsed:.1f} ms)"
            )
        except OSError as e:
            report.add(
                f"target {target.text}",
                False,
                f"{ip}:{target.port} does not accept TCP from here: {e.strerror or e}",
                "Start the service behind the tunnel, or fix the target address.",
            )


def _bindCheck(report: Report, config: Config, what: str) -> bool:
    host = config.tunnel.host if what == "tunnel" else ""
    port = config.tunnel.port
    problem = _canBind(host or "0.0.0.0", port)
    if problem is None:
        return report.add(f"{what} address", True, f"{config.tunnel.text} can be bound here")
    return report.add(
        f"{what} address",
        False,
        f"{config.tunnel.text} cannot be bound: {problem}",
        "Another process (perhaps this very tunnel, already running) uses the port, or the "
        "address is not one of this machine's.",
    )


def _master(report: Report, config: Config, key: str, timeout: float) -> None:
    host = config.tunnel.host or "127.0.0.1"
    tls = config.effectiveTLS != 0
    path = config.apiPrefix + "/info"
    try:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, config.tunnel.port, timeout=timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(host, config.tunnel.port, timeout=timeout)
        connection.request("GET", path, headers={"X-API-Key": key} if key else {})
        response = connection.getresponse()
        body = response.read(65536)
        connection.close()
    except OSError as e:
        report.add(
            "api",
            False,
            f"{host}:{config.tunnel.port} does not answer HTTP: {e}",
            "Is the master running, and is the prefix in the URL the master's?",
        )
        return
    if response.status == 401:
        if not key:
            report.add("api", True, f"GET {path} answers (401 without a key)")
            report.add("key", False, "no key given", "Pass the API key with --key.")
        else:
            report.add("api", True, f"GET {path} answers")
            report.add(
                "key",
                False,
                "the master refused the key (401)",
                "Use the key the master printed when it created it.",
            )
        return
    if response.status == 200:
        try:
            info = json.loads(body)
            version = info.get("ver", "?")
        except ValueError:
            version = "?"
        report.add("api", True, f"GET {path} answers (NodePass {version})")
        report.add("key", True, "the key works")
        return
    report.add(
        "api",
        False,
        f"GET {path} answered {response.status} {response.reason}",
        "Check the prefix: the master serves its API below <prefix>/v1.",
    )


def diagnose(
    text: str, key: str = "", passive: bool = False, timeout: float = STEP_TIMEOUT
) -> Report:
    """
    Run every step that applies to URL C{text}; see the module docstring.
    """
    report = Report()
    try:
        config = parse(text)
    except URLError as e:
        report.add("url", False, str(e), "Fix the URL; docs/url.md lists every part.")
        return report
    report.add("url", True, _explain(config))
    if config.scheme == "master":
        _master(report, config, key, timeout)
        return report
    if config.tunnel.host and not config.tunnel.isIP:
        try:
            addresses = _resolve(config.tunnel, timeout)
        except (OSError, TimeoutError) as e:
            report.add(
                "resolve",
                False,
                f"{config.tunnel.host} does not resolve: {e}",
                "Check the name, or this machine's DNS settings.",
            )
            return report
        report.add("resolve", True, f"{config.tunnel.host} is {', '.join(addresses)}")
    else:
        addresses = [config.tunnel.host or "127.0.0.1"]
    if config.scheme == "server":
        if _bindCheck(report, config, "tunnel"):
            if config.mode == 2:
                _targets(report, config, timeout)
        return report
    # client://
    single = config.mode == 1
    if config.mode == 0 and _canBind(config.tunnel.host or "0.0.0.0", config.tunnel.port) is None:
        single = True
    if single:
        _bindCheck(report, config, "listen")
        _targets(report, config, timeout)
        return report
    if passive:
        report.add("handshake", True, "skipped (--passive): the key is not checked")
        return report
    result = _handshake(report, config, addresses[0], timeout)
    if result is None:
        return report
    announced, _ = result
    if announced["type"] == "0":
        if announced["tls"] in ("1", "2"):
            _tlsCheck(report, config, addresses[0], announced["tls"], timeout)
        else:
            _poolCheck(report, config, addresses[0], timeout)
    else:
        report.add("pool", True, f"pool type {announced['type']}: not probed by the doctor")
    if announced["flow"] == "+":
        # Forward flow: the client listens on its first target address (dataplane §2.3).
        first = config.targets[0] if config.targets else None
        if first is not None:
            problem = _canBind(first.host or "0.0.0.0", first.port)
            report.add(
                "listen address",
                problem is None,
                f"{first.text} can be bound here"
                if problem is None
                else f"{first.text} cannot be bound: {problem}",
                ""
                if problem is None
                else "Another process uses the port (this client, already running?).",
            )
    else:
        # Reverse flow: the client dials its targets (dataplane §2.3).
        _targets(report, config, timeout)
    return report


def _print(report: Report, out: IO[str]) -> None:
    for step in report.steps:
        mark = "ok  " if step.ok else "FAIL"
        out.write(f"[{mark}] {step.name}: {step.detail}\n")
        if not step.ok and step.advice:
            out.write(f"       -> {step.advice}\n")
    out.write("healthy\n" if report.healthy else "not healthy\n")


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """
    The command line: C{nodepass doctor URL [--json] [--key KEY] [--passive]}.
    """
    parser = argparse.ArgumentParser(
        prog="nodepass doctor",
        description="Check a NodePass URL step by step and say what is wrong.",
    )
    parser.add_argument("url", help="a server://, client:// or master:// URL")
    parser.add_argument("--json", action="store_true", help="print the steps as JSON")
    parser.add_argument("--key", default="", help="the master's API key (master:// only)")
    parser.add_argument(
        "--passive",
        action="store_true",
        help="skip the authenticated handshake (it makes a server drop its current client)",
    )
    parser.add_argument("--timeout", type=float, default=STEP_TIMEOUT, help="seconds per step")
    args = parser.parse_args(list(argv) if argv is not None else None)
    report = diagnose(args.url, key=args.key, passive=args.passive, timeout=args.timeout)
    stream = out if out is not None else sys.stdout
    if args.json:
        json.dump({"healthy": report.healthy, "steps": [s.asJSON() for s in report.steps]}, stream)
        stream.write("\n")
    else:
        _print(report, stream)
    return 0 if report.healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
