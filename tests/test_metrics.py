"""shared/metrics.py against plain loops and enumeration."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from shared import metrics as M


def _rand_probs(g, *shape):
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * 2, -1)


@given(st.integers(0, 10_000))
def test_win_rate_exact_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    X, N = 3, 5
    pi, ref = _rand_probs(g, X, N), _rand_probs(g, X, N)
    r = torch.randint(0, 3, (X, N), generator=g).double()  # ties on purpose
    pref = (r[:, :, None] > r[:, None, :]).double() + 0.5 * (r[:, :, None] == r[:, None, :]).double()
    loop = sum(pi[x, y] * ref[x, z] * (1.0 if r[x, y] > r[x, z] else 0.5 if r[x, y] == r[x, z] else 0.0)
               for x in range(X) for y in range(N) for z in range(N)) / X
    assert M.win_rate_exact(pi, ref, pref).item() == pytest.approx(float(loop), abs=1e-12)


def test_win_rate_against_itself_is_half():
    g = torch.Generator().manual_seed(0)
    pi = _rand_probs(g, 4, 6)
    r = torch.randn(4, 6, generator=g, dtype=torch.float64)
    pref = (r[:, :, None] > r[:, None, :]).double() + 0.5 * (r[:, :, None] == r[:, None, :]).double()
    assert M.win_rate_exact(pi, pi, pref).item() == pytest.approx(0.5, abs=1e-12)


@given(st.integers(0, 10_000))
def test_kl_exact_matches_loop_and_is_nonnegative(seed):
    g = torch.Generator().manual_seed(seed)
    p, q = _rand_probs(g, 2, 7), _rand_probs(g, 2, 7)
    loop = sum(float(p[x, y] * (math.log(p[x, y]) - math.log(q[x, y]))) for x in range(2) for y in range(7)) / 2
    kl = M.kl_exact(p.log(), q.log()).item()
    assert kl == pytest.approx(loop, abs=1e-12)
    assert kl >= 0
    assert M.kl_exact(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-15)


def _tiny_lm(seed, V=3, T=3):
    """Next-token logits of two autoregressive models over all prefixes (a lookup by prefix)."""
    g = torch.Generator().manual_seed(seed)
    table_p, table_q = {}, {}
    for t in range(T):
        for prefix in itertools.product(range(V), repeat=t):
            table_p[prefix] = torch.randn(V, generator=g, dtype=torch.float64)
            table_q[prefix] = torch.randn(V, generator=g, dtype=torch.float64)
    return table_p, table_q


def test_tokenwise_kl_estimator_is_unbiased_for_sequence_kl():
    """Sum of exact per-token KLs along y ~ π, averaged over y, equals the sequence KL (enumeration)."""
    V, T = 3, 3
    tp, tq = _tiny_lm(0, V, T)
    seqs = list(itertools.product(range(V), repeat=T))

    def seq_logp(table, y):
        return sum(torch.log_softmax(table[y[:t]], -1)[y[t]] for t in range(T))

    p_seq = torch.stack([seq_logp(tp, y) for y in seqs])
    q_seq = torch.stack([seq_logp(tq, y) for y in seqs])
    exact = float((p_seq.exp() * (p_seq - q_seq)).sum())
    # the estimator on every sequence, weighted by its probability = its expectation
    pl = torch.stack([torch.stack([tp[y[:t]] for t in range(T)]) for y in seqs])  # [S, T, V]
    ql = torch.stack([torch.stack([tq[y[:t]] for t in range(T)]) for y in seqs])
    per_seq = torch.stack([M.kl_tokenwise_estimate(pl[i : i + 1], ql[i : i + 1], torch.ones(1, T)) for i in range(len(seqs))])
    assert float((p_seq.exp() * per_seq).sum()) == pytest.approx(exact, rel=1e-10)
    # and a Monte Carlo average over samples from π lands within 4 standard errors
    g = torch.Generator().manual_seed(1)
    idx = torch.multinomial(p_seq.exp(), 4000, replacement=True, generator=g)
    est = M.kl_tokenwise_estimate(pl[idx], ql[idx], torch.ones(len(idx), T)).item()
    se = per_seq[idx].std().item() / math.sqrt(len(idx))
    assert abs(est - exact) < 4 * se


def test_tokenwise_kl_respects_mask():
    pl, ql = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    full = M.kl_tokenwise_estimate(pl, ql, torch.ones(2, 4))
    masked = M.kl_tokenwise_estimate(pl, ql, mask)
    assert masked < full
    with pytest.raises(ValueError, match="mask"):
        M.kl_tokenwise_estimate(pl, ql, torch.ones(2, 3))


def test_classifier_accuracy_counts_ties_half():
    margin = torch.tensor([1.0, -2.0, 0.0, 3.0])
    first = torch.tensor([True, True, False, False])
    assert M.classifier_accuracy(margin, first).item() == pytest.approx((1 + 0 + 0.5 + 0) / 4)


@given(st.integers(0, 10_000))
def test_classifier_accuracy_exact_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    X, N = 2, 5
    q = _rand_probs(g, X, N)
    s = torch.randn(X, N, generator=g, dtype=torch.float64)
    r = torch.randint(0, 3, (X, N), generator=g).double()
    margin = s[:, :, None] - s[:, None, :]
    label = r[:, :, None] - r[:, None, :]
    accs = []
    for x in range(X):
        num = den = 0.0
        for y in range(N):
            for z in range(N):
                if y == z:
                    continue
                w = float(q[x, y] * q[x, z])
                sm, sl = np.sign(float(margin[x, y, z])), np.sign(float(label[x, y, z]))
                num += w * (0.5 if sm == 0 or sl == 0 else float(sm == sl))
                den += w
        accs.append(num / den)
    assert M.classifier_accuracy_exact(margin, label, q).item() == pytest.approx(np.mean(accs), abs=1e-12)


def test_policy_margin_and_logp_shift():
    a, b, c, d = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.5))
    assert M.policy_margin(a, b, c, d).item() == pytest.approx((-1 + 2) - (-3 + 2.5))
    assert M.logp_shift(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])).item() == pytest.approx(-0.25)


def test_gap_at_matched_kl_recovers_a_known_offset():
    kl = np.geomspace(0.05, 5, 30)
    wr = 0.3 + 0.1 * np.log(kl)
    assert M.gap_at_matched_kl([(kl, wr + 0.05)], [(kl, wr)]) == pytest.approx(0.05, abs=1e-9)
    # a curve covering only part of the range is compared only where both exist
    assert M.gap_at_matched_kl([(kl[10:], wr[10:] + 0.02)], [(kl, wr)]) == pytest.approx(0.02, abs=1e-9)
    # no overlap
    assert math.isnan(M.gap_at_matched_kl([(kl[:5], wr[:5])], [(kl[-5:], wr[-5:])]))


def test_envelope_takes_best_curve_and_ignores_sft_point():
    grid = np.log(np.array([0.1, 1.0]))
    c1 = (np.array([0.0, 0.1, 1.0]), np.array([0.2, 0.5, 0.3]))
    c2 = (np.array([0.0, 0.1, 1.0]), np.array([0.2, 0.4, 0.6]))
    np.testing.assert_allclose(M.envelope_on_grid([c1, c2], grid), [0.5, 0.6])


@given(st.integers(0, 10_000), st.integers(1, 6))
def test_crossfitted_envelope_matches_a_plain_loop(seed, n_curves):
    """Select the best curve on one half, read it on the other, both ways; curves cover
    different KL ranges, so some grid points have fewer candidates or none."""
    rng = np.random.default_rng(seed)
    grid = np.linspace(np.log(0.02), np.log(8), 17)
    curves = []
    for _ in range(n_curves):
        kl = np.sort(np.exp(rng.uniform(np.log(0.01), np.log(10), rng.integers(2, 9))))
        curves.append((kl, rng.uniform(0, 1, kl.size), rng.uniform(0, 1, kl.size)))
    out = M.envelope_on_grid(curves, grid)
    for j, x in enumerate(grid):
        cand = []
        for kl, a, b in curves:
            lk = np.log(kl)
            if lk.min() <= x <= lk.max():
                cand.append((np.interp(x, lk, a), np.interp(x, lk, b)))
        if not cand:
            assert math.isnan(out[j])
            continue
        best_on_a = max(cand, key=lambda c: c[0])
        best_on_b = max(cand, key=lambda c: c[1])
        assert out[j] == pytest.approx(0.5 * (best_on_a[1] + best_on_b[0]), abs=1e-12)


def test_crossfitting_removes_the_winners_curse():
    """Nine configurations with the same true curve, each measured with noise on two halves:
    the plain envelope of the full estimates is biased upward, the cross-fitted one is not."""
    rng = np.random.default_rng(0)
    kl = np.geomspace(0.05, 5, 12)
    truth = 0.4 + 0.05 * np.log(kl)
    grid = np.log(kl[1:-1])
    plain, crossed = [], []
    for _ in range(300):
        halves = [(truth + rng.normal(0, 0.03, kl.size), truth + rng.normal(0, 0.03, kl.size)) for _ in range(9)]
        plain.append(M.envelope_on_grid([(kl, (a + b) / 2) for a, b in halves], grid) - truth[1:-1])
        crossed.append(M.envelope_on_grid([(kl, a, b) for a, b in halves], grid) - truth[1:-1])
    assert np.mean(plain) > 0.02  # E[max of 9 N(0, 0.021²)] ≈ 1.49 × 0.021
    assert abs(np.mean(crossed)) < 0.003
    with pytest.raises(ValueError, match="halves"):
        M.envelope_on_grid([(kl, truth), (kl, truth, truth)], grid)


def test_seed_ci_matches_t_interval():
    v = [0.1, 0.2, 0.4, 0.3]
    m, h = M.seed_ci(v)
    assert m == pytest.approx(0.25)
    # t_{0.975, 3} = 3.182446305284263
    assert h == pytest.approx(3.182446305284263 * np.std(v, ddof=1) / 2, rel=1e-9)
    assert math.isnan(M.seed_ci([0.3])[1])


def test_the_per_sample_kl_sums_to_the_estimate_and_ignores_impossible_tokens():
    """kl_tokenwise_per_sample's mean is kl_tokenwise_estimate; a token π gives probability 0
    (logit −∞ in both models, as at a masked position) adds 0, not nan."""
    g = torch.Generator().manual_seed(0)
    pl, ql = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    per = M.kl_tokenwise_per_sample(pl, ql, mask)
    assert per.shape == (3,) and torch.allclose(per.mean(), M.kl_tokenwise_estimate(pl, ql, mask))
    want = [sum(float((torch.softmax(pl[i, t], -1) * (torch.log_softmax(pl[i, t], -1) - torch.log_softmax(ql[i, t], -1))).sum())
                for t in range(4) if mask[i, t]) for i in range(3)]  # a plain loop
    assert per.tolist() == pytest.approx(want, rel=1e-5)
    pl[0, 0, 0] = ql[0, 0, 0] = -float("inf")
    assert torch.isfinite(M.kl_tokenwise_per_sample(pl, ql, mask)).all()


def test_budget_gap_on_a_case_solved_by_hand():
    """Online reaches 0.6 at KL 1 and stays; offline's sweep reaches 0.55 at KL 0.1 and no
    further. Every budget from online's first checkpoint (KL 0.1) to its last (KL 1) is a
    budget where offline's best is 0.55; online's best is 0.5 below KL 1 (its SFT point and a
    checkpoint at 0.1 with 0.5) and 0.6 at KL 1: only the last of the 50 budgets, so the mean
    is (49·(0.5 − 0.55) + (0.6 − 0.55)) / 50."""
    online = [(np.array([0.0, 0.1, 1.0]), np.array([0.5, 0.5, 0.6]))]
    offline = [(np.array([0.0, 0.1]), np.array([0.5, 0.55])), (np.array([0.0, 0.05]), np.array([0.5, 0.52]))]
    assert M.budget_gap(online, offline) == pytest.approx((49 * -0.05 + 0.05) / 50, abs=1e-12)
    assert math.isnan(M.budget_gap([(np.array([0.0]), np.array([0.5]))], offline))  # online never leaves SFT


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000))
def test_budget_gap_equals_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    curve = lambda n: (np.concatenate([[0.0], np.sort(rng.uniform(1e-3, 5, n))]), rng.uniform(0, 1, n + 1))  # noqa: E731
    a, b = [curve(6)], [curve(5), curve(4)]
    lo, hi = a[0][0][1:].min(), a[0][0].max()
    total = 0.0
    for i in range(50):
        k = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / 49)
        best_a = max(w for c in a for kl, w in zip(*c) if kl <= k * (1 + 1e-12) or kl < 1e-3)
        best_b = max(w for c in b for kl, w in zip(*c) if kl <= k * (1 + 1e-12) or kl < 1e-3)
        total += best_a - best_b
    assert M.budget_gap(a, b) == pytest.approx(total / 50, abs=1e-9)
