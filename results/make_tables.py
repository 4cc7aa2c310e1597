"""Regenerate results/README.md from the measured rows and the published reference numbers.

    python results/make_tables.py                      # results/results.csv + reference.csv -> results/README.md
    python results/make_tables.py --results results/demo.csv --out results/demo.md --runs runs/demo

Inputs (each optional; whatever is missing shows as "-", never as a number from elsewhere):
    --results    rows appended by linear_eval.py (probe.RESULT_FIELDS)
    --reference  published numbers with their source (table, task, model, metric, value, ci95, source, note)
    --studies    folder (default results/) of each registry method's study CSVs (methods.Method.studies): a
                 "grid" (row key, column key, accuracy [, ci95, encoder, task]), a "table" (any columns, shown as
                 they are), "pairs" (aug1, aug2, accuracy -> heatmap PNG)
    --runs       folders */log.csv of pretraining runs (step, loss, any *acc* column) -> curve PNGs; the kNN
                 monitor rows (knn_acc, train.monitor) -> learning curves against epoch and training seconds

Figures go to <out folder>/<out name>_figures/ (results/readme_figures/ for results/README.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import tables  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(HERE / "results.csv"))
    parser.add_argument("--reference", default=str(HERE / "reference.csv"))
    parser.add_argument("--studies", default=str(HERE),
                        help="folder with the CSVs of the registry's studies (methods.Method.studies)")
    parser.add_argument("--runs", default="runs", help="folder of run folders with log.csv")
    parser.add_argument("--out", default=str(HERE / "README.md"))
    args = parser.parse_args(argv)
    print(f"wrote {tables.write_page(args.results, args.reference, args.studies, args.runs, args.out)}")


if __name__ == "__main__":
    main()
