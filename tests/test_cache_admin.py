"""`ltsearch cache ls` / `ltsearch cache clear`: entries with sizes and ages, filters, an entry in use left
alone, and a cleared entry recomputed by the next run."""

from __future__ import annotations

import os
import time

import pytest

from ltsearch import cache_admin, locks
from ltsearch.pipeline import run_pipeline
from tests.conftest import TINY, make_config


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache root holding one pretraining entry (from a real run), one IMP level and a decoded dataset."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LTSEARCH_CACHE", str(root))
    run_pipeline(make_config(*TINY, "pruner=ltr", "sparsity=0.2", "stages=[search]"), tmp_path / "run")
    (root / "imagefolder-0123abcd.pt").write_bytes(b"\0" * 5000)
    return root


def ls(capsys, *args: str) -> str:
    assert cache_admin.main(["ls", *args]) == 0
    return capsys.readouterr().out


def test_ls_lists_kinds_sizes_ages_and_what(cache, capsys):
    out = ls(capsys)
    assert "pretrain" in out and "imp_level" in out and "data" in out
    assert "MLP-32-32 on synthetic, seed 0, 1 epoch" in out  # the pretraining entry described by its spec
    assert "IMP level 0" in out and "imagefolder-012" in out and "4.9 KiB" in out
    found = cache_admin.entries(cache / "artifacts")
    total = sum(e.size for e in found)
    assert f"{len(found)} entries, {cache_admin.human_size(total)} in {cache}" in out
    assert all(e.size > 0 for e in found)


def test_clear_filters_by_kind_and_age_and_dry_run(cache, capsys):
    assert cache_admin.main(["clear", "--kind", "data", "--dry-run"]) == 0
    assert "would remove 1 entry" in capsys.readouterr().out and (cache / "imagefolder-0123abcd.pt").exists()
    old = time.time() - 3 * 86400
    os.utime(cache / "imagefolder-0123abcd.pt", (old, old))
    assert cache_admin.main(["clear", "--older-than", "2d"]) == 0  # only the old dataset
    assert "removed 1 entry" in capsys.readouterr().out and not (cache / "imagefolder-0123abcd.pt").exists()
    assert "pretrain" in ls(capsys)
    assert cache_admin.main(["clear", "--kind", "pretrain"]) == 0
    assert not list((cache / "artifacts" / "pretrain").glob("*/DONE.json"))
    assert "imp_level" in ls(capsys)


def test_an_entry_in_use_is_left_alone_and_a_cleared_one_is_recomputed(cache, capsys, tmp_path):
    (entry,) = [e for e in cache_admin.entries(cache / "artifacts") if e.kind == "pretrain"]
    with locks.exclusive(entry.lock):  # as a job computing or reusing it holds it
        assert cache_admin.main(["clear", "--kind", "pretrain"]) == 0
        assert "1 in use by a running job, left alone" in capsys.readouterr().out
    assert (entry.path / "DONE.json").exists()
    assert cache_admin.main(["clear"]) == 0
    assert cache_admin.entries(cache / "artifacts") == []
    results = run_pipeline(make_config(*TINY, "pruner=magnitude", "pruner.when=rewind", "stages=[search]"),
                           tmp_path / "again")
    assert results == {} and (cache / "artifacts" / "pretrain").is_dir()  # computed again, and published
    assert len(cache_admin.entries(cache / "artifacts")) == 1


def test_ages_and_sizes_read_well():
    assert [cache_admin.human_age(s) for s in (5, 300, 7200, 3 * 86400)] == ["5s", "5m", "2h", "3d"]
    assert [cache_admin.human_size(n) for n in (10, 2048, 3 * 2**20)] == ["10 B", "2.0 KiB", "3.0 MiB"]
    assert cache_admin.parse_age("12h") == 12 * 3600 and cache_admin.parse_age("2") == 2 * 86400
