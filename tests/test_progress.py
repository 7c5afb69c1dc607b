"""Progress bars: a tqdm bar on a terminal, timed plain lines in a log, nothing when disabled."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from latprune._progress import bar, log_interval_s
from latprune.errors import SpecError


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_one_plain_line_per_update_with_postfix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATPRUNE_PROGRESS_INTERVAL", "0")
    log = io.StringIO()
    done = bar(total=3, desc="train", unit="step", leave=False, stream=log)
    for i in range(3):
        done.set_postfix(loss=f"{i:.3f}", refresh=False)
        done.update(1)
    done.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and log.getvalue().endswith("\n")
    assert lines[0].startswith("train: 0/3")
    assert lines[-1].startswith("train: 3/3") and "loss=2.000" in lines[-1]  # leave=False still leaves the last line


def test_log_lines_are_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATPRUNE_PROGRESS_INTERVAL", "3600")
    log = io.StringIO()
    for _ in bar(range(1000), desc="units", stream=log):
        pass
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("units: 0/1000") and lines[-1].startswith("units: 1000/1000")
    assert len(lines) <= 3  # the start, the close, and at most tqdm's first-iteration refresh


def test_terminal_gets_tqdm_and_disabled_gets_nothing() -> None:
    tty = Terminal()
    for _ in bar(range(2), desc="profile", stream=tty):
        pass
    assert "\r" in tty.getvalue() and "profile" in tty.getvalue()
    quiet = io.StringIO()
    for _ in bar(range(2), desc="profile", stream=quiet, enabled=False):
        pass
    assert quiet.getvalue() == ""


def test_bad_interval_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATPRUNE_PROGRESS_INTERVAL", "often")
    with pytest.raises(SpecError, match="LATPRUNE_PROGRESS_INTERVAL='often'.*unset it"):
        log_interval_s()


def test_cli_refuses_a_bad_interval_before_writing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import cli_fails

    monkeypatch.setenv("LATPRUNE_PROGRESS_INTERVAL", "often")
    cli_fails(capsys, ["profile", "default", "-o", str(tmp_path / "x.lut"), "--backend", "fake"],
              "LATPRUNE_PROGRESS_INTERVAL='often'")
    assert list(tmp_path.iterdir()) == []
