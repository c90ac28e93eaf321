"""Write models/NAME/README.md, the model card, from the model's manifest.json and metrics.json.

    python tools/model_card.py models/fmnist-dcgan --failure-modes notes.md

The numbers come from the files the project wrote (the manifest of `gan export`, the metrics.json of
`gan evaluate --update-model`); only the known failure modes are written by a person (a Markdown file). The
manifest then lists the card with its sha256, like every other file of the directory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gan_service.evaluation.report import fd_terms_table, metric_rows, view_rows  # noqa: E402  (after the path set-up above)
from gan_service.serving.modeldir import read_manifest, write_manifest  # noqa: E402


def _training(manifest: dict) -> list[str]:
    """What it took: command, data, steps, images seen, wall time, machine."""
    t = manifest.get("training") or {}
    cfg = t.get("config") or {}
    batch = (cfg.get("optim") or {}).get("batch_size")
    steps = manifest.get("step")
    minutes = f"{t['wall_time_s'] / 60:.0f} min" if t.get("wall_time_s") else "not recorded"
    return [
        *_recipe(manifest["name"]),
        f"- training command: `{t.get('command', 'not recorded')}`",
        f"- exported: `{manifest.get('command')}` (step {steps:,} of the run, generator `{manifest['source']['generator']}`)",
        f"- data: Fashion-MNIST {manifest['data']['split']} split (60,000 images, "
        f"`apt-get install dataset-fashion-mnist`); {_labels_used(manifest)}",
        f"- images seen by G and D: {steps * batch:,} ({steps:,} steps x batch {batch})" if steps and batch else "",
        f"- wall time to the exported step: {minutes}; machine: {t.get('device') or 'a 2-core CPU'}",
    ]


def _recipe(name: str) -> list[str]:
    """The one command that trains this model again, when a preset carries the model's name."""
    from gan_service.training.config import PRESETS

    if name not in PRESETS:
        return []
    return [f"- recipe: `gan train --preset {name}` (add `--cpu-amp` on a CPU with AVX512-BF16 or AMX); the "
            "preset holds every setting of the training command below but its output directory and run name"]


def _labels_used(manifest: dict) -> str:
    """Which labels G and D were trained on, in words."""
    clusters = (manifest.get("self_conditioning") or {}).get("clusters")
    if manifest.get("num_classes"):
        return f"class labels, each class split into {clusters} k-means clusters of its images" if clusters \
            else "class labels"
    return f"no labels ({clusters} k-means cluster ids in their place)" if clusters else "no labels"


def _samples_caption(manifest: dict) -> str:
    """What samples.png shows, from the manifest's description of the grid."""
    grid = manifest.get("samples")
    if not grid:
        return "`samples.png`: a fixed-seed grid rendered by the ONNX model."
    rows, cols, seed = grid["rows"], grid["cols"], grid["seed"]
    if grid.get("labels"):
        return (f"`samples.png`: seed {seed}, a {rows} x {cols} grid of the first {rows * cols} latents the service "
                "draws for that seed, row r asking for class r.")
    return (f"`samples.png`: seed {seed}, the first {rows * cols} images the service returns for that seed "
            f"({rows} x {cols}, row-major).")


def _kind(manifest: dict) -> str:
    """What the model is conditioned on, in words."""
    selfcond = manifest.get("self_conditioning")
    if manifest.get("num_classes"):
        return f"class-conditional ({manifest['num_classes']} classes" + (
            f"; each trained as {selfcond['clusters']} k-means clusters of its images, the graph draws the cluster "
            "from z's last coordinate)" if selfcond else ")")
    if selfcond:
        return (f"unconditional (self-conditioned: trained on {selfcond['clusters']} k-means clusters of the "
                "training images, no class labels; the graph draws the cluster from z's last coordinate)")
    return "unconditional"


def render(model_dir: Path, failure_modes: str, history: str = "") -> str:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    kind = _kind(manifest)
    article = "An" if kind.startswith("u") else "A"
    lines = [f"# Model card: `{manifest['name']}`", "",
             f"{article} {kind} GAN generator for 28x28 grey Fashion-MNIST images, exported to ONNX "
             f"(`generator.onnx`, z [N, {manifest['latent_dim']}]"
             + (", label [N]" if manifest.get("num_classes") else "") + " -> uint8 [N, 28, 28, 1]), "
             f"version {manifest['version']}.", "", "![samples](samples.png)", "",
             _samples_caption(manifest), "",
             "## How it was made", "", *[ln for ln in _training(manifest) if ln],
             *([f"- history: {history.strip()}"] if history.strip() else []), "",
             "## Quality, in every view, beside the real-data floor", "",
             f"`gan evaluate models/{manifest['name']} --n {metrics['n']} --update-model` ({metrics['n']:,} samples, "
             "seed 0, against the 10,000 test images; the floor is 10,000 real training images measured the same "
             "way). Details: `report.md` in this directory, definitions in `docs/quality.md`.", "",
             "| view | FD | floor | KID x 1e3 | floor | precision | floor | recall | floor |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(r) + " |" for r in view_rows(metrics)]
    lines += fd_terms_table(metrics)
    lines += ["", "| metric | model | floor |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c, _ in metric_rows(metrics)
              if not a.startswith(("Frechet", "KID", "precision", "recall", "Parzen standard", "Parzen sigma"))]
    lines += ["", "## Known failure modes", "", failure_modes.strip(), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--failure-modes", type=Path, required=True, help="Markdown file with the known failure modes")
    parser.add_argument("--history", default="", help="how the run got to the exported step, when the training "
                        "command alone does not say (stops, resumes with another --steps)")
    args = parser.parse_args()
    for need in (args.model_dir / "manifest.json", args.model_dir / "metrics.json", args.failure_modes):
        if not need.is_file():
            print(f"model_card: {need}: file not found", file=sys.stderr)
            return 2
    (args.model_dir / "README.md").write_text(render(args.model_dir, args.failure_modes.read_text(), args.history))
    # the card is one of the directory's files: re-list them so the service still verifies the directory
    write_manifest(args.model_dir, read_manifest(args.model_dir))
    print(args.model_dir / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
