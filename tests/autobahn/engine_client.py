"""Autobahn|Testsuite client: echo every case through the engine's public ``Connection``.

Run by ``tests/autobahn/run --driver engine`` with the project venv and
``PYTHONPATH`` = repo root::

    python tests/autobahn/engine_client.py --port 9001 --agent wirestate-engine-fast --frame-path fast

Where ``client.py`` drives the sans-IO protocol over a blocking socket, this
driver proves conformance end to end: dialer + native asyncio TCP stream,
handshake, the reader (hot path and slow path), liveness, pong ordering and
the close path, exactly as an application uses them. Per case:

- ``ConnectionSetup(url=.../runCase?case=N&agent=A, handler=echo, ...)`` with
  ``Backoff(max_attempts=1)``; ``echo`` sends text back as text and binary as
  binary, and ignores :class:`NotConnected` (a send after the peer's close);
- ``async with Connection(setup) as conn`` + ``wait_for(RECONNECTING,
  DISCONNECTED)`` under ``anyio.fail_after``: a case ends when the server
  closes; the block is left at once so the Connection never redials.

A case counts as a client error when the wait times out, when the session
never opened, or when the handler raised anything but ``NotConnected``.
``/getCaseCount`` and ``/updateReports`` stay on ``client.run_session``.
All cases run in one asyncio event loop (``anyio.run``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # client.py beside us

from client import MAX_MESSAGE_SIZE, run_session

from engine import Backoff, Connection, ConnectionSetup, NotConnected, State

CASE_TIMEOUT = (
    60.0  # seconds until the server must have closed (9.* moves up to 16 MiB x many)
)
CLOSE_TIMEOUT = 5.0  # ConnectionSetup.close_timeout: bounds our close reply + the wait for TCP close
EXIT_SLACK = (
    CLOSE_TIMEOUT + 5.0
)  # leaving the ``async with`` must not take longer than this


@dataclass
class CaseOutcome:
    end: str  # the state reached (or "timeout")
    reason: str  # why the session ended, from the connection's history
    close_received: tuple[int, str] | None
    close_sent: tuple[int, str] | None
    messages: int
    handler_errors: int
    opened: bool
    seconds: float


async def run_case(port: int, case: int, agent: str, frame_path: str) -> CaseOutcome:
    """One case through a Connection; raises TimeoutError if the server never closes."""
    unexpected: list[BaseException] = []

    async def echo(conn: Connection, message: str | bytes) -> None:
        try:
            if type(message) is str:
                await conn.send_text(message)
            else:
                await conn.send_bytes(message)  # type: ignore[arg-type]
        except NotConnected:
            pass  # the peer closed before (or while) we answered
        except Exception as exc:  # the engine swallows handler errors: remember them
            unexpected.append(exc)
            raise

    setup = ConnectionSetup(
        url=f"ws://127.0.0.1:{port}/runCase?case={case}&agent={agent}",
        handler=echo,
        frame_path=frame_path,
        max_message_size=MAX_MESSAGE_SIZE,
        backoff=Backoff(max_attempts=1, initial=0.1, maximum=0.1),
        close_timeout=CLOSE_TIMEOUT,
        name=f"case-{case}",
    )
    started = time.monotonic()
    end = "timeout"
    # Outer bound: leaving the block (closing the Connection) must end too.
    with anyio.fail_after(CASE_TIMEOUT + EXIT_SLACK):
        async with Connection(setup) as conn:
            # Caught inside the block: an exception leaving ``async with Connection``
            # comes out of its task group wrapped in an ExceptionGroup.
            try:
                with anyio.fail_after(CASE_TIMEOUT):
                    reached = await conn.wait_for(
                        State.RECONNECTING, State.DISCONNECTED
                    )
                end = reached.value
            except TimeoutError:
                pass
            # Leave right away: closing now stops the retry the backoff scheduled.
    if end == "timeout":
        raise TimeoutError(
            f"the server did not close within {CASE_TIMEOUT:g} s (state {conn.state.value})"
        )
    opened = any(ev.trigger == "opened" for ev in conn.history)
    lost = [ev for ev in conn.history if ev.trigger in ("lost", "give_up")]
    return CaseOutcome(
        end=end,
        reason=lost[0].reason if lost else "",
        close_received=conn.last_close_received,
        close_sent=conn.last_close_sent,
        messages=conn.messages_received,
        handler_errors=conn.handler_errors + len(unexpected),
        opened=opened,
        seconds=time.monotonic() - started,
    )


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def run_all(
    args: argparse.Namespace,
    case_count: int,
    agent: str,
    errors: list[dict[str, object]],
    outcomes: dict[int, dict[str, object]],
) -> int:
    started = time.monotonic()
    completed = 0

    def client_error(case: int, error: str) -> None:
        errors.append({"case": case, "error": error})
        print(f"[{args.agent}] case #{case}: client error: {error}", file=sys.stderr, flush=True)

    for case in range(1, case_count + 1):
        case_started = time.monotonic()
        try:
            outcome = await run_case(args.port, case, agent, args.frame_path)
        except Exception as raised:  # noqa: BLE001  (one broken case must not stop the run)
            exc = _unwrap(raised)
            if isinstance(exc, TimeoutError) and not str(exc):
                # the outer bound fired: leaving the block (the close) hung
                exc = TimeoutError(f"closing took more than {EXIT_SLACK:g} s")
            client_error(case, f"{type(exc).__name__}: {exc}")
            continue
        outcomes[case] = {
            "end": outcome.end,
            "reason": outcome.reason,
            "close_received": outcome.close_received,
            "close_sent": outcome.close_sent,
            "messages": outcome.messages,
            "seconds": round(outcome.seconds, 3),
        }
        if not outcome.opened:
            client_error(case, f"the session never opened: {outcome.reason}")
            continue
        if outcome.handler_errors:
            client_error(case, f"the echo handler raised {outcome.handler_errors} time(s) (see the log above)")
            continue
        completed += 1
        if args.verbose:
            print(
                f"[{args.agent}] case #{case}: {outcome.end} after {outcome.seconds:.2f} s: {outcome.reason}"
                f" (received {outcome.close_received}, sent {outcome.close_sent}, {outcome.messages} messages)",
                flush=True,
            )
        if not args.quiet and (case % 50 == 0 or case == case_count):
            print(
                f"[{args.agent}] {case}/{case_count} cases ({time.monotonic() - started:.1f} s;"
                f" last {time.monotonic() - case_started:.2f} s)",
                flush=True,
            )
    return completed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--agent", required=True, help="agent name in the reports")
    parser.add_argument("--frame-path", required=True, choices=("fast", "wsproto"))
    parser.add_argument("--result-file", help="write a JSON run record here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--verbose", action="store_true", help="one line per case (how it ended)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.ERROR, format="%(name)s: %(message)s"
    )  # handler errors only

    host = "127.0.0.1"
    started = time.monotonic()
    agent = quote(args.agent, safe="")
    count_session = run_session(
        host, args.port, "/getCaseCount", args.frame_path, echo=False, keep=True
    )
    if len(count_session.messages) != 1:
        print(
            f"getCaseCount: expected one message, got {count_session.messages!r}",
            file=sys.stderr,
        )
        return 2
    case_count = int(count_session.messages[0])
    print(
        f"[{args.agent}] server reports {case_count} cases (engine Connection, frame_path={args.frame_path})",
        flush=True,
    )

    errors: list[dict[str, object]] = []
    outcomes: dict[int, dict[str, object]] = {}
    completed = anyio.run(
        run_all, args, case_count, agent, errors, outcomes, backend="asyncio"
    )

    run_session(
        host, args.port, f"/updateReports?agent={agent}", args.frame_path, echo=False
    )
    seconds = time.monotonic() - started
    print(
        f"[{args.agent}] done: {completed}/{case_count} sessions completed, {len(errors)} client errors,"
        f" {seconds:.1f} s",
        flush=True,
    )

    if args.result_file:
        record = {
            "agent": args.agent,
            "driver": "engine",
            "frame_path": args.frame_path,
            "case_count": case_count,
            "completed": completed,
            "errors": errors,
            "seconds": round(seconds, 3),
            "outcomes": outcomes,
        }
        with open(args.result_file, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
