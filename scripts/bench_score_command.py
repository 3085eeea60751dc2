"""Time the whole `nsdbench score` command against reference pipelines with the published structure.

Both sides run as separate processes on the same synthetic NSD, the same submission folder (PNG, one
sample per image) and the same networks (nsdbench's builders, `tiny` or `random` weights, or `files`:
full-size seeded random weights saved once as the published files, which both sides then load in
pretrained mode, as a user with the published weights does):

  * one protocol, cold (empty ground-truth feature cache) and warm (cache filled), against
    scripts/reference_pipelines/brain_diffuser.py;
  * the brain-diffuser, MindEye and Second Sight protocols in one command (or `all`), cold and warm,
    against those three reference pipelines run in sequence, with every per-image value checked against
    the reference to the fidelity tolerance.

It prints a table (stage, seconds, share) per run, the share of time outside forward passes and the
ratios. Brain correlation is off (--no-brain): the reference pipelines have no encoding model.

    python scripts/bench_score_command.py --n 16 --weights files --parts every     # three in one command
    python scripts/bench_score_command.py --n 128 --weights files --parts single   # share outside passes
    python scripts/bench_score_command.py --n 8 --weights tiny --json              # quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REFERENCES = HERE / "reference_pipelines"
PIPELINE_OF = {  # protocol -> reference pipeline script
    "brain-diffuser-2023": "brain_diffuser.py",
    "mindeye": "mindeye.py",
    "second-sight-2023": "second_sight.py",
}
ALL = tuple(PIPELINE_OF)
SPLIT = "nsd982"  # every protocol scores the same images (--split), so one reference run each compares
PIXEL_TOL = 1e-6  # leaderboards.drift defaults: float64 pixel metrics
NETWORK_TOL = 1e-4  # network-feature metrics
# MindEye's SSIM runs in float32 in its own code (rgb2gray of float32 tensors); nsdbench in float64
OVERRIDE_TOL = {("mindeye", "ssim"): 1e-5}


@dataclass(frozen=True)
class Workload:
    """A synthetic NSD and one submission folder for it."""

    data: Path
    submission: Path
    subjects: tuple[int, ...]
    n_images: int
    image_size: int
    rec_size: int


@dataclass
class Timed:
    """One process run: wall seconds measured outside, stage seconds reported inside, values per metric."""

    label: str
    wall_s: float
    stages: dict[str, float]
    values: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)  # protocol -> metric -> id


def nsd982_count(seed: int, sizes: dict) -> int:
    """Test images of nsd982 on the synthetic NSD `synthesize(seed=seed, **sizes)` would write: shared
    images with a trial in the legacy sessions (its design depends on the seed and sizes only)."""
    from nsdbench.nsd.synth import SynthSizes, make_design

    spec = SynthSizes(**sizes)
    design = make_design(spec, np.random.default_rng(np.random.default_rng(seed).integers(2**63)))
    legacy = design["masterordering"][: 750 * spec.legacy_sessions] - 1  # 0-based positions in subjectim
    return len(np.unique(legacy[legacy < spec.shared]))


def synth_sizes(n: int, seed: int = 0) -> dict:
    """Synthetic NSD sizes whose nsd982 split holds exactly n images per subject: a few shared images are
    seen only after the legacy sessions, so `shared` is searched upwards from n + missing."""
    missing = max(2, n // 50)
    for shared in range(n + missing, n + missing + max(50, n // 5)):
        sessions = max(2, math.ceil((shared + 1) / 250))  # 250 images per session and subject
        sizes = {"sessions": sessions, "shared": shared, "missing_shared": missing}
        if nsd982_count(seed, sizes) == n:
            return sizes
    raise RuntimeError(f"no synthetic NSD design with exactly {n} nsd982 images for seed {seed}")


def build_workload(
    root: Path,
    n: int,
    image_size: int = 64,
    rec_size: int = 128,
    subjects: tuple[int, ...] = (1,),
    seed: int = 0,
) -> Workload:
    """Synthesize an NSD (image_size px stimuli, exactly n nsd982 test images per subject) and a PNG
    submission of rec_size px reconstructions for the nsd982 test ids of `subjects` (written in threads)."""
    from PIL import Image, ImageFilter

    from nsdbench.nsd import open_nsd
    from nsdbench.nsd.splits import get_split
    from nsdbench.nsd.synth import synthesize

    data = synthesize(root / "nsd", seed=seed, image_size=image_size, **synth_sizes(n, seed))
    nsd = open_nsd(str(data))
    sub = root / "submission"
    jobs = []
    for s in subjects:
        ids = [int(i) for i in get_split(nsd, SPLIT, s).test_ids]
        (sub / f"subj{s:02d}").mkdir(parents=True, exist_ok=True)
        jobs += [(s, nsd_id, gt) for nsd_id, gt in zip(ids, nsd.images(ids), strict=True)]

    def write(job) -> None:  # the ground truth upsampled, blurred and noised, as a method's PNG output
        s, nsd_id, gt = job
        up = Image.fromarray(gt).resize((rec_size, rec_size), Image.Resampling.BICUBIC)
        up = up.filter(ImageFilter.BoxBlur(2))
        noise = np.random.default_rng([seed, s, nsd_id]).integers(
            -20, 21, (rec_size, rec_size, 3), dtype=np.int16
        )
        img = np.clip(np.asarray(up).astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(sub / f"subj{s:02d}" / f"{nsd_id}_0.png", compress_level=1)

    marker = root / "submission.json"  # a kept work folder reuses a complete submission of the same kind
    kind = {"data": str(data), "subjects": list(subjects), "rec_size": rec_size, "seed": seed, "n": len(jobs)}
    if not (marker.is_file() and json.loads(marker.read_text()) == kind):
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(write, jobs))
        marker.write_text(json.dumps(kind))
    n_images = max(sum(1 for j in jobs if j[0] == s) for s in subjects)
    return Workload(Path(data), sub, tuple(subjects), n_images, image_size, rec_size)


# artifact -> (network, precision, key prefix of the published file, keys the published file lacks)
PUBLISHED_LAYOUT = {
    "alexnet-imagenet1k-v1": ("alexnet", "", ()),
    "inception-v3-imagenet1k-v1": ("inception_v3", "", ()),
    "efficientnet-b1-imagenet1k-v1": ("efficientnet_b1", "", ()),
    "efficientnet-b1-imagenet1k-v2": ("efficientnet_b1", "", ()),
    "clip-vit-l-14-openai": ("clip_vit_l14", "visual.", ()),
    "swav-resnet50-800ep": ("swav_resnet50", "module.", ("fc.weight", "fc.bias")),
}


def write_weight_files(store: Path) -> Path:
    """Full-size seeded random metric networks saved as the published artifact files (their key layouts)
    in `store`/weights, with the sha256 record `nsdbench weights fetch` writes; reused when present."""
    import torch

    from nsdbench import weights
    from nsdbench.metrics.networks import FeatureNetwork, NetworkKey

    old = os.environ.get("NSDBENCH_HOME")
    os.environ["NSDBENCH_HOME"] = str(store)
    try:
        for artifact, (network, prefix, lacks) in PUBLISHED_LAYOUT.items():
            if weights.is_cached(artifact):
                continue
            module = FeatureNetwork(NetworkKey(network, "-", "random", "fp32", "cpu")).module
            sd = {prefix + k: v for k, v in module.state_dict().items() if k not in lacks}
            path = weights.local_path(artifact)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(sd, path.with_suffix(".part"))
            path.with_suffix(".part").replace(path)
            weights.recorded_sha256(artifact)
    finally:
        if old is None:
            del os.environ["NSDBENCH_HOME"]
        else:
            os.environ["NSDBENCH_HOME"] = old
    return store / "weights"


def prepare_home(home: Path, weight_files: Path | None) -> Path:
    """An NSDBENCH_HOME whose weights folder is the shared one (the files are written once)."""
    home.mkdir(parents=True, exist_ok=True)
    link = home / "weights"
    if weight_files is not None and not link.exists():
        link.symlink_to(weight_files.resolve(), target_is_directory=True)
    return home


def _env(home: Path, threads: int | None) -> dict[str, str]:
    env = dict(os.environ, NSDBENCH_HOME=str(home))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def nsdbench_exe() -> str:
    exe = Path(sys.executable).with_name("nsdbench")
    return str(exe) if exe.exists() else shutil.which("nsdbench") or "nsdbench"


@lru_cache(maxsize=1)
def has_timings() -> bool:
    """Whether this nsdbench's `score` writes --timings (per-stage seconds)."""
    proc = subprocess.run([nsdbench_exe(), "score", "--help"], capture_output=True, text=True, check=False)
    return "--timings" in proc.stdout


def resolve_every(protocols: list[str] | str) -> list[str] | str:
    """'all' where this nsdbench's `score --protocol` accepts it, else the list of every shipped protocol."""
    if protocols != "all":
        return list(protocols)
    from nsdbench.commands.options import parse_protocols
    from nsdbench.errors import NSDBenchError
    from nsdbench.metrics.protocols import PROTOCOLS

    try:
        parse_protocols("all")
        return "all"
    except NSDBenchError:
        return list(PROTOCOLS)


def run_nsdbench(
    wl: Workload,
    protocols: list[str] | str,
    home: Path,
    work: Path,
    weights: str,
    device: str = "cpu",
    batch_size: int = 64,
    threads: int | None = None,
    label: str = "nsdbench",
    extra: list[str] | None = None,
) -> Timed:
    """`nsdbench score` as a user runs it (console script, own process); reads back the per-image values."""
    protocols = resolve_every(protocols)
    protos = list(ALL) if protocols == "all" else list(protocols)
    shutil.rmtree(
        work, ignore_errors=True
    )  # a fresh database and work dir: a run recorded before is no timing
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.json"
    cmd = [
        nsdbench_exe(), "score", str(wl.submission),
        "--data", str(wl.data),
        "--subjects", ",".join(map(str, wl.subjects)),
        "--split", SPLIT,
        "--protocol", "all" if protocols == "all" else ",".join(protos),
        "--weights", weights,
        "--device", device,
        *(["--no-brain"] if extra is None else extra),
        "--batch-size", str(batch_size),
        "--bootstrap", "10",
        "--method", "bench",
        "--work-dir", str(work / "scores"),
        "--db", str(work / "leaderboard.duckdb"),
        "--json",
    ]  # fmt: skip
    if has_timings():
        cmd += ["--timings", str(timings)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(home, threads), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"nsdbench score exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    doc = json.loads(timings.read_text()) if timings.exists() else {}
    many = protocols == "all" or len(protos) > 1
    values = {p: _parquet_values(work / "scores", p, many, wl.subjects[0]) for p in protos}
    return Timed(label, wall, dict(doc.get("stages", {})), values)


def _parquet_values(scores: Path, protocol: str, many: bool, subject: int) -> dict[str, dict[int, float]]:
    import pandas as pd

    path = (scores / protocol if many else scores) / f"subj{subject:02d}.parquet"
    df = pd.read_parquet(path)
    df = df[(df["level"] == "sample") & (df["sample"] == 0)]
    out: dict[str, dict[int, float]] = {}
    for metric, g in df.groupby("metric"):
        out[str(metric)] = {int(i): float(v) for i, v in zip(g["nsd_id"], g["value"], strict=True)}
    return out


def run_reference(
    wl: Workload, protocol: str, work: Path, weights: str, device: str = "cpu", threads: int | None = None
) -> Timed:
    """One reference pipeline script in its own process (first subject only)."""
    out = work / f"reference-{protocol}.json"
    cmd = [
        sys.executable, str(REFERENCES / PIPELINE_OF[protocol]),
        "--data", str(wl.data),
        "--submission", str(wl.submission),
        "--subject", str(wl.subjects[0]),
        "--weights", weights,
        "--device", device,
        "--out", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, env=_env(work / "ref-home", threads), capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{PIPELINE_OF[protocol]} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    doc = json.loads(out.read_text())
    stages = dict(doc["stages"])
    stages["startup"] = wall - doc["wall_s"]  # interpreter, imports and argument parsing
    values = {m: dict(zip(doc["ids"], v, strict=True)) for m, v in doc["values"].items()}
    return Timed(f"reference {protocol}", wall, stages, {protocol: values})


def compare(ours: Timed, refs: list[Timed]) -> list[str]:
    """Every per-image value of every reference metric against nsdbench's; returns the mismatches."""
    from nsdbench.metrics.protocols import PixelMetric, get_protocol

    bad = []
    for ref in refs:
        for protocol, metrics in ref.values.items():
            proto = get_protocol(protocol)
            mine = ours.values.get(protocol, {})
            for metric, per_id in metrics.items():
                tol = PIXEL_TOL if isinstance(proto.metric(metric), PixelMetric) else NETWORK_TOL
                tol = OVERRIDE_TOL.get((protocol, metric), tol)
                got = mine.get(metric)
                if got is None:
                    bad.append(f"{protocol}/{metric}: not scored by nsdbench")
                    continue
                for nsd_id, expected in per_id.items():
                    actual = got.get(nsd_id, float("nan"))
                    if not (abs(actual - expected) <= tol):
                        bad.append(
                            f"{protocol}/{metric} nsd_id {nsd_id}: nsdbench {actual!r} vs reference {expected!r}"
                        )
    return bad


def forward_seconds(stages: dict[str, float]) -> float:
    return sum(v for k, v in stages.items() if k.startswith("forward"))


def outside_share(t: Timed) -> float:
    """Share of the process's wall time not spent in network forward passes."""
    return 1.0 - forward_seconds(t.stages) / t.wall_s


def table(t: Timed) -> str:
    rows = [f"{t.label}: {t.wall_s:.2f} s wall, {100 * outside_share(t):.1f} % outside forward passes"]
    rows.append(f"  {'stage':<28}{'seconds':>10}{'share':>9}")
    for k, v in sorted(t.stages.items(), key=lambda kv: -kv[1]):
        rows.append(f"  {k:<28}{v:>10.3f}{100 * v / t.wall_s:>8.1f}%")
    rest = t.wall_s - sum(t.stages.values())
    rows.append(f"  {'(unattributed: imports, CLI)':<28}{rest:>10.3f}{100 * rest / t.wall_s:>8.1f}%")
    return "\n".join(rows)


def measure(
    wl: Workload,
    root: Path,
    weights: str,
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 64,
    every: list[str] | str = ALL,
    parts: tuple[str, ...] = ("single", "every"),
) -> dict:
    """The comparison. single: cold/warm one protocol vs the BD reference; every: the protocols in one
    command, cold and warm, vs the three references in sequence."""
    files = write_weight_files(root / "weight-files") if weights == "files" else None
    mode = "pretrained" if weights == "files" else weights
    home = root / "home"  # one NSDBENCH_HOME: the first run fills its ground-truth cache
    prepare_home(root / "ref" / "ref-home", files)
    bd = "brain-diffuser-2023"
    res: dict = {
        "images": wl.n_images,
        "image_size": wl.image_size,
        "rec_size": wl.rec_size,
        "weights": weights,
        "device": device,
        "runs": {},
        "mismatches": [],
    }
    timed: list[Timed] = []
    refs = {}
    if "single" in parts:
        shutil.rmtree(home, ignore_errors=True)
        prepare_home(home, files)
        cold = run_nsdbench(wl, [bd], home, root / "cold", mode, device, batch_size, threads, "nsdbench cold")
        warm = run_nsdbench(wl, [bd], home, root / "warm", mode, device, batch_size, threads, "nsdbench warm")
        refs[bd] = run_reference(wl, bd, root / "ref", mode, device, threads)
        res["mismatches"] += compare(cold, [refs[bd]]) + compare(warm, [refs[bd]])
        res["cold_vs_reference"] = refs[bd].wall_s / cold.wall_s
        res["warm_vs_reference"] = refs[bd].wall_s / warm.wall_s
        timed += [cold, warm, refs[bd]]
    if "every" in parts:
        for p in ALL:
            if p not in refs:
                refs[p] = run_reference(wl, p, root / "ref", mode, device, threads)
                timed.append(refs[p])
        shutil.rmtree(home, ignore_errors=True)
        prepare_home(home, files)
        name = every if isinstance(every, str) else ",".join(every)
        protos = every if isinstance(every, str) else list(every)
        ref_total = sum(refs[p].wall_s for p in ALL)
        for state in ("cold", "warm"):
            run = run_nsdbench(
                wl, protos, home, root / f"every-{state}", mode, device, batch_size, threads,
                f"nsdbench --protocol {name} ({state})",
            )  # fmt: skip
            res["mismatches"] += compare(run, [refs[p] for p in ALL])
            res[f"every_{state}_vs_three_references"] = ref_total / run.wall_s
            timed.append(run)
    res["runs"] = {
        t.label: {"wall_s": t.wall_s, "stages": t.stages, "outside_forward_share": outside_share(t)}
        for t in timed
    }
    res["_timed"] = tuple(timed)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="test images per subject (about)")
    ap.add_argument(
        "--weights",
        default="files",
        choices=("files", "random", "tiny", "pretrained"),
        help="files: full-size random weights saved as the published files and loaded as pretrained",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=432, help="stimulus side (multiple of 16; NSD: 425)")
    ap.add_argument(
        "--rec-size", type=int, default=512, help="reconstruction side (Versatile Diffusion: 512)"
    )
    ap.add_argument("--threads", type=int, default=None, help="OMP/MKL threads for both sides")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    ap.add_argument(
        "--every",
        default=",".join(ALL),
        help="protocols of the one-command run against the three references: a comma list, or 'all'",
    )
    ap.add_argument(
        "--parts",
        default="single,every",
        help="single: one protocol cold/warm vs its reference; every: the --every run vs three references",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="nsdbench-bench-score-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NSDBENCH_HOME", str(root / "home"))
    wl = build_workload(root, args.n, args.image_size, args.rec_size)
    every = "all" if args.every == "all" else args.every.split(",")
    parts = tuple(args.parts.split(","))
    if not parts or set(parts) - {"single", "every"}:
        ap.error(f"--parts {args.parts!r}: expected a comma list of single, every")
    res = measure(wl, root, args.weights, args.device, args.threads, args.batch_size, every, parts)
    timed = res.pop("_timed")
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{wl.n_images} images ({wl.image_size} px stimuli, {wl.rec_size} px PNG reconstructions), "
              f"{args.weights} weights, {args.device}")  # fmt: skip
        for t in timed:
            print(table(t))
        if "cold_vs_reference" in res:
            cold, warm = res["cold_vs_reference"], res["warm_vs_reference"]
            print(f"cold: reference / nsdbench = {cold:.2f}x; warm: {warm:.2f}x")
        for state in ("cold", "warm"):
            ratio = res.get(f"every_{state}_vs_three_references")
            if ratio is not None:
                print(f"one command for {args.every} ({state}) vs three references in sequence: {ratio:.2f}x")
        print(f"values: {len(res['mismatches'])} mismatches beyond tolerance")
        for line in res["mismatches"][:20]:
            print("  " + line)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if res["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
