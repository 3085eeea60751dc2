"""The single registry of pretrained artifacts: where each comes from, where it is cached, its sha256.

Every model nsdbench uses has three modes:
  pretrained  the published weights, read from NSDBENCH_HOME/weights (fetched by `nsdbench weights fetch`);
  random      the real architecture with seeded random weights (full-size timing and plumbing);
  tiny        a reduced, seeded random architecture that runs fast on a CPU (tests, CI, offline demo).
Runs in `random` or `tiny` mode are smoke runs and never appear in the main leaderboard views.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nsdbench import config
from nsdbench.errors import UsageError, WeightsMissing
from nsdbench.files import atomic_path, sha256_file

WeightsMode = Literal["pretrained", "random", "tiny"]
MODES: tuple[str, ...] = ("pretrained", "random", "tiny")

Kind = Literal["url", "hf", "hf-snapshot"]


@dataclass(frozen=True)
class Artifact:
    """One published artifact: a state dict at a URL, a file on the Hugging Face Hub, or a Hub repo."""

    name: str
    description: str
    kind: Kind
    source: str  # URL for "url"; repo id for "hf" / "hf-snapshot"
    filename: str = ""  # file name in the cache folder (and in the Hub repo for "hf")
    sha256: str | None = None  # the published file's hash when known; checked by `verify`
    revision: str | None = None
    allow_patterns: tuple[str, ...] = field(default_factory=tuple)  # for "hf-snapshot"
    used_by: tuple[str, ...] = field(default_factory=tuple)
    loader: str = ""  # how it is read: "diffusers", "transformers", "open_clip", "state_dict", ...
    subfolder: str = ""  # the model's folder inside a Hub snapshot ("unet", "vae", "text_encoder", ...)
    variant: str = ""  # dtype variant of the files ("fp16"), as diffusers' `variant=`
    size_bytes: int | None = None  # download size when known


_REGISTRY: dict[str, Artifact] = {}


def register(artifact: Artifact) -> Artifact:
    """Add an artifact; registering the same name twice with a different definition is an error."""
    existing = _REGISTRY.get(artifact.name)
    if existing is not None and existing != artifact:
        raise ValueError(f"weights artifact {artifact.name!r} registered twice with different definitions")
    _REGISTRY[artifact.name] = artifact
    return artifact


def unregister(name: str) -> None:
    """Remove an artifact from the registry (a plugin withdrawn, a test's own artifact); absent is fine."""
    _REGISTRY.pop(name, None)


@contextmanager
def temporarily_registered(artifact: Artifact) -> Iterator[Artifact]:
    """Register `artifact` for the body, replacing one of the same name, then put the registry back."""
    before = _REGISTRY.get(artifact.name)
    _REGISTRY[artifact.name] = artifact
    try:
        yield artifact
    finally:
        if before is None:
            _REGISTRY.pop(artifact.name, None)
        else:
            _REGISTRY[artifact.name] = before


ARTIFACT_MODULES = ("nsdbench.metrics.networks", "nsdbench.metrics.gnet8", "nsdbench.methods.registry")
COMPONENT_PACKAGE = "nsdbench.methods.components"  # every module below it is imported (they register)


def artifact_modules() -> list[str]:
    """Modules that register artifacts at import: the fixed list plus every module of the components
    package (found with pkgutil, so a new component module needs no edit here)."""
    import importlib
    import pkgutil

    found = list(ARTIFACT_MODULES)
    package = importlib.import_module(COMPONENT_PACKAGE)
    for info in pkgutil.walk_packages(package.__path__, prefix=COMPONENT_PACKAGE + "."):
        found.append(info.name)
    return found


def _load_builtin_entries() -> None:
    # Modules that define artifacts register them on import; importing them here makes the registry
    # complete for `nsdbench weights list` without running any method.
    import importlib

    for module in artifact_modules():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a module not written yet in this checkout
            if exc.name != module:
                raise


def artifacts() -> dict[str, Artifact]:
    _load_builtin_entries()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> Artifact:
    if name in _REGISTRY:  # registered by a module already imported: no need to import every other one
        return _REGISTRY[name]
    table = artifacts()
    if name not in table:
        known = ", ".join(table) or "none"
        raise UsageError(f"unknown weights artifact {name!r} (known: {known})")
    return table[name]


def method_artifacts(method_name: str, variant: str | None = None) -> list[Artifact]:
    """What `nsdbench weights fetch --method NAME` downloads: what an instance of the method (pretrained
    mode, default settings or the variant) says it loads, else every artifact whose used_by names it."""
    from nsdbench.methods.registry import create_method

    method = create_method(method_name, variant, weights_mode="pretrained")
    names = [a.name if isinstance(a, Artifact) else str(a) for a in method.required_artifacts()]
    if not names:
        names = [a.name for a in artifacts().values() if method_name in a.used_by]
    return [get(n) for n in dict.fromkeys(names)]


def download_size(arts: list[Artifact]) -> tuple[int, int]:
    """(known total bytes, number of artifacts of unknown size) of those not yet cached."""
    todo = [a for a in arts if not is_cached(a.name)]
    return sum(a.size_bytes or 0 for a in todo), sum(a.size_bytes is None for a in todo)


def weights_dir() -> Path:
    path = config.home() / "weights"
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_path(name: str) -> Path:
    """Where the artifact lives once fetched: a file, or a folder for Hub snapshots."""
    art = get(name)
    base = weights_dir() / art.name
    return base if art.kind == "hf-snapshot" else base / art.filename


def is_cached(name: str) -> bool:
    path = local_path(name)
    return path.is_dir() and any(path.iterdir()) if get(name).kind == "hf-snapshot" else path.is_file()


def require(name: str) -> Path:
    """The cached artifact's path, or a one-line error naming it and the command that fetches it."""
    path = local_path(name)
    if not is_cached(name):
        raise WeightsMissing(
            f"pretrained weights {name!r} are not in the cache ({path}); run `nsdbench weights fetch {name}` "
            f"on a machine with network access, or use --weights random|tiny"
        )
    return path


def require_all(names: Iterable[str]) -> None:
    """Check every artifact a command needs before any work: one error listing all missing ones and
    the one `nsdbench weights fetch A B ...` command that gets them."""
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        get(name)  # an unknown name is a bug in the caller's list: fail loudly, not as "missing"
    missing = [n for n in wanted if not is_cached(n)]
    if missing:
        raise WeightsMissing(
            f"{len(missing)} pretrained artifact(s) not in the cache ({weights_dir()}): {', '.join(missing)}; "
            f"run `nsdbench weights fetch {' '.join(missing)}` on a machine with network access, "
            f"or use --weights random|tiny"
        )


def fetch(name: str) -> Path:
    """Download one artifact into NSDBENCH_HOME/weights with its standard client."""
    art = get(name)
    dest = weights_dir() / art.name
    dest.mkdir(parents=True, exist_ok=True)
    if art.kind == "url":
        import torch.hub

        with atomic_path(dest / art.filename, temp=dest / (art.filename + ".part")) as tmp:
            torch.hub.download_url_to_file(art.source, str(tmp), progress=True)
    elif art.kind == "hf":
        from huggingface_hub import hf_hub_download

        hf_hub_download(art.source, art.filename, revision=art.revision, local_dir=dest)
    elif art.kind == "hf-snapshot":
        from huggingface_hub import snapshot_download

        snapshot_download(
            art.source, revision=art.revision, local_dir=dest, allow_patterns=list(art.allow_patterns) or None
        )
    else:  # pragma: no cover - guarded by the Kind literal
        raise ValueError(art.kind)
    path = local_path(name)
    _write_sha_record(name, path)
    return path


def _is_content(rel: Path) -> bool:
    """Files that are the artifact: not nsdbench's own record, not huggingface_hub's download metadata
    (`.cache/`, rewritten with a timestamp on every fetch), not partial downloads."""
    return rel.name != "nsdbench-sha256.json" and rel.parts[0] != ".cache" and not rel.name.endswith(".part")


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (sorted relative names and their hashes)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and _is_content(p.relative_to(path))):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _sha_record_path(name: str) -> Path:
    return weights_dir() / get(name).name / "nsdbench-sha256.json"


def _write_sha_record(name: str, path: Path) -> str:
    digest = sha256_path(path)
    _sha_record_path(name).write_text(json.dumps({"name": name, "sha256": digest}))
    return digest


def recorded_sha256(name: str) -> str:
    """sha256 of the cached artifact (recorded at fetch time, computed if the record is missing)."""
    rec = _sha_record_path(name)
    if rec.is_file():
        return json.loads(rec.read_text())["sha256"]
    return _write_sha_record(name, require(name))


def verify(name: str) -> tuple[bool, str]:
    """Recompute the cached artifact's hash; compare with the published one when known, else with the
    one recorded at fetch time (so a file changed on disk since is caught either way)."""
    path = require(name)
    digest = sha256_path(path)
    expected = get(name).sha256
    if expected is None and _sha_record_path(name).is_file():
        expected = json.loads(_sha_record_path(name).read_text())["sha256"]
    ok = expected is None or digest == expected
    return ok, digest


def remove(name: str) -> None:
    shutil.rmtree(weights_dir() / get(name).name, ignore_errors=True)


def check_mode(mode: str) -> WeightsMode:
    if mode not in MODES:
        raise UsageError(f"unknown weights mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def is_smoke(mode: str) -> bool:
    return mode != "pretrained"


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build random/tiny models from a fixed seed without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def module_sha256(module) -> str:
    """Content hash of a module's parameters and buffers (identity of random/tiny weights)."""
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.float()
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def load_state_dict(path: Path, mmap: bool = False) -> dict:
    """Read a state dict safely (never unpickles arbitrary objects). mmap=True maps a zip-format file: its
    tensors are read from the page cache as the caller copies them into its own (they stay backed by the
    file, so a caller must copy them, never keep them); other files are read whole."""
    import torch

    if mmap and _stored_zip(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _stored_zip(path: Path) -> bool:
    """A zip-format torch file whose members are all stored uncompressed: the only kind torch can map (it
    maps deflated members' compressed bytes as if they were the tensors). Legacy files are not zips."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    except (zipfile.BadZipFile, OSError):
        return False
