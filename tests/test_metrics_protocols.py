"""Protocol definitions, identity hashes and the `nsdbench protocols` command."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nsdbench.cli import main
from nsdbench.errors import UsageError
from nsdbench.metrics.names import HIGHER_IS_BETTER, LABELS, METRIC_ORDER
from nsdbench.metrics.protocols import PROTOCOLS, FeatureMetric, PixelMetric, differences, get_protocol


def test_names_tables_are_complete():
    assert set(HIGHER_IS_BETTER) == set(LABELS) == set(METRIC_ORDER)
    assert [m for m in METRIC_ORDER if not HIGHER_IS_BETTER[m]] == ["effnet_b", "swav"]


def test_shipped_protocols_and_their_key_choices():
    assert list(PROTOCOLS) == ["nsdbench-v1", "brain-diffuser-2023", "mindeye", "second-sight-2023"]
    bd, me, ss, v1 = (
        get_protocol(n) for n in ("brain-diffuser-2023", "mindeye", "second-sight-2023", "nsdbench-v1")
    )
    assert bd.metric("ssim").kind == "ssim-columnwise" and v1.metric("ssim").kind == "ssim-2d"
    assert ss.metric("ssim").sample_covariance and ss.metric("ssim").data_range == "gt-range"
    assert me.metric("clip_2way").precision == "fp16" and me.metric("effnet_b").weights == "IMAGENET1K_V2"
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
    assert len({q.hash for q in PROTOCOLS.values()}) == 4
    changed = dataclasses.replace(
        p, metrics=(dataclasses.replace(p.metrics[1], sample_covariance=True),) + p.metrics[2:]
    )
    assert changed.hash != p.hash
    assert p.identity == f"brain-diffuser-2023@1.0#{p.hash}"


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
