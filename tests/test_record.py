"""The recorder (transports/record.py): JSONL lines per frame, client frames unmasked, secrets never written."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from engine.cli import main
from recordings import API_KEY, API_SECRET, run_session, sim
from transports.base import parse_url
from transports.encode import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, encode_close, encode_frame
from transports.memory import memory_pair
from transports.record import REDACTED, Recorder, Redaction
from transports.replay import Recording


def lines_of(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


@pytest.mark.anyio
async def test_a_login_session_keeps_no_secret_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "session.jsonl"
    with anyio.fail_after(120), path.open("w") as file:
        async with sim() as exchange:
            recorder = Recorder(file, connection="private")
            await run_session(recorder.wrap(exchange.dialer()), exchange.drop, seconds=1.0)
    raw = path.read_bytes()
    assert API_KEY.encode() not in raw
    assert API_SECRET.encode() not in raw
    assert b"LK-0123456789abcdef" not in raw  # the listen key in the URL's query
    assert not re.search(rb"[0-9a-f]{64}", raw)  # no HMAC-SHA256 signature (hex)
    lines = lines_of(raw.decode())
    logins = [orjson.loads(line["text"]) for line in lines if line.get("dir") == "out" and '"login"' in line.get("text", "")]
    assert len(logins) == 2  # one per session (the sim dropped the first)
    assert all(login["key"] == REDACTED and login["signature"] == REDACTED for login in logins)
    assert all(login["nonce"].startswith("n-") for login in logins)  # only the secrets go
    heads = [line for line in lines if line["kind"] == "handshake" and line["dir"] == "out"]
    assert heads and all(dict(h["headers"])["X-MBX-APIKEY"] == REDACTED for h in heads)
    assert all(h["start"][1] == "/private?listenKey=***" for h in heads)
    # and the file is a complete recording: header, two dials, frames both ways, the reset
    assert lines[0] == {"kind": "recording", "version": 1}
    assert [line["session"] for line in lines if line["kind"] == "dial"] == [1, 2]
    assert [line["error"] for line in lines if line["kind"] == "reset"] == ["BrokenResourceError"]
    assert {line["dir"] for line in lines if line["kind"] == "frame"} == {"in", "out"}
    assert len(Recording.load(path).sessions) == 2


async def _echo_frames(frames: list[bytes], client_sends: list[bytes]) -> str:
    """Record a client end that sends ``client_sends`` and receives ``frames`` (after a fake 101)."""
    buffer = io.StringIO()
    client, server = memory_pair()

    async def dial(url: Any) -> Any:
        return client

    stream = await Recorder(buffer, connection="c", clock=lambda: 1.5).wrap(dial)(parse_url("ws://x/"))
    for data in client_sends:
        await stream.send(data)
    await server.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSet-Cookie: sid=abc\r\n\r\n" + b"".join(frames))
    await stream.receive()
    await server.aclose()
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()
    await stream.aclose()
    return buffer.getvalue()


@pytest.mark.anyio
async def test_frames_become_one_line_each_with_their_opcode_and_payload() -> None:
    frames = [
        encode_frame(OP_TEXT, b'{"a":1}', mask=False),
        encode_frame(OP_BINARY, b"\x00\xff", mask=False),
        encode_frame(OP_TEXT, "h\u00e9".encode()[:2], fin=False, mask=False),  # a fragment cut inside a character
        encode_frame(OP_CONT, "h\u00e9".encode()[2:], mask=False),
        encode_frame(OP_PING, b"hi", mask=False),
        encode_close(1001, "bye", mask=False),
    ]
    client = [
        b"GET /ws?token=T0K&x=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer T0K\r\nSec-WebSocket-Key: abc\r\n\r\n",
        encode_frame(OP_TEXT, b'{"op":"auth","args":{"apiKey":"K3Y","ts":1}}'),  # masked, as a client sends
    ]
    lines = lines_of(await _echo_frames(frames, client))
    assert lines[0] == {"kind": "recording", "version": 1}
    assert lines[1] == {"t": 1.5, "conn": "c", "session": 1, "kind": "dial", "url": "ws://x/"}
    out = [line for line in lines if line.get("dir") == "out"]
    assert out[0]["start"] == ["GET", "/ws?token=***&x=1", "HTTP/1.1"]
    assert dict(out[0]["headers"]) == {"Host": "x", "Authorization": REDACTED, "Sec-WebSocket-Key": "abc"}
    assert out[1]["text"] == '{"op":"auth","args":{"apiKey":"***","ts":1}}'  # unmasked, then redacted
    assert out[2] == {"t": 1.5, "conn": "c", "session": 1, "dir": "out", "kind": "close"}
    inbound = [{k: v for k, v in line.items() if k not in ("t", "conn", "session", "dir")} for line in lines if line.get("dir") == "in"]
    assert inbound == [
        {"kind": "handshake", "start": ["HTTP/1.1", "101", "Switching Protocols"],
         "headers": [["Upgrade", "websocket"], ["Set-Cookie", REDACTED]], "read": 1},
        {"kind": "frame", "op": "text", "text": '{"a":1}', "read": 1},
        {"kind": "frame", "op": "binary", "b64": base64.b64encode(b"\x00\xff").decode(), "read": 1},
        {"kind": "frame", "op": "text", "fin": False, "b64": base64.b64encode("h\u00e9".encode()[:2]).decode(), "read": 1},
        {"kind": "frame", "op": "cont", "b64": base64.b64encode("h\u00e9".encode()[2:]).decode(), "read": 1},
        {"kind": "frame", "op": "ping", "b64": base64.b64encode(b"hi").decode(), "read": 1},
        {"kind": "frame", "op": "close", "code": 1001, "reason": "bye", "read": 1},
        {"kind": "eof", "read": 2},
    ]  # fmt: skip


@pytest.mark.anyio
async def test_a_failed_dial_is_a_line_and_still_raises() -> None:
    buffer = io.StringIO()

    async def refuse(url: Any) -> Any:
        raise ConnectionRefusedError("refused (test)")

    with pytest.raises(ConnectionRefusedError):
        await Recorder(buffer, clock=lambda: 0.0).wrap(refuse, connection="a")(parse_url("ws://x/k?apiKey=1"))
    line = lines_of(buffer.getvalue())[1]
    assert line == {
        "t": 0.0, "conn": "a", "session": 1, "kind": "dial_failed",
        "error": "ConnectionRefusedError", "message": "refused (test)", "url": "ws://x/k?apiKey=***",
    }  # fmt: skip


def test_redaction_rules() -> None:
    rules = Redaction()
    nested = '{"params":{"api_key":"a","Signature":"b","list":[{"passphrase":"c"},{"ok":1}]},"listenKey":"d","sign":null}'
    assert orjson.loads(rules.text(nested)) == {
        "params": {"api_key": REDACTED, "Signature": REDACTED, "list": [{"passphrase": REDACTED}, {"ok": 1}]},
        "listenKey": REDACTED,
        "sign": None,
    }
    untouched = '{"channel": "ticker", "keys": [1], "monkey": "x"}'
    assert rules.text(untouched) == untouched  # unchanged text is kept byte for byte (no re-encoding)
    assert rules.text("not json {") == "not json {"
    assert rules.secret_header("OK-ACCESS-SIGN") and rules.secret_header("x-mbx-apikey")
    assert not rules.secret_header("Sec-WebSocket-Key") and not rules.secret_header("Content-Type")
    own = Redaction(fields=["acct"], headers=["X-Session"], patterns=[r"/ws/([A-Za-z0-9]{8,})", r"Bearer \S+"])
    assert own.text('{"acct":"1","key":"2"}') == '{"acct":"***","key":"***"}'
    assert own.secret_header("x-session")
    assert own.target("/ws/AbCdEf123456?token=t") == "/ws/***?token=***"
    assert own.scrub("auth Bearer xyz ok") == "auth *** ok"
    bare = Redaction(defaults=False, fields=["only"])
    assert bare.text('{"key":"k","only":"o"}') == '{"key":"k","only":"***"}'
    with pytest.raises(ValueError, match="is not a regular expression"):
        Redaction(patterns=["(unclosed"])
    with pytest.raises(TypeError, match="text file or a callable"):
        Recorder(42)  # type: ignore[arg-type]


# -- the CLI -------------------------------------------------------------------------------


def test_cli_records_the_embedded_sim_and_replays_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.jsonl"
    assert main(["record", "--out", str(path), "--duration", "0.3"]) == 0
    recorded = capsys.readouterr().out
    assert "sim: subscribing -> live on subscribed" in recorded
    assert f"to {path}" in recorded
    assert Recording.load(path).sessions
    assert main(["replay", str(path), "--strict"]) == 0
    replayed = capsys.readouterr().out
    assert "sim: subscribing -> live on subscribed" in replayed
    assert "sim: live -> closing on close" in replayed
    assert "mismatch" not in replayed
    messages = [line.split("] ", 1)[1] for line in recorded.splitlines() if '"channel":"ticker"' in line]
    assert messages and all(m in replayed for m in messages)


def test_cli_on_a_virtual_clock_replays_exactly_what_it_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A virtual minute with a drop at 20 s: recorded in moments, replayed line for line."""
    path = tmp_path / "virtual.jsonl"
    assert main(["record", "--out", str(path), "--duration", "60", "--drop-at", "20", "--virtual"]) == 0
    recorded = capsys.readouterr().out.splitlines()
    assert recorded[-1].startswith("recorded ") and "2 session(s)" in recorded[-1]
    assert "[   20.000] sim: live -> reconnecting on lost" in "\n".join(recorded)
    assert main(["replay", str(path), "--strict", "--virtual"]) == 0
    replayed = capsys.readouterr().out.splitlines()
    assert replayed == recorded[:-1]
    assert sum('"channel":"ticker"' in line for line in replayed) >= 230  # 4/s for 60 s, less the reconnect


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("garbage\n", ":1: not JSON"),
        ('{"kind":"recording","version":1}\n', "has no sessions"),
    ],
)
def test_cli_replay_of_a_missing_or_bad_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, expected: str
) -> None:
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_record_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["record", "--out", str(tmp_path / "no" / "such" / "dir.jsonl")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["record", "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["record", "--out", str(tmp_path / "x.jsonl"), "http://example.com/"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "scheme must be ws or wss" in err and err.count("\n") == 1
    assert main(["record", "--out", str(tmp_path / "x.jsonl"), "--virtual", "ws://127.0.0.1:1/ws"]) == 2
    assert "need the embedded simulator" in capsys.readouterr().err
