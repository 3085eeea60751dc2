"""Protocol definitions, identity hashes and the `nsdbench protocols` command."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nsdbench.cli import main
from nsdbench.errors import UsageError
from nsdbench.metrics.names import HIGHER_IS_BETTER, LABELS, METRIC_ORDER
from nsdbench.metrics.protocols import (
    PROTOCOL_VERSIONS,
    PROTOCOLS,
    BrainMetric,
    FeatureMetric,
    JpegStep,
    PixelMetric,
    ResizeStep,
    differences,
    get_protocol,
    with_encoder,
)


def test_names_tables_are_complete():
    assert set(HIGHER_IS_BETTER) == set(LABELS) == set(METRIC_ORDER)
    assert [m for m in METRIC_ORDER if not HIGHER_IS_BETTER[m]] == ["effnet_b", "swav"]


def test_shipped_protocols_and_their_key_choices():
    assert list(PROTOCOLS) == [
        "nsdbench-v1",
        "brain-diffuser-2023",
        "mindeye",
        "second-sight-2023",
        "mindeye1",
    ]
    bd, me, ss, v1 = (
        get_protocol(n) for n in ("brain-diffuser-2023", "mindeye", "second-sight-2023", "nsdbench-v1")
    )
    assert bd.metric("ssim").kind == "ssim-columnwise" and v1.metric("ssim").kind == "ssim-2d"
    assert ss.metric("ssim").sample_covariance and ss.metric("ssim").data_range == "gt-range"
    assert (
        me.metric("clip_2way").precision == "fp16-openai" and me.metric("effnet_b").weights == "IMAGENET1K_V2"
    )
    assert ss.metric("alexnet2").normalize == "clip" and bd.metric("alexnet2").normalize == "imagenet"
    assert (bd.split, me.split, ss.split, v1.split) == ("nsd982", "nsd1000", "nsd897", "nsd982")
    assert "alexnet7" not in bd.metric_names and "clip_cos" in ss.metric_names
    for p in PROTOCOLS.values():  # metrics listed in the canonical order
        assert p.metric_names == sorted(p.metric_names, key=METRIC_ORDER.index)
        for m in p.metrics:
            if isinstance(m, FeatureMetric | PixelMetric):
                assert m.gt_chain and m.rec_chain


def test_hash_identifies_the_definition():
    p = get_protocol("brain-diffuser-2023")
    assert p.hash == get_protocol("brain-diffuser-2023").hash and len(p.hash) == 16
    assert len({q.hash for q in PROTOCOLS.values()}) == 5
    changed = dataclasses.replace(
        p, metrics=(dataclasses.replace(p.metrics[1], sample_covariance=True),) + p.metrics[2:]
    )
    assert changed.hash != p.hash
    assert p.identity == f"brain-diffuser-2023@1.1#{p.hash}"


def test_unknown_protocol():
    with pytest.raises(UsageError, match="unknown protocol 'x'"):
        get_protocol("x")


def test_differences_table_shows_the_ssim_split():
    rows = differences(list(PROTOCOLS.values()))
    ssim = [r for r in rows if r["metric"] == "ssim" and r["field"] == "computation"]
    assert (
        ssim and "columnwise" in ssim[0]["brain-diffuser-2023"] and "sample" in ssim[0]["second-sight-2023"]
    )
    assert any(r["metric"] == "clip_2way" and r["field"] == "precision" for r in rows)
    # fields that agree everywhere are not listed
    assert not any(r["metric"] == "alexnet2" and r["field"] == "layer" for r in rows)


def test_cli_list_and_show(capsys):
    assert main(["protocols", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in doc["protocols"]] == list(PROTOCOLS) and doc["differences"]
    assert main(["protocols", "show", "second-sight-2023", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hash"] == PROTOCOLS["second-sight-2023"].hash and doc["split"] == "nsd897"
    assert main(["protocols", "show", "brain-diffuser-2023"]) == 0
    text = capsys.readouterr().out
    assert "ssim-columnwise" in text and "where the protocols differ" in text
    assert main(["protocols", "show", "nope"]) == 2


# identities recorded with scores before issue 14 (main at aaf4a64): they must never change
RECORDED_1_0 = {
    "nsdbench-v1": "1d41218b1452689e",
    "brain-diffuser-2023": "594a13e352a3b8af",
    "mindeye": "fa7684691170242e",
    "second-sight-2023": "a95d6064368230bf",
}


def test_earlier_versions_stay_readable_with_their_recorded_hash():
    for name, h in RECORDED_1_0.items():
        old = get_protocol(f"{name}@1.0")
        assert old.hash == h and get_protocol(f"{name}@1.0#{h}") is old
        new = get_protocol(name)
        assert new.version == "1.1" and new.hash != h and PROTOCOL_VERSIONS[f"{name}@1.1"] is new
        assert [c.version for c in new.changelog] == ["1.0"] + ["1.1"] * (len(new.changelog) - 1)
    with pytest.raises(UsageError, match="does not match"):
        get_protocol("mindeye@1.0#0000000000000000")
    with pytest.raises(UsageError, match="unknown protocol version 'mindeye@9'"):
        get_protocol("mindeye@9")


def test_published_protocols_keep_their_papers_choices():
    ss, me, me1, v1, bd = (
        get_protocol(n)
        for n in ("second-sight-2023", "mindeye", "mindeye1", "nsdbench-v1", "brain-diffuser-2023")
    )
    old_ss = get_protocol("second-sight-2023@1.0")
    lanczos768 = ResizeStep("pil", "lanczos", 768)
    for m in ss.metrics:  # every ground-truth chain gains the 768-px Lanczos step, nothing else changes
        if isinstance(m, PixelMetric | FeatureMetric):
            assert m.gt_chain == (lanczos768,) + old_ss.metric(m.name).gt_chain
            assert m.rec_chain == old_ss.metric(m.name).rec_chain
    brain = {p.name: [m for m in p.metrics if isinstance(m, BrainMetric)] for p in (ss, me, v1)}
    assert {(m.encoder, m.beta_normalization) for m in brain["second-sight-2023"]} == {
        ("gnet8", "all-sessions-zscore")
    }
    assert {(m.encoder, m.encoder_input) for m in brain["mindeye"]} == {
        ("gnet8", (ResizeStep("torch", "bilinear", 256, False),))
    }
    assert {(m.encoder, m.beta_normalization) for m in brain["nsdbench-v1"]} == {
        ("nsdbench", "session-zscore")
    }
    assert all(m.encoder_artifact == "gnet8-multisubject" for m in brain["mindeye"])
    # TF32: exact float32 for nsdbench's own protocol, the reference's GPU defaults for the papers'
    feats = {p.name: [m for m in p.metrics if isinstance(m, FeatureMetric)] for p in (ss, me, v1, bd)}
    assert all(m.tf32_conv is False and not m.tf32 for m in feats["nsdbench-v1"])
    assert all(m.tf32_conv and m.tf32 for m in feats["mindeye"])
    assert all(m.tf32_conv and not m.tf32 for m in feats["second-sight-2023"] + feats["brain-diffuser-2023"])
    assert me1.split == "nsd982" and not any(isinstance(m, BrainMetric) for m in me1.metrics)
    assert me1.metric("ssim").gt_chain[:2] == (ResizeStep("pil", "bicubic", 256), JpegStep(100, "4:2:0"))
    assert me1.metric("ssim").rec_chain == me.metric("ssim").rec_chain


def test_encoder_choice_only_where_the_protocol_allows_it():
    v1 = get_protocol("nsdbench-v1")
    g = with_encoder(v1, "gnet8")
    assert g.hash != v1.hash and {m.encoder for m in g.metrics if isinstance(m, BrainMetric)} == {"gnet8"}
    assert with_encoder(v1, None) is v1 and with_encoder(v1, "nsdbench") is v1
    with pytest.raises(UsageError, match="fixes its brain encoder to gnet8"):
        with_encoder(get_protocol("mindeye"), "nsdbench")
    with pytest.raises(UsageError, match="allows nsdbench, gnet8"):
        with_encoder(v1, "other")
    with pytest.raises(UsageError, match="no brain metrics"):
        with_encoder(get_protocol("brain-diffuser-2023"), "gnet8")


def test_show_prints_the_changelog(capsys):
    assert main(["protocols", "show", "second-sight-2023"]) == 0
    text = capsys.readouterr().out
    assert "changelog" in text and "768" in text and "Size:" in text
    assert main(["protocols", "show", "second-sight-2023@1.0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hash"] == RECORDED_1_0["second-sight-2023"] and doc["changelog"][0]["version"] == "1.0"
