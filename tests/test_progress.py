"""Progress bars: tqdm's on a terminal, a line every 30 s in a log file (SLURM, nohup, CI)."""

import io
import sys
import time

import pytest

from milpf_jax.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def plain_process(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


def test_a_log_file_gets_an_update_every_30_s_a_terminal_tqdms_default(plain_process):
    log, terminal = io.StringIO(), Terminal()
    assert progress_bar(total=5, file=log).mininterval == LOG_INTERVAL_S == 30
    assert progress_bar(total=5, file=terminal).mininterval == pytest.approx(0.1)
    # 2,000 updates in a loop: the log holds the opening and the final state, nothing between.
    log = io.StringIO()
    for _ in progress_bar(range(2000), file=log, miniters=1, desc="encode"):
        time.sleep(3e-4)  # ~0.6 s: tqdm's default would print about six states between
    states = [s for s in log.getvalue().split("\r") if s.strip()]
    assert len(states) == 2 and "2000/2000" in states[-1]


def test_the_environment_and_notebooks_keep_their_say(plain_process, monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    assert progress_bar(total=5, file=io.StringIO()).mininterval == 5
    monkeypatch.delenv("TQDM_MININTERVAL")
    monkeypatch.setitem(sys.modules, "ipykernel", object())  # a Jupyter kernel renders the bar
    assert progress_bar(total=5, file=io.StringIO()).mininterval == pytest.approx(0.1)
    assert list(progress_bar(range(3), disable=True)) == [0, 1, 2]
