"""The side effects of `verify`: DNS, TCP and the one TLS handshake.

Each probe returns what it saw as plain data and never raises for a network or
certificate problem; `judge` turns that data into steps and a diagnosis. The handshake
does not verify: it collects the chain, and `anchors` verifies that chain against each
trust store on its own.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge_certd.diagnose.verify.model import is_ip_literal

__all__ = [
    "Connected",
    "Handshake",
    "Resolved",
    "probe_dns",
    "probe_tcp",
    "probe_tls",
    "unverified_context",
]

# The first byte of every TLS record is its content type: 20-23 (RFC 8446 section 5.1).
# Anything else in reply to a ClientHello means the peer is not speaking TLS.
_TLS_RECORD_TYPES = frozenset({20, 21, 22, 23})


@dataclass(frozen=True)
class Resolved:
    addresses: tuple[tuple[int, tuple[Any, ...]], ...] = ()  # (family, sockaddr)
    error: str | None = None
    literal: bool = False

    def hosts(self) -> tuple[str, ...]:
        return tuple(str(sockaddr[0]) for _family, sockaddr in self.addresses)


@dataclass
class Connected:
    sock: socket.socket | None
    address: str = ""
    elapsed_ms: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (address, kind, text)


@dataclass
class Handshake:
    chain_der: list[bytes] = field(default_factory=list)
    version: str | None = None
    cipher: str | None = None
    # "timeout", "eof", "not-tls", "reset" or "ssl" when the handshake itself failed.
    error: str | None = None
    error_text: str = ""
    first_bytes: bytes = b""
    elapsed_ms: float = 0.0


def probe_dns(host: str, port: int, timeout: float) -> Resolved:
    if is_ip_literal(host):
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return Resolved(addresses=tuple((i[0], i[4]) for i in info), literal=True)
    if _is_special_invalid(host):
        # RFC 6761 section 6.4: .invalid never resolves. Answer at once instead of
        # waiting for a resolver that might still try the network.
        return Resolved(error="names under .invalid never resolve (RFC 6761)")
    # getaddrinfo() has no timeout of its own; run it in a daemon thread so a dead
    # resolver cannot hang the check past the user's --timeout.
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:
            box.append(exc)

    worker = threading.Thread(target=lookup, name="edge-certd-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if not box:
        return Resolved(error=f"no answer from the resolver within {timeout:g} s")
    result = box[0]
    if isinstance(result, BaseException):
        text = result.strerror if isinstance(result, OSError) and result.strerror else str(result)
        return Resolved(error=text)
    seen: dict[tuple[Any, ...], int] = {}
    for family, _type, _proto, _name, sockaddr in result:
        seen.setdefault(tuple(sockaddr), family)
    return Resolved(addresses=tuple((family, addr) for addr, family in seen.items()))


def _is_special_invalid(host: str) -> bool:
    name = host.rstrip(".").lower()
    return name == "invalid" or name.endswith(".invalid")


def probe_tcp(resolved: Resolved, timeout: float) -> Connected:
    """Connect to each address in turn; the first that answers wins.

    The caller owns (and must close) the socket in the result.
    """
    result = Connected(sock=None)
    for family, sockaddr in resolved.addresses:
        address = _format_sockaddr(family, sockaddr)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        started = time.monotonic()
        try:
            sock.connect(sockaddr)
        except TimeoutError:
            sock.close()
            result.failures.append((address, "timeout", f"timed out after {timeout:g} s"))
            continue
        except ConnectionRefusedError:
            sock.close()
            result.failures.append((address, "refused", "connection refused"))
            continue
        except OSError as exc:
            sock.close()
            result.failures.append((address, "error", exc.strerror or str(exc)))
            continue
        result.sock = sock
        result.address = address
        result.elapsed_ms = (time.monotonic() - started) * 1000
        break
    return result


def _format_sockaddr(family: int, sockaddr: tuple[Any, ...]) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def unverified_context() -> ssl.SSLContext:
    """A client context that completes the handshake whatever the chain: the chain is
    verified afterwards, against each trust store on its own (see `anchors`)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def probe_tls(
    sock: socket.socket,
    sni: str | None,
    timeout: float,
    context: ssl.SSLContext | None = None,
    *,
    meanwhile: Callable[[], object] | None = None,
) -> Handshake:
    """Run one TLS handshake over `sock` through memory BIOs, without verifying.

    Memory BIOs rather than wrap_socket() because they let us see the raw bytes
    a non-TLS server answers with, and put one deadline on the whole handshake.
    `meanwhile` runs once the ClientHello is sent, while the gateway works out its answer
    (reading the trust stores, which the check needs next); its time is not the
    handshake's, neither in `elapsed_ms` nor against `timeout`.
    """
    result = Handshake()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = context or unverified_context()
    try:
        tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    except ValueError as exc:  # e.g. a servername OpenSSL refuses
        result.error, result.error_text = "ssl", str(exc)
        return result
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            tls.do_handshake()
            _flush(sock, outgoing)
            break
        except ssl.SSLWantReadError:
            try:
                _flush(sock, outgoing)
                if meanwhile is not None:
                    spent = time.monotonic()
                    meanwhile()
                    meanwhile, spent = None, time.monotonic() - spent
                    started, deadline = started + spent, deadline + spent
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                data = sock.recv(65536)
            except TimeoutError:
                result.error = "timeout"
                result.error_text = f"no TLS answer within {timeout:g} s"
                break
            except OSError as exc:
                result.error, result.error_text = "reset", exc.strerror or str(exc)
                break
            if not data:
                incoming.write_eof()
            else:
                if len(result.first_bytes) < 64:
                    result.first_bytes += data[: 64 - len(result.first_bytes)]
                incoming.write(data)
        except ssl.SSLError as exc:
            closed = isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
            result.error = "eof" if closed else "ssl"
            result.error_text = exc.reason or str(exc)
            break
    result.elapsed_ms = (time.monotonic() - started) * 1000
    if result.error and result.first_bytes and result.first_bytes[0] not in _TLS_RECORD_TYPES:
        result.error = "not-tls"
    cipher = tls.cipher()
    if cipher:
        result.cipher, result.version = cipher[0], tls.version() or cipher[1]
    # get_unverified_chain() is public from Python 3.13; before that the same method
    # exists on the private _sslobj (added in 3.10, bpo-18233).
    result.chain_der = _chain(tls, "get_unverified_chain")
    return result


def _flush(sock: socket.socket, outgoing: ssl.MemoryBIO) -> None:
    data = outgoing.read()
    if data:
        sock.sendall(data)


def _chain(tls: ssl.SSLObject, method: str) -> list[bytes]:
    getter = getattr(tls, method, None) or getattr(getattr(tls, "_sslobj", None), method, None)
    if getter is None:
        return []
    try:
        certs = getter() or []
    except (ssl.SSLError, ValueError):
        return []
    out: list[bytes] = []
    for cert in certs:
        if isinstance(cert, bytes | bytearray):
            out.append(bytes(cert))
        else:  # _ssl.Certificate
            out.append(cert.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out
