"""The LLM path against independent references, on models small enough to enumerate.

A tiny GPT-2 over a 7-token vocabulary with responses of at most 2 tokens has
31 possible responses per prompt, so every expectation is an exact sum:
sequence log-probs against a token-by-token loop, the KV-cache sampler against
a full forward, the token-wise KL estimator against the exact sequence KL, and
the LLM path's IPO loss against toysim's exact population loss.
"""

import itertools

import pytest

pytest.importorskip("transformers")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fullscale.decode import sample_responses
from fullscale.lm import PMOracle, Prompts, pm_scores, response_logits, response_mask, sequence_logp, tokenwise_kl
from fullscale.models import ModelSpec, build_model, special_ids, word_tokenizer
from shared import losses
from shared.metrics import kl_exact
from toysim.policy import gather_log_softmax
from toysim.theory import population_loss

TOK = word_tokenizer(["a", "b"])
IDS = special_ids(TOK)
EOS, PAD, CLS = IDS["eos"], IDS["pad"], IDS["cls"]
V = len(TOK)
SPEC = ModelSpec(width=16, layers=2, heads=2, max_len=16)
# prompts of different lengths, left-padded
PROMPTS = Prompts(torch.tensor([[PAD, PAD, 5, 6], [5, 6, 6, 5], [PAD, 6, 5, 5]]),
                  torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]))


def tiny(seed=0, arch="gpt2"):
    m = build_model(ModelSpec(arch=arch, width=16, layers=2, heads=2, max_len=16), V, IDS, seed)
    with torch.no_grad():  # sharpen the random init so distributions are far from uniform
        for p in m.parameters():
            p.mul_(3.0)
    return m


def all_responses(T=2):
    """Every response of length ≤ T the policy can emit (pad is never emitted mid-response)."""
    toks = [t for t in range(V) if t != PAD]
    out = []
    for n in range(1, T + 1):
        for seq in itertools.product(toks, repeat=n):
            if EOS in seq[:-1]:
                continue
            if n < T and seq[-1] != EOS:
                continue
            out.append(list(seq) + [PAD] * (T - n))
    return torch.tensor(out)


def table(model, T=2):
    """log π(y|x) for every prompt x and enumerable response y: [X, N]."""
    Y = all_responses(T)
    X = len(PROMPTS.ids)
    x = torch.arange(X).repeat_interleave(len(Y))
    with torch.no_grad():
        return sequence_logp(model, PROMPTS, x, Y.repeat(X, 1), EOS, PAD).reshape(X, len(Y))


def test_sequence_logp_is_a_token_by_token_sum():
    m = tiny()
    y = torch.tensor([[5, 6, EOS, PAD], [6, EOS, PAD, PAD], [5, 5, 6, 5]])
    x = torch.tensor([0, 1, 2])
    got = sequence_logp(m, PROMPTS, x, y, EOS, PAD)
    for i in range(3):  # reference: unpadded prompt, one forward per token, plain loop
        seq = PROMPTS.ids[x[i]][PROMPTS.mask[x[i]].bool()].tolist()
        total = 0.0
        for tok in y[i].tolist():
            if tok == PAD:
                break
            logits = m(input_ids=torch.tensor([seq])).logits[0, -1].detach().clone()
            logits[PAD] = float("-inf")
            total += torch.log_softmax(logits, -1)[tok].item()
            seq.append(tok)
            if tok == EOS:
                break
        assert got[i].item() == pytest.approx(total, abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("T", [1, 4])
def test_a_repeated_prompt_run_once_gives_the_log_probs_and_gradients_of_one_pass(arch, T, monkeypatch):
    """Under ``--train.numerics fast`` rows sharing a prompt (a pair, k samples) take
    ``_shared_prompt_logits``: the prompt's body once per prompt, the responses on its cache.
    Against one pass per row over [prompt | response] (``_plain`` patched off), in float64: the log-probs to 1e-12 and every gradient
    to 1e-6 of its largest entry (Llama's rotary angles are computed in float32 whatever the
    model's dtype, so its two paths agree to float32 rounding only)."""
    import fullscale.lm as L

    m = tiny(arch=arch).double().train()
    x = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    y = torch.tensor([[5, 6, EOS, PAD], [6, EOS, PAD, PAD], [5, 5, 5, 5], [EOS, PAD, PAD, PAD], [6, 6, 5, EOS],
                      [5, EOS, PAD, PAD], [6, 6, 6, 6]])[:, :T]
    calls = []
    real = L._shared_prompt_logits
    monkeypatch.setattr(L, "_shared_prompt_logits", lambda *a: calls.append(1) or real(*a))

    def logp_and_grads():
        lp = sequence_logp(m, PROMPTS, x, y, EOS, PAD, fast=True)
        return lp, torch.autograd.grad((lp * torch.linspace(0.5, 1.5, len(x), dtype=lp.dtype)).sum(), list(m.parameters()))

    shared, g_shared = logp_and_grads()
    assert calls, "the repeated prompts did not take the shared path"
    monkeypatch.setattr(L, "_plain", lambda model: False)
    plain, g_plain = logp_and_grads()
    assert len(calls) == 1
    torch.testing.assert_close(shared, plain, atol=1e-12, rtol=0)
    for a, b in zip(g_shared, g_plain):
        assert (a - b).abs().max() <= 1e-6 * b.abs().max()
    exact = sequence_logp(m, PROMPTS, x, y, EOS, PAD)  # the default: the output layer on every position, then cut
    torch.testing.assert_close(exact, plain, atol=1e-12, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_enumerated_responses_sum_to_one(arch):
    probs = table(tiny(arch=arch)).exp().sum(-1)
    torch.testing.assert_close(probs, torch.ones_like(probs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_sampler_matches_full_forward(arch):
    m = tiny(arch=arch)
    x = torch.tensor([0, 1, 2, 0, 1, 2])
    y, step_logits = sample_responses(m, PROMPTS, x, 5, EOS, PAD, torch.Generator().manual_seed(0), return_logits=True)
    full, mask = response_logits(m, PROMPTS, x, y, EOS, PAD)
    torch.testing.assert_close(step_logits[mask], full[mask], atol=1e-4, rtol=0)
    assert not ((y == PAD) & response_mask(y, EOS, PAD)).any()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mixture_sampler_draws_each_token_from_the_geometric_mixture(alpha):
    """IPO-MD's sampler: each token from log-softmax of (1−α)·log π + α·log π_ref, per prefix,
    checked against full forwards of both models along the sampled responses."""
    from shared.sampling import geometric_mixture

    pol, ref = tiny(0), tiny(1)
    x = torch.tensor([0, 1, 2, 0, 1, 2])
    y, mixed = sample_responses(pol, PROMPTS, x, 5, EOS, PAD, torch.Generator().manual_seed(0), return_logits=True, mix=(ref, alpha))
    lp, mask = response_logits(pol, PROMPTS, x, y, EOS, PAD)
    lr, _ = response_logits(ref, PROMPTS, x, y, EOS, PAD)
    want = geometric_mixture(torch.log_softmax(lp, -1), torch.log_softmax(lr, -1), alpha)
    torch.testing.assert_close(mixed[mask], want[mask], atol=1e-4, rtol=0)
    # the same per-token mixture by a plain loop over the vocabulary, at every real position of the first response
    import math

    a, b = torch.log_softmax(lp, -1)[0].detach().double(), torch.log_softmax(lr, -1)[0].detach().double()
    mixed = mixed.detach()
    def term(u, w):  # α = 0 or 1 is exactly one model (0·(−inf) would be nan where a token is impossible)
        return u if alpha == 0.0 else w if alpha == 1.0 else (1 - alpha) * u + alpha * w

    for t in torch.nonzero(mask[0]).flatten().tolist():
        un = [math.exp(term(float(a[t, v]), float(b[t, v]))) for v in range(a.shape[-1])]
        for v in range(a.shape[-1]):
            if un[v] == 0.0:
                assert float(mixed[0, t, v]) == -math.inf
            else:
                assert float(mixed[0, t, v]) == pytest.approx(math.log(un[v] / sum(un)), abs=1e-4)


def test_sampler_draws_from_the_scored_distribution():
    m = tiny()
    lp = table(m)[0]
    x = torch.zeros(20000, dtype=torch.long)
    y = sample_responses(m, PROMPTS, x, 2, EOS, PAD, torch.Generator().manual_seed(1))
    Y = all_responses()
    idx = (y[:, None, :] == Y[None]).all(-1).float().argmax(-1)
    freq = torch.bincount(idx, minlength=len(Y)).float() / len(x)
    assert (freq - lp.exp()).abs().max() < 0.015


def test_tokenwise_kl_equals_exact_kl_by_enumeration():
    pi, ref = tiny(0), tiny(1)
    lp, lq = table(pi), table(ref)
    exact = kl_exact(lp, lq)  # Σ_y π(y)[log π(y) − log π_ref(y)], mean over prompts
    Y = all_responses()
    X = len(PROMPTS.ids)
    x = torch.arange(X).repeat_interleave(len(Y))
    per_y = tokenwise_kl(pi, ref, PROMPTS, x, Y.repeat(X, 1), EOS, PAD).reshape(X, len(Y))
    expected_estimate = (lp.exp() * per_y).sum(-1).mean()  # E_{y~π} of the estimator, exactly
    assert expected_estimate.item() == pytest.approx(exact.item(), rel=1e-4)
    # and the sampled estimate (the paper's procedure) converges to it
    xs = torch.arange(X).repeat(3000)
    ys = sample_responses(pi, PROMPTS, xs, 2, EOS, PAD, torch.Generator().manual_seed(2))
    assert tokenwise_kl(pi, ref, PROMPTS, xs, ys, EOS, PAD).mean().item() == pytest.approx(exact.item(), rel=0.05)


def test_llm_ipo_loss_equals_toysim_population_loss():
    """Same pairs, same weights: the LLM path (sequence log-probs of token tensors) and
    toysim's exact computation (a table over enumerated responses) give the same loss."""
    pi, ref = tiny(0), tiny(1)
    lp, lq = table(pi), table(ref)
    Y = all_responses()
    X, N = lp.shape
    g = torch.Generator().manual_seed(3)
    pref = torch.rand(X, N, N, generator=g, dtype=torch.float64)
    pref = (pref + 1 - pref.transpose(1, 2)) / 2  # a valid preference: P(y≻y') + P(y'≻y) = 1
    mu, beta = lq.exp().double(), 0.5
    toy = population_loss(losses.ipo_loss, lp.double(), lq.double(), mu, pref, beta)
    # the LLM path: every ordered pair of responses as token tensors, per-pair losses, same weights
    xi, i, j = torch.meshgrid(torch.arange(X), torch.arange(N), torch.arange(N), indexing="ij")
    xi, i, j = xi.flatten(), i.flatten(), j.flatten()
    with torch.no_grad():
        f = lambda m, idx: sequence_logp(m, PROMPTS, xi, Y[idx], EOS, PAD).double()  # noqa: E731
        per_pair = losses.ipo_loss(f(pi, i), f(pi, j), f(ref, i), f(ref, j), beta)
    w = (mu[xi, i] * mu[xi, j] * pref[xi, i, j])
    llm = (w * per_pair).reshape(X, -1).sum(-1).mean()
    assert llm.item() == pytest.approx(toy.item(), rel=1e-5)
    # and toysim's sampled-pair gather reads the same log-probs off the table
    k = torch.randint(N, (1, 40), generator=g)
    xk = torch.randint(X, (1, 40), generator=g)
    torch.testing.assert_close(gather_log_softmax(lp[None], xk, k)[0],
                               sequence_logp(pi, PROMPTS, xk[0], Y[k[0]], EOS, PAD).detach(), atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2), st.lists(st.sampled_from([5, 6, CLS]), min_size=1, max_size=3),
       st.lists(st.sampled_from([5, 6]), min_size=1, max_size=3))
def test_pm_score_of_a_padded_row_equals_the_packed_sequence(x, y1, y2):
    pm = build_model(SPEC, V, IDS, 4, head=True)
    T = 4
    pad = lambda y: torch.tensor([(y + [EOS])[:T] + [PAD] * (T - len(y) - 1)])  # noqa: E731
    got = pm_scores(pm, PROMPTS, torch.tensor([x]), [pad(y1), pad(y2)], EOS, PAD, CLS)
    prompt = PROMPTS.ids[x][PROMPTS.mask[x].bool()].tolist()
    packed = torch.tensor([prompt + (y1 + [EOS])[:T] + (y2 + [EOS])[:T] + [CLS]])
    with torch.no_grad():
        ref = pm.score(pm.base_model(input_ids=packed).last_hidden_state[:, -1]).squeeze(-1)
    torch.testing.assert_close(got.detach(), ref, atol=1e-5, rtol=0)


def test_pairwise_oracle_margin_is_antisymmetric():
    pm = build_model(SPEC, V, IDS, 5, head=True)
    o = PMOracle(pm, PROMPTS, "pairwise", EOS, PAD, CLS)
    x = torch.tensor([0, 1, 2])
    y1, y2 = torch.tensor([[5, EOS], [6, 6], [5, 5]]), torch.tensor([[6, EOS], [EOS, PAD], [6, 5]])
    torch.testing.assert_close(o.margin(x, y1, y2), -o.margin(x, y2, y1))
    with pytest.raises(ValueError, match="pairwise"):
        PMOracle(pm, PROMPTS, "pointwise", EOS, PAD, CLS)
