"""The world of the LLM study (Tang et al. 2024, §3), built stage by stage with a stage cache.

Docs: docs/fullscale.md (§ the pipeline). Tests: tests/test_fullscale_run.py, tests/test_fullscale_checks.py.

Section 1 of the study, as in ``toysim.world``: the task data; SFT of the policy on both
responses of every pair; the golden PM trained on the initial (rater / human) labels;
D_golden, the pairs relabelled by the golden PM; the proxy PM trained on D_golden (and, for
the RLHF arm, a Bradley–Terry reward model on the same data).

Every stage is stored under ``cache/<stage>-<hash>`` where the hash covers the config
fields it depends on and its inputs' hashes (``fullscale.store``), written to a temporary name
and renamed when finished; a finished stage is reused. ``fullscale.study.Runner`` holds a
``World`` and runs the golden policy and the arms in it.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fullscale.config import RunConfig
from fullscale.data import Prepared, prepare
from fullscale.dist import SINGLE
from fullscale.judge import TextJudge, load_judge
from fullscale.lm import PMOracle, Prompts, pm_scores
from fullscale.models import build_model, load_model, save_model, special_ids, width_for_capacity
from fullscale.store import atomic_save, clear_stage_tmp, config_hash, lock_stage, mark_done, safe_load, stage_dir, unlock_stage
from fullscale.train import fit_pm, supervised
from shared.metrics import classifier_accuracy
from shared.preferences import label_pairs
from shared.sampling import Batch

__all__ = ["World", "data_stage_dir"]


def data_stage_deps(cfg: RunConfig) -> tuple:
    """The data stage's name and the config it depends on (``World.stage``'s arguments)."""
    return "data", asdict(cfg.data), asdict(cfg.models)


def data_stage_dir(cfg: RunConfig) -> Path:
    """Where the data stage of ``cfg`` is cached."""
    return stage_dir(Path(cfg.cache or cfg.out / "cache"), *data_stage_deps(cfg))


def _null_progress(total, desc):
    return contextlib.nullcontext(None)


class World:
    """The data, π_sft (per policy capacity), the golden and proxy PMs and D_golden of one run."""

    def __init__(self, cfg: RunConfig, progress=None, data: Prepared | None = None, dist=SINGLE):
        """Build (or load from the stage cache) every stage of the world. ``data``: the run's
        data already read and checked (``fullscale.data.prepare``); read here when None.
        ``dist`` (``fullscale.dist``): the processes that build it together. Every rank runs
        every stage; SFT and the preference models train data parallel (each rank its share
        of every minibatch, gradients averaged); rank 0 alone writes the cache."""
        self.cfg, self.t = cfg, cfg.train
        self.prepared = data
        self.progress = progress or _null_progress
        self.device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if cfg.device == "auto" else cfg.device))
        self.cache = Path(cfg.cache or cfg.out / "cache")
        self.cache.mkdir(parents=True, exist_ok=True)
        self.extras: dict = {}
        self.dist = dist
        self._locks: dict[Path, object] = {}  # the stages this run is building (``stage``)
        self._rm = None  # the RLHF arm's reward function, built when an arm first asks (``reward_model``)
        self._world()

    # ---------------------------------------------------------------- helpers
    def stage(self, name: str, *deps) -> tuple[Path, bool]:
        """(directory, finished?) of a cached stage (``fullscale.store.stage_dir``). An unfinished
        stage is this run's to build: rank 0 takes its lock (``fullscale.store.lock_stage``; another
        run sharing the cache that builds it first is waited for, and its stage reused), removes the
        temporary files a killed writer left in it (``*.tmp``, never read; nothing outside the
        stage's own folder), and keeps the lock until ``finish``. Every rank gets rank 0's answer."""
        d = stage_dir(self.cache, name, *deps)
        done = False
        if self.dist.main:
            done = (d / "DONE").exists()
            if not done:
                self._locks[d] = lock_stage(d)
                done = (d / "DONE").exists()  # built by another run while this one waited
                if done:
                    unlock_stage(self._locks.pop(d))
                else:
                    clear_stage_tmp(d)
        return d, self.dist.from_main(done)

    def finish(self, d: Path, info: dict | None = None) -> None:
        """Mark stage ``d`` finished (``fullscale.store.mark_done``) and release its lock."""
        mark_done(d, info)
        if d in self._locks:
            unlock_stage(self._locks.pop(d))

    def policy_ops(self):
        return dict(eos=self.ids["eos"], pad=self.ids["pad"])

    # ---------------------------------------------------------------- 1. the world
    def _world(self):
        cfg, dev = self.cfg, self.device
        d, done = self.stage(*data_stage_deps(cfg))
        if not done and self.dist.main:
            d.mkdir(parents=True, exist_ok=True)
            prep = self.prepared or prepare(cfg)
            prep.tokenizer.save_pretrained(d / "tokenizer")
            atomic_save(prep.tensors, d / "data.pt")
            if prep.prompt_texts is not None:
                (d / "prompts.json").write_text(json.dumps(prep.prompt_texts))
            self.finish(d, prep.info)
        if not done:
            self.dist.barrier()  # the others read what rank 0 wrote
        info = json.loads((d / "info.json").read_text())
        self.extras["data"] = info
        from transformers import AutoTokenizer  # lazily: transformers takes seconds to import

        self.tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer", local_files_only=True)
        self.ids = special_ids(self.tokenizer)
        t = safe_load(d / "data.pt")
        self.prompts = Prompts(t["prompt_ids"], t["prompt_mask"]).to(dev)
        self.pairs = {k: t[k].to(dev) for k in ("x", "y_a", "y_b", "a_wins", "tie")}
        self.split = t["train"].to(dev)  # bool: pair used for training (else held out)
        self.data_key = d.name
        self.sft, self.sft_dir = {}, {}
        self.sft[1.0] = self._sft(1.0)
        self.golden_pm = self.proxy_pm = None  # trained preference models; None where a judge stands in
        if cfg.models.golden_judge_path is not None:  # an off-the-shelf reward model, used as trained
            self.golden_oracle, self.golden_key = self._judge(cfg.models.golden_judge_path, "golden_judge")
        else:
            golden_from, golden_key = cfg.models.golden_pm_path, None
            if golden_from is None and cfg.models.golden_pm_init == "sft":  # π_sft's weights, a new scalar head
                golden_from, golden_key = self.sft_dir[1.0] / "model", self.sft_dir[1.0].name
            self.golden_pm = self._pm("golden_pm", cfg.models.golden_pm, golden_from, *self._human_labels(), path_key=golden_key)
            self.golden_oracle = PMOracle(self.golden_pm, self.prompts, cfg.models.pm_kind, self.ids["eos"], self.ids["pad"], self.ids["cls"])
        self.d_golden = self._relabel()
        if cfg.models.proxy_judge_path is not None:  # an off-the-shelf reward model labels the online pairs
            self.proxy_oracle, key = self._judge(cfg.models.proxy_judge_path, "proxy_judge")
            self.world_key = config_hash(self.data_key, self.golden_key, key, self.t.sft_epochs, self.t.sft_lr)
        else:
            frac = self.t.proxy_fraction
            tr = torch.nonzero(self.split).squeeze(-1)
            tr = tr[: max(1, int(round(frac * len(tr))))]
            self.proxy_pm = self._pm("proxy_pm", cfg.models.proxy_pm, cfg.models.proxy_pm_path,
                                     self.d_golden.x[tr], self.d_golden.y_w[tr], self.d_golden.y_l[tr], extra=self.golden_key)
            self.proxy_oracle = PMOracle(self.proxy_pm, self.prompts, cfg.models.pm_kind, self.ids["eos"], self.ids["pad"], self.ids["cls"])
        self._pm_report()

    def _judge(self, path, name: str):
        """A judge from a local reward model (``fullscale.judge``) and the key its dependent
        stages are cached under: the data stage, the judge's path and the time its files were written."""
        model, tok = load_judge(path, device=str(self.device))
        stamp = max((f.stat().st_mtime_ns for f in Path(path).glob("*") if f.is_file()), default=0)
        judge = TextJudge(model, tok, self.tokenizer, self.prompts, self.ids["eos"], self.ids["pad"])
        self.extras.setdefault("models", {})[name] = {"path": str(path), "params": sum(q.numel() for q in model.parameters()),
                                                      "architecture": type(model).__name__, "max_length": judge.max_length}
        return judge, "judge-" + config_hash(self.data_key, str(Path(path).resolve()), stamp)

    def _human_labels(self):
        """The initial labels (rater or dataset): chosen/rejected of the training pairs, ties dropped."""
        p = self.pairs
        keep = self.split & ~p["tie"]
        a_w = p["a_wins"][keep, None]
        return p["x"][keep], torch.where(a_w, p["y_a"][keep], p["y_b"][keep]), torch.where(a_w, p["y_b"][keep], p["y_a"][keep])

    def new_policy(self, capacity: float):
        """A policy of ``capacity`` × the policy's width at its initialisation (or the model of
        ``--models.policy-path``), on the run's device."""
        m = self.cfg.models
        if m.policy_path is not None:
            if capacity != 1.0:
                raise ValueError("the scale study builds policies of several widths; it cannot scale a model loaded from --models.policy-path")
            return load_model(m.policy_path, device=self.device)[0]
        spec = m.policy
        spec = replace(spec, width=width_for_capacity(spec, len(self.tokenizer), self.ids, capacity))
        return build_model(spec, len(self.tokenizer), self.ids, self.cfg.seed).to(self.device)

    def sft_of(self, capacity: float):
        """π_sft of a policy width (``self.sft[capacity]``), trained (or loaded from the cache) when
        first asked, and sharded as a frozen model under FSDP (``fullscale.dist``)."""
        if capacity not in self.sft:
            self.sft[capacity] = self.dist.shard_frozen(self._sft(capacity))
        return self.sft[capacity]

    def _sft(self, capacity: float):
        """π_sft: maximum likelihood on both responses of every training pair (Tang et al. 2024, §3)."""
        d, done = self.stage(f"sft@{capacity:g}", self.data_key, asdict(self.cfg.models.policy), str(self.cfg.models.policy_path),
                              capacity, self.t.sft_epochs, self.t.sft_lr, self.t.batch_size, self.cfg.seed, *self.numerics_key())
        if not done:
            model = self.new_policy(capacity)
            p = self.pairs
            x = torch.cat([p["x"][self.split], p["x"][self.split]])
            y = torch.cat([p["y_a"][self.split], p["y_b"][self.split]])
            g = torch.Generator().manual_seed(self.cfg.seed)
            steps = self.t.sft_epochs * math.ceil(len(x) / self.t.batch_size)
            with self.progress(steps, f"sft@{capacity:g}") as bar:
                hist = supervised(model, self.prompts, x, y, **self.policy_ops(), lr=self.t.sft_lr, epochs=self.t.sft_epochs,
                                  batch_size=self.t.batch_size, generator=g, progress=bar, dist=self.dist, fast=self.t.numerics == "fast")
            if self.dist.main:
                save_model(model, self.tokenizer, d / "model")
                self.finish(d, {"loss_per_epoch": hist, "params": sum(q.numel() for q in model.parameters())})
            self.dist.barrier()
        self.sft_dir[capacity] = d
        self.extras.setdefault("models", {})[f"sft@{capacity:g}"] = json.loads((d / "info.json").read_text())
        return load_model(d / "model", device=self.device)[0]

    def numerics_key(self) -> tuple:
        """A stage key's part for ``--train.numerics``: nothing for exact (the keys stages always had)."""
        return () if self.t.numerics == "exact" else (f"numerics {self.t.numerics}",)

    def _pm(self, name, spec, path, x, y_w, y_l, extra=None, kind=None, path_key=None):
        """A preference model trained on (y_w, y_l); built from ``spec``, or started from the causal LM
        at ``path`` (cached under ``path_key`` when given, e.g. a stage's name, else under the path)."""
        m, t = self.cfg.models, self.t
        kind = kind or m.pm_kind
        d, done = self.stage(name, self.data_key, asdict(spec), path_key or str(path), kind, t.pm_epochs, t.pm_lr,
                              t.batch_size, self.cfg.seed, extra, *self.numerics_key())
        if not done:
            pm = (load_model(path, head=True, device=self.device)[0] if path is not None else
                  build_model(spec, len(self.tokenizer), self.ids, self.cfg.seed + 1, head=True).to(self.device))
            g = torch.Generator().manual_seed(self.cfg.seed + 2)
            steps = t.pm_epochs * math.ceil(len(x) / t.batch_size)
            with self.progress(steps, name) as bar:
                hist = fit_pm(pm, self.prompts, x, y_w, y_l, kind, self.ids["eos"], self.ids["pad"], self.ids["cls"],
                              t.pm_lr, t.pm_epochs, t.batch_size, g, bar, dist=self.dist, fast=t.numerics == "fast")
            if self.dist.main:
                save_model(pm, self.tokenizer, d / "model")
                self.finish(d, {"loss_per_epoch": hist, "params": sum(q.numel() for q in pm.parameters()), "train_pairs": len(x)})
            self.dist.barrier()
        if name == "golden_pm":
            self.golden_key = d.name
        elif name == "proxy_pm":
            self.world_key = config_hash(self.data_key, self.golden_key, d.name, self.t.sft_epochs, self.t.sft_lr)
        self.extras.setdefault("models", {})[name] = json.loads((d / "info.json").read_text())
        return load_model(d / "model", head=True, device=self.device)[0]

    def _relabel(self) -> Batch:
        """D_golden: every pair relabelled by the golden PM's hard decision (ties by a fair coin)."""
        d, done = self.stage("d_golden", self.golden_key)
        if not done and self.dist.main:
            d.mkdir(parents=True, exist_ok=True)
            p = self.pairs
            g = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 3)
            y_w, y_l, tie = label_pairs(self.golden_oracle, p["x"], p["y_a"], p["y_b"], g)
            atomic_save({"x": p["x"], "y_w": y_w, "y_l": y_l, "tie": tie}, d / "d_golden.pt")
            self.finish(d, {"ties": int(tie.sum())})
        if not done:
            self.dist.barrier()
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

    def reward_model(self):
        """The RLHF arm's proxy: a pointwise Bradley–Terry reward model with the proxy PM's size
        and data (Stiennon et al. 2020; Ouyang et al. 2022), as a reward function r(x, y); with
        ``--models.proxy-judge-path``, that judge's scores, so RLHF and DPO share one labeller."""
        if self._rm is None and self.cfg.models.proxy_judge_path is not None:  # the judge's own scores
            judge = self.proxy_oracle

            @torch.no_grad()
            def judged(x, y):  # x [B, k], y [B, k, T] -> [B, k]
                return judge.scores(x.reshape(-1), y.reshape(-1, y.shape[-1])).reshape(x.shape)

            self._rm = judged
        if self._rm is None:
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
