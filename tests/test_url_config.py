"""URL errors never show secrets; port 0 is refused; ``subprotocols="json"`` is one name (issue 15)."""

from __future__ import annotations

import traceback

import pytest

from engine import ConfigError, ConnectionSetup
from transports.base import InvalidURL, parse_url, redact_url

SECRET = "SEKRIT"

# (bad URL with the secret in its query, userinfo, fragment, path or port position, what the error says)
BAD_URLS = [
    ("wss://ex.com:99999/ws?token=SEKRIT", "port must be a number from 1 to 65535"),
    ("wss://ex.com:notaport/ws?token=SEKRIT", "port must be a number from 1 to 65535"),
    ("wss://ex.com:-1/ws?token=SEKRIT", "port must be a number from 1 to 65535"),
    ("wss://ex.com:0/ws?token=SEKRIT", "port 0 is not a usable port"),
    ("wss://user:SEKRIT@ex.com/ws", "credentials in the URL are not supported"),
    ("wss://SEKRIT@ex.com/ws", "credentials in the URL are not supported"),
    ("wss://ex.com/ws#SEKRIT", "cannot have a #fragment"),
    ("wss://ex.com/ws/SEKRIT?x=1#frag", "cannot have a #fragment"),
    ("https://ex.com/ws?apikey=SEKRIT", "scheme must be ws or wss, not 'https' (use ws:// or wss://)"),
    ("ex.com/ws?token=SEKRIT", "scheme must be ws or wss, not missing"),
    ("SEKRIT", "scheme must be ws or wss, not missing"),
    ("ws://[::1/ws?token=SEKRIT", "unbalanced [ ] around the host"),
    ("wss:///ws?token=SEKRIT", "no host"),
    ("wss://:SEKRIT@/ws", "no host"),
    # a password holding a ? # or / cuts the authority short: the host part itself is suspect
    ("wss://user:pa?SEKRIT@ex.com/ws", "port must be a number"),
    ("wss://user:pa#SEKRIT@ex.com/ws", "port must be a number"),
    ("wss://user:pa/SEKRIT@ex.com/ws", "port must be a number"),
    # the secret where a port goes (someone wrote key:secret without a host)
    ("wss://apikey:SEKRIT/ws", "port must be a number"),
]


def _everything_shown(exc: BaseException) -> str:
    """str, repr and the full printed traceback (with chained causes and contexts)."""
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("url, problem", BAD_URLS)
def test_invalid_url_errors_say_what_is_wrong_without_the_secret(url: str, problem: str) -> None:
    with pytest.raises(InvalidURL) as info:
        parse_url(url)
    assert problem in str(info.value)
    assert SECRET not in _everything_shown(info.value)


@pytest.mark.parametrize("url, problem", BAD_URLS)
def test_config_errors_name_the_field_without_the_secret(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionSetup(url=url, handler=print)
    message = str(info.value)
    assert message.startswith("ConnectionSetup.url: ") and problem in message
    assert SECRET not in _everything_shown(info.value)


def test_the_issue_example_shows_host_and_port_with_markers() -> None:
    with pytest.raises(ConfigError) as info:
        ConnectionSetup(url="wss://ex.com:99999/ws?token=SEKRIT", handler=print)
    assert str(info.value) == (
        "ConnectionSetup.url: 'wss://ex.com:99999/***?***': the port must be a number from 1 to 65535"
    )


@pytest.mark.parametrize(
    "url, shown",
    [
        ("wss://user:pw@ex.com:9443/ws/KEY?token=T#frag", "wss://***@ex.com:9443/***?***#***"),
        ("ws://ex.com/", "ws://ex.com/"),
        ("ws://ex.com", "ws://ex.com"),
        ("ws://[::1]:8080/ws", "ws://[::1]:8080/***"),
        ("ws://ex.com:port/", "ws://ex.com:***/"),
        ("ws://ex.com/?q", "ws://ex.com/?***"),
        ("ex.com/ws", "***"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_port_zero_is_refused_not_replaced_by_the_default() -> None:
    with pytest.raises(InvalidURL, match="port 0 is not a usable port"):
        parse_url("ws://host:0/")
    with pytest.raises(ConfigError, match="ConnectionSetup.url: .*port 0 is not a usable port"):
        ConnectionSetup(url="wss://host:0/", handler=print)
    # the ports around it, and an empty port (the default), still work
    assert parse_url("ws://host:1/").port == 1
    assert parse_url("wss://host:65535/").port == 65535
    assert parse_url("ws://host:/").port == 80


@pytest.mark.parametrize(
    "value, expected",
    [
        ("json", ("json",)),
        (["json", "msgpack"], ("json", "msgpack")),
        (("v1.stream",), ("v1.stream",)),
        ((name for name in ["a", "b"]), ("a", "b")),
        ((), ()),
    ],
)
def test_subprotocols_a_string_is_one_name(value: object, expected: tuple[str, ...]) -> None:
    assert ConnectionSetup(url="ws://h/", handler=print, subprotocols=value).subprotocols == expected


@pytest.mark.parametrize("value", [5, None, 1.5, object()])
def test_subprotocols_not_a_string_nor_iterable_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^ConnectionSetup\.subprotocols must be a string or a sequence of strings"):
        ConnectionSetup(url="ws://h/", handler=print, subprotocols=value)


def test_subprotocols_of_non_strings_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"ConnectionSetup\.subprotocols: invalid name"):
        ConnectionSetup(url="ws://h/", handler=print, subprotocols=b"json")
