"""Manager setups from TOML/JSON files (engine.setupfile) and ``wirestate check-config``.

Every problem is one line naming where it is; all of them are found before
anything is raised; secrets in URLs and headers never show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.config import ConnectionSetup, WebsocketSetup
from engine.errors import ConfigError
from engine.manager import Manager
from engine.policy import Backoff
from engine.setupfile import SetupFileError, load_setups

ROOT = Path(__file__).resolve().parent.parent
CALLBACKS = "wirestate_test_callbacks"
SECRET = "s3cr3tT0ken"

CALLBACKS_SOURCE = '''
def on_message(conn, message):
    pass


async def subscribe(conn, subscriptions):
    pass


async def login(conn):
    pass


def listener(change):
    pass
'''

GOOD_TOML = f"""
[exchange]
exchange = "gateio"
max_subscriptions_per_connection = 240
traffic_timeout = 20
fills_feed = true
handler = "{CALLBACKS}:on_message"
subscriber = "{CALLBACKS}:subscribe"

[[connections]]
name = "spot"
url = "wss://api.gateio.ws/ws/v4/"
pong_timeout = 5
subprotocols = "json"
backoff = {{ initial = 1, maximum = 60, max_attempts = 20 }}
on_state_change = "{CALLBACKS}:listener"

[[connections]]
name = "orders"
url = "wss://api.gateio.ws/ws/v4/"
authenticated = true
connector = "{CALLBACKS}:login"
subscriptions_not_required = true
extra_headers = {{ X-Gate-Channel-Id = "mine" }}
"""


@pytest.fixture
def callbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A module of callbacks importable as ``wirestate_test_callbacks`` (from tmp_path)."""
    folder = tmp_path / "pkgs"
    folder.mkdir()
    (folder / f"{CALLBACKS}.py").write_text(CALLBACKS_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, CALLBACKS, raising=False)
    import importlib

    module = importlib.import_module(CALLBACKS)
    yield module
    sys.modules.pop(CALLBACKS, None)


def good() -> dict[str, Any]:
    """A valid setup as a mapping (single style, one public connection)."""
    return {
        "exchange": {"exchange": "sim", "handler": f"{CALLBACKS}:on_message", "subscriber": f"{CALLBACKS}:subscribe"},
        "connections": [{"name": "public", "url": "wss://example.com/ws"}],
    }


def problems(data: Any) -> list[str]:
    with pytest.raises(SetupFileError) as caught:
        load_setups(data)
    return caught.value.problems


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# -- good files ----------------------------------------------------------------------------------


def test_good_toml_loads_every_field(tmp_path: Path, callbacks: Any) -> None:
    path = tmp_path / "gateio.toml"
    path.write_text(GOOD_TOML, encoding="utf-8")
    ws, connections = load_setups(path)
    assert isinstance(ws, WebsocketSetup)
    assert (ws.exchange, ws.max_subscriptions_per_connection, ws.traffic_timeout, ws.fills_feed) == (
        "gateio",
        240,
        20,
        True,
    )
    assert ws.handler is callbacks.on_message and ws.subscriber is callbacks.subscribe
    spot, orders = connections
    assert isinstance(spot, ConnectionSetup) and spot.name == "spot"
    assert spot.parsed_url.host == "api.gateio.ws"
    assert spot.pong_timeout == 5 and spot.subprotocols == ("json",)
    assert spot.backoff == Backoff(initial=1, maximum=60, max_attempts=20)
    assert spot.on_state_change == (callbacks.listener,)
    assert orders.authenticated and orders.subscriptions_not_required
    assert orders.connector is callbacks.login
    assert orders.extra_headers == (("X-Gate-Channel-Id", "mine"),)
    # the manager takes them as they are (its own completeness rules agree)
    manager = Manager(ws)
    assert [manager.add_connection(setup) for setup in connections] == ["spot", "orders"]


def test_json_gives_the_same_setups_as_toml(tmp_path: Path, callbacks: Any) -> None:
    import tomllib

    toml_path = tmp_path / "gateio.toml"
    toml_path.write_text(GOOD_TOML, encoding="utf-8")
    json_path = tmp_path / "gateio.json"
    json_path.write_text(json.dumps(tomllib.loads(GOOD_TOML)), encoding="utf-8")
    assert load_setups(json_path) == load_setups(toml_path)
    assert load_setups(str(json_path)) == load_setups(toml_path)  # a str path as well as a PathLike
    assert load_setups(tomllib.loads(GOOD_TOML)) == load_setups(toml_path)  # and the mapping itself


def test_json_null_is_none_for_optional_fields(callbacks: Any) -> None:
    data = good()
    data["connections"][0]["max_message_size"] = None
    _, (setup,) = load_setups(data)
    assert setup.max_message_size is None
    data["connections"][0]["pong_timeout"] = None
    assert problems(data) == ["connections[0].pong_timeout: must be a number, not null"]


def test_check_config_ok(tmp_path: Path, callbacks: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateio.toml"
    path.write_text(GOOD_TOML, encoding="utf-8")
    assert run_cli(capsys, "check-config", str(path)) == (0, f"{path}: ok (1 exchange setup, 2 connections)\n", "")


# -- three mistakes in three places: three lines -----------------------------------------------

THREE_MISTAKES = f"""
[exchange]
exchange = "gateio"
handler = "{CALLBACKS}:on_mesage"
subscriber = "{CALLBACKS}:subscribe"

[[connections]]
url = "wss://api.gateio.ws/ws/v4/"
tiemout = 3

[[connections]]
url = "wss://api.gateio.ws/ws/v4/"
traffic_timeout = -5
"""

THREE_LINES = [
    f"exchange.handler: cannot import '{CALLBACKS}:on_mesage': module '{CALLBACKS}' has no attribute 'on_mesage'",
    "connections[0]: unknown key 'tiemout'",
    "connections[1].traffic_timeout: must be a positive number, not -5",
]


def test_three_mistakes_are_three_problems(tmp_path: Path, callbacks: Any) -> None:
    path = tmp_path / "three.toml"
    path.write_text(THREE_MISTAKES, encoding="utf-8")
    with pytest.raises(SetupFileError) as caught:
        load_setups(path)
    assert caught.value.problems == THREE_LINES
    assert isinstance(caught.value, ConfigError) and caught.value.source == str(path)
    assert str(caught.value) == f"3 problems in {path}:\n" + "\n".join(f"  {line}" for line in THREE_LINES)


def test_three_mistakes_from_the_cli(tmp_path: Path, callbacks: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "three.toml"
    path.write_text(THREE_MISTAKES, encoding="utf-8")
    code, out, err = run_cli(capsys, "check-config", str(path))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"{path}: {line}" for line in THREE_LINES]


def test_three_mistakes_from_a_real_process(tmp_path: Path, callbacks: Any) -> None:
    path = tmp_path / "three.toml"
    path.write_text(THREE_MISTAKES, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(callbacks.__file__).parent), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "check-config", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [f"{path}: {line}" for line in THREE_LINES]
    assert "Traceback" not in done.stderr


def test_each_connection_table_is_checked_on_its_own(callbacks: Any) -> None:
    data = good()
    data["connections"] = [
        {"url": "wss://a.example/", "pong_timeout": -1, "open_timeout": 0},
        {"url": "wss://b.example/", "keepalive": "yes"},
        {"url": "wss://c.example/"},
        {"name": 5},
    ]
    assert problems(data) == [
        "connections[0].pong_timeout: must be a positive number, not -1",
        "connections[0].open_timeout: must be a positive number, not 0",
        "connections[1].keepalive: must be true or false, not a string",
        "connections[3].url: missing",
        "connections[3].name: must be a string, not a number",
    ]


# -- one kind of mistake at a time ---------------------------------------------------------------


def test_unknown_keys_everywhere(callbacks: Any) -> None:
    data = good()
    data["exchnage"] = {}
    data["exchange"]["max_subscriptions"] = 5
    data["connections"][0]["tiemout"] = 3
    data["connections"][0]["pong_timout"] = 3
    data["connections"][0]["backoff"] = {"inital": 1}
    assert problems(data) == [
        "unknown top-level key 'exchnage' (did you mean 'exchange'?)",
        "exchange: unknown key 'max_subscriptions' (did you mean 'max_subscriptions_per_connection'?)",
        "connections[0].backoff: unknown key 'inital' (did you mean 'initial'?)",
        "connections[0]: unknown key 'pong_timout' (did you mean 'pong_timeout'?)",
        "connections[0]: unknown key 'tiemout'",
    ]


@pytest.mark.parametrize(
    "key, value, line",
    [
        ("traffic_timeout", "30", "connections[0].traffic_timeout: must be a number, not a string"),
        ("traffic_timeout", True, "connections[0].traffic_timeout: must be a number, not a boolean"),
        ("read_size", 1.5, "connections[0].read_size: must be an integer, not 1.5"),
        ("authenticated", 1, "connections[0].authenticated: must be true or false, not a number"),
        ("url", 5, "connections[0].url: must be a string, not a number"),
        ("backoff", 3, "connections[0].backoff: must be a table, not a number"),
        ("backoff", {"initial": "1"}, "connections[0].backoff.initial: must be a number, not a string"),
        ("subprotocols", [1], "connections[0].subprotocols: must be a string or a list of strings"),
        ("frame_path", "slow", "connections[0].frame_path: must be one of"),
    ],
)
def test_wrong_types(callbacks: Any, key: str, value: Any, line: str) -> None:
    data = good()
    data["connections"][0][key] = value
    (problem,) = problems(data)
    assert problem.startswith(line)


@pytest.mark.parametrize(
    "key, value",
    [
        ("traffic_timeout", -5),
        ("pong_timeout", 0),
        ("open_timeout", -0.5),
        ("setup_timeout", -1),
        ("close_timeout", -2),
    ],
)
def test_negative_timeouts(callbacks: Any, key: str, value: float) -> None:
    data = good()
    data["connections"][0][key] = value
    assert problems(data) == [f"connections[0].{key}: must be a positive number, not {value}"]


def test_negative_exchange_timeouts_and_backoff(callbacks: Any) -> None:
    data = good()
    data["exchange"]["traffic_timeout"] = -5
    data["exchange"]["connection_monitor_interval"] = 0
    data["connections"][0]["backoff"] = {"initial": 10, "maximum": 5}
    assert problems(data) == [
        "exchange.traffic_timeout: must be a positive number, not -5",
        "exchange.connection_monitor_interval: must be a positive number, not 0",
        "connections[0].backoff: Backoff.maximum (5) must be >= Backoff.initial (10)",
    ]


def test_missing_callbacks_as_the_manager_sees_them(callbacks: Any) -> None:
    data = good()
    data["exchange"] = {"exchange": "sim"}  # single style, no global callbacks
    data["connections"] = [
        {"url": "wss://a.example/"},
        {"url": "wss://a.example/", "handler": f"{CALLBACKS}:on_message", "subscriptions_not_required": True},
        {"url": "wss://a.example/", "batch_handler": f"{CALLBACKS}:on_message"},
    ]
    where = "set it in this table or in [exchange]"
    assert problems(data) == [
        f"connections[0]: missing callback: handler (or batch_handler) - {where}",
        f"connections[0]: missing callback: subscriber (or set subscriptions_not_required=True) - {where}",
        f"connections[2]: missing callback: subscriber (or set subscriptions_not_required=True) - {where}",
    ]


def test_multi_style_does_not_lend_the_exchange_callbacks(callbacks: Any) -> None:
    data = good()  # [exchange] has handler and subscriber ...
    data["exchange"]["use_multi_connection_management"] = True  # ... but multi style ignores them
    (problem, _) = problems(data)
    assert problem == (
        "connections[0]: missing callback: handler (or batch_handler) - "
        "set it in this table (multi-connection style: [exchange] callbacks are not used)"
    )
    data["connections"][0].update(handler=f"{CALLBACKS}:on_message", subscriber=f"{CALLBACKS}:subscribe")
    load_setups(data)


def test_duplicate_connection_names(callbacks: Any) -> None:
    data = good()
    data["connections"].append({"name": "public", "url": "wss://example.com/other"})
    assert problems(data) == ["connections[1].name: 'public' is already the name of connections[0]"]


@pytest.mark.parametrize(
    "reference, line",
    [
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz:fn': No module named 'no_such_module_xyz'"),
        (f"{CALLBACKS}:nope", f"cannot import '{CALLBACKS}:nope': module '{CALLBACKS}' has no attribute 'nope'"),
        ("on_message", "'on_message' is not a 'module:attribute' reference (like 'mypkg.handlers:on_message')"),
        (f"{CALLBACKS}:", f"'{CALLBACKS}:' is not a 'module:attribute' reference"),
        (42, "must be a 'module:attribute' reference, not a number"),
        (f"{CALLBACKS}:on_message", "must be an async function (async def)"),  # a plain def as the subscriber
        ("engine.cli:SIM_PORT", "must be callable, not int"),
    ],
)
def test_bad_callback_references(callbacks: Any, reference: Any, line: str) -> None:
    data = good()
    data["connections"][0]["subscriber"] = reference
    (problem,) = problems(data)
    assert problem.startswith(f"connections[0].subscriber: {line}")


def test_a_reference_into_the_package_itself(callbacks: Any) -> None:
    data = good()
    data["connections"][0]["response_key"] = "engine.sim.serve:run_sim"  # any callable will do here
    _, (setup,) = load_setups(data)
    from engine.sim.serve import run_sim

    assert setup.response_key is run_sim


def test_a_module_that_fails_to_import_is_one_line(tmp_path: Path, callbacks: Any) -> None:
    (Path(callbacks.__file__).parent / "wirestate_test_broken.py").write_text("raise RuntimeError('boom')\n")
    data = good()
    data["exchange"]["handler"] = "wirestate_test_broken:on_message"
    try:
        assert problems(data) == [
            "exchange.handler: cannot import 'wirestate_test_broken:on_message': "
            "importing 'wirestate_test_broken' raised RuntimeError: boom"
        ]
    finally:
        sys.modules.pop("wirestate_test_broken", None)


# -- secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, says",
    [
        (f"https://api.example.com/ws?token={SECRET}", "scheme must be ws or wss, not 'https'"),
        (f"wss://api.example.com:99999/ws?token={SECRET}", "the port must be a number"),
        (f"wss://user:{SECRET}@api.example.com/ws", "credentials in the URL are not supported"),
        (f"wss:///ws?token={SECRET}", "no host"),
    ],
)
def test_a_bad_url_never_shows_its_token(
    tmp_path: Path, callbacks: Any, capsys: pytest.CaptureFixture[str], url: str, says: str
) -> None:
    data = good()
    data["connections"][0]["url"] = url
    with pytest.raises(SetupFileError) as caught:
        load_setups(data)
    (problem,) = caught.value.problems
    assert problem.startswith("connections[0].url: ") and says in problem
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    path = tmp_path / "secret.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    code, out, err = run_cli(capsys, "check-config", str(path))
    assert code == 2 and len(err.splitlines()) == 1 and says in err
    assert SECRET not in out + err


def test_header_values_never_show(callbacks: Any) -> None:
    data = good()
    first = data["connections"][0]
    data["connections"] = [
        {**first, "name": "a", "extra_headers": {"X Key": SECRET}},
        {**first, "name": "b", "extra_headers": {"X-Key": 5}},
        {**first, "name": "c", "extra_headers": {"X-Key": f"{SECRET}\n"}},
        {**first, "name": "d", "extra_headers": {"Host": SECRET}},
    ]
    found = problems(data)
    assert found == [
        "connections[0].extra_headers: 'X Key' is not a valid header name",
        "connections[1].extra_headers: the value of 'X-Key' must be a string, not a number",
        "connections[2].extra_headers: the value of 'X-Key' contains a line break, NUL or surrounding whitespace "
        "(a key read from a file with its newline?)",
        "connections[3].extra_headers: 'Host' is set by the WebSocket handshake itself",
    ]
    assert not any(SECRET in line for line in found)


# -- the file itself -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("bad.toml", "[exchange\nexchange = 1\n", "invalid TOML: Expected ']' at the end of a table declaration"),
        ("bad.json", '{"exchange": }', "invalid JSON: Expecting value: line 1 column 14"),
        ("list.json", "[1, 2]", "the top level must be an object with exchange and connections, not a list"),
        ("latin1.toml", b"name = '\xe9'", "not UTF-8 text (byte 0xe9 at offset 8)"),
        ("setup.yaml", "exchange: x", "cannot tell the format from '.yaml': name it .toml or .json"),
        ("empty.toml", "", "exchange: missing (an [exchange] table)"),
    ],
)
def test_file_problems_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str | bytes, line: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    code, out, err = run_cli(capsys, "check-config", str(path))
    assert (code, out) == (2, "")
    assert err.splitlines()[0].startswith(f"{path}: {line}")
    if name != "empty.toml":  # (an empty file also lacks its connections: a second line)
        assert len(err.splitlines()) == 1


def test_missing_and_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert run_cli(capsys, "check-config", str(missing)) == (
        2,
        "",
        f"{missing}: cannot read the file: No such file or directory\n",
    )
    folder = tmp_path / "folder.json"
    folder.mkdir()
    code, out, err = run_cli(capsys, "check-config", str(folder))
    assert code == 2 and out == "" and err.startswith(f"{folder}: cannot read the file: ")
    assert len(err.splitlines()) == 1


def test_empty_and_wrong_shapes() -> None:
    assert problems({}) == [
        "exchange: missing (an [exchange] table)",
        "connections: missing (at least one [[connections]] table)",
    ]
    assert problems({"exchange": 5, "connections": []}) == [
        "exchange: must be a table, not a number",
        "connections: empty (at least one [[connections]] table)",
    ]
    assert problems({"exchange": {"exchange": "x"}, "connections": {"url": "wss://a/"}}) == [
        "connections: must be a list of tables ([[connections]]), not a table"
    ]
    assert problems({"exchange": {"exchange": " "}, "connections": [5]}) == [
        "exchange.exchange: must be a non-empty name, not ' '",
        "connections[0]: must be a table, not a number",
    ]
    with pytest.raises(SetupFileError, match="expected a .toml/.json path or a mapping, not int"):
        load_setups(5)  # type: ignore[arg-type]


def test_check_config_needs_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "check-config")
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "FILE" in err
