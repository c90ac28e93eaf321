"""The Ray Data engine of the sampler: shards spread over stateful actors (one model session each).

Each actor renders, encodes and writes whole shards into the shared output directory (the same
atomic temp-then-rename writes and layout as the local engine); the driver records finished shards in
index.json as they arrive, so a killed Ray run resumes like a local one. On a cluster the output
directory must be on a filesystem every node sees; each actor asks for one GPU when CUDA is used.
"""
from __future__ import annotations

from pathlib import Path


class ShardWriter:
    """Ray Data actor: holds one ModelRuntime; __call__ turns a batch of shard ids into written shards."""

    def __init__(self, model_ref: str, spec: dict, out: str, batch: int, provider: str):
        from gan_service.serving.shards import SampleOptions, SampleSpec, make_runtime

        self.spec, self.out, self.batch = SampleSpec(**spec), Path(out), batch
        self.runtime = make_runtime(model_ref, SampleOptions(batch=batch, provider=provider, progress=False))

    def __call__(self, shards: dict) -> dict:
        import json

        from gan_service.serving.shards import encode_shard, render_shard, write_shard

        entries = []
        for k in shards["shard"]:
            k = int(k)
            start, stop = self.spec.shard_ranges()[k]
            images, labels = render_shard(self.runtime, self.spec, start, stop, self.batch)
            files = encode_shard(self.spec.format, images, labels, start, bool(self.runtime.models[0].num_classes))
            entries.append(json.dumps(write_shard(self.out, self.spec, k, files)))
        return {"shard": shards["shard"], "entry": entries}


def run_ray(model_ref: str, spec, out: Path, pending: list[int], options, done: dict, progress) -> None:
    """Render the pending shards on Ray Data actors; update index.json as each shard lands."""
    import json
    from dataclasses import asdict

    try:
        import ray
    except ImportError as exc:
        from gan_service.serving.shards import SampleError
        raise SampleError("--engine ray: Ray is not installed (pip install '.[ray]')") from exc
    from gan_service.serving.shards import save_index

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
                               "spec": asdict(spec), "out": str(out.resolve()), "batch": options.batch,
                               "provider": options.provider if use_gpu else "cpu"})
    for row in written.iter_rows():
        k = int(row["shard"])
        done[k] = json.loads(row["entry"])
        save_index(out, spec, done)
        a, b = spec.shard_ranges()[k]
        progress.advance(b - a)
