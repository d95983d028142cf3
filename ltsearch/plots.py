"""PNG plots of a report (matplotlib with the Agg backend: no display needed, safe in workers).

  accuracy_vs_sparsity.png   test accuracy against the fraction of weights remaining (log scale, sparsity
                             grows to the right), one line per method, error bars = std over seeds; runs that
                             wrote search/levels.json (IMP/LTR) add a dotted line through every level; a
                             method that keeps every weight (dense) is a horizontal band.
  layer_density_<s>.png      density of every prunable layer, one line per method, at sparsity s.
  sanity_margins.png         margin of the ticket over each sanity variant, per method (mean +- std over
                             seeds), with the pass threshold.
One panel per (dataset, model) when a report mixes several.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from ltsearch.errors import LtsearchError  # noqa: E402
from ltsearch.paths import ACCURACY_PLOT, SANITY_PLOT, layer_plot  # noqa: E402
from ltsearch.storage import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def _panels(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    if df.empty:
        return []
    keys = df[["dataset", "model"]].drop_duplicates().itertuples(index=False)
    return [(f"{m} on {d}", df[(df["dataset"] == d) & (df["model"] == m)]) for d, m in keys]


def _percent(value: float, _pos: object = None) -> str:
    return f"{100 * value:.3g}%"


def _percent_axis(axis: object, values: pd.Series) -> None:
    """Percent labels on a log axis; minor ticks labelled too when the data span less than 1.5 decades."""
    positive = values[values > 0]
    axis.set_major_formatter(FuncFormatter(_percent))
    span = math.log10(positive.max() / positive.min()) if len(positive) else 0.0
    axis.set_minor_formatter(FuncFormatter(_percent) if span < 1.5 else NullFormatter())


def _colors(methods: list[str]) -> dict[str, object]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def plot_accuracy(summary: pd.DataFrame, levels: pd.DataFrame, path: Path) -> Path | None:
    done = summary[summary["n_done"] > 0] if not summary.empty else summary
    panels = _panels(done)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5), squeeze=False)
    colors = _colors(sorted(done["method"].unique()))
    for ax, (title, df) in zip(axes[0], panels, strict=True):
        dense = df.groupby("method")["measured_density"].min() >= 1.0
        for method, rows in df.groupby("method"):
            rows = rows.sort_values("density", ascending=False)
            std = rows["test_acc_std"].fillna(0.0)
            if dense.get(method, False):
                mean = float(rows["test_acc_mean"].mean())
                ax.axhline(mean, color=colors[method], linestyle="--", label=f"{method} (all weights)")
                band = float(std.max())
                if band > 0:
                    ax.axhspan(mean - band, mean + band, color=colors[method], alpha=0.15)
                continue
            ax.errorbar(rows["density"], rows["test_acc_mean"], yerr=std, marker="o", markersize=4, capsize=3,
                        color=colors[method], label=f"{method} (n={int(rows['n_done'].max())})")
        if not levels.empty:
            mine = levels[(levels["dataset"] == df["dataset"].iloc[0]) & (levels["model"] == df["model"].iloc[0])]
            mine = mine.dropna(subset=["test_acc", "density"])
            for method, rows in mine.groupby("method"):
                curve = rows.groupby("level").agg(density=("density", "mean"), acc=("test_acc", "mean"))
                curve = curve[curve["density"] > 0].sort_values("density", ascending=False)
                ax.plot(curve["density"], curve["acc"], linestyle=":", marker=".", alpha=0.8,
                        color=colors.get(method, "gray"), label=f"{method}: every IMP level")
        ax.set_xscale("log")
        ax.invert_xaxis()
        grid = sorted(df.loc[~df["method"].map(dense).fillna(False).astype(bool), "density"].unique())
        if grid:
            ax.set_xticks(grid)
        ax.xaxis.set_major_formatter(FuncFormatter(_percent))
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(grid) > 8:
            ax.tick_params(axis="x", labelrotation=45)
        ax.set_xlabel("weights remaining (log scale; sparsity grows to the right)")
        ax.set_ylabel("test accuracy after retraining")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def default_layers_at(layers: pd.DataFrame) -> float | None:
    """The sparsity reached by the most methods (ties: the highest sparsity)."""
    if layers.empty:
        return None
    counts = layers.groupby("sparsity")["method"].nunique()
    best = counts.max()
    return float(max(s for s, c in counts.items() if c == best))


def plot_layers(layers: pd.DataFrame, sparsity: float, path: Path) -> Path | None:
    at = layers[(layers["sparsity"] - sparsity).abs() < 1e-9] if not layers.empty else layers
    panels = _panels(at)
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.5, 0.45 * at["index"].max() + 4) * len(panels), 5),
                             squeeze=False)
    colors = _colors(sorted(at["method"].unique()))
    for ax, (title, df) in zip(axes[0], panels, strict=True):
        names = df.groupby("index")["layer"].first().sort_index()
        for method, rows in df.groupby("method"):
            per_layer = rows.groupby("index")["density"].agg(["mean", "std"]).reindex(names.index)
            ax.errorbar(per_layer.index, per_layer["mean"], yerr=per_layer["std"].fillna(0.0), marker="o",
                        markersize=4, capsize=2, color=colors[method], label=method)
        ax.axhline(1.0 - sparsity, color="black", linestyle=":", linewidth=1, label="overall target density")
        ax.set_yscale("log")
        _percent_axis(ax.yaxis, df["density"])
        ax.set_xticks(list(names.index))
        ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("layer density (weights kept)")
        ax.set_title(f"{title}: per-layer density at sparsity {sparsity:g}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    # log scale cannot show an empty layer (layer collapse): mark it at the bottom of the axis
    collapsed = at[at["density"] <= 0]
    if not collapsed.empty:
        fig.text(0.01, 0.01, "layer collapse (0 weights) in: " + ", ".join(
            sorted({f"{r.method}:{r.layer}" for r in collapsed.itertuples()})), fontsize=7, color="red")
    return _save(fig, path)


def plot_sanity(sanity: pd.DataFrame, path: Path) -> Path | None:
    tested = sanity[sanity["verdict"] != "skipped"] if not sanity.empty else sanity
    if tested.empty:
        return None
    groups = tested[["dataset", "model", "sparsity"]].drop_duplicates().sort_values(["dataset", "model", "sparsity"])
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 4.5), squeeze=False)
    for ax, key in zip(axes[0], groups.itertuples(index=False), strict=True):
        df = tested[(tested["dataset"] == key.dataset) & (tested["model"] == key.model)
                    & (tested["sparsity"] == key.sparsity)]
        methods = sorted(df["method"].unique())
        variants = [v for v in ("shuffle", "invert", "reinit", "random") if v in set(df["variant"])]
        variants += sorted(set(df["variant"]) - set(variants))
        width = 0.8 / max(1, len(variants))
        cmap = plt.get_cmap("tab10")
        for j, variant in enumerate(variants):
            rows = df[df["variant"] == variant].set_index("method").reindex(methods)
            xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, rows["margin_mean"].fillna(0.0), width, yerr=rows["margin_std"].fillna(0.0), capsize=2,
                   color=cmap(j), label=variant)
        threshold = float(df["threshold"].max())
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods)
        ax.set_ylabel("ticket accuracy - variant accuracy")
        ax.set_title(f"sanity margins: {key.model} on {key.dataset}, sparsity {key.sparsity:g}")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def write_plots(summary: pd.DataFrame, levels: pd.DataFrame, layers: pd.DataFrame, sanity: pd.DataFrame,
                folder: Path, layers_at: float | None = None) -> list[Path]:
    """Every plot the report's tables have data for, into `folder`; return the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [plot_accuracy(summary, levels, folder / ACCURACY_PLOT)] if not summary.empty else []
    at = layers_at if layers_at is not None else default_layers_at(layers)
    if layers_at is not None and (layers.empty or not ((layers["sparsity"] - layers_at).abs() < 1e-9).any()):
        known = sorted(layers["sparsity"].unique()) if not layers.empty else []
        raise LtsearchError(f"--layers-at {layers_at:g}: no finished run at that sparsity "
                            f"(finished: {', '.join(f'{s:g}' for s in known) or 'none'})")
    if at is not None and not math.isnan(at):
        written.append(plot_layers(layers, at, folder / layer_plot(at)))
    if not sanity.empty:
        written.append(plot_sanity(sanity, folder / SANITY_PLOT))
    return [p for p in written if p is not None]
