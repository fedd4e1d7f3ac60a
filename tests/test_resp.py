"""The lean RESP client: replies of every type, AUTH/SELECT, a Redis that restarts,
hangs, or is left mid-command."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from proxy.store.resp import NoScript, RespClient, RespError, pack
from tests.redis_support import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop()


def test_pack_is_resp() -> None:
    assert pack(("SET", "k", 12, b"\x00")) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$1\r\n\x00\r\n")


async def test_every_reply_type(server: RedisServer) -> None:
    client = RespClient(server.url)
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("SET", "k", "v\r\nwith newline") == b"OK"
    assert await client.execute("GET", "k") == b"v\r\nwith newline"
    assert await client.execute("GET", "missing") is None
    assert await client.execute("INCRBY", "n", 41) == 41
    assert await client.execute("RPUSH", "l", "a", "b") == 2
    assert await client.execute("LRANGE", "l", 0, -1) == [b"a", b"b"]
    assert await client.execute("EVAL", "return {1, {2, 'x'}, false}", 0) == [1, [2, b"x"], None]
    with pytest.raises(RespError, match="WRONGTYPE"):
        await client.execute("INCR", "l")
    with pytest.raises(NoScript):
        await client.execute("EVALSHA", "0" * 40, 0)
    assert await client.execute("ECHO", "still in step") == b"still in step"
    await client.aclose()


async def test_password_user_and_database_from_the_url(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r", None, "--requirepass", "s3cret:/@").start()
    try:
        with redis.Redis(port=server.port, password="s3cret:/@") as admin:
            admin.execute_command("ACL", "SETUSER", "bob", "on", ">pw", "~*", "+@all")
        client = RespClient(f"redis://:s3cret%3A%2F%40@127.0.0.1:{server.port}/3")
        await client.execute("SET", "where", "db3")
        bob = RespClient(f"redis://bob:pw@127.0.0.1:{server.port}/3")
        assert await bob.execute("GET", "where") == b"db3"
        anonymous = RespClient(f"redis://127.0.0.1:{server.port}/3")
        with pytest.raises(RespError, match="NOAUTH"):
            await anonymous.execute("GET", "where")
        for c in (client, bob, anonymous):
            await c.aclose()
    finally:
        server.stop()


async def test_a_restarted_redis_costs_no_error(server: RedisServer) -> None:
    client = RespClient(server.url)
    assert await client.execute("PING") == b"PONG"  # now pooled
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)
    assert await client.execute("PING") == b"PONG"  # stale connection replaced
    await client.aclose()


async def test_a_connection_left_mid_command_is_not_reused(server: RedisServer) -> None:
    client = RespClient(server.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.execute("BLPOP", "nothing", 1)  # its nil reply comes after 1 s
    assert await client.execute("ECHO", "mine") == b"mine"
    await client.aclose()


async def test_a_hanging_redis_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = RespClient(f"redis://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.2)
        with pytest.raises(TimeoutError):
            await client.execute("PING")
        await client.aclose()


def test_only_redis_urls() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RespClient("http://127.0.0.1:6379")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    from tests.redis_support import free_port

    cert, key = _self_signed(tmp_path)
    tls_port = free_port()
    server = RedisServer(tmp_path / "r", None, "--tls-port", str(tls_port), "--tls-cert-file",
                         str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no")
    server.start()
    try:
        trusted = RespClient(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}")
        assert await trusted.execute("PING") == b"PONG"
        await trusted.aclose()
        untrusted = RespClient(f"rediss://127.0.0.1:{tls_port}/0")  # system CAs only
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusted.execute("PING")
        await untrusted.aclose()
    finally:
        server.stop()
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        RespClient("rediss://127.0.0.1:6379/0?ssl_cert_reqs=none")
