import json
import os

import pytest
import torch

from datafree import results
from datafree.synthesis.pool import DataPool


def test_pool_grows_samples_and_copies():
    pool = DataPool(dtype="float32")
    x = torch.rand(10, 1, 4, 4)
    pool.add(x, torch.arange(10))
    x.zero_()  # the pool holds a copy
    assert len(pool) == 10 and pool.all()[0].sum() > 0
    pool.add(torch.rand(30, 1, 4, 4))
    assert len(pool) == 40
    imgs, labels = pool.sample(64)
    assert imgs.shape == (64, 1, 4, 4) and labels.shape == (64,)
    assert set(labels.tolist()) <= set(range(10)) | {-1}


def test_pool_ring_buffer_and_uint8_quantisation():
    pool = DataPool(capacity=8, dtype="uint8")
    for i in range(5):
        pool.add(torch.full((3, 1, 2, 2), i / 10))
    assert len(pool) == 8 and pool.total_added == 15
    vals = sorted(set(round(v, 3) for v in pool.all()[0].flatten().tolist()))
    assert vals == [
        round(round(0.2 * 255) / 255, 3),
        round(round(0.3 * 255) / 255, 3),
        round(round(0.4 * 255) / 255, 3),
    ]
    assert torch.allclose(pool.latest(3), torch.full((3, 1, 2, 2), round(0.4 * 255) / 255))


def test_pool_state_roundtrip_and_empty_error():
    pool = DataPool(capacity=6, dtype="float16")
    with pytest.raises(RuntimeError, match="empty"):
        pool.sample(1)
    pool.add(torch.rand(9, 3, 2, 2))
    other = DataPool(capacity=6, dtype="float16")
    other.load_state_dict(pool.state_dict())
    assert torch.equal(other.all()[0], pool.all()[0]) and other._next == pool._next
    other.add(torch.rand(1, 3, 2, 2))
    assert len(other) == 6


def test_atomic_writes_leave_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "summary.json")
    results.atomic_write_json(path, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        results.atomic_write_json(path, {"a": 2})
    monkeypatch.undo()
    assert json.load(open(path)) == {"a": 1}
    assert [p for p in os.listdir(tmp_path) if p != "summary.json"] == []  # no temp files left behind
    results.atomic_write_jsonl(str(tmp_path / "m.jsonl"), [{"x": 1}, {"x": 2}])
    assert results.read_jsonl(str(tmp_path / "m.jsonl")) == [{"x": 1}, {"x": 2}]
