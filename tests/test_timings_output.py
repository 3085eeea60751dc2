"""`--timings PATH`: the document replaces the file whole (atomic write), and `rescore` refuses an
unwritable path before any work, as `score` does."""

from __future__ import annotations

import json

from nsdbench.cli import main
from nsdbench.stage_times import CommandClock


def test_timings_document_replaces_the_file_whole(tmp_path):
    path = tmp_path / "t" / "timings.json"
    path.parent.mkdir()
    path.write_text("old contents that a reader must never see half-overwritten")
    before = path.stat().st_ino
    CommandClock().write(path, 3, ["nsdbench-v1"])
    assert path.stat().st_ino != before  # a new file renamed over the old one, not rewritten in place
    doc = json.loads(path.read_text())
    assert doc["images"] == 3 and doc["protocols"] == ["nsdbench-v1"] and doc["wall_s"] >= 0
    assert [p.name for p in path.parent.iterdir()] == ["timings.json"]  # no temp file left


def test_rescore_checks_the_timings_path_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rc = main(["rescore", str(run_dir), "--protocol", "nsdbench-v1", "--timings", str(blocker / "t.json")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--timings" in err, err
