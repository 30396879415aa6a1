"""aiohttp imported through runs.client_tls (as ``runlog serve`` does) reads no CA certificate
at import, and its default client context still verifies servers against the CA store given
by ``SSL_CERT_FILE`` at the first HTTPS request. Each case runs in a new interpreter: this one
imported aiohttp long ago."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]

CLIENT = """
import asyncio, ssl, sys
from runs.client_tls import import_aiohttp

import_aiohttp()
import aiohttp
import aiohttp.connector
from aiohttp import web

print("at import", aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"])


async def hello(request):
    return web.Response(text="hello over TLS")


async def main(cert, key):
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{port}/") as response:
                print("answer", await response.text())
    except aiohttp.ClientConnectorCertificateError:
        print("refused: certificate not trusted")
    finally:
        await runner.cleanup()


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.parametrize(
    ("trusted", "expected"), [(True, "answer hello over TLS"), (False, "refused")]
)
def test_the_deferred_ca_store_is_loaded_and_enforced_at_the_first_request(
    tmp_path: Path, trusted: bool, expected: str
) -> None:
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, str(cert), str(key)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(cert if trusted else other)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "at import 0", lines
    assert lines[1].startswith(expected), lines
