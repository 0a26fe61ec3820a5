"""Keeping fetches off non-public networks: the ``block_private_addresses`` setting.

With the setting on, a fetch (every redirect hop and robots.txt included) is refused when
its host is, or resolves to, a loopback, private (RFC 1918, IPv6 ULA, CGNAT), link-local
(169.254/16 with the cloud metadata address, fe80::/10), multicast, unspecified or
reserved address; IPv4 addresses inside IPv6 ones (``::ffff:127.0.0.1``, 6to4, NAT64) are
judged by the IPv4 address. The check is made on the address actually connected to, so a
name that resolves differently between a check and the connect (DNS rebinding) gains
nothing: with curl in libcurl's ``OPENSOCKETFUNCTION`` (:class:`ConnectGuard`), with the
simple client in the resolver it connects through (:class:`BlockingResolver`). Behind a
proxy the connection goes to the proxy, which is not checked (it is configuration): the
fetcher resolves the target host itself and refuses it if any of its addresses is not
public (:func:`check_host`); the proxy resolves the name again, so there the proxy's own
rules must keep it off internal networks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from tornado.netutil import DefaultLoopResolver, Resolver

try:
    import pycurl
except ImportError:  # the simple client needs no ConnectGuard
    pycurl = None

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SETTING = "block_private_addresses is on"


class BlockedAddress(Exception):
    """A fetch refused by ``block_private_addresses``; the message says which address and why."""


def blocked_kind(address: str) -> str | None:
    """What kind of non-public address *address* is (``"a loopback address"``), or None when it is public."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved:
        return "a reserved address"
    if not ip.is_global:
        return "not a public address"
    return None


def blocked_text(host: str, address: str, kind: str) -> str:
    """``blocked: 127.0.0.1 is a loopback address; block_private_addresses is on`` (and the resolving name)."""
    if host.strip("[]") == address:
        return f"blocked: {address} is {kind}; {_SETTING}"
    return f"blocked: {host} resolves to {address}, {kind}; {_SETTING}"


class ConnectGuard:
    """libcurl's ``OPENSOCKETFUNCTION`` for one request: no socket to an address that is not public.

    libcurl tries the next address of the name (if any) when one is refused; ``blocked``
    keeps the first refusal's text for the error when no address was left. pycurl keeps a
    duplicate of each socket it is given: :meth:`close` closes ours once the request is over.
    """

    __slots__ = ("host", "blocked", "sockets")

    def __init__(self, host: str):
        self.host = host
        self.blocked: str | None = None
        self.sockets: list[socket.socket] = []

    def install(self, curl: Any) -> None:
        curl.setopt(pycurl.OPENSOCKETFUNCTION, self.opensocket)

    def opensocket(self, purpose: int, address: Any) -> Any:
        ip = address.addr[0]
        kind = blocked_kind(ip)
        if kind is not None:
            if self.blocked is None:
                self.blocked = blocked_text(self.host, ip, kind)
            return pycurl.SOCKET_BAD
        sock = socket.socket(address.family, address.socktype, address.protocol)
        self.sockets.append(sock)
        return sock

    def error(self) -> str | None:
        """The refusal text when every address tried was refused, else None."""
        return self.blocked if not self.sockets else None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


class BlockingResolver(Resolver):
    """The simple client's resolver: only public addresses, or :class:`BlockedAddress` when none is left."""

    def initialize(self, resolver: Resolver | None = None) -> None:
        self.resolver = resolver or DefaultLoopResolver()

    def close(self) -> None:
        self.resolver.close()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
                      ) -> list[tuple[int, Any]]:
        addresses = await self.resolver.resolve(host, port, family)
        allowed = [(af, addr) for af, addr in addresses if blocked_kind(addr[0]) is None]
        if not allowed:
            address = addresses[0][1][0]
            raise BlockedAddress(blocked_text(host, address, blocked_kind(address)))
        return allowed


async def check_host(host: str, port: int, timeout: float) -> str | None:
    """Behind a proxy: the refusal text if *host* is, or resolves here to, any address that is not public.

    A name that does not resolve here (within *timeout* seconds) is refused too.
    """
    lookup = asyncio.get_running_loop().getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.wait_for(lookup, timeout)
    except asyncio.TimeoutError:
        return f"blocked: cannot resolve {host} in {timeout:g}s to check its address; {_SETTING}"
    except (OSError, UnicodeError) as exc:
        return f"blocked: cannot resolve {host} to check its address ({exc}); {_SETTING}"
    for *_, sockaddr in infos:
        kind = blocked_kind(sockaddr[0])
        if kind is not None:
            return blocked_text(host, sockaddr[0], kind)
    return None


__all__ = ["BlockedAddress", "BlockingResolver", "ConnectGuard", "blocked_kind", "blocked_text", "check_host"]
