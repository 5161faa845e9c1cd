"""``wirestate sim``'s exchange options: visible in --help, validated in one line, passed to the sim."""

from __future__ import annotations

import pytest

from engine.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_exchange_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "sim", "--help")
    assert code == 0
    for option in ("--rate", "--seed", "--symbols", "--book-depth", "--credential KEY:SECRET", "--lifetime",
                   "--response-delay LOW:HIGH"):  # fmt: skip
        assert option in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "-1"], "argument --rate: must be a finite number >= 0"),
        (["--rate", "fast"], "argument --rate: 'fast' is not a number"),
        (["--book-depth", "1"], "argument --book-depth: must be a whole number >= 2"),
        (["--credential", "key-only"], "argument --credential: must be KEY:SECRET"),
        (["--response-delay", "2:1"], "argument --response-delay: LOW must not exceed HIGH"),
        (["--response-delay", "1"], "argument --response-delay: must be LOW:HIGH seconds"),
        (["--symbols", "A,,B"], "argument --symbols: must be comma-separated symbol names"),
        (["--lifetime", "0"], "argument --lifetime: must be more than 0 s"),
    ],
)
def test_bad_options_are_one_line_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "sim", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_options_reach_the_exchange_and_its_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "sim", "--port", "0", "--duration", "0.2", "--rate", "20", "--symbols", "AAA-USD,BBB-USD",
        "--credential", "k:topsecret", "--lifetime", "5", "--response-delay", "0:0.5", "--book-depth", "50",
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("simulated exchange serving ws://127.0.0.1:") and lines[-1] == "stopped"
    assert "symbols: AAA-USD, BBB-USD; data: 20 messages/s" in out
    assert "HMAC-SHA256 signed for 1 key(s)" in out and "topsecret" not in out
    assert "closed 5 s after opening" in out and "delayed 0-0.5 s" in out
