"""The Ray Data engine of the sampler: shards spread over stateful actors (one model session each).

Each actor renders, encodes and writes whole shards into the shared output directory (the same
atomic temp-then-rename writes, temporary names and layout as the local engine); the driver holds the
directory's lock and records finished shards in index.json as they arrive, so a killed Ray run resumes like a
local one. On a cluster the output directory must be on a filesystem every node sees; each actor asks for one
GPU when CUDA is used, and on CPUs there is one actor per CPU with one engine thread each.
"""
from __future__ import annotations

from pathlib import Path


class ShardWriter:
    """Ray Data actor: holds one ModelRuntime; __call__ turns a batch of shard ids into written shards."""

    def __init__(self, model_ref: str, spec: dict, out: str, batch: int, provider: str, precision: str):
        from gan_service.serving.shards import SampleError, SampleOptions, SampleSpec, engine_graph, make_runtime

        self.spec, self.out, self.batch = SampleSpec(**spec), Path(out), batch
        self.runtime = make_runtime(model_ref, SampleOptions(batch=batch, threads=1, provider=provider,
                                                             precision=precision, progress=False))
        graph = engine_graph(self.runtime.models[0], self.runtime.engines[0])
        if any(graph[k] != getattr(self.spec, k) for k in graph):      # its bytes would differ from the run's
            raise SampleError(f"--engine ray: an actor runs {graph['precision']} on {graph['provider']}, the run "
                              f"{self.spec.precision} on {self.spec.provider}; pin --provider and --precision")

    def __call__(self, shards: dict) -> dict:
        import json

        from gan_service.serving.shards import encode_shard, render_shard, write_shard

        entries = []
        for k in shards["shard"]:
            k = int(k)
            start, stop = self.spec.shard_range(k)
            images, labels = render_shard(self.runtime, self.spec, start, stop, self.batch)
            files = encode_shard(self.spec.format, images, labels, start, bool(self.runtime.models[0].num_classes))
            entries.append(json.dumps(write_shard(self.out, self.spec, k, files)))
        return {"shard": shards["shard"], "entry": entries}


def run_ray(model_ref: str, spec, output, pending: list[int], options, progress) -> None:
    """Render the pending shards on Ray Data actors; ``output`` (the claimed directory) lists each as it lands."""
    import json
    from dataclasses import asdict

    try:
        import ray
    except ImportError as exc:
        from gan_service.serving.shards import SampleError
        raise SampleError("--engine ray: Ray is not installed (pip install '.[ray]')") from exc

    if not pending:
        return
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    use_gpu = options.provider != "cpu" and ray.cluster_resources().get("GPU", 0) > 0
    actors = max(1, min(len(pending), int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1))))
    ds = ray.data.from_items([{"shard": k} for k in pending])
    written = ds.map_batches(
        ShardWriter, batch_size=1, concurrency=actors, num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={"model_ref": str(Path(model_ref).resolve()) if Path(model_ref).exists() else model_ref,
                               "spec": asdict(spec), "out": str(output.out.resolve()), "batch": options.batch,
                               "provider": options.provider if use_gpu else "cpu", "precision": options.precision})
    for row in written.iter_rows():
        k = int(row["shard"])
        output.index.add(k, json.loads(row["entry"]))
        a, b = spec.shard_range(k)
        progress.advance(b - a)
