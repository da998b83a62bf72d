"""bench/serve_load.py: CPU counted over the server's whole process tree; committed results kept."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import serve_load  # noqa: E402

pytest.importorskip("psutil")


def test_cpu_seconds_counts_the_grandchild_that_does_the_work():
    """As transformers serve generates in a grandchild of the started process, the busy one here is a grandchild."""
    burn = "import time; t = time.process_time(); exec('while time.process_time() - t < 1.0: pass'); time.sleep(30)"
    code = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {burn!r}]); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        time.sleep(0.5)
        deadline = time.monotonic() + 20
        while serve_load.cpu_seconds(proc.pid) < 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert serve_load.cpu_seconds(proc.pid) >= 1.0  # the started process alone used ~0.05 s
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_existing_results_are_not_overwritten_without_the_flag(tmp_path, capsys):
    (tmp_path / "serve_load.json").write_text("{}")
    with pytest.raises(SystemExit):
        serve_load.main(["--internalized", "a", "--full-prompt", "b", "--out", str(tmp_path)])
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "serve_load.json").read_text() == "{}"
