"""The sanity stage: each variant keeps the properties it must, the verdict rule, skips, resume."""

from __future__ import annotations

import json

import pytest
import torch

from ltsearch.context import RunContext
from ltsearch.masking import load_plain_state_dict
from ltsearch.pipeline import run_pipeline
from ltsearch.runtime import Runtime
from ltsearch.stages import sanity
from tests.conftest import make_config

STAGES = "stages=[search,rewind,retrain,sanity,evaluate]"


def _load(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """One finished run with a mask found at init (all four variants apply)."""
    run_dir = tmp_path_factory.mktemp("init_run")
    cfg = make_config("dataset=fake", "dataset.train_size=256", "dataset.test_size=128", "model=mlp1d",
                      "model.hidden=[32,32]", "train=tiny", "runtime.progress=false", "pruner=magnitude",
                      "sparsity=0.8", STAGES, "sanity.variants=[shuffle,invert,reinit,random]")
    results = run_pipeline(cfg, run_dir, label="magnitude")
    return cfg, run_dir, results


def test_sanity_json_verdicts_and_rule(init_run):
    cfg, run_dir, results = init_run
    summary = json.loads((run_dir / "sanity" / "sanity.json").read_text())
    metrics = json.loads((run_dir / "retrain" / "metrics.json").read_text())
    assert summary["ticket_accuracy"] == metrics[-1]["test_acc"]
    assert summary["threshold"] == cfg.sanity.margin == 0.005
    assert "ticket accuracy - variant accuracy > 0.005" in summary["rule"]
    assert set(summary["variants"]) == {"shuffle", "invert", "reinit", "random"}
    for name, v in summary["variants"].items():
        variant_metrics = json.loads((run_dir / "sanity" / name / "metrics.json").read_text())
        # exactly the ticket's budget: the same epochs of the same schedule
        assert [r["epoch"] for r in variant_metrics] == [r["epoch"] for r in metrics], name
        assert v["accuracy"] == variant_metrics[-1]["test_acc"]
        assert v["margin"] == pytest.approx(summary["ticket_accuracy"] - v["accuracy"])
        assert v["passed"] == (v["margin"] > summary["threshold"])
        assert v["skipped_reason"] is None and v["definition"]
        assert not (run_dir / "sanity" / name / "checkpoints").exists()  # removed once the variant is done
    assert results["sanity"] == summary  # results.json carries the verdicts
    # totals add up: the ticket's cost leaves the sanity checks out, the total counts every stage
    stages = ("search", "rewind", "retrain", "sanity", "evaluate")
    assert set(results["wall_time"]) == {*stages, "ticket", "total"}
    assert results["wall_time"]["total"] == pytest.approx(sum(results["wall_time"][s] for s in stages), abs=1e-9)
    assert results["wall_time"]["ticket"] == pytest.approx(
        results["wall_time"]["total"] - results["wall_time"]["sanity"], abs=1e-9)
    cost = results["cost"]
    assert cost["total"]["flops"] == pytest.approx(sum(cost["stages"][s]["flops"] for s in stages))
    assert cost["ticket"]["flops"] == pytest.approx(cost["total"]["flops"] - cost["stages"]["sanity"]["flops"])
    assert cost["total"]["wall_time"] == pytest.approx(results["wall_time"]["total"])


def test_variant_masks_keep_their_properties(init_run):
    _, run_dir, _ = init_run
    ticket = _load(run_dir / "rewind" / "ticket.pt")["masks"]
    k = sum(int(m.sum()) for m in ticket.values())
    variants = {v: _load(run_dir / "sanity" / v / "mask.pt") for v in ("shuffle", "invert", "reinit", "random")}
    for name in ("shuffle", "random"):  # same per-layer counts, other positions
        masks = variants[name]
        assert {n: int(m.sum()) for n, m in masks.items()} == {n: int(m.sum()) for n, m in ticket.items()}, name
        assert any(not torch.equal(masks[n], ticket[n]) for n in ticket), name
    assert any(not torch.equal(variants["shuffle"][n], variants["random"][n]) for n in ticket)
    invert = variants["invert"]  # same global k, disjoint from the ticket (k <= N - k at sparsity 0.8)
    assert sum(int(m.sum()) for m in invert.values()) == k
    assert all(not (invert[n] & ticket[n]).any() for n in ticket)
    scores = _load(run_dir / "search" / "scores.pt")
    kept_scores = torch.cat([scores[n][invert[n]] for n in ticket])
    dropped_scores = torch.cat([scores[n][~invert[n]] for n in ticket])
    assert kept_scores.max() <= dropped_scores.min()  # the k lowest scores
    assert all(torch.equal(variants["reinit"][n], ticket[n]) for n in ticket)  # same mask


def test_variant_starting_weights(init_run):
    cfg, run_dir, _ = init_run
    ctx = RunContext(cfg=cfg, run_dir=run_dir, runtime=Runtime.from_config(cfg.runtime))
    ticket = _load(run_dir / "rewind" / "ticket.pt")
    start = _load(run_dir / "search" / "pruning_point.pt")
    masks = ticket["masks"]
    built = {v: sanity.build_variant(ctx, v, masks, start) for v in ("shuffle", "invert", "reinit", "random")}
    # deterministic: the same variant on resume
    again = sanity.build_variant(ctx, "shuffle", masks, start)
    assert all(torch.equal(again[0][n], built["shuffle"][0][n]) for n in masks)
    for name in ("shuffle", "invert"):  # the ticket's own starting weights under the new mask
        vmasks, weights, _ = built[name]
        for n, m in vmasks.items():
            assert torch.equal(weights[n], start[n] * m), (name, n)
    for name in ("reinit", "random"):  # fresh initial weights (another seed), zero where pruned
        vmasks, weights, _ = built[name]
        for n, m in vmasks.items():
            assert torch.all(weights[n][~m] == 0)
            assert not torch.equal(weights[n][m], start[n][m]), (name, n)
    fresh = ctx.new_model(seed=123)
    load_plain_state_dict(fresh, built["reinit"][1])  # loads: same architecture and parameter names
    assert not torch.equal(built["reinit"][1]["hidden.0.weight"], built["random"][1]["hidden.0.weight"])


def test_invert_breaks_ties_away_from_the_ticket():
    ticket = {"a": torch.tensor([True, True, False, False, False, False]), "b": torch.tensor([[False, True]])}
    flat_scores = {"a": torch.zeros(6), "b": torch.zeros(1, 2)}  # all tied
    inv = sanity.invert_masks(flat_scores, ticket)
    assert sum(int(m.sum()) for m in inv.values()) == 3
    assert all(not (inv[n] & ticket[n]).any() for n in ticket)
    # k > N - k: every weight outside the ticket, then the lowest-scored inside it
    ticket = {"a": torch.tensor([True, True, True, False])}
    inv = sanity.invert_masks({"a": torch.tensor([3.0, 1.0, 2.0, 0.5])}, ticket)
    assert inv["a"].tolist() == [False, True, True, True]


def test_single_run_rule():
    assert sanity.passes(0.0051, 0.005)
    assert not sanity.passes(0.005, 0.005)  # strictly more than the threshold
    assert not sanity.passes(-0.02, 0.005)
    assert "0.5 percentage points" in sanity.rule_text(0.005)


def test_rewind_mask_skips_reinit_and_keeps_the_start_epoch(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=random", "pruner.when=rewind", "sparsity=0.9", STAGES,
                      "sanity.variants=[reinit,shuffle]", "sanity.margin=0.02")
    run_pipeline(cfg, tmp_path)
    summary = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert list(summary["variants"]) == ["reinit", "shuffle"]
    reinit = summary["variants"]["reinit"]
    assert reinit["passed"] is None and reinit["accuracy"] is None and "rewind point" in reinit["skipped_reason"]
    assert summary["start_epoch"] == 1 and "0.02" in summary["rule"]
    epochs = [r["epoch"] for r in json.loads((tmp_path / "sanity" / "shuffle" / "metrics.json").read_text())]
    assert epochs == [2, 3]  # from the rewind point to the end, like the ticket
    start = _load(tmp_path / "search" / "pruning_point.pt")
    w0 = RunContext(cfg=cfg, run_dir=tmp_path, runtime=Runtime.from_config(cfg.runtime)).new_model()
    assert not torch.equal(start["hidden.0.weight"], w0.state_dict()["hidden.0.weight"])  # shuffle used w_k


def test_dense_reference_is_retrained_with_the_ticket_budget_and_quoted_in_one_line(tmp_path, tiny):
    """sanity.dense=true retrains the unpruned network from the ticket's starting weights over the ticket's
    epochs; it is no check (passed_all follows the variants alone), and the summary's one line quotes it
    beside the random mask."""
    from ltsearch.stages.evaluate import comparison_line, summary_table

    cfg = make_config(*tiny, "pruner=magnitude", "pruner.when=rewind", "sparsity=0.9", STAGES,
                      "sanity.variants=[random]", "sanity.dense=true")
    results = run_pipeline(cfg, tmp_path)
    summary = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert list(summary["variants"]) == ["random"]
    assert summary["passed_all"] == summary["variants"]["random"]["passed"]
    dense = summary["dense"]
    history = json.loads((tmp_path / "sanity" / "dense" / "metrics.json").read_text())
    assert dense["accuracy"] == history[-1]["test_acc"] and [r["epoch"] for r in history] == [2, 3]
    assert all(bool(m.all()) for m in _load(tmp_path / "sanity" / "dense" / "mask.pt").values())
    assert "dense" in sanity.verdict_line(summary) and "reference" in sanity.verdict_line(summary)
    line = comparison_line(results)
    random_acc = summary["variants"]["random"]["accuracy"]
    assert line == (f"keeps 10.0% of the weights: {100 * results['test_acc']:.1f}%; a random mask with the same "
                    f"layer sizes: {100 * random_acc:.1f}%; dense: {100 * dense['accuracy']:.1f}%")
    assert summary_table(results).columns[1]._cells[0] == line
    # without the sanity stage the line names the ticket alone
    assert comparison_line({**results, "sanity": None}).startswith("keeps 10.0% of the weights: ")
    assert ";" not in comparison_line({**results, "sanity": None})
    # weights kept out of pruning are named: the share is of the prunable weights
    excluded = {**results, "config": {**results["config"], "model": {**results["config"]["model"], "exclude": ["0.*"]}}}
    assert comparison_line(excluded).startswith("keeps 10.0% of the prunable weights (all but 0.*): ")


def test_missing_scores_skip_invert_and_resume_reruns_only_unfinished(tmp_path, tiny):
    cfg = make_config(*tiny, "pruner=magnitude", "sparsity=0.7", STAGES, "sanity.variants=[invert,shuffle]")
    run_pipeline(make_config(*tiny, "pruner=magnitude", "sparsity=0.7", "stages=[search,rewind,retrain]",
                             "sanity.variants=[invert,shuffle]"), tmp_path)
    (tmp_path / "search" / "scores.pt").unlink()  # as a pruner without scores leaves its search stage
    marker = json.loads((tmp_path / "search" / "DONE.json").read_text())
    del marker["artifacts"]["scores.pt"]
    (tmp_path / "search" / "DONE.json").write_text(json.dumps(marker))
    run_pipeline(cfg, tmp_path)
    summary = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert "no per-weight scores" in summary["variants"]["invert"]["skipped_reason"]
    # an interrupted sanity stage: the finished variant is kept, the unfinished one retrains identically
    first = summary["variants"]["shuffle"]["accuracy"]
    (tmp_path / "sanity" / "DONE.json").unlink()
    (tmp_path / "evaluate" / "DONE.json").unlink()
    invert_result = (tmp_path / "sanity" / "invert" / "result.json").stat().st_mtime_ns
    (tmp_path / "sanity" / "shuffle" / "DONE.json").unlink()
    results = run_pipeline(cfg, tmp_path)
    assert (tmp_path / "sanity" / "invert" / "result.json").stat().st_mtime_ns == invert_result
    assert results["sanity"]["variants"]["shuffle"]["accuracy"] == first


def test_dense_ticket_has_nothing_to_perturb(tmp_path, tiny):
    run_pipeline(make_config(*tiny, "pruner=dense", STAGES, "sanity.variants=[shuffle]"), tmp_path)
    summary = json.loads((tmp_path / "sanity" / "sanity.json").read_text())
    assert "nothing to perturb" in summary["variants"]["shuffle"]["skipped_reason"]
    assert summary["passed_all"] is False


def test_sanity_config_is_validated(tiny):
    from ltsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="sanity.margin"):
        make_config(*tiny, "sanity.margin=-0.1")
    with pytest.raises(Exception, match="shufle"):
        make_config(*tiny, "sanity.variants=[shufle]")
