"""The claims of Goodfellow et al. (2014), made executable on 1-D densities that are known exactly.

Reference quantities (D*, JSD, KL, expectations under p_g) come from quadrature in tests/theory_utils.py
(numpy only); the quantities under test come from training.losses. Each tolerance below is stated
next to the number it was chosen against (measured on this code, CPU, torch 2.13) and is far
tighter than the error that a wrong formula would produce.

  1. D*(x) = p_data / (p_data + p_g): an MLP trained on d_loss alone converges to it.
  2. V(G, D*) = 2 JSD(p_data || p_g) - log 4; D* maximises V; V = -log 4 when p_g = p_data.
  3. Saturation: with D rejecting fakes confidently, the minimax generator gradient vanishes
     (factor sigmoid(l)) while the non-saturating one does not; both push D(G(z)) up.
  4. With D fixed at D*, the "mle" generator loss has the gradient of KL(p_data || p_g); minimax has
     that of 2 JSD and non-saturating that of KL(p_g || p_data) - 2 JSD (Arjovsky & Bottou 2017, Thm 2.5).
  5. Every loss in LOSSES on hand-checked logits: values, gradients, extreme logits, bf16, R1.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import theory_utils as tu  # noqa: E402

from gan_service.training.losses import LOSSES, MLE_LOGIT_CLAMP, d_loss, g_loss, r1_penalty, value_function  # noqa: E402

P_DATA = tu.Mixture.normal(0.0, 1.0)
# Bimodal p_g around a unimodal p_data: D* is non-monotone (high at 0, low at +-1.5, back up in the tails).
P_G_MIX = tu.Mixture((0.5, 0.5), (-1.5, 1.5), (0.6, 0.6))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny ops: one thread is fastest and keeps timings stable next to a busy background job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sample(m: tu.Mixture, n: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """n samples [n] from a 1-D Gaussian mixture, drawn with torch (seeded through ``gen``)."""
    k = torch.multinomial(torch.tensor(m.weights, dtype=torch.float64), n, replacement=True, generator=gen)
    means, stds = torch.tensor(m.means, dtype=dtype), torch.tensor(m.stds, dtype=dtype)
    return means[k] + stds[k] * torch.randn(n, generator=gen, dtype=dtype)


def optimal_logits(p_g: tu.Mixture, x: torch.Tensor) -> torch.Tensor:
    """Analytic D* logits log p_data(x) - log p_g(x) at the points x, float64."""
    return torch.from_numpy(tu.optimal_logit(P_DATA, p_g, x.double().numpy()))


# ----------------------------------------------------------------------------------------------
# 1. The optimal discriminator
# ----------------------------------------------------------------------------------------------

STEPS, BATCH = 1000, 512


@pytest.fixture(scope="module")
def trained_d() -> nn.Module:
    """An MLP trained alone, by Adam on d_loss("nonsaturating"), with fresh p_data / p_g samples each step."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    d = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(d.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    for _ in range(STEPS):
        real, fake = sample(P_DATA, BATCH, gen), sample(P_G_MIX, BATCH, gen)
        loss = d_loss("nonsaturating", d(real[:, None])[:, 0], d(fake[:, None])[:, 0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return d.eval()


def test_trained_discriminator_matches_optimal_d(trained_d):
    x = np.linspace(-4.0, 4.0, 801)
    d_star = tu.optimal_d(P_DATA, P_G_MIX, x)
    with torch.no_grad():
        d_hat = torch.sigmoid(trained_d(torch.from_numpy(x).float()[:, None])[:, 0]).double().numpy()
    # Where the two densities together carry mass (|x| <~ 2.7): elsewhere D is unconstrained by the data.
    region = P_DATA.pdf(x) + P_G_MIX.pdf(x) > 0.05
    err = np.abs(d_hat - d_star)[region]
    # The target is far from trivial there: D* spans [0.17, 0.93] and is 0.26 away from 1/2 on average,
    # and p_data / (p_data + 2 p_g) (the optimum of a d_loss weighting the fake term twice) is 0.11 away from it.
    assert d_star[region].max() - d_star[region].min() > 0.6
    assert np.abs(d_star[region] - 0.5).mean() > 0.2
    wrong = 1 / (1 + 2 * np.exp(P_G_MIX.log_pdf(x) - P_DATA.log_pdf(x)))
    assert np.abs(wrong - d_star)[region].mean() > 0.05
    # Measured: mean 0.0068, max 0.022 (seeds 1-3: mean <= 0.0083, max <= 0.027).
    assert err.mean() < 0.02, f"mean |sigmoid(D) - D*| = {err.mean():.4f}"
    assert err.max() < 0.06, f"max |sigmoid(D) - D*| = {err.max():.4f}"


# ----------------------------------------------------------------------------------------------
# 2. V(G, D*) = 2 JSD - log 4
# ----------------------------------------------------------------------------------------------

N_MC = 200_000


def _mc_value(p_g: tu.Mixture, seed: int, d: nn.Module | None = None):
    """V via value_function on N_MC samples, with D* (and optionally a trained D) on the *same* samples.

    Returns (V(D*), its standard error, V(d) - V(D*), standard error of that difference)."""
    gen = torch.Generator().manual_seed(seed)
    real, fake = sample(P_DATA, N_MC, gen, torch.float64), sample(p_g, N_MC, gen, torch.float64)
    lr_star, lf_star = optimal_logits(p_g, real), optimal_logits(p_g, fake)
    v_star = value_function(lr_star, lf_star).item()
    # Per-sample terms log D(x_real) and log(1 - D(x_fake)) for the standard errors.
    a, b = -nn.functional.softplus(-lr_star).numpy(), -nn.functional.softplus(lf_star).numpy()
    se = math.sqrt(a.var() / N_MC + b.var() / N_MC)
    if d is None:
        return v_star, se, None, None
    with torch.no_grad():
        lr_d, lf_d = d(real.float()[:, None])[:, 0], d(fake.float()[:, None])[:, 0]
    gap = value_function(lr_d, lf_d).item() - v_star
    da = -nn.functional.softplus(-lr_d.double()).numpy() - a
    db = -nn.functional.softplus(lf_d.double()).numpy() - b
    return v_star, se, gap, math.sqrt(da.var() / N_MC + db.var() / N_MC)


@pytest.mark.parametrize("p_g", [
    tu.Mixture.normal(1.5, 0.8),
    P_G_MIX,
    tu.Mixture.normal(4.0, 1.0),       # little overlap: JSD = 0.63, near its maximum log 2 = 0.69
], ids=["N(1.5,0.8^2)", "bimodal", "N(4,1)"])
def test_value_at_optimal_d_is_2jsd_minus_log4(p_g):
    v_star, se, _, _ = _mc_value(p_g, seed=1)
    expected = 2 * tu.jsd(P_DATA, p_g) - tu.LOG4
    # Measured |V - (2 JSD - log 4)| = 1.0e-3, 2.1e-3, 1.4e-3 for the three p_g (0.6 to 1.4 standard errors;
    # se = 1.7e-3, 1.6e-3, 1.0e-3). Four se is below 0.01.
    assert abs(v_star - expected) < max(4 * se, 1e-3), (v_star, expected, se)
    assert abs(v_star - expected) < 0.01
    assert v_star > -tu.LOG4 + 0.05          # p_g != p_data: strictly above the global minimum


def test_trained_d_value_is_below_optimum(trained_d):
    """D* maximises V(G, .): the trained D of test 1 reaches it, up to MC noise, and does not beat it."""
    v_star, se, gap, se_gap = _mc_value(P_G_MIX, seed=2, d=trained_d)
    expected = 2 * tu.jsd(P_DATA, P_G_MIX) - tu.LOG4
    assert abs(v_star - expected) < max(4 * se, 1e-3)
    # Same samples for both, so the gap's noise is small (se_gap = 1.1e-4). Measured gap: -1.0e-3.
    assert gap < 3 * se_gap, f"trained D beats D* by {gap:.2e} (se {se_gap:.1e})"
    assert gap > -0.01, f"trained D is {-gap:.3f} below V(D*)"


def test_value_is_minus_log4_when_pg_equals_pdata():
    gen = torch.Generator().manual_seed(3)
    real, fake = sample(P_DATA, 10_000, gen, torch.float64), sample(P_DATA, 10_000, gen, torch.float64)
    lr, lf = optimal_logits(P_DATA, real), optimal_logits(P_DATA, fake)
    assert torch.all(lr == 0) and torch.all(lf == 0)       # D* = 1/2 exactly
    assert abs(value_function(lr, lf).item() + tu.LOG4) < 1e-6
    assert abs(tu.jsd(P_DATA, P_DATA)) < 1e-12
    # and it is the global minimum of C(G) = max_D V: C grows as p_g = N(mu, 1) moves away.
    c = [2 * tu.jsd(P_DATA, tu.Mixture.normal(mu)) - tu.LOG4 for mu in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert c[0] == pytest.approx(-tu.LOG4, abs=1e-9)
    assert all(b > a + 1e-3 for a, b in zip(c, c[1:])), c


# ----------------------------------------------------------------------------------------------
# 3. Saturation of the minimax generator loss
# ----------------------------------------------------------------------------------------------

def test_minimax_saturates_nonsaturating_does_not():
    torch.manual_seed(4)
    n = 256
    w, bias = torch.tensor([3.0, 4.0], dtype=torch.float64), 2.0          # fixed linear D, slope ||w|| = 5
    # A linear generator x = A z + c placed where D rejects it confidently: logits in about [-12, -8].
    a_mat = (0.1 * torch.randn(2, 2, dtype=torch.float64)).requires_grad_()
    c = torch.tensor([-1.44, -1.92], dtype=torch.float64, requires_grad=True)   # w.c + bias = -10
    z = torch.randn(n, 2, dtype=torch.float64)

    grads, x_grads = {}, {}
    for kind in ("minimax", "nonsaturating", "mle", "hinge"):
        x = (z @ a_mat.T + c).detach().requires_grad_()      # leaf fake samples, to read dL/dx
        logits = x @ w + bias
        gx, = torch.autograd.grad(g_loss(kind, logits), x)
        x_grads[kind] = gx
        x_g = z @ a_mat.T + c                               # the same samples, through G's parameters
        grads[kind] = torch.autograd.grad(g_loss(kind, x_g @ w + bias), (a_mat, c))
    logits = (z @ a_mat.T + c).detach() @ w + bias
    assert -13 < logits.min() and logits.max() < -7, (logits.min(), logits.max())
    sig = torch.sigmoid(logits)

    # Closed forms, per sample (divided by n because the losses are means): dL/dl then dL/dx = dL/dl * w.
    dl = {"minimax": -sig / n, "nonsaturating": -(1 - sig) / n, "mle": -torch.exp(logits) / n,
          "hinge": -torch.ones_like(logits) / n}
    for kind, d in dl.items():
        torch.testing.assert_close(x_grads[kind], d[:, None] * w, rtol=1e-5, atol=0, msg=kind)

    norm = {k: math.sqrt(sum(float(g.pow(2).sum()) for g in gs)) for k, gs in grads.items()}
    x_norm = {k: float(g.norm(dim=1).sum()) for k, g in x_grads.items()}   # sum over samples of ||dL/dx_i||
    # Non-saturating: ||dL/dx_i|| summed ~ ||w|| = 5 (sigmoid(-l) ~ 1); minimax: 5 * mean sigmoid(l), measured 2.7e-4.
    assert x_norm["nonsaturating"] == pytest.approx(5.0, rel=1e-3)
    assert x_norm["minimax"] < 5.0 * 2e-4
    ratio = x_norm["nonsaturating"] / x_norm["minimax"]
    assert ratio > 1e3, ratio                                # measured 1.86e4 (e^10 = 2.2e4 at l = -10 exactly)
    assert norm["nonsaturating"] / norm["minimax"] > 1e3     # also through G's parameters: measured 1.59e4
    assert norm["nonsaturating"] / norm["mle"] > 1e3         # mle (-exp l) saturates just like minimax here

    # Same fixed-point direction: every loss moves each x_i along +w, i.e. raises D(G(z)).
    for kind, gx in x_grads.items():
        cos = (-gx @ w) / (gx.norm(dim=1) * w.norm())
        assert torch.all(cos > 1 - 1e-9), kind
    # Through G's parameters: the gradient w.r.t. the offset c is sum_i dL/dl_i * w, antiparallel to w for
    # both losses, so a descent step on c raises every logit; the two full parameter gradients point the same way.
    for kind in ("minimax", "nonsaturating"):
        gc = grads[kind][1]
        assert float(gc @ w) / (gc.norm() * w.norm()) < -1 + 1e-9, kind
        with torch.no_grad():
            new_logits = (z @ a_mat.T + (c - 1e-2 * gc / gc.norm())) @ w + bias
        assert torch.all(new_logits > logits), kind
    flat = {k: torch.cat([g.reshape(-1) for g in grads[k]]) for k in ("minimax", "nonsaturating")}
    cos_mm_ns = float(flat["minimax"] @ flat["nonsaturating"]) / (norm["minimax"] * norm["nonsaturating"])
    assert cos_mm_ns > 0.5, cos_mm_ns                        # measured 0.85


# ----------------------------------------------------------------------------------------------
# 4. The MLE generator loss follows KL(p_data || p_g)
# ----------------------------------------------------------------------------------------------

def _grad2(f, mu0: float, s0: float, h: float = 1e-3) -> np.ndarray:
    """Central-difference gradient [d/dmu, d/ds] of f(mu, s) at (mu0, s0)."""
    return np.array([(f(mu0 + h, s0) - f(mu0 - h, s0)) / (2 * h), (f(mu0, s0 + h) - f(mu0, s0 - h)) / (2 * h)])


# p_g = N(mu, s^2) with s != 1: here KL(p_data || p_g) and KL(p_g || p_data) have different gradients in both
# mu and s (at s = 1 their mu-gradients are both mu, and no test at s = 1 can tell the two directions apart).
# s0 > 1 keeps p_data / p_g bounded, so the Monte Carlo estimate of E[exp(l) ...] has finite variance.
MU0, S0, N_GRAD = 0.7, 1.5, 1_000_000


def _g_loss_gradients() -> dict[str, np.ndarray]:
    """[d/dmu, d/ds] of each g_loss with G(z) = mu + s z and D frozen at D* for (MU0, S0); z ~ N(0, 1)."""
    torch.manual_seed(5)
    z = torch.randn(N_GRAD, dtype=torch.float64)

    def logit(x):   # log N(x; 0, 1) - log N(x; MU0, S0^2): a fixed function of x, the gradient flows through x
        return -0.5 * x ** 2 + 0.5 * ((x - MU0) / S0) ** 2 + math.log(S0)

    grads = {}
    for kind in ("mle", "nonsaturating", "minimax"):
        theta = torch.tensor([MU0, S0], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(g_loss(kind, logit(theta[0] + theta[1] * z)), theta)
        grads[kind] = g.numpy()
    return grads


def test_loss_gradients_at_d_star_are_divergence_gradients():
    """Claim 4 with p_data = N(0, 1), p_g = N(mu, s^2): mle follows KL(p_data || p_g), minimax 2 JSD, and
    non-saturating KL(p_g || p_data) - 2 JSD, in both parameters, where the two KL directions disagree."""
    grads = _g_loss_gradients()
    normal = tu.Mixture.normal
    kl_fwd = _grad2(lambda m, s: tu.kl(P_DATA, normal(m, s)), MU0, S0)      # KL(p_data || p_g)
    kl_rev = _grad2(lambda m, s: tu.kl(normal(m, s), P_DATA), MU0, S0)      # KL(p_g || p_data)
    jsd = _grad2(lambda m, s: tu.jsd(P_DATA, normal(m, s)), MU0, S0)
    # The quadrature against the closed forms: forward [mu/s^2, 1/s - (1 + mu^2)/s^3] = [0.311, 0.225],
    # reverse [mu, s - 1/s] = [0.700, 0.833].
    np.testing.assert_allclose(kl_fwd, [MU0 / S0 ** 2, 1 / S0 - (1 + MU0 ** 2) / S0 ** 3], rtol=1e-5)
    np.testing.assert_allclose(kl_rev, [MU0, S0 - 1 / S0], rtol=1e-5)
    # The two directions differ by far more than the tolerance below (0.02 relative, MC se ~0.2%).
    assert np.all(np.abs(kl_fwd - kl_rev) > 0.35), (kl_fwd, kl_rev)

    # Measured (seed 5, 10^6 z): mle [0.3110, 0.2255], minimax [0.1754, 0.1399], non-saturating [0.5250, 0.6948].
    # Mutation check (by hand): with the mle G loss replaced by -E[l] (reverse KL), or the non-saturating one by
    # mle - minimax (gradient KL(p_data || p_g) - 2 JSD), this test fails; the former test at s = 1 passed both.
    np.testing.assert_allclose(grads["mle"], kl_fwd, rtol=0.02)
    np.testing.assert_allclose(grads["minimax"], 2 * jsd, rtol=0.02)
    np.testing.assert_allclose(grads["nonsaturating"], kl_rev - 2 * jsd, rtol=0.02)
    # ... and each is far from the claim of the other direction (no tolerance could confuse them).
    assert np.all(np.abs(grads["mle"] - kl_rev) > 0.3), grads["mle"]
    assert np.all(np.abs(grads["nonsaturating"] - (kl_fwd - 2 * jsd)) > 0.3), grads["nonsaturating"]


def test_loss_gradients_at_d_star_closed_forms():
    """The same gradients against a second reference, -E_pg[D* l'(x) dx/dtheta] (minimax) and
    -E_pg[(1 - D*) l'(x) dx/dtheta] (non-saturating) with dx/dtheta = [1, (x - mu)/s], by quadrature."""
    grads = _g_loss_gradients()
    p_g0 = tu.Mixture.normal(MU0, S0)
    d_star = lambda x: tu.optimal_d(P_DATA, p_g0, x)                          # noqa: E731
    dlogit = lambda x: -x + (x - MU0) / S0 ** 2                               # noqa: E731  d l / d x
    dx = (lambda x: 1.0, lambda x: (x - MU0) / S0)
    minimax = [tu.expect(p_g0, lambda x, f=f: -d_star(x) * dlogit(x) * f(x)) for f in dx]
    nonsat = [tu.expect(p_g0, lambda x, f=f: -(1 - d_star(x)) * dlogit(x) * f(x)) for f in dx]
    np.testing.assert_allclose(grads["minimax"], minimax, rtol=0.02)
    np.testing.assert_allclose(grads["nonsaturating"], nonsat, rtol=0.02)


# ----------------------------------------------------------------------------------------------
# 5. Hand-checked values, gradients and numerics for every loss
# ----------------------------------------------------------------------------------------------

def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


REAL, FAKE = [0.0, 2.0], [0.0, -1.5]      # -1.5 rather than -1: keeps the hinge away from its kink
# -mean log sigmoid(r) - mean log(1 - sigmoid(f)), written out without softplus.
_BCE = -(math.log(_sig(0.0)) + math.log(_sig(2.0))) / 2 - (math.log(1 - _sig(0.0)) + math.log(1 - _sig(-1.5))) / 2
D_EXPECTED = {"minimax": _BCE, "nonsaturating": _BCE, "mle": _BCE,
              "hinge": (1.0 + 0.0) / 2 + (1.0 + 0.0) / 2}      # relu(1 - r) = [1, 0]; relu(1 + f) = [1, 0]
G_EXPECTED = {
    "minimax": (math.log(1 - _sig(0.0)) + math.log(1 - _sig(-1.5))) / 2,
    "nonsaturating": -(math.log(_sig(0.0)) + math.log(_sig(-1.5))) / 2,
    "mle": -(math.exp(0.0) + math.exp(-1.5)) / 2,
    "hinge": -(0.0 - 1.5) / 2,
}
# d g_loss / d fake_i (mean over 2)
G_GRAD = {
    "minimax": [-_sig(f) / 2 for f in FAKE],
    "nonsaturating": [-(1 - _sig(f)) / 2 for f in FAKE],
    "mle": [-math.exp(f) / 2 for f in FAKE],
    "hinge": [-0.5, -0.5],
}
_BCE_GRAD = ([-(1 - _sig(r)) / 2 for r in REAL], [_sig(f) / 2 for f in FAKE])
D_GRAD = {"minimax": _BCE_GRAD, "nonsaturating": _BCE_GRAD, "mle": _BCE_GRAD,
          "hinge": ([-0.5, 0.0], [0.5, 0.0])}


def test_every_loss_is_hand_checked():
    assert set(LOSSES) == set(G_EXPECTED), "a loss was added or renamed: give it hand-checked values here"
    # A few literal numbers, so the expectations above are themselves checked.
    assert _BCE == pytest.approx((0.6931472 + 0.1269280) / 2 + (0.6931472 + 0.2014133) / 2, abs=1e-6)
    assert G_EXPECTED["nonsaturating"] == pytest.approx((0.6931472 + 1.7014133) / 2, abs=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_loss_values_and_gradients_on_hand_inputs(kind):
    real = torch.tensor(REAL, requires_grad=True)
    fake = torch.tensor(FAKE, requires_grad=True)
    dl = d_loss(kind, real, fake)
    assert dl.item() == pytest.approx(D_EXPECTED[kind], abs=1e-6)
    gr, gf = torch.autograd.grad(dl, (real, fake))
    torch.testing.assert_close(gr, torch.tensor(D_GRAD[kind][0]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gf, torch.tensor(D_GRAD[kind][1]), rtol=1e-5, atol=1e-7)

    fake = torch.tensor(FAKE, requires_grad=True)
    gl = g_loss(kind, fake)
    assert gl.item() == pytest.approx(G_EXPECTED[kind], abs=1e-6)
    (gf,) = torch.autograd.grad(gl, fake)
    torch.testing.assert_close(gf, torch.tensor(G_GRAD[kind]), rtol=1e-5, atol=1e-7)


def test_d_loss_is_minus_value_function():
    gen = torch.Generator().manual_seed(6)
    real, fake = 3 * torch.randn(1000, generator=gen), 3 * torch.randn(1000, generator=gen)
    v = value_function(real, fake)
    for kind in ("minimax", "nonsaturating", "mle"):
        torch.testing.assert_close(d_loss(kind, real, fake), -v)
    # Reference in float64 from the definition E[log D(x)] + E[log(1 - D(G(z)))], D = sigmoid.
    r64, f64 = real.double(), fake.double()
    ref = torch.log(torch.sigmoid(r64)).mean() + torch.log1p(-torch.sigmoid(f64)).mean()
    assert v.item() == pytest.approx(ref.item(), abs=1e-5)
    with pytest.raises(ValueError):
        d_loss("wgan", real, fake)
    with pytest.raises(ValueError):
        g_loss("wgan", fake)


@pytest.mark.parametrize("kind", LOSSES)
def test_extreme_logits_are_finite(kind):
    big = 1e4
    real = torch.tensor([big, -big, 0.0], requires_grad=True)
    fake = torch.tensor([big, -big, 0.0], requires_grad=True)
    dl = d_loss(kind, real, fake)
    gl = g_loss(kind, fake)
    assert torch.isfinite(dl) and torch.isfinite(gl), (dl, gl)
    for loss, leaves in ((dl, (real, fake)), (gl, (fake,))):
        for g in torch.autograd.grad(loss, leaves):
            assert torch.all(torch.isfinite(g)), (kind, g)
    # The stable forms give the exact large values rather than inf: -log sigmoid(-1e4) = 1e4, etc.
    if kind != "hinge":
        assert dl.item() == pytest.approx((big + math.log(2)) / 3 + (big + math.log(2)) / 3, rel=1e-6)
    expected_g = {"minimax": -(big + math.log(2)) / 3, "nonsaturating": (big + math.log(2)) / 3,
                  "mle": -(math.exp(MLE_LOGIT_CLAMP) + 0.0 + 1.0) / 3, "hinge": 0.0}[kind]
    assert gl.item() == pytest.approx(expected_g, rel=1e-6, abs=1e-6)


def test_mle_clamp():
    under, over = MLE_LOGIT_CLAMP - 1.0, MLE_LOGIT_CLAMP + 50.0   # 80: exp still finite in float32, but clamped
    fake = torch.tensor([under, over], requires_grad=True)
    loss = g_loss("mle", fake)
    assert loss.item() == pytest.approx(-(math.exp(under) + math.exp(MLE_LOGIT_CLAMP)) / 2, rel=1e-6)
    (g,) = torch.autograd.grad(loss, fake)
    assert g[0].item() == pytest.approx(-math.exp(under) / 2, rel=1e-6)   # below the clamp: exact gradient
    assert g[1].item() == 0.0                                            # above it: no gradient


@pytest.mark.parametrize("kind", LOSSES)
def test_bfloat16_logits_give_float32_losses(kind):
    gen = torch.Generator().manual_seed(7)
    real = (3 * torch.randn(4096, generator=gen)).bfloat16().requires_grad_()
    fake = (3 * torch.randn(4096, generator=gen)).bfloat16().requires_grad_()
    dl, gl = d_loss(kind, real, fake), g_loss(kind, fake)
    assert dl.dtype == torch.float32 and gl.dtype == torch.float32
    # float64 reference on the very same (bf16-rounded) logits: only float32 rounding may differ.
    dl64, gl64 = d_loss(kind, real.double(), fake.double()), g_loss(kind, fake.double())
    assert dl.item() == pytest.approx(dl64.item(), rel=1e-5, abs=1e-6)
    assert gl.item() == pytest.approx(gl64.item(), rel=1e-5, abs=1e-6)
    # Independent float64 formulas, so that the reference is not just the code under test again.
    r64, f64 = real.detach().double(), fake.detach().double()
    ref_g = {"minimax": -nn.functional.softplus(f64).mean(), "nonsaturating": nn.functional.softplus(-f64).mean(),
             "mle": -torch.exp(f64.clamp(max=MLE_LOGIT_CLAMP)).mean(), "hinge": -f64.mean()}[kind]
    assert gl.item() == pytest.approx(ref_g.item(), rel=1e-5, abs=1e-6)
    gr, gf = torch.autograd.grad(dl + gl, (real, fake))
    assert gr.dtype == torch.bfloat16 and torch.all(torch.isfinite(gr)) and torch.all(torch.isfinite(gf))


def test_r1_penalty_of_linear_d_is_squared_slope():
    torch.manual_seed(8)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], requires_grad=True)
    x = torch.randn(64, 2, 2).requires_grad_()                 # image-like samples, flattened by r1_penalty
    r1 = r1_penalty(x, x.reshape(64, -1) @ w)
    assert r1.item() == pytest.approx(float((w.detach() ** 2).sum()), rel=1e-6)   # ||w||^2 = 14.25
    # create_graph=True: the penalty is differentiable w.r.t. D's parameters, d||w||^2/dw = 2w.
    (gw,) = torch.autograd.grad(r1, w)
    torch.testing.assert_close(gw, 2 * w.detach())
    # Non-linear D(x) = (w.x)^2: grad = 2 (w.x) w, so R1 = mean_i 4 (w.x_i)^2 ||w||^2 (a per-sample mean).
    x = torch.randn(64, 4).requires_grad_()
    s = x @ w
    r1 = r1_penalty(x, s ** 2)
    assert r1.item() == pytest.approx(float((4 * s.detach() ** 2).mean() * (w.detach() ** 2).sum()), rel=1e-5)
