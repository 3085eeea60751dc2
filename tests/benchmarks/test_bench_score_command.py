"""The whole `nsdbench score` command (console script, own process) against the reference pipelines.

Same synthetic NSD, same PNG submission, same networks on both sides. Cold = empty ground-truth feature
cache; warm = filled by an earlier run. Every per-image value of every reference metric must agree with
nsdbench's to the fidelity tolerance (scripts/bench_score_command.py: 1e-6 pixel, 1e-4 network metrics).
Stage seconds (`--timings`), the share of wall time outside forward passes and the speed ratios land in
the benchmark's extra_info; speed goals are judged from a measured run, never asserted here:

    NSDBENCH_BENCH_N=16 NSDBENCH_BENCH_WEIGHTS=random NSDBENCH_BENCH_SCALE=full \
        pytest tests/benchmarks/test_bench_score_command.py --benchmark-enable

Defaults (about 8 images, 64-px stimuli, 128-px reconstructions, `tiny` networks) run each once quickly
as plain tests; `full` scale uses 432-px stimuli (NSD: 425, synth needs a multiple of 16) and 512-px
reconstructions.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

N = int(os.environ.get("NSDBENCH_BENCH_N", "8"))
MODE = os.environ.get("NSDBENCH_BENCH_WEIGHTS", "tiny")
SIZES = {"small": (64, 128), "full": (432, 512)}[os.environ.get("NSDBENCH_BENCH_SCALE", "small")]
BD = "brain-diffuser-2023"

pytestmark = [pytest.mark.slow, pytest.mark.benchmark(group="score-command")]


def _load_bench():
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_score_command.py"
    spec = importlib.util.spec_from_file_location("bench_score_command", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


bsc = _load_bench()


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    root = tmp_path_factory.mktemp("score-command")
    return root, bsc.build_workload(root, N, *SIZES)


@pytest.fixture(scope="module")
def references(workload):
    """Each reference pipeline run once (their values are what nsdbench must reproduce)."""
    from nsdbench.metrics.protocols import BrainMetric, get_protocol

    root, wl = workload
    refs = {p: bsc.run_reference(wl, p, root / "ref", MODE) for p in bsc.ALL}
    for p, ref in refs.items():  # every non-brain metric of the protocol, for every image
        wanted = {m.name for m in get_protocol(p).metrics if not isinstance(m, BrainMetric)}
        assert set(ref.values[p]) == wanted, p
        assert all(len(v) == wl.n_images for v in ref.values[p].values()), p
    return refs


def _record(benchmark, t, refs: list) -> None:
    ref_wall = sum(r.wall_s for r in refs)
    benchmark.extra_info.update(
        {
            "images": N,
            "weights": MODE,
            "wall_s": t.wall_s,
            "outside_forward_share": bsc.outside_share(t),
            "reference_wall_s": ref_wall,
            "reference_over_nsdbench": ref_wall / t.wall_s,
            **{f"t_{k}": v for k, v in t.stages.items()},
            **{f"reference_{r.label}_t_{k}": v for r in refs for k, v in r.stages.items()},
        }
    )
    print("\n" + "\n".join(bsc.table(x) for x in (t, *refs)))


def _once(benchmark, fn):
    return benchmark.pedantic(fn, rounds=1, iterations=1)


def test_bench_score_cold(benchmark, workload, references):
    root, wl = workload
    home = root / "home-cold"

    def cold():
        shutil.rmtree(home, ignore_errors=True)  # empty ground-truth feature cache
        shutil.rmtree(root / "cold", ignore_errors=True)
        return bsc.run_nsdbench(wl, [BD], home, root / "cold", MODE)

    t = _once(benchmark, cold)
    assert bsc.compare(t, [references[BD]]) == []
    moved = copy.deepcopy(t)  # the comparison notices a value moved just beyond the pixel tolerance
    first = next(iter(moved.values[BD]["pixcorr"]))
    moved.values[BD]["pixcorr"][first] += 2 * bsc.PIXEL_TOL
    assert len(bsc.compare(moved, [references[BD]])) == 1
    assert any(k.startswith("forward:") for k in t.stages), t.stages  # --timings names each network pass
    _record(benchmark, t, [references[BD]])


def test_bench_score_warm(benchmark, workload, references):
    root, wl = workload
    home = root / "home-warm"
    filled = bsc.run_nsdbench(wl, [BD], home, root / "fill", MODE)  # fills the ground-truth cache

    def warm():
        shutil.rmtree(root / "warm", ignore_errors=True)  # new work dir and database: a fresh score
        return bsc.run_nsdbench(wl, [BD], home, root / "warm", MODE)

    t = _once(benchmark, warm)
    assert t.values == filled.values  # a cache hit changes nothing, bit for bit
    assert bsc.compare(t, [references[BD]]) == []
    _record(benchmark, t, [references[BD]])


@pytest.mark.parametrize("state", ["cold", "warm"])
def test_bench_score_every_protocol_vs_three_references(benchmark, workload, references, state):
    """The three protocols in one command; warm = the ground-truth features cached by an earlier one."""
    root, wl = workload
    home = root / f"home-every-{state}"
    shutil.rmtree(home, ignore_errors=True)
    if state == "warm":
        bsc.run_nsdbench(wl, list(bsc.ALL), home, root / "every-fill", MODE)

    def every():
        shutil.rmtree(root / f"every-{state}", ignore_errors=True)
        return bsc.run_nsdbench(wl, list(bsc.ALL), home, root / f"every-{state}", MODE)

    t = _once(benchmark, every)
    refs = list(references.values())
    assert bsc.compare(t, refs) == []
    _record(benchmark, t, refs)


def test_gpu_bench_metrics_script_runs_tiny_on_the_cpu(tmp_path, capsys):
    """scripts/gpu_bench_metrics.py end to end with --tiny (its 4 x 982 run needs a GPU): three scoring
    processes, a stage table each, and a JSON document that adds up."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu_bench_metrics.py"
    spec = importlib.util.spec_from_file_location("gpu_bench_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    assert (
        mod.main(["--tiny", "--n", "4", "--every", ",".join(bsc.ALL), "--keep", str(tmp_path), "--json"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["reconstructions"] == 4 and doc["weights"] == "tiny"
    assert [r["label"] for r in doc["runs"]][:2] == [f"{BD} cold", f"{BD} warm"]
    for r in doc["runs"]:
        assert any(k.startswith("forward:") for k in r["stages"])
        assert 0.0 < r["outside_forward_share"] < 1.0
        assert sum(v["s"] for v in r["stages"].values()) <= r["wall_s"] * 1.05
