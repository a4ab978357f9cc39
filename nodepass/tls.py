"""
TLS for the tunnel (spec §8): certificates, fingerprints and the OpenSSL connection creators
that L{twisted.protocols.tls.TLSMemoryBIOFactory} and L{wrapClientTLS
<twisted.internet.endpoints.wrapClientTLS>} put over any stream transport.

Modes (the C{tls} URL parameter):

  - C{1}: the server presents a self-signed certificate generated once per process
    (L{ServerCredentials.selfSigned}); the client checks nothing during the handshake and sends
    no SNI; the two ends compare certificate fingerprints afterwards over the control channel
    (§8.4).
  - C{2}: the server loads a PEM certificate and key from files and re-reads them, at most once
    per reload interval, when a connection asks for its context (L{ServerCredentials.fromFiles});
    the client verifies the chain against the platform trust store and the server name.

Every endpoint requires TLS 1.3.  No work here happens per connection beyond creating the
OpenSSL connection object: keys are generated at start-up, each certificate/key pair gets its
OpenSSL context once, and the reload check is a clock comparison until the interval is over.

Creators without ALPN (and in mode 2 with the platform's trust or one CA certificate) also
provide L{IStdlibTLS <nodepass.fasttls.IStdlibTLS>}: the same certificate, key, chain and
checks as a context of the standard library's C{ssl} module, made once on first use, which
the TCP pool transport runs its connections over (L{nodepass.fasttls}).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

from nodepass.errors import NodePassError
from nodepass.fasttls import IStdlibTLS, StdlibTLS
from nodepass.log import defaultLogger

if TYPE_CHECKING:
    # Public as twisted.internet.ssl.platformTrust()'s return type; only named here.
    from twisted.internet._sslverify import IOpenSSLTrustRoot

    from nodepass.settings import Settings
    from nodepass.url import Config

__all__ = [
    "DEFAULT_RELOAD_INTERVAL",
    "ServerCredentials",
    "TLSError",
    "certificateFingerprint",
    "clientContextFactory",
    "fingerprint",
    "generateSelfSigned",
    "localFingerprint",
    "peerFingerprint",
    "serverCredentials",
]

#: C{NP_RELOAD_INTERVAL} default (spec §8.2, §12): one hour.
DEFAULT_RELOAD_INTERVAL = 3600.0

#: Validity of the mode-1 certificate (Go: C{time.Now().Add(365 * 24 * time.Hour)}).
_SELF_SIGNED_VALIDITY = timedelta(days=365)

_ALPNKey = tuple[bytes, ...]

# The private key types pyOpenSSL can hand to OpenSSL.
_SUPPORTED_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


class TLSError(NodePassError):
    """
    A certificate or key cannot be used: a file cannot be read or parsed, or the certificate
    and the key do not belong together.  C{str()} is one line naming the file(s) and the cause.
    """


# --- fingerprints ----------------------------------------------------------------------------


def fingerprint(der: bytes) -> str:
    """
    Format the NodePass fingerprint of a DER-encoded certificate (spec §8.3): C{sha256:}
    followed by the 32 bytes of its SHA-256 digest as upper-case hex pairs joined with C{:}.
    """
    return "sha256:" + hashlib.sha256(der).digest().hex(":").upper()


def certificateFingerprint(cert: crypto.X509 | Certificate | x509.Certificate) -> str:
    """
    The L{fingerprint} of a certificate held as a pyOpenSSL C{X509}, a Twisted
    L{Certificate} or a C{cryptography} certificate.
    """
    if isinstance(cert, Certificate):
        cert = cert.original
    if isinstance(cert, crypto.X509):
        cert = cert.to_cryptography()
    assert isinstance(cert, x509.Certificate)
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def peerFingerprint(transport: object) -> str | None:
    """
    The fingerprint of the leaf certificate the peer presented on C{transport} (a
    L{TLSMemoryBIOProtocol}, or anything with C{getPeerCertificate()}), or L{None} when the
    transport is not TLS, the handshake has not delivered a certificate yet, or the
    connection is gone.
    """
    getPeerCertificate = getattr(transport, "getPeerCertificate", None)
    if getPeerCertificate is None:
        return None
    try:
        cert = getPeerCertificate()
    except (AttributeError, SSL.Error):
        # TLSMemoryBIOProtocol before its connection exists, or a transport whose TLS
        # layer is not (or no longer) in place.
        return None
    if cert is None:
        return None
    return certificateFingerprint(cert)


def localFingerprint(transport: object) -> str | None:
    """
    The fingerprint of the certificate I{we} presented on C{transport} (a server-side
    L{TLSMemoryBIOProtocol}), or L{None} when there is none.

    After a mode-2 reload, connections made earlier still carry the previous certificate;
    this names the one actually used on a given connection.
    """
    getHostCertificate = getattr(transport, "getHostCertificate", None)
    if getHostCertificate is not None:
        own = getHostCertificate()
        return None if own is None else certificateFingerprint(own)
    getHandle = getattr(transport, "getHandle", None)
    if getHandle is None:
        return None
    handle = getHandle()
    getCertificate = getattr(handle, "get_certificate", None)
    if getCertificate is None:
        return None
    cert = getCertificate()
    if cert is None:
        return None
    return certificateFingerprint(cert)


# --- certificates ----------------------------------------------------------------------------


def generateSelfSigned(organization: str = "v1.14.0") -> tuple[bytes, bytes]:
    """
    Make the mode-1 certificate as the reference does (spec §8.1): an ECDSA P-256 key, a random
    128-bit serial number, a subject and issuer holding only C{O=organization} (no CN, no
    SANs), valid from now for one year, KeyUsage digitalSignature + keyEncipherment,
    ExtKeyUsage serverAuth, signed by its own key.

    Key generation takes a little CPU: call this once at start-up, never per connection.

    @return: C{(certificatePEM, privateKeyPEM)}; the key is unencrypted PKCS#8.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        # Go draws the serial uniformly below 2**128; zero is not a valid serial number.
        .serial_number(secrets.randbelow(2**128 - 1) + 1)
        .not_valid_before(now)
        .not_valid_after(now + _SELF_SIGNED_VALIDITY)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certPEM = cert.public_bytes(serialization.Encoding.PEM)
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certPEM, keyPEM


def _commonName(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return ""
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class _KeyPair:
    """
    One loaded certificate chain and key, with one L{CertificateOptions} (hence one OpenSSL
    context) per ALPN list, made on first use.
    """

    def __init__(self, certPEM: bytes, keyPEM: bytes, what: str) -> None:
        self.certPEM = certPEM
        self.keyPEM = keyPEM
        try:
            chain = x509.load_pem_x509_certificates(certPEM)
        except ValueError as e:
            raise TLSError(f"no usable PEM certificate in {what}: {e}") from None
        try:
            key = serialization.load_pem_private_key(keyPEM, password=None)
        except TypeError:
            raise TLSError(f"the private key in {what} is encrypted; it must not be") from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise TLSError(f"no usable PEM private key in {what}: {e}") from None
        leaf = chain[0]
        if _spki(leaf.public_key()) != _spki(key.public_key()):
            raise TLSError(f"certificate and private key do not match in {what}")
        if not isinstance(key, _SUPPORTED_KEYS):
            raise TLSError(f"unsupported private key type {type(key).__name__} in {what}")
        self.leaf = leaf
        self.fingerprint = certificateFingerprint(leaf)
        self.commonName = _commonName(leaf)
        self._key = key
        self._chain = chain
        # Recent pyOpenSSL wants cryptography objects (and deprecates its own); older releases
        # only take X509/PKey and raise TypeError otherwise.  Building the default context now
        # settles which, and makes OpenSSL's own checks fail at load time rather than on the
        # first connection.
        self._native = True
        self._contexts: dict[_ALPNKey, SSL.Context] = {}
        self._stdlib: StdlibTLS | None = None
        try:
            try:
                self.context(())
            except TypeError:
                self._native = False
                self.context(())
        except SSL.Error as e:
            raise TLSError(f"OpenSSL rejects the certificate/key in {what}: {e}") from None

    def context(self, alpn: _ALPNKey) -> SSL.Context:
        """
        The OpenSSL context serving this pair with the ALPN protocols C{alpn}, made once.
        """
        context = self._contexts.get(alpn)
        if context is None:
            options = CertificateOptions(
                raiseMinimumTo=TLSVersion.TLSv1_3,
                acceptableProtocols=list(alpn) or None,
                **self._keyAndChain(),
            )
            context = self._contexts[alpn] = options.getContext()
        return context

    def stdlibTLS(self) -> StdlibTLS:
        """
        This pair for the standard library's C{ssl} module (no ALPN), made on first use: the
        same certificate, key and chain, TLS 1.3 minimum, no client certificates, and no
        session tickets (nothing here resumes sessions).
        """
        if self._stdlib is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.num_tickets = 0
            _loadChain(context, self.certPEM, self.keyPEM)
            self._stdlib = StdlibTLS(context, None, self.leaf)
        return self._stdlib

    def _keyAndChain(self) -> dict[str, Any]:
        if self._native:
            return {
                "privateKey": self._key,
                "certificate": self._chain[0],
                "extraCertChain": self._chain[1:],
            }
        return {
            "privateKey": crypto.PKey.from_cryptography_key(self._key),
            "certificate": crypto.X509.from_cryptography(self._chain[0]),
            "extraCertChain": [crypto.X509.from_cryptography(c) for c in self._chain[1:]],
        }


def _loadChain(context: ssl.SSLContext, certPEM: bytes, keyPEM: bytes) -> None:
    """
    Give C{context} a PEM chain and key held in memory (C{load_cert_chain} only reads files):
    through anonymous memory files where Linux has them, else through files in a private
    temporary directory, removed at once.
    """
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None and os.path.isdir("/proc/self/fd"):
        fds = [memfd("nodepass-cert", os.MFD_CLOEXEC), memfd("nodepass-key", os.MFD_CLOEXEC)]
        try:
            for fd, data in zip(fds, (certPEM, keyPEM), strict=True):
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="nodepass-tls-") as directory:
        paths = [os.path.join(directory, name) for name in ("cert.pem", "key.pem")]
        for path, data in zip(paths, (certPEM, keyPEM), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(paths[0], paths[1])


def _readFile(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSError(f"cannot read {what} file {path!r}: {e.strerror or e}") from None


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLContextFactory)
class _ServerConnectionCreator:
    """
    Hands each new server connection the context of the credentials' current pair.
    """

    def __init__(self, credentials: ServerCredentials, alpn: _ALPNKey) -> None:
        self._credentials = credentials
        self._alpn = alpn

    def getContext(self) -> SSL.Context:
        return self._credentials._currentPair().context(self._alpn)

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self.getContext(), None)


@implementer(IStdlibTLS)
class _FastServerConnectionCreator(_ServerConnectionCreator):
    """
    A server connection creator without ALPN that the stdlib C{ssl} module can also serve
    (L{nodepass.fasttls}), with the same certificate and reloads.
    """

    def stdlibTLS(self) -> StdlibTLS:
        return self._credentials._currentPair().stdlibTLS()


class ServerCredentials:
    """
    The certificate and key a tunnel server presents.

    Build one with L{selfSigned} (mode 1) or L{fromFiles} (mode 2), then give
    L{contextFactory} to C{TLSMemoryBIOFactory(creator, False, wrappedFactory)}.
    """

    def __init__(self, pair: _KeyPair, reloader: _FileReloader | None = None) -> None:
        """
        Use L{selfSigned}, L{fromPEM} or L{fromFiles}.
        """
        self._pair = pair
        self._reloader = reloader
        self._creators: dict[_ALPNKey, _ServerConnectionCreator] = {}

    @classmethod
    def selfSigned(cls) -> ServerCredentials:
        """
        Mode 1: new self-signed credentials (L{generateSelfSigned}).  An instance makes them
        once, when its tree is built, and keeps them across restarts of its tunnel, so its
        certificate and fingerprint stay the same (spec §8.1); two instances in one process
        never share them.
        """
        certPEM, keyPEM = generateSelfSigned()
        return cls.fromPEM(certPEM, keyPEM)

    @classmethod
    def fromPEM(cls, certPEM: bytes, keyPEM: bytes) -> ServerCredentials:
        """
        Fixed credentials from a PEM certificate (leaf first, then any intermediates) and its
        unencrypted PEM private key.

        @raise TLSError: the PEM data cannot be used.
        """
        return cls(_KeyPair(certPEM, keyPEM, "the given PEM data"))

    @classmethod
    def fromFiles(
        cls,
        crt: str,
        key: str,
        clock: IReactorTime,
        reloadInterval: float,
        *,
        log: Logger | None = None,
    ) -> ServerCredentials:
        """
        Mode 2: load the PEM certificate file C{crt} (leaf first, then any intermediates) and
        the unencrypted PEM key file C{key}.

        Afterwards, whenever a new connection asks for its context and at least
        C{reloadInterval} seconds (by C{clock}) have passed since the last load, both files are
        read again (spec §8.2).  Changed contents that load correctly replace the pair for new
        connections; a failed reload is logged and the previous pair stays.  The files are
        small and read at most once per interval, in the reactor thread.  Reloads log through
        C{log}: the logger of the instance serving these credentials (by default, one
        publishing to the global log publisher).

        @raise TLSError: a file cannot be read, holds no usable certificate or key, or the two
            do not match.  Its text suits the reference's C{Certificate load failed: ...} line.
        """
        reloader = _FileReloader(
            crt, key, clock, reloadInterval, log if log is not None else defaultLogger()
        )
        return cls(_loadFiles(crt, key), reloader)

    @property
    def fingerprint(self) -> str:
        """
        The fingerprint (spec §8.3) of the current leaf certificate.
        """
        return self._pair.fingerprint

    @property
    def commonName(self) -> str:
        """
        The CN of the current leaf certificate, or C{""} when it has none (mode 1).
        """
        return self._pair.commonName

    @property
    def certificate(self) -> x509.Certificate:
        """
        The current leaf certificate.
        """
        return self._pair.leaf

    def contextFactory(self, alpn: list[bytes] | None = None) -> IOpenSSLServerConnectionCreator:
        """
        A server connection creator for C{TLSMemoryBIOFactory(creator, False, factory)}:
        TLS 1.3 minimum, no client certificates, and the ALPN protocols C{alpn} if given
        (a client offering none of them is refused).  It also provides
        L{IOpenSSLContextFactory}, for APIs that still want C{getContext()}, and without ALPN
        L{IStdlibTLS <nodepass.fasttls.IStdlibTLS>} (the same credentials for the stdlib
        C{ssl} module).

        Each connection gets the context of the pair current at that moment, so mode-2
        reloads reach new connections through a creator obtained earlier.
        """
        key: _ALPNKey = tuple(alpn or ())
        creator = self._creators.get(key)
        if creator is None:
            kind = _ServerConnectionCreator if key else _FastServerConnectionCreator
            creator = self._creators[key] = kind(self, key)
        return creator

    def keyAndChain(self) -> tuple[Any, list[x509.Certificate]]:
        """
        The current private key and certificate chain (leaf first), after any
        reload that is due: for TLS stacks that take them directly (QUIC).
        """
        pair = self._currentPair()
        return pair._key, list(pair._chain)

    def _currentPair(self) -> _KeyPair:
        if self._reloader is not None:
            self._pair = self._reloader.current(self._pair)
        return self._pair


class _FileReloader:
    """
    Re-reads a mode-2 certificate/key pair from its files at most once per interval.
    """

    def __init__(
        self, crt: str, key: str, clock: IReactorTime, interval: float, log: Logger
    ) -> None:
        self._log = log
        self._crt = crt
        self._key = key
        self._clock = clock
        self._interval = interval
        self._lastLoad = clock.seconds()

    def current(self, pair: _KeyPair) -> _KeyPair:
        """
        C{pair}, or the pair now in the files if the interval is over and they changed.
        """
        now = self._clock.seconds()
        if now - self._lastLoad < self._interval:
            return pair
        # Counted from the attempt, as the reference does, so broken files are not re-read
        # for every connection.
        self._lastLoad = now
        try:
            certPEM = _readFile(self._crt, "certificate")
            keyPEM = _readFile(self._key, "private key")
            if certPEM == pair.certPEM and keyPEM == pair.keyPEM:
                return pair
            newPair = _KeyPair(certPEM, keyPEM, _describeFiles(self._crt, self._key))
        except TLSError as e:
            self._log.error("Certificate reload failed: {error}", error=str(e))
            return pair
        self._log.info(
            "TLS certificate reloaded: {commonName} {fingerprint}",
            commonName=newPair.commonName,
            fingerprint=newPair.fingerprint,
        )
        return newPair


def _describeFiles(crt: str, key: str) -> str:
    return f"certificate file {crt!r} / key file {key!r}"


def _loadFiles(crt: str, key: str) -> _KeyPair:
    certPEM = _readFile(crt, "certificate")
    keyPEM = _readFile(key, "private key")
    return _KeyPair(certPEM, keyPEM, _describeFiles(crt, key))


# --- client side -----------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientCreator:
    """
    Mode-1 client connections: TLS 1.3, no certificate verification, no SNI.  The peer is
    authenticated afterwards by the fingerprint exchange (spec §8.4).
    """

    def __init__(self, alpn: list[bytes] | None) -> None:
        self._alpn = list(alpn or ())
        self._options = CertificateOptions(
            verify=False, raiseMinimumTo=TLSVersion.TLSv1_3, acceptableProtocols=alpn
        )

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        # A plain connection on the shared context: no set_tlsext_host_name, no verify
        # callback.  TLSMemoryBIOFactory sets the connect state and the app data.
        connection = SSL.Connection(self._options.getContext(), None)
        if self._alpn:
            # Offered per connection: recent Twisted no longer puts the client's list on
            # the context.
            connection.set_alpn_protos(self._alpn)
        return connection


@implementer(IStdlibTLS)
class _FastUnverifiedClientCreator(_UnverifiedClientCreator):
    """
    A mode-1 client creator without ALPN that the stdlib C{ssl} module can also serve.
    """

    _stdlib: StdlibTLS | None = None

    def stdlibTLS(self) -> StdlibTLS:
        if self._stdlib is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            self._stdlib = StdlibTLS(context)
        return self._stdlib


@implementer(IOpenSSLClientConnectionCreator, IStdlibTLS)
class _VerifiedClientCreator:
    """
    A mode-2 client creator: Twisted's C{optionsForClientTLS} for pyOpenSSL connections, and
    the same checks for the stdlib C{ssl} module (the chain against the platform's trust
    store or one CA certificate, the leaf against C{serverName} by its subjectAltName only, as
    C{service_identity} does; SNI unless it is an IP literal).
    """

    def __init__(self, serverName: str, trustRoot: Certificate | None) -> None:
        self._serverName = serverName
        self._trust = trustRoot
        self._options = optionsForClientTLS(
            serverName,
            trustRoot=trustRoot,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
        )
        self._stdlib: StdlibTLS | None = None

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._options.clientConnectionForTLS(tlsProtocol)

    def stdlibTLS(self) -> StdlibTLS:
        if self._stdlib is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.hostname_checks_common_name = False
            if self._trust is None:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                context.load_verify_locations(cadata=self._trust.dumpPEM().decode("ascii"))
            self._stdlib = StdlibTLS(context, self._serverName)
        return self._stdlib


def clientContextFactory(
    mode: int,
    serverName: str,
    alpn: list[bytes] | None = None,
    trustRoot: IOpenSSLTrustRoot | Certificate | None = None,
) -> IOpenSSLClientConnectionCreator:
    """
    A client connection creator for C{TLSMemoryBIOFactory(creator, True, factory)} or
    C{wrapClientTLS(creator, endpoint)}.  Make it once and reuse it: each creator owns one
    OpenSSL context.

    @param mode: C{1}: TLS 1.3 minimum, no certificate verification, no SNI (C{serverName} is
        ignored).  C{2}: TLS 1.3 minimum, the chain verified against C{trustRoot}, by default
        L{platformTrust <twisted.internet.ssl.platformTrust>} (OpenSSL's default paths, which
        honour the C{SSL_CERT_FILE} and C{SSL_CERT_DIR} environment variables), and the leaf
        verified for C{serverName}, sent as SNI unless it is an IP literal.
    @param serverName: the name (or IP address) the mode-2 server certificate must carry.
    @param alpn: ALPN protocols to offer, if any.
    @param trustRoot: mode 2 only: what to trust instead of the platform's CAs, e.g.
        C{trustRootFromCertificates([...])} or a single CA L{Certificate}.

    Without ALPN, and in mode 2 with the platform's trust or a single CA certificate, the
    creator also provides L{IStdlibTLS <nodepass.fasttls.IStdlibTLS>}: the same checks for
    the stdlib C{ssl} module.

    @raise ValueError: C{mode} is neither 1 nor 2.
    """
    if mode == 1:
        return _UnverifiedClientCreator(alpn) if alpn else _FastUnverifiedClientCreator(None)
    if mode == 2:
        if not alpn and (trustRoot is None or isinstance(trustRoot, Certificate)):
            return _VerifiedClientCreator(serverName, trustRoot)
        return optionsForClientTLS(
            serverName,
            trustRoot=trustRoot,
            acceptableProtocols=alpn,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
        )
    raise ValueError(f"TLS client mode must be 1 or 2, not {mode!r}")


def serverCredentials(
    config: Config, clock: IReactorTime, settings: Settings, log: Logger | None = None
) -> tuple[ServerCredentials | None, int]:
    """
    A server's TLS credentials and the mode they give (dataplane spec §8): a certificate
    generated for C{tls=1}, files for C{tls=2} (falling back to a generated one when they
    cannot be loaded, as the reference does), nothing for C{tls=0}.  A master's API uses the
    same rules (master spec §13).  The reference's C{TLS code-N} lines, and later those of
    mode-2 reloads, go to C{log}: the instance's logger (by default, one publishing to the
    global log publisher).
    """
    if log is None:
        log = defaultLogger()
    mode = config.effectiveTLS
    if mode == 0:
        return None, 0
    if mode == 2:
        try:
            credentials = ServerCredentials.fromFiles(
                config.crt, config.keyFile, clock, settings.reloadInterval, log=log
            )
        except TLSError as error:
            log.error("Certificate load failed: {error}", error=str(error))
            log.warn("TLS code-1: RAM cert with TLS 1.3")
            return ServerCredentials.selfSigned(), 1
        log.info("TLS code-2: {cn} with TLS 1.3", cn=credentials.commonName)
        return credentials, 2
    if config.tls == 0:
        log.info("TLS code-1: RAM cert with TLS 1.3 for stream pool")
    else:
        log.info("TLS code-1: RAM cert with TLS 1.3")
    return ServerCredentials.selfSigned(), 1
