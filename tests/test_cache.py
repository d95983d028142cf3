"""The shared-upstream cache: reuse of dense pretraining and IMP levels, equality with recomputation,
concurrency, and the cost record in results.json."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from ltsearch.cache import ArtifactCache, spec_key
from ltsearch.pipeline import run_pipeline
from ltsearch.rundir import ArtifactDir
from tests.conftest import REPO, TINY, make_config


def _weights(path):
    return torch.load(path, weights_only=True)


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_is_shared_across_pruners_and_equals_recomputation(tmp_path):
    cache = f"runtime.cache_dir={tmp_path / 'cache'}"
    base = [*TINY, "train.epochs=4", "train.rewind_epoch=2", "stages=[search]", cache]
    run_pipeline(make_config(*base, "pruner=magnitude", "pruner.when=rewind"), tmp_path / "a")
    run_pipeline(make_config(*base, "pruner=cts_kl", "pruner.epochs=1"), tmp_path / "b")
    run_pipeline(make_config(*base, "pruner=cts_kl", "pruner.epochs=1", "runtime.cache=false"), tmp_path / "c")
    a, b, c = (json.loads((tmp_path / r / "search" / "pretrain" / "DONE.json").read_text()) for r in "abc")
    assert "reused" not in a and "reused" in b and "reused" not in c
    assert b["reused"]["compute"]["train"] == 2 * 256  # two epochs of the 256-sample training set
    pp = [_weights(tmp_path / r / "search" / "pruning_point.pt") for r in "abc"]
    assert _equal(pp[0], pp[1]) and _equal(pp[1], pp[2])
    assert _equal(_weights(tmp_path / "b" / "search" / "mask.pt"), _weights(tmp_path / "c" / "search" / "mask.pt"))
    # a different seed is a different upstream
    run_pipeline(make_config(*base, "pruner=magnitude", "pruner.when=rewind", "seed=1"), tmp_path / "d")
    assert "reused" not in json.loads((tmp_path / "d" / "search" / "pretrain" / "DONE.json").read_text())


def test_ltr_levels_are_shared_across_sparsities(tmp_path):
    cache = f"runtime.cache_dir={tmp_path / 'cache'}"
    base = [*TINY, "pruner=ltr", cache]
    first = run_pipeline(make_config(*base, "sparsity=0.5"), tmp_path / "s05")   # levels 0-2 + final 3
    second = run_pipeline(make_config(*base, "sparsity=0.7"), tmp_path / "s07")  # levels 0-5 + final 6
    fresh = run_pipeline(make_config(*base, "sparsity=0.7", "runtime.cache=false"), tmp_path / "s07_fresh")
    reused = [r["stage"] for r in second["cost"]["reused"]]
    assert reused == ["search/level_00", "search/level_01", "search/level_02", "search/pretrain"]
    assert first["cost"]["reused"] == []
    assert second["test_acc"] == fresh["test_acc"] and second["test_loss"] == fresh["test_loss"]
    assert _equal(_weights(tmp_path / "s07" / "search" / "mask.pt"),
                  _weights(tmp_path / "s07_fresh" / "search" / "mask.pt"))
    levels = json.loads((tmp_path / "s07" / "search" / "levels.json").read_text())
    fresh_levels = json.loads((tmp_path / "s07_fresh" / "search" / "levels.json").read_text())
    assert levels == fresh_levels
    # the run that reused work spent less than the one that recomputed, and says what it reused
    assert second["cost"]["total"]["epochs"] < fresh["cost"]["total"]["epochs"]
    assert abs(second["cost"]["total_with_reused"]["epochs"] - fresh["cost"]["total"]["epochs"]) < 1e-6


def test_cost_record_counts_training_epochs(tmp_path):
    results = run_pipeline(make_config(*TINY, "pruner=magnitude", "stages=[search,rewind,retrain,evaluate]",
                                       f"runtime.cache_dir={tmp_path / 'cache'}"), tmp_path / "run")
    cost = results["cost"]
    assert cost["flops_per_sample"]["train"] > cost["flops_per_sample"]["forward"] > 0
    # retraining = 3 epochs at init (train=tiny), plus a test-set forward per epoch
    retrain = cost["stages"]["retrain"]
    assert retrain["train_samples"] == 3 * 256 and retrain["forward_samples"] == 3 * 128
    expected = 3 + 3 * 128 * cost["flops_per_sample"]["forward"] / (256 * cost["flops_per_sample"]["train"])
    assert abs(retrain["epochs"] - expected) < 1e-9
    assert cost["total"]["epochs"] >= retrain["epochs"]


def test_concurrent_jobs_compute_a_shared_entry_once(tmp_path):
    """Two processes needing the same pretraining: one computes it, the other waits and reuses it."""
    cache = f"runtime.cache_dir={tmp_path / 'cache'}"
    common = [*TINY, "train.epochs=6", "train.rewind_epoch=5", "dataset.train_size=2048", "stages=[search]",
              cache, "runtime.threads=1"]
    procs = []
    for name, pruner in (("x", ["pruner=magnitude", "pruner.when=rewind"]), ("y", ["pruner=random", "pruner.when=rewind"])):
        cmd = [sys.executable, "-m", "ltsearch", "run", *common, *pruner, f"hydra.run.dir={tmp_path / name}"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(0.5)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    markers = [json.loads((tmp_path / n / "search" / "pretrain" / "DONE.json").read_text()) for n in "xy"]
    assert sum("reused" in m for m in markers) == 1
    assert _equal(_weights(tmp_path / "x" / "search" / "pruning_point.pt"),
                  _weights(tmp_path / "y" / "search" / "pruning_point.pt"))


def test_disabled_cache_computes_and_publishes_nothing(tmp_path):
    cache = ArtifactCache(tmp_path / "cache", enabled=False)
    out = ArtifactDir(tmp_path / "stage")
    calls = []

    def compute():
        calls.append(1)
        out.start()
        out.save_json("x.json", {"v": 1})
        out.mark_done()

    assert cache.reuse_or_compute("k", {"a": 1}, out, compute) is False
    assert calls == [1] and not (tmp_path / "cache").exists()
    assert spec_key("k", {"a": 1}) != spec_key("k", {"a": 2}) != spec_key("j", {"a": 2})


def test_pretraining_with_another_cpu_thread_count_is_not_reused(tmp_path):
    """CPU float results depend on how many threads split a reduction, so the thread count keys the cache."""
    threads = torch.get_num_threads()
    cache = f"runtime.cache_dir={tmp_path / 'cache'}"
    base = [*TINY, "train.epochs=2", "train.rewind_epoch=1", "stages=[search]", cache, "pruner=magnitude",
            "pruner.when=rewind"]
    try:
        run_pipeline(make_config(*base, "runtime.threads=1"), tmp_path / "one")
        run_pipeline(make_config(*base, "runtime.threads=2"), tmp_path / "two")
        run_pipeline(make_config(*base, "runtime.threads=1", "sparsity=0.5"), tmp_path / "one_again")
    finally:
        torch.set_num_threads(threads)
    done = {r: json.loads((tmp_path / r / "search" / "pretrain" / "DONE.json").read_text())
            for r in ("one", "two", "one_again")}
    assert "reused" not in done["one"] and "reused" not in done["two"] and "reused" in done["one_again"]
