"""shared.protocol: the rules of the study both backends call, against plain references;
and the study-name lists of both command lines come from shared.studies.STUDIES."""

import hashlib
import math
import typing

import pytest
import torch

import fullscale.evaluate
import fullscale.study
import toysim.study
from shared import losses
from shared.protocol import LOSSES, Schedule, checkpoint_steps, dataset_fractions, run_order, steps_of, stream_generator, sweep_configs
from shared.studies import SOURCES, STUDIES, Arm


def T():
    """The simulator's schedule (toysim.presets.TrainSettings' defaults)."""
    return Schedule(steps=400, offline_mult=5, lr=0.02, checkpoints=20)


def test_sweep_configs_are_the_pooled_grid_lr_major():
    t = T()
    swept = sweep_configs(Arm("offline", "offline", sweep=True), t)
    want = []
    for a in t.sweep_lr:  # plain loop: lr-major, as the committed results list them
        for b in t.sweep_beta:
            want.append({"lr": t.lr * a, "beta": t.beta * b, "steps": 2000})
    assert swept == want
    assert sweep_configs(Arm("online", "online"), t) == [{"lr": 0.02, "beta": 0.1, "steps": 400}]
    assert steps_of(Arm("d", "dataset", params={"pair": (0.0, 1.0)}), t) == 2000
    assert steps_of(Arm("r", "replay", params={"stream": "online", "window": 0}), t) == 400


@pytest.mark.parametrize("steps", [1, 7, 400, 2000])
def test_checkpoints_are_log_spaced_with_the_data_fractions_and_the_last_step(steps):
    t = T()
    got = checkpoint_steps(steps, t)
    assert steps in got and all(0 < s <= steps for s in got)
    for f in dataset_fractions():
        if 0 < f * t.steps <= steps:
            assert round(f * t.steps) in got
    # the log-spaced part: a plain geometric sequence, as dense per decade as t.checkpoints per online horizon
    per_decade = t.checkpoints / math.log10(t.steps)
    num = max(2, int(round(per_decade * math.log10(max(steps, 10)))))
    ratio = steps ** (1 / (num - 1)) if steps > 1 else 1
    assert {int(round(ratio**i)) for i in range(num)} <= got | {0}


def test_the_data_fractions_are_those_the_data_study_reads():
    assert dataset_fractions() == [0.0, 0.2, 1.0]


def test_online_arms_run_first_and_every_arm_has_a_loss_and_a_known_source():
    for study in STUDIES.values():
        order = run_order(study.arms)
        assert [a.source == "online" for a in order] == sorted((a.source == "online" for a in study.arms), reverse=True)
        for arm in study.arms:
            assert arm.loss in LOSSES and arm.source in SOURCES, arm
    assert LOSSES["ipo"] is losses.ipo_loss and LOSSES["rloo"] is losses.rloo_loss
    with pytest.raises(ValueError, match="unknown source"):
        Arm("x", "onlien")


def test_both_command_lines_list_the_studies_of_shared_studies():
    from fullscale.config import StudyName
    from toysim.gap import Hypothesis

    assert typing.get_args(Hypothesis) == (*STUDIES, "all")
    assert typing.get_args(StudyName) == tuple(n for n in STUDIES if n != "theory")


def test_the_stream_an_arm_reads():
    from shared.protocol import stream_read_by

    arms = {a.name: a for s in STUDIES.values() for a in s.arms}
    assert stream_read_by(arms["tandem"]) == "online" and stream_read_by(arms["tandem-bo2"]) == "online-bo2"
    assert stream_read_by(arms["tandem@4"]) == "online@4" and stream_read_by(arms["sft-vs-4k"]) == "online"
    assert stream_read_by(arms["offline"]) is None and stream_read_by(arms["refresh-4"]) is None


def test_make_sampler_builds_each_source_from_the_backend_world():
    """One dispatch for both backends: each source gets its shared.sampling sampler, shaped by the
    world's batch (a run axis for toysim's stacked runs), and calls only the world part it needs."""
    import torch

    from shared.protocol import SamplerWorld, make_sampler
    from shared.sampling import Batch, OfflineSampler, OnlineSampler, RefreshSampler, ReplaySampler, RolloutSampler

    n = 10
    d = Batch(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long),
              torch.zeros(n, dtype=torch.bool))
    used = []

    def part(name, value):
        return lambda *a: (used.append(name), value)[1]

    world = SamplerWorld(prompts=torch.arange(3), batch=(4,), d_golden=d, mixture=part("mixture", "mixed-policy"),
                         reward=part("reward", lambda x, y: y.float()), stream=part("stream", [d] * 5),
                         checkpoint_pairs=part("checkpoint_pairs", d))
    g = torch.Generator().manual_seed(0)
    want = {"online": OnlineSampler, "offline": OfflineSampler, "refresh": RefreshSampler, "mixture": OnlineSampler,
            "rlhf": RolloutSampler, "replay": ReplaySampler, "dataset": OfflineSampler}
    params = {"refresh": {"every": 0}, "mixture": {"alpha": 0.25}, "rlhf": {"k": 4}, "replay": {"stream": "online", "window": 0},
              "dataset": {"pair": (0.0, 1.0)}}
    for source, cls in want.items():
        used.clear()
        s = make_sampler(Arm(source, source, params=params.get(source, {})), world, "policy", "oracle", g, steps=7)
        assert type(s) is cls, source
        assert used == {"mixture": ["mixture"], "rlhf": ["reward"], "replay": ["stream"], "dataset": ["checkpoint_pairs"]}.get(source, [])
    assert make_sampler(Arm("r", "refresh", params={"every": 0}), world, "p", "o", g, steps=7).every == 7
    assert make_sampler(Arm("m", "mixture", params={"alpha": 0.5}), world, "p", "o", g, 7).policy == "mixed-policy"


def test_both_backends_train_on_the_one_schedule():
    """The schedule's fields are declared once (shared.protocol.Schedule); each backend's settings
    subclass it and change only defaults, so every field keeps one type and one docstring."""
    import dataclasses

    from fullscale.config import TrainConfig
    from shared.protocol import Schedule
    from toysim.presets import TrainSettings

    base = {f.name: f.type for f in dataclasses.fields(Schedule)}
    for cls in (TrainSettings, TrainConfig):
        assert issubclass(cls, Schedule)
        assert {f.name: f.type for f in dataclasses.fields(cls) if f.name in base} == base


def test_an_arms_online_partner_is_the_online_arm_of_its_study_capacity_and_loss():
    from shared.protocol import online_partner
    from shared.studies import ARMS

    want = {"offline": "online", "tandem": "online", "offline-bo2": "online-bo2", "tandem-bo2": "online-bo2",
            "offline@4": "online@4", "tandem@1": "online@1", "offline-dpo": "online-dpo", "rlhf": "online-dpo",
            "refresh-4": "online", "ipo-md": "online", "sft-vs-800": "online", "online@4": "online@4"}
    assert {name: online_partner(ARMS[name]) for name in want} == want
    assert online_partner(Arm("mine", "offline")) is None  # declared by no study


def test_one_seeding_scheme_names_each_stream():
    """Each stream's seed is the SHA-256 of ``[seed, name]`` (worked by hand here), the same in
    both backends, and does not depend on which streams were drawn before it."""
    by_hand = int(hashlib.sha256(b'[3, "online-ipo/0"]').hexdigest()[:12], 16) % (2**62)
    assert stream_generator(3, "online-ipo/0").initial_seed() == by_hand
    first = torch.rand(4, generator=stream_generator(3, "offline-ipo"))
    stream_generator(3, "online-ipo").seed()  # another stream drawn in between changes nothing
    assert torch.equal(first, torch.rand(4, generator=stream_generator(3, "offline-ipo")))
    assert not torch.equal(first, torch.rand(4, generator=stream_generator(4, "offline-ipo")))
    assert not torch.equal(first, torch.rand(4, generator=stream_generator(3, "online-ipo")))
    for module in (toysim.study, fullscale.study, fullscale.evaluate):
        assert module.stream_generator is stream_generator


def test_the_plan_of_a_study_is_its_arms_as_data_golden_first():
    """``plan`` asks the protocol once per arm: the golden policy, then the arms in run order, each
    with what the single questions answer (checked here against them, and by hand for coverage)."""
    from shared.protocol import ON_POLICY_SOURCES, online_partner, plan, snapshot_steps, stream_read_by
    from shared.studies import GOLDEN

    t = Schedule(steps=100, offline_mult=5, checkpoints=10)
    p = plan(STUDIES["coverage"], t)
    assert [a.arm.name for a in p] == ["golden", "online", "offline", "replay-ordered", "window-4", "window-32", "tandem"]
    assert p[0].arm is GOLDEN and p[0].partner == "golden" and p[0].provides
    off = p[2]
    assert len(off.configs) == 9 and off.steps == 500 and all(c["steps"] == 500 for c in off.configs)
    assert off.reads is None and off.partner == "online" and not off.on_policy and not off.snapshots
    assert p[1].snapshots == {20, 100} and p[1].on_policy  # the data study's 0.2 and 1.0 of the online horizon
    assert [a.reads for a in p[3:]] == ["online"] * 4
    for study in STUDIES.values():
        plans = plan(study, t)
        assert [a.arm for a in plans] == ([GOLDEN, *run_order(study.arms)] if study.arms else [])
        for a in plans:
            assert list(a.configs) == sweep_configs(a.arm, t) and a.steps == steps_of(a.arm, t)
            assert a.checkpoints == checkpoint_steps(a.steps, t) and a.snapshots == snapshot_steps(a.arm, t)
            assert a.reads == stream_read_by(a.arm) and a.partner == online_partner(a.arm)
            assert a.on_policy == (a.arm.source in ON_POLICY_SOURCES)
        # one ordering rule: arms on their own pairs before the arms on fixed data that read them
        flags = [a.on_policy for a in plans]
        assert flags == sorted(flags, reverse=True)
        names = [a.arm.name for a in plans]
        assert all(names.index(a.reads) < names.index(a.arm.name) for a in plans if a.reads)
        assert all(names.index(a.partner) <= names.index(a.arm.name) for a in plans if a.partner in names)
    assert plan(STUDIES["theory"], t) == []


def test_run_order_puts_refresh_before_offline_and_the_read_online_arm_first():
    study = STUDIES["equivalence"]
    assert [a.name for a in run_order(study.arms)] == ["online-dpo", "rlhf", "offline-dpo"]
    assert [a.name for a in run_order(STUDIES["refresh"].arms)][:2] == ["online", "refresh-4"]
    assert [a.name for a in run_order(STUDIES["refresh"].arms)][-1] == "offline"


@pytest.mark.parametrize("module, args", [("toysim.gap", ["--hypothesis", "data", "--quick"]),
                                          ("fullscale.run", ["--preset", "smoke", "--hypothesis", "data"])])
def test_dry_run_prints_the_plan_and_writes_nothing(module, args, tmp_path, capsys, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)
    assert importlib.import_module(module).main(args + ["--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name in ("golden", "online", "offline", "sft-vs-800", "800-vs-4k", "sft-vs-4k", "4k-vs-4k"):
        assert f"  {name} " in out, name
    assert "reads online" in out and "snapshots at" in out
    assert list(tmp_path.iterdir()) == []  # no run folder, no --out
