"""The report's figures, as PNG (150 dpi), PDF and SVG (matplotlib, Agg backend: no display needed, safe in
workers). A rebuilt report first removes the plots of the previous build, so no stale figure stays behind.

  accuracy_vs_sparsity   test accuracy against the fraction of weights remaining (log scale, sparsity grows
                         to the right, a tick at every density of the grid), one line per method, error bars =
                         std over seeds; the dense network's accuracy as a reference line (from `pruner=dense`
                         runs, else from level 0 of IMP/LTR runs, which trains the dense network); IMP/LTR
                         runs add a dotted line through every level.
  layer_density_<s>      density of every prunable layer at sparsity s: one bar per method, layer sizes
                         (weights) under the layer names, the overall target density as a line.
  sanity_margins         margin of the ticket over each sanity variant, per method (mean +- std over seeds),
                         with the pass threshold.
One panel per (dataset, model) when a report mixes several; panels are titled with the names papers use.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator  # noqa: E402

from ltsearch.errors import LtsearchError  # noqa: E402
from ltsearch.paths import ACCURACY_PLOT, PLOT_FORMATS, SANITY_PLOT, layer_plot, plot_files  # noqa: E402
from ltsearch.runtime import quiet_loggers  # noqa: E402
from ltsearch.storage import atomic_write  # noqa: E402

DPI = 150
# text stays text in vector files (editable and searchable in a paper's figure), fonts embedded as TrueType
EDITABLE_TEXT = {"svg.fonttype": "none", "pdf.fonttype": 42}
DENSE_COLOR = "black"


def _save(fig: plt.Figure, folder: Path, stem: str) -> list[Path]:
    """The figure in every format of PLOT_FORMATS (written atomically), then closed."""
    written = []
    for fmt in PLOT_FORMATS:
        buffer = io.BytesIO()
        # fixed metadata: the same figure gives the same bytes (no creation date in PDF/SVG)
        metadata = {"Creator": None, "Producer": None, "CreationDate": None} if fmt == "pdf" else \
            {"Date": None, "Creator": None} if fmt == "svg" else {}
        # the PDF backend subsets fonts with fontTools, which logs every table it drops at INFO
        with plt.rc_context(EDITABLE_TEXT), quiet_loggers("fontTools"):
            fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata)
        path = folder / f"{stem}.{fmt}"
        atomic_write(path, buffer.getvalue())
        written.append(path)
    plt.close(fig)
    return written


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


def _count(n: float) -> str:
    """1234 -> 1.2K, 2.5e6 -> 2.5M."""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _colors(methods: list[str]) -> dict[str, object]:
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


# -- accuracy against sparsity -------------------------------------------------------------------------------
def _dense_reference(df: pd.DataFrame, dense_methods: set[str], levels: pd.DataFrame
                     ) -> tuple[float, float, str] | None:
    """(mean, std, label) of the dense network's accuracy for one panel, or None."""
    dense = df[df["method"].isin(dense_methods)]
    if not dense.empty:
        std = dense["test_acc_std"].dropna()
        return (float(dense["test_acc_mean"].mean()), float(std.max()) if len(std) else 0.0,
                "dense (all weights)")
    if not levels.empty:
        level0 = levels[(levels["level"] == 0)].dropna(subset=["test_acc"])
        if not level0.empty:
            std = level0["test_acc"].std(ddof=1) if len(level0) > 1 else 0.0
            return float(level0["test_acc"].mean()), float(std), "dense (IMP level 0)"
    return None


def _panel_levels(levels: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    if levels.empty:
        return levels
    return levels[(levels["dataset"] == df["dataset"].iloc[0]) & (levels["model"] == df["model"].iloc[0])]


def plot_accuracy(summary: pd.DataFrame, levels: pd.DataFrame, folder: Path) -> list[Path]:
    done = summary[summary["n_done"] > 0] if not summary.empty else summary
    panels = _panels(done)
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 5), squeeze=False)
    dense_methods = {m for m, d in done.groupby("method")["measured_density"].min().items() if d >= 1.0}
    colors = _colors(sorted(set(done["method"]) - dense_methods))
    for ax, (title, df) in zip(axes[0], panels, strict=True):
        mine = _panel_levels(levels, df)
        reference = _dense_reference(df, dense_methods, mine)
        if reference is not None:
            mean, band, label = reference
            ax.axhline(mean, color=DENSE_COLOR, linestyle="--", linewidth=1.2, label=f"{label}: {mean:.4f}")
            if band > 0:
                ax.axhspan(mean - band, mean + band, color=DENSE_COLOR, alpha=0.08)
        for method, rows in df[~df["method"].isin(dense_methods)].groupby("method"):
            rows = rows.sort_values("density", ascending=False)
            ax.errorbar(rows["density"], rows["test_acc_mean"], yerr=rows["test_acc_std"].fillna(0.0), marker="o",
                        markersize=4, capsize=3, color=colors[method],
                        label=f"{method} (n={int(rows['n_done'].max())})")
        for method, rows in mine.dropna(subset=["test_acc", "density"]).groupby("method") if not mine.empty else ():
            curve = rows.groupby("level").agg(density=("density", "mean"), acc=("test_acc", "mean"))
            curve = curve[curve["density"] > 0].sort_values("density", ascending=False)
            ax.plot(curve["density"], curve["acc"], linestyle=":", marker=".", alpha=0.8,
                    color=colors.get(method, "gray"), label=f"{method}: every IMP level")
        grid = sorted(df.loc[~df["method"].isin(dense_methods), "density"].unique())
        shown = [*grid, *mine.loc[mine["density"] > 0, "density"].dropna()] if not mine.empty else grid
        _density_axis(ax, grid, (min(shown), max(shown)) if shown else None)
        ax.set_xlabel("weights remaining (log scale; sparsity grows to the right)")
        ax.set_ylabel("test accuracy after retraining")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, folder, ACCURACY_PLOT)


def _density_axis(ax: plt.Axes, grid: list[float], span: tuple[float, float] | None) -> None:
    """Log x axis over `span` (low, high), inverted, with a labelled tick at every grid density and no other."""
    if span is not None:  # limits first: autoscaling a single point to a log scale would warn
        ax.set_xlim(span[1] * 1.25, span[0] / 1.25)
        ax.set_xscale("log")
    else:
        ax.set_xscale("log")
        ax.invert_xaxis()
    if grid:
        ax.xaxis.set_major_locator(FixedLocator(grid))
    ax.xaxis.set_major_formatter(FuncFormatter(_percent))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(grid) > 6:
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)


# -- per-layer density ----------------------------------------------------------------------------------------
def default_layers_at(layers: pd.DataFrame) -> float | None:
    """The sparsity reached by the most methods (ties: the highest sparsity)."""
    if layers.empty:
        return None
    counts = layers.groupby("sparsity")["method"].nunique()
    best = counts.max()
    return float(max(s for s, c in counts.items() if c == best))


def plot_layers(layers: pd.DataFrame, sparsity: float, folder: Path) -> list[Path]:
    at = layers[(layers["sparsity"] - sparsity).abs() < 1e-9] if not layers.empty else layers
    panels = _panels(at)
    if not panels:
        return []
    n_layers = int(at["index"].max()) + 1
    fig, axes = plt.subplots(1, len(panels), figsize=(max(7.5, 0.5 * n_layers + 3) * len(panels), 5),
                             squeeze=False)
    methods = sorted(at["method"].unique())
    colors = _colors(methods)
    width = 0.8 / len(methods)
    for ax, (title, df) in zip(axes[0], panels, strict=True):
        names = df.groupby("index")[["layer", "total"]].first().sort_index()
        floor = max(float(df.loc[df["density"] > 0, "density"].min()) / 3, 1e-6) if (df["density"] > 0).any() else 1e-6
        for j, method in enumerate(methods):
            per_layer = df[df["method"] == method].groupby("index")["density"].agg(["mean", "std"])
            per_layer = per_layer.reindex(names.index)
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in names.index]
            heights = per_layer["mean"].fillna(0.0)
            spread = per_layer["std"].fillna(0.0)
            ax.bar(xs, (heights - floor).clip(lower=0), width, bottom=floor, color=colors[method], label=method,
                   yerr=spread if (spread > 0).any() else None, capsize=2, error_kw={"linewidth": 0.8})
            for x, h in zip(xs, heights, strict=True):
                if h <= 0:  # layer collapse: no bar on a log axis, so say it
                    ax.text(x, floor, "0", ha="center", va="bottom", fontsize=7, color="red")
        ax.axhline(1.0 - sparsity, color=DENSE_COLOR, linestyle="--", linewidth=1,
                   label=f"overall density {_percent(1.0 - sparsity)}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        _percent_axis(ax.yaxis, df["density"])
        ax.set_xticks(list(names.index))
        ax.set_xticklabels([f"{r.layer.removesuffix('.weight')}\n{_count(r.total)}" for r in names.itertuples()],
                           rotation=60 if n_layers > 8 else 0, ha="right" if n_layers > 8 else "center", fontsize=7)
        ax.set_xlabel("layer (and its number of weights)")
        ax.set_ylabel("layer density (weights kept)")
        ax.set_title(f"{title}: per-layer density at sparsity {sparsity:g}")
        ax.grid(True, axis="y", which="major", alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, folder, layer_plot(sparsity))


# -- sanity margins -----------------------------------------------------------------------------------------
def plot_sanity(sanity: pd.DataFrame, folder: Path) -> list[Path]:
    tested = sanity[sanity["verdict"] != "skipped"] if not sanity.empty else sanity
    if tested.empty:
        return []
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
        ax.axhline(threshold, color=DENSE_COLOR, linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods)
        ax.set_ylabel("ticket accuracy - variant accuracy")
        ax.set_title(f"sanity margins: {key.model} on {key.dataset}, sparsity {key.sparsity:g}")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, folder, SANITY_PLOT)


def write_plots(summary: pd.DataFrame, levels: pd.DataFrame, layers: pd.DataFrame, sanity: pd.DataFrame,
                folder: Path, layers_at: float | None = None) -> list[Path]:
    """Every plot the report's tables have data for, into `folder` (after removing the plots an earlier
    report left there); return the files written."""
    folder = Path(folder)
    at = layers_at if layers_at is not None else default_layers_at(layers)
    if layers_at is not None and (layers.empty or not ((layers["sparsity"] - layers_at).abs() < 1e-9).any()):
        known = sorted(layers["sparsity"].unique()) if not layers.empty else []
        raise LtsearchError(f"--layers-at {layers_at:g}: no finished run at that sparsity "
                            f"(finished: {', '.join(f'{s:g}' for s in known) or 'none'})")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in plot_files(folder):
        stale.unlink(missing_ok=True)
    written = plot_accuracy(summary, levels, folder) if not summary.empty else []
    if at is not None and not math.isnan(at):
        written += plot_layers(layers, at, folder)
    if not sanity.empty:
        written += plot_sanity(sanity, folder)
    return written


def describe_written(paths: list[Path]) -> list[str]:
    """One line per folder of written files, a plot's formats joined (accuracy_vs_sparsity.{png,pdf,svg})."""
    grouped: dict[Path, dict[str, list[str]]] = {}
    for path in paths:
        key = path.stem if path.suffix[1:] in PLOT_FORMATS else path.name
        grouped.setdefault(path.parent, {}).setdefault(key, []).append(path.suffix[1:])
    lines = []
    for folder, files in grouped.items():
        names = [name if name.endswith((".csv", ".txt")) else f"{name}.{{{','.join(sfx)}}}"
                 for name, sfx in files.items()]
        lines.append(f"wrote {', '.join(names)} in {folder}")
    return lines
