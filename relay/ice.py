"""ICE configuration: which local addresses the relay's candidates use.

aioice gathers host candidates on every interface except 127.0.0.1 and ::1,
and aiortc's ``RTCConfiguration`` cannot narrow that. A deployment names the
addresses it wants (``PARLOR_ICE_ADDRESSES``), tests name ``127.0.0.1``.
The pin is process-wide because aioice's address lookup is: it is the one
piece of module-level state in ``relay/``.
"""

from __future__ import annotations

import ipaddress

from aiortc import RTCConfiguration, RTCIceServer

from relay import aiortc_internals

# The single ICE pin: None = aioice's own choice of addresses.
_pinned: tuple[str, ...] | None = None


def pin_ice_addresses(addresses: list[str] | None) -> None:
    """Gather host candidates only on ``addresses`` (None: aioice's default).

    Applies to every RTCPeerConnection gathered afterwards in this process.
    Raises ValueError for an empty list or anything that is not an IP address.
    """
    global _pinned
    if addresses is None:
        _pinned = None
        aiortc_internals.set_host_address_provider(None)
        return
    if not addresses:
        raise ValueError("pin at least one ICE address, or None for the default")
    checked = tuple(str(ipaddress.ip_address(address.strip())) for address in addresses)
    _pinned = checked
    aiortc_internals.set_host_address_provider(_pinned_addresses)


def pinned_ice_addresses() -> list[str] | None:
    """The addresses currently pinned, or None."""
    return None if _pinned is None else list(_pinned)


def _pinned_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = _pinned or ()
    return [address for address in pinned if (use_ipv6 if ":" in address else use_ipv4)]


def rtc_configuration(ice_servers: list[dict] | None) -> RTCConfiguration:
    """An RTCConfiguration with exactly the given ICE servers.

    Never aiortc's default: left unset it uses a public STUN server, which
    stalls gathering for seconds on a host without internet access.
    Each server is a browser-style dict: ``urls`` (str or list), optional
    ``username`` and ``credential``. A malformed entry raises ValueError.
    """
    servers = []
    for entry in ice_servers or []:
        if not isinstance(entry, dict) or "urls" not in entry:
            raise ValueError(f"ICE server needs 'urls': {entry!r}")
        urls = entry["urls"]
        if not isinstance(urls, (str, list)) or (
            isinstance(urls, list) and not all(isinstance(url, str) for url in urls)
        ):
            raise ValueError(f"ICE server 'urls' must be a string or list: {entry!r}")
        servers.append(
            RTCIceServer(
                urls=urls,
                username=entry.get("username"),
                credential=entry.get("credential"),
            )
        )
    return RTCConfiguration(iceServers=servers)
