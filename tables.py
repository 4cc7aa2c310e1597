"""The results pages: measured rows (probe.RESULT_FIELDS) beside published reference numbers (labelled with their
source), each registry method's study tables and figures, learning curves of run logs. Whatever is missing shows as
"-", never as a number from elsewhere. results/make_tables.py is the command line (its docstring: the inputs).

    path = tables.write_page(results="results/results.csv", reference="results/reference.csv",
                             studies="results", runs="runs", out="results/README.md")
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import methods  # noqa: E402
import official  # noqa: E402
from datasets import all_tasks  # noqa: E402
from files import atomic_write_text, remove_stale_temps  # noqa: E402

SEED_COLUMNS = ("gtzan", "nsynth", "esc50")  # the seed's table, in its column order
TITLES = {task: spec.title or task for task, (_, spec) in all_tasks().items()}  # datasets.REGISTRY's tasks
SEED_TASKS = {task: TITLES[task] for task in SEED_COLUMNS}
OTHER_TASKS = {task: title for task, title in TITLES.items() if task not in SEED_TASKS}
# reference.csv tables of published accuracies: the seed's and each registry method's (methods.py)
ACCURACY_TABLES = ["seed", *[t for m in methods.METHODS.values() for t in m.reference_tables]]
DASH = "-"


def read_csv(path: Path | None) -> pd.DataFrame:
    """A CSV as strings (empty cells ''), or an empty frame when the file is absent."""
    if path is None or not Path(path).is_file():
        return pd.DataFrame()
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) if str(c) != "" else DASH for c in row) + " |" for row in rows]
    return "\n".join(lines)


def cell(mean: str, ci: str = "") -> str:
    """'71.50 ± 1.20' from result strings; '-' when there is no measurement."""
    if mean in ("", None):
        return DASH
    return f"{mean} ± {ci}" if ci not in ("", None) else str(mean)


def full_label_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows evaluated with all training labels; the latest row wins per (model, long, pool, task)."""
    if results.empty:
        return results
    full = results[(results["shots"] == "") & (results["label_fraction"].isin(["", "1"]))]
    return full.drop_duplicates(["model", "long", "pool", "task"], keep="last")

# ============================================================================ tables


def accuracy_table(results: pd.DataFrame, reference: pd.DataFrame, tasks: dict[str, str]) -> str:
    """Published accuracy rows of reference.csv's ACCURACY_TABLES (with their source), then one row
    per measured (model, long, pool) that has a full-label result on at least one of `tasks`."""
    header = ["Model", "long", "pool", *tasks.values(), "Source"]
    rows = []
    ref = reference[reference["table"].isin(ACCURACY_TABLES) & (reference["metric"] == "accuracy")
                    & reference["task"].isin(list(tasks))] if len(reference) else []
    for model, group in ([] if len(ref) == 0 else ref.groupby("model", sort=False)):
        values = {r.task: cell(r.value, r.ci95) for r in group.itertuples()}
        if values:
            notes = "; ".join(n for n in dict.fromkeys(group["note"]) if n)
            rows.append([model, DASH, DASH, *[values.get(t, DASH) for t in tasks],
                         "published: " + "; ".join(dict.fromkeys(group["source"])) + (f" ({notes})" if notes else "")])
    full = full_label_rows(results)
    full = full[full["task"].isin(list(tasks))] if len(full) else full
    for (model, long, pool), group in ([] if full.empty else full.groupby(["model", "long", "pool"])):
        values = {r.task: cell(r.mean, r.ci95) for r in group.itertuples()}
        rows.append([model, long, pool, *[values.get(t, DASH) for t in tasks], "measured"])
    if not rows:
        rows = [[DASH] * len(header)]
    return markdown_table(header, rows)


def released_table(results: pd.DataFrame, reference: pd.DataFrame) -> str:
    """The published rows of released encoders beside the same weights measured through this package's probe
    (`linear_eval.py --ckpt PREFIX:PATH`, official.py), whenever results.csv holds such a row; else the command."""
    ref = reference[reference["table"] == official.TABLE] if len(reference) else reference
    full = full_label_rows(results)
    mine = full[full["model"].isin(list(official.ROW_TITLES))] if len(full) else full
    tasks = list(dict.fromkeys([*official.TASKS, *([] if mine.empty else mine["task"])]))
    header = ["Model", *[TITLES.get(t, t) for t in tasks], "Source"]
    rows = []
    for model, group in ([] if len(ref) == 0 else ref.groupby("model", sort=False)):
        values = {r.task: cell(r.value, r.ci95) for r in group.itertuples()}
        rows.append([model, *[values.get(t, DASH) for t in tasks],
                     "published: " + "; ".join(dict.fromkeys(group["source"]))])
    for model, group in ([] if mine.empty else mine.groupby("model")):
        values = {r.task: cell(r.mean, r.ci95) for r in group.itertuples()}
        rows.append([official.ROW_TITLES[model], *[values.get(t, DASH) for t in tasks], "measured"])
    text = markdown_table(header, rows or [[DASH] * len(header)])
    return text + (f"\n\n{official.NOT_MEASURED}" if mine.empty else "")


def budget_label(row) -> str:
    if row["shots"]:
        return f"{row['shots']}/class"
    return f"{float(row['label_fraction'] or 1) * 100:g} %"


def low_shot_table(results: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Rows (model, task) x columns label budgets (fractions high to low, then shots)."""
    if results.empty:
        return markdown_table(["Model", "Task", "100 %", "10 %", "1 %"], [[DASH] * 5]), pd.DataFrame()
    df = results.drop_duplicates(["model", "long", "pool", "task", "label_fraction", "shots"], keep="last").copy()
    df["fraction"] = pd.to_numeric(df["label_fraction"].replace("", "1")).where(df["shots"] == "")
    df["budget"] = [budget_label(r) for _, r in df.iterrows()]
    low = df[(df["shots"] != "") | (df["fraction"] < 1)]
    if low.empty:
        return markdown_table(["Model", "Task", "100 %", "10 %", "1 %"], [[DASH] * 5]), pd.DataFrame()
    fractions = sorted(df["fraction"].dropna().unique(), reverse=True)
    shots = sorted({int(s) for s in df["shots"] if s}, reverse=True)
    budgets = [f"{f * 100:g} %" for f in fractions] + [f"{s}/class" for s in shots]
    rows = []
    for (model, task), group in df[df.set_index(["model", "task"]).index.isin(
            low.set_index(["model", "task"]).index)].groupby(["model", "task"]):
        values = {r.budget: cell(r.mean, r.ci95) for r in group.itertuples()}
        rows.append([model, task, *[values.get(b, DASH) for b in budgets]])
    return markdown_table(["Model", "Task", *budgets], rows), df[df["fraction"].notna()]


def grid_table(df: pd.DataFrame, reference: pd.DataFrame, study: methods.Study) -> str:
    """A study's accuracy by (row_key, column_key) (methods.Study kind "grid"), one row per (encoder, task, row)
    measured, or the study's rows with "-" before any; then the published numbers of its reference table."""
    header = [study.row_label, *study.column_labels]
    needed = {study.row_key, study.column_key, "accuracy"}
    extra = [c for c in ("encoder", "task") if c in df.columns]
    columns = [f"{float(c):g}" for c in study.columns]
    rows = []
    if not df.empty and needed <= set(df.columns):
        df = df.assign(grid_column=[f"{float(f):g}" for f in df[study.column_key]])
        for key, group in df.groupby([*extra, study.row_key], sort=False):
            values = {r.grid_column: cell(r.accuracy, getattr(r, "ci95", "")) for r in group.itertuples()}
            name = " / ".join(key) if isinstance(key, tuple) else key
            rows.append([name, *[values.get(c, DASH) for c in columns]])
    else:
        rows = [[row, *[DASH] * len(columns)] for row in study.rows]
    text = markdown_table(header, rows)
    if not df.empty and not needed <= set(df.columns):
        text = generic_table(df)
    drops = reference[reference["table"] == study.reference] if not reference.empty else reference
    if len(drops):
        text += "\n\nPublished (not measured here), 100 % -> 1 % labels: " + "; ".join(
            f"{r.model} {r.value} points ({r.source})" for r in drops.itertuples()) + "."
    return text


def generic_table(df: pd.DataFrame, empty_header: list[str] | None = None) -> str:
    if df.empty:
        header = empty_header or ["Setting", "Accuracy"]
        return markdown_table(header, [[DASH] * len(header)])
    return markdown_table(list(df.columns), df.astype(str).values.tolist())


def augpair_matrix(df: pd.DataFrame) -> pd.DataFrame | None:
    """Square accuracy matrix from columns aug1, aug2, accuracy (symmetric where only one order is given)."""
    if df.empty or not {"aug1", "aug2", "accuracy"} <= set(df.columns):
        return None
    names = list(dict.fromkeys([*df["aug1"], *df["aug2"]]))
    matrix = pd.DataFrame(np.nan, index=names, columns=names)
    for r in df.itertuples():
        value = pd.to_numeric(r.accuracy, errors="coerce")
        matrix.loc[r.aug1, r.aug2] = value
        if np.isnan(matrix.loc[r.aug2, r.aug1]):
            matrix.loc[r.aug2, r.aug1] = value
    return matrix

# ============================================================================ figures


def heatmap_png(matrix: pd.DataFrame, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(matrix), 0.8 + 0.6 * len(matrix)))
    image = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis")
    ax.set_xticks(range(len(matrix)), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(matrix)), matrix.index)
    for i in range(len(matrix)):
        for j in range(len(matrix)):
            v = matrix.iat[i, j]
            ax.text(j, i, DASH if np.isnan(v) else f"{v:.1f}", ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(image, ax=ax, label="accuracy %")
    ax.set_title(title)
    save(fig, path)


def curve_png(log: pd.DataFrame, path: Path, title: str) -> bool:
    """Loss (and any accuracy column) against step; False when the log has no usable columns."""
    log = log.apply(pd.to_numeric, errors="coerce")
    if "step" not in log or "loss" not in log or log["loss"].notna().sum() == 0:
        return False
    acc_cols = [c for c in log.columns if "acc" in c.lower() and log[c].notna().any()]
    fig, axes = plt.subplots(1, 1 + bool(acc_cols), figsize=(5 + 4 * bool(acc_cols), 3.2), squeeze=False)
    losses = log[log["loss"].notna()]
    axes[0, 0].plot(losses["step"], losses["loss"])
    axes[0, 0].set(xlabel="step", ylabel="loss", title=title)
    for c in acc_cols:
        rows = log[log[c].notna()]
        axes[0, 1].plot(rows["step"], rows[c], marker=".", label=c)
    if acc_cols:
        axes[0, 1].set(xlabel="step", ylabel="accuracy", title="online evaluation")
        axes[0, 1].legend()
    save(fig, path)
    return True


def monitor_curves(runs: Path | None) -> dict[str, pd.DataFrame]:
    """{run name: its kNN monitor rows (epoch, seconds, knn_acc)} for every runs/*/log.csv (or one level deeper)
    with a `knn_acc` column (trainer.py train.monitor)."""
    curves = {}
    logs = sorted(set(runs.glob("*/log.csv")) | set(runs.glob("*/*/log.csv"))) if runs and runs.is_dir() else []
    for log_path in logs:
        log = read_csv(log_path)
        if "knn_acc" not in log:
            continue
        rows = log[log["knn_acc"] != ""][["epoch", "seconds", "knn_acc"]].apply(pd.to_numeric, errors="coerce")
        if len(rows):
            curves[log_path.parent.relative_to(runs).as_posix()] = rows
    return curves


def learning_curves_png(curves: dict[str, pd.DataFrame], path: Path) -> None:
    """kNN monitor accuracy against epoch and against training seconds, one line per run; the random-init
    starting point (epoch 0) is the first, hollow marker of each line."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in curves.items():
        for ax, x in zip(axes, ("epoch", "seconds")):
            line, = ax.plot(rows[x], 100 * rows["knn_acc"], marker=".", label=name)
            start = rows[rows["epoch"] == 0]
            ax.plot(start[x], 100 * start["knn_acc"], "o", mfc="none", color=line.get_color(), markersize=8)
    axes[0].set(xlabel="epoch", ylabel="kNN accuracy %", title="kNN monitor (o = random init)")
    axes[1].set(xlabel="training seconds", ylabel="kNN accuracy %", title="against compute")
    axes[0].legend(fontsize=7)
    save(fig, path)


def learning_curves_table(curves: dict[str, pd.DataFrame]) -> str:
    rows = []
    for name, r in curves.items():
        start = r[r["epoch"] == 0]["knn_acc"]
        rows.append([name, f"{100 * start.iloc[0]:.1f}" if len(start) else DASH, f"{100 * r['knn_acc'].iloc[-1]:.1f}",
                     f"{r['epoch'].iloc[-1]:g}", f"{r['seconds'].iloc[-1]:.0f}"])
    return markdown_table(["Run", "kNN % at init", "kNN % at end", "epochs", "training s"], rows)


def low_shot_png(df: pd.DataFrame, task: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for model, group in df[df["task"] == task].groupby("model"):
        group = group.sort_values("fraction")
        ax.errorbar(group["fraction"] * 100, pd.to_numeric(group["mean"]),
                    yerr=pd.to_numeric(group["ci95"], errors="coerce").fillna(0), marker="o", capsize=3, label=model)
    ax.set(xscale="log", xlabel="labelled training clips (%)", ylabel="accuracy %", title=f"{task}: low-shot")
    ax.legend(fontsize=7)
    save(fig, path)


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

# ============================================================================ page


def study_parts(study: methods.Study, df: pd.DataFrame, reference: pd.DataFrame, figures: Path, rel) -> list[str]:
    """The markdown (and figure) of one registry study table (methods.Study)."""
    if study.kind == "grid":
        return [grid_table(df, reference, study)]
    if study.kind == "table":
        return [generic_table(df, list(study.header) or None)]
    parts = []
    matrix = augpair_matrix(df)
    if matrix is not None:
        path = figures / f"{Path(study.csv).stem}.png"
        heatmap_png(matrix, path, f"{study.title.split(':')[0]}: accuracy by augmentation pair")
        parts.append(f"![augmentation pairs]({rel(path)})")
        values = matrix.to_numpy(dtype=float)
        upper = values[np.triu_indices(len(values))]
        upper = upper[~np.isnan(upper)]
        parts.append(f"Measured mean over pairs: {upper.mean():.1f} ± {upper.std(ddof=1) if len(upper) > 1 else 0:.2f} "
                     f"(std, {len(upper)} pairs).")
    else:
        parts.append(generic_table(df, ["aug1", "aug2", "accuracy"]))
    refs = reference[reference["table"] == study.reference] if not reference.empty else reference
    if len(refs):
        parts.append("Published (not measured here): " + "; ".join(
            f"{r.model} mean {r.value} ± {r.ci95} ({r.source})" for r in refs.itertuples()) + ".")
    return parts


def build_page(results: pd.DataFrame, reference: pd.DataFrame, studies_dir: Path, runs: Path | None,
               out: Path) -> str:
    """The whole markdown page; figures are written next to it."""
    figures = out.parent / f"{out.stem.lower()}_figures"
    rel = lambda p: p.relative_to(out.parent).as_posix()
    parts = ["<!-- generated by results/make_tables.py; edit the CSVs, not this file -->",
             "# Results",
             "Rows marked *published* are numbers from the cited source, never measured here. Measured rows come "
             "from `results.csv` (one row per `linear_eval.py` run; mean ± 95 % CI over folds x seeds, accuracy %). "
             "A cell with no measurement shows \"-\".",
             "## Linear evaluation: the seed's table",
             accuracy_table(results, reference, SEED_TASKS),
             "## Linear evaluation: other tasks"]
    full = full_label_rows(results)
    other = dict(OTHER_TASKS)
    for task in ([] if full.empty else full["task"].unique()):
        if task not in SEED_TASKS and task not in other:
            other[task] = task
    parts.append(accuracy_table(results, reference, other))

    parts.append(f"## {official.TITLE}")
    parts.append(released_table(results, reference))

    parts.append("## Low-shot linear evaluation")
    table, low = low_shot_table(results)
    parts.append(table)
    for task in ([] if low.empty else sorted(low["task"].unique())):
        if (low["task"] == task).sum() >= 2:
            path = figures / f"lowshot_{task}.png"
            low_shot_png(low, task, path)
            parts.append(f"![low-shot {task}]({rel(path)})")

    for method in methods.METHODS.values():
        for study in method.studies:
            parts.append(f"## {study.title}")
            parts += study_parts(study, read_csv(studies_dir / study.csv), reference, figures, rel)
    parts.append("## Learning curves (kNN monitor)")
    curves = monitor_curves(runs)
    if curves:
        path = figures / "learning_curves.png"
        learning_curves_png(curves, path)
        parts += [learning_curves_table(curves), f"![learning curves]({rel(path)})"]
    else:
        parts.append("No run with `train.monitor` found.")
    parts.append("## Training curves")
    curves = []
    for log_path in sorted(runs.glob("*/log.csv")) if runs is not None and runs.is_dir() else []:
        run = log_path.parent.name
        path = figures / f"curve_{run}.png"
        if curve_png(read_csv(log_path), path, run):
            curves.append(f"![{run}]({rel(path)})")
    parts += curves or ["No run logs found."]
    return "\n\n".join(parts) + "\n"


def write_page(results: str | Path, reference: str | Path, studies: str | Path, runs: str | Path | None,
               out: str | Path) -> Path:
    """Build the page from the results CSV, the reference CSV, the studies folder and the runs folder, and write it
    (atomically) to `out`, its figures to <out folder>/<out name>_figures/; returns `out`."""
    out = Path(out)
    page = build_page(read_csv(Path(results)), read_csv(Path(reference)), Path(studies),
                      None if runs is None else Path(runs), out)
    if out.parent.is_dir():
        remove_stale_temps(out.parent)  # of a killed earlier run
    atomic_write_text(page, out)
    return out
