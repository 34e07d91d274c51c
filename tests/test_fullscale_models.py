"""Policies people bring: tiny GPT-2, Llama, Qwen2 and GPT-NeoX causal LMs, built here from
their configs and saved with save_pretrained, with a byte-level BPE tokenizer trained here with
the ``tokenizers`` library (no pad token, EOS as BOS), each run end to end as the policy."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch

from fullscale.run import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "fullscale-tiny.json"


def _bpe_tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>")  # no pad token


def _config(arch: str, vocab: int, eos: int):
    import transformers as tf

    small = dict(vocab_size=vocab, eos_token_id=eos, bos_token_id=eos)
    if arch == "gpt2":  # tied embeddings (GPT-2's default)
        return tf.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=64, **small)
    shared = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64, **small)
    if arch == "llama":  # untied, grouped-query attention
        return tf.LlamaConfig(num_key_value_heads=1, tie_word_embeddings=False, **shared)
    if arch == "qwen2":  # tied, grouped-query attention
        return tf.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=True, **shared)
    return tf.GPTNeoXConfig(**shared)  # Pythia's architecture


TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("byo")
    rows = [{"prompt": f"doc {i % 5} says {i % 3}", "chosen": f" says {i % 3}", "rejected": f" um {i % 4}"} for i in range(40)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat = [{k: [{"role": "user" if k == "prompt" else "assistant", "content": v.strip()}] for k, v in r.items()} for r in rows]
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))  # TRL's conversational form
    tok = _bpe_tokenizer([f"<|user|>{r['prompt']}<|assistant|>{r['chosen']}{r['rejected']}" for r in rows])
    return d, tok


@pytest.mark.parametrize("arch, chat", [("gpt2", False), ("llama", False), ("qwen2", True), ("gpt_neox", False)])
def test_a_local_causal_lm_with_a_bpe_tokenizer_runs_as_the_policy(arch, chat, data, tmp_path, capsys):
    """qwen2's tokenizer has a chat template and reads conversational data: the template renders it."""
    import copy

    from transformers import AutoModelForCausalLM

    d, tok = data
    tok = copy.deepcopy(tok)
    if chat:
        tok.chat_template = TEMPLATE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(_config(arch, len(tok), tok.eos_token_id))
    model.save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    out = tmp_path / "out"
    rc = main(["--config", str(TINY), "--out", str(out), "--data.source", "jsonl", "--data.path", str(d / ("chat.jsonl" if chat else "pairs.jsonl")),
               "--train.batch-size", "4", "--models.policy-path", str(tmp_path / "policy")])
    assert rc == 0, capsys.readouterr().err[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["extras"]["data"]["pairs"] == 40 and res["extras"]["data"]["vocab"] == len(tok)
    assert {"online", "offline"} <= set(res["arms"]) and all(c["verdict"] for c in res["claims"])
    if chat:  # the data stage's prompts are the template's rendering, token for token
        from fullscale.data import apply_chat_template
        from fullscale.formats import load_pairs

        rendered = apply_chat_template(load_pairs(d / "chat.jsonl", "jsonl").pairs, tok)
        assert rendered[0].prompt == "<|user|>doc 0 says 0<|endoftext|><|assistant|>" and rendered[0].a == "says 0<|endoftext|>"
        (stage,) = (out / "cache").glob("data-*/data.pt")
        t = torch.load(stage, weights_only=True)
        first = t["prompt_ids"][0][t["prompt_mask"][0].bool()].tolist()
        assert tok.decode(first) in {p.prompt for p in rendered}
