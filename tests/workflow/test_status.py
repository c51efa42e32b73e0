"""`evcf status`: done / running (epoch, ETA) / failed / stale runs, read from the results tree.

The fixtures are written in the format the training loop writes (`progress.json`, see evcf/status.py).
"""

from __future__ import annotations

import json

from evcf.cli import main
from evcf.status import render, scan

NOW = 1_000_000.0


def progress(folder, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"dataset": "synthetic", "model": "mult-vae", "seed": 1, "epoch": 10, "epochs": 30,
              "epoch_seconds": 6.0, "updated": NOW - 1.0, "state": "running", "message": ""}
    record.update(kw)
    (folder / "progress.json").write_text(json.dumps(record))


def test_each_state_is_read_from_the_run_folder(tmp_path):
    res = tmp_path / "results"
    done = res / "synthetic/popularity/seed-1"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    progress(done, state="running")  # metrics.json wins: done
    progress(res / "synthetic/mult-vae/seed-1", epoch=10, epochs=30, epoch_seconds=6.0, updated=NOW - 1.0)
    progress(res / "synthetic/vamp/seed-2", state="failed", message="loss became NaN at epoch 3")
    progress(res / "synthetic/hvamp/seed-1", updated=NOW - 7200.0)  # silent for 2 h: its process is gone
    progress(res / "tune/synthetic/vamp/point-3", state="interrupted", epoch=4, message="SIGTERM")
    (res / "synthetic/ease/seed-1").mkdir(parents=True)  # nothing started there: not listed
    by_path = {s.path[len(str(res)) + 1:]: s for s in scan(res, now=NOW)}
    assert {k: s.state for k, s in by_path.items()} == {
        "synthetic/popularity/seed-1": "done", "synthetic/mult-vae/seed-1": "running",
        "synthetic/vamp/seed-2": "failed", "synthetic/hvamp/seed-1": "stale",
        "tune/synthetic/vamp/point-3": "interrupted"}
    running = by_path["synthetic/mult-vae/seed-1"]
    assert (running.epoch, running.epochs) == (10, 30)
    assert running.eta_seconds == 20 * 6.0 - 1.0  # 20 epochs left at 6 s, 1 s of the next one passed
    text = render(scan(res, now=NOW))
    assert "epoch 10/30, ETA 2 min" in text and "loss became NaN at epoch 3" in text
    assert "1 running, 1 stale, 1 interrupted, 1 failed, 1 done" in text
    assert "popularity" not in text  # finished runs are counted, not listed


def test_a_slow_epoch_is_not_mistaken_for_a_dead_run(tmp_path):
    # 40 min without a write, but an epoch takes 20 min: still running (stale after 3 epochs' time)
    progress(tmp_path / "r/d/m/seed-1", epoch_seconds=1200.0, updated=NOW - 2400.0)
    assert [s.state for s in scan(tmp_path / "r", now=NOW)] == ["running"]


def test_the_cli_prints_the_table(tmp_path, capsys):
    progress(tmp_path / "results/synthetic/mult-vae/seed-1", updated=9e18)  # in the future: never stale
    assert main(["status", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "synthetic/mult-vae/seed-1" in out and "epoch 10/30" in out
    assert main(["status", "--results", str(tmp_path / "empty")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_a_short_eta_is_in_seconds(tmp_path):
    """The quick start's epochs take about a second: its ETA reads in seconds, not "0 min"."""
    run = tmp_path / "results/synthetic/mult-vae/seed-1"
    progress(run, epoch=4, epochs=30, epoch_seconds=1.0, updated=NOW - 0.5)
    assert "epoch 4/30, ETA 26 s" in render(scan(tmp_path / "results", now=NOW))
