"""The sampler's output directory, shard by shard: the spec, the lock, index.json, rendering, encoding and writing.

Shared by the local engine (``serving.sampler``) and the Ray Data engine (``serving.ray_sampler``); see
``serving.sampler`` for the layout and the crash-safety contract.

Whose files are whose: the sampler deletes or replaces only what it can prove it wrote. A directory is this run's
output when its index.json records the same spec (or when it holds nothing but the lock file and temporaries named
for this spec); temporaries carry the spec's identity (``.tmp-<run id>-<name>``, ``SampleSpec.run_id``), so a
leftover of a killed run is recognised and anyone else's ``.tmp-`` file is left alone.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath

import numpy as np

from gan_service.core.atomic import atomic_write, fsync_dir, publish_dir
from gan_service.core.cpus import available_cores
from gan_service.core.onnx_runtime import CPU
from gan_service.serving.codecs import encode_image, encode_npy
from gan_service.serving.engine import EngineError
from gan_service.serving.latents import random_labels
from gan_service.serving.modeldir import ModelDir, ModelDirError, load_model_dir
from gan_service.serving.runtime import RANDOM_LABEL, ModelRuntime, make_rows
from gan_service.serving.settings import ServeSettings


INDEX = "index.json"
LOCK = ".gan-sample.lock"        # flock()ed by the run writing the directory; an empty file, never deleted
TMP = ".tmp-"
FORMATS = ("png-tar", "npy", "png")
INDEX_VERSION = 2                # 2: the graph that makes the bytes (precision, provider, graph_sha256) is recorded
MAX_SHARDS = 1_000_000           # index.json of this many shards is ~150 MB; more is a --shard-size mistake
REWRITE_FACTOR = 10              # index.json is rewritten at most every REWRITE_FACTOR x its last write's duration


class SampleError(ValueError):
    """Bad sampling arguments or an output directory that belongs to another run."""


@dataclass
class SampleSpec:
    """Everything that determines the output bytes; stored in index.json and checked on resume."""
    model_name: str
    model_sha256: str
    seed: int
    count: int
    labels: str            # "random" | "balanced" | a class id
    truncation: float
    format: str
    shard_size: int
    precision: str = "fp32"              # the graph that makes the bytes (they differ between precisions and
    provider: str = CPU                  # providers): fp32 | fp16 | int8, the onnxruntime provider that runs it,
    graph_sha256: str = ""               # and the sha256 of that graph file

    @property
    def num_shards(self) -> int:
        return -(-self.count // self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        """Indices [start, stop) of shard k."""
        start = k * self.shard_size
        return start, min(start + self.shard_size, self.count)

    @property
    def run_id(self) -> str:
        """16 hex digits naming this spec: the mark on this run's temporary files."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def tmp_name(self, name: str) -> str:
        return f"{TMP}{self.run_id}-{name}"


_SPEC_TYPES = {"model_name": str, "model_sha256": str, "seed": int, "count": int, "labels": str,
               "truncation": (int, float), "format": str, "shard_size": int, "precision": str, "provider": str,
               "graph_sha256": str}


def spec_problem(spec: SampleSpec) -> str | None:
    """Why ``spec`` cannot be a sampler run (field types, ranges, shard count), or None."""
    for name, kind in _SPEC_TYPES.items():
        value = getattr(spec, name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{name} {value!r} is not {'a number' if name == 'truncation' else kind.__name__}"
    if spec.count < 1 or spec.shard_size < 1:
        return "count and shard_size must be >= 1"
    if spec.format not in FORMATS:
        return f"format {spec.format!r} is not one of {', '.join(FORMATS)}"
    if spec.num_shards > MAX_SHARDS:
        return f"{spec.num_shards:,} shards (count / shard_size) is more than {MAX_SHARDS:,}"
    return None


def engine_graph(model: ModelDir, engine) -> dict[str, str]:
    """The spec fields naming the graph an engine runs: its precision, provider and the graph file's sha256."""
    return {"precision": engine.precision, "provider": engine.provider,
            "graph_sha256": model.files[engine.model_file]["sha256"]}


def shard_name(spec: SampleSpec, k: int) -> str:
    return {"png-tar": f"shard-{k:05d}.tar", "npy": f"shard-{k:05d}.npy", "png": f"png/{k:05d}"}[spec.format]


def shard_files(spec: SampleSpec, k: int) -> tuple[str, ...]:
    """The file names a shard of a tar or npy run may list (npy: the labels file for conditional models)."""
    name = shard_name(spec, k)
    return (name, name.replace(".npy", ".labels.npy")) if spec.format == "npy" else (name,)


def _sha256_bytes(*blobs: bytes) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------- labels and rows

def resolve_labels(model: ModelDir, labels: str) -> str:
    """Validate --labels against the model: random | balanced | a class id or name (-> its id)."""
    if labels in ("random", "balanced"):
        if labels == "balanced" and not model.num_classes:
            raise SampleError(f"--labels balanced: model {model.name!r} is unconditional")
        return labels
    if not model.num_classes:
        raise SampleError(f"--labels {labels}: model {model.name!r} is unconditional (use random)")
    try:
        return str(model.label_index(labels))
    except ValueError as exc:
        raise SampleError(f"--labels: {exc}") from exc


def labels_for(spec: SampleSpec, model: ModelDir, start: int, stop: int) -> np.ndarray:
    """Class ids [stop - start] of indices start..stop-1 (RANDOM_LABEL rows get the service's random class)."""
    n = stop - start
    if not model.num_classes:
        return np.full(n, RANDOM_LABEL, np.int64)
    if spec.labels == "random":
        return random_labels(spec.seed, start, n, model.latent_dim, model.num_classes)
    if spec.labels == "balanced":
        return np.arange(start, stop, dtype=np.int64) % model.num_classes
    return np.full(n, int(spec.labels), np.int64)


# ---------------------------------------------------------------- encoding (runs in worker processes)

def encode_shard(fmt: str, images: np.ndarray, labels: np.ndarray, start: int, conditional: bool) -> dict[str, bytes]:
    """A shard's files as {relative name: bytes}; pure, so any worker gives the same bytes."""
    if fmt == "npy":
        files = {"images": encode_npy(images)}
        if conditional:
            files["labels"] = encode_npy(labels)
        return files
    names = [f"{start + i:09d}" + (f"_c{labels[i]}" if conditional else "") + ".png" for i in range(len(images))]
    pngs = {name: encode_image(img, "png") for name, img in zip(names, images)}
    if fmt == "png":
        return pngs
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in pngs.items():
            info = tarfile.TarInfo(name)          # fixed metadata: the archive depends only on the images
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return {"tar": buf.getvalue()}


# ---------------------------------------------------------------- writing (atomic, fsynced)

def write_shard(out: Path, spec: SampleSpec, k: int, files: dict[str, bytes]) -> dict:
    """Write shard k under this run's temporary name, fsync, rename; return its index entry."""
    final = out / shard_name(spec, k)
    if spec.format == "png":
        return _write_png_shard(out, spec, final, files)
    entries = {}
    parts = [("", "tar")] if spec.format == "png-tar" else [("", "images")] + ([(".labels", "labels")] if "labels" in files else [])
    for suffix, key in parts:
        path = final.with_name(final.stem + suffix + final.suffix)
        atomic_write(path, files[key], tmp=path.with_name(spec.tmp_name(path.name)))
        entries[path.name] = hashlib.sha256(files[key]).hexdigest()
    return {"name": final.name, "sha256": entries[final.name], "files": entries}


def _write_png_shard(out: Path, spec: SampleSpec, final: Path, files: dict[str, bytes]) -> dict:
    """A png shard: its files in a temporary folder, published (every file and the folder fsynced) onto ``final``."""
    tmp = final.with_name(spec.tmp_name(final.name))
    if final.exists():                 # an unlisted shard of this run (killed before the index listed it)
        if not final.is_dir() or final.is_symlink() or any(p.name not in files or not p.is_file() for p in final.iterdir()):
            raise SampleError(f"--out {out}: {final} holds files this run did not write; refusing to replace it")
        shutil.rmtree(final)           # only this shard's own names: the same bytes are written again
    try:
        tmp.mkdir()
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    digest = _sha256_bytes(*(name.encode() + hashlib.sha256(files[name]).digest() for name in sorted(files)))
    return {"name": final.relative_to(out).as_posix(), "sha256": digest, "files": len(files)}


def dir_digest(path: Path) -> str:
    """The sha256 recorded for a png shard folder: over sorted (name, sha256(file)) pairs."""
    return _sha256_bytes(*(p.name.encode() + hashlib.sha256(p.read_bytes()).digest() for p in sorted(path.iterdir())))


def make_dirs(path: Path) -> None:
    """mkdir -p, each directory it creates fsynced into its parent."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in reversed(missing):
        fsync_dir(p.parent)


# ---------------------------------------------------------------- index.json

class Index:
    """index.json of one run: the spec and every finished shard with its range and sha256, rewritten atomically.

    Each entry is serialised once, when its shard is added. A rewrite costs time in proportion to the entries
    listed, so after a shard is added the file is rewritten only when at least REWRITE_FACTOR times the last
    rewrite's duration has passed since it: upkeep stays near 1/REWRITE_FACTOR of the run at most, however many
    shards there are, and with small indexes that is after every shard. A shard not yet listed when the run dies
    is regenerated, to the same bytes, on resume. ``flush`` writes now (the end of a run)."""

    def __init__(self, out: Path, spec: SampleSpec, done: dict[int, dict], clock=time.monotonic):
        self.path, self.spec, self.clock = Path(out) / INDEX, spec, clock
        self.done = dict(done)
        self._lines = {k: self._line(k, entry) for k, entry in self.done.items()}
        self._due, self._dirty = float("-inf"), True
        self.writes, self.seconds = 0, 0.0

    def _line(self, k: int, entry: dict) -> str:
        start, stop = self.spec.shard_range(k)
        return json.dumps({"shard": k, "start": start, "stop": stop, **entry})

    def add(self, k: int, entry: dict) -> None:
        """Record finished shard k (written and fsynced); rewrite the file when a rewrite is due."""
        self.done[k], self._lines[k], self._dirty = entry, self._line(k, entry), True
        if self.clock() >= self._due:
            self.flush()

    def flush(self) -> None:
        """Rewrite index.json now, when anything changed since the last rewrite."""
        if not self._dirty:
            return
        t0 = self.clock()
        atomic_write(self.path, self.text(), tmp=self.path.with_name(self.spec.tmp_name(INDEX)))
        t1 = self.clock()
        self._due, self._dirty = t1 + REWRITE_FACTOR * (t1 - t0), False
        self.writes, self.seconds = self.writes + 1, self.seconds + (t1 - t0)

    def text(self) -> str:
        head = json.dumps({"version": INDEX_VERSION, **asdict(self.spec),
                           "complete": len(self.done) == self.spec.num_shards}, indent=1)
        entries = ",\n  ".join(self._lines[k] for k in sorted(self._lines))
        return head[:-2] + ',\n "shards": [' + (f"\n  {entries}\n ]" if entries else "]") + "\n}\n"


def read_index(out: Path) -> tuple[SampleSpec, dict[int, dict]]:
    """(spec, {shard: entry}) of ``out/index.json``; any damage or malformed entry is one SampleError naming the file."""
    path = Path(out) / INDEX
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SampleError(f"{path}: damaged index ({type(exc).__name__}: {exc})") from None
    if isinstance(doc, dict) and doc.get("version") == 1:    # every version-1 run ran generator.onnx on the CPU
        doc = {"precision": "fp32", "provider": CPU, "graph_sha256": doc.get("model_sha256"), **doc}
    if not isinstance(doc, dict) or any(f.name not in doc for f in fields(SampleSpec)):
        raise SampleError(f"{path}: damaged index (not an object with the fields {', '.join(_SPEC_TYPES)})")
    spec = SampleSpec(**{f.name: doc[f.name] for f in fields(SampleSpec)})
    why = spec_problem(spec) or (None if isinstance(doc.get("shards"), list) else "'shards' is not a list")
    if why:
        raise SampleError(f"{path}: damaged index ({why})")
    spec.truncation = float(spec.truncation)
    done: dict[int, dict] = {}
    for i, item in enumerate(doc["shards"]):
        k, why = _entry_problem(spec, item)
        if why is None and k in done:
            why = f"shard {k} is listed twice"
        if why:
            raise SampleError(f"{path}: damaged index (entry {i}: {why}); refusing to use it")
        done[k] = {key: v for key, v in item.items() if key not in ("shard", "start", "stop")}
    return spec, done


def _entry_problem(spec: SampleSpec, item) -> tuple[int | None, str | None]:
    """(shard number, why the index entry is malformed or None): its number, range, name, sha256 and files."""
    if not isinstance(item, dict):
        return None, "not an object"
    k = item.get("shard")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < spec.num_shards:
        return None, f"shard {k!r} is not a shard number 0..{spec.num_shards - 1}"
    if (item.get("start"), item.get("stop")) != spec.shard_range(k):
        return k, f"shard {k}: start/stop are not {spec.shard_range(k)}"
    why = _name_problem(item.get("name"), shard_name(spec, k))
    if why is None and not isinstance(item.get("sha256"), str):
        why = "sha256 is not a string"
    files = item.get("files")
    if why is None and spec.format == "png":
        why = None if isinstance(files, int) and not isinstance(files, bool) else "files is not a count"
    elif why is None:
        why = _files_problem(spec, k, files)
    return k, None if why is None else f"shard {k}: {why}"


def _files_problem(spec: SampleSpec, k: int, files) -> str | None:
    """Why the ``files`` of a tar or npy shard entry are malformed: {name: sha256} of this shard's own names only."""
    main = shard_name(spec, k)
    if not isinstance(files, dict) or main not in files:
        return f"files is not an object listing {main!r}"
    for name, digest in files.items():
        if name not in shard_files(spec, k):
            return _name_problem(name, main)
        if not isinstance(digest, str):
            return f"the sha256 of {name!r} is not a string"
    return None


def _name_problem(name, expected: str) -> str | None:
    """Why a file name from an index is refused: not a string, absolute, with '..', or not the expected name."""
    if not isinstance(name, str):
        return f"name {name!r} is not a string"
    if name != expected:
        parts = PurePosixPath(name).parts
        what = "is absolute" if name.startswith(("/", "\\")) else "has '..'" if ".." in parts else f"is not {expected!r}"
        return f"name {name!r} {what}; refusing to read it"
    return None


# ---------------------------------------------------------------- claiming the output directory

class Output:
    """The output directory of one run, claimed: locked against a second run, checked to be empty or this spec's
    own, cleared of this run's temporaries. ``record`` writes a shard and lists it; leaving the ``with`` block
    writes the index a last time and releases the lock."""

    def __init__(self, out: Path, spec: SampleSpec, index: Index, lock_fd: int):
        self.out, self.spec, self.index, self.lock_fd = out, spec, index, lock_fd

    @property
    def done(self) -> dict[int, dict]:
        return self.index.done

    def record(self, k: int, files: dict[str, bytes]) -> None:
        self.index.add(k, write_shard(self.out, self.spec, k, files))

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.index.flush()            # every recorded shard is written and fsynced: safe to list
        except OSError:
            if exc_type is None:
                raise                     # else the error already on its way says what went wrong
        finally:
            os.close(self.lock_fd)


def open_output(out: Path, spec: SampleSpec) -> Output:
    """Claim ``out`` for ``spec``: refuse (touching nothing) a directory holding anything but this run's files or
    one another run is writing; create it, lock it, write the first index, delete this run's leftover temporaries."""
    out = Path(out)
    _finished_shards(out, spec)                 # refuse before creating anything (no lock file in a stranger's dir)
    make_dirs(out)
    lock_fd = _lock(out)
    try:
        index = Index(out, spec, _finished_shards(out, spec))   # again under the lock: now nobody else writes here
        index.flush()                           # before any shard: from now on the index proves the dir is ours
        _delete_temporaries(out, spec)
        if spec.format == "png":
            make_dirs(out / "png")
    except BaseException:
        os.close(lock_fd)
        raise
    return Output(out, spec, index, lock_fd)


def _finished_shards(out: Path, spec: SampleSpec) -> dict[int, dict]:
    """The finished shards ``out`` holds for ``spec``; SampleError when it holds anything else."""
    if not out.exists():
        return {}
    if not out.is_dir():
        raise SampleError(f"--out {out}: not a directory")
    if not (out / INDEX).exists():
        strangers = [p.name for p in out.iterdir() if p.name != LOCK and not p.name.startswith(spec.tmp_name(""))]
        if strangers:
            raise SampleError(f"--out {out}: not empty and has no {INDEX}; refusing to write into it")
        return {}
    previous, done = read_index(out)
    if previous != spec:
        diff = [f"{f.name}: {getattr(previous, f.name)} here, {getattr(spec, f.name)} asked" for f in fields(SampleSpec)
                if getattr(previous, f.name) != getattr(spec, f.name)]
        graph = "; a run's graph can be pinned with --precision and --provider" if any(
            getattr(previous, k) != getattr(spec, k) for k in ("precision", "provider", "graph_sha256")) else ""
        raise SampleError(f"--out {out}: holds shards of another run ({', '.join(diff)}); "
                          f"nothing was overwritten: choose another --out{graph}")
    return done


def _lock(out: Path) -> int:
    """An exclusive flock on out/LOCK (released when the fd closes, or the process dies); SampleError when held."""
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SampleError(f"--out {out}: another gan sample is writing into it (it holds {LOCK}); wait for it to "
                          "finish or choose another --out") from None
    return fd


def drop_inherited_lock(lock_fd: int) -> None:
    """Run first in a forked worker: close its copy of the parent's lock, so that a worker outliving a killed run
    (an orphaned pool process) does not keep the directory locked."""
    os.close(lock_fd)


def _delete_temporaries(out: Path, spec: SampleSpec) -> None:
    """Delete this run's temporaries (partial writes of a killed run of the same spec) in ``out`` and ``out/png``."""
    for folder in (out, out / "png"):
        if folder.is_dir() and not folder.is_symlink():
            for leftover in folder.glob(spec.tmp_name("") + "*"):
                shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()


# ---------------------------------------------------------------- the sampling loop

@dataclass
class SampleOptions:
    batch: int = 1024            # rows per engine call
    workers: int = 0             # encoding processes (0 = one per available core)
    threads: int = 0             # onnxruntime intra-op threads (0 = every available core)
    provider: str = "auto"       # onnxruntime provider: auto | cuda | cpu
    precision: str = "auto"      # which graph runs: auto | fp32 | fp16 | int8 (as the service's setting)
    engine: str = "local"        # local | ray
    progress: bool = True        # progress bar on stderr


def make_runtime(model_ref: str, options: SampleOptions) -> ModelRuntime:
    """The service's runtime for one model, unpadded (shapes are few: the batch size and one remainder), with
    ``options.threads`` engine threads (0: every core this process may use)."""
    settings = ServeSettings(models=[model_ref], provider=options.provider, precision=options.precision,
                             max_batch_size=options.batch, max_n=1, pad_to_buckets=False,
                             engine_threads=options.threads or available_cores())
    try:                      # a model that cannot load is one error here, not a runtime log line and an error
        model = load_model_dir(settings.resolve_model(model_ref))
    except ModelDirError as exc:
        raise SampleError(f"model {exc}") from None          # exc names the directory or tag already
    try:
        return ModelRuntime(settings, warmup=False, loaded=[model])
    except EngineError as exc:                                # e.g. --precision int8 on a model without that graph
        raise SampleError(f"--precision {options.precision} / --provider {options.provider}: {exc}") from None
    except ModelDirError as exc:                              # the graph does not match its manifest, or changed
        raise SampleError(f"model {exc}") from None


def render_shard(runtime: ModelRuntime, spec: SampleSpec, start: int, stop: int, batch: int):
    """Images uint8 [n, H, W, C] and labels [n] of indices start..stop-1, batch rows per engine call."""
    model = runtime.models[0]
    labels = labels_for(spec, model, start, stop)
    h, w, c = model.image_shape
    parts = []
    for s in range(start, stop, batch):
        e = min(s + batch, stop)
        rows = make_rows(0, spec.seed, np.arange(s, e), labels[s - start:e - start], spec.truncation)
        parts.append(runtime.render(rows)[:, : h * w * c].reshape(e - s, h, w, c))
    return np.concatenate(parts), labels
