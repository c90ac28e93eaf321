"""Which checkpoint becomes checkpoints/best.pt: the Frechet distance that ranks a run's generators.

With ``--fd-every`` the loop measures, every so many steps, the cheap pixel FD and, when the run makes images the
evaluation classifier takes (28x28 grey), the FD in that classifier's 128-d features (``evaluation.features.
Classifier``, the space ``gan evaluate`` reports in), between ``fd_samples`` generated and as many real training
images. best.pt is the checkpoint with the lowest classifier FD; pixel FD ranks only when no classifier can be
used, and the reason is logged once. A resumed run whose best.pt was ranked in another space starts a new ranking.
"""
from __future__ import annotations

import torch
from torch import nn

from gan_service.core.frechet import frechet_distance_features
from gan_service.core.imaging import to_uint8
from gan_service.training.config import TrainConfig
from gan_service.training.data import TrainingData
from gan_service.training.sampling import generate, sample_latents

PIXEL, CLASSIFIER = "pixel_fd", "classifier_fd"


def _fd_batches(cfg: TrainConfig, data: TrainingData, device) -> tuple[torch.Tensor, torch.Tensor, object]:
    """The same real batch and latents at every measurement of a run: (real [n, ...], z [n, latent], labels)."""
    n = cfg.run.fd_samples
    gen = torch.Generator().manual_seed(cfg.run.seed + 999)
    real, _ = data.sample(n, gen)
    z, labels = sample_latents(cfg, n, gen, device, data.label_prior)
    return real, z, labels


def load_fd_classifier(cfg: TrainConfig):
    """(the evaluation Classifier, "") when this run's images fit it, else (None, why not)."""
    if not cfg.run.fd_classifier:
        return None, "--fd-classifier is empty"
    if cfg.is_toy or cfg.data_shape() != (1, 28, 28):
        return None, (f"the run makes samples of shape {cfg.data_shape()}; the evaluation classifier takes "
                      "28x28 grey images")
    from gan_service.evaluation.features import Classifier
    from gan_service.evaluation.sources import EvaluationError

    try:
        return Classifier(cfg.run.fd_classifier), ""
    except EvaluationError as exc:
        return None, str(exc)


class FDJudge:
    """Measures a generator's FDs and says which one ranks checkpoints (``metric``)."""

    def __init__(self, cfg: TrainConfig, data: TrainingData, device, log):
        self.cfg = cfg
        self.real, self.z, self.labels = _fd_batches(cfg, data, device)
        self.classifier, why = load_fd_classifier(cfg)
        self.metric = CLASSIFIER if self.classifier is not None else PIXEL
        if self.classifier is None:
            log(f"best.pt is chosen by pixel FD: no evaluation classifier ({why})")
        else:
            self.real_features = self.classifier.run(to_uint8(self.real.numpy()))[1]
            log(f"best.pt is chosen by FD in the features of {self.classifier.path} ({len(self.real)} samples)")

    def measure(self, G: nn.Module) -> dict:
        """{"pixel_fd": ..., and "classifier_fd" when a classifier is used} for generator G."""
        n = len(self.real)
        fake = generate(G, self.z, self.labels)                     # float32 [n, *sample_shape]
        out = {PIXEL: frechet_distance_features(self.real.reshape(n, -1).numpy(), fake.reshape(n, -1))}
        if self.classifier is not None:
            features = self.classifier.run(to_uint8(fake))[1]
            out[CLASSIFIER] = frechet_distance_features(self.real_features, features)
        return out
