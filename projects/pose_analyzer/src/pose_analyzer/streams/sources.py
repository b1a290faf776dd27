"""What a stream reads from: a camera index, a file under the data directory, or a URL."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pose_analyzer.detectors.replay import KEYPOINT_SUFFIXES

URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "udp", "tcp")
MAX_SOURCE_CHARS = 2048
MAX_NAME_BYTES = 255  # one path component (ext4, xfs, btrfs)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Never a camera, whatever the allowlist says: cloud metadata services (AWS, GCP,
# Azure, OpenStack answer on these), link-local, "this network", broadcast, and
# multicast outside the administratively scoped range cameras use (239/8; IPv6
# site-local ff05::/16 and organisation-local ff08::/16).
ALWAYS_REFUSED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "0.0.0.0/8",
        "255.255.255.255/32",
        "::/128",
        "100.100.100.200/32",
    )
)
SAFE_MULTICAST = tuple(ipaddress.ip_network(n) for n in ("239.0.0.0/8", "ff05::/16", "ff08::/16"))
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")


class SourceError(ValueError):
    """The source is not acceptable; the message says why and what to pass instead."""


@dataclass(frozen=True)
class Source:
    kind: Literal["camera", "file", "url"]
    target: str | int  # camera index, absolute file path, or URL
    text: str  # as the user gave it

    @property
    def live(self) -> bool:
        return self.kind != "file"

    @property
    def keypoints(self) -> bool:
        """A keypoint JSON Lines file, replayed instead of detected."""
        return self.kind == "file" and str(self.target).lower().endswith(KEYPOINT_SUFFIXES)


@dataclass(frozen=True)
class SourcePolicy:
    """Which network hosts a URL source may name: networks (CIDR) and host names."""

    networks: tuple[IpNetwork, ...]
    hosts: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> SourcePolicy:
        networks: list[IpNetwork] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def check(self, host: str, addresses: Iterable[str]) -> None:
        """Raise SourceError unless every address of `host` may be read from."""
        named = host.lower().rstrip(".") in self.hosts
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            if any(address in n for n in ALWAYS_REFUSED if n.version == address.version):
                raise SourceError(
                    f"host {host!r} resolves to {address}, a link-local or metadata address; "
                    "such addresses are never read from"
                )
            if address.is_multicast and not any(
                address in n for n in SAFE_MULTICAST if n.version == address.version
            ):
                raise SourceError(
                    f"host {host!r} resolves to multicast {address} outside 239.0.0.0/8 "
                    "(IPv6: ff05::/16, ff08::/16); use an administratively scoped group"
                )
            allowed = named or any(
                address in n for n in self.networks if n.version == address.version
            )
            if not allowed:
                raise SourceError(
                    f"host {host!r} ({address}) is not in the allowed sources; add it or its "
                    "network to POSE_SOURCE_ALLOW (comma-separated hosts and CIDRs)"
                )


DEFAULT_POLICY = SourcePolicy.parse(
    "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7,239.0.0.0/8"
)


def _resolve(host: str, port: int | None) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise SourceError(f"host {host!r} cannot be resolved: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def check_url(text: str, policy: SourcePolicy) -> None:
    """Scheme, host and every address the host resolves to, against `policy`."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise SourceError(f"malformed URL {text!r}: {exc}") from None
    host = parts.hostname
    if parts.scheme.lower() == "udp" and host in (None, "", "0.0.0.0", "::"):
        return  # listen for datagrams on this machine's own port: nothing is requested
    if not host:
        raise SourceError(f"URL {text!r} names no host")
    policy.check(host, _resolve(host, port))


def parse_source(value: str | int, data_dir: Path, policy: SourcePolicy | None = None) -> Source:
    """Validate a source; files must lie inside `data_dir` (no path escapes), URL hosts
    must pass `policy` after DNS resolution."""
    if isinstance(value, bool):
        raise SourceError("source must be a camera index, a file under the data directory or a URL")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if not 0 <= index <= 63:
            raise SourceError(f"camera index {index} is out of range (0-63)")
        return Source("camera", index, str(value))
    text = str(value).strip()
    if not text:
        raise SourceError("source is empty: give a camera index, a file or a URL")
    if "\x00" in text or len(text) > MAX_SOURCE_CHARS:
        raise SourceError(f"source must be at most {MAX_SOURCE_CHARS} characters without NUL bytes")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in URL_SCHEMES:
            raise SourceError(
                f"unsupported URL scheme {scheme!r} in {text!r}; "
                f"use one of {', '.join(URL_SCHEMES)}"
            )
        check_url(text, policy or DEFAULT_POLICY)
        return Source("url", text, text)
    if any(
        len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in Path(text).parts
    ):
        raise SourceError(f"a path component of {text[:60]!r}... is longer than 255 bytes")
    path = data_file(text, data_dir, "file")
    if path.suffix.lower() not in VIDEO_SUFFIXES + KEYPOINT_SUFFIXES:
        raise SourceError(
            f"{text!r} is not a supported file: videos ({', '.join(VIDEO_SUFFIXES)}) "
            f"or keypoint files ({', '.join(KEYPOINT_SUFFIXES)})"
        )
    return Source("file", str(path), text)


def data_file(text: str, data_dir: Path, label: str) -> Path:
    """The existing file `text` names under the data directory (relative to it, or an
    absolute path inside it); anything else is a SourceError naming it as `label`."""
    root = data_dir.resolve()
    candidate = Path(text)
    try:
        path = (candidate if candidate.is_absolute() else root / candidate).resolve()
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:
        raise SourceError(f"{label} {text[:80]!r} cannot be used: {exc}") from None
    if not path.is_relative_to(root):
        raise SourceError(
            f"{label} {text!r} is outside the data directory; put it under {root.name}/ "
            "and pass its path relative to it"
        )
    if not exists:
        raise SourceError(f"{label} {text!r} does not exist under the data directory")
    if not is_file:
        raise SourceError(f"{label} {text!r} is not a file")
    return path
