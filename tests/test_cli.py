"""The ``wirestate`` console script: input errors, Ctrl-C on both backends, diagrams --check, ``sim``.

Subprocess tests run real processes on the real clock (loopback only) with hard
timeouts; nothing here sleeps to measure time.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import wsproto.events as wse
from wsproto import ConnectionType, WSConnection

import engine.demo
from engine.errors import ConnectionClosed
from engine.cli import main
from engine.sim.serve import run_interruptible

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["asyncio", "trio"]
needs_sigint = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit code, stdout, stderr); argparse's SystemExit counts as a return."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# -- input errors: one line on stderr, exit code 2 ----------------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        (["demo", "--duration", "nan"], "must be a finite number of seconds"),
        (["demo", "--duration", "inf"], "must be a finite number of seconds"),
        (["demo", "--duration", "1e400"], "must be a finite number of seconds"),
        (["demo", "--duration", "-1"], "must be at least 1 s"),
        (["demo", "--duration", "0"], "must be at least 1 s"),
        (["demo", "--duration", "0.001"], "must be at least 1 s"),
        (["demo", "--duration", "soon"], "is not a number of seconds"),
        (["demo", "--backend", "curio"], "invalid choice"),
        (["sim", "--port", "70000"], "must be 0 (any free port) to 65535"),
        (["sim", "--port", "-1"], "must be 0 (any free port) to 65535"),
        (["sim", "--port", "http"], "is not a port number"),
        (["sim", "--duration", "0"], "must be more than 0 s"),
        (["sim", "--duration", "nan"], "must be a finite number of seconds"),
        ([], "required"),
    ],
)
def test_input_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], says: str) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wirestate") and "error:" in lines[0] and says in lines[0]


def test_duration_bounds_are_accepted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[float, str]] = []
    monkeypatch.setattr(engine.demo, "run_demo", lambda duration, backend: seen.append((duration, backend)) or 0)
    assert run_cli(capsys, "demo", "--duration", "1")[0] == 0
    assert run_cli(capsys, "demo", "--duration", "2.5", "--backend", "trio")[0] == 0
    assert seen == [(1.0, "asyncio"), (2.5, "trio")]


# -- Ctrl-C: "interrupted", exit 0, on both backends ---------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_inside_task_groups_is_one_plain_interrupt(backend: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async def interrupted_deep_down(duration: float) -> None:
        async with anyio.create_task_group() as outer:
            outer.start_soon(anyio.sleep_forever)
            async with anyio.create_task_group() as inner:
                inner.start_soon(anyio.sleep_forever)
                await anyio.sleep(0)
                raise KeyboardInterrupt

    monkeypatch.setattr(engine.demo, "_demo", interrupted_deep_down)
    assert engine.demo.run_demo(duration=5.0, backend=backend) == 0
    assert capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_real_error_next_to_an_interrupt_is_not_hidden(backend: str) -> None:
    async def fails_and_interrupted() -> None:
        async def fail() -> None:
            raise ValueError("real")

        async with anyio.create_task_group() as tg:
            tg.start_soon(fail)
            raise KeyboardInterrupt

    with pytest.raises(BaseExceptionGroup) as info:
        run_interruptible(fails_and_interrupted, backend=backend)
    assert info.value.subgroup(ValueError) is not None


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_interrupt_that_closed_a_connection_is_still_one_interrupt(backend: str) -> None:
    """On trio the interrupt may land in a connection's task; whoever waited on it sees ConnectionClosed."""

    async def interrupted_in_a_connection() -> None:
        async def connection_task() -> None:
            await anyio.sleep(0.01)  # the waiter is waiting by then
            raise KeyboardInterrupt

        async def waiter() -> None:
            try:
                await anyio.sleep_forever()
            finally:  # the connection closed under the wait
                raise ConnectionClosed("sim-1: closed (cancelled)")

        async with anyio.create_task_group() as tg:
            tg.start_soon(connection_task)
            tg.start_soon(waiter)

    with pytest.raises(KeyboardInterrupt):
        run_interruptible(interrupted_in_a_connection, backend=backend)


class Cli:
    """``python -m engine.cli ...`` in a child process, its output read by threads (bounded waits)."""

    def __init__(self, *argv: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, None), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(pipe: object, into: list[str], lines: queue.Queue[str | None] | None) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            into.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)

    def wait_line(self, wanted: Callable[[str], bool], timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout} s; stdout so far: {''.join(self.out)!r}") from None
            if line is None:
                raise AssertionError(f"exited early ({self.proc.wait(5)}): {''.join(self.out)}{''.join(self.err)}")
            if wanted(line):
                return line

    def interrupt(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.finish(timeout)

    def finish(self, timeout: float = 15.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@needs_sigint
@pytest.mark.parametrize("backend", BACKENDS)
def test_demo_ctrl_c_prints_interrupted_and_exits_0(backend: str) -> None:
    cli = Cli("demo", "--backend", backend, "--duration", "30")
    try:
        cli.wait_line(lambda line: line.startswith("simulated exchange listening"))
        cli.wait_line(lambda line: line.startswith("--- connecting"))  # inside the Connection's task groups
        code = cli.interrupt()
    finally:
        cli.kill()
    err = "".join(cli.err)
    # (trio may print its own RuntimeWarning when the interrupt lands inside its socket code)
    lines = [line for line in err.strip().splitlines() if "RuntimeWarning" not in line and not line.startswith(" ")]
    assert (code, lines[-1:]) == (0, ["interrupted"]), err
    assert "Traceback" not in err and "Exception Group" not in err, err
    assert "done:" not in "".join(cli.out)


# -- wirestate sim -------------------------------------------------------------------------------


def subscribe_over_a_raw_socket(port: int, timeout: float = 10.0) -> list[dict[str, object]]:
    """Handshake with wsproto over a blocking socket, subscribe, return the messages up to the first data."""
    deadline = time.monotonic() + timeout
    ws = WSConnection(ConnectionType.CLIENT)
    got: list[dict[str, object]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(ws.send(wse.Request(host=f"127.0.0.1:{port}", target="/ws")))
        text = ""
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            assert data, "the sim closed the connection"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wse.AcceptConnection):
                    request = {"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 7}
                    sock.sendall(ws.send(wse.Message(data=json.dumps(request))))
                elif isinstance(event, wse.TextMessage):
                    text += event.data
                    if event.message_finished:
                        got.append(json.loads(text))
                        text = ""
                else:
                    raise AssertionError(f"unexpected {event!r}")
            if any("channel" in m and "event" not in m for m in got):
                sock.sendall(ws.send(wse.CloseConnection(code=1000)))
                return got
    raise AssertionError(f"no ack and data within {timeout} s: {got}")


@needs_sigint
@pytest.mark.parametrize("backend", BACKENDS)
def test_sim_serves_on_loopback_until_ctrl_c(backend: str) -> None:
    cli = Cli("sim", "--port", "0", "--backend", backend)
    try:
        line = cli.wait_line(lambda line: "ws://" in line)
        url = line.split()[3]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/ws"), line
        port = int(url.removeprefix("ws://127.0.0.1:").removesuffix("/ws"))
        assert port != 0
        cli.wait_line(lambda line: '"op":"subscribe"' in line)  # the dialect summary
        messages = subscribe_over_a_raw_socket(port)
        assert messages[0] == {"event": "subscribed", "channel": "ticker", "symbols": ["BTC-USD"], "id": 7}
        assert messages[1]["channel"] == "ticker" and messages[1]["symbol"] == "BTC-USD"
        code = cli.interrupt()
    finally:
        cli.kill()
    assert code == 0, "".join(cli.err)
    assert cli.out[-1] == "stopped\n"
    assert "".join(cli.err).strip() == ""


def test_sim_stops_after_its_duration() -> None:
    cli = Cli("sim", "--port", "0", "--duration", "0.2")
    try:
        code = cli.finish()
    finally:
        cli.kill()
    assert code == 0, "".join(cli.err)
    assert cli.out[0].startswith("simulated exchange serving ws://127.0.0.1:")
    assert cli.out[-1] == "stopped\n"


def test_sim_port_in_use_is_one_line_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "sim", "--port", str(port), "--duration", "1")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"wirestate sim: cannot listen on 127.0.0.1:{port}: ")


# -- wirestate diagrams --check outside the repository ------------------------------------------


def test_diagrams_check_without_the_folder_says_it_is_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    nowhere = tmp_path / "diagrams"
    code, out, err = run_cli(capsys, "diagrams", "--check", "--dir", str(nowhere))
    assert code == 1
    assert "stale" not in err
    assert f"no diagrams folder at {nowhere.resolve()}" in err
    assert "--dir" in err and "`wirestate diagrams`" in err
    assert not nowhere.exists()  # a check writes nothing


def test_diagrams_check_default_dir_from_elsewhere(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "diagrams", "--check")
    assert code == 1 and f"no diagrams folder at {tmp_path.resolve() / 'diagrams'}" in err


def test_diagrams_check_names_missing_files_apart_from_stale_ones(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli(capsys, "diagrams", "--dir", str(tmp_path))[0] == 0
    (tmp_path / "connection.dot").unlink()
    code, _, err = run_cli(capsys, "diagrams", "--check", "--dir", str(tmp_path))
    assert code == 1
    assert f"diagram files missing in {tmp_path.resolve()}: connection.dot" in err
    assert "stale" not in err
    (tmp_path / "connection.md").write_text("changed")
    code, _, err = run_cli(capsys, "diagrams", "--check", "--dir", str(tmp_path))
    assert code == 1 and "missing in" in err and "stale: connection.md" in err
