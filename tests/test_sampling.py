"""shared/sampling.py and shared/preferences.py: data sources and labels."""

import pytest
import torch
from hypothesis import given, strategies as st

from shared.losses import ipo_loss
from shared.preferences import NoisyOracle, PairwiseOracle, RewardOracle, hard_labels, hard_preference, label_pairs
from shared.sampling import Batch, OfflineSampler, OnlineSampler, ReplaySampler, policy_pair_dataset, replay_order
from toysim.policy import LogLinearPolicy
from toysim.train import train


class _Reward:
    def __init__(self, table):
        self.table = table

    def __call__(self, x, y):
        return self.table[x, y]


def test_hard_labels_sign_and_ties():
    m = torch.tensor([1.0, -1.0, 0.0, 0.0])
    first, tie = hard_labels(m, ties="first")
    assert first.tolist() == [True, False, True, True] and tie.tolist() == [False, False, True, True]
    g = torch.Generator().manual_seed(0)
    first, _ = hard_labels(torch.zeros(4000), g)
    assert 0.45 < first.float().mean().item() < 0.55  # fair coin
    assert hard_preference(m).tolist() == [1.0, 0.0, 0.5, 0.5]
    with pytest.raises(ValueError):
        hard_labels(m, ties="drop")


def test_label_pairs_puts_winner_first_for_token_responses():
    reward = torch.tensor([[0.0, 1.0, 2.0]])
    oracle = RewardOracle(lambda x, y: reward[x, y[..., 0]])  # responses are 1-token sequences [B, 1]
    x = torch.zeros(3, dtype=torch.long)
    y1, y2 = torch.tensor([[0], [2], [1]]), torch.tensor([[1], [0], [1]])
    y_w, y_l, tie = label_pairs(oracle, x, y1, y2, torch.Generator().manual_seed(0))
    assert y_w[:2].squeeze(-1).tolist() == [1, 2] and y_l[:2].squeeze(-1).tolist() == [0, 0]
    assert tie.tolist() == [False, False, True]


def test_pairwise_oracle_uses_both_orders():
    # a position-biased PM: prefers the first slot by 0.2 on top of a reward difference
    r = torch.tensor([0.0, 1.0])
    pm = PairwiseOracle(lambda x, a, b: torch.sigmoid(r[a] - r[b]) * 0.8 + 0.2)
    m = pm.margin(None, torch.tensor([0]), torch.tensor([1]))
    assert m.item() < 0  # y=1 is better despite the first-slot bias
    assert pm.prob_first(None, torch.tensor([1]), torch.tensor([0])).item() > 0.5


def test_noisy_oracle_flips_at_its_rate():
    base = RewardOracle(_Reward(torch.tensor([[0.0, 1.0]])))
    noisy = NoisyOracle(base, 0.2)
    n = 20_000
    x = torch.zeros(n, dtype=torch.long)
    y_w, _, _ = label_pairs(noisy, x, torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(0))
    assert abs((y_w == 1).float().mean().item() - 0.8) < 0.01
    with pytest.raises(ValueError):
        NoisyOracle(base, 0.5)


def test_bt_stochastic_labels_follow_sigmoid():
    oracle = RewardOracle(_Reward(torch.tensor([[0.0, 1.0]])), stochastic=True)
    n = 20_000
    x = torch.zeros(n, dtype=torch.long)
    y_w, _, _ = label_pairs(oracle, x, torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(1))
    assert abs((y_w == 1).float().mean().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01


@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 20), st.integers(0, 1000))
def test_replay_order_is_a_permutation_within_windows(steps, batch, window, seed):
    order = replay_order(steps, batch, window, torch.Generator().manual_seed(seed), lead=(2,))
    assert order.shape == (2, steps, batch)
    for r in range(2):
        flat = order[r].reshape(-1)
        assert sorted(flat.tolist()) == list(range(steps * batch))
        block = window * batch
        for i, v in enumerate(flat.tolist()):
            assert v // block == i // block  # never leaves its window
    if window == 1:
        assert torch.equal(order[0].reshape(-1), torch.arange(steps * batch))


def _world(seed=0, X=4, N=6, d=3):
    g = torch.Generator().manual_seed(seed)
    sft = torch.log_softmax(torch.randn(X, N, generator=g, dtype=torch.float64), -1)
    feats = torch.randn(X, N, d, generator=g, dtype=torch.float64)
    reward = torch.randn(X, N, generator=g, dtype=torch.float64)
    return sft, feats, RewardOracle(_Reward(reward))


def test_ordered_replay_reproduces_online_bit_for_bit():
    sft, feats, oracle = _world()
    R, B, steps = 2, 4, 30
    beta, lr = torch.full((R, 1), 0.1, dtype=torch.float64), torch.full((R, 1), 0.05, dtype=torch.float64)
    def run(sampler_of):
        pol = LogLinearPolicy(sft, feats, R)
        sampler = sampler_of(pol)
        tables = []
        train(pol, sampler, ipo_loss, beta, lr, steps, 1, lambda t, s: tables.append(t.clone()) or {}, None)
        return sampler, tables

    online, t_online = run(lambda p: OnlineSampler(p, oracle, torch.arange(4), (R, B), torch.Generator().manual_seed(3)))
    logged = online.log
    _, t_replay = run(lambda p: ReplaySampler(logged, window=1))
    assert len(t_online) == len(t_replay) == steps + 1
    assert all(torch.equal(a, b) for a, b in zip(t_online, t_replay))
    # and a uniform shuffle of the same stream does not
    _, t_tandem = run(lambda p: ReplaySampler(logged, window=steps, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(t_online[-1], t_tandem[-1])


def test_uniform_shuffle_is_a_permutation_of_the_stream():
    sft, feats, oracle = _world()
    pol = LogLinearPolicy(sft, feats, 2)
    online = OnlineSampler(pol, oracle, torch.arange(4), (2, 3), torch.Generator().manual_seed(0))
    stream = [online.next() for _ in range(5)]
    rep = ReplaySampler(stream, window=5, generator=torch.Generator().manual_seed(1))
    got = [rep.next() for _ in range(5)]
    for r in range(2):
        key = lambda bs: sorted(zip(*(torch.cat([getattr(b, f)[r] for b in bs]).tolist() for f in ("x", "y_w", "y_l"))))  # noqa: E731
        assert key(got) == key(stream)
    with pytest.raises(StopIteration):
        rep.next()


def test_online_sampling_is_stop_gradient_and_logged():
    sft, feats, oracle = _world()
    pol = LogLinearPolicy(sft, feats, 1)
    pol.theta.requires_grad_(True)
    s = OnlineSampler(pol, oracle, torch.arange(4), (1, 8), torch.Generator().manual_seed(0))
    b = s.next()
    assert not b.y_w.requires_grad and len(s.log) == 1 and b.x.shape == (1, 8)


def test_offline_sampler_covers_each_epoch_once_per_run():
    n = 12
    data = Batch(torch.arange(n), torch.arange(n), torch.arange(n), torch.zeros(n, dtype=torch.bool))
    s = OfflineSampler(data, 4, torch.Generator().manual_seed(0), lead=(3,))
    epoch = torch.cat([s.next().x for _ in range(3)], -1)  # [3, 12]
    for r in range(3):
        assert sorted(epoch[r].tolist()) == list(range(n))
    assert not torch.equal(epoch[0], epoch[1])  # independent orders per run
    with pytest.raises(ValueError, match="batch_size"):
        OfflineSampler(data, 13, torch.Generator())


def test_policy_pair_dataset_draws_from_each_policy():
    class Const:
        def __init__(self, y):
            self.y = y

        def sample(self, x, generator=None):
            return torch.full_like(x, self.y)

    reward = torch.tensor([[0.0, 1.0]])
    d = policy_pair_dataset(Const(0), Const(1), torch.zeros(5, dtype=torch.long), RewardOracle(_Reward(reward)))
    assert d.y_w.tolist() == [1] * 5 and d.y_l.tolist() == [0] * 5


def test_random_order_is_a_fair_consistent_shuffle():
    from shared.preferences import random_order

    n = 10_000
    y_w, y_l = torch.arange(n)[:, None].expand(n, 3), -torch.arange(n)[:, None].expand(n, 3) - 1
    y1, y2, first = random_order(y_w, y_l, torch.Generator().manual_seed(0))
    assert torch.equal(torch.where(first[:, None], y1, y2), y_w)  # the winner is recoverable
    assert torch.equal(torch.where(first[:, None], y2, y1), y_l)
    assert abs(first.float().mean().item() - 0.5) < 0.02


def test_refresh_every_step_is_online_and_every_run_is_one_shot_offline():
    """Semi-online refresh: k = 1 reproduces the online run bit for bit; k = all steps equals
    one pass, in order, over a dataset drawn once from the initial policy and labelled."""
    from shared.sampling import RefreshSampler, stack_batches

    sft, feats, oracle = _world()
    R, B, steps = 2, 4, 12
    beta, lr = torch.full((R, 1), 0.1, dtype=torch.float64), torch.full((R, 1), 0.05, dtype=torch.float64)

    def run(sampler_of):
        pol = LogLinearPolicy(sft, feats, R)
        tables = []
        sampler = sampler_of(pol)
        train(pol, sampler, ipo_loss, beta, lr, steps, 1, lambda t, s: tables.append(t.clone()) or {}, None)
        return sampler, tables

    online = lambda p: OnlineSampler(p, oracle, torch.arange(4), (R, B), torch.Generator().manual_seed(3))  # noqa: E731
    _, t_online = run(online)
    _, t_k1 = run(lambda p: RefreshSampler(online(p), every=1))
    assert all(torch.equal(a, b) for a, b in zip(t_online, t_k1))
    # k = steps: the whole dataset comes from π_sft before any update
    s_all, t_all = run(lambda p: RefreshSampler(online(p), every=steps))
    one_shot = OnlineSampler(LogLinearPolicy(sft, feats, R), oracle, torch.arange(4), (R, B), torch.Generator().manual_seed(3))
    data = stack_batches([one_shot.next() for _ in range(steps)], dim=1)
    assert torch.equal(stack_batches(s_all.log, dim=1).y_w, data.y_w)
    _, t_off = run(lambda p: ReplaySampler([one_shot.log[i] for i in range(steps)], window=1))
    assert all(torch.equal(a, b) for a, b in zip(t_all, t_off))
    assert not torch.equal(t_all[-1], t_online[-1])
    with pytest.raises(ValueError, match="every"):
        RefreshSampler(online(LogLinearPolicy(sft, feats, R)), every=0)


@given(st.integers(1, 6), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_geometric_mixture_matches_a_plain_loop(n, alpha, seed):
    """π_α(y) = π(y)^{1−α} π_ref(y)^α / Z, against a loop over responses; zero-probability
    responses of either policy stay impossible (for 0 < α < 1)."""
    from shared.sampling import geometric_mixture

    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(3 * torch.randn(2, n + 1, generator=g, dtype=torch.float64), -1)
    ref = torch.log_softmax(3 * torch.randn(n + 1, generator=g, dtype=torch.float64), -1)
    got = geometric_mixture(logp, ref, alpha).exp()
    for row in range(2):
        w = [logp[row, y].exp().item() ** (1 - alpha) * ref[y].exp().item() ** alpha for y in range(n + 1)]
        want = torch.tensor([v / sum(w) for v in w], dtype=torch.float64)
        torch.testing.assert_close(got[row], want, rtol=1e-9, atol=1e-12)
    masked = logp.clone()
    masked[:, 0] = -torch.inf
    out = geometric_mixture(masked, ref, alpha).exp()
    assert torch.isfinite(out).all() and torch.allclose(out.sum(-1), torch.ones(2, dtype=torch.float64))
    if alpha < 1:
        assert (out[:, 0] == 0).all()


def test_geometric_mixture_ends_and_bad_alpha():
    from shared.sampling import geometric_mixture

    logp = torch.log_softmax(torch.randn(3, 5), -1)
    ref = torch.log_softmax(torch.randn(5), -1)
    torch.testing.assert_close(geometric_mixture(logp, ref, 0.0), logp)
    torch.testing.assert_close(geometric_mixture(logp, ref, 1.0), ref.expand(3, 5))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            geometric_mixture(logp, ref, bad)
    with pytest.raises(ValueError, match="broadcast"):
        geometric_mixture(logp, torch.zeros(4), 0.5)


@pytest.mark.parametrize("kind", ["online", "offline", "replay", "refresh", "rollout"])
def test_a_sampler_restored_from_its_state_dict_continues_exactly(kind):
    """state_dict after 3 batches, loaded into a sampler built afresh (the way a resumed run
    builds it): the next 4 batches equal those of the sampler that never stopped."""
    import copy

    from shared.sampling import RefreshSampler, RolloutSampler

    sft, feats, oracle = _world()
    pol = LogLinearPolicy(sft, feats, 2)
    data = policy_pair_dataset(pol, pol, torch.arange(4).repeat(2, 5), oracle, torch.Generator().manual_seed(5))

    def make():
        g = torch.Generator().manual_seed(1)
        online = OnlineSampler(pol, oracle, torch.arange(4), (2, 3), g)
        return {"online": lambda: online, "offline": lambda: OfflineSampler(data, 3, g, lead=(2,), per_run=True),
                "replay": lambda: ReplaySampler([data.take(torch.arange(i, i + 4).expand(2, 4), dim=1) for i in range(0, 16, 4)], 2, g),
                "refresh": lambda: RefreshSampler(online, 3),
                "rollout": lambda: RolloutSampler(pol, lambda x, y: y.double(), torch.arange(4), (2, 3), 2, g)}[kind]()

    def fields_of(b):
        return [t.clone() for t in (vars(b).values())]

    a = make()
    for _ in range(3):
        a.next()
    state = copy.deepcopy(a.state_dict())
    b = make()
    b.load_state_dict(state)
    for _ in range(1 if kind == "replay" else 4):
        assert all(torch.equal(u, v) for u, v in zip(fields_of(a.next()), fields_of(b.next())))
