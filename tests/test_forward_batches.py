"""Forward chunk sizes: per device type (mps is its own type), recorded in a score's provenance beside the
brain encoders' buffering, and compared when a crashed `score` resumes from its per-subject files."""

from __future__ import annotations

import pandas as pd

from nsdbench.metrics.forward import FORWARD_BATCH, FeaturePass, batches_match, device_type, forward_batch
from nsdbench.score_files import write_score_file
from nsdbench.scoring import completed_parquet


def test_device_type_is_the_devices_own():
    assert device_type("cuda:1") == device_type("cuda") == "cuda"
    assert device_type("mps") == "mps" and device_type("mps:0") == "mps" and device_type("cpu") == "cpu"
    assert forward_batch("mps", "alexnet") == forward_batch("cpu", "alexnet") == 8
    assert forward_batch("cuda:1", "alexnet") == FORWARD_BATCH["cuda"]["alexnet"]


def test_mps_features_are_not_cached_under_the_cpu_key():
    fp = FeaturePass("alexnet", "imagenet1k-v1", "float32", "imagenet", ())
    parts = {
        d: fp.part(["features.5"], "tiny", forward_batch(d, "alexnet"), device_type(d))
        for d in ("cpu", "mps")
    }
    assert parts["cpu"] != parts["mps"] and parts["mps"]["device_type"] == "mps"


def test_batches_match_compares_every_recorded_chunk_size():
    now = {"forward_batch": {"alexnet": 8, "clip_vit_l14": 8}, "brain_forward_batch": 8}
    assert batches_match(now, "cpu")
    assert not batches_match(now, "cuda")
    assert not batches_match({**now, "forward_batch": {"alexnet": 64}}, "cpu")
    assert not batches_match({**now, "brain_forward_batch": 64}, "cpu")
    assert batches_match({"forward_batch": 8}, "cpu")  # written before brain_forward_batch: the brain one
    assert not batches_match({}, "cpu")


def test_resume_rescores_a_subject_scored_with_other_chunk_sizes(tmp_path):
    path = tmp_path / "subj01.parquet"
    meta = {"run_id": "r", "subject": 1, "protocol_hash": "h"}
    df = pd.DataFrame({"nsd_id": [1], "value": [0.5]})
    write_score_file(
        df, path, {**meta, "provenance": {"forward_batch": {"alexnet": 8}, "brain_forward_batch": 8}}
    )
    assert completed_parquet(path, "r", 1, "h", "cpu")
    assert not completed_parquet(path, "r", 1, "h", "cuda")
    write_score_file(
        df, path, {**meta, "provenance": {"forward_batch": {"alexnet": 256}, "brain_forward_batch": 8}}
    )
    assert not completed_parquet(path, "r", 1, "h", "cpu")
