"""``python -m fullscale.bench`` runs on CPU at tiny sizes (CI has no GPU): it prints the
step's throughput and its split, and rejects bad arguments with exit code 2."""

import pytest

pytest.importorskip("transformers")

from fullscale import bench

TINY = ["--model", "tiny", "--vocab", "64", "--batch", "4", "--prompt-tokens", "6", "--new-tokens", "5",
        "--steps", "2", "--warmup", "1", "--device", "cpu"]


@pytest.mark.parametrize("score, draws, decoder", [("cheap", "one-generator", "fast"), ("pm", "one-generator", "fast"),
                                                   ("cheap", "per-example", "fast"), ("cheap", "one-generator", "reference"),
                                                   ("cheap", "per-example", "reference")])
def test_bench_times_one_online_ipo_step_on_cpu(score, draws, decoder, capsys):
    import json

    numerics = "fast" if decoder == "fast" and score == "cheap" else "exact"
    assert bench.main(TINY + ["--score", score, "--draws", draws, "--decoder", decoder, "--numerics", numerics]) == 0
    out = capsys.readouterr().out
    for text in ("pairs/s:", "generated tokens/s:", "training tokens/s:", "split: generate", "MFU: n/a"):
        assert text in out
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert result["draws"] == draws and result["decoder"] == decoder and result["numerics"] == numerics and result["pairs_per_s"] == pytest.approx(4 / result["step_s"])


def test_bench_counts_parameters_and_flops_by_closed_forms():
    """The MFU numerator against GPT-2's parameter count in closed form: per block 12d² + 13d
    (attention 4d² + 4d, MLP 8d² + 5d, two layer norms 4d), plus the final layer norm 2d;
    model FLOPs 2N per forward token, 6N per trained token (Kaplan et al. 2020, §2.1)."""
    cfg = bench.BenchConfig(model="tiny", vocab=64, batch=4, prompt_tokens=6, new_tokens=5, steps=2, warmup=0, device="cpu", peak_tflops=1.0)
    r = bench.run(cfg)
    d, layers = bench.SHAPES["tiny"][:2]
    n = layers * (12 * d * d + 13 * d) + 2 * d
    assert r["non_embedding_params"] == n
    tokens = 2 * cfg.batch * (cfg.prompt_tokens + cfg.new_tokens)  # both responses of every prompt, with the prompt
    generated = cfg.batch * (cfg.prompt_tokens + 2 * cfg.new_tokens)  # each prompt read once, two responses
    flops = 2 * n * generated + (6 + 2) * n * tokens  # generation, policy forward + backward, reference forward
    assert r["mfu"] * r["step_s"] * 1e12 == pytest.approx(flops, rel=1e-9)
    assert r["peak_memory_gib"] is None and min(r["split"].values()) > 0


@pytest.mark.parametrize("args", [["--batch", "0"], ["--model", "huge"], ["--warmup", "-1"]])
def test_bench_bad_arguments_exit_2(args, capsys):
    assert bench.main(TINY + args) == 2
