"""``python -m fullscale.bench`` runs on CPU at tiny sizes (CI has no GPU): it prints the
step's throughput and its split, and rejects bad arguments with exit code 2."""

import pytest

pytest.importorskip("transformers")

from fullscale import bench

TINY = ["--model", "tiny", "--vocab", "64", "--batch", "4", "--prompt-tokens", "6", "--new-tokens", "5",
        "--steps", "2", "--warmup", "1", "--device", "cpu"]


@pytest.mark.parametrize("score", ["cheap", "pm"])
def test_bench_times_one_online_ipo_step_on_cpu(score, capsys):
    assert bench.main(TINY + ["--score", score]) == 0
    out = capsys.readouterr().out
    for text in ("pairs/s:", "generated tokens/s:", "training tokens/s:", "split: generate", "MFU: n/a"):
        assert text in out


def test_bench_numbers_are_consistent():
    cfg = bench.BenchConfig(model="tiny", vocab=64, batch=4, prompt_tokens=6, new_tokens=5, steps=2, warmup=0, device="cpu", peak_tflops=1.0)
    r = bench.run(cfg)
    assert r["pairs_per_s"] == pytest.approx(4 / r["step_s"])
    assert sum(r["split"].values()) == pytest.approx(1.0) and min(r["split"].values()) > 0
    assert 0 < r["mfu"] < 1 and r["peak_memory_gib"] is None
    assert r["non_embedding_params"] < r["params"]


@pytest.mark.parametrize("args", [["--batch", "0"], ["--model", "huge"], ["--warmup", "-1"]])
def test_bench_bad_arguments_exit_2(args, capsys):
    assert bench.main(TINY + args) == 2
