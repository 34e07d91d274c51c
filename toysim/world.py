"""The bandit world of the simulator: prompts, enumerable responses, a golden
preference, π_sft, a finite D_golden and a limited proxy preference model.

Docs: docs/tutorial.md (§ the world), docs/judge.md (the validated proxy). Tests: tests/test_toysim_train.py,
tests/test_toysim_proxy.py.

Mirrors the roles of Tang et al. 2024, §3:
- responses y have latent traits z_y ∈ R^k, prompts have a "taste" u_x ∈ R^k;
- golden reward r*(x, y) = u_x·z_y − penalty·‖z_y‖² + noise·ε(x, y): the
  rater likes responses matched to the prompt but dislikes extreme ones
  (the analogue of padding or repetition), plus idiosyncratic taste;
  decisions are hard, y ≻ y' iff r* is larger (ties ½);
- π_sft concentrates on moderate responses (temperature ``sft_temp``), so
  D_golden (pairs from μ = π_sft, golden-labelled) covers a small part of the
  response space;
- the proxy PM is a Bradley–Terry reward linear in ``proxy_features`` random
  features, fit by L2-regularised maximum likelihood on D_golden: accurate
  where D_golden is, wrong off it (it cannot see the ‖z‖² penalty well
  away from the data). Its penalty is ``proxy_l2``, or (``proxy_fit="validated"``) chosen on
  held-out pairs of D_golden by a fixed rule, as the paper trains its proxy to its validation
  plateau (App. A.3; ``toysim.proxy.validated_penalty``); ``proxy_class="policy"`` gives it the policy's own
  feature class instead, the policy's size as in the paper;
- policies are log-linear: logits = sft_logits + Φ·θ with Φ the interaction
  features u_x ⊙ z_y followed by random Fourier features of (u_x, z_y);
  ``policy_features`` (the capacity knob) is the total width.

``policy_kind="autoregressive"`` makes every response a token sequence
(``toysim.sequences``): at most ``max_len`` tokens over ``vocab``, token v with
traits e_v, and a response's traits the sum of its tokens' (z_y = Σ_t e_{y_t}),
so responses that share a prefix share reward and features, as an LLM's do.
π_sft and the policy are then token-level softmaxes (``sequence_features``);
the golden reward, D_golden and the proxy are the same functions of z_y.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from shared.preferences import NoisyOracle, hard_preference, label_pairs
from shared.sampling import Batch
from toysim.policy import LogLinearPolicy
from toysim.proxy import fit_bt, validated_penalty
from toysim.sequences import AutoregressivePolicy, SequenceSpace, bigram_features

__all__ = ["WorldConfig", "KNOBS", "KNOB_RANGES", "knob_problem", "cast_knob", "responses_of", "world_size", "world_problem", "World", "make_world", "features", "sequence_features", "TableOracle",
           "golden_training_oracle"]


class TableOracle:
    """A reward table [X, N] as an oracle for index pairs of any shape: margin = r[x, y1] − r[x, y2]."""

    def __init__(self, reward: torch.Tensor):
        self.reward = reward

    def margin(self, x, y1, y2):
        return self.reward[x, y1] - self.reward[x, y2]


def golden_training_oracle(golden_reward: torch.Tensor, label_noise: float):
    """The golden rater as it labels *training* pairs: hard decisions flipped at ``label_noise``."""
    base = TableOracle(golden_reward)
    return NoisyOracle(base, label_noise) if label_noise > 0 else base


@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the bandit world (the phase diagram sweeps them)."""

    prompts: int = 32
    """number of prompts x"""
    responses: int = 64
    """number of atomic responses y per prompt"""
    traits: int = 4
    """dimension k of the latent traits z_y and tastes u_x"""
    penalty: float = 0.35
    """golden dislike of extreme responses, the weight of −‖z_y‖²"""
    noise: float = 0.3
    """idiosyncratic golden taste ε(x, y) ~ N(0, noise²) (label structure no proxy captures)"""
    sft_temp: float = 0.5
    """π_sft ∝ exp(−‖z_y‖²/(2·sft_temp) + 0.5·u_x·z_y): smaller = narrower SFT"""
    mu_shift: float = 0.0
    """move μ away from π_sft: μ ∝ π_sft·exp(mu_shift·u_x·z_y)"""
    golden_pairs: int = 512
    """size of D_golden (pairs drawn from μ, golden-labelled)"""
    proxy_features: int = 16
    """proxy PM capacity: width of its random-feature BT reward"""
    proxy_squares: bool = True
    """the proxy sees the traits' squares z ⊙ z (it can learn the extremes penalty; the policy cannot directly)"""
    proxy_l2: float = 1e-2
    """L2 penalty of the proxy's maximum-likelihood fit (with ``proxy_fit = fixed``)"""
    proxy_fit: Literal["fixed", "validated"] = "fixed"
    """fixed: the proxy's penalty is ``proxy_l2``; validated: chosen on held-out pairs of D_golden by
    the rule of docs/judge.md (R1, ``validated_penalty``), as Tang et al. 2024 train their proxy (App. A.3)"""
    proxy_class: Literal["own", "policy"] = "own"
    """own: random features of the traits (``proxy_features`` wide, ``proxy_squares``); policy: the
    policy's own feature class at ×1 (token sequences: the per-token features summed along the response)"""
    label_noise: float = 0.2
    """probability that a golden *training* label (D_golden, checkpoint datasets, the golden
    policy's stream) is flipped; evaluation always uses the noise-free golden preference"""
    policy_structured: bool = True
    """the policy's features start with the interactions u ⊙ z (else random features only)"""
    policy_features: int = 16
    """policy capacity at ×1 (the scale study multiplies it)"""
    policy_kind: Literal["atomic", "autoregressive"] = "atomic"
    """atomic: each response one item (``responses`` of them); autoregressive: responses are every
    token sequence of at most ``max_len`` tokens over ``vocab`` (``responses`` is then unused)"""
    vocab: int = 4
    """autoregressive only: tokens in the vocabulary (an END token comes on top)"""
    max_len: int = 3
    """autoregressive only: most tokens in a response; there are Σ_{l ≤ max_len} vocab^l responses"""
    region_tokens: int = 0
    """autoregressive only (docs/judge.md, K1): tokens of an off-support region, each aliased with a good ordinary token"""
    region_mass: float = 0.003
    """K1: π_sft's total probability of choosing a region token, at every node"""
    region_alias: float = 0.0
    """K1: how far the policy's features see a region token as its alias (1: they cannot tell them apart)"""
    region_penalty: float = 1.0
    """K1: the golden's cost of each region token, in units of the world's mean golden range without them"""
    golden_net: float = 0.0
    """K2: weight of a fixed random two-layer network of the ordered sequence in the golden reward,
    in units of the golden reward's standard deviation without it (neither student's class holds it)"""
    nuisance_tokens: int = 0
    """K3: reward-neutral tokens (no traits; a response's golden noise is that of the response without them)"""
    seed: int = 0
    """seed of the world (traits, tastes, D_golden, proxy), fixed across training seeds"""


KNOBS = ("label_noise", "golden_pairs", "proxy_features", "proxy_l2", "policy_features", "sft_temp", "mu_shift",
         "responses", "prompts", "traits", "penalty", "noise", "vocab", "max_len",
         "region_tokens", "region_mass", "region_alias", "region_penalty", "golden_net", "nuisance_tokens")
"""The numeric fields of ``WorldConfig``: the knobs ``--world`` sets and a sweep varies
(tests/test_cli.py holds them equal)."""

TOKEN_KNOBS = ("region_tokens", "golden_net", "nuisance_tokens")
"""The knobs that exist in token-sequence worlds only (docs/judge.md, R2); 0 is off."""

KNOB_RANGES: dict[str, tuple[float, float, str]] = {
    "label_noise": (0.0, 0.5, "a flip probability of ½ or more inverts the labels"),
    "golden_pairs": (1, 10**7, ""),
    "proxy_features": (1, 4096, ""),
    "proxy_l2": (0.0, 1e6, ""),
    "policy_features": (1, 4096, "the scale study takes up to 4× this"),
    "sft_temp": (1e-3, 1e3, ""),
    "mu_shift": (-100.0, 100.0, ""),
    "responses": (2, 4096, ""),
    "prompts": (1, 4096, ""),
    "traits": (1, 64, ""),
    "penalty": (0.0, 1e3, ""),
    "noise": (0.0, 1e3, ""),
    "vocab": (1, 64, ""),
    "max_len": (1, 16, ""),
    "region_tokens": (0, 16, "autoregressive worlds only"),
    "region_mass": (1e-6, 0.5, ""),
    "region_alias": (0.0, 1.0, ""),
    "region_penalty": (0.0, 1e3, ""),
    "golden_net": (0.0, 1e3, "autoregressive worlds only"),
    "nuisance_tokens": (0, 16, "autoregressive worlds only"),
}
"""Each knob's allowed range [low, high] (label_noise: [0, 0.5)), and why where it is not only a
bound on size. Integer knobs take whole numbers only."""

MAX_RESPONSES = 4096
"""The most responses a prompt: the exact metrics hold [X, N, N] tables of every pair."""

MAX_TABLE_BYTES = 16 * 2**30
"""The most memory the exact tables of one world and one program of runs may take (``world_size``)."""


def _field_type(knob: str):
    return {f.name: f.type for f in dataclasses.fields(WorldConfig)}[knob]


def _num(v: float) -> str:
    return f"{int(v):,}" if math.isfinite(v) and float(v).is_integer() and abs(v) < 1e18 else f"{v:g}"


def knob_problem(knob: str, value: float, flag: str = "--world") -> str | None:
    """The one-line problem with a knob's value (its type and ``KNOB_RANGES``), or None; ``knob`` one of ``KNOBS``."""
    low, high, why = KNOB_RANGES[knob]
    whole = _field_type(knob) in (int, "int")
    if not math.isfinite(value) or (whole and value != int(value)):
        return f"{flag} {knob}: must be {'a whole number' if whole else 'a finite number'}, got {_num(value)}"
    above = value < high if knob == "label_noise" else value <= high
    if not (low <= value and above):
        bound = f"below {_num(high)}" if knob == "label_noise" else _num(high)
        return f"{flag} {knob}: must be from {_num(low)} to {bound}{f' ({why})' if why else ''}, got {_num(value)}"
    return None


def cast_knob(knob: str, value: float):
    """``value`` as the type of ``WorldConfig``'s field ``knob`` (int, bool or float)."""
    kind = _field_type(knob)
    return int(value) if kind in (int, "int") else bool(value) if kind in (bool, "bool") else float(value)


def responses_of(cfg: WorldConfig) -> int:
    """Responses a prompt: ``responses``, or Σ_{l ≤ max_len} vocab^l token sequences (autoregressive)."""
    if cfg.policy_kind == "autoregressive":
        return sum(tokens_of(cfg)**n for n in range(cfg.max_len + 1))
    return cfg.responses


def tokens_of(cfg: WorldConfig) -> int:
    """The vocabulary of a token-sequence world: its ordinary tokens, then the region's, then the nuisance tokens."""
    return cfg.vocab + cfg.region_tokens + cfg.nuisance_tokens


def world_size(cfg: WorldConfig, runs: int, capacity: float = 4.0) -> int:
    """Bytes the exact tables of ``cfg`` take with ``runs`` runs evaluated at once, computed from the
    knobs before anything is allocated: the golden and proxy preference tables [X, N, N] (float64 and
    a float32 copy each), the evaluator's agreement tables [R, X, N, N] (three float32 temporaries),
    and the policy features of the widest policy (``capacity`` × policy_features, built in float64)."""
    X, N = cfg.prompts, responses_of(cfg)
    width = math.ceil(capacity * cfg.policy_features)
    if cfg.policy_kind == "autoregressive":
        nodes = sum(tokens_of(cfg)**n for n in range(cfg.max_len))
        feats = X * nodes * (tokens_of(cfg) + 1) * width * 12
    else:
        feats = X * N * width * 12
    return 24 * X * N * N + 12 * runs * X * N * N + feats


def world_problem(cfg: WorldConfig, runs: int) -> str | None:
    """The one-line problem with a whole world's size, or None: responses a prompt at most
    ``MAX_RESPONSES``, the exact tables (``world_size``) within ``MAX_TABLE_BYTES``. Every knob is
    checked first (``knob_problem``)."""
    for knob in KNOBS:
        problem = knob_problem(knob, float(getattr(cfg, knob)), "the world's")
        if problem:
            return problem
    if cfg.policy_kind != "autoregressive":
        for knob in TOKEN_KNOBS:
            if getattr(cfg, knob):
                return f"the world's {knob}: token-sequence worlds only (policy_kind autoregressive), got {getattr(cfg, knob)}"
    n = responses_of(cfg)
    if n > MAX_RESPONSES:
        extra = f" + {cfg.region_tokens} region + {cfg.nuisance_tokens} nuisance tokens" if cfg.region_tokens or cfg.nuisance_tokens else ""
        how = f"vocab {cfg.vocab}{extra}, max_len {cfg.max_len}" if cfg.policy_kind == "autoregressive" else "responses"
        return f"the world has {n:,} responses a prompt ({how}); the exact metrics allow at most {MAX_RESPONSES}"
    size = world_size(cfg, runs)
    if size > MAX_TABLE_BYTES:
        return (f"the world's exact tables need about {size / 2**30:.1f} GiB ({cfg.prompts} prompts × {n}² response pairs × "
                f"{runs} runs at once); the bound is {MAX_TABLE_BYTES / 2**30:.0f} GiB: use fewer seeds, prompts or responses")
    return None


@dataclass
class World:
    cfg: WorldConfig
    golden_reward: torch.Tensor  # [X, N]
    golden_pref: torch.Tensor  # [X, N, N], P*(y ≻ y')
    sft_logp: torch.Tensor  # [X, N]
    mu_logp: torch.Tensor  # [X, N]
    d_golden: "object"  # shared.sampling.Batch of golden_pairs pairs, golden-labelled
    proxy_reward: torch.Tensor  # [X, N]
    u: torch.Tensor  # [X, k]
    z: torch.Tensor  # [N, k]
    space: SequenceSpace | None = None  # autoregressive worlds: the enumerated sequences
    token_traits: torch.Tensor | None = None  # [V, k], e_v
    sft_tok: torch.Tensor | None = None  # [X, S, V+1], π_sft's token logits at every node
    proxy_choice: dict | None = None  # validated proxies: the chosen penalty and every grid value's held-out accuracy
    policy_tokens: torch.Tensor | None = None  # [V, k]: the token embeddings the policy's features see (K1 aliases some)
    token_mix: torch.Tensor | None = None  # [V+1, V+1]: the one-hot rows the policy's features see (K1 aliases some), or None
    region: torch.Tensor | None = None  # [N] bool: responses with a region token (K1)

    def to(self, dtype: torch.dtype) -> "World":
        """The same world with its float tables in ``dtype`` (training runs in float32)."""
        cast = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in vars(self).items()}
        return World(**cast)

    def policy_features(self, capacity: float = 1.0) -> torch.Tensor:
        """Φ for a policy of width round(capacity × cfg.policy_features): [X, N, d]."""
        width = max(1, round(capacity * self.cfg.policy_features))
        if self.space is not None:  # [X, S, V+1, d]: per node and next token
            tokens = self.token_traits if self.policy_tokens is None else self.policy_tokens
            mix = None if self.token_mix is None else self.token_mix.double()
            return sequence_features(self.space, self.u.double(), tokens.double(), width, seed=self.cfg.seed + 1000,
                                     structured=self.cfg.policy_structured, mix=mix).to(self.u.dtype)
        return features(self.u.double(), self.z.double(), width, seed=self.cfg.seed + 1000,
                        structured=self.cfg.policy_structured).to(self.u.dtype)

    def make_policy(self, capacity: float, runs: int):
        """``runs`` policies at θ = 0 (π_sft) of this world's kind, with features of ``policy_features(capacity)``."""
        feats = self.policy_features(capacity)
        if self.space is not None:
            return AutoregressivePolicy(self.space, self.sft_tok, feats, runs)
        return LogLinearPolicy(self.sft_logp, feats, runs)


def features(u: torch.Tensor, z: torch.Tensor, width: int, seed: int, squares: bool = False, structured: bool = True) -> torch.Tensor:
    """[u_x ⊙ z_y, (z_y ⊙ z_y if squares), RFF(u_x, z_y)] truncated to ``width`` columns: [X, N, width].

    Random Fourier features (Rahimi & Recht 2007) of the concatenated (u_x, z_y)
    with unit bandwidth approximate a Gaussian kernel as the width grows, so the
    width is a capacity knob. Features of a smaller width are a prefix of a
    larger one with the same seed.
    """
    x_n, k = u.shape
    n = z.shape[0]
    inter = u[:, None, :] * z[None, :, :]  # [X, N, k]
    if not structured:
        inter, k = inter[..., :0], 0
    if squares:
        kk = z.shape[1]
        inter = torch.cat([inter, (z * z)[None, :, :].expand(x_n, n, kk)], -1)
        k = inter.shape[-1]
    n_rff = max(width - k, 0)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(max(n_rff, 1), 2 * u.shape[1], generator=g, dtype=u.dtype).T  # column j drawn j-th: prefix-stable
    b = 2 * math.pi * torch.rand(max(n_rff, 1), generator=torch.Generator().manual_seed(seed + 1), dtype=u.dtype)
    kk = u.shape[1]
    uz = torch.cat([u[:, None, :].expand(x_n, n, kk), z[None, :, :].expand(x_n, n, kk)], -1)  # [X, N, 2k]
    rff = math.sqrt(2.0) * torch.cos(uz @ a + b)[..., :n_rff]
    return torch.cat([inter, rff], -1)[..., :width]


def _echo_states(space: SequenceSpace, emb: torch.Tensor, dim: int, g: torch.Generator) -> torch.Tensor:
    """A fixed random recurrent state of every node's prefix: h_0 = 0, h_{t+1} = tanh(W h_t + U e_{y_t}),
    W rescaled to spectral radius 0.9 (an echo-state network, Jaeger 2001). [S, dim]."""
    w = torch.randn(dim, dim, generator=g, dtype=emb.dtype)
    w *= 0.9 / torch.linalg.eigvals(w).abs().max()
    u = torch.randn(dim, emb.shape[1], generator=g, dtype=emb.dtype)
    h = torch.zeros(space.nodes, dim, dtype=emb.dtype)
    for s in range(1, space.nodes):  # nodes are listed by depth: a parent comes before its children
        h[s] = torch.tanh(w @ h[space.node_parent[s]] + u @ emb[space.node_last[s]])
    return h


def sequence_features(space: SequenceSpace, u: torch.Tensor, e: torch.Tensor, width: int, seed: int,
                      structured: bool = True, mix: torch.Tensor | None = None) -> torch.Tensor:
    """φ(x, s, v) of an autoregressive policy, shared across prefixes: [X, S, V+1, width].

    Columns: ``toysim.sequences.bigram_features`` (the structured part: a bigram table and the
    prompt's taste per token; dropped when not ``structured``), then random Fourier features
    (Rahimi & Recht 2007) of (u_x, h_s, e_v) with h_s a fixed random recurrent state of the whole
    prefix (``_echo_states``): the capacity knob, a recurrent policy with a trained log-linear
    readout. Truncated to ``width``; a smaller width is a prefix of a larger one with the same seed.
    ``mix`` [V+1, V+1] (K1's aliasing, docs/judge.md): the rows the structured part uses for each
    token's one-hot, both as the next choice and as the last token of the prefix (None: the identity).
    """
    X, k = u.shape
    V1, S = space.vocab + 1, space.nodes
    g = torch.Generator().manual_seed(seed)
    emb = torch.cat([e, torch.randn(1, e.shape[1], generator=g, dtype=e.dtype)])  # END gets a random embedding
    h = _echo_states(space, emb, 8, g)
    parts = [bigram_features(space, u, mix)] if structured else []
    n_rff = max(width - sum(p.shape[-1] for p in parts), 0)
    if n_rff:
        inp = torch.cat([u[:, None, None, :].expand(X, S, V1, k), h[None, :, None, :].expand(X, S, V1, h.shape[1]),
                         emb[None, None, :, :].expand(X, S, V1, emb.shape[1])], -1)
        a = torch.randn(n_rff, inp.shape[-1], generator=g, dtype=u.dtype).T / math.sqrt(2.0)  # column j drawn j-th
        b = 2 * math.pi * torch.rand(n_rff, generator=torch.Generator().manual_seed(seed + 1), dtype=u.dtype)
        parts.append(math.sqrt(2.0) * torch.cos(inp @ a + b))
    return torch.cat(parts, -1)[..., :width].contiguous()


def make_world(cfg: WorldConfig) -> World:
    """Build the world deterministically from ``cfg`` (float64 throughout)."""
    if cfg.prompts < 1 or cfg.responses < 2 or cfg.golden_pairs < 1:
        raise ValueError("a world needs ≥ 1 prompt, ≥ 2 responses and ≥ 1 golden pair")
    if cfg.policy_kind not in ("atomic", "autoregressive"):
        raise ValueError(f"policy_kind must be 'atomic' or 'autoregressive', got {cfg.policy_kind!r}")
    if cfg.policy_kind != "autoregressive" and any(getattr(cfg, k) for k in TOKEN_KNOBS):
        raise ValueError(f"{', '.join(k for k in TOKEN_KNOBS if getattr(cfg, k))}: token-sequence worlds only")
    g = torch.Generator().manual_seed(cfg.seed)
    dt = torch.float64
    u = torch.randn(cfg.prompts, cfg.traits, generator=g, dtype=dt)
    space = e = sft_tok = policy_tokens = mix = region = None
    V, m, n_nui = cfg.vocab, cfg.region_tokens, cfg.nuisance_tokens
    if cfg.policy_kind == "autoregressive":
        space = SequenceSpace(V + m + n_nui, cfg.max_len)
        e = torch.randn(V, cfg.traits, generator=g, dtype=dt) / math.sqrt(cfg.max_len)
        # the knobs' own random numbers (docs/judge.md, R2), so that a world with them off is today's exactly
        extra = torch.Generator().manual_seed(cfg.seed + 4000)
        alias = token_alias(u, e, cfg.penalty, m)
        e_gold = torch.cat([e, e[alias], torch.zeros(n_nui, cfg.traits, dtype=dt)])  # the golden's traits of every token
        counts = torch.zeros(len(space), V + m + n_nui, dtype=dt)
        for n, p in enumerate(space.responses):
            for t in p:
                counts[n, t] += 1
        z = counts @ e_gold  # z_y = Σ_t e_{y_t}
        if m or n_nui:
            own = torch.randn(m + n_nui, cfg.traits, generator=extra, dtype=dt) / math.sqrt(cfg.max_len)
            a = cfg.region_alias
            policy_tokens = torch.cat([e, a * e[alias] + (1 - a) * own[:m], own[m:]])
            if m and a > 0:
                mix = torch.eye(V + m + n_nui + 1, dtype=dt)
                mix[V + torch.arange(m)] = a * mix[alias] + (1 - a) * mix[V + torch.arange(m)]
    else:
        z = torch.randn(cfg.responses, cfg.traits, generator=g, dtype=dt)
    sq = (z**2).sum(-1)  # [N]
    fit = u @ z.T  # [X, N]
    golden = fit - cfg.penalty * sq[None, :] + cfg.noise * torch.randn(cfg.prompts, z.shape[0], generator=g, dtype=dt)
    if m:  # K1: each region token costs region_penalty × the mean range of the golden without them
        n_region = counts[:, V:V + m].sum(-1)
        region = n_region > 0
        base = golden[:, ~region]
        golden = golden - cfg.region_penalty * (base.amax(-1) - base.amin(-1)).mean() * n_region[None, :]
    if cfg.golden_net:  # K2: a fixed random network of the ordered sequence, in units of the golden's spread
        golden = golden + cfg.golden_net * golden.std() * golden_network(space, u, extra)
    if n_nui:  # K3: a response's golden reward is, exactly, that of the response with its nuisance tokens deleted
        golden = golden[:, without_tokens(space, range(V + m, V + m + n_nui))]
    golden_pref = hard_preference(golden[:, :, None] - golden[:, None, :])
    if space is None:
        sft_logp = torch.log_softmax(-sq[None, :] / (2 * cfg.sft_temp) + 0.5 * fit, -1)
    else:  # the same preference per token: moderate tokens matched to the prompt; END scores as the average token
        tok = -(e**2).sum(-1)[None, :] / (2 * cfg.sft_temp) + 0.5 * u @ e.T  # [X, V]
        mean = tok.mean(-1, keepdim=True)
        rest = torch.cat([tok, mean.expand(-1, n_nui), mean], -1)  # ordinary, nuisance (as END), END
        if m:  # K1: the region's tokens share region_mass of every node's probability, the rest keep their ratios
            r = torch.logsumexp(rest, -1, keepdim=True) + math.log(cfg.region_mass / (m * (1 - cfg.region_mass)))
            tok = torch.cat([tok, r.expand(-1, m), rest[:, V:]], -1)
        else:
            tok = rest
        sft_tok = tok[:, None, :].expand(cfg.prompts, space.nodes, space.vocab + 1).contiguous()
        sft_logp = AutoregressivePolicy(space, sft_tok, sft_tok.new_zeros(*sft_tok.shape, 1), 1).sft_logp
    mu_logp = torch.log_softmax(sft_logp + cfg.mu_shift * fit, -1)

    # D_golden: prompts uniform, both responses from μ, hard golden labels (ties by coin).
    x = torch.randint(cfg.prompts, (cfg.golden_pairs,), generator=g)
    y1 = torch.multinomial(mu_logp.exp()[x], 1, generator=g)[:, 0]
    y2 = torch.multinomial(mu_logp.exp()[x], 1, generator=g)[:, 0]
    y_w, y_l, tie = label_pairs(golden_training_oracle(golden, cfg.label_noise), x, y1, y2, g)
    d_golden = Batch(x, y_w, y_l, tie)

    if cfg.proxy_class == "policy":  # the policy's own class at ×1 (the seed and width of World.policy_features)
        if space is None:
            proxy_feats = features(u, z, cfg.policy_features, seed=cfg.seed + 1000, structured=cfg.policy_structured)
        else:
            tokens = e if policy_tokens is None else policy_tokens
            proxy_feats = response_features(space, sequence_features(space, u, tokens, cfg.policy_features, seed=cfg.seed + 1000,
                                                                     structured=cfg.policy_structured, mix=mix))
    else:
        proxy_feats = features(u, z, cfg.proxy_features, seed=cfg.seed + 2000, squares=cfg.proxy_squares)
    if m:  # K1: the proxy sees how many region tokens a response has, so it can learn the region from D_golden
        proxy_feats = torch.cat([proxy_feats, counts[:, V:V + m].sum(-1)[None, :, None].expand(cfg.prompts, -1, 1)], -1)
    l2, choice = cfg.proxy_l2, None
    if cfg.proxy_fit == "validated":
        choice = validated_penalty(proxy_feats, d_golden, cfg.seed + 3000)
        l2 = choice["l2"]
    proxy = fit_bt(proxy_feats, d_golden.x, d_golden.y_w, d_golden.y_l, l2)
    return World(cfg, golden, golden_pref, sft_logp, mu_logp, d_golden, proxy, u, z, space, e, sft_tok, choice,
                 policy_tokens, mix, region)


def token_alias(u: torch.Tensor, e: torch.Tensor, penalty: float, m: int) -> torch.Tensor:
    """K1's aliases (docs/judge.md): region token j is ordinary token a_j, the (j mod V)-th best by
    its mean golden value over prompts, mean_x(u_x·e_v) − penalty·‖e_v‖². [m] indices."""
    score = (u @ e.T).mean(0) - penalty * (e**2).sum(-1)
    order = torch.argsort(score, descending=True, stable=True)
    return order[torch.arange(m) % e.shape[0]]


def without_tokens(space: SequenceSpace, drop) -> torch.Tensor:
    """[N]: for each response, the index of the response with the tokens in ``drop`` deleted (a
    shorter sequence, so in the space too)."""
    drop = set(drop)
    index = {p: i for i, p in enumerate(space.responses)}
    return torch.tensor([index[tuple(t for t in p if t not in drop)] for p in space.responses])


def golden_network(space: SequenceSpace, u: torch.Tensor, g: torch.Generator, hidden: int = 32) -> torch.Tensor:
    """K2 (docs/judge.md): f(x, y), a fixed random two-layer tanh network of the prompt's tastes u_x
    and the one-hot token at every position (a "none" slot past the end), standardised to mean 0
    and standard deviation 1 over all (x, y). [X, N]."""
    X, k = u.shape
    V1, L = space.vocab + 1, space.max_len
    pos = torch.full((len(space), L), space.vocab, dtype=torch.long)  # index V: no token at that position
    for n, p in enumerate(space.responses):
        pos[n, :len(p)] = torch.tensor(p, dtype=torch.long)
    onehot = torch.nn.functional.one_hot(pos, V1).reshape(len(space), L * V1).to(u.dtype)  # [N, L·(V+1)]
    inp = torch.cat([u[:, None, :].expand(X, len(space), k), onehot[None].expand(X, -1, -1)], -1)
    w1 = torch.randn(hidden, inp.shape[-1], generator=g, dtype=u.dtype) / math.sqrt(inp.shape[-1])
    b1 = torch.randn(hidden, generator=g, dtype=u.dtype)
    w2 = torch.randn(hidden, generator=g, dtype=u.dtype) / math.sqrt(hidden)
    f = torch.tanh(inp @ w1.T + b1) @ w2
    return (f - f.mean()) / f.std()


def response_features(space: SequenceSpace, token_feats: torch.Tensor) -> torch.Tensor:
    """Per-token features [X, S, V+1, d] summed along each response's choices: [X, N, d], the
    features in which a token-sequence policy's log-probability (``toysim.sequences``, (1)) is
    linear up to its normalisers."""
    X, S, V1, d = token_feats.shape
    flat = token_feats.reshape(X, S * V1, d)
    return (flat[:, space.choice] * space.valid[None, :, :, None].to(flat.dtype)).sum(2)
