"""Self-conditioning (``--clusters``): k-means labels, the cluster prior, the generator that draws its cluster from
one extra latent, and a trained and exported self-conditioned model served as an unconditional one."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from gan_service.core.fmnist import FMNIST_DIR
from gan_service.serving.latents import latents
from gan_service.serving.modeldir import load_model_dir
from gan_service.training.checkpoint import load_checkpoint
from gan_service.training.clusters import cluster_labels, kmeans, label_prior, subclass_labels
from gan_service.training.config import make_config
from gan_service.training.data import load_data
from gan_service.training.export import export_model
from gan_service.training.loop import train
from gan_service.training.nets import ClusterDrawingGenerator

needs_fmnist = pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(), reason=f"Fashion-MNIST not installed at {FMNIST_DIR}")


def _blobs(sizes, dim=5, spread=0.05, seed=0):
    """Points [sum(sizes), dim] around well-separated centres, and which centre each came from."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (len(sizes), dim))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return centres[truth] + spread * rng.standard_normal((len(truth), dim)), truth


# ---------------------------------------------------------------- k-means

def test_kmeans_recovers_separated_blobs_numbered_by_size():
    x, truth = _blobs([50, 300, 120, 80])
    labels, centres = kmeans(x, 4, seed=3)
    assert labels.dtype == np.int64 and centres.shape == (4, 5)
    # every blob is one cluster, and clusters are numbered largest first: blob sizes 300, 120, 80, 50
    assert [int(np.unique(labels[truth == b]).item()) for b in range(4)] == [3, 0, 1, 2]
    assert np.allclose(centres[0], x[truth == 1].mean(0))


def test_kmeans_is_deterministic_per_seed_and_order_free():
    x, _ = _blobs([40, 40, 40], spread=3.0, seed=1)          # overlapping: the answer depends on the seeding
    a, _ = kmeans(x, 3, seed=7)
    b, _ = kmeans(x, 3, seed=7)
    assert np.array_equal(a, b)
    sizes = np.bincount(a, minlength=3)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_kmeans_keeps_k_clusters_on_duplicates_and_rejects_bad_k():
    x = np.concatenate([np.zeros((30, 2)), np.ones((3, 2))])
    labels, _ = kmeans(x, 2)
    assert sorted(np.bincount(labels)) == [3, 30]
    labels, _ = kmeans(np.zeros((10, 3)), 3)                 # all points equal: no crash, labels in range
    assert labels.min() >= 0 and labels.max() < 3
    for k in (0, 11):
        with pytest.raises(ValueError, match="k-means needs"):
            kmeans(np.zeros((10, 3)), k)


def test_label_prior():
    prior = label_prior(np.array([0, 0, 1, 3, 3, 3]), 5)
    assert np.allclose(prior, [2 / 6, 1 / 6, 0, 3 / 6, 0]) and prior.sum() == pytest.approx(1.0)


def test_cluster_labels_group_images_that_look_alike():
    rng = np.random.default_rng(0)
    # two kinds of 8x8 images: bright left half or bright bottom half, with pixel noise
    left, bottom = np.zeros((8, 8)), np.zeros((8, 8))
    left[:, :4], bottom[4:, :] = 200, 200
    kinds = rng.integers(0, 2, 200)
    images = np.where(kinds[:, None, None] == 0, left, bottom) + rng.normal(0, 20, (200, 8, 8))
    labels = cluster_labels(np.clip(images, 0, 255).astype(np.uint8)[..., None], 2)
    assert len(set(zip(kinds.tolist(), labels.tolist()))) == 2   # one cluster per kind


def test_subclass_labels_split_each_class_on_its_own():
    rng = np.random.default_rng(1)
    # class 0: dark or mid-grey images; class 1: bright left or bright bottom half; pixel noise on all
    left, bottom = np.zeros((8, 8)), np.zeros((8, 8))
    left[:, :4], bottom[4:, :] = 220, 220
    looks = [np.full((8, 8), 10.0), np.full((8, 8), 120.0), left, bottom]
    kinds = rng.integers(0, 4, 400)                                   # kinds 0, 1 are class 0; kinds 2, 3 class 1
    images = np.stack([looks[k] for k in kinds]) + rng.normal(0, 15, (400, 8, 8))
    classes = kinds // 2
    ids = subclass_labels(np.clip(images, 0, 255).astype(np.uint8)[..., None], classes, 2)
    assert np.array_equal(ids // 2, classes)                          # ids class * k + cluster: the class is kept
    assert len(set(zip(kinds.tolist(), ids.tolist()))) == 4           # one cluster per look within each class


# ---------------------------------------------------------------- the generator that draws its cluster

class _EchoLabels(torch.nn.Module):
    """A stand-in generator returning [label, z...] so the wrapper's routing can be read back."""

    def forward(self, z, labels):
        return torch.cat([labels[:, None].float(), z], dim=1)


def test_cluster_is_drawn_with_the_prior_frequencies():
    prior = [0.5, 0.1, 0.3, 0.1]
    g = ClusterDrawingGenerator(_EchoLabels(), prior)
    z = torch.randn(200_000, 4, generator=torch.Generator().manual_seed(0))
    out = g(z)
    clusters = out[:, 0].long()
    assert torch.equal(out[:, 1:], z[:, :-1])                                  # G sees z without its last coordinate
    freq = torch.bincount(clusters, minlength=4).double() / len(z)
    assert torch.allclose(freq, torch.tensor(prior, dtype=torch.float64), atol=0.005)
    # the last coordinate alone decides: monotone in it, whatever the rest
    u = torch.linspace(-4, 4, 101)
    z2 = torch.cat([torch.randn(101, 3), u[:, None]], dim=1)
    steps = g(z2)[:, 0]
    assert torch.all(steps[1:] >= steps[:-1]) and steps[0] == 0 and steps[-1] == 3


def test_cluster_within_the_given_class_with_its_frequencies():
    # 3 classes x 2 clusters; joint frequencies of the ids class * 2 + cluster
    prior = [0.3, 0.1, 0.05, 0.15, 0.2, 0.2]
    g = ClusterDrawingGenerator(_EchoLabels(), prior, classes=3)
    gen = torch.Generator().manual_seed(0)
    z, labels = torch.randn(300_000, 4, generator=gen), torch.randint(3, (300_000,), generator=gen)
    out = g(z, labels)
    ids = out[:, 0].long()
    assert torch.equal(out[:, 1:], z[:, :-1]) and torch.equal(ids // 2, labels)   # the label's own clusters only
    for c, within in enumerate([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]):      # P(cluster | class)
        freq = torch.bincount(ids[labels == c] % 2, minlength=2).double() / (labels == c).sum()
        assert torch.allclose(freq, torch.tensor(within, dtype=torch.float64), atol=0.006)


# ---------------------------------------------------------------- config, data, training and export

def test_config_checks_name_clusters():
    with pytest.raises(ValueError, match="--clusters"):
        make_config("fmnist-cdcgan-basic", {"clusters": 5, "num_classes": 10, "use_labels": False})
    with pytest.raises(ValueError, match="--use-labels"):
        make_config("fmnist-cdcgan-basic", {"use_labels": False})                    # conditional, no labels of any kind
    make_config("fmnist-cdcgan-basic", {"clusters": 10, "use_labels": False})
    with pytest.raises(ValueError, match="--clusters"):
        make_config("fmnist-cdcgan-basic", {"clusters": 3})                         # 10 ids cannot be classes x 3
    make_config("fmnist-cdcgan-basic", {"clusters": 5})                             # 2 classes x 5 would pass here...


@needs_fmnist
def test_clusters_within_classes_need_classes_times_k_ids(tmp_path):
    """...but Fashion-MNIST has 10 classes: --clusters 5 --use-labels makes 50 ids, and --num-classes 10 is refused
    by name before any training step."""
    cfg = make_config("fmnist-cdcgan-basic", {"clusters": 5, "limit": 300, "steps": 1, "g_channels": 8, "d_channels": 8,
                                        "out_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="--num-classes 50"):
        train(cfg, log=lambda m: None)
    assert not any(tmp_path.iterdir())


@needs_fmnist
def test_self_conditioned_run_exports_an_unconditional_model(tmp_path):
    overrides = {"clusters": 3, "num_classes": 3, "use_labels": False, "limit": 300, "steps": 2, "log_every": 1,
                 "sample_every": 0, "fd_every": 2, "fd_samples": 64, "g_channels": 8, "d_channels": 8,
                 "out_dir": str(tmp_path)}
    cfg = make_config("fmnist-cdcgan-basic", overrides)
    data = load_data(cfg.data)
    counts = np.bincount(data.labels.numpy(), minlength=3)
    assert counts.sum() == 300 and counts.min() > 0
    assert data.class_names == ["cluster 0", "cluster 1", "cluster 2"]
    run = train(cfg, log=lambda m: None)
    ck = load_checkpoint(run)
    assert np.allclose(ck.label_prior, counts / 300)
    assert load_checkpoint(run / "checkpoints" / "best.pt").label_prior == ck.label_prior

    # served: z [N, 65], no label input, and the graph draws the same cluster as the PyTorch wrapper
    md = load_model_dir(export_model(run, "selfcond", out_dir=tmp_path / "models", log=lambda m: None))
    assert (md.latent_dim, md.num_classes) == (65, 0)
    assert md.manifest["self_conditioning"]["clusters"] == 3
    z = latents(123, 0, 256, md.latent_dim)
    onnx_images = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    served = ck.served_generator()
    with torch.no_grad():
        torch_images = served.generator(torch.from_numpy(z))                   # [256, 1, 28, 28] in [-1, 1]
    expect = np.clip(np.floor((torch_images.numpy() + 1) * 127.5 + 0.5), 0, 255).transpose(0, 2, 3, 1)
    assert np.abs(onnx_images.astype(int) - expect.astype(int)).max() <= 1
    # the graph's cluster boundaries are the checkpoint's cumulative frequencies
    thresholds = served.generator.thresholds[0].tolist()
    assert np.allclose(thresholds, np.cumsum(ck.label_prior)[:-1], atol=1e-6)
    assert all(a < b for a, b in itertools.pairwise(thresholds))


def test_served_generator_refuses_a_cluster_run_without_its_prior(tmp_path):
    cfg = make_config("fmnist-cdcgan-basic", {"clusters": 3, "num_classes": 3, "use_labels": False, "g_channels": 8,
                                        "d_channels": 8})
    from gan_service.training.checkpoint import Checkpoint, CheckpointError
    from gan_service.training.nets import build_generator

    state = {"config": cfg.to_dict(), "G": build_generator(cfg).state_dict(), "G_ema": None, "label_prior": None}
    with pytest.raises(CheckpointError, match="label_prior"):
        Checkpoint(tmp_path / "x.pt", cfg, 0, state).served_generator()


class _ClusterImages(torch.nn.Module):
    """A stand-in generator whose image is set by the cluster alone (cluster c: every pixel at a distinct level),
    so choosing another cluster moves every pixel by ~40 grey levels."""

    def __init__(self, k: int):
        super().__init__()
        self.levels = torch.nn.Embedding(k, 28 * 28)
        with torch.no_grad():
            self.levels.weight.copy_(torch.linspace(-1.5, 1.5, k)[:, None].expand(k, 28 * 28))

    def forward(self, z, labels):
        x = self.levels(labels) + 0.0 * z.sum(dim=1, keepdim=True)            # [N, 784]
        return torch.tanh(x).view(len(z), 1, 28, 28)


def test_fp16_graph_picks_the_same_cluster_as_fp32_near_every_boundary():
    """The fp16 export keeps the cluster choice in fp32: latents a hair either side of each boundary (closer than
    fp16 can resolve) get the same cluster, hence the same image, in both graphs."""
    from statistics import NormalDist

    from gan_service.training.fp16 import convert_fp16
    from gan_service.training.onnx_export import export_onnx

    prior = [0.07, 0.13, 0.2, 0.15, 0.05, 0.1, 0.3]
    wrapped = ClusterDrawingGenerator(_ClusterImages(len(prior)), prior).eval()
    model = export_onnx(wrapped, 5, 0, 17)
    sessions = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                for m in (model, convert_fp16(model))]
    # the boundaries in z-space: Phi^-1 of the cumulative frequencies, then 2e-4 either side (fp16 spacing near 1: 1e-3)
    edges = [NormalDist().inv_cdf(c) for c in np.cumsum(prior)[:-1]]
    last = np.array([e + d for e in edges for d in (-2e-4, -5e-5, 5e-5, 2e-4)], dtype=np.float32)
    z = np.concatenate([np.zeros((len(last), 4), np.float32), last[:, None]], axis=1)
    full, half = (s.run(None, {"z": z})[0].astype(int) for s in sessions)
    assert len(np.unique(full[:, 0, 0, 0])) == len(prior)                      # every cluster is hit
    assert np.abs(full - half).max() <= 1


@needs_fmnist
def test_resume_refuses_clusters_that_changed(tmp_path):
    """The clusters are recomputed from the data at every start; a resume on other data (here another --limit)
    would silently relabel every image, so it stops with a message naming --clusters instead."""
    base = {"clusters": 3, "num_classes": 3, "use_labels": False, "limit": 300, "steps": 1, "log_every": 1,
            "sample_every": 0, "fd_every": 0, "g_channels": 8, "d_channels": 8, "out_dir": str(tmp_path)}
    run = train(make_config("fmnist-cdcgan-basic", base), log=lambda m: None)
    train(make_config("fmnist-cdcgan-basic", {**base, "steps": 2}), resume=run, log=lambda m: None)   # same data: fine
    with pytest.raises(ValueError, match="--clusters"):
        train(make_config("fmnist-cdcgan-basic", {**base, "steps": 3, "limit": 200}), resume=run, log=lambda m: None)


@needs_fmnist
def test_bench_engine_runs_pytorch_as_the_model_directory_serves(tmp_path):
    """`gan bench engine` times PyTorch on the generator the directory serves: for a self-conditioned model that is
    the cluster-drawing wrapper (z [N, latent_dim + 1], no label), with or without its checkpoint on this machine."""
    import json
    import shutil

    from gan_service.training.benchmarks import flops_per_image, torch_generator

    overrides = {"clusters": 3, "num_classes": 3, "use_labels": False, "limit": 300, "steps": 1, "log_every": 1,
                 "sample_every": 0, "fd_every": 0, "g_channels": 8, "d_channels": 8, "out_dir": str(tmp_path)}
    run = train(make_config("fmnist-cdcgan-basic", overrides), log=lambda m: None)
    path = export_model(run, "selfcond", out_dir=tmp_path / "models", fp16=False, log=lambda m: None)
    md = load_model_dir(path)
    z = latents(5, 0, 4, md.latent_dim)
    onnx_images = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
    with torch.no_grad():
        generator, how = torch_generator(md)                                    # the checkpoint is here
        assert how.startswith("checkpoint")
        out = generator(torch.from_numpy(z), None)                             # [4, 1, 28, 28]
    expect = np.clip(np.floor((out.numpy() + 1) * 127.5 + 0.5), 0, 255).transpose(0, 2, 3, 1)
    assert np.abs(onnx_images.astype(int) - expect).max() <= 1
    assert flops_per_image(generator, md.latent_dim, md.num_classes) > 0
    # without the checkpoint: the architecture rebuilt from the manifest, still served the same way
    moved = shutil.copytree(path, tmp_path / "moved")
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source"]["checkpoint"] = str(tmp_path / "gone.pt")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    rebuilt, how = torch_generator(load_model_dir(moved))
    assert how.startswith("same architecture")
    with torch.no_grad():
        assert rebuilt(torch.from_numpy(z), None).shape == (4, 1, 28, 28)


@needs_fmnist
def test_clusters_within_classes_export_a_class_conditional_model(tmp_path):
    """--clusters 2 --use-labels: G trains on class * 2 + cluster ids, the served graph takes z [N, 65] and the
    class label, draws the cluster within that class, and matches the PyTorch wrapper."""
    overrides = {"clusters": 2, "num_classes": 20, "limit": 600, "steps": 2, "log_every": 1, "sample_every": 0,
                 "fd_every": 0, "g_channels": 8, "d_channels": 8, "out_dir": str(tmp_path)}
    cfg = make_config("fmnist-cdcgan-basic", overrides)
    data = load_data(cfg.data)
    from gan_service.training.data import load_fmnist

    _, classes = load_fmnist(cfg.data.path, "train")
    assert torch.equal(data.labels // 2, torch.from_numpy(classes[:600]))      # each image stays in its class
    assert len(data.class_names) == 10 and data.label_prior.shape == (20,)
    run = train(cfg, log=lambda m: None)
    md = load_model_dir(export_model(run, "subclass", out_dir=tmp_path / "models", log=lambda m: None))
    assert (md.latent_dim, md.num_classes) == (65, 10) and md.class_names == data.class_names
    assert md.manifest["self_conditioning"]["per_class"] is True
    z, labels = latents(9, 0, 200, md.latent_dim), np.arange(200, dtype=np.int64) % 10
    session = ort.InferenceSession(str(md.onnx_path), providers=["CPUExecutionProvider"])
    onnx_images = session.run(None, {"z": z, "label": labels})[0]
    with torch.no_grad():
        out = load_checkpoint(run).served_generator().generator(torch.from_numpy(z), torch.from_numpy(labels))
    expect = np.clip(np.floor((out.numpy() + 1) * 127.5 + 0.5), 0, 255).transpose(0, 2, 3, 1)
    assert np.abs(onnx_images.astype(int) - expect.astype(int)).max() <= 1


def test_export_fp16_arithmetic_check_keeps_the_cluster_choice_in_fp32():
    """The export's PyTorch-half estimate of fp16 arithmetic must run the generator as the fp16 graph does: the
    cluster chosen from the fp32 z, only G in half. Rounding z first moved latents across boundaries (with 100
    clusters the shipped-recipe run failed the check at 98.8% of pixels, max diff 253, though its fp16 graph
    picks every cluster right); with many clusters and images set by the cluster alone, that is every flip."""
    from gan_service.training.export_checks import _torch_half_check, check_latents
    from gan_service.training.onnx_export import export_onnx

    prior = [1 / 400] * 400
    stand_in = _ClusterImages(len(prior))
    with torch.no_grad():                                    # neighbouring clusters: black and white images
        stand_in.levels.weight.copy_(torch.tensor([-3.0, 3.0]).repeat(200)[:, None].expand(400, 28 * 28))
    wrapped = ClusterDrawingGenerator(stand_in, prior).eval()
    session = ort.InferenceSession(export_onnx(wrapped, 5, 0, 17).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feed = check_latents(2024, 256, 5, 0)
    stats = _torch_half_check(wrapped, feed, session.run(None, feed)[0], 0)
    assert stats["within_1"] >= 0.99 and "skipped" not in stats
