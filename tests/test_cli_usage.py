"""The command line as people type it, through the installed `nsdbench` console script: every usage error
is exit 2 without a traceback, cheap checks come before any work, one vocabulary, files follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_leaderboard_store import record, write_fake_run

import nsdbench
from nsdbench.cli import exit_code_for
from nsdbench.leaderboards.store import Store


def nsdbench_exe() -> str:
    """The console script of the environment running the tests (else the one on PATH)."""
    here = Path(sys.executable).parent / "nsdbench"
    found = str(here) if here.is_file() else shutil.which("nsdbench")
    if not found:
        pytest.skip("the nsdbench console script is not installed (pip install -e .)")
    return found


def cli(*args: str, home: Path | None = None, umask: int | None = None, stdin: str | None = None, **env):
    """Run `nsdbench ARGS` in a subprocess; returns (exit code, stdout, stderr)."""
    environ = {**os.environ, **{k: str(v) for k, v in env.items()}}
    if home is not None:
        environ["NSDBENCH_HOME"] = str(home)
    proc = subprocess.run(
        [nsdbench_exe(), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        input=stdin,
        umask=-1 if umask is None else umask,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


USAGE_ERRORS = [
    (),  # no command: help, exit 2
    ("data",),  # a group without its subcommand
    ("scor", "x"),  # a typo: "did you mean 'score'"
    ("score", "x", "--weight", "tiny"),  # an option typo
    ("score",),  # a missing argument
    ("run", "--subjects", "1"),  # a missing required option (--method)
    ("score", "x", "--batch-size", "0"),  # out of range
    ("run", "-m", "ridge-pixels", "--batch-size", "0"),  # no such option for run
    ("leaderboard", "--digits", "99"),
    ("compare", "a"),
    ("weights", "list", "--jsn"),
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=lambda a: " ".join(a) or "(none)")
def test_usage_errors_exit_2_without_traceback(args, tmp_path):
    rc, out, err = cli(*args, home=tmp_path)
    assert rc == 2, (args, rc, out, err)
    assert "Traceback" not in out + err
    assert (out + err).strip()  # says something: usage, help or the error


def test_version_and_help_without_bool_metavars(tmp_path):
    rc, out, _ = cli("--version", home=tmp_path)
    assert rc == 0 and out.strip() == f"nsdbench {nsdbench.__version__}"
    for args in (("--help",), ("score", "--help"), ("drift", "--help"), ("leaderboard", "--help")):
        rc, out, _ = cli(*args, home=tmp_path)
        assert rc == 0 and "<bool>" not in out, args

    def help_text(*args: str) -> str:
        return " ".join(cli(*args, "--help", home=tmp_path)[1].split())  # help wraps at any width

    assert "Images per forward pass" in help_text("score")  # --batch-size has help
    text = help_text("compare")
    assert "Paired bootstrap resamples" in text and "Seed of the bootstrap" in text
    assert "different protocols" in text
    assert "Decimals shown" in help_text("leaderboard")
    assert "default: config, pretrained" in help_text("run")


def test_exit_codes_match_click_errors_from_every_click_copy():
    """typer >= 0.17 raises from its own click copy, older typer from click: both map to exit 2."""
    import importlib

    found = 0
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        found += 1
        assert exit_code_for(mod.UsageError("bad")) == 2
        assert exit_code_for(mod.BadParameter("bad")) == 2
        if hasattr(mod, "Exit"):  # typer's own copy keeps Exit/Abort in typer.exceptions
            assert exit_code_for(mod.Exit(3)) == 3
            assert exit_code_for(mod.Abort()) == 130
    import typer

    assert exit_code_for(typer.Exit(3)) == 3
    assert exit_code_for(typer.Abort()) == 130
    assert found >= 1
    assert exit_code_for(ValueError("a bug")) is None  # real bugs keep their traceback


def test_leaderboard_json_and_bad_protocol_or_split(tmp_path):
    rc, out, err = cli("leaderboard", "--json", home=tmp_path)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["protocol"] == "nsdbench-v1" and doc["split"] == "nsd982"
    rc, out, err = cli("leaderboard", "--protocol", "nope", home=tmp_path)
    assert rc == 2 and "unknown protocol 'nope'" in err and "Traceback" not in err
    rc, out, err = cli("leaderboard", "--split", "nsd999", home=tmp_path)
    assert rc == 2 and "unknown split 'nsd999'" in err
    rc, out, err = cli("leaderboard", "--protocol", "nsdbench-v1,mindeye", "--json", home=tmp_path)
    assert rc == 0
    assert [b["protocol"] for b in json.loads(out)["leaderboards"]] == ["nsdbench-v1", "mindeye"]
    rc, out, err = cli("leaderboard", "--protocol", "mindeye", "--json", home=tmp_path)
    rows = json.loads(out)["tables"][0]["rows"]
    assert any(r["method"].startswith("MindEye2") and r["origin"] == "reported" for r in rows)
    rc, _, err = cli("leaderboard", "--json", "--format", "md", home=tmp_path)
    assert rc == 2 and "exclude each other" in err


SAME_MISTAKES = [
    ("data", "info", "--data", "/nonexistent"),
    ("score", "/nonexistent", "--weights", "tiny"),
    ("validate", "{tmp}", "--data", "/nonexistent"),
    ("splits", "show", "nsd555", "-s", "1"),
]
MORE_MISTAKES = [
    ("data", "cache", "--data", "/nonexistent"),
    ("score", "{tmp}", "--data", "/nonexistent", "--weights", "tiny"),
    ("splits", "show", "nsd982", "-s", "1", "--data", "/nonexistent"),
    ("encoder", "fit", "-s", "1", "--data", "/nonexistent", "--weights", "tiny"),
    ("submission", "demo", "{tmp}/d", "--data", "/nonexistent"),
    ("validate", "/nonexistent"),
    ("score", "{tmp}", "--weights", "tiny", "--subjects", "x"),
    ("score", "{tmp}", "--weights", "tiny", "--protocol", "nope"),
    ("score", "{tmp}", "--weights", "nope"),
]


def _one_line_usage_errors(cases, tmp_path):
    home = tmp_path / "home"
    for case in cases:
        args = [a.replace("{tmp}", str(tmp_path)) for a in case]
        rc, _out, err = cli(*args, home=home)
        assert rc == 2, (args, rc, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (home / "synthetic-nsd").exists()  # nothing was generated before the check failed


def test_same_mistake_same_answer_before_any_work(tmp_path):
    """A missing --data folder or submission, or an unknown split, is exit 2 at once in every command."""
    _one_line_usage_errors(SAME_MISTAKES, tmp_path)


@pytest.mark.slow
@pytest.mark.ci
def test_same_mistake_same_answer_in_every_command(tmp_path):
    _one_line_usage_errors(MORE_MISTAKES, tmp_path)


def test_subject_without_data_is_a_usage_error_before_validation(synth_root, nsdbench_home, tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    rc, _, err = cli(
        "score", str(sub), "-s", "3", "--data", str(synth_root), "--weights", "tiny", home=nsdbench_home
    )
    assert rc == 2 and "subject 3 has no data" in err and "available: 1,2,5,7" in err
    rc, _, err = cli("data", "cache", "-s", "3", "--data", str(synth_root), home=nsdbench_home)
    assert rc == 2 and "subject 3 has no data" in err


def test_missing_pretrained_weights_listed_together_before_any_work(tmp_path):
    home = tmp_path / "home"
    sub = tmp_path / "sub"
    sub.mkdir()
    rc, _, err = cli("score", str(sub), "--protocol", "nsdbench-v1,mindeye", "--brain", home=home)
    assert rc == 1 and "Traceback" not in err
    line = err.strip()
    assert len(line.splitlines()) == 1
    command = line.split("`")[1]
    names = command.split()[3:]
    assert command.startswith("nsdbench weights fetch ")
    # every network of both protocols, each once: AlexNet, Inception, CLIP, both EfficientNets, SwAV,
    # and mindeye's brain encoder (GNet8)
    assert sorted(names) == sorted(
        {
            "gnet8-multisubject",
            "alexnet-imagenet1k-v1",
            "inception-v3-imagenet1k-v1",
            "clip-vit-l-14-openai",
            "efficientnet-b1-imagenet1k-v1",
            "efficientnet-b1-imagenet1k-v2",
            "swav-resnet50-800ep",
        }
    )
    assert f"{len(names)} pretrained artifact(s)" in line
    assert not (home / "synthetic-nsd").exists()


def test_require_all_lists_every_missing_artifact(tmp_path, monkeypatch):
    from nsdbench import weights
    from nsdbench.errors import UsageError, WeightsMissing

    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    weights.require_all([])
    path = weights.local_path("swav-resnet50-800ep")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    weights.require_all(["swav-resnet50-800ep"])  # cached: no error
    with pytest.raises(WeightsMissing) as exc:
        weights.require_all(
            ["alexnet-imagenet1k-v1", "swav-resnet50-800ep", "gnet8-multisubject", "alexnet-imagenet1k-v1"]
        )
    assert "2 pretrained artifact(s)" in str(exc.value)
    assert "`nsdbench weights fetch alexnet-imagenet1k-v1 gnet8-multisubject`" in str(exc.value)
    with pytest.raises(UsageError):
        weights.require_all(["no-such-artifact"])


def test_weights_fetch_offline_names_artifact_and_url(tmp_path, monkeypatch, capsys):
    """A download that cannot connect (a closed local port: no network is used) names what and where."""
    from nsdbench import weights
    from nsdbench.cli import main

    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    url = "http://127.0.0.1:9/nsdbench-test.pth"
    art = weights.Artifact("nsdbench-test-offline", "test", "url", url, "nsdbench-test.pth")
    with weights.temporarily_registered(art):
        rc = main(["weights", "fetch", art.name])
        err = capsys.readouterr().err
        assert rc == 1 and "Traceback" not in err
        assert f"{art.name}: cannot download {url}" in err
        assert "1 artifact(s) not fetched: nsdbench-test-offline" in err
        assert not weights.is_cached(art.name)


def test_weights_verify_with_nothing_cached_says_so(tmp_path):
    rc, out, _err = cli("weights", "verify", home=tmp_path)
    assert rc == 0 and "no artifacts cached" in out and "nothing to verify" in out


def test_declining_runs_delete_keeps_the_run(tmp_path):
    store = Store(tmp_path / "lb.duckdb")
    store.ingest(record(store, "keep-me"), write_fake_run(tmp_path, "keep-me"), n_resamples=50)
    rc, out, err = cli(
        "runs", "delete", "keep-me", "--db", str(tmp_path / "lb.duckdb"), home=tmp_path, stdin="n\n"
    )
    assert rc == 0 and "kept run keep-me (nothing deleted)" in out and "interrupted" not in out + err
    assert Store(tmp_path / "lb.duckdb").has_run("keep-me")


def test_written_files_follow_the_umask(synth_root, nsdbench_home, tmp_path):
    """An export (atomic write) and a betas cache file get the umask's mode, not mkstemp's 0600."""
    umask = 0o027
    db = tmp_path / "lb.duckdb"
    store = Store(db)
    store.ingest(record(store, "r1"), write_fake_run(tmp_path, "r1"), n_resamples=50)
    out = tmp_path / "board.md"
    rc, _, err = cli(
        "leaderboard", "--db", str(db), "--format", "md", "-o", str(out), home=nsdbench_home, umask=umask
    )
    assert rc == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    rc, cout, err = cli(
        "data", "cache", "-s", "1", "--data", str(synth_root), "--json", home=tmp_path / "h", umask=umask
    )
    assert rc == 0, err
    cached = json.loads(cout)
    assert cached and stat.S_IMODE(Path(cached[0]["file"]).stat().st_mode) == 0o640


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_writes_and_private_temp_folders_follow_the_umask(umask, tmp_path):
    probe = (
        "import sys, tempfile; from pathlib import Path; "
        "from nsdbench.files import atomic_write_bytes, follow_umask; "
        "t = Path(sys.argv[1]); atomic_write_bytes(t / 'f.bin', b'x'); "
        "d = follow_umask(tempfile.mkdtemp(dir=t)); "
        "print(oct((t / 'f.bin').stat().st_mode & 0o777), oct(d.stat().st_mode & 0o777))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, umask=umask, check=True
    )
    file_mode, dir_mode = (int(x, 8) for x in proc.stdout.split())
    assert (file_mode, dir_mode) == (0o666 & ~umask, 0o777 & ~umask)


def test_problem_lines_do_not_repeat_their_code():
    from nsdbench.submissions.formats import Problem

    p = Problem(
        "subject",
        "reconstructions for a subject that was not requested are ignored",
        subject=2,
        severity="warning",
    )
    assert p.line() == "warning: subject 2: reconstructions for a subject that was not requested are ignored"
    q = Problem("missing", "no reconstruction", subject=1, nsd_id=5)
    assert q.line() == "error: missing [subject 1, nsd_id 5] no reconstruction"


def test_weights_verify_json_lists_each_cached_artifact(tmp_path, monkeypatch, capsys):
    import hashlib

    from nsdbench import weights
    from nsdbench.cli import main

    monkeypatch.setenv("NSDBENCH_HOME", str(tmp_path))
    path = weights.local_path("swav-resnet50-800ep")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really swav")
    assert main(["weights", "verify", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] == [
        {
            "name": "swav-resnet50-800ep",
            "ok": True,  # no published hash to compare with: the recorded one is reported
            "sha256": hashlib.sha256(b"not really swav").hexdigest(),
            "published_sha256": weights.get("swav-resnet50-800ep").sha256,
        }
    ]
