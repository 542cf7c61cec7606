"""Azure IoT device connection strings: parse, validate, and render without secrets.

A connection string is `Key=Value` fields joined by `;`. Values may themselves
contain `=` (base64 keys end in `=` padding), so a field splits at its first `=`.
Pure: no disk, no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_certd.core.errors import UsageError

__all__ = ["ConnectionString", "ConnectionStringError", "parse_connection_string", "KEYS"]

# Every key the Azure IoT device SDKs accept, in the order they are usually written.
KEYS: tuple[str, ...] = (
    "HostName",
    "DeviceId",
    "ModuleId",
    "SharedAccessKey",
    "SharedAccessKeyName",
    "SharedAccessSignature",
    "GatewayHostName",
    "x509",
)

# Values that grant access to the hub. They never appear in output, logs or error messages.
SECRET_KEYS: frozenset[str] = frozenset({"SharedAccessKey", "SharedAccessSignature"})

REDACTED = "<redacted>"


class ConnectionStringError(UsageError):
    """A connection string is malformed or cannot be read.

    The message never contains a secret value: it names fields by key or position.

    Attributes:
        source: where the string came from (a file path, or a label such as
            "--connection-string"), or None when unknown.
    """

    def __init__(self, reason: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        where = f" ({source})" if source else ""
        super().__init__(f"invalid connection string{where}: {reason}")


@dataclass(frozen=True)
class ConnectionString:
    """One parsed device connection string. Secrets are excluded from repr()."""

    host_name: str
    device_id: str | None = None
    module_id: str | None = None
    shared_access_key: str | None = field(default=None, repr=False)
    shared_access_key_name: str | None = None
    shared_access_signature: str | None = field(default=None, repr=False)
    gateway_host_name: str | None = None
    x509: str | None = None
    # The keys in the order they were written, so redacted() reads like the input.
    order: tuple[str, ...] = field(default=(), repr=False)

    def get(self, key: str) -> str | None:
        """The value of a connection-string key such as "GatewayHostName"."""
        return getattr(self, _ATTRS[key])  # type: ignore[no-any-return]

    def redacted(self) -> str:
        """The connection string with secret values replaced by <redacted>."""
        parts = []
        for key in self.order or KEYS:
            value = self.get(key)
            if value is None:
                continue
            parts.append(f"{key}={REDACTED if key in SECRET_KEYS else value}")
        return ";".join(parts)

    def __str__(self) -> str:
        # str() is what ends up in f-strings and logs; make the safe form the default.
        return self.redacted()


_ATTRS: dict[str, str] = {
    "HostName": "host_name",
    "DeviceId": "device_id",
    "ModuleId": "module_id",
    "SharedAccessKey": "shared_access_key",
    "SharedAccessKeyName": "shared_access_key_name",
    "SharedAccessSignature": "shared_access_signature",
    "GatewayHostName": "gateway_host_name",
    "x509": "x509",
}


def parse_connection_string(text: str, source: str | None = None) -> ConnectionString:
    """Parse an Azure IoT device connection string.

    Surrounding whitespace and one trailing `;` are tolerated, because strings
    pasted from the portal or read from a file often carry them.

    Args:
        text: the connection string.
        source: where it came from, used only in error messages.

    Returns:
        The parsed connection string.

    Raises:
        ConnectionStringError: empty string, empty field, field without `=`,
            empty key or value, unknown key, duplicate key, or no HostName.
    """
    body = text.strip()
    if body.endswith(";"):
        body = body[:-1]
    if not body:
        raise ConnectionStringError("it is empty", source)
    values: dict[str, str] = {}
    order: list[str] = []
    for position, raw in enumerate(body.split(";"), start=1):
        item = raw.strip()
        if not item:
            raise ConnectionStringError(f"field {position} is empty (two ';' in a row)", source)
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            # Do not echo the field: a mangled field is often part of a key.
            raise ConnectionStringError(f"field {position} has no '=' (expected Key=Value)", source)
        if not key:
            raise ConnectionStringError(f"field {position} has no key before '='", source)
        if key not in _ATTRS:
            raise ConnectionStringError(_unknown_key_message(key, position), source)
        if key in values:
            raise ConnectionStringError(f"key {key} appears more than once", source)
        value = value.strip()
        if not value:
            raise ConnectionStringError(f"key {key} has no value", source)
        values[key] = value
        order.append(key)
    if "HostName" not in values:
        raise ConnectionStringError("HostName is missing (the IoT hub's host name)", source)
    kwargs = {_ATTRS[key]: value for key, value in values.items()}
    return ConnectionString(order=tuple(order), **kwargs)


def _unknown_key_message(key: str, position: int) -> str:
    # Keys are matched case-sensitively, as the Azure SDKs do; point out the near miss.
    for known in KEYS:
        if known.lower() == key.lower():
            return f"unknown key {key!r} in field {position} (keys are case-sensitive: {known})"
    return f"unknown key {key!r} in field {position} (known keys: {', '.join(KEYS)})"
