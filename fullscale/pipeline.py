"""The LLM pipeline of Tang et al. 2024, stage by stage, with a stage cache.

Docs: docs/fullscale.md. Tests: tests/test_fullscale_run.py.

Same sections, in the same order, as ``toysim.study``:
1. the world — task data; SFT of the policy on both responses of every pair;
   the golden PM trained on the initial (rater / human) labels; D_golden, the
   pairs relabelled by the golden PM; the proxy PM trained on D_golden;
2. the golden policy: online IPO with golden-PM labels, baseline config; a
   fixed sample of its responses is the win-rate reference;
3. each arm of the study (``shared.studies``), every (sweep config, seed) run,
   through ``fullscale.train.optimise`` and the samplers of ``shared.sampling``;
4. evaluation at checkpoints and the results dict of ``shared.studies``.

Every stage is stored under ``cache/<stage>-<hash>`` where the hash covers the
config fields it depends on and its inputs' hashes, written to a temporary
name and renamed when finished; a finished stage is reused, an unfinished
policy run resumes from its saved state.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fullscale.config import RunConfig
from fullscale.data import Prepared, prepare
from fullscale.lm import LMPolicy, PMOracle, Prompts, pm_scores, sample_responses, sequence_logp, tokenwise_kl
from fullscale.models import build_model, load_model, save_model, special_ids, width_for_capacity
from fullscale.train import atomic_save, clear_stage_tmp, fit_pm, optimise, safe_load, supervised
from shared.metrics import classifier_accuracy, logp_shift, policy_margin
from shared.preferences import hard_preference, label_pairs
from shared.sampling import Batch, policy_pair_dataset
from shared.protocol import (SamplerWorld, checkpoint_steps, dataset_fractions, make_sampler, provides_stream, run_order,
                             stream_read_by, sweep_configs)
from shared.studies import STUDIES, Arm, judge

__all__ = ["Pipeline", "run_study", "config_hash", "data_stage_dir"]

def data_stage_deps(cfg: RunConfig) -> tuple:
    """The data stage's name and the config it depends on (``Pipeline._stage``'s arguments)."""
    return "data", asdict(cfg.data), asdict(cfg.models)


def data_stage_dir(cfg: RunConfig) -> Path:
    """Where the data stage of ``cfg`` is cached."""
    name, *deps = data_stage_deps(cfg)
    return Path(cfg.cache or cfg.out / "cache") / f"{name}-{config_hash(*deps)}"


def config_hash(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _gen(seed: int, name: str, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(config_hash(seed, name), 16) % (2**62))


def _null_progress(total, desc):
    import contextlib

    return contextlib.nullcontext(None)


class Pipeline:
    """Holds the world (data, SFT policy, golden and proxy PMs) and the finished arms."""

    def __init__(self, cfg: RunConfig, progress=None, log=None, data: Prepared | None = None):
        """``data``: the run's data already read and checked (``fullscale.data.prepare``); read here when None."""
        self.cfg, self.t = cfg, cfg.train
        self.prepared = data
        self.progress = progress or _null_progress
        self.log = log or (lambda rec: None)
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if cfg.device == "auto" else cfg.device))
        self.cache = Path(cfg.cache or cfg.out / "cache")
        self.cache.mkdir(parents=True, exist_ok=True)
        self.arms: dict[str, list[dict]] = {}
        self.extras: dict = {}
        self._world()
        self._golden()

    # ---------------------------------------------------------------- helpers
    def _stage(self, name: str, *deps) -> tuple[Path, bool]:
        """(directory, finished?) of a cached stage. Temporary files a killed process left in
        it (``*.tmp``, by ``atomic_save`` and ``save_model``, never read) are removed; nothing
        outside the stage's own folder is touched."""
        d = self.cache / f"{name}-{config_hash(*deps)}"
        clear_stage_tmp(d)
        return d, (d / "DONE").exists()

    @staticmethod
    def _done(d: Path, info: dict | None = None) -> None:
        (d / "info.json").write_text(json.dumps(info or {}, indent=1, sort_keys=True, default=str))
        (d / "DONE").write_text("")

    def _policy_ops(self):
        return dict(eos=self.ids["eos"], pad=self.ids["pad"])

    # ---------------------------------------------------------------- 1. the world
    def _world(self):
        cfg, dev = self.cfg, self.device
        d, done = self._stage(*data_stage_deps(cfg))
        if not done:
            d.mkdir(parents=True, exist_ok=True)
            prep = self.prepared or prepare(cfg)
            prep.tokenizer.save_pretrained(d / "tokenizer")
            atomic_save(prep.tensors, d / "data.pt")
            if prep.prompt_texts is not None:
                (d / "prompts.json").write_text(json.dumps(prep.prompt_texts))
            self._done(d, prep.info)
        info = json.loads((d / "info.json").read_text())
        self.extras["data"] = info
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer", local_files_only=True)
        self.ids = special_ids(self.tokenizer)
        t = safe_load(d / "data.pt")
        self.prompts = Prompts(t["prompt_ids"], t["prompt_mask"]).to(dev)
        self.pairs = {k: t[k].to(dev) for k in ("x", "y_a", "y_b", "a_wins", "tie")}
        self.split = t["train"].to(dev)  # bool: pair used for training (else held out)
        self.data_key = d.name
        self.sft, self.sft_dir = {}, {}
        self.sft[1.0] = self._sft(1.0)
        golden_from, golden_key = cfg.models.golden_pm_path, None
        if golden_from is None and cfg.models.golden_pm_init == "sft":  # π_sft's weights, a new scalar head
            golden_from, golden_key = self.sft_dir[1.0] / "model", self.sft_dir[1.0].name
        self.golden_pm = self._pm("golden_pm", cfg.models.golden_pm, golden_from, *self._human_labels(), path_key=golden_key)
        self.golden_oracle = PMOracle(self.golden_pm, self.prompts, cfg.models.pm_kind, self.ids["eos"], self.ids["pad"], self.ids["cls"])
        self.d_golden = self._relabel()
        frac = self.t.proxy_fraction
        tr = torch.nonzero(self.split).squeeze(-1)
        tr = tr[: max(1, int(round(frac * len(tr))))]
        self.proxy_pm = self._pm("proxy_pm", cfg.models.proxy_pm, cfg.models.proxy_pm_path,
                                 self.d_golden.x[tr], self.d_golden.y_w[tr], self.d_golden.y_l[tr], extra=self.golden_key)
        self.proxy_oracle = PMOracle(self.proxy_pm, self.prompts, cfg.models.pm_kind, self.ids["eos"], self.ids["pad"], self.ids["cls"])
        self._pm_report()

    def _human_labels(self):
        """The initial labels (rater or dataset): chosen/rejected of the training pairs, ties dropped."""
        p = self.pairs
        keep = self.split & ~p["tie"]
        a_w = p["a_wins"][keep, None]
        return p["x"][keep], torch.where(a_w, p["y_a"][keep], p["y_b"][keep]), torch.where(a_w, p["y_b"][keep], p["y_a"][keep])

    def _new_policy(self, capacity: float):
        m = self.cfg.models
        if m.policy_path is not None:
            if capacity != 1.0:
                raise ValueError("the scale study builds policies of several widths; it cannot scale a model loaded from --models.policy-path")
            return load_model(m.policy_path, device=self.device)[0]
        spec = m.policy
        spec = replace(spec, width=width_for_capacity(spec, len(self.tokenizer), self.ids, capacity))
        return build_model(spec, len(self.tokenizer), self.ids, self.cfg.seed).to(self.device)

    def _sft(self, capacity: float):
        """π_sft: maximum likelihood on both responses of every training pair (Tang et al. 2024, §3)."""
        d, done = self._stage(f"sft@{capacity:g}", self.data_key, asdict(self.cfg.models.policy), str(self.cfg.models.policy_path),
                              capacity, self.t.sft_epochs, self.t.sft_lr, self.t.batch_size, self.cfg.seed)
        if not done:
            model = self._new_policy(capacity)
            p = self.pairs
            x = torch.cat([p["x"][self.split], p["x"][self.split]])
            y = torch.cat([p["y_a"][self.split], p["y_b"][self.split]])
            g = torch.Generator().manual_seed(self.cfg.seed)
            steps = self.t.sft_epochs * math.ceil(len(x) / self.t.batch_size)
            with self.progress(steps, f"sft@{capacity:g}") as bar:
                hist = supervised(model, self.prompts, x, y, **self._policy_ops(), lr=self.t.sft_lr, epochs=self.t.sft_epochs,
                                  batch_size=self.t.batch_size, generator=g, progress=bar)
            save_model(model, self.tokenizer, d / "model")
            self._done(d, {"loss_per_epoch": hist, "params": sum(q.numel() for q in model.parameters())})
        self.sft_dir[capacity] = d
        self.extras.setdefault("models", {})[f"sft@{capacity:g}"] = json.loads((d / "info.json").read_text())
        return load_model(d / "model", device=self.device)[0]

    def _pm(self, name, spec, path, x, y_w, y_l, extra=None, kind=None, path_key=None):
        """A preference model trained on (y_w, y_l); built from ``spec``, or started from the causal LM
        at ``path`` (cached under ``path_key`` when given, e.g. a stage's name, else under the path)."""
        m, t = self.cfg.models, self.t
        kind = kind or m.pm_kind
        d, done = self._stage(name, self.data_key, asdict(spec), path_key or str(path), kind, t.pm_epochs, t.pm_lr,
                              t.batch_size, self.cfg.seed, extra)
        if not done:
            pm = (load_model(path, head=True, device=self.device)[0] if path is not None else
                  build_model(spec, len(self.tokenizer), self.ids, self.cfg.seed + 1, head=True).to(self.device))
            g = torch.Generator().manual_seed(self.cfg.seed + 2)
            steps = t.pm_epochs * math.ceil(len(x) / t.batch_size)
            with self.progress(steps, name) as bar:
                hist = fit_pm(pm, self.prompts, x, y_w, y_l, kind, self.ids["eos"], self.ids["pad"], self.ids["cls"],
                              t.pm_lr, t.pm_epochs, t.batch_size, g, bar)
            save_model(pm, self.tokenizer, d / "model")
            self._done(d, {"loss_per_epoch": hist, "params": sum(q.numel() for q in pm.parameters()), "train_pairs": len(x)})
        if name == "golden_pm":
            self.golden_key = d.name
        elif name == "proxy_pm":
            self.world_key = config_hash(self.data_key, self.golden_key, d.name, self.t.sft_epochs, self.t.sft_lr)
        self.extras.setdefault("models", {})[name] = json.loads((d / "info.json").read_text())
        return load_model(d / "model", head=True, device=self.device)[0]

    def _relabel(self) -> Batch:
        """D_golden: every pair relabelled by the golden PM's hard decision (ties by a fair coin)."""
        d, done = self._stage("d_golden", self.golden_key)
        if not done:
            d.mkdir(parents=True, exist_ok=True)
            p = self.pairs
            g = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 3)
            y_w, y_l, tie = label_pairs(self.golden_oracle, p["x"], p["y_a"], p["y_b"], g)
            atomic_save({"x": p["x"], "y_w": y_w, "y_l": y_l, "tie": tie}, d / "d_golden.pt")
            self._done(d, {"ties": int(tie.sum())})
        t = safe_load(d / "d_golden.pt")
        return Batch(t["x"].to(self.device), t["y_w"].to(self.device), t["y_l"].to(self.device), t["tie"].to(self.device))

    def _pm_report(self):
        """Held-out accuracy of both PMs: golden vs the initial labels, proxy vs D_golden."""
        p, held = self.pairs, ~self.split & ~self.pairs["tie"]
        if not bool(held.any()):
            return
        x, ya, yb = p["x"][held], p["y_a"][held], p["y_b"][held]
        g_m = self.golden_oracle.margin(x, ya, yb)
        q_m = self.proxy_oracle.margin(x, ya, yb)
        golden_first = g_m > 0
        self.extras["pm_accuracy"] = {
            "golden_vs_initial_labels": float(classifier_accuracy(g_m, p["a_wins"][held])),
            "proxy_vs_golden": float(classifier_accuracy(q_m, golden_first)),
            "held_out_pairs": int(held.sum()),
        }

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
        g = _gen(self.cfg.seed, "golden-responses", self.device)
        self.win_x = torch.arange(n, device=self.device)
        self.golden_y = sample_responses(model, self.prompts, self.win_x, self.cfg.data.max_response_tokens, self.ids["eos"],
                                         self.ids["pad"], g, self.t.temperature)
        acc = self.d_golden.take(torch.randperm(len(self.d_golden), generator=torch.Generator().manual_seed(7))[: self.cfg.eval.acc_pairs].to(self.device))
        self.acc_batch = acc
        sft = self.sft[1.0]
        self.acc_ref = (sequence_logp(sft, self.prompts, acc.x, acc.y_w, **self._policy_ops()).detach(),
                        sequence_logp(sft, self.prompts, acc.x, acc.y_l, **self._policy_ops()).detach())

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

    def _stream_dir(self, name: str, seed: int) -> Path:
        return Path(self.arms[name][[r["seed"] for r in self.arms[name]].index(seed)]["dir"])

    def _run(self, arm: Arm, c: dict, seed: int, evaluate: bool) -> dict:
        t, ev = self.t, self.cfg.eval
        deps = [self.world_key, getattr(self, "golden_run", None), repr(arm), c, seed, t.batch_size, t.temperature,
                t.checkpoints, t.steps, asdict(ev), self.cfg.models.policy.width, self.cfg.seed]
        if stream_read_by(arm) is not None:
            deps.append(str(self._stream_dir(stream_read_by(arm), seed)))
        d, done = self._stage(f"run-{arm.name}", *deps)
        record = {"seed": seed, "config": {**c, "loss": arm.loss, "labels": arm.labels, "capacity": arm.capacity}, "dir": str(d)}
        if arm.capacity not in self.sft:
            self.sft[arm.capacity] = self._sft(arm.capacity)
        if done:
            return {**record, "series": json.loads((d / "series.json").read_text())}
        d.mkdir(parents=True, exist_ok=True)
        ref = self.sft[arm.capacity]
        model = self._new_policy(arm.capacity)
        model.load_state_dict(ref.state_dict())
        g = _gen(seed, f"{arm.name}/{c}", self.device)
        policy = LMPolicy(model, self.prompts, self.cfg.data.max_response_tokens, self.ids["eos"], self.ids["pad"], t.temperature)
        steps = c["steps"]
        sampler = self._sampler(arm, policy, seed, g, steps)
        online_pairs: dict[int, dict] = {}

        def run_eval(step):
            if not evaluate:
                return {}
            res, pairs = self._evaluate(model, ref, arm, seed, step)
            if pairs is not None:
                online_pairs[step] = pairs
                atomic_save(online_pairs, d / "eval_pairs.pt")
            self.log({"arm": arm.name, "seed": seed, **{k: c[k] for k in ("lr", "beta")}, "step": step, **res})
            return res

        def snapshot(step):
            atomic_save(model.state_dict(), d / f"snap-{step}.pt")

        if (d / "eval_pairs.pt").exists():
            online_pairs.update(safe_load(d / "eval_pairs.pt"))
        snaps = {round(f * t.steps) for f in dataset_fractions() if 0 < f} if provides_stream(arm) else set()
        with self.progress(steps, f"{arm.name} s{seed} lr{c['lr']:.0e} β{c['beta']:g}") as bar:
            series = optimise(model, ref, self.prompts, sampler, arm.loss, c["beta"], c["lr"], steps,
                              self.checkpoints(steps) if evaluate else set(), run_eval, self.ids["eos"], self.ids["pad"],
                              state_path=d / "state.pt", save_every=t.save_every, snapshot_at=snaps, snapshot=snapshot, progress=bar)
        atomic_save(model.state_dict(), d / "final.pt")
        if provides_stream(arm):
            atomic_save({k: torch.stack([getattr(b, k) for b in sampler.log]) for k in ("x", "y_w", "y_l", "tie")}, d / "stream.pt")
        (d / "series.json").write_text(json.dumps(series))
        (d / "state.pt").unlink(missing_ok=True)
        self._done(d, record)
        return {**record, "series": series}

    def _reward_model(self):
        """The RLHF arm's proxy: a pointwise Bradley–Terry reward model with the proxy PM's size
        and data (Stiennon et al. 2020; Ouyang et al. 2022), as a reward function r(x, y)."""
        if not hasattr(self, "_rm"):
            tr = torch.nonzero(self.split).squeeze(-1)
            tr = tr[: max(1, int(round(self.t.proxy_fraction * len(tr))))]
            cfg = self.cfg.models
            rm = self._pm("proxy_rm", cfg.proxy_pm, cfg.proxy_pm_path, self.d_golden.x[tr], self.d_golden.y_w[tr],
                          self.d_golden.y_l[tr], extra=(self.golden_key, "bt"), kind="bt")
            ops = (self.ids["eos"], self.ids["pad"], self.ids["cls"])

            @torch.no_grad()
            def reward(x, y):  # x [B, k], y [B, k, T] -> [B, k]
                return pm_scores(rm, self.prompts, x.reshape(-1), [y.reshape(-1, y.shape[-1])], *ops).reshape(x.shape)

            self._rm = reward
        return self._rm

    def _sampler(self, arm: Arm, policy, seed: int, g, steps: int = 0):
        """``shared.protocol.make_sampler`` over this world: one run, the proxy Bradley–Terry model as reward."""
        def mixture(pol, alpha):  # IPO-MD's per-token mixture π^{1−α}·π_sft^α
            return LMPolicy(pol.model, pol.prompts, pol.length, pol.eos, pol.pad, pol.temperature, mix=(self.sft[arm.capacity], alpha))

        def reward(labels):
            if labels != "proxy":
                raise ValueError("fullscale's RLHF arm scores with the proxy Bradley–Terry reward model (labels='proxy')")
            return self._reward_model()

        def stream(name):
            s = safe_load(self._stream_dir(name, seed) / "stream.pt")
            return [Batch(*(s[k][i].to(self.device) for k in ("x", "y_w", "y_l", "tie"))) for i in range(len(s["x"]))]

        world = SamplerWorld(prompts=torch.arange(len(self.prompts.ids), device=self.device), batch=(self.t.batch_size,),
                             d_golden=self.d_golden, mixture=mixture, reward=reward, stream=stream,
                             checkpoint_pairs=lambda a, gen: self._checkpoint_dataset(a, seed, gen))
        oracle = self.golden_oracle if arm.labels == "golden" else self.proxy_oracle
        return make_sampler(arm, world, policy, oracle, g, steps)

    def _checkpoint_dataset(self, arm: Arm, seed: int, g) -> Batch:
        """Pairs y1 ~ checkpoint a, y2 ~ checkpoint b of the online run (fractions; 0 = SFT),
        golden-labelled, one per prompt of D_golden (Tang et al. 2024, §5)."""
        d = self._stream_dir(stream_read_by(arm), seed)

        def at(frac):
            m = self._new_policy(1.0)
            m.load_state_dict(self.sft[1.0].state_dict() if frac == 0 else safe_load(d / f"snap-{round(frac * self.t.steps)}.pt"))
            return LMPolicy(m, self.prompts, self.cfg.data.max_response_tokens, self.ids["eos"], self.ids["pad"], self.t.temperature)

        a, b = arm.params["pair"]
        return policy_pair_dataset(at(a), at(b), self.d_golden.x, self.golden_oracle, g)

    # ---------------------------------------------------------------- 4. evaluation
    @torch.no_grad()
    def _evaluate(self, model, ref, arm: Arm, seed: int, step: int):
        """One checkpoint's metrics (docs/results-schema.md), on fixed prompts with a fixed
        sampling seed per checkpoint so that curves differ by the policy, not by sampling noise."""
        ops = self._policy_ops()
        L, temp = self.cfg.data.max_response_tokens, self.t.temperature
        g = _gen(seed, f"eval/{step}", self.device)
        x = self.win_x
        y = sample_responses(model, self.prompts, x, L, **ops, generator=g, temperature=temp)
        m = self.golden_oracle.margin(x, y, self.golden_y)
        won, h = hard_preference(m), len(m) // 2  # a tie counts ½; halves: a sweep's envelope is cross-fitted (shared.results.curves)
        res = {"win_rate": float(won.mean()), "win_rate_a": float(won[:h].mean()), "win_rate_b": float(won[h:2 * h].mean())}
        k = min(self.cfg.eval.kl_prompts, len(x))
        res["kl"] = float(tokenwise_kl(model, ref, self.prompts, x[:k], y[:k], **ops).mean())
        if arm.name == "golden":
            return res, None
        acc = self.acc_batch
        pw, pl = sequence_logp(model, self.prompts, acc.x, acc.y_w, **ops), sequence_logp(model, self.prompts, acc.x, acc.y_l, **ops)
        if ref is self.sft[1.0]:
            rw, rl = self.acc_ref
        else:
            rw, rl = sequence_logp(ref, self.prompts, acc.x, acc.y_w, **ops), sequence_logp(ref, self.prompts, acc.x, acc.y_l, **ops)
        res["acc_golden"] = float(classifier_accuracy(policy_margin(pw, pl, rw, rl), torch.ones_like(acc.tie)))
        res["chosen_logp_shift"] = float(logp_shift(pw, rw))
        res["rejected_logp_shift"] = float(logp_shift(pl, rl))
        # the policy's own pairs (acc_self); for an online arm they are also the "online pairs"
        n = min(self.cfg.eval.acc_pairs, len(x))
        y2 = sample_responses(model, self.prompts, x[:n], L, **ops, generator=g, temperature=temp)
        own = self._pair_record(x[:n], y[:n], y2)
        res["acc_self"] = self._policy_acc(model, ref, own)
        pairs = own if provides_stream(arm) else None
        stream = own if provides_stream(arm) else self._online_pairs_for(arm, seed, step)
        if stream is not None and len(stream["x"]):
            res["acc_online_pairs"] = self._policy_acc(model, ref, stream)
            res["proxy_acc_online_pairs"] = float(classifier_accuracy(stream["proxy_margin"], stream["first_wins"]))
        return res, pairs

    def _pair_record(self, x, y1, y2) -> dict:
        """Pairs with y1 ≠ y2 and a golden decision (no tie), with the proxy's margin."""
        gm = self.golden_oracle.margin(x, y1, y2)
        keep = (y1 != y2).any(-1) & (gm != 0)
        x, y1, y2, gm = x[keep], y1[keep], y2[keep], gm[keep]
        return {"x": x, "y1": y1, "y2": y2, "first_wins": gm > 0, "proxy_margin": self.proxy_oracle.margin(x, y1, y2)}

    def _policy_acc(self, model, ref, rec) -> float:
        if not len(rec["x"]):
            return float("nan")
        ops = self._policy_ops()
        f = [sequence_logp(mm, self.prompts, rec["x"], y, **ops) for mm in (model, ref) for y in (rec["y1"], rec["y2"])]
        return float(classifier_accuracy(policy_margin(f[0], f[1], f[2], f[3]), rec["first_wins"]))

    def _online_pairs_for(self, arm: Arm, seed: int, step: int):
        """The online run's own pairs at the latest checkpoint ≤ step (same loss family and capacity)."""
        name = "online" + ("-bo2" if arm.loss == "bo2" else "") + ("@" + arm.name.split("@")[1] if "@" in arm.name else "")
        if name not in self.arms:
            return None
        p = Path(self._stream_dir(name, seed)) / "eval_pairs.pt"
        if not p.exists():
            return None
        pairs = safe_load(p)
        steps = [s for s in pairs if s <= step] or [min(pairs)]
        return {k: v.to(self.device) for k, v in pairs[max(steps)].items()}


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
