"""SubjectData: captions, single trials, ROIs by label, and the seal around test stimuli."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from nsdbench.errors import NSDBenchError, UsageError
from nsdbench.nsd.loader import NSD
from nsdbench.nsd.splits import get_split, split_betas
from nsdbench.nsd.subject import SingleTrials, SubjectData


@pytest.fixture(scope="module")
def data(nsd) -> SubjectData:
    return SubjectData(nsd, 1, get_split(nsd, "nsd982", 1))


def test_the_adapter_interface_hands_methods_the_nsd_subject_data_class():
    from nsdbench.methods import adapter

    assert adapter.SubjectData is SubjectData


def test_training_captions_are_the_five_coco_captions(data, nsd):
    ids = list(data.train_ids[:3])
    caps = data.captions(ids)
    assert caps == nsd.captions(ids)
    assert all(len(c) == 5 and all(isinstance(t, str) and t for t in c) for c in caps)
    library = next(i for i in range(data.n_images) if i not in set(data.test_ids))
    assert len(data.captions([library])[0]) == 5


def test_test_captions_and_images_are_refused(data):
    test_id = data.test_ids[2]
    with pytest.raises(NSDBenchError, match=f"caption of test NSD id {test_id} \\(nsd982\\)"):
        data.captions([data.train_ids[0], test_id])
    with pytest.raises(NSDBenchError, match=f"image of test NSD id {test_id} \\(nsd982\\)"):
        data.images([test_id])


def _reachable(obj, depth: int = 0, seen: set[int] | None = None):
    """Every object reachable from `obj` through public attributes (properties evaluated)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 3:
        return
    seen.add(id(obj))
    yield obj
    if isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, np.generic)):
        return
    if isinstance(obj, (tuple, list, set, frozenset)):
        for x in list(obj)[:5]:
            yield from _reachable(x, depth + 1, seen)
        return
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # noqa: BLE001, S112 - a property may refuse; that path leads nowhere
            continue
        if inspect.ismethod(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
            continue
        yield from _reachable(value, depth + 1, seen)


def test_no_public_attribute_leads_to_the_dataset(data):
    assert all(k.startswith("_") for k in vars(data)), "state must live in private attributes"
    for obj in _reachable(data):
        assert not isinstance(obj, NSD), "a public attribute leads to the NSD object"
        assert not hasattr(obj, "images") or obj is data


def test_every_public_method_refuses_test_stimuli(data, nsd):
    """Call each public method that takes NSD ids with a test id: none may return its image or caption."""
    test_id = data.test_ids[0]
    test_image = nsd.images([test_id])[0]
    test_caps = nsd.captions([test_id])[0]
    for name, fn in inspect.getmembers(data, inspect.ismethod):
        if name.startswith("_"):
            continue
        params = inspect.signature(fn).parameters
        if "nsd_ids" not in params:
            continue
        try:
            out = fn([test_id])
        except (NSDBenchError, UsageError):
            continue
        arr = np.asarray(out, dtype=object if name == "captions" else None)
        assert not (arr.shape[-3:] == test_image.shape and np.array_equal(arr[0], test_image)), name
        assert not isinstance(out, list) or out != [test_caps], name
    train = data.train_images()
    assert len(train) == len(data.train_ids)
    assert not any(np.array_equal(im, test_image) for im in train)


def test_roi_by_label_and_several_at_once(data, nsd):
    vis = nsd.roi(1, "prf-visualrois")
    labels = {v: k for k, v in nsd.roi_labels(1, "prf-visualrois").items()}
    v1v = nsd.roi_mask(1, "prf-visualrois:V1v")
    np.testing.assert_array_equal(v1v, vis == labels["V1v"])
    both = nsd.roi_mask(1, ["prf-visualrois:V1v", "prf-visualrois:V1d"])
    np.testing.assert_array_equal(both, (vis == labels["V1v"]) | (vis == labels["V1d"]))
    faces = nsd.roi(1, "floc-faces")
    ffa = {v: k for k, v in nsd.roi_labels(1, "floc-faces").items()}["FFA-1"]
    b = data.betas("train", roi="floc-faces:FFA-1", normalize="none")
    assert b.shape == (len(data.train_ids), int((faces == ffa).sum()))
    # the betas of one label are the matching columns of the whole volume's betas (C order over X, Y, Z)
    whole = data.betas("train", roi="floc-faces", normalize="none")
    cols = (faces == ffa)[faces > 0]
    np.testing.assert_array_equal(b, whole[:, cols])
    two = data.betas("test", roi=["streams:early", "streams:ventral"], normalize="none")
    streams = nsd.roi(1, "streams")
    assert two.shape[1] == int(np.isin(streams, [1, 5]).sum())
    with pytest.raises(UsageError, match="no label 'V9'"):
        nsd.roi_mask(1, "prf-visualrois:V9")


def test_betas_match_split_betas_and_train_zscore(data, nsd):
    sp = get_split(nsd, "nsd982", 1)
    raw_train = split_betas(nsd, sp, "train", normalize="none")
    np.testing.assert_array_equal(data.betas("train", normalize="none"), raw_train)
    z = data.betas("test", normalize="train-zscore")
    mu, sd = raw_train.mean(0, dtype=np.float64), raw_train.std(0, dtype=np.float64)
    raw_test = split_betas(nsd, sp, "test", normalize="none")
    np.testing.assert_allclose(z, (raw_test - mu) / sd, rtol=1e-5, atol=1e-5)
    ids = [data.test_ids[4], data.test_ids[1]]
    np.testing.assert_array_equal(data.test_betas_for(ids), z[[4, 1]])


def test_single_trials_are_the_unaveraged_betas(data, nsd):
    st = data.single_trials("train", roi="streams:early")
    assert isinstance(st, SingleTrials)
    trials = nsd.trials(1)
    sel = trials[trials["session"].isin(data.sessions) & ~trials["shared"]]
    assert len(st.betas) == len(sel) == len(st.nsd_ids) == len(st.sessions)
    np.testing.assert_array_equal(st.nsd_ids, sel["nsd_id"].to_numpy())
    np.testing.assert_array_equal(st.sessions, sel["session"].to_numpy())
    assert set(st.nsd_ids) == set(data.train_ids)
    # averaging the single trials per image gives the repetition-averaged betas
    avg = data.betas("train", roi="streams:early", normalize="none")
    k = data.train_ids.index(int(st.nsd_ids[0]))
    mine = st.betas[st.nsd_ids == st.nsd_ids[0]].mean(0, dtype=np.float64)
    np.testing.assert_allclose(avg[k], mine, rtol=1e-5, atol=1e-6)
    test = data.single_trials("test", normalize="session-zscore")
    assert set(test.nsd_ids) == set(data.test_ids)
