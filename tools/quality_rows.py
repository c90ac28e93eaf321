"""Re-measure the rows of docs/quality.md: train (or reuse), export and evaluate each row in every view.

    python tools/quality_rows.py --work /work/runs/quality            # everything (about an hour on 2 busy cores)
    python tools/quality_rows.py --work DIR --rows fmnist-dcgan --n 2000

Each budget row is a preset trained on 64,000 real images (generator steps x batch), one seed, CPU; the
shipped rows evaluate models/NAME as committed. Runs, exported models and reports go under --work (outside the
repository); the sample grid of each row is copied to docs/quality/<row>.png and the Markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WIDTH_32 = {"g_channels": 32, "d_channels": 32}
# row name -> (preset, overrides); steps x batch = 64,000 real images for every budget row
BUDGET_ROWS = {
    "paper-mlp-minimax": ("paper-mlp", {"loss": "minimax", "steps": 640}),
    "paper-mlp-nonsaturating": ("paper-mlp", {"loss": "nonsaturating", "steps": 640}),
    "paper-mlp-mle": ("paper-mlp", {"loss": "mle", "steps": 640}),
    "fmnist-dcgan-preset": ("fmnist-dcgan", {**WIDTH_32, "steps": 1000}),
    "fmnist-cdcgan-preset": ("fmnist-cdcgan", {**WIDTH_32, "steps": 1000}),
}
SHIPPED_ROWS = ("fmnist-dcgan", "fmnist-cdcgan")
VIEWS = ("classifier", "robust", "pixels_pca")


def train_and_export(row: str, work: Path) -> tuple[Path, dict]:
    """The row's exported model directory (trained and exported once, reused afterwards) and how it was made."""
    from gan_service.training.config import make_config, train_command
    from gan_service.training.export import export_model
    from gan_service.training.loop import train

    preset, overrides = BUDGET_ROWS[row]
    model_dir = work / "models" / row
    cfg = make_config(preset, {**overrides, "out_dir": str(work / "runs"), "name": row, "sample_every": 0,
                               "log_every": 100})
    made = {"command": train_command(cfg), "steps": cfg.run.steps, "batch": cfg.optim.batch_size}
    if not (model_dir / "manifest.json").is_file():
        t0 = time.perf_counter()
        run_dir = train(cfg)
        made["train_seconds"] = round(time.perf_counter() - t0, 1)
        export_model(run_dir, row, out_dir=work / "models", fp16=False)
        (model_dir.parent / f"{row}.made.json").write_text(json.dumps(made))
    else:
        made = json.loads((model_dir.parent / f"{row}.made.json").read_text())
    return model_dir, made


def measure_row(model_dir: Path, row: str, work: Path, n: int) -> dict:
    from gan_service.evaluation.evaluate import evaluate

    result = evaluate(model_dir, n=n, out=work / "eval" / row)
    (REPO / "docs" / "quality").mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "samples.png", REPO / "docs" / "quality" / f"{row}.png")
    return result


def table(results: dict[str, dict]) -> str:
    """Markdown: FD in every view beside the floor, then KID, precision and recall of each view."""
    head = "| row | " + " | ".join(f"FD {v}" for v in VIEWS) + " | " + \
           " | ".join(f"KIDx1e3 {v}" for v in VIEWS) + " | " + \
           " | ".join(f"P/R {v}" for v in VIEWS) + " |"
    lines = [head, "| --- |" + " ---: |" * (3 * len(VIEWS))]

    def cells(metrics: dict) -> list[str]:
        views = metrics["views"]
        return ([f"{views[v]['fd']:.3f}" for v in VIEWS] + [f"{views[v]['kid']['mean'] * 1e3:.2f}" for v in VIEWS]
                + [f"{views[v]['precision_recall']['precision']:.2f} / {views[v]['precision_recall']['recall']:.2f}"
                   for v in VIEWS])

    for row, result in results.items():
        lines.append(f"| `{row}` | " + " | ".join(cells(result["metrics"])) + " |")
    any_result = next(iter(results.values()))
    lines.append("| **floor** | " + " | ".join(cells(any_result["floor"])) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--work", required=True, help="directory for runs, models and reports (outside the repo)")
    parser.add_argument("--rows", nargs="+", default=[*BUDGET_ROWS, *SHIPPED_ROWS],
                        choices=[*BUDGET_ROWS, *SHIPPED_ROWS])
    parser.add_argument("--n", type=int, default=10000)
    args = parser.parse_args()
    work = Path(args.work)
    results, made = {}, {}
    for row in args.rows:
        if row in SHIPPED_ROWS:
            model_dir = REPO / "models" / row
        else:
            model_dir, made[row] = train_and_export(row, work)
        results[row] = measure_row(model_dir, row, work, args.n)
    (work / "rows.json").write_text(json.dumps({r: {"metrics": v["metrics"], "floor": v["floor"], "made": made.get(r)}
                                                for r, v in results.items()}, default=str))
    print(table(results))
    print(json.dumps(made, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
