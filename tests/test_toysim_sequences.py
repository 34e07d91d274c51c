"""toysim.sequences: the autoregressive policy's exact table against a plain loop over tokens,
its gradient against the exponential-family formula, normalisation, and training through
toysim.train.train (batched runs equal runs trained alone)."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.losses import ipo_loss
from shared.sampling import Batch
from toysim.train import train
from toysim.sequences import AutoregressivePolicy, SequenceSpace, bigram_features


def _policy(vocab=3, max_len=3, prompts=2, k=2, runs=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    space = SequenceSpace(vocab, max_len)
    feats = bigram_features(space, torch.randn(prompts, k, generator=g, dtype=torch.float64))
    sft = torch.randn(prompts, space.nodes, vocab + 1, generator=g, dtype=torch.float64)
    return space, AutoregressivePolicy(space, sft, feats, runs), g


def _plain_logp(space, sft, feats, theta, x, tokens):
    """log π(y|x) by walking the tokens one at a time, with dicts and loops only."""
    prefixes = [p for n in range(space.max_len) for p in itertools.product(range(space.vocab), repeat=n)]
    node = {p: i for i, p in enumerate(prefixes)}
    total, prefix = 0.0, ()
    choices = list(tokens) + ([space.vocab] if len(tokens) < space.max_len else [])
    for tok in choices:
        s = node[prefix]
        logits = [float(sft[x, s, v] + sum(feats[x, s, v, j] * theta[j] for j in range(feats.shape[-1]))) for v in range(space.vocab + 1)]
        lse = math.log(sum(math.exp(z) for z in logits))
        total += logits[tok] - lse
        prefix = prefix + (tok,) if tok != space.vocab else prefix
    return total


def test_the_space_enumerates_every_sequence_once():
    space = SequenceSpace(4, 4)
    assert len(space) == 1 + 4 + 16 + 64 + 256 and space.nodes == 1 + 4 + 16 + 64
    assert len(set(space.responses)) == len(space) and int(space.valid.sum(-1).max()) == 4
    assert (space.valid.sum(-1) == torch.where(space.lengths < 4, space.lengths + 1, space.lengths)).all()
    with pytest.raises(ValueError):
        SequenceSpace(0, 3)


def test_the_table_equals_a_plain_loop_over_tokens():
    space, pol, g = _policy()
    theta = torch.randn(2, pol.feats.shape[-1], generator=g, dtype=torch.float64)
    table = pol.table(theta)
    for r, x, n in [(0, 0, 0), (1, 1, 5), (0, 1, len(space) - 1), (1, 0, 7)]:
        want = _plain_logp(space, pol.sft_tok, pol.feats, theta[r].tolist(), x, space.responses[n])
        assert table[r, x, n].item() == pytest.approx(want, abs=1e-10)


@settings(max_examples=25, deadline=None)
@given(vocab=st.integers(1, 3), max_len=st.integers(1, 3), seed=st.integers(0, 10**6), scale=st.floats(0.0, 5.0))
def test_every_prompt_is_a_distribution_over_the_sequences(vocab, max_len, seed, scale):
    _, pol, g = _policy(vocab, max_len, seed=seed)
    theta = scale * torch.randn(2, pol.feats.shape[-1], generator=g, dtype=torch.float64)
    torch.testing.assert_close(pol.table(theta).exp().sum(-1), torch.ones(2, 2, dtype=torch.float64))


def test_the_gradient_is_the_sum_over_tokens_of_phi_minus_its_mean():
    """d log π(y|x)/dθ = Σ_t [φ(x, s_t, y_t) − E_{v~π(·|x,s_t)} φ(x, s_t, v)] (exponential family, per token)."""
    space, pol, g = _policy(runs=1)
    theta = torch.randn(1, pol.feats.shape[-1], generator=g, dtype=torch.float64, requires_grad=True)
    x, n = 1, 11
    pol.pair_logp(theta, torch.tensor([[x]]), torch.tensor([[n]])).sum().backward()
    tok_p = pol.token_logp(theta.detach())[0, x].exp()  # [S, V+1]
    want = torch.zeros_like(theta[0])
    for c in space.choice[n][space.valid[n]].tolist():
        s, v = divmod(c, space.vocab + 1)
        want += pol.feats[x, s, v] - tok_p[s] @ pol.feats[x, s]
    torch.testing.assert_close(theta.grad[0], want)


def test_sampling_follows_the_table():
    space, pol, g = _policy(vocab=2, max_len=2, runs=1)
    x = torch.zeros(1, 40000, dtype=torch.long)
    freq = torch.bincount(pol.sample(x, g)[0], minlength=len(space)).double() / x.shape[1]
    torch.testing.assert_close(freq, pol.probs()[0, 0], atol=0.01, rtol=0)


def test_batched_runs_train_as_they_do_alone():
    """offline IPO through toysim.train.train: two runs stacked in one policy follow the runs
    trained one at a time (same data, same learning rates)."""
    space, pol, g = _policy(runs=2)
    x = torch.randint(0, 2, (24,), generator=g)
    y1, y2 = torch.randint(0, len(space), (2, 24), generator=g)
    d = Batch(x, torch.minimum(y1, y2), torch.maximum(y1, y2), torch.zeros(24, dtype=torch.bool))
    lr = torch.tensor([[0.05], [0.2]], dtype=torch.float64)
    beta = torch.tensor([[0.1], [0.5]], dtype=torch.float64)

    class Same:  # every run reads the same batches: 8 pairs of d per step, in order
        def __init__(self, runs):
            self.runs, self.step = runs, 0

        def next(self):
            i = torch.arange(8) + 8 * (self.step % 3)
            self.step += 1
            return Batch(*(t[i].expand(self.runs, -1) for t in (d.x, d.y_w, d.y_l, d.tie)))

    def run(policy, lr, beta):
        sampler = Same(policy.theta.shape[0])
        loss = lambda w, l, rw, rl, b: ipo_loss(w, l, rw, rl, b)  # noqa: E731
        train(policy, sampler, loss, beta, lr, 6, 3, lambda table, step: {"mean_logp": table.mean((-1, -2))})
        return policy.theta

    both = run(pol, lr, beta)
    alone = []
    for r in range(2):
        _, single, _ = _policy(runs=1)
        alone.append(run(single, lr[r:r + 1], beta[r:r + 1])[0])
    assert both.abs().sum() > 0
    torch.testing.assert_close(both, torch.stack(alone))


def test_pair_logp_equals_the_table_and_its_gradient():
    space, pol, g = _policy(runs=2)
    theta = torch.randn(2, pol.feats.shape[-1], generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randint(0, 2, (2, 9), generator=g)
    y = torch.randint(0, len(space), (2, 9), generator=g)
    fast = pol.pair_logp(theta, x, y)
    ref = pol.table(theta)[torch.arange(2)[:, None], x, y]
    torch.testing.assert_close(fast, ref)
    (g_fast,) = torch.autograd.grad(fast.sum(), theta)
    (g_ref,) = torch.autograd.grad(ref.sum(), theta)
    torch.testing.assert_close(g_fast, g_ref)


def test_ancestral_sampling_follows_the_table_at_a_trained_theta():
    space, pol, g = _policy(vocab=2, max_len=3, runs=2)
    pol.set_theta(torch.randn(2, pol.feats.shape[-1], generator=g, dtype=torch.float64))
    x = torch.tensor([[0], [1]]).expand(2, 40000)
    y = pol.sample(x, g)
    assert (y >= 0).all()
    for r, xi in ((0, 0), (1, 1)):
        freq = torch.bincount(y[r], minlength=len(space)).double() / y.shape[1]
        torch.testing.assert_close(freq, pol.probs()[r, xi], atol=0.01, rtol=0)


def test_exact_kl_and_win_rate_equal_plain_sums_over_every_sequence():
    """shared.metrics' exact KL and win rate on the autoregressive table equal sums written out over
    every enumerated sequence, each log-prob from the plain token loop."""
    from shared.metrics import kl_exact, win_rate_exact

    space, pol, g = _policy(vocab=2, max_len=2, prompts=2, runs=1)
    theta = torch.randn(1, pol.feats.shape[-1], generator=g, dtype=torch.float64)
    pref = torch.rand(2, len(space), len(space), generator=g, dtype=torch.float64)
    pref = (pref + 1 - pref.transpose(1, 2)) / 2  # P(y ≻ y') + P(y' ≻ y) = 1
    zero = [0.0] * pol.feats.shape[-1]
    for x in range(2):
        lp = [_plain_logp(space, pol.sft_tok, pol.feats, theta[0].tolist(), x, y) for y in space.responses]
        lq = [_plain_logp(space, pol.sft_tok, pol.feats, zero, x, y) for y in space.responses]
        kl = sum(math.exp(a) * (a - b) for a, b in zip(lp, lq))
        win = sum(math.exp(lp[i]) * math.exp(lq[j]) * float(pref[x, i, j]) for i in range(len(space)) for j in range(len(space)))
        table = pol.table(theta)[:, x:x + 1]
        assert kl_exact(table, pol.sft_logp[x:x + 1].expand_as(table)).item() == pytest.approx(kl, abs=1e-10)
        assert win_rate_exact(table.exp(), pol.sft_logp[x:x + 1].exp()[None], pref[x:x + 1]).item() == pytest.approx(win, abs=1e-10)


def test_an_autoregressive_world_is_built_from_its_tokens():
    """toysim.env: a response's traits are the sum of its tokens' traits, π_sft is the token-level
    softmax of the SFT logits (a plain loop), the recurrent state follows its recursion, and a
    narrower policy's features are a prefix of a wider one's."""
    from toysim.world import WorldConfig, _echo_states, make_world

    w = make_world(WorldConfig(prompts=3, policy_kind="autoregressive", vocab=3, max_len=2, golden_pairs=16, policy_features=40))
    sp = w.space
    for n, y in enumerate(sp.responses):
        want = sum((w.token_traits[t] for t in y), torch.zeros(w.cfg.traits, dtype=torch.float64))
        torch.testing.assert_close(w.z[n], want)
        lp = _plain_logp(sp, w.sft_tok, torch.zeros(*w.sft_tok.shape, 1, dtype=torch.float64), [0.0], 1, y)
        assert w.sft_logp[1, n].item() == pytest.approx(lp, abs=1e-12)
    assert torch.allclose(w.sft_logp.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    narrow, wide = w.policy_features(0.5), w.policy_features(2.0)
    assert narrow.shape == (3, sp.nodes, 4, 20) and wide.shape[-1] == 80
    torch.testing.assert_close(wide[..., :20], narrow)
    # the recurrent state of prefix (a, b) is tanh(W·h(a) + U·e_b), h(()) = 0
    emb = torch.randn(4, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    h = _echo_states(sp, emb, 3, g)
    g = torch.Generator().manual_seed(5)
    wm = torch.randn(3, 3, generator=g, dtype=torch.float64)
    wm *= 0.9 / torch.linalg.eigvals(wm).abs().max()
    um = torch.randn(3, 2, generator=g, dtype=torch.float64)
    prefixes = [p for n in range(sp.max_len) for p in itertools.product(range(3), repeat=n)]
    state = {(): torch.zeros(3, dtype=torch.float64)}
    for p in prefixes[1:]:
        state[p] = torch.tanh(wm @ state[p[:-1]] + um @ emb[p[-1]])
    torch.testing.assert_close(h, torch.stack([state[p] for p in prefixes]))
    policy = w.make_policy(1.0, 2)
    torch.testing.assert_close(policy.table()[0], w.sft_logp)


def test_ipo_md_mixture_of_a_token_sequence_policy_is_per_token():
    """AutoregressivePolicy.mixture_table against a plain loop: at every node, the next-token
    distribution ∝ π(v|s)^{1−α}·π_sft(v|s)^α, multiplied along each response; fullscale's sampler
    mixes its two models' next-token distributions the same way (tests/test_fullscale_lm.py)."""
    import math

    from toysim.world import WorldConfig, make_world

    w = make_world(WorldConfig(prompts=3, golden_pairs=20, policy_kind="autoregressive", vocab=2, max_len=2, policy_features=12))
    pol = w.make_policy(1.0, 2)
    pol.set_theta(torch.randn(2, pol.theta.shape[1], generator=torch.Generator().manual_seed(0), dtype=pol.theta.dtype))
    alpha, sp = 0.3, w.space
    tok, ref = pol.token_logp(pol.theta), torch.log_softmax(w.sft_tok, -1)
    got = pol.mixture_table(alpha)
    V1 = sp.vocab + 1
    for r in range(2):
        for x in range(3):
            for n in range(len(sp)):
                total = 0.0
                for t in range(sp.max_len + 1):
                    if not sp.valid[n, t]:
                        continue
                    node, v = divmod(int(sp.choice[n, t]), V1)
                    un = [math.exp((1 - alpha) * float(tok[r, x, node, u]) + alpha * float(ref[x, node, u])) for u in range(V1)]
                    total += math.log(un[v] / sum(un))
                assert float(got[r, x, n]) == pytest.approx(total, abs=1e-9)
    assert torch.allclose(got.exp().sum(-1), torch.ones(2, 3, dtype=got.dtype))  # a distribution over responses
    seq = torch.log_softmax((1 - alpha) * pol.table() + alpha * w.sft_logp, -1)  # the sequence-level mixture differs
    assert not torch.allclose(got, seq)
