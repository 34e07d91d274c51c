"""The LLM study of Tang et al. 2024 on a ``fullscale.world.World``: the golden policy and the arms.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_run.py.

Same sections, in the same order, as ``toysim.study``:
1. the world — ``fullscale.world`` (data, SFT, golden PM, D_golden, proxy PM);
2. the golden policy: online IPO with golden-PM labels, baseline config; a
   fixed sample of its responses is the win-rate reference;
3. each arm of the study (``shared.studies``), every (sweep config, seed) run,
   through ``fullscale.train.optimise`` and the sampler ``shared.protocol.make_sampler``
   builds; cached like the world's stages, an unfinished run resumes from its saved state;
4. evaluation at checkpoints (``fullscale.evaluate``) and the results dict of ``shared.studies``.
"""

from __future__ import annotations

import json
import os
import shutil
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from fullscale.config import RunConfig
from fullscale.data import Prepared
from fullscale.decode import decode
from fullscale.dist import SINGLE
from fullscale.evaluate import evaluate_checkpoint
from fullscale.lm import LMPolicy, sequence_logp
from fullscale.train import atomic_save, optimise, safe_load
from fullscale.world import World
from shared.claims import judge
from shared.protocol import (SamplerWorld, checkpoint_steps, dataset_fractions, make_sampler, provides_stream, run_order,
                             stream_generator, stream_read_by, sweep_configs)
from shared.sampling import Batch, policy_pair_dataset
from shared.studies import STUDIES, Arm

__all__ = ["Pipeline", "run_study"]


class Pipeline(World):
    """A run's world, its golden policy and the arms run so far."""

    def __init__(self, cfg: RunConfig, progress=None, log=None, data: Prepared | None = None, dist=SINGLE):
        """Build the world (``World``), then train the golden policy; ``log(record)`` receives
        each checkpoint's metrics; ``dist``: the processes that run it together (``fullscale.dist``)."""
        super().__init__(cfg, progress, data, dist)
        self.log = log or (lambda rec: None)
        self.arms: dict[str, list[dict]] = {}
        self._golden()
        for m in self.sft.values():  # fsdp: the reference policies sharded too
            self.dist.shard_frozen(m)

    # ---------------------------------------------------------------- 2. the golden policy
    def _golden(self):
        """Online IPO with golden-PM labels (baseline config); its responses on the win-rate
        prompts are sampled once and judged against at every checkpoint."""
        arm = Arm("golden", "online", labels="golden")
        runs = self.run_arm(arm, seeds=[0], evaluate=False)
        d = Path(runs[0]["dir"])
        self.golden_run = d.name
        model = self._new_policy(1.0)
        model.load_state_dict(safe_load(d / "final.pt"))
        n = min(self.cfg.eval.win_prompts, len(self.prompts.ids))
        g = stream_generator(self.cfg.seed, "golden-responses", self.device)
        self.win_x = torch.arange(n, device=self.device)
        self.golden_y = decode(model, self.prompts, self.win_x, self.cfg.data.max_response_tokens, self.ids["eos"],
                                 self.ids["pad"], g, temperature=self.t.temperature)
        acc = self.d_golden.take(torch.randperm(len(self.d_golden), generator=torch.Generator().manual_seed(7))[: self.cfg.eval.acc_pairs].to(self.device))
        self.acc_batch = acc
        sft = self.sft[1.0]
        self.acc_ref = (sequence_logp(sft, self.prompts, acc.x, acc.y_w, **self.policy_ops()).detach(),
                        sequence_logp(sft, self.prompts, acc.x, acc.y_l, **self.policy_ops()).detach())

    # ---------------------------------------------------------------- 3. arms
    def configs(self, arm: Arm) -> list[dict]:
        return sweep_configs(arm, self.t)

    def checkpoints(self, steps: int) -> set[int]:
        return checkpoint_steps(steps, self.t)

    def run_arm(self, arm: Arm, seeds=None, evaluate: bool = True) -> list[dict]:
        if arm.name in self.arms:
            return self.arms[arm.name]
        seeds = range(self.cfg.seeds) if seeds is None else seeds
        out = []
        for c in self.configs(arm):
            for s in seeds:
                out.append(self._run(arm, c, s, evaluate))
        self.arms[arm.name] = out
        return out

    def stream_dir(self, name: str, seed: int) -> Path:
        """The cache folder of arm ``name``'s run with ``seed``."""
        return Path(self.arms[name][[r["seed"] for r in self.arms[name]].index(seed)]["dir"])

    def _run(self, arm: Arm, c: dict, seed: int, evaluate: bool) -> dict:
        t, ev = self.t, self.cfg.eval
        deps = [self.world_key, getattr(self, "golden_run", None), repr(arm), c, seed, t.batch_size, t.temperature,
                t.checkpoints, t.steps, asdict(ev), self.cfg.models.policy.width, self.cfg.seed, *self._numerics()]
        if stream_read_by(arm) is not None:
            deps.append(str(self.stream_dir(stream_read_by(arm), seed)))
        if self.dist.active:  # per-example draws (fullscale.dist): other samples than one process's default
            deps.append("per-example draws (inverse CDF, batched)")
        d, done = self._stage(f"run-{arm.name}", *deps)
        record = {"seed": seed, "config": {**c, "loss": arm.loss, "labels": arm.labels, "capacity": arm.capacity}, "dir": str(d)}
        if arm.capacity not in self.sft:
            self.sft[arm.capacity] = self.dist.shard_frozen(self._sft(arm.capacity))
        if done:
            loss = json.loads((d / "loss.json").read_text()) if (d / "loss.json").exists() else []
            return {**record, "series": json.loads((d / "series.json").read_text()), "loss": loss}
        d.mkdir(parents=True, exist_ok=True)
        dist, main = self.dist, self.dist.main  # several processes train this run together; rank 0 writes
        ref = self.sft[arm.capacity]
        model = self._new_policy(arm.capacity)
        model.load_state_dict(dist.full_state(ref, everywhere=True))
        g = stream_generator(seed, f"{arm.name}/{c}", self.device)
        policy = LMPolicy(model, self.prompts, self.cfg.data.max_response_tokens, self.ids["eos"], self.ids["pad"], t.temperature,
                          dist=dist)
        steps = c["steps"]
        sampler = self._sampler(arm, policy, seed, g, steps)
        online_pairs: dict[int, dict] = {}
        losses: list[float] = []

        def run_eval(step):
            if not evaluate:
                return {}
            res, pairs = evaluate_checkpoint(self, model, ref, arm, seed, step)
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
        snaps = {round(f * t.steps) for f in dataset_fractions() if 0 < f} if provides_stream(arm) else set()
        state = d / ("state-dcp" if dist.fsdp else "state.pt")  # fsdp: a pointer to the folder of sharded state
        with self.progress(steps, f"{arm.name} s{seed} lr{c['lr']:.0e} β{c['beta']:g}") as bar:
            series = optimise(model, ref, self.prompts, sampler, arm.loss, c["beta"], c["lr"], steps,
                              self.checkpoints(steps) if evaluate else set(), run_eval, self.ids["eos"], self.ids["pad"],
                              state_path=state, save_every=t.save_every, snapshot_at=snaps, snapshot=snapshot, progress=bar,
                              dist=dist, losses=losses, fast=t.numerics == "fast")
        whole = dist.full_state(model)
        if main:
            atomic_save(whole, d / "final.pt")
            if provides_stream(arm):
                atomic_save({k: torch.stack([getattr(b, k) for b in sampler.log]) for k in ("x", "y_w", "y_l", "tie")}, d / "stream.pt")
            (d / "series.json").write_text(json.dumps(series))
            (d / "loss.json").write_text(json.dumps(losses))
            for p in [state, *d.glob(f"{state.name}-*")]:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            self._done(d, record)
        dist.barrier()  # later arms read this run's files (its stream, snapshots, final policy)
        return {**record, "series": series, "loss": losses}

    def _sampler(self, arm: Arm, policy, seed: int, g, steps: int = 0):
        """``shared.protocol.make_sampler`` over this world: one run, the proxy Bradley–Terry model as reward."""
        def mixture(pol, alpha):  # IPO-MD's per-token mixture π^{1−α}·π_sft^α
            return LMPolicy(pol.model, pol.prompts, pol.length, pol.eos, pol.pad, pol.temperature, mix=(self.sft[arm.capacity], alpha),
                            dist=pol.dist)

        def reward(labels):
            if labels != "proxy":
                raise ValueError("fullscale's RLHF arm scores with the proxy Bradley–Terry reward model (labels='proxy')")
            return self.reward_model()

        def stream(name):
            s = safe_load(self.stream_dir(name, seed) / "stream.pt")
            return [Batch(*(s[k][i].to(self.device) for k in ("x", "y_w", "y_l", "tie"))) for i in range(len(s["x"]))]

        world = SamplerWorld(prompts=torch.arange(len(self.prompts.ids), device=self.device), batch=(self.t.batch_size,),
                             d_golden=self.d_golden, mixture=mixture, reward=reward, stream=stream,
                             checkpoint_pairs=lambda a, gen: self._checkpoint_dataset(a, seed, gen))
        oracle = self.golden_oracle if arm.labels == "golden" else self.proxy_oracle
        return make_sampler(arm, world, policy, oracle, g, steps)

    def _checkpoint_dataset(self, arm: Arm, seed: int, g) -> Batch:
        """Pairs y1 ~ checkpoint a, y2 ~ checkpoint b of the online run (fractions; 0 = SFT),
        golden-labelled, one per prompt of D_golden (Tang et al. 2024, §5)."""
        d = self.stream_dir(stream_read_by(arm), seed)

        def at(frac):
            m = self._new_policy(1.0)
            m.load_state_dict(self.dist.full_state(self.sft[1.0], everywhere=True) if frac == 0 else
                              safe_load(d / f"snap-{round(frac * self.t.steps)}.pt"))
            return LMPolicy(m, self.prompts, self.cfg.data.max_response_tokens, self.ids["eos"], self.ids["pad"], self.t.temperature)

        a, b = arm.params["pair"]
        return policy_pair_dataset(at(a), at(b), self.d_golden.x, self.golden_oracle, g)


def _machine(device) -> str:
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else (platform.processor() or platform.machine())
    return f"{name}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads, torch {torch.__version__}, {device.type}"


def run_study(pipe: Pipeline, study_name: str) -> dict:
    """Run every arm of a study and judge its claims; returns the results dict (toysim's schema)."""
    study = STUDIES[study_name]
    for arm in run_order(study.arms):  # streams and checkpoints first
        pipe.run_arm(arm)
    cfg = pipe.cfg
    arms = {a.name: [{k: v for k, v in r.items() if k != "dir"} for r in pipe.arms[a.name]] for a in study.arms}
    out = {"study": study.name, "question": study.question, "preset": cfg.preset, "mode": "sgd", "seeds": cfg.seeds,
           "backend": "fullscale", "config": json.loads(json.dumps(asdict(cfg), default=str)), "arms": arms,
           "extras": {**pipe.extras, "machine": _machine(pipe.device)}}
    out["config"].pop("out", None), out["config"].pop("cache", None), out["config"].pop("resume", None)
    out["claims"] = judge(study, out)
    return out
