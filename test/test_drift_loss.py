"""Independent check of `dfp_ros.learning.drift_loss.drift_loss` against the reference semantics.

The reference below (`reference_drift`) is written from the eight numbered steps of §4 with plain
Python loops in float64, without looking at tensor tricks; the function under test works in float32,
so comparisons use a tolerance of about 1e-5.

Where §4 is ambiguous the reference follows the implementation's choice, and says so:
- step 5, "sqrt(softmax x softmax), floored at 1e-6": the floor is applied to the product *before*
  the square root (so the smallest affinity is sqrt(1e-6) = 1e-3, before the target weight);
- step 7, "normalise each temperature's force by its RMS": one RMS over the whole batch (all states,
  all generated samples, all coordinates), with the mean square floored at 1e-8 before the root;
- step 3, "mean weighted distance": sum_{b,i,j} w_bj d_bij / sum_{b,i,j} w_bj, over every
  (generated, target) pair including the generated-generated diagonal (whose distance is the floor
  sqrt(1e-8) = 1e-4);
- step 8, "mean squared difference": mean over the G generated samples and the D coordinates of a
  state, giving one number per state.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dfp_ros.learning.drift_loss import drift_loss

ATOL = 1e-5
RTOL = 1e-5


# ----------------------------------------------------------------------------------------------------
# Slow, literal reference of the drift loss (float64, explicit loops)
# ----------------------------------------------------------------------------------------------------
def _softmax(values: list[float]) -> list[float]:
    m = max(values)
    e = [math.exp(v - m) for v in values]
    s = sum(e)
    return [v / s for v in e]


def reference_drift(gen, pos, neg=None, temperatures=(0.1,), weight_gen=None, weight_pos=None,
                    weight_neg=None, self_mask=100.0):
    """Return a dict with `loss` [B], `force_rms` [T], `forces` (list of [B, G, D] per temperature,
    before normalisation), `total` [B, G, D] (sum of normalised forces), `coord_scale`, `scale`,
    `nearest_pos`. Inputs are array-likes; everything is converted to float64 numpy."""
    gen = np.asarray(gen, dtype=np.float64)
    pos = np.asarray(pos, dtype=np.float64)
    B, G, D = gen.shape
    P = pos.shape[1]
    neg = np.zeros((B, 0, D)) if neg is None else np.asarray(neg, dtype=np.float64)
    M = neg.shape[1]
    wg = np.ones((B, G)) if weight_gen is None else np.asarray(weight_gen, dtype=np.float64)
    wp = np.ones((B, P)) if weight_pos is None else np.asarray(weight_pos, dtype=np.float64)
    wn = np.ones((B, M)) if weight_neg is None else np.asarray(weight_neg, dtype=np.float64)

    # Step 1: targets = [generated (no gradient), extra negatives, positives] with weights.
    n_targets = G + M + P
    n_neg = G + M
    targets = [[None] * n_targets for _ in range(B)]
    weights = [[0.0] * n_targets for _ in range(B)]
    for b in range(B):
        for j in range(n_targets):
            if j < G:
                targets[b][j], weights[b][j] = gen[b, j], wg[b, j]
            elif j < n_neg:
                targets[b][j], weights[b][j] = neg[b, j - G], wn[b, j - G]
            else:
                targets[b][j], weights[b][j] = pos[b, j - n_neg], wp[b, j - n_neg]

    # Step 2: plain L2 distance, squared distance floored at 1e-8 before the root.
    dist = [[[0.0] * n_targets for _ in range(G)] for _ in range(B)]
    for b in range(B):
        for i in range(G):
            for j in range(n_targets):
                sq = sum((gen[b, i, k] - targets[b][j][k]) ** 2 for k in range(D))
                dist[b][i][j] = math.sqrt(max(sq, 1e-8))

    # Step 3: one scale for the whole batch = weighted mean distance.
    num = 0.0
    den = 0.0
    for b in range(B):
        for i in range(G):
            for j in range(n_targets):
                num += weights[b][j] * dist[b][i][j]
                den += weights[b][j]
    scale = num / den
    coord_scale = max(scale / math.sqrt(D), 1e-3)
    dist_scale = max(scale, 1e-3)
    xs = gen / coord_scale
    ts = [[np.asarray(targets[b][j]) / coord_scale for j in range(n_targets)] for b in range(B)]
    dn = [[[dist[b][i][j] / dist_scale for j in range(n_targets)] for i in range(G)] for b in range(B)]

    # Step 4: a generated sample never acts on itself.
    for b in range(B):
        for i in range(G):
            dn[b][i][i] += self_mask

    forces = []
    rms_list = []
    total = np.zeros((B, G, D))
    for r in temperatures:
        # Step 5: affinity = sqrt(softmax over targets x softmax over generated), floor, x weights.
        force = np.zeros((B, G, D))
        for b in range(B):
            logits = [[-dn[b][i][j] / r for j in range(n_targets)] for i in range(G)]
            row = [_softmax(logits[i]) for i in range(G)]
            col_t = [_softmax([logits[i][j] for i in range(G)]) for j in range(n_targets)]
            aff = [[math.sqrt(max(row[i][j] * col_t[j][i], 1e-6)) * weights[b][j] for j in range(n_targets)]
                   for i in range(G)]
            # Step 6: coefficients and force.
            for i in range(G):
                sum_neg = sum(aff[i][j] for j in range(n_neg))
                sum_pos = sum(aff[i][j] for j in range(n_neg, n_targets))
                coeffs = [-aff[i][j] * sum_pos if j < n_neg else aff[i][j] * sum_neg for j in range(n_targets)]
                for k in range(D):
                    f = sum(coeffs[j] * ts[b][j][k] for j in range(n_targets))
                    force[b, i, k] = f - sum(coeffs) * xs[b, i, k]
        # Step 7: normalise each temperature's force by its RMS (whole batch), sum over temperatures.
        ms = sum(force[b, i, k] ** 2 for b in range(B) for i in range(G) for k in range(D)) / (B * G * D)
        rms = math.sqrt(max(ms, 1e-8))
        forces.append(force)
        rms_list.append(rms)
        total = total + force / rms
    goal = xs + total

    # Step 8: loss = mean squared difference between the scaled generated sample and the goal.
    loss = np.zeros(B)
    for b in range(B):
        loss[b] = sum((xs[b, i, k] - goal[b, i, k]) ** 2 for i in range(G) for k in range(D)) / (G * D)

    nearest = [min(dist[b][i][j] for j in range(n_neg, n_targets)) for b in range(B) for i in range(G)]
    return {
        "loss": loss,
        "force_rms": np.asarray(rms_list),
        "forces": forces,
        "total": total,
        "coord_scale": coord_scale,
        "scale": scale,
        "nearest_pos": float(np.mean(nearest)),
    }


def reference_grad_gen(ref, G, D):
    """d(sum_b loss_b)/d gen = 2 (gen/cs - goal) / (G D cs) = -2 total / (G D cs)."""
    return -2.0 * ref["total"] / (G * D * ref["coord_scale"])


def _np(t: torch.Tensor | None):
    return None if t is None else t.detach().double().numpy()


# ----------------------------------------------------------------------------------------------------
# Comparison with the reference on random cases
# ----------------------------------------------------------------------------------------------------
CASES = [
    # B, G, P, M, D, temperatures, non-uniform weights
    (1, 2, 1, 0, 1, (0.1,), False),
    (3, 4, 1, 0, 5, (0.1,), False),
    (2, 8, 1, 0, 10, (0.1,), True),
    (2, 3, 4, 2, 3, (0.1,), True),
    (3, 5, 2, 3, 4, (0.02, 0.05, 0.2), False),
    (2, 4, 3, 2, 6, (0.02, 0.05, 0.2, 0.5, 1.0), True),
    (1, 6, 1, 5, 2, (0.05, 1.0), True),
    (4, 2, 2, 1, 7, (0.3,), True),
]


@pytest.mark.parametrize("B,G,P,M,D,temps,weighted", CASES)
def test_matches_reference(B, G, P, M, D, temps, weighted):
    gen_seed = torch.Generator().manual_seed(1000 * B + 100 * G + 10 * P + M + D)
    gen = torch.randn(B, G, D, generator=gen_seed)
    pos = torch.randn(B, P, D, generator=gen_seed) + 0.5
    neg = torch.randn(B, M, D, generator=gen_seed) - 0.3 if M else None
    wg = wp = wn = None
    if weighted:
        wg = torch.rand(B, G, generator=gen_seed) + 0.2
        wp = torch.rand(B, P, generator=gen_seed) * 2 + 0.1
        wn = torch.rand(B, M, generator=gen_seed) + 0.5 if M else None
    g = gen.clone().requires_grad_(True)
    stats: dict = {}
    loss = drift_loss(g, pos, neg, temperatures=temps, weight_gen=wg, weight_pos=wp, weight_neg=wn,
                      stats=stats)
    loss.sum().backward()
    ref = reference_drift(_np(gen), _np(pos), _np(neg), temps, _np(wg), _np(wp), _np(wn))

    assert loss.shape == (B,)
    np.testing.assert_allclose(_np(loss), ref["loss"], rtol=RTOL, atol=ATOL)
    assert stats["force_rms"].shape == (len(temps),)
    np.testing.assert_allclose(_np(stats["force_rms"]), ref["force_rms"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(stats["nearest_pos"]), ref["nearest_pos"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(_np(g.grad), reference_grad_gen(ref, G, D), rtol=1e-4, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# A case worked out by hand
# ----------------------------------------------------------------------------------------------------
def test_hand_computed_case():
    # B=1, G=2, P=1, D=1, no extra negatives, one temperature R=1, all weights 1.
    # Generated x1 = 0, x2 = 1; positive y = 3.
    # Step 1: targets [x1, x2, y] = [0, 1, 3].
    # Step 2: distances (rows x1, x2; diagonal is the floor sqrt(1e-8) = 1e-4):
    #         x1: [1e-4, 1, 3]      x2: [1, 1e-4, 2]
    # Step 3: scale s = (1e-4 + 1 + 3 + 1 + 1e-4 + 2) / 6 = (7 + 2e-4) / 6 = 1.1667;
    #         D = 1, so coordinates are divided by s as well: x_s = [0, 1/s], y_s = 3/s.
    # Step 4: normalised distances  x1: [1e-4/s + 100, 1/s, 3/s]   x2: [1/s, 1e-4/s + 100, 2/s]
    # Step 5: logits = -distance (R = 1). Self terms are ~e^-100, i.e. 0.
    #   softmax over targets, row x1: [0, 1/(1+e^(-2/s)), e^(-2/s)/(1+e^(-2/s))] = [0, .84739, .15261]
    #                         row x2: [1/(1+e^(-1/s)), 0, e^(-1/s)/(1+e^(-1/s))] = [.70206, 0, .29794]
    #   softmax over generated, column x1: [0, 1]; column x2: [1, 0];
    #                           column y: [e^(-3/s), e^(-2/s)] / sum = [.29794, .70206]
    #   affinity = sqrt(max(product, 1e-6)); the self terms hit the floor: sqrt(1e-6) = 1e-3.
    #     row x1: [1e-3, sqrt(.84739 * 1) = .92054, sqrt(.15261 * .29794) = .21324]
    #     row x2: [sqrt(.70206 * 1) = .83789, 1e-3, sqrt(.29794 * .70206) = .45735]
    # Step 6: row x1: sum_neg = 1e-3 + .92054 = .92154, sum_pos = .21324
    #           coeffs = [-1e-3*.21324, -.92054*.21324, .21324*.92154] = [-.000213, -.19629, .19651]
    #           force = sum coeff*target - (sum coeff)*x1 = (-.19629*1 + .19651*3)/s - (.00021)*0 = .33704
    #         row x2: sum_neg = .83789 + 1e-3 = .83889, sum_pos = .45735
    #           coeffs = [-.83789*.45735, -1e-3*.45735, .45735*.83889] = [-.38321, -.000457, .38367]
    #           force = (-.000457*1 + .38367*3)/s - (.000457)*(1/s) = .98616
    # Step 7: RMS = sqrt((.33704^2 + .98616^2) / 2) = .73692; normalised force = [.45736, 1.33821].
    # Step 8: loss = mean((x_s - goal)^2) = mean(normalised force^2) = 1 (one state, one temperature).
    #         d loss / d x_i = 2/(G*D) * (x_i/s - goal_i) / s = -(normalised force_i) / s
    #                        = [-.39201, -1.14700].
    s = (7 + 2e-4) / 6
    e = math.exp
    row1 = [0.0, 1 / (1 + e(-2 / s)), e(-2 / s) / (1 + e(-2 / s))]
    row2 = [1 / (1 + e(-1 / s)), 0.0, e(-1 / s) / (1 + e(-1 / s))]
    col_y = [e(-3 / s) / (e(-3 / s) + e(-2 / s)), e(-2 / s) / (e(-3 / s) + e(-2 / s))]
    a1 = [1e-3, math.sqrt(row1[1]), math.sqrt(row1[2] * col_y[0])]
    a2 = [math.sqrt(row2[0]), 1e-3, math.sqrt(row2[2] * col_y[1])]
    c1 = [-a1[0] * a1[2], -a1[1] * a1[2], a1[2] * (a1[0] + a1[1])]
    c2 = [-a2[0] * a2[2], -a2[1] * a2[2], a2[2] * (a2[0] + a2[1])]
    t = [0.0, 1 / s, 3 / s]
    f1 = sum(c * v for c, v in zip(c1, t, strict=False)) - sum(c1) * 0.0
    f2 = sum(c * v for c, v in zip(c2, t, strict=False)) - sum(c2) * (1 / s)
    rms = math.sqrt((f1 ** 2 + f2 ** 2) / 2)
    assert f1 == pytest.approx(0.33704, abs=1e-5)
    assert f2 == pytest.approx(0.98616, abs=1e-5)
    assert rms == pytest.approx(0.73692, abs=1e-5)

    gen = torch.tensor([[[0.0], [1.0]]], requires_grad=True)
    pos = torch.tensor([[[3.0]]])
    stats: dict = {}
    loss = drift_loss(gen, pos, temperatures=(1.0,), stats=stats)
    loss.sum().backward()
    assert loss.shape == (1,)
    assert float(loss.detach()[0]) == pytest.approx(1.0, abs=1e-5)
    assert float(stats["force_rms"][0]) == pytest.approx(rms, abs=1e-5)
    expected_grad = [-(f1 / rms) / s, -(f2 / rms) / s]
    np.testing.assert_allclose(gen.grad.view(-1).numpy(), expected_grad, atol=1e-5)
    # nearest positive: mean of |0 - 3| and |1 - 3| = 2.5 (input units).
    assert float(stats["nearest_pos"]) == pytest.approx(2.5, abs=1e-5)
    # The goal moves both samples towards the positive (descent direction = -grad > 0).
    assert (gen.grad < 0).all()


# ----------------------------------------------------------------------------------------------------
# Properties named in §4
# ----------------------------------------------------------------------------------------------------
def test_zero_force_when_positive_and_negative_targets_coincide():
    # Extra negatives = positives with equal weights, and the generated samples removed from the
    # negatives by weight_gen = 0: positive and negative target sets are the same distribution, so
    # every coefficient a_j * S on a positive is cancelled by -a_j * S on its negative twin.
    torch.manual_seed(0)
    B, G, P, D = 3, 5, 4, 3
    gen = torch.randn(B, G, D, requires_grad=True)
    pos = torch.randn(B, P, D)
    wp = torch.rand(B, P) + 0.5
    stats: dict = {}
    loss = drift_loss(gen, pos, pos.clone(), temperatures=(0.05, 0.2, 1.0), weight_gen=torch.zeros(B, G),
                      weight_pos=wp, weight_neg=wp.clone(), stats=stats)
    assert torch.allclose(loss, torch.zeros(B), atol=1e-6)
    # The RMS is at its floor sqrt(1e-8) = 1e-4 (force ~ 0 before normalisation).
    assert torch.all(stats["force_rms"] <= 1.0001e-4)
    ref = reference_drift(_np(gen), _np(pos), _np(pos), (0.05, 0.2, 1.0), np.zeros((B, G)), _np(wp), _np(wp))
    assert np.allclose(ref["loss"], 0.0, atol=1e-12)
    # ... whereas with the generated samples counted as negatives (the default) the force is not zero.
    loss_default = drift_loss(gen, pos, pos.clone(), temperatures=(0.05, 0.2, 1.0))
    assert torch.all(loss_default > 0.1)


def test_generated_sample_does_not_attract_itself_single_sample():
    # G = 1, one far positive. The only negative is the sample itself, whose (masked) affinity is the
    # floor sqrt(1e-6) = 1e-3, while the positive's affinity is ~1 (the softmax over the single
    # generated sample is 1). So force = 1e-3 * 1 * (y_s - x_s): pre-normalisation RMS
    # 1e-3 * |y - x| / scale, and the goal lies along y - x.
    x = torch.tensor([[[0.5, -1.0, 2.0]]], requires_grad=True)
    y = torch.tensor([[[4.0, 3.0, -2.0]]])
    stats: dict = {}
    loss = drift_loss(x, y, temperatures=(0.1,), stats=stats)
    loss.sum().backward()
    dist = float((y - x.detach()).norm())
    scale = (1e-4 + dist) / 2  # mean over [self (floored), positive]
    assert float(stats["force_rms"][0]) == pytest.approx(1e-3 * dist / scale, rel=1e-4)
    descent = -x.grad.view(-1)
    direction = (y - x.detach()).view(-1)
    cos = float(descent @ direction / (descent.norm() * direction.norm()))
    assert cos == pytest.approx(1.0, abs=1e-6)
    assert float(loss.detach()[0]) == pytest.approx(1.0, abs=1e-5)


def test_self_mask_matters_and_is_applied():
    # With G >= 2 the mask changes the softmaxes; the implementation matches the masked reference and
    # not one without the mask.
    torch.manual_seed(3)
    gen = torch.randn(2, 3, 2)
    pos = torch.randn(2, 2, 2) * 0.3
    out = _np(drift_loss(gen, pos, temperatures=(0.2, 1.0)))
    masked = reference_drift(_np(gen), _np(pos), temperatures=(0.2, 1.0))["loss"]
    unmasked = reference_drift(_np(gen), _np(pos), temperatures=(0.2, 1.0), self_mask=0.0)["loss"]
    np.testing.assert_allclose(out, masked, rtol=RTOL, atol=ATOL)
    assert np.max(np.abs(out - unmasked)) > 1e-2


def test_gradient_flows_only_through_gen():
    torch.manual_seed(1)
    gen = torch.randn(2, 4, 3, requires_grad=True)
    pos = torch.randn(2, 2, 3, requires_grad=True)
    neg = torch.randn(2, 3, 3, requires_grad=True)
    loss = drift_loss(gen, pos, neg, temperatures=(0.05, 0.2))
    loss.sum().backward()
    assert gen.grad is not None and gen.grad.abs().sum() > 0
    for t in (pos, neg):
        assert t.grad is None or torch.all(t.grad == 0)


def test_weights_receive_no_gradient():
    # Gradient should flow only through gen (module docstring; §4 steps 1 and 8: everything but the
    # generated sample with gradient is stopped). Weights that happen to require grad must not get any.
    torch.manual_seed(2)
    B, G, P, M, D = 2, 4, 2, 2, 3
    gen = torch.randn(B, G, D, requires_grad=True)
    pos, neg = torch.randn(B, P, D), torch.randn(B, M, D)
    wg = torch.full((B, G), 1.0, requires_grad=True)
    wp = torch.full((B, P), 2.0, requires_grad=True)
    wn = torch.full((B, M), 0.5, requires_grad=True)
    loss = drift_loss(gen, pos, neg, weight_gen=wg, weight_pos=wp, weight_neg=wn)
    loss.sum().backward()
    for w in (wg, wp, wn):
        assert w.grad is None or torch.all(w.grad == 0), f"weight got gradient {w.grad}"


@pytest.mark.parametrize("c", [0.2, 3.0, 100.0])
def test_invariant_to_common_rescaling(c):
    # Coordinates are divided by scale / sqrt(D) and distances by scale, with scale ∝ the data, so a
    # common factor c cancels -- up to the squared-distance floor: the self-distance is always
    # sqrt(1e-8) = 1e-4, which enters the batch scale without the factor c. Hence rtol 1e-4, and c
    # kept so that scale / sqrt(D) stays well above the 1e-3 floor.
    torch.manual_seed(4)
    gen = torch.randn(3, 5, 4)
    pos = torch.randn(3, 2, 4)
    neg = torch.randn(3, 2, 4)
    temps = (0.02, 0.05, 0.2)
    base = drift_loss(gen, pos, neg, temperatures=temps)
    scaled = drift_loss(gen * c, pos * c, neg * c, temperatures=temps)
    torch.testing.assert_close(scaled, base, rtol=1e-4, atol=1e-5)


def test_per_temperature_normalisation():
    torch.manual_seed(5)
    B, G, P, M, D = 3, 4, 2, 1, 3
    temps = (0.02, 0.2, 1.0)
    gen, pos, neg = torch.randn(B, G, D), torch.randn(B, P, D), torch.randn(B, M, D)
    stats: dict = {}
    loss = drift_loss(gen, pos, neg, temperatures=temps, stats=stats)
    ref = reference_drift(_np(gen), _np(pos), _np(neg), temps)

    # force_rms: one entry per temperature, equal to the reference's RMS before normalisation.
    assert stats["force_rms"].shape == (len(temps),)
    for t, f in enumerate(ref["forces"]):
        assert ref["force_rms"][t] == pytest.approx(math.sqrt(np.mean(f ** 2)))
    np.testing.assert_allclose(_np(stats["force_rms"]), ref["force_rms"], rtol=1e-4)
    # The pre-normalisation magnitudes differ a lot between temperatures -- which is why each is
    # normalised before summing.
    assert ref["force_rms"].max() / ref["force_rms"].min() > 2

    # loss_b = mean over (generated, coordinate) of (sum_t f_t / rms_t)^2.
    expected = np.mean(sum(f / r for f, r in zip(ref["forces"], ref["force_rms"], strict=False)) ** 2, axis=(1, 2))
    np.testing.assert_allclose(_np(loss), expected, rtol=RTOL, atol=ATOL)

    # With one temperature, the RMS is over the whole batch (the implementation's choice, see the
    # module docstring above): the batch mean of the loss is exactly 1 while single states differ from 1.
    one = drift_loss(gen, pos, neg, temperatures=(0.1,))
    assert float(one.mean()) == pytest.approx(1.0, abs=1e-5)
    assert float((one - 1).abs().max()) > 1e-2


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------
def _bad_inputs():
    g = torch.randn(2, 3, 4)
    p = torch.randn(2, 1, 4)
    n = torch.randn(2, 2, 4)
    return [
        pytest.param({"gen": torch.randn(3, 4), "pos": p}, id="gen-2d"),
        pytest.param({"gen": g, "pos": torch.randn(2, 4)}, id="pos-2d"),
        pytest.param({"gen": g, "pos": torch.randn(3, 1, 4)}, id="pos-batch"),
        pytest.param({"gen": g, "pos": torch.randn(2, 1, 5)}, id="pos-dim"),
        pytest.param({"gen": g, "pos": torch.randn(2, 0, 4)}, id="pos-empty"),
        pytest.param({"gen": g, "pos": p, "neg": torch.randn(1, 2, 4)}, id="neg-batch"),
        pytest.param({"gen": g, "pos": p, "neg": torch.randn(2, 2, 3)}, id="neg-dim"),
        pytest.param({"gen": g, "pos": p, "neg": torch.randn(2, 4)}, id="neg-2d"),
        pytest.param({"gen": g, "pos": p, "weight_gen": torch.ones(2, 4)}, id="weight-gen"),
        pytest.param({"gen": g, "pos": p, "weight_pos": torch.ones(2)}, id="weight-pos"),
        pytest.param({"gen": g, "pos": p, "neg": n, "weight_neg": torch.ones(2, 3)}, id="weight-neg"),
        pytest.param({"gen": g, "pos": p, "temperatures": ()}, id="no-temperatures"),
    ]


@pytest.mark.parametrize("kwargs", _bad_inputs())
def test_bad_shapes_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        drift_loss(**kwargs)


def test_float64_inputs_are_accepted():
    # Not a §4 requirement, but the function takes torch tensors and casts to float32 internally;
    # float64 inputs should work (and match float32 inputs), not crash.
    torch.manual_seed(6)
    gen, pos, neg = torch.randn(2, 3, 2), torch.randn(2, 2, 2), torch.randn(2, 1, 2)
    expected = drift_loss(gen, pos, neg)
    out = drift_loss(gen.double(), pos.double(), neg.double())
    torch.testing.assert_close(out.double(), expected.double(), rtol=1e-5, atol=1e-5)
    out = drift_loss(gen.double(), pos.double())
    torch.testing.assert_close(out.double(), drift_loss(gen, pos).double(), rtol=1e-5, atol=1e-5)
