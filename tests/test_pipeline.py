"""End to end through the pipeline API (in process): stages, artifacts, skipping, config record."""

from __future__ import annotations

import json

import pytest
import torch

from ltsearch.errors import ConfigError, ResumeError
from ltsearch.masking import keep_count
from ltsearch.pipeline import run_pipeline
from tests.conftest import make_config


def test_full_pipeline_writes_every_artifact(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=magnitude", "sparsity=0.9", "pruner.when=rewind")
    results = run_pipeline(cfg, tmp_path, label="magnitude")
    for stage in ("search", "rewind", "retrain", "evaluate"):
        assert (tmp_path / stage / "DONE.json").exists(), stage
    masks = torch.load(tmp_path / "search" / "mask.pt", weights_only=True)
    assert all(m.dtype == torch.bool for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == keep_count(0.1, total)
    density = json.loads((tmp_path / "search" / "density.json").read_text())
    assert set(density["layers"]) == set(masks)
    assert (tmp_path / "search" / "pretrain" / "DONE.json").exists()  # when=rewind trained to epoch 1
    ticket = torch.load(tmp_path / "rewind" / "ticket.pt", weights_only=True)
    assert ticket["start_epoch"] == 1
    metrics = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics] == [2, 3]  # retraining continues the schedule at the rewind point
    assert results["density"]["measured_kept"] == results["density"]["target_kept"]
    assert abs(results["test_acc"] - metrics[-1]["test_acc"]) < 1e-9
    assert set(results["wall_time"]) >= {"search", "rewind", "retrain", "evaluate", "total"}
    assert results["config"]["sparsity"] == 0.9


def test_pruned_weights_stay_zero_and_mask_is_applied(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=random", "sparsity=0.8")
    run_pipeline(cfg, tmp_path)
    final = torch.load(tmp_path / "retrain" / "final.pt", weights_only=True)
    for name, mask in final["masks"].items():
        weight = final["state_dict"][name]
        assert torch.all(weight[~mask] == 0), name
        assert torch.count_nonzero(weight[mask]) > 0.9 * mask.sum()


def test_finished_stages_are_skipped(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=magnitude", "sparsity=0.5")
    run_pipeline(cfg, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("run.log", ".lock")}
    run_pipeline(cfg, tmp_path)
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after


def test_selected_stages_only_and_missing_upstream(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=magnitude", "stages=[search]")
    run_pipeline(cfg, tmp_path)
    assert (tmp_path / "search" / "DONE.json").exists()
    assert not (tmp_path / "rewind").exists()
    other = tmp_path / "other"
    with pytest.raises(ConfigError, match="needs the output of stage rewind"):
        run_pipeline(make_config(*tiny, "stages=[retrain]"), other)


def test_reentry_with_changed_config_is_refused_per_key(tmp_path, tiny):
    run_pipeline(make_config(*tiny, "pruner=magnitude", "sparsity=0.5", "stages=[search]"), tmp_path)
    record = (tmp_path / "run.json").read_bytes()
    with pytest.raises(ResumeError) as err:
        run_pipeline(make_config(*tiny, "pruner=magnitude", "sparsity=0.7", "stages=[search]"), tmp_path)
    assert "sparsity: 0.5 (recorded) -> 0.7 (now)" in str(err.value)
    assert (tmp_path / "run.json").read_bytes() == record
    # runtime settings and the stage selection may change
    run_pipeline(make_config(*tiny, "pruner=magnitude", "sparsity=0.5", "runtime.checkpoint_every=2"), tmp_path)


def test_dense_pruner_keeps_everything(tmp_path, tiny):
    results = run_pipeline(make_config(*tiny, "pruner=dense", "sparsity=0.9"), tmp_path)
    assert results["density"]["measured"] == 1.0
    assert results["density"]["target"] == 1.0


def test_same_seed_same_numbers(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=random", "sparsity=0.9", "seed=3")
    a = run_pipeline(cfg, tmp_path / "a")
    b = run_pipeline(cfg, tmp_path / "b")
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]
    ma = torch.load(tmp_path / "a" / "search" / "mask.pt", weights_only=True)
    mb = torch.load(tmp_path / "b" / "search" / "mask.pt", weights_only=True)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    c = run_pipeline(make_config(*tiny, "pruner=random", "sparsity=0.9", "seed=4"), tmp_path / "c")
    mc = torch.load(tmp_path / "c" / "search" / "mask.pt", weights_only=True)
    assert not all(torch.equal(ma[k], mc[k]) for k in ma)
    assert c["test_loss"] != a["test_loss"]


def test_keys_added_by_a_later_version_do_not_block_a_resume_at_their_default(tmp_path, tiny):
    """A run recorded before `sanity.margin` existed resumes if the key holds its default, not otherwise."""
    run_pipeline(make_config(*tiny, "pruner=magnitude", "stages=[search]"), tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    del record["config"]["sanity"]["margin"]  # as if written by an older ltsearch
    (tmp_path / "run.json").write_text(json.dumps(record))
    run_pipeline(make_config(*tiny, "pruner=magnitude", "stages=[search,rewind]"), tmp_path)
    assert (tmp_path / "rewind" / "DONE.json").exists()
    with pytest.raises(ResumeError, match="sanity.margin: '<absent>' \\(recorded\\) -> 0.02"):
        run_pipeline(make_config(*tiny, "pruner=magnitude", "sanity.margin=0.02"), tmp_path)
