"""The review page's listening socket: bound before anything is loaded, and the address to open."""

from __future__ import annotations

import errno
import ipaddress
import socket

from reid.errors import ConfigError
from reid.serving.guard import ANY_ADDRESS, authority

__all__ = ["bind_socket", "is_loopback", "page_url"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0 = any free port), or one line saying why not.

    Bound before anything is printed or loaded, so a port in use is an error the user can act on
    (not "Open ..." followed by uvicorn's exit 3), and ``--port 0`` can print the real port.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(
            f"--host {host}: not an address of this machine ({e}); pass --host 127.0.0.1"
        ) from None
    # a name such as localhost: IPv4 first, as uvicorn binds it
    family, kind, proto, _, addr = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)  # listening claims the port (two bound, unlistened sockets may share it)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is in use; pass --port with a free port or --port 0"
            ) from None
        raise ConfigError(
            f"cannot listen on {host}:{port} ({e.strerror}); pass --host 127.0.0.1, or a --port above 1023"
        ) from None
    sock.set_inheritable(True)
    return sock


def page_url(host: str, port: int) -> str:
    """The address to open in a browser for a server bound to ``host:port``."""
    name = host.strip("[]")
    if name in ANY_ADDRESS:
        name = "127.0.0.1" if name == "0.0.0.0" else "::1"
    return f"http://{authority(name, port)}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
