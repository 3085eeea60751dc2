"""Method runs: a frozen spec, a run folder, deterministic shards and batches, per-protocol scores.

Run folder layout (everything written atomically: temp file in the same folder + rename):

    spec.toml                          the RunSpec (identity of the run's images; checked on resume)
    run.log                            one line per event, appended by every worker
    subjXX/<nsd_id>_<sample>.png       reconstructions, at the size the method produces
    subjXX/<nsd_id>_<sample>.<extra>   named extras of a reconstruction (e.g. `stage1.png`, `latent.npy`)
    shards/subjXX-NNNN.json            a shard's record: its fixed batches and the sha256 of their files
    checkpoints/subjXX/<id>_<s>.npz    mid-image state of an item being generated (deleted once written)
    encoders/<sha>.json                identity of every guidance encoder the method used
    scores/<protocol>/subjXX.parquet   the subject's scores under one protocol (nsdbench.scoring)
    scores/<protocol>/subjXX.json      completion record of that scoring: digest of the PNGs it scored

Work is cut into shards of (subject, consecutive test ids ascending, `shard_size` ids), each shard into
fixed batches of `batch_size` items from its canonical item list; worker k of N takes shards k, k+N, ...
A batch with a missing or corrupt member is regenerated whole, so output never depends on resume state.
"""
