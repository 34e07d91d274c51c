"""Training loops of the LLM path: ordered replay reproduces the online run exactly,
and a run resumed from its saved state reproduces the uninterrupted run."""

import copy

import pytest

pytest.importorskip("transformers")

import torch

from fullscale.decode import LMPolicy
from fullscale.lm import PMOracle, Prompts, sequence_logp
from fullscale.models import ModelSpec, build_model, special_ids, word_tokenizer
from fullscale.train import optimise, supervised
from shared.sampling import OfflineSampler, OnlineSampler, RefreshSampler, ReplaySampler, RolloutSampler

TOK = word_tokenizer(["a", "b", "c"])
IDS = special_ids(TOK)
EOS, PAD, CLS = IDS["eos"], IDS["pad"], IDS["cls"]
SPEC = ModelSpec(width=16, layers=1, heads=2, max_len=24)
PROMPTS = Prompts(torch.tensor([[PAD, 5, 6], [5, 6, 7], [PAD, PAD, 7], [6, 6, 5]]), torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [1, 1, 1]]))


def world():
    policy = build_model(SPEC, len(TOK), IDS, 0)
    pm = build_model(SPEC, len(TOK), IDS, 1, head=True)
    return policy, copy.deepcopy(policy), PMOracle(pm, PROMPTS, "pairwise", EOS, PAD, CLS)


def online_run(model, ref, oracle, steps=6, **kw):
    g = torch.Generator().manual_seed(0)
    sampler = OnlineSampler(LMPolicy(model, PROMPTS, 4, EOS, PAD), oracle, torch.arange(4), (8,), g)
    evaluate = lambda step: {"p0": float(next(model.parameters()).detach().sum())}  # noqa: E731
    series = optimise(model, ref, PROMPTS, sampler, "ipo", 0.1, 1e-2, steps, {2, 4, steps}, evaluate, EOS, PAD, **kw)
    return series, sampler


def test_ordered_replay_reproduces_the_online_run_exactly():
    model, ref, oracle = world()
    start = copy.deepcopy(model.state_dict())
    series, sampler = online_run(model, ref, oracle)
    replayed = build_model(SPEC, len(TOK), IDS, 0)
    replayed.load_state_dict(start)
    rs = optimise(replayed, ref, PROMPTS, ReplaySampler(sampler.log, 1), "ipo", 0.1, 1e-2, 6, {2, 4, 6},
                  lambda step: {"p0": float(next(replayed.parameters()).detach().sum())}, EOS, PAD)
    assert rs == series
    for (k, a), b in zip(model.state_dict().items(), replayed.state_dict().values()):
        assert torch.equal(a, b), k
    # a uniform shuffle of the same stream does not (the test can fail)
    shuffled = build_model(SPEC, len(TOK), IDS, 0)
    shuffled.load_state_dict(start)
    optimise(shuffled, ref, PROMPTS, ReplaySampler(sampler.log, 6, torch.Generator().manual_seed(1)), "ipo", 0.1, 1e-2, 6,
             set(), lambda s: {}, EOS, PAD)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shuffled.state_dict().values()))


@pytest.mark.parametrize("kill_at", [("step", 5), ("save", 1), ("save", 3)])
@pytest.mark.parametrize("source", ["online", "offline", "refresh", "rlhf"])
def test_resume_from_saved_state_reproduces_the_uninterrupted_run(tmp_path, source, kill_at, monkeypatch):
    """Killed after 5 optimiser steps, right after the step-0 save (evaluated, not yet
    trained), or right after the save at step 3's checkpoint: the resumed run evaluates
    every checkpoint once and ends with the uninterrupted run's series and weights."""
    def run(state_path, stop_after=None):
        model, ref, oracle = world()
        g = torch.Generator().manual_seed(0)
        loss = "ipo"
        if source == "online":
            sampler = OnlineSampler(LMPolicy(model, PROMPTS, 4, EOS, PAD), oracle, torch.arange(4), (8,), g)
        elif source == "refresh":
            sampler = RefreshSampler(OnlineSampler(LMPolicy(model, PROMPTS, 4, EOS, PAD), oracle, torch.arange(4), (8,), g), every=3)
        elif source == "rlhf":
            reward = lambda x, y: (y == 5).sum(-1).float() - 0.1 * x.float()  # noqa: E731  (any pointwise reward)
            sampler, loss = RolloutSampler(LMPolicy(model, PROMPTS, 4, EOS, PAD), reward, torch.arange(4), (4,), 3, g), "rloo"
        else:
            from shared.preferences import label_pairs
            from shared.sampling import Batch

            x = torch.arange(4).repeat(5)
            y1 = torch.randint(5, 8, (20, 4), generator=torch.Generator().manual_seed(2))
            y2 = torch.randint(5, 8, (20, 4), generator=torch.Generator().manual_seed(3))
            sampler = OfflineSampler(Batch(x, *label_pairs(oracle, x, y1, y2, torch.Generator().manual_seed(4))), 8, g)
        if stop_after is not None:  # simulate a kill: the loop raises after this many optimiser steps
            calls = {"n": 0}

            def fault(event="step"):
                calls["n"] += event == stop_after[0]
                if calls["n"] >= stop_after[1]:
                    raise KeyboardInterrupt

            monkeypatch.setattr("fullscale.train.fault_point", fault)
        else:
            monkeypatch.setattr("fullscale.train.fault_point", lambda event="step": None)
        evaluate = lambda step: {"p0": float(next(model.parameters()).detach().sum())}  # noqa: E731
        series = optimise(model, ref, PROMPTS, sampler, loss, 0.1, 1e-2, 9, {3, 9}, evaluate, EOS, PAD,
                          state_path=state_path, save_every=2)
        return series, model

    full, m_full = run(None)
    path = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, stop_after=kill_at)
    assert path.exists()
    resumed, m_res = run(path)
    assert resumed == full
    for a, b in zip(m_full.state_dict().values(), m_res.state_dict().values()):
        assert torch.equal(a, b)


def test_sft_raises_the_likelihood_of_its_data():
    model = build_model(SPEC, len(TOK), IDS, 0)
    x = torch.arange(4)
    y = torch.tensor([[5, EOS, PAD, PAD], [6, 6, EOS, PAD], [7, EOS, PAD, PAD], [5, 7, EOS, PAD]])
    hist = supervised(model, PROMPTS, x, y, EOS, PAD, lr=1e-2, epochs=30, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert hist[-1] < 0.5 * hist[0]


def test_refresh_every_step_is_the_online_run_for_a_language_model():
    model, ref, oracle = world()
    start = copy.deepcopy(model.state_dict())
    series, _ = online_run(model, ref, oracle)
    again = build_model(SPEC, len(TOK), IDS, 0)
    again.load_state_dict(start)
    sampler = RefreshSampler(OnlineSampler(LMPolicy(again, PROMPTS, 4, EOS, PAD), oracle, torch.arange(4), (8,), torch.Generator().manual_seed(0)), 1)
    rs = optimise(again, ref, PROMPTS, sampler, "ipo", 0.1, 1e-2, 6, {2, 4, 6},
                  lambda step: {"p0": float(next(again.parameters()).detach().sum())}, EOS, PAD)
    assert rs == series
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_rlhf_raises_the_reward_it_is_trained_on():
    """RLOO with a reward for emitting token 5: after training, the policy emits it more."""
    from fullscale.decode import sample_responses

    model, ref, _ = world()
    reward = lambda x, y: (y == 5).sum(-1).float()  # noqa: E731
    sampler = RolloutSampler(LMPolicy(model, PROMPTS, 4, EOS, PAD), reward, torch.arange(4), (8,), 4, torch.Generator().manual_seed(0))

    def mean_reward():
        y = sample_responses(model, PROMPTS, torch.arange(4).repeat(64), 4, EOS, PAD, torch.Generator().manual_seed(9))
        return float((y == 5).sum(-1).float().mean())

    before = mean_reward()
    optimise(model, ref, PROMPTS, sampler, "rloo", 0.01, 3e-2, 40, set(), lambda s: {}, EOS, PAD)
    assert mean_reward() > before + 0.5


def small_sampler(kind, pol, oracle):
    """Six pairs a step: online from ``pol`` labelled by ``oracle``, offline from fixed pairs, or RLHF rollouts (k = 3)."""
    from shared.sampling import Batch

    g = torch.Generator().manual_seed(0)
    if kind == "rlhf":
        return RolloutSampler(pol, lambda x, y: (y == 5).sum(-1).float(), torch.arange(4), (6,), 3, g)
    if kind == "offline":
        y = torch.randint(5, 8, (12, 4), generator=torch.Generator().manual_seed(3))
        return OfflineSampler(Batch(torch.arange(12) % 4, y, y.flip(0), torch.zeros(12, dtype=torch.bool)), 6, g)
    return OnlineSampler(pol, oracle, torch.arange(4), (6,), g)


@pytest.mark.parametrize("kind", ["online", "offline", "rlhf"])
def test_the_data_parallel_loss_of_one_process_is_the_plain_mean(kind):
    """``optimise`` with ``dist`` active and one process (the reference N processes reproduce)
    against the plain loop on the same batches (the policy samples with per-example draws in
    both): the same loss at every step and the same final weights, for pairs (online, offline)
    and for RLHF's rollouts (one loss per prompt: the normalisation by the global count once
    went wrong there, by a factor of the batch size)."""
    from fullscale.dist import Dist

    def train(dist):
        model, ref, oracle = world()
        sampler = small_sampler(kind, LMPolicy(model, PROMPTS, 4, EOS, PAD, dist=Dist(0, 1, True)), oracle)
        losses = []
        optimise(model, ref, PROMPTS, sampler, "rloo" if kind == "rlhf" else "ipo", 0.1, 1e-2, 5, set(), lambda s: {}, EOS, PAD,
                 dist=dist, losses=losses)
        return losses, torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    (plain, w0), (parallel, w1) = train(None), train(Dist(0, 1, True))
    assert len(plain) == 5 and parallel == pytest.approx(plain, rel=1e-5, abs=1e-8)
    assert torch.allclose(w0, w1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["online", "offline", "rlhf"])
def test_fast_numerics_follow_the_exact_training_to_float_rounding(kind):
    """``--train.numerics fast`` (fused Adam, the output layer on response positions only, a
    repeated prompt's body once) against the default on the same batches: the loss at every
    step to float rounding, and the final policies' log-probs to 1e-3 (not the weights: Adam
    turns a rounding-sized gradient into a step of the learning rate's size, so weights whose
    gradient is near 0 may move apart); the default's Adam is not the fused one."""
    from fullscale.train import _adam

    def train(fast):
        model, ref, oracle = world()
        sampler = small_sampler(kind, LMPolicy(model, PROMPTS, 4, EOS, PAD), oracle)
        losses = []
        optimise(model, ref, PROMPTS, sampler, "rloo" if kind == "rlhf" else "ipo", 0.1, 1e-2, 5, set(), lambda s: {}, EOS, PAD,
                 losses=losses, fast=fast)
        y = torch.randint(5, 8, (8, 4), generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            return losses, sequence_logp(model, PROMPTS, torch.arange(8) % 4, y, EOS, PAD)

    (exact, lp0), (fast, lp1) = train(False), train(True)
    assert len(exact) == 5 and fast == pytest.approx(exact, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(lp1, lp0, rtol=1e-3, atol=1e-3)
    model = world()[0]
    assert not _adam(model, 1e-3).defaults.get("fused") and _adam(model, 1e-3, fused=True).defaults["fused"]
