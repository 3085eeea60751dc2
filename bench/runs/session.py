"""One worker's view of a run: the data opened once, one method instance (setup once, close at the end),
each subject fitted once, shards generated batch by batch."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsdbench import config
from nsdbench.caches import ArrayCache
from nsdbench.devices import resolve_device
from nsdbench.errors import NSDBenchError
from nsdbench.methods.adapter import GroundTruthDenied, Output, RunContext, SubjectData, TestItem
from nsdbench.methods.registry import get_method, resolve_settings
from nsdbench.nsd import open_nsd
from nsdbench.nsd.ground_truth import GroundTruthStimuli
from nsdbench.nsd.splits import get_split, split_within
from nsdbench.progress import Progress
from nsdbench.runs.folder import (
    as_reconstruction_array,
    checkpoint_dir,
    encode_extra,
    encode_png,
    extra_path,
    file_digest,
    log_event,
    png_path,
    subject_dir,
    write_owned,
)
from nsdbench.runs.shards import Shard, batch_is_done, make_shards, read_record, shard_record_path
from nsdbench.runs.spec import RunSpec

if TYPE_CHECKING:
    from nsdbench.metrics.guidance import GuidanceEncoder
    from nsdbench.nsd.loader import NSD

ENCODERS_DIR = "encoders"


class RunSession:
    """Generation for one worker; scoring lives in nsdbench.runs.scores and takes a session."""

    def __init__(
        self,
        run_dir: Path,
        spec: RunSpec,
        progress: Progress | None = None,
        force: bool = False,
        protocols: tuple[str, ...] = (),
        device: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.spec = spec
        self.protocols = tuple(protocols)
        self.progress = progress or Progress()
        self.force = force  # --no-resume: regenerate even what is complete
        self.device = resolve_device(device or spec.device, require_available=False)
        self.method_class = get_method(spec.method)
        self._method: Any = None
        self._setup_done = False
        self._nsd = None
        self._splits: dict[tuple[int, str], Any] = {}
        self._nested: dict[str, bool] = {}
        self._data: dict[int, Any] = {}
        self._fitted: dict[int, Any] = {}
        self._encoders: dict[tuple[int, str], Any] = {}
        self._shards: list[Shard] | None = None

    # -- data ------------------------------------------------------------------------------------
    @property
    def nsd(self):
        if self._nsd is None:
            self._nsd = open_data(self.spec.data)
        return self._nsd

    def split(self, subject: int, name: str | None = None):
        """The subject's run split, or split `name` (a nested protocol's, scored on a subset of the images)."""
        key = (subject, name or self.spec.split)
        if key not in self._splits:
            self._splits[key] = get_split(self.nsd, key[1], subject)
        return self._splits[key]

    def nested(self, name: str) -> bool:
        """True when split `name` lies within the run's split for every subject (by their test ids)."""
        if name not in self._nested:
            self._nested[name] = split_within(self.nsd, name, self.spec.split, self.spec.subjects)
        return self._nested[name]

    def shards(self) -> list[Shard]:
        if self._shards is None:
            ids = {s: self.split(s).test_ids for s in self.spec.subjects}
            self._shards = make_shards(ids, self.spec.shard_size)
        return self._shards

    def subject_data(self, subject: int):
        if subject not in self._data:
            self._data[subject] = SubjectData(self.nsd, subject, self.split(subject))
        return self._data[subject]

    # -- method lifecycle ------------------------------------------------------------------------
    @property
    def method(self):
        """The run's method instance (created once per session, i.e. once per worker process)."""
        if self._method is None:
            settings = resolve_settings(self.method_class, None, self.spec.settings)
            self._method = self.method_class(
                settings, device=self.device, dtype=self.spec.dtype, weights_mode=self.spec.weights
            )
        return self._method

    def ready_method(self, subject: int):
        """The method instance after its one `setup` call."""
        method = self.method
        if not self._setup_done:
            t0 = time.perf_counter()
            method.setup(self.context(subject))
            self._setup_done = True
            log_event(self.run_dir, f"setup {self.spec.method} {time.perf_counter() - t0:.2f}s")
        return method

    def close(self) -> None:
        if self._method is not None:
            self._method.close()
            self._method = None
            self._setup_done = False
            self._fitted.clear()
            self._encoders.clear()

    def context(self, subject: int, progress_key: str | None = None):
        adv = (lambda n, k=progress_key: self.progress.advance(k, n)) if progress_key else None
        total = (lambda t, u, k=progress_key: self.progress.set_total(k, t, u)) if progress_key else None
        if self.method_class.reads_ground_truth:
            gt: Any = GroundTruthStimuli(self.nsd, subject, self.split(subject))
        else:
            gt = GroundTruthDenied(self.spec.method)
        return RunContext(
            method=self.spec.method,
            subject=subject,
            split=self.spec.split,
            data=self.subject_data(subject),
            base_seed=self.spec.seed,
            samples=self.spec.samples,
            device=self.device,
            dtype=self.spec.dtype,
            weights_mode=self.spec.weights,
            settings=self.method.settings,
            cache=ArrayCache(config.cache_dir("methods", self.spec.method)),
            progress=adv,
            progress_total=total,
            checkpoint_dir=checkpoint_dir(self.run_dir, subject),
            ground_truth=gt,
            encoder_loader=lambda name, s=subject: self.encoder(s, name),
            encoder_recorder=lambda identity: record_guiding_encoder(self.run_dir, identity),
        )

    def encoder(self, subject: int, name: str) -> GuidanceEncoder:
        """A guidance encoder, loaded once per (subject, name); its identity is recorded in the folder."""
        key = (subject, name)
        if key not in self._encoders:
            from nsdbench.metrics.guidance import load_guidance_encoder

            # fitted on this run's own training split: another split's training set may hold its test images
            enc = load_guidance_encoder(
                name,
                self.nsd,
                subject,
                weights_mode=self.spec.weights,
                device=self.device,
                split=self.spec.split,
            )
            record_guiding_encoder(self.run_dir, str(enc.identity))
            self._encoders[key] = enc
        return self._encoders[key]

    # -- stages ----------------------------------------------------------------------------------
    def fitted(self, subject: int) -> Any:
        """The method fitted for `subject` (once per session; methods cache decoders on disk)."""
        if subject not in self._fitted:
            method = self.ready_method(subject)
            key = f"fit-{subject}"
            self.progress.start(key, f"subj{subject:02d} fit", None, unit="step")
            t0 = time.perf_counter()
            self._fitted[subject] = method.fit(self.subject_data(subject), self.context(subject, key))
            self.progress.finish(key)
            log_event(self.run_dir, f"fit subj{subject:02d} {time.perf_counter() - t0:.2f}s")
        return self._fitted[subject]

    def run_shard(self, shard: Shard) -> int:
        """Make the shard complete, batch by batch; returns the number of images (re)generated."""
        spec = self.spec
        batches = shard.batches(spec.samples, spec.batch_size)
        rec = {"batches": {}} if self.force else read_record(self.run_dir, spec, shard)
        done = {
            i
            for i, b in enumerate(batches)
            if not self.force and batch_is_done(self.run_dir, shard.subject, b, rec["batches"].get(str(i)))
        }
        record = {
            "shard": shard.name,
            "spec_hash": spec.hash,
            "subject": shard.subject,
            "nsd_ids": list(shard.nsd_ids),
            "batch_size": spec.batch_size,
            "batches": {str(i): rec["batches"][str(i)] for i in sorted(done)},
        }
        rkey = f"rec-{shard.subject}"
        self.progress.advance(rkey, sum(len(batches[i]) for i in done))
        written = 0
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            if i in done:
                continue
            record["batches"][str(i)] = {"files": self._generate_batch(shard, i, batch)}
            write_owned(
                shard_record_path(self.run_dir, shard), json.dumps(record, indent=1, sort_keys=True).encode()
            )
            written += len(batch)
            self.progress.advance(rkey, len(batch))
        if written:
            log_event(self.run_dir, f"shard {shard.name} {written} images {time.perf_counter() - t0:.2f}s")
        elif not shard_record_path(self.run_dir, shard).is_file():
            write_owned(
                shard_record_path(self.run_dir, shard), json.dumps(record, indent=1, sort_keys=True).encode()
            )
        return written

    def _generate_batch(self, shard: Shard, index: int, batch: list[tuple[int, int]]) -> dict[str, str]:
        """Generate one fixed batch whole and write its files; returns file name -> sha256."""
        spec = self.spec
        fitted = self.fitted(shard.subject)
        method = self.ready_method(shard.subject)
        ctx = self.context(shard.subject)
        wanted = set(batch)
        items = [TestItem(n, s, ctx.seed(n, s)) for n, s in batch]
        files: dict[str, str] = {}
        for out in method.reconstruct(items, fitted, ctx):
            if isinstance(out, Output):
                nsd_id, sample, image, extras = out.nsd_id, out.sample, out.image, dict(out.extras)
            else:
                (nsd_id, sample, image), extras = out, {}
            key = (int(nsd_id), int(sample))
            if key not in wanted:
                raise NSDBenchError(
                    f"method {spec.method}: returned NSD id {nsd_id} sample {sample}, which batch {index} of "
                    f"shard {shard.name} did not ask for (or returned twice)"
                )
            wanted.discard(key)
            blobs = {f"{key[0]}_{key[1]}.{name}": encode_extra(spec.method, *key, name, value)
                     for name, value in sorted(extras.items())}  # fmt: skip
            blobs[f"{key[0]}_{key[1]}.png"] = encode_png(as_reconstruction_array(image, spec.method, *key))
            for name, data in blobs.items():  # extras first, the PNG last: the PNG marks the item written
                write_owned(subject_dir(self.run_dir, shard.subject) / name, data)
                files[name] = hashlib.sha256(data).hexdigest()
            ctx.checkpoint(TestItem(*key, ctx.seed(*key))).clear()
        if wanted:
            n, s = min(wanted)
            raise NSDBenchError(
                f"method {spec.method}: returned no image for NSD id {n} sample {s} "
                f"({len(wanted)} missing in batch {index} of shard {shard.name})"
            )
        return files


def record_guiding_encoder(run_dir: Path, identity: str) -> None:
    """Note that the run's method was guided by the encoder `identity` (one small file per identity)."""
    name = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = Path(run_dir) / ENCODERS_DIR / f"{name}.json"
    if not path.is_file():
        write_owned(path, json.dumps({"identity": identity}).encode())


def guiding_encoders(run_dir: Path) -> list[str]:
    """Identities of every guidance encoder the run's method used (sorted)."""
    folder = Path(run_dir) / ENCODERS_DIR
    out = set()
    for p in folder.glob("*.json") if folder.is_dir() else ():
        try:
            out.add(str(json.loads(p.read_text())["identity"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out)


def open_data(data: str | None) -> NSD:
    """The NSD named by a spec: 'synthetic' (generated on first use) or an NSD root."""
    return open_nsd("synthetic" if data in (None, "", "synthetic") else data)


def data_label(nsd: NSD, data: str) -> str:
    return f"synthetic:{nsd.root}" if data in ("", "synthetic") else str(data)


__all__ = [
    "RunSession",
    "data_label",
    "extra_path",
    "file_digest",
    "guiding_encoders",
    "open_data",
    "png_path",
]  # fmt: skip
