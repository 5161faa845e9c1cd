"""The sans-IO client protocol, on both frame paths, without any I/O."""

from __future__ import annotations

import base64
import hashlib

import h11
import pytest

from transports.frames import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, encode_close, encode_frame
from transports.errors import InvalidState
from transports.websocket import (
    Accepted,
    ClientProtocol,
    Close,
    Failure,
    InvalidHandshake,
    Ping,
    Pong,
    ProtocolState,
    Rejected,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.fixture(params=["fast", "wsproto"])
def path(request: pytest.FixtureRequest) -> str:
    return request.param


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=False)


def parse_request(data: bytes) -> h11.Request:
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    event = server.next_event()
    assert isinstance(event, h11.Request)
    return event


def accept_response(request_bytes: bytes, extra: list[tuple[str, str]] | None = None, key_override: bytes | None = None) -> bytes:
    request = parse_request(request_bytes)
    key = dict((k.lower(), v) for k, v in request.headers)[b"sec-websocket-key"]
    accept = key_override or base64.b64encode(hashlib.sha1(key + GUID).digest())
    lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Accept: " + accept]
    lines += [f"{k}: {v}".encode() for k, v in extra or []]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def open_protocol(path: str, trailing: bytes = b"", **kwargs: object) -> tuple[ClientProtocol, list[object]]:
    proto = ClientProtocol("example.test", "/ws?x=1", frame_path=path, **kwargs)  # type: ignore[arg-type]
    events = proto.receive_data(accept_response(proto.connect()) + trailing)
    assert isinstance(events[0], Accepted)
    assert proto.state is ProtocolState.OPEN
    return proto, events[1:]


def test_handshake_request_carries_subprotocols_and_headers() -> None:
    proto = ClientProtocol("example.test:8443", "/ws?x=1", subprotocols=["v1", "v2"], extra_headers=[("X-Api", "k")])
    request = parse_request(proto.connect())
    headers = {k.lower(): v for k, v in request.headers}
    assert request.target == b"/ws?x=1"
    assert headers[b"host"] == b"example.test:8443"
    assert headers[b"upgrade"] == b"websocket"
    assert headers[b"sec-websocket-version"] == b"13"
    assert headers[b"sec-websocket-protocol"] == b"v1, v2"
    assert headers[b"x-api"] == b"k"


def test_handshake_accept_with_subprotocol_and_trailing_frames(path: str) -> None:
    proto = ClientProtocol("h", subprotocols=["v2"], frame_path=path)
    response = accept_response(proto.connect(), [("Sec-WebSocket-Protocol", "v2")])
    events = proto.receive_data(response + server_frame(OP_TEXT, b'{"a":1}'))
    assert events == [Accepted("v2", events[0].headers), '{"a":1}']  # type: ignore[attr-defined]
    assert proto.subprotocol == "v2"


def test_handshake_answer_split_byte_by_byte(path: str) -> None:
    proto = ClientProtocol("h", frame_path=path)
    data = accept_response(proto.connect()) + server_frame(OP_BINARY, b"\x00\x01")
    events: list[object] = []
    for i in range(len(data)):
        events += proto.receive_data(data[i : i + 1])
    assert isinstance(events[0], Accepted) and events[1:] == [b"\x00\x01"]


def test_handshake_rejected_429_exposes_status_and_retry_after() -> None:
    proto = ClientProtocol("h")
    proto.connect()
    answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nslow"
    (event,) = proto.receive_data(answer)
    assert isinstance(event, Rejected)
    assert event.status == 429 and event.retry_after == 7.0 and event.body == b"slow"
    assert event.header("retry-after") == "7"
    assert proto.state is ProtocolState.CLOSED


def test_rejection_without_length_ends_at_eof() -> None:
    proto = ClientProtocol("h")
    proto.connect()
    assert proto.receive_data(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\npart") == []
    (event,) = proto.receive_eof()
    assert isinstance(event, Rejected) and event.status == 503 and event.body == b"part"
    assert event.retry_after is None


@pytest.mark.parametrize(
    "extra, key, message",
    [
        ([], b"wrong", "Sec-WebSocket-Accept"),
        ([("Sec-WebSocket-Protocol", "nope")], None, "did not offer"),
        ([("Sec-WebSocket-Extensions", "permessage-deflate")], None, "extension"),
    ],
)
def test_invalid_handshake_answers_raise(extra: list[tuple[str, str]], key: bytes | None, message: str) -> None:
    proto = ClientProtocol("h")
    with pytest.raises(InvalidHandshake, match=message):
        proto.receive_data(accept_response(proto.connect(), extra, key_override=key))


def test_garbage_instead_of_http_raises() -> None:
    proto = ClientProtocol("h")
    proto.connect()
    with pytest.raises(InvalidHandshake):
        proto.receive_data(b"\x81\x05hello\r\n\r\n")


def test_eof_before_answer_raises() -> None:
    proto = ClientProtocol("h")
    proto.connect()
    with pytest.raises(InvalidHandshake):
        proto.receive_eof()


def test_fragmented_messages_reassembled_with_control_interleaved(path: str) -> None:
    proto, _ = open_protocol(path)
    data = (
        server_frame(OP_TEXT, "héllo ".encode()[:2], fin=False)
        + server_frame(OP_PING, b"p")
        + server_frame(OP_CONT, "héllo ".encode()[2:], fin=False)
        + server_frame(OP_CONT, b"world")
        + server_frame(OP_BINARY, b"ab", fin=False)
        + server_frame(OP_CONT, b"cd")
    )
    events = proto.receive_data(data)
    assert events == [Ping(b"p"), "héllo world", b"abcd"]
    # the ping was answered with a masked pong carrying the same payload
    pong = proto.data_to_send()
    assert pong[0] == 0x80 | OP_PONG and pong[1] == 0x80 | 1


def test_max_message_size_fails_with_1009(path: str) -> None:
    proto, _ = open_protocol(path, max_message_size=10)
    events = proto.receive_data(server_frame(OP_TEXT, b"12345", fin=False) + server_frame(OP_CONT, b"678901"))
    assert [type(e) for e in events] == [Failure] and events[0].code == 1009  # type: ignore[attr-defined]
    assert proto.close_sent is not None and proto.close_sent[0] == 1009
    close = proto.data_to_send()
    assert close[0] == 0x88 and int.from_bytes(mask_off(close)[:2], "big") == 1009
    assert proto.state is ProtocolState.CLOSED
    assert proto.receive_data(server_frame(OP_TEXT, b"x")) == []


def test_message_at_the_limit_is_accepted(path: str) -> None:
    proto, _ = open_protocol(path, max_message_size=10)
    assert proto.receive_data(server_frame(OP_TEXT, b"12345", fin=False) + server_frame(OP_CONT, b"67890")) == ["1234567890"]


def test_ping_answered_with_pong(path: str) -> None:
    proto, _ = open_protocol(path)
    assert proto.receive_data(server_frame(OP_PING, b"hb-1")) == [Ping(b"hb-1")]
    pong = proto.data_to_send()
    assert pong[0] == 0x8A and mask_off(pong) == b"hb-1"
    assert proto.receive_data(server_frame(OP_PONG, b"x")) == [Pong(b"x")]
    assert proto.data_to_send() == b""


def test_server_close_code_surfaced_and_echoed(path: str) -> None:
    proto, _ = open_protocol(path)
    events = proto.receive_data(encode_close(4001, "maintenance", mask=False))
    assert events == [Close(4001, "maintenance")]
    assert proto.close_received == (4001, "maintenance")
    reply = proto.data_to_send()
    assert reply[0] == 0x88 and int.from_bytes(mask_off(reply)[:2], "big") == 4001
    assert proto.state is ProtocolState.CLOSED


def test_empty_server_close_gets_empty_reply(path: str) -> None:
    proto, _ = open_protocol(path)
    assert proto.receive_data(encode_close(None, mask=False)) == [Close(1005, "")]
    reply = proto.data_to_send()
    assert reply[0] == 0x88 and reply[1] == 0x80  # masked, zero-length payload


def test_client_close_then_server_reply(path: str) -> None:
    proto, _ = open_protocol(path)
    frame = proto.send_close(1000, "bye")
    assert frame[0] == 0x88 and mask_off(frame) == b"\x03\xe8bye"
    assert proto.state is ProtocolState.CLOSING
    assert proto.send_close() == b""  # idempotent
    assert proto.receive_data(server_frame(OP_TEXT, b"late") + encode_close(1000, mask=False)) == ["late", Close(1000, "")]
    assert proto.data_to_send() == b""  # no second close frame
    assert proto.state is ProtocolState.CLOSED


def test_invalid_utf8_fails_with_1007(path: str) -> None:
    proto, _ = open_protocol(path)
    (event,) = proto.receive_data(server_frame(OP_TEXT, b"ok\xff"))
    assert isinstance(event, Failure) and event.code == 1007


def test_reserved_bits_fail_with_1002(path: str) -> None:
    proto, _ = open_protocol(path)
    frame = bytearray(server_frame(OP_TEXT, b"x"))
    frame[0] |= 0x40
    (event,) = proto.receive_data(bytes(frame))
    assert isinstance(event, Failure) and event.code == 1002


def test_sent_frames_are_masked_and_roundtrip(path: str) -> None:
    proto, _ = open_protocol(path)
    frame = proto.send_text("héllo")
    assert frame[0] == 0x81 and frame[1] & 0x80
    assert mask_off(frame) == "héllo".encode()
    big = proto.send_bytes(b"z" * 70000)
    assert big[1] == 0x80 | 127 and mask_off(big) == b"z" * 70000


def test_cannot_send_before_open_or_after_close() -> None:
    proto = ClientProtocol("h")
    with pytest.raises(InvalidState):
        proto.send_text("x")
    with pytest.raises(ValueError):
        proto.send_close(1005)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="frame_path"):
        ClientProtocol("h", frame_path="turbo")
    with pytest.raises(ValueError, match="max_message_size"):
        ClientProtocol("h", max_message_size=0)


def mask_off(frame: bytes) -> bytes:
    """Unmask a client frame's payload (test helper)."""
    length = frame[1] & 0x7F
    offset = 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(frame[2:10], "big"), 10
    key = frame[offset : offset + 4]
    payload = frame[offset + 4 : offset + 4 + length]
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    "host, resource, extra",
    [
        ("h", "/", [("X-Api-Key", "sécret-ünicode")]),  # not ASCII
        ("h", "/", [("X-Api-Key", "secret\r\nX-Evil: 1")]),  # header injection: h11 refuses
        ("h", "/ws?key=sécret", []),  # the target
        ("hôst", "/", []),
    ],
)
def test_unsendable_request_is_a_value_error_that_does_not_quote_it(
    host: str, resource: str, extra: list[tuple[str, str]]
) -> None:
    proto = ClientProtocol(host, resource, extra_headers=extra)
    with pytest.raises(ValueError) as info:
        proto.connect()
    assert "invalid handshake request" in str(info.value)
    assert "cret" not in str(info.value) and "hôst" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_request_bytes_are_what_h11_would_send_for_str_headers() -> None:
    proto = ClientProtocol("example.com:8443", "/ws?a=1", subprotocols=["v1", "v2"], extra_headers=[("X-A", "b c")])
    key = proto._key.decode()
    reference = h11.Connection(h11.CLIENT).send(
        h11.Request(
            method="GET",
            target="/ws?a=1",
            headers=[
                ("Host", "example.com:8443"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Protocol", "v1, v2"),
                ("X-A", "b c"),
            ],
        )
    )
    assert proto.connect() == reference


def test_masking_keys_come_from_os_urandom_a_pool_at_a_time_and_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 6455 5.3: a fresh unpredictable key per frame; drawn 64 bytes (16 keys) per syscall."""
    import os

    from transports import websocket
    from transports.frames import mask_payload

    proto, _ = open_protocol("fast")
    draws: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        draws.append(n)
        return real(n)

    monkeypatch.setattr(websocket.os, "urandom", counting)
    keys = []
    for i in range(200):
        # (both ways a key is taken: send_text through _mask_key, send_text_utf8 inline)
        frame = proto.send_text(f"message {i}") if i % 3 else proto.send_text_utf8(f"message {i}".encode())
        assert frame[1] & 0x80  # masked
        key, body = frame[2:6], frame[6:]
        assert mask_payload(body, key) == f"message {i}".encode()
        keys.append(key)
    assert draws == [64] * 13  # 200 frames: pools of 16 keys
    assert len(set(keys)) > 190  # (a collision of random 32-bit keys is possible, rarely)
