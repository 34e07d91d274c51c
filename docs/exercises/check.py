"""Check an exercise of docs/exercises/ (index: docs/exercises/README.md).

    python docs/exercises/check.py 1               # checks your file, docs/exercises/ex1_ipo.py
    python docs/exercises/check.py 1 --solution    # checks the reference solution
    python docs/exercises/check.py 1 --file PATH   # checks any file
    python docs/exercises/check.py 4 --results runs/ex4   # exercise 4 reads a results.json

Prints what passed, then PASS, or FAIL with what went wrong and a hint.
Exit code 0 on PASS, 1 on FAIL, 2 on bad arguments. The learner's file is loaded and run through
``harness.py`` beside this file; this file holds one check per exercise and the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from harness import Fail, as_float, load, need, rel  # noqa: E402  (beside this file: the learner's code, run safely)

FILES = {1: "ex1_ipo.py", 2: "ex2_two_action.py", 3: "ex3_rlhf_optimum.py", 4: "ex4_tandem.py", 5: "ex5_tokenwise_kl.py",
         6: "ex6_displacement.py"}
TITLES = {1: "the IPO loss", 2: "the two-action optimum", 3: "the RLHF optimum (= DPO's)",
          4: "ordered replay and tandem", 5: "the token-wise KL estimator", 6: "pushing a rejected sequence down"}
EX4_RESULTS = ROOT / "runs" / "ex4"
EX4_COMMAND = "python -m toysim.gap --hypothesis coverage --quick --seeds 3 --out runs/ex4"


# ---------------------------------------------------------------- exercise 1
def check_1(mod, args, ok):
    import torch

    from shared.losses import ipo_loss
    from toysim.theory import minimise, offline_ipo_optimum, population_loss, random_bandit, total_variation

    f = need(mod, "ipo_loss")
    g = torch.Generator().manual_seed(0)
    logps = [3 * torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    betas = (0.1, 0.5, torch.tensor([[0.1], [0.3], [1.0], [2.0]], dtype=torch.float64))
    for beta in betas:
        got = f(*logps, beta)
        if not isinstance(got, torch.Tensor) or got.shape != logps[0].shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Fail(f"ipo_loss returned {shape}; expected a tensor of per-example losses, shape (4, 6): do not reduce (no mean/sum)")
        want = ipo_loss(*logps, beta)
        bad = ~torch.isclose(got, want, rtol=1e-9, atol=1e-9)
        if bad.any():
            i = tuple(int(k) for k in bad.nonzero()[0])
            h = (logps[0] - logps[2] - logps[1] + logps[3])[i].item()
            b = beta if isinstance(beta, float) else beta.expand_as(want)[i].item()
            raise Fail(f"for h = {h:.4f}, β = {b}: your loss is {got[i].item():.6g}, Azar's Eq. 17 gives {want[i].item():.6g}. "
                       "Hint: h is the difference of the two log-ratios log π − log π_ref, and the target margin is 1/(2β).")
    ok("matches shared.losses.ipo_loss on 24 random pairs, β a float and a per-row tensor")

    for beta in (0.1, 0.5, 2.0):
        pi_w = torch.tensor(-3.0 + 1 / (2 * beta), dtype=torch.float64, requires_grad=True)  # h = 1/(2β) with the numbers below
        val = f(pi_w, torch.tensor(-2.0, dtype=torch.float64), torch.tensor(-4.0, dtype=torch.float64),
                torch.tensor(-3.0, dtype=torch.float64), beta)
        (grad,) = torch.autograd.grad(val.sum(), pi_w)
        if abs(val.item()) > 1e-12 or abs(grad.item()) > 1e-9:
            raise Fail(f"at h = 1/(2β) (β = {beta}) the loss should be 0 with zero gradient, got {val.item():.3g} and {grad.item():.3g}")
    ok("one pair: loss 0 and zero gradient at h = 1/(2β), its minimiser")

    ref_logp, _, pref = random_bandit(3, 6, seed=1)
    mu, beta = ref_logp.exp(), 0.5
    found = minimise(lambda th: population_loss(f, th, ref_logp, mu, pref, beta), torch.zeros_like(ref_logp))
    tv = total_variation(found, offline_ipo_optimum(ref_logp, pref, mu, beta))
    if not tv < 1e-6:
        raise Fail(f"minimising your population loss gives a policy {tv:.2e} (total variation) from Azar's Eq. 6 optimum")
    ok(f"minimising your population loss (toysim.theory) lands on π_ref·exp(p(y≻μ)/β)/Z, Azar Eq. 6 (TV {tv:.1e})")


# ---------------------------------------------------------------- exercise 2
def check_2(mod, args, ok):
    import torch

    from shared.losses import dpo_loss, ipo_loss
    from toysim.theory import minimise, population_loss

    fi, fd = need(mod, "ipo_pi1"), need(mod, "dpo_pi1")
    ref = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    init = torch.zeros_like(ref)

    def numerical(loss, p, beta):
        pref = torch.tensor([[[0.5, p], [1 - p, 0.5]]], dtype=torch.float64)
        return minimise(lambda th: population_loss(loss, th, ref, ref.exp(), pref, beta), init, max_iter=2000).exp()[0, 0].item()

    grid = [(p, b) for p in (0.6, 0.8, 0.95, 1.0) for b in (0.1, 0.5, 1.0, 2.0)]
    for p, beta in grid:
        got, want = as_float(fi(p, beta), f"ipo_pi1({p}, {beta})"), numerical(ipo_loss, p, beta)
        if not abs(got - want) < 1e-6:
            raise Fail(f"p = {p}, β = {beta}: your IPO π(y1) = {got:.6f}, minimising the population IPO loss gives {want:.6f}. "
                       "Hint: p(y≻μ) averages over y' ~ μ uniform, the pair (y, y) included (P(y≻y) = ½).")
    ok(f"ipo_pi1 matches the numerical minimiser of the population IPO loss on {len(grid)} (p, β)")
    for p, beta in grid:
        got, want = as_float(fd(p, beta), f"dpo_pi1({p}, {beta})"), numerical(dpo_loss, p, beta)
        if p == 1.0:
            if not (got >= 1 - 1e-12 and want > 1 - 1e-5):
                raise Fail(f"p = 1, β = {beta}: your DPO π(y1) = {got:.6f}, but the population DPO loss keeps decreasing as "
                           f"π(y1) → 1 (L-BFGS stops at {want:.8f}). Hint: is there a finite h minimising −log σ(βh)?")
        elif not abs(got - want) < 1e-5:
            raise Fail(f"p = {p}, β = {beta}: your DPO π(y1) = {got:.6f}, minimising the population DPO loss gives {want:.6f}. "
                       "Hint: minimise −p·log σ(βh) − (1 − p)·log σ(−βh) over h = log π(y1)/π(y2).")
    ok("dpo_pi1 matches the numerical minimiser for p < 1 and the limit π(y1) → 1 at p = 1")
    ok(f"at p = 1, β = 1: IPO keeps π(y1) = {fi(1.0, 1.0):.4f}, DPO goes to {fd(1.0, 1.0):.4f} (Azar et al. §4.2)")


# ---------------------------------------------------------------- exercise 3
def check_3(mod, args, ok):
    import torch

    from shared.losses import dpo_loss
    from shared.preferences import bt_probability
    from toysim.theory import minimise, population_loss, random_bandit, rlhf_objective, total_variation

    f = need(mod, "rlhf_optimum")
    for seed, beta in ((0, 0.5), (2, 0.25)):
        ref_logp, reward, _ = random_bandit(4, 8, seed=seed)
        got = f(ref_logp, reward, beta)
        if not isinstance(got, torch.Tensor) or got.shape != ref_logp.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise Fail(f"rlhf_optimum returned {shape}; expected a tensor of log-probabilities of shape {tuple(ref_logp.shape)}")
        mass = got.exp().sum(-1)
        if not torch.allclose(mass, torch.ones_like(mass), atol=1e-9):
            raise Fail(f"each row of exp(rlhf_optimum) must sum to 1, got {[round(m, 4) for m in mass.tolist()]}: "
                       "subtract log Z(x) (torch.logsumexp or log_softmax)")
        init = torch.zeros_like(ref_logp)
        best = minimise(lambda th: -rlhf_objective(th, ref_logp, reward, beta), init)
        tv = total_variation(got, best)
        if not tv < 1e-4:
            raise Fail(f"bandit seed {seed}, β = {beta}: your π* is {tv:.3g} (total variation) from the numerical maximiser of "
                       "E_π[r] − β·KL(π‖π_ref). Hint: where does β enter, and what multiplies exp(·)?")
        mu = ref_logp.exp()
        bt = bt_probability(reward[..., :, None], reward[..., None, :])
        dpo = minimise(lambda th: population_loss(dpo_loss, th, ref_logp, mu, bt, beta), init)
        tv_dpo = total_variation(got, dpo)
        if not tv_dpo < 1e-4:
            raise Fail(f"bandit seed {seed}, β = {beta}: your π* is {tv_dpo:.3g} from the minimiser of population DPO with "
                       "Bradley–Terry labels")
        ok(f"bandit seed {seed}, β = {beta}: normalised; TV to the RLHF maximiser {tv:.1e}, to the DPO minimiser {tv_dpo:.1e}")


# ---------------------------------------------------------------- exercise 4
def _ex4_results(args) -> dict:
    p = Path(args.results) if args.results else EX4_RESULTS
    for cand in (p, p / "coverage" / "results.json", p / "results.json"):
        if cand.is_file():
            try:
                res = json.loads(cand.read_text())
            except json.JSONDecodeError as e:
                raise Fail(f"{cand} is not valid JSON: {e}") from None
            if res.get("study") != "coverage":
                raise Fail(f"{cand} is the {res.get('study')!r} study; exercise 4 needs the coverage study")
            return res
    raise Fail(f"no coverage results at {p}; run first:\n    {EX4_COMMAND}\n"
               "  (or pass --results DIR for a run you made with another --out)")


def _bool(value, what: str) -> bool:
    if type(value).__name__ not in ("bool", "bool_"):  # Python or numpy bool
        raise Fail(f"{what} should be True or False, got {value!r}")
    return bool(value)


def _same(a, b) -> bool:
    a, b = float(a), float(b)
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def check_4(mod, args, ok):
    from shared.results import gap, runs_of, seeds_of

    res = _ex4_results(args)
    f = need(mod, "answer")
    got = f(res)
    keys = ["ordered_max_abs_diff", "ordered_reproduces_online", "online_minus_offline", "online_minus_tandem",
            "tandem_clearly_below_online"]
    if not isinstance(got, dict) or set(keys) - set(got):
        raise Fail(f"answer() must return a dict with the keys {keys}; missing: "
                   f"{sorted(set(keys) - set(got)) if isinstance(got, dict) else type(got).__name__}")
    seeds = seeds_of(res, "online")
    diff = max(abs(a - b) for s in seeds for a, b in zip(runs_of(res, "online", s)[0]["series"]["win_rate"],
                                                          runs_of(res, "replay-ordered", s)[0]["series"]["win_rate"]))
    if not _same(as_float(got["ordered_max_abs_diff"], "ordered_max_abs_diff"), diff):
        raise Fail(f"ordered_max_abs_diff = {got['ordered_max_abs_diff']}, expected {diff:.3g}: "
                   "compare the two arms' series['win_rate'] checkpoint by checkpoint, seed by seed")
    if _bool(got["ordered_reproduces_online"], "ordered_reproduces_online") != (diff <= 1e-3):
        raise Fail(f"ordered_reproduces_online = {got['ordered_reproduces_online']!r}, but the largest difference is {diff:.3g} "
                   "(threshold 1e-3; answer with a bool)")
    ok(f"ordered replay: max |Δ win rate| = {diff:.2e}, reproduces online: {diff <= 1e-3}")
    for key, arm in (("online_minus_offline", "offline"), ("online_minus_tandem", "tandem")):
        want = gap(res, "online", arm)
        try:
            m, h = got[key]
        except (TypeError, ValueError):
            raise Fail(f"{key} must be a pair (mean, half-width), got {got[key]!r}") from None
        if not (_same(as_float(m, key), want[0]) and _same(as_float(h, key), want[1])):
            raise Fail(f"{key} = ({float(m):.6g}, {float(h):.6g}), expected ({want[0]:.6g}, {want[1]:.6g}). Hint: per seed, "
                       f"gap_at_matched_kl(online's curves, {arm}'s curves) with every run of the arm "
                       "(offline has one per sweep configuration), then seed_ci over seeds")
        ok(f"{key} at matched KL: {want[0]:+.4f} ± {want[1]:.4f} over {len(seeds)} seeds")
    m, h = gap(res, "online", "tandem")
    below = not math.isnan(h) and m - h > 0
    if _bool(got["tandem_clearly_below_online"], "tandem_clearly_below_online") != below:
        raise Fail(f"tandem_clearly_below_online = {got['tandem_clearly_below_online']!r}, but the interval is "
                   f"{m:+.4f} ± {h:.4f} (answer with a bool: is its lower end above 0?)")
    ok(f"tandem clearly below online in this run: {below}")


# ---------------------------------------------------------------- exercise 5
def _toy_lm(V: int, T: int, seed: int):
    """A tiny autoregressive model: next-token logits are a random table indexed by the prefix."""
    import itertools

    import torch

    g = torch.Generator().manual_seed(seed)
    pi, ref = {}, {}
    for t in range(T):
        for prefix in itertools.product(range(V), repeat=t):
            pi[prefix] = 1.5 * torch.randn(V, generator=g, dtype=torch.float64)
            ref[prefix] = 1.5 * torch.randn(V, generator=g, dtype=torch.float64)
    seqs = list(itertools.product(range(V), repeat=T))
    pi_logits = torch.stack([torch.stack([pi[y[:t]] for t in range(T)]) for y in seqs])  # [V^T, T, V]
    ref_logits = torch.stack([torch.stack([ref[y[:t]] for t in range(T)]) for y in seqs])
    y = torch.tensor(seqs)
    logp = torch.log_softmax(pi_logits, -1).gather(-1, y[..., None])[..., 0].sum(-1)  # log π(y), [V^T]
    ref_logp = torch.log_softmax(ref_logits, -1).gather(-1, y[..., None])[..., 0].sum(-1)
    return pi_logits, ref_logits, logp, ref_logp


def check_5(mod, args, ok):
    import torch

    from shared.metrics import kl_tokenwise_estimate

    f = need(mod, "tokenwise_kl")
    V, T = 3, 4
    pi_logits, ref_logits, logp, ref_logp = _toy_lm(V, T, seed=0)
    n = len(logp)
    ones = torch.ones(1, T, dtype=torch.float64)
    est = []
    for i in range(n):
        v = f(pi_logits[i : i + 1], ref_logits[i : i + 1], ones)
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise Fail(f"tokenwise_kl must return a scalar tensor, got {v!r:.80}")
        est.append(v.reshape(()))
    est = torch.stack(est)
    p = logp.exp()
    exact = (p * (logp - ref_logp)).sum().item()
    expect = (p * est).sum().item()
    if not math.isclose(expect, exact, rel_tol=1e-9, abs_tol=1e-12):
        raise Fail(f"over all {n} sequences y of a toy model (V = {V}, T = {T}), E_{{y~π}}[your estimate] = {expect:.6f} but "
                   f"the exact sequence KL(π‖π_ref) = {exact:.6f}. Hint: KL(π‖π_ref) at each position, weighted by π, not π_ref.")
    ok(f"unbiased: E_{{y~π}} of your estimate = exact KL(π‖π_ref) = {exact:.6f} on a toy model, by enumeration")

    batch = f(pi_logits, ref_logits, ones.expand(n, T))
    if not math.isclose(float(batch), est.mean().item(), rel_tol=1e-9, abs_tol=1e-12):
        raise Fail(f"on a batch of {n} responses you return {float(batch):.6f}, but the mean of the per-response values "
                   f"is {est.mean().item():.6f}: average over responses (dim 0), sum over positions (dim 1)")
    mask = torch.ones(n, T + 2, dtype=torch.float64)
    mask[: n // 2, T:] = 0  # half the responses padded with 2 garbage positions
    pad = 10 * torch.randn(n, 2, V, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = f(torch.cat([pi_logits, pad], 1), torch.cat([ref_logits, -pad], 1), mask)
    want = kl_tokenwise_estimate(torch.cat([pi_logits, pad], 1), torch.cat([ref_logits, -pad], 1), mask)
    if not math.isclose(float(got), want.item(), rel_tol=1e-9, abs_tol=1e-12):
        raise Fail(f"with padding, you return {float(got):.6f}, expected {want.item():.6f}: positions where mask = 0 must not count")
    ok("batched mean and padding mask agree with shared.metrics.kl_tokenwise_estimate")
    naive = logp - ref_logp  # the single-sample estimate log π(y) − log π_ref(y), also unbiased
    sd = lambda x: math.sqrt((p * (x - exact) ** 2).sum().item())  # noqa: E731
    ok(f"for your information: per-response std under π, token-wise {sd(est):.3f} vs log π(y) − log π_ref(y) {sd(naive):.3f}")


# ---------------------------------------------------------------- exercise 6
def _tree_policy(V: int, L: int, seed: int):
    """Random next-choice logits (V tokens + END) at every prefix shorter than L, and every response."""
    import itertools

    import torch

    g = torch.Generator().manual_seed(seed)
    logits = {p: 1.5 * torch.randn(V + 1, generator=g, dtype=torch.float64)
              for t in range(L) for p in itertools.product(range(V), repeat=t)}
    responses = [p for t in range(L + 1) for p in itertools.product(range(V), repeat=t)]
    return logits, responses


def _probs_by_product(logits, responses, L: int, V: int):
    """π(y) of every response as a product of softmax probabilities (the check's own computation)."""
    import torch

    out = []
    for y in responses:
        p = torch.ones((), dtype=torch.float64)
        for t in range(len(y)):
            p = p * torch.softmax(logits[y[:t]], -1)[y[t]]
        if len(y) < L:
            p = p * torch.softmax(logits[y], -1)[V]
        out.append(p)
    return torch.stack(out)


def check_6(mod, args, ok):
    import torch

    logp_fn, push = need(mod, "sequence_logp"), need(mod, "push_down")
    V, L = 3, 3
    logits, responses = _tree_policy(V, L, seed=0)
    want = _probs_by_product(logits, responses, L, V)
    got = []
    for y in responses:
        v = logp_fn(logits, y, L)
        if not isinstance(v, torch.Tensor) or v.numel() != 1:
            raise Fail(f"sequence_logp must return a 0-d tensor, got {v!r:.80}")
        got.append(v.reshape(()))
    got = torch.stack(got).exp()
    if not math.isclose(got.sum().item(), 1.0, rel_tol=0, abs_tol=1e-9):
        raise Fail(f"your π sums to {got.sum().item():.6f} over all {len(responses)} responses, not 1. "
                   "Hint: a response shorter than max_len also chooses END (index V); one of exactly max_len tokens does not")
    worst = int((got - want).abs().argmax())
    if not torch.allclose(got, want, rtol=1e-9, atol=1e-12):
        raise Fail(f"π{responses[worst]} = {got[worst].item():.6f}, expected {want[worst].item():.6f} (a product of softmax probabilities along the path)")
    ok(f"sequence_logp: π sums to 1 over all {len(responses)} responses and equals the product of next-choice probabilities")

    eta = 0.7
    for y_l in [(1, 0), (2,), (0, 2, 1), ()]:
        params = {s: v.clone().requires_grad_(True) for s, v in logits.items()}
        lp = torch.log(_probs_by_product(params, [y_l], L, V)[0])
        grads = torch.autograd.grad(lp, list(params.values()), allow_unused=True)
        expect = {s: (v - eta * gr).detach() if gr is not None else v.detach() for (s, v), gr in zip(params.items(), grads)}
        before = {s: v.clone() for s, v in logits.items()}
        new = push(logits, y_l, L, eta)
        if any(not torch.equal(logits[s], before[s]) for s in logits):
            raise Fail("push_down changed the logits it was given: copy them first")
        if not isinstance(new, dict) or set(new) != set(logits):
            raise Fail("push_down must return a dict with the same prefixes as its input")
        bad = [s for s in logits if not torch.allclose(new[s], expect[s], rtol=1e-9, atol=1e-12)]
        if bad:
            s = bad[0]
            raise Fail(f"after one step on y_l = {y_l}, logits{s} = {[round(float(v), 4) for v in new[s]]}, expected "
                       f"{[round(float(v), 4) for v in expect[s]]} (autograd). Hint: descent lowers log π(y_l): "
                       "logits − eta·(onehot(c) − softmax), and only on y_l's path")
    ok("push_down equals one autograd gradient-descent step on log π(y_l), for four rejected responses")

    y_l = (1, 0)
    after = _probs_by_product(push(logits, y_l, L, eta), responses, L, V)
    delta = after - want
    groups = {"y_l": [y_l], "siblings": [y for y in responses if len(y) == len(y_l) and y[:-1] == y_l[:-1] and y != y_l],
              "descendants": [y for y in responses if len(y) > len(y_l) and y[: len(y_l)] == y_l]}
    groups["the rest"] = [y for y in responses if not any(y in g for g in groups.values())]
    parts = ", ".join(f"{k} {sum(delta[responses.index(y)].item() for y in g):+.4f}" for k, g in groups.items())
    ok(f"for your information, mass moved by one step on y_l = {y_l} (eta {eta}): {parts}")


CHECKS = {1: check_1, 2: check_2, 3: check_3, 4: check_4, 5: check_5, 6: check_6}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python docs/exercises/check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("exercise", type=int, choices=sorted(CHECKS), help="exercise number")
    ap.add_argument("--solution", action="store_true", help="check the reference solution in docs/exercises/solutions/")
    ap.add_argument("--file", type=Path, help="check this file instead of docs/exercises/exNN_*.py")
    ap.add_argument("--results", help=f"exercise 4: a coverage results.json or the --out folder of its run (default {rel(EX4_RESULTS)})")
    args = ap.parse_args(argv)
    if args.file and args.solution:
        ap.error("--file and --solution exclude each other")
    n = args.exercise
    path = args.file or (HERE / "solutions" / FILES[n] if args.solution else HERE / FILES[n])
    print(f"exercise {n}, {TITLES[n]}: checking {rel(path)}")
    passed = []

    def ok(msg):
        passed.append(msg)
        print(f"  ok    {msg}")

    try:
        CHECKS[n](load(path), args, ok)
    except Fail as e:
        print(f"  FAIL  {e}")
        print(f"FAIL (exercise {n}: {len(passed)} check(s) passed before this one)")
        return 1
    print(f"PASS (exercise {n})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
