"""An off-the-shelf reward model as the golden judge: a tiny BERT-style sequence classifier with
a WordPiece tokenizer, both built here and saved with save_pretrained, scores the policy's
responses through its own tokenizer; batched scores equal one-text-at-a-time scores; a run
with it as the judge completes; a bad judge is one line before any work."""

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch

from fullscale.run import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "fullscale-tiny.json"
WORDS = "doc says um the sky is blue green 0 1 2 3 4 5 6 7 8 9".split()


def _wordpiece_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + ["##s"])}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=48)


def _judge_dir(path: Path, num_labels: int = 1) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    tok = _wordpiece_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                         intermediate_size=32, max_position_embeddings=64, num_labels=num_labels))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return _judge_dir(tmp_path_factory.mktemp("judge") / "rm")


def _pairs(tmp_path):
    rows = [{"prompt": f"doc {i % 5} says {i % 3}", "chosen": f"says {i % 3}", "rejected": f"um {i % 4}"} for i in range(40)]
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_batched_scores_equal_one_text_at_a_time_and_texts_are_decoded(judge):
    from fullscale.judge import TextJudge, load_judge
    from fullscale.lm import Prompts
    from fullscale.models import special_ids, word_tokenizer

    policy_tok = word_tokenizer(WORDS)
    ids = special_ids(policy_tok)
    enc = [policy_tok(t, add_special_tokens=False)["input_ids"] for t in ("doc 1 says 2", "the sky")]
    P = max(map(len, enc))
    prompt_ids = torch.tensor([[ids["pad"]] * (P - len(e)) + e for e in enc])
    prompts = Prompts(prompt_ids, (prompt_ids != ids["pad"]).long())
    y = torch.tensor([policy_tok(" ".join(w), add_special_tokens=False)["input_ids"] + [ids["eos"], ids["pad"]]
                      for w in (("is", "blue"), ("is", "green"))])
    model, tok = load_judge(judge)
    j = TextJudge(model, tok, policy_tok, prompts, ids["eos"], ids["pad"], batch=2)
    x = torch.tensor([0, 1])
    assert j.texts(x, y) == ["doc 1 says 2 is blue", "the sky is green"]
    one_by_one = torch.stack([model(**tok(t, return_tensors="pt")).logits[0, 0] for t in j.texts(x, y)])  # no padding, a plain loop
    torch.testing.assert_close(j.scores(x, y), one_by_one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(j.margin(x, y, y.flip(0)), one_by_one - one_by_one.flip(0), atol=1e-5, rtol=1e-5)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    assert j.texts(x[:1], y[:1]) == ["user doc 1 says 2 assistant is blue "]


def test_a_run_with_a_reward_model_as_the_golden_judge(judge, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--config", str(TINY), "--out", str(out), "--data.source", "jsonl", "--data.path", str(_pairs(tmp_path)),
               "--data.vocab-words", "50", "--train.batch-size", "4", "--models.golden-judge-path", str(judge)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    res = json.loads((out / "results.json").read_text())
    models = res["extras"]["models"]
    assert models["golden_judge"]["architecture"] == "BertForSequenceClassification" and models["golden_judge"]["max_length"] == 48
    assert "golden_pm" not in models and all(c["verdict"] for c in res["claims"])


def test_a_judge_that_is_not_a_one_score_reward_model_is_one_line(tmp_path, capsys):
    bad = _judge_dir(tmp_path / "two-labels", num_labels=2)
    args = ["--config", str(TINY), "--out", str(tmp_path / "o"), "--data.source", "jsonl", "--data.path", str(_pairs(tmp_path)),
            "--models.golden-judge-path"]
    assert main(args + [str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a judge must be a reward model with one score per text" in err and "\n" not in err
    assert main(args + [str(bad), "--models.golden-pm-init", "sft"]) == 2
    assert "replaces the golden PM" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_reward_model_as_the_proxy_that_labels_online_pairs_and_rewards_rlhf(judge, tmp_path, capsys):
    """The equivalence study: online DPO's labels and the RLHF arm's reward both come from the judge."""
    out = tmp_path / "out"
    rc = main(["--config", str(TINY), "--out", str(out), "--data.source", "jsonl", "--data.path", str(_pairs(tmp_path)),
               "--data.vocab-words", "50", "--train.batch-size", "4", "--models.proxy-judge-path", str(judge),
               "--hypothesis", "equivalence"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    res = json.loads((out / "results.json").read_text())
    models = res["extras"]["models"]
    assert "proxy_judge" in models and "golden_pm" in models
    assert "proxy_pm" not in models and "proxy_rm" not in models  # no proxy trained for either arm
    assert "rlhf" in res["arms"]


def test_a_text_longer_than_the_judge_loses_its_prompts_beginning_not_the_response(judge):
    from fullscale.judge import TextJudge, load_judge
    from fullscale.lm import Prompts
    from fullscale.models import special_ids, word_tokenizer

    policy_tok = word_tokenizer(WORDS)
    ids = special_ids(policy_tok)
    prompt = torch.tensor([policy_tok("doc 1 says 2 the sky is", add_special_tokens=False)["input_ids"]])
    prompts = Prompts(prompt, torch.ones_like(prompt))
    y = torch.tensor([policy_tok("blue", add_special_tokens=False)["input_ids"] + [ids["eos"]]])
    model, tok = load_judge(judge)
    j = TextJudge(model, tok, policy_tok, prompts, ids["eos"], ids["pad"])
    j.max_length = 5  # [CLS] + 3 tokens + [SEP]
    body = tok("doc 1 says 2 the sky is blue", add_special_tokens=False)["input_ids"][-3:]
    assert tok.convert_ids_to_tokens(body) == ["sky", "is", "blue"]
    want = model(input_ids=torch.tensor([[tok.cls_token_id, *body, tok.sep_token_id]])).logits[0, 0]
    torch.testing.assert_close(j.scores(torch.tensor([0]), y)[0], want, atol=1e-5, rtol=1e-5)
