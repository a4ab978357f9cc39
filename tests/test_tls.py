"""
Tests for L{nodepass.tls}: fingerprints, the mode-1 certificate, and both TLS modes end to end
in memory (a L{TLSMemoryBIOFactory} on each side of an iosim pump, no sockets), including the
mode-2 reload driven by a L{Clock}.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address as IPAddr
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    trustRootFromCertificates,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from nodepass import tls
from nodepass.errors import NodePassError
from nodepass.fasttls import FastTLSFactory, IStdlibTLS
from nodepass.settings import Settings
from nodepass.tls import (
    DEFAULT_RELOAD_INTERVAL,
    ServerCredentials,
    TLSError,
    certificateFingerprint,
    clientContextFactory,
    fingerprint,
    generateSelfSigned,
    localFingerprint,
    peerFingerprint,
    serverCredentials,
)
from nodepass.url import parse
from tests.support import instanceLogger

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

EMPTY_SHA256 = (
    "sha256:E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:27:AE:41:E4:64:9B:93:4C:A4:95:99:1B"
    ":78:52:B8:55"
)


# --- certificate helpers ---------------------------------------------------------------------


class Issued:
    """
    A certificate with its key, as cryptography objects and PEM.
    """

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        self.certPEM = cert.public_bytes(serialization.Encoding.PEM)
        self.keyPEM = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


def _name(**attrs: str) -> x509.Name:
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def makeCA(commonName: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = _name(CN=commonName)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def makeLeaf(ca: Issued, commonName: str = "localhost") -> Issued:
    """
    A server certificate for C{localhost} and C{127.0.0.1}, signed by C{ca}.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CN=commonName))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPAddr("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(cert, key)


def restoreEnv(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def trustOnly(ca: Issued) -> IOpenSSLTrustRoot:
    root: IOpenSSLTrustRoot = trustRootFromCertificates([Certificate.loadPEM(ca.certPEM)])
    return root


# --- in-memory TLS ---------------------------------------------------------------------------


class Recorder(Protocol):
    """
    Records what arrives and how the connection ended; optionally greets, optionally echoes.
    """

    def __init__(self, greeting: bytes = b"", echo: bool = False) -> None:
        self.greeting = greeting
        self.echo = echo
        self.received = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        if self.greeting:
            self.transport.write(self.greeting)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            self.transport.write(b"echo:" + data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class Pair:
    """
    Both ends of one in-memory TLS connection.
    """

    def __init__(
        self,
        clientTLS: TLSMemoryBIOProtocol,
        serverTLS: TLSMemoryBIOProtocol,
        client: Recorder,
        server: Recorder,
    ) -> None:
        self.clientTLS = clientTLS
        self.serverTLS = serverTLS
        self.client = client
        self.server = server

    @property
    def established(self) -> bool:
        return self.client.received == b"echo:ping" and self.server.received == b"ping"


def _tlsFactory(
    kind: str, creator: object, isClient: bool, protocol: Recorder, clock: Clock
) -> Any:
    wrapped = Factory.forProtocol(lambda: protocol)
    if kind == "fast":
        return FastTLSFactory(creator, isClient, wrapped)  # type: ignore[arg-type]
    return TLSMemoryBIOFactory(creator, isClient, wrapped, clock=clock)  # type: ignore[arg-type]


def connectTLS(
    serverCreator: object, clientCreator: object, server: str = "twisted", client: str = "twisted"
) -> Pair:
    """
    Run a TLS handshake between C{serverCreator} and C{clientCreator} in memory; the client
    sends C{ping} and the server echoes it.  C{server} and C{client} choose each end's TLS
    layer: C{"twisted"} (L{TLSMemoryBIOFactory}, pyOpenSSL) or C{"fast"}
    (L{FastTLSFactory}, the stdlib C{ssl} module).
    """
    clock = Clock()
    # The TLS layer drops its wrapped protocol when the connection is lost: keep our own.
    serverEnd = Recorder(echo=True)
    clientEnd = Recorder(greeting=b"ping")
    serverFactory = _tlsFactory(server, serverCreator, False, serverEnd, clock)
    clientFactory = _tlsFactory(client, clientCreator, True, clientEnd, clock)
    address = IPv4Address("TCP", "127.0.0.1", 4433)
    clientTLS, serverTLS, pump = iosim.connectedServerAndClient(
        lambda: serverFactory.buildProtocol(address),
        lambda: clientFactory.buildProtocol(address),
        clock=clock,
    )
    pump.flush()
    return Pair(clientTLS, serverTLS, clientEnd, serverEnd)


# --- tests -----------------------------------------------------------------------------------


class FingerprintTests(SynchronousTestCase):
    def test_emptyVector(self) -> None:
        """
        The spec §15.9 vector: SHA-256 of nothing, upper-case pairs, 102 characters.
        """
        self.assertEqual(fingerprint(b""), EMPTY_SHA256)
        self.assertEqual(len(fingerprint(b"")), 102)

    def test_allCertificateKinds(self) -> None:
        """
        pyOpenSSL, Twisted and cryptography certificates give the fingerprint of their DER.
        """
        certPEM, _ = generateSelfSigned()
        cert = x509.load_pem_x509_certificate(certPEM)
        expected = fingerprint(cert.public_bytes(serialization.Encoding.DER))
        self.assertEqual(certificateFingerprint(cert), expected)
        self.assertEqual(certificateFingerprint(crypto.X509.from_cryptography(cert)), expected)
        self.assertEqual(certificateFingerprint(Certificate.loadPEM(certPEM)), expected)
        self.assertRegex(expected, r"^sha256:([0-9A-F]{2}:){31}[0-9A-F]{2}$")

    def test_peerFingerprintWithoutTLS(self) -> None:
        """
        A transport without C{getPeerCertificate}, or a TLS one before the handshake, has none.
        """
        self.assertIsNone(peerFingerprint(object()))
        self.assertIsNone(peerFingerprint(StringTransport()))
        factory = TLSMemoryBIOFactory(
            clientContextFactory(1, ""), True, Factory.forProtocol(Recorder), clock=Clock()
        )
        tlsProtocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsNone(peerFingerprint(tlsProtocol))
        tlsProtocol.makeConnection(StringTransport())
        self.assertIsNone(peerFingerprint(tlsProtocol))
        self.assertIsNone(localFingerprint(object()))


class GeneratedCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.before = datetime.now(UTC).replace(microsecond=0)
        certPEM, keyPEM = generateSelfSigned()
        self.cert = x509.load_pem_x509_certificate(certPEM)
        self.key = serialization.load_pem_private_key(keyPEM, password=None)

    def test_key(self) -> None:
        """
        An ECDSA P-256 key, matching the certificate.
        """
        assert isinstance(self.key, ec.EllipticCurvePrivateKey)
        self.assertEqual(self.key.curve.name, "secp256r1")
        public = self.cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        self.assertEqual(public.public_numbers(), self.key.public_key().public_numbers())

    def test_names(self) -> None:
        """
        Subject and issuer are only C{O=v1.14.0}: no CN, no SANs.
        """
        expected = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "v1.14.0")])
        self.assertEqual(self.cert.subject, expected)
        self.assertEqual(self.cert.issuer, expected)
        self.assertEqual(self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME), [])
        self.assertRaises(
            x509.ExtensionNotFound,
            self.cert.extensions.get_extension_for_class,
            x509.SubjectAlternativeName,
        )

    def test_organization(self) -> None:
        certPEM, _ = generateSelfSigned("dev")
        cert = x509.load_pem_x509_certificate(certPEM)
        self.assertEqual(
            cert.subject, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dev")])
        )

    def test_validity(self) -> None:
        """
        Valid from now for one year.
        """
        after = datetime.now(UTC)
        self.assertGreaterEqual(self.cert.not_valid_before_utc, self.before)
        self.assertLessEqual(self.cert.not_valid_before_utc, after)
        lifetime = self.cert.not_valid_after_utc - self.cert.not_valid_before_utc
        self.assertEqual(lifetime, timedelta(days=365))

    def test_usages(self) -> None:
        usage = self.cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertTrue(usage.key_encipherment)
        self.assertFalse(usage.key_cert_sign)
        self.assertFalse(usage.content_commitment)
        extended = self.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(extended), [ExtendedKeyUsageOID.SERVER_AUTH])

    def test_selfSignedAndSerial(self) -> None:
        """
        Signed by its own key; a random positive serial below 2**128, new for each call.
        """
        self.cert.verify_directly_issued_by(self.cert)
        self.assertGreater(self.cert.serial_number, 0)
        self.assertLess(self.cert.serial_number, 2**128)
        other = x509.load_pem_x509_certificate(generateSelfSigned()[0])
        self.assertNotEqual(other.serial_number, self.cert.serial_number)

    def test_selfSignedCredentialsPerInstance(self) -> None:
        """
        L{ServerCredentials.selfSigned} makes new credentials at every call, so two
        instances in one process never share a key; they have no CN.
        """
        first = ServerCredentials.selfSigned()
        second = ServerCredentials.selfSigned()
        self.assertNotEqual(second.fingerprint, first.fingerprint)
        self.assertEqual(first.commonName, "")
        self.assertEqual(first.fingerprint, certificateFingerprint(first.certificate))
        self.assertIs(first.contextFactory([b"h2"]), first.contextFactory([b"h2"]))


class ModeOneTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.credentials = ServerCredentials.fromPEM(*generateSelfSigned())

    def test_exchange(self) -> None:
        """
        A mode-1 client reaches a mode-1 server, bytes flow both ways, over TLS 1.3.
        """
        pair = connectTLS(self.credentials.contextFactory(), clientContextFactory(1, "example"))
        self.assertTrue(pair.established)
        self.assertEqual(pair.clientTLS.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(pair.serverTLS.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertIsNone(pair.client.lost)
        self.assertIsNone(pair.clientTLS.negotiatedProtocol)

    def test_noSNI(self) -> None:
        """
        The mode-1 client sends no server name, even when given a DNS name.
        """
        pair = connectTLS(self.credentials.contextFactory(), clientContextFactory(1, "example"))
        self.assertTrue(pair.established)
        self.assertIsNone(pair.serverTLS.getHandle().get_servername())

    def test_fingerprints(self) -> None:
        """
        The client sees the server credentials' fingerprint; the server names it as its own.
        """
        pair = connectTLS(self.credentials.contextFactory(), clientContextFactory(1, ""))
        self.assertEqual(peerFingerprint(pair.clientTLS), self.credentials.fingerprint)
        self.assertEqual(peerFingerprint(pair.client.transport), self.credentials.fingerprint)
        self.assertEqual(localFingerprint(pair.serverTLS), self.credentials.fingerprint)
        # No client certificates.
        self.assertIsNone(peerFingerprint(pair.serverTLS))

    def test_tls12Refused(self) -> None:
        """
        A client that cannot speak TLS 1.3 is refused.
        """
        old = CertificateOptions(
            verify=False,
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_2,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
        )
        pair = connectTLS(self.credentials.contextFactory(), old)
        self.assertFalse(pair.established)
        self.assertEqual(pair.server.received, b"")
        assert pair.client.lost is not None
        self.assertTrue(pair.client.lost.check(SSL.Error))

    def test_alpn(self) -> None:
        """
        Server and client both offering C{h2} agree on it.
        """
        pair = connectTLS(
            self.credentials.contextFactory([b"h2"]), clientContextFactory(1, "", [b"h2"])
        )
        self.assertTrue(pair.established)
        self.assertEqual(pair.clientTLS.negotiatedProtocol, b"h2")
        self.assertEqual(pair.serverTLS.negotiatedProtocol, b"h2")

    def test_badMode(self) -> None:
        self.assertRaises(ValueError, clientContextFactory, 0, "localhost")
        self.assertRaises(ValueError, clientContextFactory, 3, "localhost")

    def test_creatorInterfaces(self) -> None:
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(clientContextFactory(1, "")))
        self.assertTrue(
            IOpenSSLClientConnectionCreator.providedBy(clientContextFactory(2, "localhost"))
        )


class FilesTestMixin:
    """
    A test CA and a C{localhost}/C{127.0.0.1} server certificate written to temporary files.
    """

    addCleanup: Callable[..., None]

    def setUpFiles(self) -> None:
        self.ca = makeCA("NodePass Test CA")
        self.leaf = makeLeaf(self.ca)
        self.directory = directory = tempfile.mkdtemp(prefix="nodepass-tls-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        self.crt = os.path.join(directory, "server.crt")
        self.key = os.path.join(directory, "server.key")
        self.write(self.leaf)
        self.clock = Clock()

    def write(self, issued: Issued | None = None, crt: bytes = b"", key: bytes = b"") -> None:
        if issued is not None:
            crt, key = issued.certPEM, issued.keyPEM
        with open(self.crt, "wb") as f:
            f.write(crt)
        with open(self.key, "wb") as f:
            f.write(key)

    def credentials(self, interval: float = DEFAULT_RELOAD_INTERVAL) -> ServerCredentials:
        return ServerCredentials.fromFiles(self.crt, self.key, self.clock, interval)


class ModeTwoTests(FilesTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setUpFiles()

    def test_load(self) -> None:
        creds = self.credentials()
        self.assertEqual(creds.commonName, "localhost")
        self.assertEqual(creds.fingerprint, certificateFingerprint(self.leaf.cert))

    def test_verified(self) -> None:
        """
        A client trusting the CA accepts the server for C{localhost}, which it sends as SNI.
        """
        creds = self.credentials()
        pair = connectTLS(
            creds.contextFactory(), clientContextFactory(2, "localhost", None, trustOnly(self.ca))
        )
        self.assertTrue(pair.established)
        self.assertEqual(pair.clientTLS.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(pair.serverTLS.getHandle().get_servername(), b"localhost")
        self.assertEqual(peerFingerprint(pair.clientTLS), creds.fingerprint)

    def test_verifiedIP(self) -> None:
        """
        An IP server name is checked against the IP SANs and not sent as SNI.
        """
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "127.0.0.1", None, trustOnly(self.ca)),
        )
        self.assertTrue(pair.established)
        self.assertIsNone(pair.serverTLS.getHandle().get_servername())

    def test_wrongName(self) -> None:
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "wrong.example", None, trustOnly(self.ca)),
        )
        self.assertFalse(pair.established)
        self.assertEqual(pair.server.received, b"")
        assert pair.client.lost is not None
        self.assertTrue(pair.client.lost.check(VerificationError))

    def test_otherCA(self) -> None:
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "localhost", None, trustOnly(makeCA("Someone Else"))),
        )
        self.assertFalse(pair.established)
        self.assertEqual(pair.server.received, b"")
        assert pair.client.lost is not None
        self.assertTrue(pair.client.lost.check(SSL.Error))

    def test_platformTrustHonoursSSLCertFile(self) -> None:
        """
        Without C{trustRoot}, the platform trust store is used, and C{SSL_CERT_FILE} points it
        at our CA.
        """
        caFile = os.path.join(self.directory, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(self.ca.certPEM)
        emptyDir = os.path.join(self.directory, "certs")
        os.makedirs(emptyDir)
        for name, value in [("SSL_CERT_FILE", caFile), ("SSL_CERT_DIR", emptyDir)]:
            # OpenSSL reads the real process environment, so os.environ itself must change.
            self.addCleanup(restoreEnv, name, os.environ.get(name))
            os.environ[name] = value
        pair = connectTLS(self.credentials().contextFactory(), clientContextFactory(2, "localhost"))
        self.assertTrue(pair.established)

    def test_platformTrustRejectsUnknownCA(self) -> None:
        """
        The platform trust store does not know the test CA.
        """
        pair = connectTLS(self.credentials().contextFactory(), clientContextFactory(2, "localhost"))
        self.assertFalse(pair.established)
        assert pair.client.lost is not None
        self.assertTrue(pair.client.lost.check(SSL.Error))

    def test_olderPyOpenSSL(self) -> None:
        """
        With a pyOpenSSL that only takes its own X509/PKey objects, the pair is handed over
        as those.
        """
        realUsePrivateKey = SSL.Context.use_privatekey

        def oldUsePrivateKey(context: SSL.Context, pkey: object) -> None:
            if not isinstance(pkey, crypto.PKey):
                raise TypeError("pkey must be a PKey instance")
            realUsePrivateKey(context, pkey)

        self.patch(SSL.Context, "use_privatekey", oldUsePrivateKey)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            creds = self.credentials()
            pair = connectTLS(
                creds.contextFactory(),
                clientContextFactory(2, "localhost", None, trustOnly(self.ca)),
            )
        self.assertFalse(creds._pair._native)
        self.assertTrue(pair.established)

    def test_alpn(self) -> None:
        pair = connectTLS(
            self.credentials().contextFactory([b"h2"]),
            clientContextFactory(2, "localhost", [b"h2"], trustOnly(self.ca)),
        )
        self.assertTrue(pair.established)
        self.assertEqual(pair.clientTLS.negotiatedProtocol, b"h2")

    def test_modeOneClientAcceptsModeTwoServer(self) -> None:
        pair = connectTLS(self.credentials().contextFactory(), clientContextFactory(1, ""))
        self.assertTrue(pair.established)
        self.assertEqual(peerFingerprint(pair.clientTLS), certificateFingerprint(self.leaf.cert))

    def test_chain(self) -> None:
        """
        Intermediates after the leaf in the certificate file are sent to the client.
        """
        intermediate = makeCA("NodePass Intermediate")
        intermediateCert = (
            x509.CertificateBuilder()
            .subject_name(intermediate.cert.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(intermediate.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(intermediate.cert.not_valid_before_utc)
            .not_valid_after(intermediate.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca.key, hashes.SHA256())
        )
        leaf = makeLeaf(Issued(intermediateCert, intermediate.key))
        self.write(
            crt=leaf.certPEM + intermediateCert.public_bytes(serialization.Encoding.PEM),
            key=leaf.keyPEM,
        )
        creds = self.credentials()
        self.assertEqual(creds.fingerprint, certificateFingerprint(leaf.cert))
        pair = connectTLS(
            creds.contextFactory(), clientContextFactory(2, "localhost", None, trustOnly(self.ca))
        )
        self.assertTrue(pair.established)


class FastModeTwoTests(FilesTestMixin, SynchronousTestCase):
    """
    Mode 2 on the fast path (L{nodepass.fasttls}): the same checks as pyOpenSSL's, against
    either server layer.
    """

    def setUp(self) -> None:
        self.setUpFiles()

    def trust(self, ca: Issued | None = None) -> Certificate:
        return Certificate.loadPEM((ca or self.ca).certPEM)

    def test_verified(self) -> None:
        """
        A fast client trusting the CA accepts a fast server for C{localhost}.
        """
        creds = self.credentials()
        creator = clientContextFactory(2, "localhost", None, self.trust())
        self.assertTrue(IStdlibTLS.providedBy(creator))
        pair = connectTLS(creds.contextFactory(), creator, server="fast", client="fast")
        self.assertTrue(pair.established)
        self.assertEqual(pair.clientTLS.getHandle().version(), "TLSv1.3")
        self.assertEqual(peerFingerprint(pair.clientTLS), creds.fingerprint)
        self.assertEqual(localFingerprint(pair.serverTLS), creds.fingerprint)

    def test_sendsSNI(self) -> None:
        """
        The fast client sends the server name as SNI (seen by a pyOpenSSL server), and no SNI
        for an IP name, which it checks against the IP SANs.
        """
        creds = self.credentials()
        pair = connectTLS(
            creds.contextFactory(),
            clientContextFactory(2, "localhost", None, self.trust()),
            client="fast",
        )
        self.assertTrue(pair.established)
        self.assertEqual(pair.serverTLS.getHandle().get_servername(), b"localhost")
        pair = connectTLS(
            creds.contextFactory(),
            clientContextFactory(2, "127.0.0.1", None, self.trust()),
            client="fast",
        )
        self.assertTrue(pair.established)
        self.assertIsNone(pair.serverTLS.getHandle().get_servername())

    def test_wrongName(self) -> None:
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "wrong.example", None, self.trust()),
            server="fast",
            client="fast",
        )
        self.assertFalse(pair.established)
        self.assertEqual(pair.server.received, b"")
        assert pair.client.lost is not None
        self.assertTrue(pair.client.lost.check(ssl.SSLCertVerificationError))

    def test_otherCA(self) -> None:
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "localhost", None, self.trust(makeCA("Someone Else"))),
            server="fast",
            client="fast",
        )
        self.assertFalse(pair.established)
        assert pair.client.lost is not None
        self.assertTrue(pair.client.lost.check(ssl.SSLCertVerificationError))

    def test_platformTrust(self) -> None:
        """
        Without C{trustRoot} the platform store is used (C{SSL_CERT_FILE} honoured), and it
        does not know the test CA otherwise.
        """
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "localhost"),
            server="fast",
            client="fast",
        )
        self.assertFalse(pair.established)
        caFile = os.path.join(self.directory, "ca.pem")
        with open(caFile, "wb") as f:
            f.write(self.ca.certPEM)
        emptyDir = os.path.join(self.directory, "certs")
        os.makedirs(emptyDir)
        for name, value in [("SSL_CERT_FILE", caFile), ("SSL_CERT_DIR", emptyDir)]:
            self.addCleanup(restoreEnv, name, os.environ.get(name))
            os.environ[name] = value
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "localhost"),
            server="fast",
            client="fast",
        )
        self.assertTrue(pair.established)

    def test_otherTrustRootsStayOnPyOpenSSL(self) -> None:
        """
        A trust root the stdlib module cannot take (several CAs) gives Twisted's creator.
        """
        self.assertFalse(
            IStdlibTLS.providedBy(clientContextFactory(2, "localhost", None, trustOnly(self.ca)))
        )

    def test_chain(self) -> None:
        """
        The fast server sends the intermediates after the leaf.
        """
        intermediate = makeCA("NodePass Intermediate")
        intermediateCert = (
            x509.CertificateBuilder()
            .subject_name(intermediate.cert.subject)
            .issuer_name(self.ca.cert.subject)
            .public_key(intermediate.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(intermediate.cert.not_valid_before_utc)
            .not_valid_after(intermediate.cert.not_valid_after_utc)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca.key, hashes.SHA256())
        )
        leaf = makeLeaf(Issued(intermediateCert, intermediate.key))
        self.write(
            crt=leaf.certPEM + intermediateCert.public_bytes(serialization.Encoding.PEM),
            key=leaf.keyPEM,
        )
        pair = connectTLS(
            self.credentials().contextFactory(),
            clientContextFactory(2, "localhost", None, trustOnly(self.ca)),
            server="fast",
        )
        self.assertTrue(pair.established)

    def test_reload(self) -> None:
        """
        After a reload, new fast connections present the new certificate.
        """
        creds = self.credentials(interval=10.0)
        first = connectTLS(creds.contextFactory(), clientContextFactory(1, ""), server="fast")
        newLeaf = makeLeaf(self.ca, "renewed")
        self.write(newLeaf)
        self.clock.advance(11)
        second = connectTLS(creds.contextFactory(), clientContextFactory(1, ""), server="fast")
        self.assertTrue(second.established)
        self.assertEqual(localFingerprint(first.serverTLS), certificateFingerprint(self.leaf.cert))
        self.assertEqual(peerFingerprint(second.clientTLS), certificateFingerprint(newLeaf.cert))
        self.assertEqual(localFingerprint(second.serverTLS), certificateFingerprint(newLeaf.cert))


class LoadErrorTests(FilesTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setUpFiles()

    def assertLoadFails(self, *fragments: str) -> TLSError:
        error: TLSError = self.assertRaises(TLSError, self.credentials)
        self.assertIsInstance(error, NodePassError)
        message = str(error)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return error

    def test_missingCertificate(self) -> None:
        os.remove(self.crt)
        self.assertLoadFails("cannot read certificate file", repr(self.crt))

    def test_missingKey(self) -> None:
        os.remove(self.key)
        self.assertLoadFails("cannot read private key file", repr(self.key))

    def test_mismatch(self) -> None:
        other = makeLeaf(self.ca)
        self.write(crt=self.leaf.certPEM, key=other.keyPEM)
        self.assertLoadFails("do not match", repr(self.crt), repr(self.key))

    def test_garbageCertificate(self) -> None:
        self.write(crt=b"not a certificate", key=self.leaf.keyPEM)
        self.assertLoadFails("no usable PEM certificate", repr(self.crt))

    def test_garbageKey(self) -> None:
        self.write(crt=self.leaf.certPEM, key=b"not a key")
        self.assertLoadFails("no usable PEM private key", repr(self.key))

    def test_encryptedKey(self) -> None:
        encrypted = self.leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.write(crt=self.leaf.certPEM, key=encrypted)
        self.assertLoadFails("encrypted")

    def test_fromPEMMismatch(self) -> None:
        self.assertRaises(
            TLSError, ServerCredentials.fromPEM, self.leaf.certPEM, makeLeaf(self.ca).keyPEM
        )


class ReloadTests(FilesTestMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.setUpFiles()
        self.reads: list[str] = []
        realRead = tls._readFile

        def countingRead(path: str, what: str) -> bytes:
            self.reads.append(path)
            return realRead(path, what)

        self.patch(tls, "_readFile", countingRead)
        self.creds = self.credentials(interval=60.0)
        self.first = self.creds.fingerprint
        self.creator = self.creds.contextFactory()
        self.reads.clear()

    def served(self) -> str | None:
        """
        The fingerprint a new mode-1 client connection sees.
        """
        pair = connectTLS(self.creator, clientContextFactory(1, ""))
        self.assertTrue(pair.established)
        return peerFingerprint(pair.clientTLS)

    def test_notBeforeInterval(self) -> None:
        """
        Before the interval is over, changed files are not read.
        """
        self.write(makeLeaf(self.ca, "second"))
        self.clock.advance(59.9)
        self.assertEqual(self.served(), self.first)
        self.assertEqual(self.creds.fingerprint, self.first)
        self.assertEqual(self.creds.commonName, "localhost")
        self.assertEqual(self.reads, [])

    def test_afterInterval(self) -> None:
        """
        Once the interval is over, the next connection reads the files and gets the new pair.
        """
        second = makeLeaf(self.ca, "second")
        self.write(second)
        self.clock.advance(60.0)
        with capturedLogs() as events:
            self.assertEqual(self.served(), certificateFingerprint(second.cert))
        self.assertEqual(self.creds.fingerprint, certificateFingerprint(second.cert))
        self.assertNotEqual(self.creds.fingerprint, self.first)
        self.assertEqual(self.creds.commonName, "second")
        self.assertEqual(self.reads, [self.crt, self.key])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.info])
        # The next check waits for another full interval.
        self.reads.clear()
        self.clock.advance(30.0)
        self.served()
        self.assertEqual(self.reads, [])

    def test_logsThroughTheInstanceLogger(self) -> None:
        """
        Credentials built by L{serverCredentials} with an instance's logger report their
        start-up line and each later reload there, never to the process-global publisher.
        """
        log, mine, seenGlobally = instanceLogger(self)
        config = parse(
            f"server://127.0.0.1:10101/127.0.0.1:8080?tls=2&crt={self.crt}&key={self.key}"
        )
        creds, mode = serverCredentials(config, self.clock, Settings(reloadInterval=60.0), log)
        assert creds is not None
        self.assertEqual(mode, 2)
        second = makeLeaf(self.ca, "second")
        self.write(second)
        self.clock.advance(60.0)
        pair = connectTLS(creds.contextFactory(), clientContextFactory(1, ""))
        self.assertEqual(peerFingerprint(pair.clientTLS), certificateFingerprint(second.cert))
        self.assertEqual(
            [formatEvent(event) for event in mine],
            [
                "TLS code-2: localhost with TLS 1.3",
                f"TLS certificate reloaded: second {certificateFingerprint(second.cert)}",
            ],
        )
        self.assertEqual(seenGlobally, [])

    def test_unchangedFiles(self) -> None:
        """
        Unchanged files are read but the pair (and its context) stays.
        """
        before = self.creds._pair
        self.clock.advance(61.0)
        with capturedLogs() as events:
            self.assertEqual(self.served(), self.first)
        self.assertIs(self.creds._pair, before)
        self.assertEqual(self.reads, [self.crt, self.key])
        self.assertEqual(events, [])

    def assertReloadKeepsOldPair(self, fragment: str) -> None:
        self.clock.advance(60.0)
        with capturedLogs() as events:
            self.assertEqual(self.served(), self.first)
        self.assertEqual(self.creds.fingerprint, self.first)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.error)
        self.assertEqual(events[0]["log_format"], "Certificate reload failed: {error}")
        self.assertIn(fragment, events[0]["error"])
        # Not retried on every connection.
        self.reads.clear()
        self.served()
        self.assertEqual(self.reads, [])

    def test_brokenFiles(self) -> None:
        self.write(crt=b"garbage", key=b"garbage")
        self.assertReloadKeepsOldPair("no usable PEM certificate")

    def test_mismatchedFiles(self) -> None:
        self.write(crt=makeLeaf(self.ca).certPEM, key=self.leaf.keyPEM)
        self.assertReloadKeepsOldPair("do not match")

    def test_missingFiles(self) -> None:
        os.remove(self.key)
        self.assertReloadKeepsOldPair("cannot read private key file")

    def test_recoversAfterFailure(self) -> None:
        """
        Files fixed after a failed reload are picked up one interval later.
        """
        self.write(crt=b"garbage", key=b"garbage")
        self.clock.advance(60.0)
        with capturedLogs():
            self.served()
        third = makeLeaf(self.ca, "third")
        self.write(third)
        self.clock.advance(60.0)
        with capturedLogs():
            self.assertEqual(self.served(), certificateFingerprint(third.cert))
