"""The ``gan`` command: parses and validates arguments, then calls one function per subcommand.

Heavy imports (torch, onnxruntime, bentoml) happen inside each subcommand, so ``gan serve`` and
``gan sample`` never import torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gan_service.core.onnx_runtime import PRECISIONS, PROVIDERS


class CLIError(Exception):
    """A user error: printed as one line naming the flag or file, exit status 2."""


# ---------------------------------------------------------------- gan train

def _preset_defaults(presets: dict, section: str, name: str, default) -> str:
    """"default: X" when every preset keeps the field's default, else each preset's own value."""
    by_value: dict[str, list[str]] = {}
    for preset, cfg in presets.items():
        value = getattr(getattr(cfg, section), name)
        by_value.setdefault(json.dumps(value), []).append(preset)
    if list(by_value) == [json.dumps(default)]:
        return f"default: {default}"
    return "default by preset: " + "; ".join(f"{', '.join(presets)} {json.loads(v)}" for v, presets in by_value.items())


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per TrainConfig field, with its documentation and each preset's own default."""
    from gan_service.training.config import PRESETS, SECTION_CLASSES, SECTION_NAMES, make_config
    import dataclasses

    presets = {name: make_config(name) for name in PRESETS}
    for section, cls in zip(SECTION_NAMES, SECTION_CLASSES):
        group = parser.add_argument_group(f"{section} options")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            flag = "--" + f.name.replace("_", "-")
            help_text = f"{f.metadata['help']} ({_preset_defaults(presets, section, f.name, default)})"
            kwargs = {"dest": f.name, "default": None, "help": help_text}
            if isinstance(default, bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            elif isinstance(default, list):
                group.add_argument(flag, type=int, nargs="+", metavar="N", **kwargs)
            else:
                group.add_argument(flag, type=type(default), choices=f.metadata.get("choices"), **kwargs)


def _train_parser(sub) -> None:
    from gan_service.training.config import PRESETS

    p = sub.add_parser("train", help="train a GAN (writes runs/NNNNN-name/)",
                       description="Train G and D. Each preset sets its own values (shown per option as "
                                   "'default by preset' where they differ); flags override them; --dry-run prints "
                                   "the resolved config.")
    p.add_argument("--preset", default="fmnist-cdcgan", choices=list(PRESETS),
                   help="named recipe to start from; a shipped model's preset has its name (default: fmnist-cdcgan, "
                        "the recipe of the default served model)")
    p.add_argument("--resume", metavar="RUN_DIR|CHECKPOINT", help="continue a run from its latest checkpoint "
                   "(flags such as --steps may extend it); given an earlier checkpoint, branch a new run directory "
                   "from it and leave the original run untouched")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit (fields "
                   "that the chosen architecture, data and settings ignore are left out)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from gan_service.training.config import apply_overrides, effective_dict, field_index, make_config, validate

    overrides = {name: getattr(args, name) for name in field_index() if getattr(args, name) is not None}
    try:
        if args.resume:
            from gan_service.training.checkpoint import load_checkpoint
            cfg = load_checkpoint(args.resume).config
            apply_overrides(cfg, overrides)
            validate(cfg)
        else:
            cfg = make_config(args.preset, overrides)
    except (ValueError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    if args.dry_run:
        print(json.dumps(effective_dict(cfg), indent=2, sort_keys=True))
        return 0
    from gan_service.training.data import DataError
    from gan_service.training.loop import TrainingDiverged, TrainingInterrupted, train

    try:
        run_dir = train(cfg, resume=args.resume)
    except TrainingInterrupted as exc:
        print(f"gan train: {exc}", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"gan train: {exc}", file=sys.stderr)
        return 3
    except (DataError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    print(run_dir)
    return 0


# ---------------------------------------------------------------- gan export

def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="checkpoint -> parity-checked ONNX model directory (models/NAME/)",
                       description="Export a generator checkpoint to ONNX (fp32 + fp16), check parity against "
                                   "PyTorch, and write models/NAME/ with manifest.json and samples.png.")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT", help="a run directory (its latest checkpoint) or a .pt file")
    p.add_argument("--name", required=True, help="model name (directory name under --out-dir)")
    p.add_argument("--out-dir", default="models", help="parent directory of the model directory (default: models)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset to export with (default: 17)")
    p.add_argument("--no-fp16", dest="fp16", action="store_false", help="skip generator.fp16.onnx")
    p.add_argument("--int8", action="store_true",
                   help="also write generator.int8.onnx when it passes the quality gate (as gan quantize; needs "
                        "Fashion-MNIST and the evaluation classifiers; 10,000 images per graph)")
    p.add_argument("--int8-samples", type=int, default=10000, metavar="N",
                   help="images per graph for the int8 quality gate (default: 10000)")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="export G instead of the EMA generator")
    p.add_argument("--to-bentoml", action="store_true", help="also import the model directory into the BentoML model store")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    if not Path(args.checkpoint).exists():
        raise CLIError(f"{args.checkpoint}: no such run directory or checkpoint file")
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise CLIError(f"--name: {args.name!r} is not a valid directory name")
    from gan_service.training.checkpoint import CheckpointError
    from gan_service.training.export import ExportError, export_model
    from gan_service.training.quantize import MIN_SAMPLES

    if args.int8 and args.int8_samples < MIN_SAMPLES:
        raise CLIError(f"--int8-samples {args.int8_samples}: must be >= {MIN_SAMPLES}")
    try:
        model_dir = export_model(args.checkpoint, args.name, out_dir=args.out_dir, opset=args.opset, fp16=args.fp16,
                                 ema=args.ema, to_bentoml=args.to_bentoml, command=" ".join(["gan"] + args.argv),
                                 int8=args.int8, int8_samples=args.int8_samples)
    except (CheckpointError, ExportError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    print(model_dir)
    return 0


# ---------------------------------------------------------------- gan quantize

def _quantize_parser(sub) -> None:
    p = sub.add_parser("quantize", help="add a gated int8 graph (generator.int8.onnx) to an exported model directory",
                       description="Static int8 quantization (onnxruntime, QDQ) of MODEL_DIR/generator.onnx, calibrated "
                                   "on the service's latents; written only when, on --samples images of the same "
                                   "latents, FD in each evaluation view is within 5% of the fp32 graph's and precision "
                                   "and recall within 0.02, every latent picks the same cluster/class, and batching "
                                   "does not change a byte. The manifest records the checks either way.")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="an exported model directory (e.g. models/fmnist-cdcgan)")
    p.add_argument("--calibration", type=int, default=1024, metavar="N",
                   help="calibration latents (seed 1, indices 0..N-1, balanced classes; >= 512; default: 1024)")
    p.add_argument("--samples", type=int, default=10000, metavar="N",
                   help="images per graph for the quality gate (seed 0, as gan evaluate; default: 10000)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX directory")
    p.add_argument("--dry-run", action="store_true", help="quantize and check, print the verdict, write nothing")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    from gan_service.core.paths import resolve_shipped
    from gan_service.training.quantize import (MIN_CALIBRATION, MIN_SAMPLES, QuantizeError, gate_summary,
                                               quantize_model_dir)

    if args.calibration < MIN_CALIBRATION:
        raise CLIError(f"--calibration {args.calibration}: must be >= {MIN_CALIBRATION} latents")
    if args.samples < MIN_SAMPLES:
        raise CLIError(f"--samples {args.samples}: must be >= {MIN_SAMPLES} (a full-rank covariance of the 128-d "
                       "classifier features)")
    model_dir = resolve_shipped(args.model_dir)
    if not model_dir.is_dir():
        raise CLIError(f"{args.model_dir}: no such model directory")
    try:
        record = quantize_model_dir(model_dir, calibration=args.calibration, samples=args.samples,
                                    dry_run=args.dry_run, data_dir=args.data, command=" ".join(["gan"] + args.argv))
    except (QuantizeError, OSError) as exc:
        raise CLIError(str(exc)) from exc
    print(gate_summary(record))
    if not record["passed"]:
        raise CLIError(f"{model_dir}: int8 graph not written: {record['reason']}")
    print(model_dir / "generator.int8.onnx" if record["exported"] else "dry run: nothing written")
    return 0


# ---------------------------------------------------------------- gan serve

def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP (bentoml serve gan_service.serving.app:GAN)",
                       description="Start the BentoML HTTP service. Every setting of serving/settings.py can also "
                                   "be given as a GAN_<NAME> environment variable.")
    p.add_argument("--models", help="comma-separated model directories or BentoML tags; the first is the default "
                                    "(default: models/fmnist-cdcgan,models/fmnist-dcgan)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=3000, help="port (default: 3000)")
    p.add_argument("--provider", choices=PROVIDERS, help="onnxruntime provider (default: auto)")
    p.add_argument("--require-gpu", action="store_true", help="fail at start-up when CUDA is not available")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="which graph runs: auto (fp16 on CUDA; int8 on a CPU with AVX2/VNNI when the model has a "
                        "checked int8 graph; else fp32), fp32, fp16 (CUDA) or int8 (CPU) (default: auto)")
    p.add_argument("--max-batch-size", type=int, help="micro-batching: most images per merged engine call (default: 256)")
    p.add_argument("--max-latency-ms", type=int, help="micro-batching budget: a request still waiting for the engine "
                                                      "this long gets 503 (default: 1000)")
    p.add_argument("--max-concurrency", type=int, help="requests in flight before 429 (default: 256)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import os

    env = {"BENTOML_DO_NOT_TRACK": "true", **os.environ}      # no usage tracking unless the user turns it on
    for name in ("models", "provider", "precision", "max_batch_size", "max_latency_ms", "max_concurrency"):
        value = getattr(args, name)
        if value is not None:
            if isinstance(value, int) and value < 1:
                raise CLIError(f"--{name.replace('_', '-')}: must be >= 1")
            env[f"GAN_{name.upper()}"] = str(value)
    if args.require_gpu:
        env["GAN_REQUIRE_GPU"] = "true"
    cmd = [sys.executable, "-m", "bentoml", "serve", "gan_service.serving.app:GAN", "--host", args.host, "--port", str(args.port)]
    os.execvpe(cmd[0], cmd, env)
    return 0   # not reached


# ---------------------------------------------------------------- gan sample

def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="offline sampling of many images to shards on disk (resumable)",
                       description="Write COUNT images of MODEL (a model directory or BentoML tag) to --out as "
                                   "shards plus index.json. Re-running the same command resumes; "
                                   "--verify DIR checks completeness and checksums.")
    p.add_argument("model", nargs="?", help="model directory or BentoML tag (default: models/fmnist-cdcgan)",
                   default="models/fmnist-cdcgan")
    p.add_argument("--count", type=int, help="number of images (required unless --verify)")
    p.add_argument("--seed", type=int, default=0, help="seed: image i is image (seed, i) of the HTTP service (default: 0)")
    p.add_argument("--out", help="output directory (required unless --verify)")
    p.add_argument("--labels", default="random", help="random (the service's per-image class), balanced "
                   "(index mod classes), or one class id or name (default: random)")
    p.add_argument("--truncation", type=float, default=1.0, help="psi in (0, 1] (default: 1.0)")
    p.add_argument("--format", default="png-tar", choices=["png-tar", "npy", "png"],
                   help="png-tar: PNGs in tar shards; npy: uint8 array shards; png: individual files (default: png-tar)")
    p.add_argument("--shard-size", type=int, default=10000, help="images per shard (default: 10000)")
    p.add_argument("--batch", type=int, default=1024, help="images per engine call (default: 1024)")
    p.add_argument("--workers", type=int, default=0, help="encoding processes (default: 0 = one per core)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime engine threads (default: 0 = every core this "
                   "process may use); the output bytes do not depend on it")
    p.add_argument("--provider", default="auto", choices=PROVIDERS, help="onnxruntime provider (default: auto)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="which graph runs, as the service's precision setting: auto (fp16 on CUDA, int8 on a CPU "
                        "that gains from it, when the model has the graph; else fp32), fp32, fp16, int8; recorded in "
                        "index.json, so a resume runs the same graph (default: auto)")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="local, or Ray Data actors (default: local)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--verify", metavar="DIR", help="check DIR's completeness and checksums, then exit")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from gan_service.serving.sampler import SampleError, SampleOptions, sample, verify

    try:
        if args.verify:
            print(json.dumps(verify(args.verify)))
            return 0
        if args.count is None or args.out is None:
            raise CLIError("--count and --out are required (or --verify DIR)")
        options = SampleOptions(batch=args.batch, workers=args.workers, threads=args.threads, provider=args.provider,
                                precision=args.precision, engine=args.engine, progress=args.progress)
        summary = sample(args.model, args.count, args.seed, args.out, labels=args.labels, truncation=args.truncation,
                         fmt=args.format, shard_size=args.shard_size, options=options)
    except SampleError as exc:
        raise CLIError(str(exc)) from exc
    print(json.dumps(summary))
    return 0


# ---------------------------------------------------------------- gan evaluate

def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="quality metrics of a model or a folder/shards of images",
                       description="Fréchet distance, KID and precision/recall in three views (the project's "
                                   "Fashion-MNIST classifier models/eval, the degradation-trained classifier "
                                   "models/eval-robust, and pixels on 64 principal components), class coverage and "
                                   "Parzen log-likelihood, each beside the real-data floor; prints a summary and writes "
                                   "the report to --out (never into the source unless --update-model). "
                                   "--train-classifier trains and exports a classifier (--recipe).")
    p.add_argument("source", nargs="?", help="model directory, BentoML tag, image folder or sampler output directory")
    p.add_argument("--n", type=int, default=10000, help="generated samples to evaluate (default: 10000)")
    p.add_argument("--out", help="report directory (default: ./eval-report/<name>; the source is never written to)")
    p.add_argument("--update-model", action="store_true",
                   help="write the report into the model directory and the headline numbers into its manifest.json")
    p.add_argument("--classifier", default="models/eval", help="classifier model directory (default: models/eval)")
    p.add_argument("--robust-classifier", default="models/eval-robust",
                   help="the second classifier view, trained on degraded images (default: models/eval-robust; "
                        "'none' leaves that view out)")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated samples (default: 0)")
    p.add_argument("--inception-weights", metavar="PATH", help="local Inception-v3 FID weights: also report standard FID")
    p.add_argument("--train-classifier", action="store_true", help="train the feature classifier and export it to --classifier")
    p.add_argument("--epochs", type=int, default=8, help="classifier training epochs (default: 8)")
    p.add_argument("--recipe", default="standard", choices=["standard", "robust"],
                   help="classifier recipe for --train-classifier: standard (models/eval) or robust (another "
                        "architecture trained on degraded images, models/eval-robust) (default: standard)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    if args.train_classifier:
        if args.epochs < 1:
            raise CLIError("--epochs: must be >= 1")
        from gan_service.training.classifier import train_classifier

        try:
            print(train_classifier(out_dir=args.classifier, data_dir=args.data, epochs=args.epochs, seed=args.seed,
                                   recipe=args.recipe))
        except (ValueError, OSError) as exc:   # ClassifierError, DataError, unwritable --classifier
            raise CLIError(str(exc)) from exc
        return 0
    if not args.source:
        raise CLIError("give a SOURCE to evaluate (or --train-classifier)")
    if args.n < 2:
        raise CLIError("--n: must be >= 2")
    from gan_service.evaluation.evaluate import EvaluationError, evaluate
    from gan_service.evaluation.report import summary_text

    try:
        metrics = evaluate(args.source, n=args.n, out=args.out, classifier=args.classifier, data_dir=args.data,
                           seed=args.seed, inception_weights=args.inception_weights, update_model=args.update_model,
                           robust_classifier=None if args.robust_classifier == "none" else args.robust_classifier)
    except EvaluationError as exc:
        raise CLIError(str(exc)) from exc
    print(summary_text(metrics))
    return 0


# ---------------------------------------------------------------- gan bench

def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (results go to docs/)")
    bench = p.add_subparsers(dest="bench", required=True)
    toy = bench.add_parser("toy", help="mode-collapse benchmark on the 2-D ring and grid mixtures",
                           description="Train each loss on the ring of 8 and the grid of 25, several seeds each; "
                                       "write a table and scatter plots to --out. The runs of `best` are also "
                                       "sampled through D* rejection sampling (gan_service/training/rejection.py), reported "
                                       "as best+drs.")
    toy.add_argument("--datasets", nargs="+", default=["ring", "grid"], choices=["ring", "grid"],
                     help="mixtures to run (default: ring grid)")
    toy.add_argument("--recipes", nargs="+", default=None,
                     help="recipes to run (default: all: minimax nonsaturating mle best)")
    toy.add_argument("--seeds", type=int, default=10, help="seeds per recipe and mixture (default: 10)")
    toy.add_argument("--baseline-seeds", type=int, default=3, help="seeds for the plain losses (default: 3)")
    toy.add_argument("--steps", type=int, default=None, help="override every recipe's step count")
    toy.add_argument("--out", default="docs", help="output directory (default: docs)")
    toy.set_defaults(func=cmd_bench_toy)
    smp = bench.add_parser("sample", help="offline sampler (NPY and PNG shards) against a naive PyTorch + PIL loop",
                           description="Measure gan sample to NPY and PNG-tar shards, one core's PNG encode rate, and "
                                       "the naive per-image loop on the same model; write docs/benchmarks.md.")
    smp.add_argument("model", nargs="?", default="models/fmnist-cdcgan", help="model directory (default: models/fmnist-cdcgan)")
    smp.add_argument("--count", type=int, default=100_000, help="images per sampler run (default: 100000)")
    smp.add_argument("--naive-count", type=int, default=2000, help="images for the naive loop (default: 2000)")
    smp.add_argument("--checkpoint", help="checkpoint for the naive loop (default: the manifest's source checkpoint)")
    smp.add_argument("--batch", type=int, default=1024, help="sampler batch (default: 1024)")
    smp.add_argument("--workers", type=int, default=0, help="sampler encoding processes (default: one per core)")
    smp.add_argument("--threads", type=int, default=0, help="sampler engine threads (default: 0 = every core)")
    smp.add_argument("--index-shards", type=int, default=1000,
                     help="shards of 10 images in the index-upkeep run (default: 1000)")
    smp.add_argument("--out", default="docs/benchmarks.md", help="Markdown file to update (default: docs/benchmarks.md)")
    smp.set_defaults(func=cmd_bench_sample)
    http = bench.add_parser("http", help="the HTTP service against a do-nothing BentoML endpoint under wrk (loopback)",
                            description="Start the project's server (batching on, then off) and a do-nothing BentoML "
                                        "endpoint with the same request and response shape, one at a time on "
                                        "127.0.0.1; load /generate with wrk (n=1 PNG and n=64 NPY at each "
                                        "concurrency); write req/s, p50/p95/p99 and non-2xx by status to --out.")
    http.add_argument("--seconds", type=float, default=4.0, help="seconds per load level (default: 4)")
    http.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256],
                      help="concurrency levels (default: 1 16 64 256)")
    http.add_argument("--out", default="docs/benchmarks.md", help="Markdown file to update (default: docs/benchmarks.md)")
    http.set_defaults(func=cmd_bench_http)
    eng = bench.add_parser("engine", help="onnxruntime against PyTorch eager on one model, batch 1..1024",
                           description="Images/s and ms per call of onnxruntime (CPU at 1, 2, 4, ... and all threads, "
                                       "generator.onnx and generator.int8.onnx when the directory has one; CUDA when "
                                       "present) and PyTorch eager (forward + uint8 post-processing) at batch 1, 8, "
                                       "64, 256, 1024; FLOPs per image, the machine's compute bound, and the offline "
                                       "sampler to NPY (its defaults: every core) against the best onnxruntime CPU "
                                       "configuration, in the same run; written to --out.")
    eng.add_argument("model", nargs="?", default="models/fmnist-cdcgan", help="model directory (default: models/fmnist-cdcgan)")
    eng.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"],
                     help="auto: CPU, and CUDA when onnxruntime has it (default: auto)")
    eng.add_argument("--sampler-count", type=int, default=20_000, help="images for the sampler run (default: 20000)")
    eng.add_argument("--out", default="docs/benchmarks.md", help="Markdown file to update (default: docs/benchmarks.md)")
    eng.set_defaults(func=cmd_bench_engine)
    trn = bench.add_parser("train", help="a CPU training step in float32 against bfloat16 autocast (--cpu-amp)",
                           description="Milliseconds per training step (one D and one G update) of a preset on CPU, "
                                       "float32 and bfloat16 autocast alternating round by round; written to --out.")
    trn.add_argument("--preset", default="fmnist-cdcgan", help="training preset (default: fmnist-cdcgan)")
    trn.add_argument("--g-upsample", default="resize", choices=["transpose", "resize"],
                     help="generator upsampling, as in `gan train` (default: resize, that of the shipped models)")
    trn.add_argument("--steps", type=int, default=20, help="steps per round (default: 20)")
    trn.add_argument("--rounds", type=int, default=3, help="rounds per arm; each arm keeps its best (default: 3)")
    trn.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as in the shipped runs)")
    trn.add_argument("--out", default="docs/benchmarks.md", help="Markdown file to update (default: docs/benchmarks.md)")
    trn.set_defaults(func=cmd_bench_train)


def cmd_bench_toy(args) -> int:
    if args.seeds < 1 or args.baseline_seeds < 1:
        raise CLIError("--seeds/--baseline-seeds: must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise CLIError("--steps: must be >= 1")
    from gan_service.training.toybench import RECIPES, run_toy_bench

    unknown = sorted(set(args.recipes or []) - set(RECIPES))
    if unknown:
        raise CLIError(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    report = run_toy_bench(datasets=args.datasets, recipes=args.recipes, seeds=args.seeds,
                           baseline_seeds=args.baseline_seeds, steps=args.steps, out=args.out)
    print(report)
    return 0


def cmd_bench_http(args) -> int:
    if not 0 < args.seconds <= 60 or any(not 1 <= c <= 1024 for c in args.concurrency):
        raise CLIError("--seconds must be in (0, 60] and --concurrency values in 1..1024")
    import datetime as dt

    from gan_service.serving.httpbench import bench_http, markdown
    from gan_service.serving.loadgen import LoadError
    from gan_service.training.benchmarks import machine, write_section

    try:
        results, rounds = bench_http(args.seconds, levels=tuple(args.concurrency))
    except (LoadError, RuntimeError) as exc:
        raise CLIError(str(exc)) from exc
    command = "gan bench http " + " ".join(sys.argv[3:])
    body = (f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}, wrk 1 thread, "
            f"{args.seconds:g} s per level, loopback.\n\nCommand: `{command.strip()}`\n\n" + markdown(results, rounds))
    write_section(args.out, "HTTP service under load (gan bench http)", body)
    print(body)
    return 0


def cmd_bench_engine(args) -> int:
    if args.sampler_count < 1:
        raise CLIError("--sampler-count: must be >= 1")
    from gan_service.serving.modeldir import ModelDirError
    from gan_service.serving.sampler import SampleError
    from gan_service.training.benchmarks import bench_engine

    try:
        print(bench_engine(args.model, args.provider, args.sampler_count, args.out,
                           command=("gan bench engine " + " ".join(sys.argv[3:])).strip()))
    except (ModelDirError, SampleError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    return 0


def cmd_bench_train(args) -> int:
    if args.steps < 1 or args.rounds < 1 or args.threads < 1:
        raise CLIError("--steps, --rounds and --threads must be >= 1")
    from gan_service.training.benchmarks import bench_train
    from gan_service.training.config import PRESETS

    dcgans = [name for name, p in PRESETS.items() if p.get("model", {}).get("arch") == "dcgan"]
    if args.preset not in dcgans:
        raise CLIError(f"--preset: {args.preset!r} is not a DCGAN preset; choose one of {', '.join(dcgans)}")
    print(bench_train(args.preset, {"g_upsample": args.g_upsample}, args.steps, args.rounds, args.threads, args.out,
                      command=" ".join(["gan"] + args.argv)))
    return 0


def cmd_bench_sample(args) -> int:
    if args.count < 1 or args.naive_count < 1 or args.batch < 1 or args.index_shards < 1:
        raise CLIError("--count, --naive-count, --batch and --index-shards must be >= 1")
    if args.workers < 0 or args.threads < 0:
        raise CLIError("--workers and --threads must be >= 0")
    from gan_service.serving.modeldir import ModelDirError
    from gan_service.serving.sampler import SampleError
    from gan_service.training.benchmarks import bench_sample

    try:
        print(bench_sample(args.model, args.count, args.naive_count, args.checkpoint, args.batch, args.workers, args.out,
                           command=" ".join(["gan"] + args.argv), threads=args.threads,
                           index_shards=args.index_shards))
    except (ModelDirError, SampleError) as exc:
        raise CLIError(str(exc)) from exc
    return 0


# ---------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = ArgParser(prog="gan", description="Train, export, serve and sample GAN image generators.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _export_parser(sub)
    _serve_parser(sub)
    _sample_parser(sub)
    _evaluate_parser(sub)
    _quantize_parser(sub)
    _bench_parser(sub)
    return parser


class _Deferred(Exception):
    """Raised instead of exiting while main() looks for unknown flags first."""


class ArgParser(argparse.ArgumentParser):
    """argparse with no abbreviations and one-line errors (exit 2); every subparser is one too."""

    looking_for_unknown_flags = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})    # --step must not silently mean --steps

    def error(self, message: str):
        if ArgParser.looking_for_unknown_flags:
            raise _Deferred(message)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _subcommand_parsers(parser: argparse.ArgumentParser, path=()):
    """(parser, (subcommand dests and names chosen to reach it)) for the parser and every (nested) subparser."""
    yield parser, path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommand_parsers(sub, path + ((action.dest, name),))


def _reject_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Before the real parse (whose "required" errors would come first): an unknown flag is answered by the
    subcommand it was given to, with the closest valid flag, in one line, exit 2."""
    import difflib

    required = [a for sub, _ in _subcommand_parsers(parser) for a in sub._actions if a.required]
    ArgParser.looking_for_unknown_flags = True
    try:
        for a in required:
            a.required = False
        args, extra = parser.parse_known_args(argv)
    except _Deferred:                   # another error (a bad value): the real parse reports it
        return
    finally:
        ArgParser.looking_for_unknown_flags = False
        for a in required:
            a.required = True
    if not extra:
        return
    chosen = parser
    for sub, path in _subcommand_parsers(parser):
        if path and all(getattr(args, dest, None) == name for dest, name in path):
            chosen = sub
    flags = [s for a in chosen._actions for s in a.option_strings if s.startswith("--")]
    said = []
    for x in extra:
        close = difflib.get_close_matches(x.split("=")[0], flags, n=1, cutoff=0.6) if x.startswith("-") else []
        said.append(f"{x} (did you mean {close[0]}?)" if close else x)
    chosen.error(f"unrecognized arguments: {', '.join(said)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _reject_unknown_flags(parser, argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"gan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
