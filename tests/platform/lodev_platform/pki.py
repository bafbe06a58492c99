"""Certificates of the emulated platform.

One CA signs everything: the broker's server certificate (SAN 127.0.0.1 and
localhost), the claim certificate every device of a product shares, the
service's own client certificate and the device certificates issued by
CreateKeysAndCertificate and CreateCertificateFromCsr.

The broker takes a connection's identity from its certificate's CN
(use_identity_as_username), so every issued device certificate carries its
certificate id as CN: AWS keeps the CSR's subject, but a subject chosen by the
device could collide with another device's.
"""

import datetime
import ipaddress
import os
import secrets

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .util import write_file_atomic

CLAIM_IDENTITY = "lodev-claim"
SERVICE_IDENTITY = "lodev-platform-service"

_TEN_YEARS = datetime.timedelta(days=3650)


class CsrError(ValueError):
    """A certificate signing request that cannot be signed."""


def new_certificate_id():
    """A certificate id shaped like AWS's (64 hex digits)."""
    return secrets.token_hex(32)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def _pem_cert(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Pki:
    """The CA kept in `directory` (created on first use, reused after)."""

    def __init__(self, directory):
        self.directory = directory
        self.ca_file = os.path.join(directory, "ca.pem")
        self.ca_key_file = os.path.join(directory, "ca.key")
        self.server_cert = os.path.join(directory, "server.pem")
        self.server_key = os.path.join(directory, "server.key")
        self.claim_cert = os.path.join(directory, "claim.pem")
        self.claim_key = os.path.join(directory, "claim.key")
        self.service_cert = os.path.join(directory, "service.pem")
        self.service_key = os.path.join(directory, "service.key")
        self._ca_cert = None
        self._ca_key = None

    def ensure(self):
        """Creates whatever is missing; existing files are kept so devices
        provisioned against an earlier run stay valid."""
        os.makedirs(self.directory, exist_ok=True)
        if os.path.exists(self.ca_file) and os.path.exists(self.ca_key_file):
            with open(self.ca_file, "rb") as f:
                self._ca_cert = x509.load_pem_x509_certificate(f.read())
            with open(self.ca_key_file, "rb") as f:
                self._ca_key = serialization.load_pem_private_key(f.read(), None)
        else:
            self._make_ca()
        if not os.path.exists(self.server_cert):
            self._write_pair(self.server_cert, self.server_key, self._server_pair())
        if not os.path.exists(self.claim_cert):
            self._write_pair(self.claim_cert, self.claim_key, self._client_pair(CLAIM_IDENTITY))
        if not os.path.exists(self.service_cert):
            self._write_pair(self.service_cert, self.service_key,
                             self._client_pair(SERVICE_IDENTITY))

    def _make_ca(self):
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = _name("LODEV Platform Emulator Root CA")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _TEN_YEARS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        write_file_atomic(self.ca_key_file, _pem_key(key).encode(), 0o600)
        write_file_atomic(self.ca_file, _pem_cert(cert).encode(), 0o644)
        self._ca_cert, self._ca_key = cert, key

    def _write_pair(self, cert_path, key_path, pair):
        cert_pem, key_pem = pair
        write_file_atomic(key_path, key_pem.encode(), 0o600)
        write_file_atomic(cert_path, cert_pem.encode(), 0o644)

    def _sign(self, subject_cn, public_key, server=False):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject_cn))
            .issuer_name(self._ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + _TEN_YEARS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return _pem_cert(builder.sign(self._ca_key, hashes.SHA256()))

    def _server_pair(self):
        key = _rsa_key()
        return self._sign("localhost", key.public_key(), server=True), _pem_key(key)

    def _client_pair(self, cn):
        key = _rsa_key()
        return self._sign(cn, key.public_key()), _pem_key(key)

    def create_keys_and_certificate(self, certificate_id):
        """(certificate PEM, private key PEM), as CreateKeysAndCertificate."""
        return self._client_pair(certificate_id)

    def certificate_from_csr(self, certificate_id, csr_pem):
        """Certificate PEM for the key in `csr_pem`; raises CsrError."""
        if not isinstance(csr_pem, str) or "BEGIN CERTIFICATE REQUEST" not in csr_pem:
            raise CsrError("certificateSigningRequest is not a PEM certificate request")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as e:
            raise CsrError(f"certificateSigningRequest cannot be parsed: {e}") from None
        try:
            if not csr.is_signature_valid:
                raise CsrError("certificateSigningRequest signature is invalid")
        except InvalidSignature:
            raise CsrError("certificateSigningRequest signature is invalid") from None
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise CsrError("RSA keys must have at least 2048 bits")
        if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise CsrError("only RSA and ECDSA keys are accepted")
        return self._sign(certificate_id, key)
