"""Client networks from the config (`Networks` CIDR lists), and whether an address is in one.

On the hot path (compiled): the tester override's `allow_from` is asked per
override request, the connection caps' exemptions per refused connection.
"""

from __future__ import annotations

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: list[str]) -> tuple[Network, ...]:
    """The networks of a config `Networks` list (already checked when the config loaded)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def in_networks(ip: str, nets: tuple[Network, ...]) -> bool:
    """Whether `ip` (an address as text) is in one of `nets`; False for no networks."""
    if not nets or not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in n for n in nets)
