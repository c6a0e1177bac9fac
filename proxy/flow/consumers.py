"""Consumer identity: a configured key, else the peer address (X-Forwarded-For if trusted)."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.core.errors import Forbidden, Unauthorized
from proxy.settings import ConsumerSettings, ConsumerSpec

PEER_LABEL = "peer"


@dataclass(frozen=True, slots=True)
class Consumer:
    """Who is asking: `name` is what logs show, `label` what metrics show (bounded)."""

    name: str
    label: str
    weight: float
    priority: str
    spec: ConsumerSpec | None = None


class Consumers:
    def __init__(self, settings: ConsumerSettings) -> None:
        self._settings = settings
        self._keys = [(spec.key.encode(), spec) for spec in settings.keys]

    def identify(self, peer: str | None, headers: Mapping[str, str]) -> Consumer:
        presented = headers.get("X-PKProxy-Key")
        if self._keys:
            spec = self._match_key(presented)
            if spec is not None:
                return Consumer(spec.name, spec.name, spec.weight, spec.priority, spec)
            if presented is not None:
                raise Unauthorized("401: unknown X-PKProxy-Key", "key_wrong")
            if self._settings.require_key:
                raise Unauthorized(
                    "401: this proxy requires an X-PKProxy-Key header", "key_missing"
                )
        address = self.client_address(peer, headers.get("X-Forwarded-For"))
        return Consumer(
            address, PEER_LABEL, self._settings.default_weight, self._settings.default_priority
        )

    def _match_key(self, presented: str | None) -> ConsumerSpec | None:
        if presented is None:
            return None
        candidate = presented.encode("utf-8", "surrogateescape")
        found = None
        # Compare against every key, in constant time each, so timing reveals nothing.
        for key, spec in self._keys:
            if hmac.compare_digest(key, candidate):
                found = spec
        return found

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str:
        """The peer, or the nearest untrusted hop of X-Forwarded-For if the peer is trusted."""
        address = peer or "unknown"
        if not forwarded_for or not self._is_trusted(address):
            return address
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return address
            address = hop
            if not self._is_trusted(hop):
                break
        return address

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._settings.trusted_proxies)

    def ops_allowed(self, peer: str | None, headers: Mapping[str, str]) -> None:
        """The proxy's status, metrics and admin endpoints show consumer names and act on
        the shared cache: when keys are required, they need a consumer key marked `ops`."""
        if not self._settings.require_key:
            return
        consumer = self.identify(peer, headers)
        if consumer.spec is None or not consumer.spec.ops:
            raise Forbidden("403: this endpoint needs a consumer key with ops = true", "not_ops")
