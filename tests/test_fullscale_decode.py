"""The fast decode path (``fullscale.decode``) against the reference sampler it replaces,
``fullscale.decode.sample_responses`` (itself checked against exact enumerations in
tests/test_fullscale_lm.py): the same tokens, the same logits to 1e-5 and the same generator
state after, for GPT-2, Llama and Qwen2, with EOS and padding, k samples per prompt, per-example
draws, IPO-MD's mixture, the growing-cache fallback; and a whole run of the runner gives the
same results.json with either sampler."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fullscale.decode as D
from fullscale.decode import decode, draw_noise
from fullscale.dist import row_generator
from fullscale.decode import sample_responses
from fullscale.lm import Prompts
from fullscale.models import ModelSpec, build_model, special_ids, word_tokenizer

TOK = word_tokenizer(["a", "b"])
IDS = special_ids(TOK)
EOS, PAD = IDS["eos"], IDS["pad"]
V = len(TOK)
# prompts of different lengths, left-padded
PROMPTS = Prompts(torch.tensor([[PAD, PAD, 5, 6], [5, 6, 6, 5], [PAD, 6, 5, 5]]),
                  torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]))
X = torch.tensor([0, 1, 2, 2, 1])


def tiny(seed=0, arch="gpt2"):
    if arch == "qwen2":  # not one the runner builds, but one it loads: grouped-query attention, its own cache layout
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, max_position_embeddings=24, pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            m = Qwen2ForCausalLM(cfg).eval()
    else:
        m = build_model(ModelSpec(arch=arch, width=16, layers=2, heads=2, max_len=24), V, IDS, seed)
    with torch.no_grad():  # sharpen the random init so distributions are far from uniform
        for p in m.parameters():
            p.mul_(3.0)
    return m


def reference(model, prompts, x, length, eos, pad, generator=None, k=1, temperature=1.0, mix=None, return_logits=False):
    """``decode`` as the reference sampler computes it: k calls, or one over x.repeat(k) with per-row generators."""
    if isinstance(generator, (list, tuple)):
        return sample_responses(model, prompts, x.repeat(k), length, eos, pad, generator, temperature, return_logits, mix)
    outs = [sample_responses(model, prompts, x, length, eos, pad, generator, temperature, return_logits, mix) for _ in range(k)]
    if return_logits:
        return torch.cat([y for y, _ in outs]), torch.cat([lg for _, lg in outs])
    return torch.cat(outs)


def same_logits(a, b):
    fin = torch.isfinite(a)
    assert torch.equal(fin, torch.isfinite(b))
    assert (a[fin] - b[fin]).abs().max() <= 1e-5


@pytest.mark.parametrize("shape", [(1, 7), (5, 7), (4, 50257), (3, 1000)])
def test_a_categorical_draw_is_the_argmax_of_p_over_exponential_noise(shape):
    """What batching the k samples under one generator rests on: torch.multinomial(p, 1) draws
    Exp(1) noise of p's shape from the generator and returns argmax(p / noise)."""
    p = torch.softmax(3 * torch.randn(shape, generator=torch.Generator().manual_seed(1)), -1)
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(30):
        want = torch.multinomial(p, 1, generator=a).squeeze(-1)
        assert torch.equal(want, (p / torch.empty_like(p).exponential_(1, generator=b)).argmax(-1))
    assert torch.equal(a.get_state(), b.get_state())


def test_the_noise_is_torchs_exponential_noise_bit_for_bit():
    """``draw_noise`` (k calls' noise up front, by −log1p(−u) where this machine allows) against
    ``exponential_`` call by call, over 8 million values, and the generator state after."""
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    rows, vocab, length, k = 5, 50257, 16, 2
    noise = draw_noise(a, rows, vocab, length, k, "cpu")
    for j in range(k):
        for t in range(length):
            assert torch.equal(noise[t, j * rows:(j + 1) * rows], torch.empty(rows, vocab).exponential_(1, generator=b))
    assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("length", [1, 6])
def test_decode_draws_the_tokens_of_k_reference_calls(arch, mixed, k, length):
    model, ref = tiny(0, arch), tiny(1, arch)
    assert D._static_ok(model)  # the static cache, not the fallback
    mix = (ref, 0.3) if mixed else None
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    want, want_logits = reference(model, PROMPTS, X, length, EOS, PAD, a, k, 0.9, mix, True)
    got, got_logits = decode(model, PROMPTS, X, length, EOS, PAD, b, k, 0.9, mix, True)
    assert torch.equal(got, want) and torch.equal(a.get_state(), b.get_state())
    same_logits(got_logits, want_logits)
    if length > 1:  # the case the test is for: responses that end early, padded after their EOS
        assert (got == EOS).any() and (got == PAD).any()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("k", [1, 2])
def test_per_example_draws_are_those_of_each_rows_generator(arch, k):
    model = tiny(0, arch)

    def gens():
        return [row_generator(11, i, "cpu") for i in range(k * len(X))]

    assert torch.equal(decode(model, PROMPTS, X, 6, EOS, PAD, gens(), k), reference(model, PROMPTS, X, 6, EOS, PAD, gens(), k))
    with pytest.raises(ValueError, match="generators"):
        decode(model, PROMPTS, X, 6, EOS, PAD, gens()[:-1], k)


def test_a_model_without_the_static_path_falls_back_with_one_log_line(monkeypatch, capsys):
    monkeypatch.setattr(D, "STATIC_MODEL_TYPES", ())
    monkeypatch.setattr(D, "_said", set())
    model, ref = tiny(0), tiny(1)
    for mix in (None, (ref, 0.5)):
        a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        want, want_logits = reference(model, PROMPTS, X, 6, EOS, PAD, a, 3, 1.0, mix, True)
        got, got_logits = decode(model, PROMPTS, X, 6, EOS, PAD, b, 3, 1.0, mix, True)
        assert torch.equal(got, want)
        same_logits(got_logits, want_logits)
    err = capsys.readouterr().err
    assert err.count("decode: no static KV cache for model type 'gpt2'") == 1 and len(err.strip().splitlines()) == 1


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3), length=st.integers(1, 8), temperature=st.floats(0.3, 2.0),
       rows=st.lists(st.integers(0, 2), min_size=1, max_size=6))
def test_decode_equals_the_reference_for_any_prompts_and_lengths(seed, k, length, temperature, rows):
    model = MODEL
    x = torch.tensor(rows)
    a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    want = reference(model, PROMPTS, x, length, EOS, PAD, a, k, temperature)
    assert torch.equal(decode(model, PROMPTS, x, length, EOS, PAD, b, k, temperature), want)
    assert torch.equal(a.get_state(), b.get_state())


MODEL = tiny(2)


def test_a_run_gives_the_same_results_with_the_reference_sampler(tmp_path, monkeypatch):
    """The tiny config's refresh study (online pairs, IPO-MD's mixture, evaluation samples, the
    golden responses) with ``decode`` and with the reference sampler: the same results.json
    to 1e-6 (the logits of a batch of 2B rows may differ from a batch of B in the last bits)."""
    from results_diff import differences

    from fullscale import evaluate, study
    from fullscale.run import main

    args = ["--config", str(Path(__file__).parent / "fixtures" / "fullscale-tiny.json"), "--hypothesis", "refresh", "--seeds", "1", "--train.steps", "2", "--train.checkpoints", "2"]
    assert main(args + ["--out", str(tmp_path / "fast")]) == 0
    for module in (D, evaluate, study):
        monkeypatch.setattr(module, "decode", reference)
    assert main(args + ["--out", str(tmp_path / "reference")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("fast", "reference"))
    assert differences(a, b, 1e-6, 1e-9) == []
    assert [c["verdict"] for c in a["claims"]] == [c["verdict"] for c in b["claims"]]
