"""Run one study of ``shared.studies`` with language models: ``Runner`` and ``run_study``.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_run.py.

Same sections, in the same order, as ``toysim.study``:
1. the world — ``fullscale.world.World`` (data, SFT, golden PM, D_golden, proxy PM);
2. the golden policy (``shared.studies.GOLDEN``, the first entry of ``shared.protocol.plan``):
   online IPO with golden-PM labels, baseline config; a fixed sample of its responses is the
   win-rate reference (``Golden``);
3. the study's arms, in the plan's order, every (sweep config, seed) run, through
   ``fullscale.train.optimise`` and the sampler ``shared.protocol.make_sampler`` builds; cached
   like the world's stages, an unfinished run resumes from its saved state; evaluated at
   checkpoints by ``fullscale.evaluate``;
4. the results dict (``shared.results``) and the claims' verdicts.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fullscale.config import RunConfig
from fullscale.data import Prepared
from fullscale.decode import LMPolicy, decode
from fullscale.dist import SINGLE
from fullscale.evaluate import evaluate_checkpoint
from fullscale.lm import sequence_logp
from fullscale.store import atomic_save, safe_load
from fullscale.train import optimise
from fullscale.world import World
from shared.claims import judge
from shared.protocol import ArmPlan, SamplerWorld, make_sampler, plan, stream_generator
from shared.results import results_header, run_record
from shared.sampling import Batch, policy_pair_dataset
from shared.studies import GOLDEN, STUDIES

__all__ = ["Golden", "Runner", "run_study", "setting"]


@dataclass(frozen=True)
class Golden:
    """What the golden policy leaves for every evaluation: its run's cache folder name (part of
    every later run's cache key), the win-rate prompts ``win_x`` [n] and its responses ``y`` [n, T]
    on them (sampled once), and the D_golden pairs the accuracies are measured on (``acc``) with
    π_sft's log-probs of their chosen and rejected responses (``acc_ref``)."""

    run: str
    win_x: torch.Tensor
    y: torch.Tensor
    acc: Batch
    acc_ref: tuple[torch.Tensor, torch.Tensor]


class Runner:
    """A run's world (``World``), its golden policy (``Golden``) and the arms run so far."""

    def __init__(self, cfg: RunConfig, progress=None, log=None, data: Prepared | None = None, dist=SINGLE):
        """Build the world (or load its stages from the cache); ``log(record)`` receives each
        checkpoint's metrics; ``dist``: the processes that run it together (``fullscale.dist``).
        The golden policy and the arms run in ``run`` (``run_study``)."""
        # ---------------------------------------------------------------- 1. the world
        self.world = World(cfg, progress, data, dist)
        self.cfg, self.t, self.dist = cfg, cfg.train, dist
        self.log = log or (lambda rec: None)
        self.golden: Golden | None = None
        self.arms: dict[str, list[dict]] = {}

    # ---------------------------------------------------------------- 2. the golden policy, 3. the arms
    def run(self, plans: list[ArmPlan]) -> None:
        """Run every arm of ``plans`` in order (``shared.protocol.plan``: the golden policy first)."""
        for p in plans:
            if p.arm == GOLDEN:
                self.run_golden(p)
            else:
                self.run_arm(p)

    def run_golden(self, p: ArmPlan) -> Golden:
        """Online IPO with golden-PM labels (baseline config, seed 0, not evaluated); its responses on
        the win-rate prompts are sampled once and judged against at every checkpoint."""
        if self.golden is not None:
            return self.golden
        w = self.world
        runs = self._runs(p, seeds=[0], evaluate=False)
        d = Path(runs[0]["dir"])
        model = w.new_policy(1.0)
        model.load_state_dict(safe_load(d / "final.pt"))
        n = min(self.cfg.eval.win_prompts, len(w.prompts.ids))
        g = stream_generator(self.cfg.seed, "golden-responses", w.device)
        win_x = torch.arange(n, device=w.device)
        y = decode(model, w.prompts, win_x, self.cfg.data.max_response_tokens, w.ids["eos"], w.ids["pad"], g,
                   temperature=self.t.temperature)
        order = torch.randperm(len(w.d_golden), generator=torch.Generator().manual_seed(7))
        acc = w.d_golden.take(order[: self.cfg.eval.acc_pairs].to(w.device))
        sft = w.sft[1.0]
        acc_ref = (sequence_logp(sft, w.prompts, acc.x, acc.y_w, **w.policy_ops()).detach(),
                   sequence_logp(sft, w.prompts, acc.x, acc.y_l, **w.policy_ops()).detach())
        self.golden = Golden(d.name, win_x, y, acc, acc_ref)
        for m in w.sft.values():  # fsdp: the reference policies sharded too
            self.dist.shard_frozen(m)
        return self.golden

    def run_arm(self, p: ArmPlan) -> list[dict]:
        """Every (sweep config, seed) run of an arm, each cached (``_run``)."""
        return self._runs(p, seeds=range(self.cfg.seeds), evaluate=True)

    def _runs(self, p: ArmPlan, seeds, evaluate: bool) -> list[dict]:
        if p.arm.name not in self.arms:
            self.arms[p.arm.name] = [self._run(p, c, s, evaluate) for c in p.configs for s in seeds]
        return self.arms[p.arm.name]

    def stream_dir(self, name: str, seed: int) -> Path:
        """The cache folder of arm ``name``'s run with ``seed``."""
        return Path(self.arms[name][[r["seed"] for r in self.arms[name]].index(seed)]["dir"])

    def _run(self, p: ArmPlan, c: dict, seed: int, evaluate: bool) -> dict:
        w, t, ev, arm = self.world, self.t, self.cfg.eval, p.arm
        golden_run = self.golden.run if self.golden is not None else None  # None while the golden policy itself trains
        deps = [w.world_key, golden_run, repr(arm), c, seed, t.batch_size, t.temperature,
                t.checkpoints, t.steps, asdict(ev), self.cfg.models.policy.width, self.cfg.seed, *w.numerics_key()]
        if p.reads is not None:
            deps.append(str(self.stream_dir(p.reads, seed)))
        if self.dist.active:  # per-example draws (fullscale.dist): other samples than one process's default
            deps.append("per-example draws (inverse CDF, batched)")
        d, done = w.stage(f"run-{arm.name}", *deps)
        record = {**run_record(seed, c, arm, {}), "dir": str(d)}
        ref = w.sft_of(arm.capacity)
        if done:
            loss = json.loads((d / "loss.json").read_text()) if (d / "loss.json").exists() else []
            return {**record, "series": json.loads((d / "series.json").read_text()), "loss": loss}
        d.mkdir(parents=True, exist_ok=True)
        dist, main = self.dist, self.dist.main  # several processes train this run together; rank 0 writes
        model = w.new_policy(arm.capacity)
        model.load_state_dict(dist.full_state(ref, everywhere=True))
        g = stream_generator(seed, f"{arm.name}/{c}", w.device)
        policy = LMPolicy(model, w.prompts, self.cfg.data.max_response_tokens, w.ids["eos"], w.ids["pad"], t.temperature, dist=dist)
        steps = c["steps"]
        sampler = self._sampler(p, policy, seed, g, steps)
        online_pairs: dict[int, dict] = {}
        losses: list[float] = []
        partner = self._partner_pairs(p, seed)

        def run_eval(step):
            if not evaluate:
                return {}
            res, pairs = evaluate_checkpoint(w, self.golden, model, ref, arm, seed, step, partner)
            if pairs is not None:
                online_pairs[step] = pairs
                if main:
                    atomic_save(online_pairs, d / "eval_pairs.pt")
            self.log({"arm": arm.name, "seed": seed, **{k: c[k] for k in ("lr", "beta")}, "step": step, **res})
            return res

        def snapshot(step):
            whole = dist.full_state(model)  # a collective when the policy is sharded
            if main:
                atomic_save(whole, d / f"snap-{step}.pt")

        if (d / "eval_pairs.pt").exists():
            online_pairs.update(safe_load(d / "eval_pairs.pt"))
        state = d / ("state-dcp" if dist.fsdp else "state.pt")  # fsdp: a pointer to the folder of sharded state
        with w.progress(steps, f"{arm.name} s{seed} lr{c['lr']:.0e} β{c['beta']:g}") as bar:
            series = optimise(model, ref, w.prompts, sampler, arm.loss, c["beta"], c["lr"], steps,
                              set(p.checkpoints) if evaluate else set(), run_eval, w.ids["eos"], w.ids["pad"],
                              state_path=state, save_every=t.save_every, snapshot_at=set(p.snapshots), snapshot=snapshot, progress=bar,
                              dist=dist, losses=losses, fast=t.numerics == "fast")
        whole = dist.full_state(model)
        if main:
            atomic_save(whole, d / "final.pt")
            if p.provides:
                atomic_save({k: torch.stack([getattr(b, k) for b in sampler.log]) for k in ("x", "y_w", "y_l", "tie")}, d / "stream.pt")
            (d / "series.json").write_text(json.dumps(series))
            (d / "loss.json").write_text(json.dumps(losses))
            for f in [state, *d.glob(f"{state.name}-*")]:
                shutil.rmtree(f) if f.is_dir() else f.unlink(missing_ok=True)
            w.finish(d, {k: v for k, v in record.items() if k != "series"})
        dist.barrier()  # later arms read this run's files (its stream, snapshots, final policy)
        return {**record, "series": series, "loss": losses}

    def _partner_pairs(self, p: ArmPlan, seed: int):
        """``step -> pairs`` of the arm's online partner's own evaluation pairs (``ArmPlan.partner``),
        for the "online pairs" accuracies of an arm that is not online; None where there are none."""
        if p.provides or p.partner not in self.arms:
            return None

        def at(step):
            f = self.stream_dir(p.partner, seed) / "eval_pairs.pt"
            if not f.exists():
                return None
            pairs = safe_load(f)
            steps = [s for s in pairs if s <= step] or [min(pairs)]
            return {k: v.to(self.world.device) for k, v in pairs[max(steps)].items()}

        return at

    def _sampler(self, p: ArmPlan, policy, seed: int, g, steps: int = 0):
        """``shared.protocol.make_sampler`` over this world: one run, the proxy Bradley–Terry model as reward."""
        w, arm = self.world, p.arm

        def mixture(pol, alpha):  # IPO-MD's per-token mixture π^{1−α}·π_sft^α
            return LMPolicy(pol.model, pol.prompts, pol.length, pol.eos, pol.pad, pol.temperature, mix=(w.sft[arm.capacity], alpha),
                            dist=pol.dist)

        def reward(labels):
            if labels != "proxy":
                raise ValueError("fullscale's RLHF arm scores with the proxy Bradley–Terry reward model (labels='proxy')")
            return w.reward_model()

        def stream(name):
            s = safe_load(self.stream_dir(name, seed) / "stream.pt")
            return [Batch(*(s[k][i].to(w.device) for k in ("x", "y_w", "y_l", "tie"))) for i in range(len(s["x"]))]

        world = SamplerWorld(prompts=torch.arange(len(w.prompts.ids), device=w.device), batch=(self.t.batch_size,),
                             d_golden=w.d_golden, mixture=mixture, reward=reward, stream=stream,
                             checkpoint_pairs=lambda a, gen: self._checkpoint_dataset(p, seed, gen))
        oracle = w.golden_oracle if arm.labels == "golden" else w.proxy_oracle
        return make_sampler(arm, world, policy, oracle, g, steps)

    def _checkpoint_dataset(self, p: ArmPlan, seed: int, g) -> Batch:
        """Pairs y1 ~ checkpoint a, y2 ~ checkpoint b of the online run it reads (``ArmPlan.reads``;
        fractions of its steps, 0 = SFT), golden-labelled, one per prompt of D_golden (Tang et al. 2024, §5)."""
        w = self.world
        d = self.stream_dir(p.reads, seed)

        def at(frac):
            m = w.new_policy(1.0)
            m.load_state_dict(self.dist.full_state(w.sft[1.0], everywhere=True) if frac == 0 else
                              safe_load(d / f"snap-{round(frac * self.t.steps)}.pt"))
            return LMPolicy(m, w.prompts, self.cfg.data.max_response_tokens, w.ids["eos"], w.ids["pad"], self.t.temperature)

        a, b = p.arm.params["pair"]
        return policy_pair_dataset(at(a), at(b), w.d_golden.x, w.golden_oracle, g)


def _machine(device) -> str:
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else (platform.processor() or platform.machine())
    return f"{name}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}, {device.type}"


def setting(config: dict) -> str:
    """The one-line ``setting`` of a fullscale results dict (``shared.results.results_header``) from
    its resolved config: the data it read and each model (built from scratch, loaded, or a judge)."""
    data = config["data"]
    source = data["source"] + (f" from `{data['path']}`" if data.get("path") else "")
    m = config["models"]

    def model(kind):
        judge_path = m.get(f"{kind.removesuffix('_pm')}_judge_path")
        if judge_path:
            return f"{kind.removesuffix('_pm')} judge `{judge_path}` (a reward model, used as trained)"
        path = m.get(f"{kind}_path")
        if path:
            return f"{kind} `{path}`"
        if kind == "golden_pm" and m.get("golden_pm_init") == "sft":
            return "golden_pm started from π_sft's weights"
        a = m[kind]
        layers = f"{a['layers']} layer" + ("s" if a["layers"] != 1 else "")
        return f"{kind} {a['arch']} ({layers} × width {a['width']}, from scratch)"

    return f"data: {source}; models: " + ", ".join(model(k) for k in ("policy", "golden_pm", "proxy_pm"))


def run_study(runner: Runner, study_name: str) -> dict:
    """Run the golden policy and every arm of a study (``shared.protocol.plan``) and judge its
    claims; returns the results dict (toysim's schema)."""
    study = STUDIES[study_name]
    cfg = runner.cfg
    runner.run(plan(study, runner.t))  # the golden policy, then streams and checkpoints before the arms that read them
    # ---------------------------------------------------------------- 4. results
    config = json.loads(json.dumps(asdict(cfg), default=str))
    for k in ("out", "cache", "resume", "dry_run"):
        config.pop(k, None)
    out = results_header(study, cfg.preset, "sgd", cfg.seeds, config, setting(config), backend="fullscale")
    out["arms"] = {a.name: [{k: v for k, v in r.items() if k != "dir"} for r in runner.arms[a.name]] for a in study.arms}
    out["extras"] = {**runner.world.extras, "machine": _machine(runner.world.device)}
    out["claims"] = judge(study, out)
    return out
