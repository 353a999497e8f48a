"""Reference values for medfed's RDP accountant tests.

Computes epsilon (and the optimal order) of the Poisson-subsampled Gaussian
mechanism composed over `steps`, with Google's dp-accounting library
(RdpAccountant, its default orders, the Balle et al. 2020 conversion), and
the smallest noise multiplier reaching a target epsilon by bisection on it.
The printed Rust table is pasted into models/src/privacy/rdp.rs.

    python3 -m venv V && V/bin/pip install dp-accounting==0.6.0
    V/bin/python scripts/reference/rdp_reference_values.py
"""
import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant as rdp
from scipy import special

CASES = [  # (q, sigma, steps, delta)
    (256 / 60000, 1.1, 14063, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.01, 4.0, 10000, 1e-5),
    (0.1, 1.0, 100, 1e-5),
    (1.0, 1.0, 1, 1e-5),
    (1.0, 10.0, 50, 1e-5),
    (0.2, 2.0, 200, 1e-5),
    (0.05, 0.8, 500, 1e-5),
    (0.001, 1.5, 100000, 1e-5),
    (0.5, 5.0, 30, 1e-5),
    (0.2, 1.2, 100, 1e-6),
    (0.02, 0.6, 200, 1e-5),
]

INVERSE = [  # (target epsilon, q, steps, delta)
    (1.0, 0.2, 100, 1e-5),
    (3.0, 0.2, 100, 1e-5),
    (8.0, 0.2, 100, 1e-5),
    (1.0, 0.01, 10000, 1e-5),
    (0.5, 1.0, 10, 1e-5),
]


# DP-SGD composed with the one-off release of the record count (a Gaussian
# of sensitivity 1), both under add/remove-one: (q, sigma, steps, count
# sigma, delta). And update-level DP, whose noise std is sigma * 2C for the
# replace-the-dataset relation: a Gaussian of multiplier sigma per round,
# (sigma, rounds, delta).
WITH_COUNT = [
    (1.0, 30.0, 400, 10.0, 1e-5),
    (0.2, 1.2, 100, 10.0, 1e-5),
    (0.01, 1.0, 1000, 20.0, 1e-5),
    (1.0, 5.0, 50, 5.0, 1e-6),
]
UPDATE_LEVEL = [
    (4.0, 5, 1e-5),
    (2.0, 5, 1e-5),
    (10.0, 40, 1e-5),
    (1.5, 10, 1e-6),
]


def epsilon_with_count(q, sigma, steps, count_sigma, delta):
    acc = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.SelfComposedDpEvent(event, steps), dp_accounting.GaussianDpEvent(count_sigma)]
        )
    )
    return acc.get_epsilon_and_optimal_order(delta)


def epsilon_update_level(sigma, rounds, delta):
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), rounds))
    return acc.get_epsilon_and_optimal_order(delta)


def epsilon(q, sigma, steps, delta):
    acc = rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return acc.get_epsilon_and_optimal_order(delta)


def noise(target, q, steps, delta):
    lo, hi = 1e-3, 1.0
    while epsilon(q, hi, steps, delta)[0] > target:
        lo, hi = hi, hi * 2
    while (hi - lo) / hi > 1e-9:
        mid = (lo + hi) / 2
        if epsilon(q, mid, steps, delta)[0] > target:
            lo = mid
        else:
            hi = mid
    return hi


print("// (q, sigma, steps, delta, epsilon, optimal order)")
for q, s, t, d in CASES:
    eps, order = epsilon(q, s, t, d)
    print(f"({q!r}, {s!r}, {t}, {d!r}, {float(eps)!r}, {float(order)!r}),")
print("// (target epsilon, q, steps, delta, noise multiplier)")
for e, q, t, d in INVERSE:
    print(f"({e!r}, {q!r}, {t}, {d!r}, {noise(e, q, t, d)!r}),")
print("// (q, sigma, steps, count sigma, delta, epsilon, optimal order)")
for q, s, t, c, d in WITH_COUNT:
    eps, order = epsilon_with_count(q, s, t, c, d)
    print(f"({q!r}, {s!r}, {t}, {c!r}, {d!r}, {float(eps)!r}, {float(order)!r}),")
print("// (sigma, rounds, delta, epsilon, optimal order)")
for s, t, d in UPDATE_LEVEL:
    eps, order = epsilon_update_level(s, t, d)
    print(f"({s!r}, {t}, {d!r}, {float(eps)!r}, {float(order)!r}),")
print("// log erfc(30):", math.log(2) + special.log_ndtr(-30 * 2 ** 0.5))
