"""Generator and discriminator architectures: the seed paper's MLPs and a DCGAN-style conv pair.

Conditioning (when ``num_classes > 0``): the DCGAN generator either makes every BatchNorm class-conditional
(``g_cond="cbn"``, a per-class gain and bias, de Vries et al. 2017; z alone enters the first layer; the
fmnist-cdcgan default) or concatenates a learned class embedding to z (``g_cond="concat"``; the MLP generator
always does this). With concat, our Fashion-MNIST runs learned to ignore z and collapsed to one image per class
(recall 0) whatever the discriminator; with cbn the same recipe keeps its within-class diversity.
The discriminator either uses projection (Miyato & Koyama 2018): logit = psi(h) + <embed(y), h>, or
(``d_cond="concat"``, the fmnist-cdcgan default) sees one-hot label maps as extra input channels (computed as a
per-class table added after the first conv, the same numbers without convolving K constant channels).
Both keep D a single-output classifier of real vs fake, which every loss here assumes.

Generators map z [N, latent_dim] (and labels [N]) to images [N, C, H, W] in [-1, 1] (tanh),
or to points [N, 2] for the 2-D toy mixtures (no output squashing).
Discriminators return logits [N] (or [N / pack] with PacGAN packing). Nothing here knows about losses.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from gan_service.training.config import TrainConfig


class Maxout(nn.Module):
    """Linear layer followed by a max over ``pieces`` groups (Goodfellow et al. 2013), as in the paper's D."""

    def __init__(self, d_in: int, d_out: int, pieces: int):
        super().__init__()
        self.pieces = pieces
        self.linear = nn.Linear(d_in, d_out * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)                                          # [N, d_out * pieces]
        return y.view(*y.shape[:-1], -1, self.pieces).amax(dim=-1)  # [N, d_out]


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, hidden: list[int], out_shape: tuple[int, ...], num_classes: int = 0):
        super().__init__()
        self.out_shape, self.num_classes = out_shape, num_classes
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        layers, width = [], latent_dim * (2 if num_classes else 1)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, math.prod(out_shape)))
        self.net = nn.Sequential(*layers)
        self.squash = len(out_shape) == 3    # images in [-1, 1]; toy points unbounded

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)   # [N, 2 * latent_dim]
        x = self.net(z).view(z.shape[0], *self.out_shape)
        return torch.tanh(x) if self.squash else x


class FourierFeatures(nn.Module):
    """x [N, d] -> [x, sin(2 pi x B), cos(2 pi x B)] [N, d + 2F] with fixed random B ~ N(0, scale^2) [d, F].

    Tancik et al. 2020: an MLP on raw low-dimensional coordinates learns high frequencies slowly; random
    Fourier features let D tell apart modes far narrower than their spacing (the 2-D mixtures: std 0.05).
    The raw x is kept: the periodic features alone alias distant modes onto each other, and G collapses.
    """

    def __init__(self, d_in: int, features: int, scale: float):
        super().__init__()
        self.register_buffer("B", torch.randn(d_in, features, generator=torch.Generator().manual_seed(0)) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * x @ self.B                                    # [N, F]
        return torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=1)    # [N, d + 2F]


class MLPDiscriminator(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], hidden: list[int], maxout: int, dropout: float,
                 num_classes: int = 0, pack: int = 1, fourier: int = 0, fourier_scale: float = 1.0,
                 cond: str = "projection"):
        super().__init__()
        self.pack, self.num_classes = pack, num_classes
        self.concat = cond == "concat" and num_classes > 0
        d_in = math.prod(in_shape) + (num_classes if self.concat else 0)
        self.fourier = FourierFeatures(d_in, fourier, fourier_scale) if fourier else None
        layers, width = [], (d_in + 2 * fourier) * pack
        for h in hidden:
            layers.append(Maxout(width, h, maxout) if maxout else nn.Sequential(nn.Linear(width, h), nn.LeakyReLU(0.2)))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        self.embed = nn.Embedding(num_classes, width) if num_classes and not self.concat else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = x.reshape(len(x), -1)                                  # [N, d]
        if self.concat:
            x = torch.cat([x, nn.functional.one_hot(labels, self.num_classes).to(x.dtype)], dim=1)
        if self.fourier is not None:
            x = self.fourier(x)                                     # [N, d + 2F]
        h = self.features(x.reshape(len(x) // self.pack, -1))      # [N / pack, width]
        return _project(self.head(h).squeeze(1), h, self.embed, labels)


def _project(logit: torch.Tensor, h: torch.Tensor, embed: nn.Embedding | None, labels) -> torch.Tensor:
    """Projection conditioning: add <embed(y), h> to the unconditional logit."""
    if embed is None:
        return logit
    return logit + (embed(labels) * h).sum(dim=1)


def _conv_plan(resolution: int) -> tuple[int, int]:
    """(start size, number of 2x up/down-samplings) so that start * 2**n == resolution and start <= 7."""
    n, start = 0, resolution
    while start > 7 and start % 2 == 0:
        start, n = start // 2, n + 1
    if n == 0:
        raise ValueError(f"--resolution {resolution}: the conv models need a resolution of the form s * 2**n, s <= 7")
    return start, n


class ConditionalBatchNorm(nn.Module):
    """BatchNorm without its own affine; a per-class gain and bias instead (de Vries et al. 2017, as in SNGAN/BigGAN).

    With ``num_classes == 0`` it is a plain affine BatchNorm. ``spatial`` picks [N, C, H, W] inputs over [N, C].
    """

    def __init__(self, features: int, num_classes: int, spatial: bool):
        super().__init__()
        self.num_classes = num_classes
        self.bn = (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(features, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, features)
            self.bias = nn.Embedding(num_classes, features)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if not self.num_classes:
            return h
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        return h * self.gain(labels).view(shape) + self.bias(labels).view(shape)


class DCGANGenerator(nn.Module):
    """z -> linear -> [ch*2^(n-1), s, s] -> n x (ConvTranspose 2x, BN, ReLU) -> conv to C channels -> tanh.

    Conditioning (``cond``): "concat" feeds [z, embed(y)] to the linear stem; "cbn" feeds z alone and makes every
    BatchNorm class-conditional, so the label cannot crowd z out of the stem's input.
    """

    def __init__(self, latent_dim: int, channels: int, resolution: int, base: int, num_classes: int = 0,
                 cond: str = "concat", upsample: str = "transpose"):
        super().__init__()
        self.num_classes = num_classes
        start, n = _conv_plan(resolution)
        concat = num_classes > 0 and cond == "concat"
        self.embed = nn.Embedding(num_classes, latent_dim) if concat else None
        bn_classes = num_classes if cond == "cbn" else 0
        width = base * 2 ** (n - 1)
        self.start_shape = (width, start, start)
        self.stem = nn.Linear(latent_dim * (2 if concat else 1), width * start * start, bias=False)
        self.norms = nn.ModuleList([ConditionalBatchNorm(width * start * start, bn_classes, spatial=False)])
        self.ups = nn.ModuleList()
        for i in range(n):
            out = max(base * 2 ** (n - 2 - i), base // 2) if i < n - 1 else base
            self.ups.append(_upsample_2x(width, out, upsample))
            self.norms.append(ConditionalBatchNorm(out, bn_classes, spatial=True))
            width = out
        self.to_image = nn.Conv2d(width, channels, 3, 1, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)                  # [N, 2 * latent_dim]
        h = torch.relu(self.norms[0](self.stem(z), labels))                # [N, ch * s * s]
        h = h.view(z.shape[0], *self.start_shape)                          # [N, ch, s, s]
        for up, norm in zip(self.ups, self.norms[1:]):
            h = torch.relu(norm(up(h), labels))                            # [N, ch', 2s, 2s]
        return torch.tanh(self.to_image(h))                                # [N, C, H, W]


def _upsample_2x(c_in: int, c_out: int, mode: str) -> nn.Module:
    """[N, c_in, s, s] -> [N, c_out, 2s, 2s]: a 4x4 stride-2 transposed conv, or nearest resize + 3x3 conv.

    The transposed conv's kernel overlaps unevenly across output pixels (Odena et al. 2016), which shows as
    checkerboard speckle; resizing first gives every output pixel the same footprint.
    """
    if mode == "transpose":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False))


class MinibatchStd(nn.Module):
    """[N, C, H, W] -> [N, C + 1, H, W]: appends each group's mean feature standard deviation as one constant map.

    Karras et al. 2018 (ProGAN): a batch of fakes with too little variety shows as a small value here, so D can
    reject it and G is pushed to cover more of the data. Groups are ``group`` *consecutive* samples, not strided
    ones as in ProGAN: the training loop feeds D [reals; fakes] in one batch, and consecutive groups never mix the
    two halves (each half's size is a multiple of the group, which the config checks).
    """

    def __init__(self, group: int):
        super().__init__()
        self.group = group

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, c, hgt, wid = h.shape
        if n % self.group:
            raise ValueError(f"minibatch-std group {self.group} does not divide the batch of {n}")
        g = h.reshape(n // self.group, self.group, c, hgt, wid)                  # [N/G, G, C, H, W]
        std = torch.sqrt(g.var(dim=1, unbiased=False) + 1e-8)                 # [N/G, C, H, W]
        per_group = std.mean(dim=(1, 2, 3))                                   # [N/G]
        maps = per_group.repeat_interleave(self.group)[:, None, None, None]   # [N, 1, 1, 1]
        return torch.cat([h, maps.expand(n, 1, hgt, wid)], dim=1)             # [N, C + 1, H, W]


class DCGANDiscriminator(nn.Module):
    """n x (conv 4x4 stride 2, LeakyReLU) [-> minibatch std] -> flatten -> linear logit; no normalisation (keeps
    R1 well defined)."""

    def __init__(self, channels: int, resolution: int, base: int, num_classes: int = 0, pack: int = 1,
                 cond: str = "projection", norm: str = "none", mbstd: int = 0):
        super().__init__()
        self.pack, self.num_classes = pack, num_classes
        self.concat = cond == "concat" and num_classes > 0
        start, n = _conv_plan(resolution)
        layers, width = [], (channels + (num_classes if self.concat else 0)) * pack
        for i in range(n):
            out = base * 2 ** i
            layers += [nn.Conv2d(width, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            width = out
        if mbstd:
            layers.append(MinibatchStd(mbstd))
            width += 1
        self.features = nn.Sequential(*layers, nn.Flatten())
        feat = width * start * start
        self.head = nn.Linear(feat, 1)
        self.embed = nn.Embedding(num_classes, feat) if num_classes and not self.concat else None
        if norm == "spectral":   # every conv, the head and the projection embedding get spectral normalisation
            for module in [*self.features, self.head, self.embed]:
                if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                    nn.utils.parametrizations.spectral_norm(module)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.concat:   # the first conv sees [image, one-hot label maps]; packing is unconditional only (config)
            h = self.features[1:](_conv_image_and_label_maps(self.features[0], x, labels))   # [N, feat]
            return self.head(h).squeeze(1)
        n, c, hgt, wid = x.shape
        h = self.features(x.reshape(n // self.pack, c * self.pack, hgt, wid))   # [N / pack, feat]
        return _project(self.head(h).squeeze(1), h, self.embed, labels)


def _conv_image_and_label_maps(conv: nn.Conv2d, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``conv`` applied to x [N, C, H, W] with K one-hot label maps appended as input channels, without building them.

    A one-hot map is 1 everywhere in its class's channel and 0 in the others, so what the conv makes of it is that
    channel's kernel summed over the taps that fall inside the image (zero padding drops the others at the border):
    one table [K, out, H' * W'] per call, a row per sample by its label, instead of K constant channels convolved
    (with 100 clusters the maps were 100 of D's 101 input channels). Same weights, same result as the concatenation.
    """
    weight = conv.weight              # read once: under spectral norm every read runs a power iteration
    channels = x.shape[1]
    image_part = nn.functional.conv2d(x, weight[:, :channels], conv.bias, conv.stride, conv.padding)  # [N, out, H', W']
    # which kernel taps land inside the image at each output position: [kh * kw, H' * W']
    ones = torch.ones(1, 1, *x.shape[2:], dtype=weight.dtype, device=weight.device)
    inside = nn.functional.unfold(ones, conv.kernel_size, padding=conv.padding, stride=conv.stride)[0]
    table = torch.einsum("okt,tl->kol", weight[:, channels:].flatten(2), inside)                     # [K, out, H'W']
    # pick each sample's row by a one-hot product, not table[labels]: indexing's backward adds rows in an order that
    # depends on the threads, and resumed runs must match uninterrupted ones bit for bit
    one_hot = nn.functional.one_hot(labels, table.shape[0]).to(table.dtype)                          # [N, K]
    return image_part + (one_hot @ table.flatten(1)).view_as(image_part).to(image_part.dtype)


class ClusterDrawingGenerator(nn.Module):
    """A self-conditioned generator (trained on k-means cluster ids, ``--clusters``) served without cluster ids.

    z [N, latent_dim + 1] ~ N(0, I): the last coordinate u picks the cluster by inverting the clusters' cumulative
    frequencies at Phi(u) (so clusters come out as often as in the training data), the rest is G's own z. Seeded
    latents therefore fix the cluster too, and the exported graph needs no cluster input.

    ``classes`` = 1: the clusters span the data and the served model is unconditional. ``classes`` = C > 1 (clusters
    within each class, ``--clusters K --use-labels``): G was trained on ids class * K + cluster, ``prior`` [C * K]
    holds their joint frequencies, and the served model takes the class label and draws the cluster within it.
    """

    def __init__(self, generator: nn.Module, prior, classes: int = 1):
        super().__init__()
        self.generator = generator
        joint = torch.as_tensor(prior, dtype=torch.float64).view(classes, -1)        # [C, K]
        within = joint / joint.sum(dim=1, keepdim=True).clamp_min(1e-12)              # [C, K], rows sum to 1
        self.clusters_per_class = joint.shape[1]
        self.conditional = classes > 1
        self.register_buffer("thresholds", torch.cumsum(within, 1)[:, :-1].float())  # [C, K - 1] ascending in (0, 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # Phi(u) ~ U(0, 1); the cluster is how many of its class's cumulative frequencies lie below it
        uniform = 0.5 * (1.0 + torch.erf(z[:, -1] / math.sqrt(2.0)))            # [N]
        thresholds = self.thresholds[labels] if self.conditional else self.thresholds    # [N or 1, K - 1]
        cluster = (uniform[:, None] > thresholds).sum(dim=1)                   # int64 [N] in 0..K-1
        if self.conditional:
            cluster = labels * self.clusters_per_class + cluster               # G's id: class * K + cluster
        return self.generator(z[:, :-1], cluster)


def build_generator(cfg: TrainConfig) -> nn.Module:
    m, shape = cfg.model, cfg.data_shape()
    if m.arch == "mlp":
        return MLPGenerator(m.latent_dim, list(m.g_hidden), shape, m.num_classes)
    return DCGANGenerator(m.latent_dim, cfg.data.channels, cfg.data.resolution, m.g_channels, m.num_classes,
                          m.g_cond, m.g_upsample)


def build_discriminator(cfg: TrainConfig) -> nn.Module:
    m, shape = cfg.model, cfg.data_shape()
    if m.arch == "mlp":
        return MLPDiscriminator(shape, list(m.d_hidden), m.d_maxout, m.d_dropout, m.num_classes, m.pack,
                                m.d_fourier, m.d_fourier_scale, m.d_cond)
    return DCGANDiscriminator(cfg.data.channels, cfg.data.resolution, m.d_channels, m.num_classes, m.pack, m.d_cond,
                              m.d_norm, m.d_mbstd)
