"""The client over https (an API behind a TLS Ingress): a real uvicorn server on 127.0.0.1 with a
certificate made here, trusted through `verify` / `--ca-file`; an untrusted or mismatched certificate
is one clear ConfigError naming the fix, never a retry."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.cli import main
from orchestrator.cli.common import EXIT_BAD_INPUT, EXIT_OK
from orchestrator.client import Client
from orchestrator.errors import ConfigError
from tests.unit.apiserver import running_api

TOKEN = "tls-test-token"


def self_signed(folder: Path, *, ip: str | None = "127.0.0.1", dns: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for `ip` and `dns`, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)])
    names: list[x509.GeneralName] = [x509.DNSName(dns)]
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder / "certs")
    with running_api(folder / "state", token=TOKEN, tls=(cert, key)) as url:
        yield url, cert


def test_the_client_trusts_the_ca_file_it_is_given(https: tuple[str, Path]) -> None:
    url, cert = https
    assert url.startswith("https://")
    with Client(url, token=TOKEN, verify=cert) as client:
        assert client.jobs() == []
    with Client(url, token=TOKEN, verify=str(cert)) as client:
        assert client.jobs() == []


def test_an_untrusted_certificate_is_a_config_error_naming_the_fix(https: tuple[str, Path]) -> None:
    url, _ = https
    with Client(url, token=TOKEN) as client, pytest.raises(ConfigError) as caught:
        client.jobs()
    message = str(caught.value)
    assert f"the TLS certificate of {url} is not trusted" in message and "self-signed" in message
    assert "verify='ca.pem'" in message and "--ca-file" in message and not caught.value.retriable


def test_a_certificate_for_another_host_is_refused_even_when_its_ca_is_trusted(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "certs", ip=None, dns="synthfleet.example.com")
    with running_api(tmp_path / "state", token=TOKEN, tls=(cert, key)) as url:
        with Client(url, token=TOKEN, verify=cert) as client, pytest.raises(ConfigError, match="not trusted"):
            client.jobs()
        with Client(url, token=TOKEN, verify=False) as client:  # --insecure: nothing is checked
            assert client.jobs() == []


def test_a_ca_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot use .*missing\.pem as the CA file"):
        Client("https://127.0.0.1:1", verify=tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="garbage.pem"):
        Client("https://127.0.0.1:1", verify=garbage)


def test_the_cli_takes_ca_file_and_insecure(https: tuple[str, Path], capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url, cert = https
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    base = ["jobs", "--url", url, "--token-file", str(token_file)]
    assert main([*base, "--ca-file", str(cert)]) == EXIT_OK
    assert main([*base, "--insecure"]) == EXIT_OK
    monkeypatch.setenv("SYNTHFLEET_CA_FILE", str(cert))
    assert main(base) == EXIT_OK
    monkeypatch.delenv("SYNTHFLEET_CA_FILE")
    capsys.readouterr()
    assert main(base) == EXIT_BAD_INPUT
    assert "is not trusted" in capsys.readouterr().err
    assert main([*base, "--ca-file", str(tmp_path / "missing.pem")]) == EXIT_BAD_INPUT
    assert "missing.pem" in capsys.readouterr().err
