"""Service at three levels: pure pieces, the runtime in-process, and a real `bentoml serve` over HTTP."""
from __future__ import annotations

import concurrent.futures as cf
import io
import json
import re
import shutil
import time
import zipfile

import httpx
import numpy as np
import pytest
from PIL import Image

from gan_service.serving.codecs import encode_batch, encode_gif
from gan_service.serving.latents import MAX_INDEX, MAX_SEED, latents, random_labels, truncation_bound
from gan_service.serving.runtime import RANDOM_LABEL, BatchStats, ModelRuntime, _runs, make_rows, slerp
from gan_service.serving.settings import ServeSettings, load_settings

# ---------------------------------------------------------------- pure functions


def test_latents_are_a_pure_function_of_seed_and_index():
    whole = latents(7, 0, 100, 33)
    assert whole.shape == (100, 33) and whole.dtype == np.float32
    assert np.array_equal(whole[40:50], latents(7, 40, 10, 33))        # any sub-range, same numbers
    assert np.array_equal(whole[99], latents(7, 99, 1, 33)[0])
    assert not np.array_equal(latents(8, 0, 1, 33), whole[:1])          # seeds differ
    big = latents(MAX_SEED, 10**12, 20000, 64)
    assert abs(big.mean()) < 0.01 and abs(big.std() - 1) < 0.01         # standard normal
    labels = random_labels(7, 0, 5000, 33, 10)
    assert np.array_equal(labels[100:110], random_labels(7, 100, 10, 33, 10))
    assert set(np.unique(labels)) == set(range(10)) and np.bincount(labels).min() > 400
    with pytest.raises(ValueError, match="seed"):
        latents(-1, 0, 1, 4)


@pytest.mark.parametrize("seed,start,count,dim", [(0, 0, 3, 16), (7, 40, 10, 33), (2**40 + 3, 10**15, 4, 100),
                                                  (MAX_SEED, MAX_INDEX - 5, 6, 64)])
def test_latents_are_the_words_numpys_philox_gives_for_the_key_and_counter(seed, start, count, dim):
    """The served contract, pinned to numpy's own Philox built per span (how images were made so far): the reused
    generator put in that state gives the same words, near the top of the index range too (counter past 2**64)."""
    from gan_service.serving.latents import _raw_words, _words_per_index, latents_and_labels_of_spans

    words = _words_per_index(dim)
    reference = np.random.Philox(key=seed)
    reference.advance(start * (words // 4))
    expected = reference.random_raw(count * words).reshape(count, words)
    assert np.array_equal(_raw_words(seed, start, count, words), expected)
    z, labels = latents_and_labels_of_spans([(seed, start, count, 0.7), (5, 2, 3, 1.0)], dim, 10)
    assert np.array_equal(z, np.concatenate([latents(seed, start, count, dim, 0.7), latents(5, 2, 3, dim)]))
    assert np.array_equal(labels, np.concatenate([random_labels(seed, start, count, dim, 10),
                                                  random_labels(5, 2, 3, dim, 10)]))


def test_truncation_clips_to_central_mass():
    assert truncation_bound(1.0) == float("inf")
    assert truncation_bound(0.6827) == pytest.approx(1.0, abs=1e-3)    # one sigma holds 68.27%
    z = latents(3, 0, 1000, 16, truncation=0.5)
    assert np.abs(z).max() <= truncation_bound(0.5) + 1e-6
    untruncated = latents(3, 0, 1000, 16)
    inside = np.abs(untruncated) <= truncation_bound(0.5)
    assert np.array_equal(z[inside], untruncated[inside])                # only the tails move
    with pytest.raises(ValueError):
        truncation_bound(0.0)


def test_codecs_roundtrip():
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    png, media = encode_batch(images[:1], "png", False, ["a.png"])
    assert media == "image/png" and np.array_equal(np.asarray(Image.open(io.BytesIO(png)))[..., None], images[0])
    npy, _ = encode_batch(images, "npy", False, [])
    assert np.array_equal(np.load(io.BytesIO(npy)), images)
    zipped, _ = encode_batch(images, "zip", False, ["x-0.png", "x-1.png", "x-2.png"])
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        assert zf.namelist() == ["x-0.png", "x-1.png", "x-2.png"]
        assert np.array_equal(np.asarray(Image.open(zf.open("x-2.png")))[..., None], images[2])
    grid, _ = encode_batch(images, "webp", True, [])
    assert Image.open(io.BytesIO(grid)).format == "WEBP"
    assert encode_batch(images, "zip", False, ["x-0.png", "x-1.png", "x-2.png"])[0] == zipped   # reproducible
    with pytest.raises(ValueError, match="grid"):
        encode_batch(images, "png", False, [])
    gif = Image.open(io.BytesIO(encode_gif(images)))
    assert gif.format == "GIF" and gif.n_frames == 4                              # forward and back


def test_slerp_and_rows():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    path = slerp(a, b, np.linspace(0, 1, 5))
    assert np.allclose(path[0], a) and np.allclose(path[-1], b)
    unit = slerp(a, np.array([0.0, 1.0]), np.linspace(0, 1, 5))
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0)                       # stays on the circle
    assert np.allclose(unit[2], [np.sqrt(0.5), np.sqrt(0.5)])
    rows = np.concatenate([make_rows(0, 5, [0, 1, 2], [RANDOM_LABEL] * 3, 1.0),
                           make_rows(0, 5, [7, 8], [1, 1], 1.0), make_rows(0, 6, [9], [2], 0.5)])
    assert list(_runs(rows)) == [(0, 3), (3, 5), (5, 6)]
    assert rows[5, 4] == np.float64(0.5).view(np.int64)


def test_settings_env_and_arguments():
    s = load_settings({"max_n": 8}, {"GAN_MODELS": "a, b", "GAN_MAX_BATCH_SIZE": "32"})
    assert s.models == ["a", "b"] and s.max_batch_size == 32 and s.max_n == 8
    assert s.bucket_sizes() == [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="max_n must not exceed max_batch_size"):
        ServeSettings(max_n=64, max_batch_size=16)


def test_serve_listens_on_loopback_by_default_and_bentoml_has_the_safe_lower_bound():
    from packaging.requirements import Requirement
    from packaging.version import Version

    from gan_service.cli import build_parser

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    from importlib.metadata import requires, version   # the installed distribution's own metadata (wheel or checkout)

    reqs = [Requirement(r) for r in requires("gan-service")]
    for extra in ("serve", "gpu"):
        spec = next(r.specifier for r in reqs if r.name == "bentoml" and r.marker and r.marker.evaluate({"extra": extra}))
        assert Version("1.4.2") not in spec and Version(version("bentoml")) in spec, extra


# ---------------------------------------------------------------- the runtime in-process

@pytest.fixture(scope="module")
def runtime(tiny_models):
    return ModelRuntime(ServeSettings(models=[str(tiny_models["dc"]), str(tiny_models["cdc"])], max_batch_size=64,
                                      max_n=64))


def test_runtime_batch_composition_does_not_change_images(runtime):
    runtime.stats = BatchStats()                          # counted from here: other tests share this runtime
    alone = runtime.render(make_rows(0, 11, [5], [RANDOM_LABEL], 1.0))
    in_n = runtime.render(make_rows(0, 11, np.arange(20), [RANDOM_LABEL] * 20, 1.0))
    merged = runtime.render(np.concatenate([make_rows(1, 3, np.arange(7), [RANDOM_LABEL] * 7, 0.7),
                                            make_rows(0, 11, [5, 6], [RANDOM_LABEL] * 2, 1.0),
                                            make_rows(0, 99, np.arange(30), [RANDOM_LABEL] * 30, 1.0)]))
    assert np.array_equal(alone[0], in_n[5]) and np.array_equal(in_n[5], merged[7])
    assert np.array_equal(in_n[6], merged[8])
    assert runtime.stats.summary()["max_rows"] == 39


def test_runtime_labels_and_describe(runtime):
    fixed = runtime.render(make_rows(1, 4, np.arange(10), np.arange(10), 1.0))
    derived = random_labels(4, 0, 10, runtime.models[1].latent_dim, 10)
    explicit = runtime.render(make_rows(1, 4, np.arange(10), derived, 1.0))
    random = runtime.render(make_rows(1, 4, np.arange(10), [RANDOM_LABEL] * 10, 1.0))
    assert np.array_equal(random, explicit) and not np.array_equal(fixed, random)
    info = runtime.describe()
    assert info["ready"] and [m["name"] for m in info["models"]] == ["tiny-dc", "tiny-cdc"]
    assert info["models"][1]["class_names"][0] == "T-shirt/top" and info["models"][0]["provider"]
    frames = runtime.interpolate(0, [(1, 0), (2, 0)], 0, 5, 1.0)
    assert frames.shape == (5, 28, 28, 1)
    first = runtime.render(make_rows(0, 1, [0], [RANDOM_LABEL], 1.0)).reshape(28, 28, 1)
    assert np.array_equal(frames[0], first)


def test_runtime_runs_cpu_batches_unpadded(runtime, monkeypatch):
    engine, seen = runtime.engines[0], []
    run = engine.generate
    monkeypatch.setattr(engine, "generate", lambda z, labels=None: (seen.append(len(z)), run(z, labels))[1])
    runtime.render(make_rows(0, 1, np.arange(3), [RANDOM_LABEL] * 3, 1.0))
    assert engine.provider == "CPUExecutionProvider" and seen == [3]        # not padded to the bucket 4


def test_runtime_interpolates_more_frames_than_max_batch_size(tiny_models):
    small = ModelRuntime(ServeSettings(models=[str(tiny_models["dc"])], max_batch_size=4, max_n=4, max_steps=10),
                         warmup=False)
    frames = small.interpolate(0, [(1, 0), (2, 0)], 0, 10, 1.0)
    assert frames.shape == (10, 28, 28, 1)
    first = small.render(make_rows(0, 1, [0], [RANDOM_LABEL], 1.0)).reshape(28, 28, 1)
    assert np.array_equal(frames[0], first)


def test_runtime_not_ready_on_tampered_model(tiny_models, tmp_path):
    bad = shutil.copytree(tiny_models["dc"], tmp_path / "bad")
    data = bytearray((bad / "generator.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "generator.onnx").write_bytes(bytes(data))
    rt = ModelRuntime(ServeSettings(models=[str(bad)]))
    assert not rt.ready and "generator.onnx" in rt.errors[str(bad)]


# ---------------------------------------------------------------- the real server over HTTP

def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def test_http_every_format(server):
    for fmt, media in (("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")):
        r = post(server, "/generate", {"n": 4, "seed": 1, "format": fmt, "grid": True})
        assert r.status_code == 200 and r.headers["content-type"] == media and r.headers["x-seed"] == "1"
        assert Image.open(io.BytesIO(r.content)).size == (2 * 30 + 2, 2 * 30 + 2)
    r = post(server, "/generate", {"n": 3, "seed": 2, "format": "npy"})
    images = np.load(io.BytesIO(r.content))
    assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8
    r = post(server, "/generate", {"n": 3, "seed": 2, "format": "zip"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.namelist() == [f"tiny-dc-2-{i}.png" for i in range(3)]
        assert np.array_equal(np.asarray(Image.open(zf.open("tiny-dc-2-1.png")))[..., None], images[1])
    r = post(server, "/generate", {})
    assert r.status_code == 200 and 0 <= int(r.headers["x-seed"]) <= MAX_SEED       # random seed, reported


def test_http_conditional_labels_and_truncation(server):
    r = post(server, "/generate", {"model": "tiny-cdc", "n": 3, "seed": 9, "labels": ["Bag", 0, "sneaker"],
                                   "format": "npy"})
    assert r.status_code == 200 and r.headers["x-labels"] == "8,0,7"
    r2 = post(server, "/generate", {"model": "tiny-cdc", "n": 3, "seed": 9, "format": "npy"})
    assert r2.headers["x-labels"] == ",".join(map(str, random_labels(9, 0, 3, 16, 10)))
    t = post(server, "/generate", {"n": 2, "seed": 9, "format": "npy", "truncation": 0.3})
    assert t.status_code == 200 and t.content != post(server, "/generate", {"n": 2, "seed": 9, "format": "npy"}).content


def test_http_interpolate_and_info(server):
    r = post(server, "/interpolate", {"seeds": [1, 2], "steps": 6})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).n_frames == 10
    r = post(server, "/interpolate", {"seeds": [1, 2], "steps": 6, "format": "png", "model": "tiny-cdc",
                                      "label": "Coat"})
    assert Image.open(io.BytesIO(r.content)).size == (6 * 30 + 2, 32)
    info = httpx.get(server.url + "/info").json()
    assert [m["name"] for m in info["models"]] == ["tiny-dc", "tiny-cdc"]
    assert info["models"][0]["provider"] == "CPUExecutionProvider" and info["models"][0]["manifest"]["opset"]
    # one start-up line each, naming provider, precision and why the CPU (no CUDA provider in this onnxruntime)
    assert "model tiny-dc runs on CPUExecutionProvider, precision fp32 (generator.onnx); on the CPU because" \
        in server.log()
    assert info["batching"]["max_batch_size"] == 256 and info["limits"]["max_n"] == 64
    for path in ("/livez", "/readyz"):
        assert httpx.get(server.url + path).status_code == 200
    page = httpx.get(server.url + "/ui")
    assert page.status_code == 200 and "<title>GAN image service</title>" in page.text


def test_bentoml_python_client(server):
    import bentoml

    with bentoml.SyncHTTPClient(server.url) as client:
        images = np.load(io.BytesIO(client.generate(n=5, seed=21, format="npy")))
        png = client.generate(model="tiny-cdc", n=10, labels="Bag", grid=True)
    direct = post(server, "/generate", {"n": 5, "seed": 21, "format": "npy"}).content
    assert np.array_equal(images, np.load(io.BytesIO(direct))) and png[:8] == b"\x89PNG\r\n\x1a\n"


BAD_REQUESTS = [
    ({"n": 0}, "n", 400), ({"n": 65}, "n", 400), ({"n": "3"}, "n", 400), ({"n": 2.5}, "n", 400),
    ({"seed": -1}, "seed", 400), ({"seed": 2**63}, "seed", 400), ({"seed": "x"}, "seed", 400),
    ({"format": "bmp"}, "format", 400), ({"model": "nope"}, "model", 404), ({"model": 3}, "model", 400),
    ({"labels": [1]}, "labels", 400), ({"model": "tiny-cdc", "labels": "Hat"}, "labels", 400),
    ({"model": "tiny-cdc", "labels": 10}, "labels", 400), ({"model": "tiny-cdc", "n": 3, "labels": [1, 2], "format": "npy"}, "labels", 400),
    ({"model": "tiny-dc", "labels": "3"}, "labels", 400), ({"truncation": 0}, "truncation", 400), ({"truncation": 1.01}, "truncation", 400), ({"truncation": "a"}, "truncation", 400),
    ({"n": 2}, "grid", 400), ({"grid": "yes"}, "grid", 400), ({"bogus": 1}, "bogus", 400),
]


@pytest.mark.parametrize("body, field, status", BAD_REQUESTS)
def test_http_bad_input_names_the_field(server, body, field, status):
    r = post(server, "/generate", body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field, r.text


INTERPOLATE_BAD = [({}, "seeds"), ({"seeds": [1]}, "seeds"), ({"seeds": [1, 2], "indices": [10**30, 0]}, "indices"),
                   ({"seeds": [1, 2], "indices": [2**63, 0]}, "indices"), ({"seeds": [1, 2], "indices": [1]}, "indices"),
                   ({"seeds": [1, 2], "steps": 65}, "steps"), ({"seeds": [1, 2], "truncation": 0}, "truncation")]


@pytest.mark.parametrize("body, field", INTERPOLATE_BAD)
def test_http_interpolate_bad_input_names_the_field(server, body, field):
    r = post(server, "/interpolate", body)
    assert r.status_code == 400 and r.json()["field"].split(".")[0] == field, r.text


def test_http_label_given_as_a_decimal_string_is_that_class(server):
    """One label resolver (ModelDir.label_index) for the service and the sampler: "3" is class 3."""
    as_text = post(server, "/generate", {"model": "tiny-cdc", "n": 2, "seed": 4, "labels": "3", "format": "npy"})
    as_int = post(server, "/generate", {"model": "tiny-cdc", "n": 2, "seed": 4, "labels": 3, "format": "npy"})
    assert as_text.status_code == 200 and as_text.headers["x-labels"] == "3,3" and as_text.content == as_int.content


def test_http_duplicate_content_type_and_deep_json_are_400_json(server):
    headers = [("content-type", "text/plain"), ("content-type", "application/json")]
    r = httpx.post(server.url + "/generate", content=b'{"n": 1}', headers=headers)
    assert r.status_code == 400 and r.json()["field"] == "content-type"
    deep = b'{"labels": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    r = httpx.post(server.url + "/generate", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json" and r.json()["field"] == "body"
    r = httpx.post(server.url + "/generate", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"          # empty body: all defaults
    assert post(server, "/generate", {"n": 1, "seed": 1}).status_code == 200


def test_http_info_shows_no_server_paths_or_host(server, tiny_models):
    text = httpx.get(server.url + "/info").text
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    for secret in (str(tiny_models["dc"].parent), "/tmp", "/work", "checkpoint", "logical CPUs", cpu or "@@"):
        assert secret not in text, secret


def test_http_worker_settles_its_garbage_collector_after_start_up(server):
    """The worker freezes its start-up objects and collects the young generation less often (docs/serving.md,
    "Performance"): requests in flight survive young collections, and CPython's default threshold (700) cost an n=1
    request ~0.25 ms of the event loop. The start-up line says what was done, with the numbers."""
    deadline = time.monotonic() + 15
    while "garbage collector" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    line = next((x for x in server.log().splitlines() if "garbage collector" in x), "")
    frozen = re.search(r"froze (\d+) start-up objects; young generation collected every (\d+) allocations", line)
    assert frozen and int(frozen[1]) > 10_000 and int(frozen[2]) == 20_000, line


def test_http_client_error_is_one_log_line(server):
    before = len(server.log().splitlines())
    assert post(server, "/generate", {"n": 0}).status_code == 400
    assert httpx.post(server.url + "/generate", content=b"{not json",
                      headers={"content-type": "application/json"}).status_code == 400
    deadline = time.monotonic() + 15                  # the worker's log reaches the file a little later
    while True:
        new = server.log().splitlines()[before:]
        if sum("client error" in line for line in new) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "Traceback" not in "\n".join(new) and not any("ERROR" in line for line in new), new
    assert sum("client error" in line for line in new) == 2, new      # one line per rejected request


def test_http_no_page_loads_anything_from_outside(server):
    import re

    r = httpx.get(server.url + "/", follow_redirects=True)
    assert r.status_code == 200 and str(r.url).endswith("/ui")
    # FastAPI's /docs and /redoc would load Swagger UI / ReDoc from a CDN: they stay switched off.
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 404, path
    for page in (r.text, httpx.get(server.url + "/ui").text):
        assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page, re.I)
        assert "googletagmanager" not in page


def test_bentoml_usage_tracking_is_off_by_default():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "BENTOML_DO_NOT_TRACK"}
    out = subprocess.run([sys.executable, "-c", "import gan_service.serving.app, os; print(os.environ['BENTOML_DO_NOT_TRACK'])"],
                         env=env, capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.stdout.strip() == "true", out.stderr[-2000:]


def test_http_bad_transport(server):
    r = httpx.post(server.url + "/generate", content=b"n=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["field"] == "content-type"
    r = httpx.post(server.url + "/generate", content=b"{" + b" " * 70000 + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = httpx.post(server.url + "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert post(server, "/generate", {"n": 1, "seed": 1}).status_code == 200         # still serving


def test_http_determinism_under_concurrent_load(tiny_models, slow_server):
    """Byte-identical images whether asked alone, in n, or merged with other clients' requests."""
    server = slow_server({"GAN_MODELS": f"{tiny_models['dc']},{tiny_models['cdc']}", "GAN_MAX_LATENCY_MS": "60000"})
    serial = {s: post(server, "/generate", {"n": 8, "seed": s, "format": "npy"}).content for s in range(6)}
    singles = {(s, i): np.load(io.BytesIO(post(server, "/generate", {"n": 1, "seed": s, "format": "npy"}).content))
               for s, i in [(0, 0), (3, 0)]}
    jobs = [(s, rep) for s in range(6) for rep in range(8)]                     # 48 concurrent clients
    server.delay = 1.0                  # while one engine call sleeps, the other clients' requests queue and merge
    with cf.ThreadPoolExecutor(48) as pool:
        results = list(pool.map(lambda job: (job[0], post(server, "/generate",
                                                           {"n": 8, "seed": job[0], "format": "npy"})), jobs))
    codes = [r.status_code for _, r in results]
    assert codes == [200] * len(jobs), codes
    for seed, r in results:
        assert r.content == serial[seed]
    for (s, i), image in singles.items():
        assert np.array_equal(np.load(io.BytesIO(serial[s]))[i], image[0])
    after = httpx.get(server.url + "/info").json()["batching"]["observed"]
    assert after["max_rows"] > 8, after          # the batcher merged requests of 8 rows into bigger calls
    metrics = httpx.get(server.url + "/metrics").text
    assert "gan_images_generated" in metrics


def test_http_not_ready_on_tampered_model(tiny_models, start_server, tmp_path):
    bad = shutil.copytree(tiny_models["cdc"], tmp_path / "tampered")
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "samples.png").write_bytes(b"not the image the manifest promised")
    srv = start_server({"GAN_MODELS": str(bad)}, ready=False)
    srv.wait("/livez", 200)
    srv.wait("/readyz", 503, timeout=60)
    r = post(srv, "/generate", {"n": 1})
    assert r.status_code == 503 and r.json()["field"] == "model" and "samples.png" in r.json()["error"]
    assert "{'" not in r.json()["error"] and r.headers["content-type"] == "application/json"
    assert "samples.png" in srv.log() and manifest["name"] == "tiny-cdc"


# ---------------------------------------------------------------- robustness: inputs that once answered 500

def test_truncation_just_below_one_has_a_finite_bound():
    """0.5 + psi / 2 rounds to 1.0 for psi = 1 - 2**-53: the bound comes from the other tail instead."""
    from statistics import NormalDist

    for psi in (0.9999999999999999, 1 - 2**-52, 1 - 2**-50):
        assert np.isfinite(truncation_bound(psi)) and truncation_bound(psi) > 7, psi
        assert np.isfinite(latents(3, 0, 50, 16, truncation=psi)).all()
    assert truncation_bound(1 - 2**-52) >= truncation_bound(1 - 2**-50) >= truncation_bound(0.999999)
    for psi in (1e-300, 0.3, 0.5, 0.6827, 0.99, 0.999999):      # where the old formula worked: the same bound
        assert truncation_bound(psi) == NormalDist().inv_cdf(0.5 + psi / 2.0), psi


@pytest.mark.parametrize("label", ["--1", "-", "²", "1²", "٣", "9" * 5000, "+-3", "- 1", "0x3", ""])
def test_label_strings_that_are_not_decimal_ids_are_label_errors(tiny_models, label):
    from gan_service.serving.modeldir import LabelError, load_model_dir

    model = load_model_dir(tiny_models["cdc"])
    with pytest.raises(LabelError):
        model.label_index(label)
    assert model.label_index(" 3 ") == 3 and model.label_index("-0") == 0


def _copy_with_manifest(src, dst, **changes):
    """A copy of a model directory with manifest keys changed (the manifest is not in its own file list)."""
    out = shutil.copytree(src, dst)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(changes)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("name", ["модель", "tiny\u2028dc", "../../etc/x", "a/b", ".hidden", "-dash", "", "x" * 200,
                                  "tiny dc", "tiny\r\nX-Evil: 1"])
def test_manifest_name_must_be_a_safe_token(tiny_models, tmp_path, name):
    from gan_service.serving.modeldir import ModelDirError, load_model_dir

    bad = _copy_with_manifest(tiny_models["dc"], tmp_path / "bad", name=name)
    with pytest.raises(ModelDirError, match="'name'"):
        load_model_dir(bad)
    rt = ModelRuntime(ServeSettings(models=[str(bad)]), warmup=False)
    assert not rt.ready and "'name'" in rt.errors[str(bad)]


def _inputs(latent_dim, conditional):
    z = [{"name": "z", "dtype": "float32", "shape": ["batch", latent_dim]}]
    return z + ([{"name": "label", "dtype": "int64", "shape": ["batch"]}] if conditional else [])


@pytest.mark.parametrize("key, changes, words", [
    ("dc", {"latent_dim": 17, "inputs": _inputs(17, False)}, "latent_dim"),
    ("dc", {"image_shape": [32, 32, 1]}, "image_shape"),
    ("dc", {"image_shape": [28, 28, 3]}, "image_shape"),
    ("cdc", {"num_classes": 0, "class_names": [], "inputs": _inputs(16, False)}, "label"),
    ("dc", {"num_classes": 10, "class_names": [], "inputs": _inputs(16, True)}, "label"),
])
def test_a_manifest_that_does_not_describe_the_graph_keeps_the_model_not_ready(tiny_models, tmp_path, key, changes,
                                                                                words):
    bad = _copy_with_manifest(tiny_models[key], tmp_path / "bad", **changes)
    rt = ModelRuntime(ServeSettings(models=[str(bad), str(tiny_models["dc"])]))     # the good one still loads
    assert not rt.ready and words in rt.errors[str(bad)], rt.errors
    assert [m.name for m in rt.models] == ["tiny-dc"]


def test_the_engine_runs_the_bytes_it_verified(tiny_models, tmp_path):
    """A generator.onnx swapped after the directory was verified is refused, not run."""
    from gan_service.serving.modeldir import ModelDirError, load_model_dir

    model = load_model_dir(shutil.copytree(tiny_models["dc"], tmp_path / "dc"))
    (model.path / "generator.onnx").write_bytes((tiny_models["cdc"] / "generator.onnx").read_bytes())
    with pytest.raises(ModelDirError, match="generator.onnx"):
        ModelRuntime(ServeSettings(models=[str(model.path)]), warmup=False, loaded=[model])


def test_one_bad_request_in_a_merged_call_fails_alone(runtime):
    """Latents are prepared for the merged call, request by request when that fails: a request whose rows cannot be
    prepared does not fail the others."""
    good = make_rows(0, 11, np.arange(3), [RANDOM_LABEL] * 3, 1.0)
    bad = make_rows(0, 12, np.arange(2), [RANDOM_LABEL] * 2, 2.0)               # truncation outside (0, 1]
    other = make_rows(1, 13, np.arange(2), [RANDOM_LABEL] * 2, 0.5)
    mixed = np.concatenate([make_rows(0, 14, [0], [RANDOM_LABEL], 1.0), make_rows(1, 14, [1], [RANDOM_LABEL], 1.0)])
    unknown = make_rows(7, 15, [0], [RANDOM_LABEL], 1.0)                     # no model 7
    late = make_rows(0, 16, np.arange(4), [RANDOM_LABEL] * 4, 0.7)
    outcomes = runtime.render_requests([good, bad, other, mixed, unknown, late])
    assert isinstance(outcomes[1], ValueError)
    assert [type(o).__name__ for o in outcomes[3:5]] == ["ValueError", "ValueError"]
    assert np.array_equal(outcomes[5].images, runtime.render_requests([late])[0].images)
    assert np.array_equal(outcomes[0].images, runtime.render_requests([good])[0].images)
    assert np.array_equal(outcomes[2].images, runtime.render_requests([other])[0].images)
    assert outcomes[2].images.shape == (2, 28, 28, 1)
    alone = runtime.render(good)[:, : 28 * 28].reshape(3, 28, 28, 1)
    assert np.array_equal(outcomes[0].images, alone)                   # the same bytes as the sampler's path
    assert outcomes[0].labels is None                                  # model 0 is unconditional
    assert outcomes[2].labels.tolist() == random_labels(13, 0, 2, runtime.models[1].latent_dim, 10).tolist()


def test_http_truncation_just_below_one_is_served(server):
    psi = 0.9999999999999999
    r = post(server, "/generate", {"n": 2, "seed": 5, "format": "npy", "truncation": psi})
    assert r.status_code == 200, r.text
    r = post(server, "/interpolate", {"seeds": [1, 2], "steps": 3, "truncation": psi})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("label", ["--1", "²", "9" * 5000])
def test_http_odd_label_strings_are_400(server, label):
    r = post(server, "/generate", {"model": "tiny-cdc", "labels": label})
    assert r.status_code == 400 and r.json()["field"] == "labels", r.text
    r = post(server, "/interpolate", {"model": "tiny-cdc", "seeds": [1, 2], "label": label})
    assert r.status_code == 400 and r.json()["field"] == "label", r.text


def test_http_content_type_that_is_not_utf8_is_415_at_once(server):
    for value in (b"\xff\xfe", b"application/\xe9", b"text/\xc3("):
        r = httpx.post(server.url + "/generate", content=b"{}", headers={"content-type": value}, timeout=10)
        assert r.status_code == 415 and r.json()["field"] == "content-type", r.text


def test_http_every_error_is_error_and_field_only(server):
    cases = [("/generate", {"n": 0}), ("/generate", {"seed": "x"}), ("/interpolate", {}), ("/generate", {"bogus": 1}),
             ("/generate", {"model": "nope"}), ("/interpolate", {"seeds": [1, 2], "indices": [1]})]
    for path, body in cases:
        r = post(server, path, body)
        assert 400 <= r.status_code < 500 and set(r.json()) == {"error", "field"}, (body, r.text)
    r = httpx.post(server.url + "/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"error", "field"} and r.json()["field"] == "body", r.text
    r = httpx.post(server.url + "/generate", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"error", "field"}, r.text


def test_http_interpolate_draws_the_class_like_generate(server):
    """No label on a conditional model: the class of image (seeds[0], indices[0]), said in X-Label."""
    for seeds, indices in (([9, 2], [0, 0]), ([4, 1], [3, 0])):
        r = post(server, "/interpolate", {"model": "tiny-cdc", "seeds": seeds, "indices": indices, "steps": 2,
                                          "format": "png"})
        drawn = int(random_labels(seeds[0], indices[0], 1, 16, 10)[0])
        assert r.status_code == 200 and r.headers["x-label"] == str(drawn), r.headers
        given = post(server, "/interpolate", {"model": "tiny-cdc", "seeds": seeds, "indices": indices, "steps": 2,
                                              "format": "png", "label": drawn})
        assert given.content == r.content and given.headers["x-label"] == str(drawn)
    r = post(server, "/interpolate", {"seeds": [1, 2], "steps": 2})
    assert r.status_code == 200 and "x-label" not in r.headers                 # unconditional: no class
