"""What a `scan serve` process allows: where it listens, who may ask, and how much one request may take."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from scan.errors import ConfigError

__all__ = ["ServeSettings", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1 or "localhost")."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeSettings:
    """The limits and the access rules of one server.

    Attributes:
        host: The address to listen on; loopback unless `token` or `insecure` says otherwise.
        port: The TCP port.
        token: A bearer token every API request must carry (``Authorization: Bearer <token>``,
            or the ``scan_token`` cookie the page sets); None: no token asked for.
        insecure: Allow listening beyond loopback without a token (anyone who reaches the port
            can search the collection and see its photos).
        cors_origins: Origins allowed to call the API from other pages' scripts; empty: CORS off.
        max_query_chars: Longest query accepted.
        max_k: Most results one request may ask for.
        shortlist: Candidates the first stage passes to SCAN (None: the index's default).
        max_upload_bytes: Largest photo upload.
        max_pixels: Largest photo upload in pixels (width x height), checked before decoding.
        request_timeout_s: A request still computing after this long is answered 503.
        max_batch: Text queries gathered into one first-stage call (1: no batching).
        batch_wait_ms: How long the first query of a batch waits for others.
        thumbnail_px: The longer side of a thumbnail.
        access_log: Write one JSON line per request to stderr.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    insecure: bool = False
    cors_origins: list[str] = field(default_factory=list)
    max_query_chars: int = 500
    max_k: int = 100
    shortlist: int | None = None
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    request_timeout_s: float = 30.0
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    thumbnail_px: int = 320
    access_log: bool = True

    def check(self) -> ServeSettings:
        """Refuse settings that would expose the collection or make no sense; returns self.

        Raises:
            ConfigError: naming the option at fault.
        """
        if not is_loopback(self.host) and not self.token and not self.insecure:
            raise ConfigError(
                f"--host {self.host} lets other machines reach the server: give --token SECRET (clients send "
                "'Authorization: Bearer SECRET'), or --insecure to allow anyone who can reach the port"
            )
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("--token must be at least 8 characters")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        for name in ("max_query_chars", "max_k", "max_upload_bytes", "max_pixels", "max_batch", "thumbnail_px"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.shortlist is not None and self.shortlist < self.max_k:
            raise ConfigError(f"--shortlist ({self.shortlist}) must be at least the largest k ({self.max_k})")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request_timeout_s must be positive, got {self.request_timeout_s}")
        return self
