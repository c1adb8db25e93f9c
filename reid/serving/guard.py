"""Who may talk to the review page: the Host header (DNS rebinding) and Origin (cross-site requests).

Pure Python (no web framework): :class:`HostGuard` answers "is this request for this server, and
from its own page?" with ``None`` or the reason, which the web layer turns into a 400 or 403.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["ANY_ADDRESS", "LOOPBACK_NAMES", "SAFE_METHODS", "HostGuard", "authority", "parse_authority"]

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}  # every other method changes state: Origin is checked
SAME_ORIGIN_FETCH = {"same-origin", "none"}  # Sec-Fetch-Site values a state change may carry
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = {"0.0.0.0", "::", ""}


def parse_authority(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]:port`` -> (lower-case name, port or ``default_port``)."""
    value = value.strip()
    if not value or len(value) > 255 or any(c in value for c in "/@?#\\ \t"):
        raise ValueError(f"{value[:80]!r} is not a host name (NAME or NAME:PORT)")
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not a host name ([IPv6] or [IPv6]:PORT)")
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    else:
        name, port_text = value, None  # a name, or a bare IPv6 address
    if not name:
        raise ValueError(f"{value!r} has no host name")
    if port_text is None:
        return name.lower(), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
    return name.lower(), int(port_text)


def authority(name: str, port: int | None) -> str:
    host = f"[{name}]" if ":" in name else name
    return host if port is None else f"{host}:{port}"


class HostGuard:
    """The names this server answers to, and whether a state change comes from its own page.

    Loopback names and the bound host are served at the bound port (any port until it is known,
    as under a test client); ``--allowed-host NAME`` is accepted at any port, ``NAME:PORT`` at that
    port (a reverse proxy's public name). Anything else is a DNS-rebinding attempt or a typo.
    """

    def __init__(self, host: str = "127.0.0.1", allowed: list[str] | None = None, port: int | None = None):
        self.names = set(LOOPBACK_NAMES)
        self.extra = {parse_authority(a) for a in allowed or []}
        self.port = port
        self.bind(host, port)

    def bind(self, host: str, port: int | None) -> None:
        """The address the server listens on (call again once a ``--port 0`` is bound)."""
        name = host.strip("[]").lower()
        if name not in ANY_ADDRESS:
            self.names.add(name)
        self.port = port

    def allows(self, name: str, port: int | None) -> bool:
        if (name, None) in self.extra or (name, port) in self.extra:
            return True
        return name in self.names and (self.port is None or port == self.port)

    def served(self) -> str:
        names = [authority(n, self.port) for n in sorted(self.names)]
        return ", ".join(names + [authority(n, p) for n, p in sorted(self.extra, key=str)])

    def check_host(self, header: str | None) -> str | None:
        """None when the Host header names this server, else why not (for an HTTP 400)."""
        try:
            ok = header is not None and self.allows(*parse_authority(header, default_port=80))
        except ValueError:
            ok = False
        if ok:
            return None
        return (
            f"this server answers only as {self.served()}, not as Host {(header or '')[:100]!r}: open "
            "the page by one of those names, or restart reid serve with --allowed-host NAME"
        )

    def check_origin(self, origin: str | None, fetch_site: str | None) -> str | None:
        """None when a state-changing request comes from this server's own page (or from a
        non-browser client, which sends neither header), else why not (for an HTTP 403)."""
        refused = (
            "cross-site request refused: decisions and queries are accepted only from this server's page"
        )
        if fetch_site is not None and fetch_site.strip().lower() not in SAME_ORIGIN_FETCH:
            return f"{refused} (Sec-Fetch-Site: {fetch_site[:40]!r})"
        if origin is None:
            return None
        try:
            parts = urlsplit(origin.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(origin)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            ok = self.allows(parts.hostname.lower(), port)
        except ValueError:
            ok = False
        return None if ok else f"{refused} (Origin: {origin[:100]!r})"
