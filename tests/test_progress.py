"""Progress in a log file (plain, flushed lines with rate and ETA) and on a terminal (a rich bar)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from promptintern.progress import PLAIN_LINES_PER_TASK, PlainProgress, progress_bar

LOOP = textwrap.dedent("""
    import sys, time
    from promptintern.progress import progress_bar

    log, total = sys.argv[1], int(sys.argv[2])
    with progress_bar("generating", "{task.fields[qps]:.2f} queries/s") as bar:
        task = bar.add_task("generate", total=total, qps=0.0)
        for i in range(total):
            time.sleep(0.002)
            bar.update(task, advance=1, qps=3.5)
            if i == total // 2:  # the log already shows progress while the loop runs
                print(open(log).read().count("generating"), flush=True)
""")


def test_progress_redirected_to_a_file_is_plain_lines_with_rate_and_eta(tmp_path):
    log = tmp_path / "run.log"
    with log.open("w") as err:
        out = subprocess.run([sys.executable, "-c", LOOP, str(log), "200"], stderr=err,
                             stdout=subprocess.PIPE, text=True, check=True, timeout=120)
    assert int(out.stdout) >= PLAIN_LINES_PER_TASK // 2  # lines were flushed, not held until the end
    lines = log.read_text().splitlines()
    assert len(lines) == PLAIN_LINES_PER_TASK
    assert "\x1b" not in log.read_text()  # no terminal escapes in a log
    pattern = r"generating · (\d+)/200 \(\d+%\) · 3\.50 queries/s · elapsed \d:\d\d:\d\d · ETA \d:\d\d:\d\d"
    done = [int(re.fullmatch(pattern, line).group(1)) for line in lines]
    assert done == list(range(10, 201, 10))


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_progress_on_a_terminal_is_a_rich_bar(tmp_path):
    log = tmp_path / "unused.log"
    log.write_text("")
    master, slave = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("TERM", "NO_COLOR")} | {"TERM": "xterm", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(log), "5"], stderr=slave,
                            stdout=subprocess.DEVNULL, env=env)
    os.close(slave)
    assert proc.wait(timeout=120) == 0
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "generating" in text and "5/5" in text and "\x1b[" in text  # rich's bar, with cursor control
    assert "steps/s" not in text


def test_plain_progress_resumed_task_counts_its_own_rate_and_reports_where_it_stopped(tmp_path):
    path = tmp_path / "log"
    with path.open("w") as stream, PlainProgress("{task.description}", "loss {task.fields[loss]:.4f}", stream) as bar:
        task = bar.add_task("stage 1/2", total=100, completed=40, loss=float("nan"))
        bar.update(task, completed=44, loss=0.5)  # 4 steps: under the 5-step interval, no line
        bar.update(task, completed=45)
        bar.update(task, completed=46)
    # leaving the block with the task unfinished printed its last state once
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"stage 1/2 · 45/100 \(45%\) · loss 0\.5000 · [\d.]+ (steps/s|s/step) · elapsed 0:00:00"
                        r" · ETA \d:\d\d:\d\d", lines[0])
    assert lines[1].startswith("stage 1/2 · 46/100 (46%) · loss 0.5000")


def test_disabled_progress_prints_nothing(tmp_path):
    path = tmp_path / "log"
    with path.open("w") as stream, progress_bar("x", "", enabled=False, stream=stream) as bar:
        bar.update(bar.add_task("t", total=3), advance=3)
    assert path.read_text() == ""
