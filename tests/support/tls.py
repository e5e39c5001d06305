"""Throwaway TLS material for loopback upstreams: a test CA and one server certificate.

mitmdump is told to verify upstreams against this CA (`ssl_verify_upstream_trusted_ca`),
so HTTPS tests exercise real certificate verification instead of turning it off.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_DNS_NAMES = ("localhost", "api.example.com", "other.example.com", "*.example.com")
SERVER_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSMaterial:
    """Paths of the PEM files written by `make_tls_material`."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side context for the test certificate, speaking HTTP/1.1 only (ALPN)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.set_alpn_protocols(["http/1.1"])
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vaultproxy tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """Digital signatures, plus signing certificates and CRLs for a CA."""
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca,
        crl_sign=ca, encipher_only=False, decipher_only=False,
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, directory: Path, dns_names: Sequence[str], ips: Sequence[str]
) -> tuple[Path, Path]:
    """A server certificate for `dns_names` and `ips`, signed by the CA; (cert, key) paths in directory."""
    now = datetime.datetime.now(datetime.timezone.utc)
    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else "server"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server-cert.pem", directory / "server-key.pem"
    cert_path.write_bytes(_pem(server_cert))
    _write_key(key_path, server_key)
    return cert_path, key_path


def make_tls_material(directory: Path) -> TLSMaterial:
    """Generate a CA and a server certificate (valid for SERVER_DNS_NAMES and SERVER_IPS) into directory.

    The extensions (key usage, SKI/AKI, EKU) are those OpenSSL 3's strict verification,
    Python 3.13's default, insists on.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("vaultproxy test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "test-ca.pem"
    ca_path.write_bytes(_pem(ca_cert))
    _write_key(directory / "test-ca-key.pem", ca_key)
    cert, key = _issue_server_certificate(ca_key, ca_cert, directory, SERVER_DNS_NAMES, SERVER_IPS)
    return TLSMaterial(ca_cert=ca_path, server_cert=cert, server_key=key)


def issue_server_material(ca: TLSMaterial, directory: Path, dns_names: Sequence[str]) -> TLSMaterial:
    """TLS material whose server certificate, from the same CA as `ca`, names only `dns_names`:
    a server that is trusted, but for other names (an attacker's own valid certificate)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(ca.ca_cert.with_name("test-ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert.read_bytes())
    cert, key = _issue_server_certificate(ca_key, ca_cert, directory, dns_names, ())
    return TLSMaterial(ca_cert=ca.ca_cert, server_cert=cert, server_key=key)
