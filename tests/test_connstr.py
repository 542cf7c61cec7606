"""Azure IoT device connection strings: every key, every way to get one wrong."""

from __future__ import annotations

import pytest

from edge_certd.core.errors import EdgeCertdError
from edge_certd.diagnose.connstr import (
    KEYS,
    ConnectionString,
    ConnectionStringError,
    parse_connection_string,
)

KEY = "c2VjcmV0LWtleS13aXRoLXBhZGRpbmc="  # base64 with '=' padding inside the value
SAS = "SharedAccessSignature sr=hub.azure-devices.net%2Fdevices%2Fdev1&sig=abc%3D&se=1700000000"

EVERY_KEY = (
    "HostName=hub.azure-devices.net;DeviceId=dev1;ModuleId=mod1;"
    f"SharedAccessKey={KEY};SharedAccessKeyName=iothubowner;"
    f"SharedAccessSignature={SAS};GatewayHostName=gw.contoso.local;x509=true"
)


def test_every_key_is_parsed_and_values_keep_their_equals_signs() -> None:
    cs = parse_connection_string(EVERY_KEY)
    assert cs.host_name == "hub.azure-devices.net"
    assert cs.device_id == "dev1"
    assert cs.module_id == "mod1"
    assert cs.shared_access_key == KEY
    assert cs.shared_access_key_name == "iothubowner"
    assert cs.shared_access_signature == SAS
    assert cs.gateway_host_name == "gw.contoso.local"
    assert cs.x509 == "true"
    assert [cs.get(k) is not None for k in KEYS] == [True] * len(KEYS)


def test_typical_device_string_without_optional_keys() -> None:
    text = f"HostName=hub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY}"
    cs = parse_connection_string(text)
    assert cs.gateway_host_name is None
    assert cs.module_id is None


def test_trailing_semicolon_and_newline_from_a_file_are_tolerated() -> None:
    cs = parse_connection_string("HostName=h;DeviceId=d;GatewayHostName=gw;\n")
    assert cs.gateway_host_name == "gw"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (";", "empty"),
        ("HostName=h;;DeviceId=d", "field 2 is empty"),
        ("HostName=h;DeviceId", "field 2 has no '='"),
        ("HostName=h;=value", "no key"),
        ("HostName=h;Colour=blue", "unknown key 'Colour'"),
        ("HostName=h;hostname=x", "case-sensitive: HostName"),
        ("HostName=h;DeviceId=a;DeviceId=b", "DeviceId appears more than once"),
        ("HostName=h;DeviceId=", "DeviceId has no value"),
        ("DeviceId=d;SharedAccessKey=" + KEY, "HostName is missing"),
    ],
)
def test_malformed_strings_raise_a_specific_error(text: str, reason: str) -> None:
    with pytest.raises(ConnectionStringError) as info:
        parse_connection_string(text, source="device.conn")
    assert isinstance(info.value, EdgeCertdError)
    assert reason in str(info.value)
    assert info.value.source == "device.conn"
    assert "device.conn" in str(info.value)


def test_error_messages_never_echo_a_secret() -> None:
    # A key pasted without its "SharedAccessKey=" prefix must not end up in the error.
    with pytest.raises(ConnectionStringError) as info:
        parse_connection_string(f"HostName=h;DeviceId=d;{KEY}")
    assert KEY not in str(info.value)
    with pytest.raises(ConnectionStringError) as info:
        parse_connection_string(f"HostName=h;SharedAccessKey={KEY};SharedAccessKey={KEY}")
    assert KEY not in str(info.value)


def test_redacted_rendering_hides_both_secrets_and_keeps_the_order() -> None:
    cs = parse_connection_string(EVERY_KEY)
    shown = cs.redacted()
    assert KEY not in shown and "sig=" not in shown
    assert "SharedAccessKey=<redacted>" in shown
    assert "SharedAccessSignature=<redacted>" in shown
    assert shown.startswith("HostName=hub.azure-devices.net;DeviceId=dev1;ModuleId=mod1;")
    assert shown.endswith("GatewayHostName=gw.contoso.local;x509=true")


def test_str_and_repr_never_show_secrets() -> None:
    cs = parse_connection_string(EVERY_KEY)
    for text in (str(cs), repr(cs), f"{cs}"):
        assert KEY not in text
        assert "sig=abc" not in text
    assert "gw.contoso.local" in repr(cs)


def test_redacted_without_recorded_order_uses_the_usual_key_order() -> None:
    cs = ConnectionString(host_name="h", shared_access_key=KEY, device_id="d")
    assert cs.redacted() == "HostName=h;DeviceId=d;SharedAccessKey=<redacted>"
