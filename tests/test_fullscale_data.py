"""Loaders on fixture files in each native format, malformed records included,
tokenisation, and the synthetic task's rater (tensor form vs word-level reference)."""

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fullscale.data import encode_pairs
from fullscale.formats import DataError, load_pairs
from fullscale.lm import Prompts
from fullscale.models import special_ids, word_tokenizer
from fullscale.task import FILLERS, TaskSpec, Rater, _score_words, make_task

FIX = Path(__file__).parent / "fixtures"


def test_tldr():
    out = load_pairs(FIX / "tldr.jsonl", "tldr")
    assert len(out.pairs) == 2 and not out.skipped
    p = out.pairs[0]
    assert p.prompt == ("SUBREDDIT: r/legaladvice\n\nTITLE: Rent went up, heater still broken\n\nPOST: My landlord raised the rent "
                        "twice this year and will not fix the heater.\n\nTL;DR:")  # the paper's query format
    assert p.a.startswith("Landlord raises rent") and p.a_wins is True
    assert out.pairs[1].a_wins is False  # "article" instead of "post": the CNN/DM query format
    assert out.pairs[1].prompt == "Article:\nThe city council approved a new bike lane network on Tuesday.\n\nTL;DR:"


def test_hh_splits_at_the_last_assistant_turn_and_counts_mismatches():
    out = load_pairs(FIX / "hh.jsonl", "hh")
    assert len(out.pairs) == 2
    assert out.pairs[1].prompt.endswith("Name a colour.\n\nAssistant:") and out.pairs[1].a == "Blue." and out.pairs[1].b == "Seven."
    assert sum(out.skipped.values()) == 1 and "differ" in next(iter(out.skipped))


@pytest.mark.parametrize("name", ["arena.json", "arena.jsonl"])
def test_arena_skips_and_counts_ties(name):
    out = load_pairs(FIX / name, "arena")
    assert [(p.prompt, p.a_wins) for p in out.pairs] == [("What is 2+2?", True), ("Write a haiku.", False)]
    assert out.skipped == {"arena: tie (no preference for a pairwise loss)": 1, "arena: tie (bothbad) (no preference for a pairwise loss)": 1}


def test_prompt_chosen_rejected_jsonl():
    out = load_pairs(FIX / "pairs.jsonl", "jsonl")
    assert out.pairs[1].a == "Hello." and out.pairs[1].b == "Goodbye." and out.pairs[1].a_wins


@pytest.mark.parametrize("name, fmt, message", [
    ("bad_missing_key.jsonl", "jsonl", r"bad_missing_key.jsonl:2: missing field 'rejected'"),
    ("bad_empty_text.jsonl", "jsonl", r"bad_empty_text.jsonl:3: field 'chosen' is empty"),
    ("bad_type.jsonl", "jsonl", r"bad_type.jsonl:1: field 'chosen' must be a string, got int"),
    ("bad_json.jsonl", "jsonl", r"bad_json.jsonl:2: invalid JSON"),
    ("bad_utf8.jsonl", "jsonl", r"bad_utf8.jsonl:2: not UTF-8"),
    ("bad_tldr_choice.jsonl", "tldr", r"bad_tldr_choice.jsonl:1: field 'choice' must be 0 or 1"),
    ("bad_arena_winner.jsonl", "arena", r"bad_arena_winner.jsonl:2: field 'winner'"),
    ("hh.jsonl", "tldr", r"hh.jsonl:1: missing field 'info'"),
])
def test_malformed_records_name_file_line_and_field(name, fmt, message):
    with pytest.raises(DataError, match=message):
        load_pairs(FIX / name, fmt)


def test_unknown_format_and_missing_file():
    with pytest.raises(ValueError, match="unknown data format"):
        load_pairs(FIX / "pairs.jsonl", "csv")
    with pytest.raises(FileNotFoundError):
        load_pairs(FIX / "nope.jsonl", "jsonl")


def test_encode_pairs_truncates_and_pads():
    pairs = load_pairs(FIX / "pairs.jsonl", "jsonl").pairs
    tok = word_tokenizer("Summarise: cats sleep a lot. Cats sleep much. Dogs bark.".split())
    ids = special_ids(tok)
    enc = encode_pairs(pairs, tok, max_prompt=3, max_response=3, eos=ids["eos"], pad=ids["pad"])
    assert enc.prompt_ids.shape == (2, 3) and enc.x.tolist() == [0, 1]
    assert tok.convert_ids_to_tokens(enc.prompt_ids[0].tolist()) == ["sleep", "a", "lot."]  # cut from the left
    assert enc.y_a[0].tolist() == tok.convert_tokens_to_ids(["Cats", "sleep", "much."])  # cut: no EOS
    assert enc.y_b[0].tolist() == tok.convert_tokens_to_ids(["Dogs", "bark."]) + [ids["eos"]]
    Prompts(enc.prompt_ids, enc.prompt_mask)  # valid table


def test_synthetic_task_is_deterministic_and_labels_noisy_at_the_stated_rate():
    spec = TaskSpec(prompts=40, pairs=3000, label_noise=0.2, seed=3)
    a, b = make_task(spec, 7), make_task(spec, 7)
    assert a.pairs == b.pairs
    flips = []
    by_prompt = {a.prompt_text(i): d for i, d in enumerate(a.docs)}
    for p in a.pairs:
        sa, sb = (_score_words(by_prompt[p.prompt], r.split(), True, a.salience) for r in (p.a, p.b))
        if sa != sb:
            flips.append(p.a_wins != (sa > sb))
    assert abs(sum(flips) / len(flips) - 0.2) < 0.03
    with pytest.raises(ValueError, match="label_noise"):
        make_task(TaskSpec(label_noise=0.5), 7)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 9), st.lists(st.integers(0, 17), max_size=7), st.booleans())
def test_rater_on_tokens_equals_the_word_level_reference(doc, picks, ended):
    task = make_task(TaskSpec(prompts=10, pairs=10, words=12, doc_words=4, seed=1), 7)
    vocab_words = task.words + FILLERS
    tok = word_tokenizer(vocab_words + ["tl;dr"])
    ids = special_ids(tok)
    words = [vocab_words[i % len(vocab_words)] for i in picks]
    T = 8
    y = tok.convert_tokens_to_ids(words) + ([ids["eos"]] if ended else [])
    if not ended:  # a cut-off response fills all T positions
        words = (words + vocab_words[:T])[:T]
        y = tok.convert_tokens_to_ids(words)
    y = y + [ids["pad"]] * (T - len(y))
    rater = Rater(task, tok.get_vocab(), ids["eos"], ids["pad"], [task.prompt_text(i) for i in range(10)])
    got = rater.reward(torch.tensor([doc]), torch.tensor([y]))[0].item()
    assert got == pytest.approx(_score_words(task.docs[doc], words, ended, task.salience), abs=1e-5)


# ---------------------------------------------------------------- as people download them

def test_tldr_hugging_face_export_with_nulls_cnn_dm_rows_and_splits():
    """The Hub export writes every info key (null where a row lacks it); validation has CNN/DM rows."""
    out = load_pairs(FIX / "tldr_hf.jsonl", "tldr")
    assert [p.prompt.split("\n")[0] for p in out.pairs] == ["SUBREDDIT: r/cats", "SUBREDDIT: r/legaladvice", "Article:"]
    assert "TITLE" not in out.pairs[1].prompt  # title null: left out, not "None"
    assert [p.a_wins for p in out.pairs] == [True, False, True]
    train = load_pairs(FIX / "tldr_hf.jsonl", "tldr", split="train")
    assert len(train.pairs) == 1 and train.skipped == {"split 'valid1', not 'train'": 1, "split 'valid2', not 'train'": 1}


def test_hh_identical_final_turns_are_skipped_and_counted():
    out = load_pairs(FIX / "hh_identical.jsonl", "hh")
    assert [(p.a, p.b) for p in out.pairs] == [("Hi!", "Go away.")]
    assert out.skipped == {"hh: chosen and rejected final turns are identical (no preference)": 1}


def test_arena_multi_turn_both_bad_and_text_parts():
    out = load_pairs(FIX / "arena_multiturn.jsonl", "arena")
    assert [(p.prompt, p.a, p.b, p.a_wins) for p in out.pairs] == [("Spell dog.", "D-O-O-G.", "D-O-G.", False)]
    assert sum(v for k, v in out.skipped.items() if k.startswith("arena: multi-turn battle")) == 1
    assert out.skipped["arena: both_bad (no preference for a pairwise loss)"] == 1


def test_arena_55k_export():
    out = load_pairs(FIX / "arena_55k.jsonl", "arena")
    assert [(p.prompt, p.a, p.b, p.a_wins) for p in out.pairs] == [("Add 1 and 1.", "2", "11", True)]
    assert sum(out.skipped.values()) == 3 and out.skipped["arena: tie (no preference for a pairwise loss)"] == 1


def test_trl_standard_conversational_and_implicit_prompt_formats():
    out = load_pairs(FIX / "trl_formats.jsonl", "jsonl")
    assert [(p.prompt, p.a, p.b) for p in out.pairs] == [
        ("\n\nUser: What colour is the sky?\n\nAssistant:", "Blue.", "Green."),   # conversational
        ("\n\nUser: Two plus two?\n\nAssistant:", "Four.", "Five."),             # implicit prompt, messages
        ("The sky is ", "blue.", "green."),                                      # implicit prompt, strings
    ]
    assert out.skipped == {"jsonl: chosen and rejected are identical (no preference)": 1}


def test_implicit_prompt_boundary_backs_off_to_a_word():
    from fullscale.formats import _common_prefix

    assert _common_prefix("Paris is nice", "Paris is nicer") == len("Paris is ")
    assert _common_prefix("abc", "abc") == 3 and _common_prefix("x", "y") == 0


def test_gzip_and_json_array_are_read_by_content_whatever_the_suffix(tmp_path):
    import gzip

    raw = (FIX / "pairs.jsonl").read_bytes()
    (tmp_path / "pairs.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "misnamed.json").write_bytes(gzip.compress(raw))  # gzip without the suffix
    want = load_pairs(FIX / "pairs.jsonl", "jsonl").pairs
    assert load_pairs(tmp_path / "pairs.jsonl.gz", "jsonl").pairs == want == load_pairs(tmp_path / "misnamed.json", "jsonl").pairs
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(raw)[:-9])
    with pytest.raises(DataError, match="damaged gzip"):
        load_pairs(tmp_path / "bad.jsonl.gz", "jsonl")


def test_a_leading_utf8_byte_order_mark_is_skipped_in_json_lines_and_arrays(tmp_path):
    """Notepad and Excel exports start a UTF-8 file with EF BB BF; pandas and datasets read on."""
    import gzip
    import json

    raw = (FIX / "pairs.jsonl").read_bytes()
    want = load_pairs(FIX / "pairs.jsonl", "jsonl").pairs
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + raw)
    (tmp_path / "bom.jsonl.gz").write_bytes(gzip.compress(b"\xef\xbb\xbf" + raw))
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    for name in ("bom.jsonl", "bom.jsonl.gz", "bom.json"):
        assert load_pairs(tmp_path / name, "jsonl").pairs == want, name
    (tmp_path / "mid.jsonl").write_bytes(raw + b"\xef\xbb\xbf{}\n")  # only a leading mark is the encoding's
    with pytest.raises(DataError, match="invalid JSON"):
        load_pairs(tmp_path / "mid.jsonl", "jsonl")


def test_parquet_file_and_folder_of_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import json

    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIX / "tldr_hf.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    want = load_pairs(FIX / "tldr_hf.jsonl", "tldr").pairs
    assert load_pairs(tmp_path / "train.parquet", "tldr").pairs == want
    shards = tmp_path / "hub"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2]), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), shards / "train-00001-of-00002.parquet")
    assert load_pairs(shards, "tldr").pairs == want


def test_parquet_without_its_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "d.parquet").write_bytes(b"PAR1" + b"\0" * 8 + b"PAR1")
    real = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match=r'needs pyarrow: pip install -e "\.\[parquet\]"'):
        load_pairs(tmp_path / "d.parquet", "jsonl")


def test_conversational_pairs_take_the_policy_tokenizers_chat_template():
    """A tokenizer with a chat template renders the prompt with the generation prompt and each
    response as what the template adds after it; the boundary is exact in tokens."""
    from fullscale.data import apply_chat_template

    tok = word_tokenizer("<|user|> <|assistant|> <|end|> What colour is the sky? Blue. Green.".split())
    pairs = load_pairs(FIX / "trl_formats.jsonl", "jsonl").pairs
    assert apply_chat_template(pairs, tok) == pairs  # no template: the plain rendering stays
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    out = apply_chat_template(pairs, tok)
    assert (out[0].prompt, out[0].a, out[0].b) == ("<|user|> What colour is the sky? <|end|> <|assistant|> ", "Blue. <|end|> ", "Green. <|end|> ")
    assert out[2] == pairs[2]  # a string pair is not conversational: unchanged
    ids = special_ids(tok)
    enc = encode_pairs(out[:1], tok, 32, 8, ids["eos"], ids["pad"])
    full = tok(out[0].prompt + out[0].a, add_special_tokens=False)["input_ids"]
    prompt = enc.prompt_ids[0][enc.prompt_mask[0].bool()].tolist()
    assert prompt + enc.y_a[0].tolist()[: len(full) - len(prompt)] == full  # prompt tokens then response tokens


@pytest.mark.parametrize("rec, fmt, message", [
    ({"info": {"post": None, "article": None, "title": "t"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0},
     "tldr", "field 'info' has neither a 'post' nor an 'article' text"),
    ({"info": {"post": 3}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": 0}, "tldr", "field 'info.post' must be a string, got int"),
    ({"prompt": "[\"q\"]", "response_a": "[\"a\"]", "response_b": "[\"b\"]", "winner_model_a": 1, "winner_model_b": 1, "winner_tie": 0},
     "arena", "exactly one 1"),
    ({"prompt": "not json", "response_a": "[\"a\"]", "response_b": "[\"b\"]", "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0},
     "arena", "field 'prompt' must be a JSON-encoded list of turns"),
    ({"winner": "model_a", "conversation_a": [{"role": "user"}], "conversation_b": []}, "arena", "conversation_a[0] must be an object with 'role' and 'content'"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "jsonl", "field 'chosen[0].role' must be a string"),
    ({"chosen": "apple", "rejected": "banana"}, "jsonl", "share no beginning to be the prompt"),
])
def test_malformed_rows_of_the_downloaded_layouts_name_line_and_field(tmp_path, rec, fmt, message):
    import json
    import re

    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "chosen": "a", "rejected": "b"}) + "\n" if fmt == "jsonl" else "")
    with f.open("a") as out:
        out.write(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=re.escape(f"bad.jsonl:{2 if fmt == 'jsonl' else 1}: ") + ".*" + re.escape(message)):
        load_pairs(f, fmt)


def test_a_folder_with_the_shards_of_two_splits_is_refused(tmp_path):
    """The Hub lays a dataset out as <split>-00000-of-0000N.parquet: reading them all would train on the test split."""
    pa = pytest.importorskip("pyarrow")
    import json

    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIX / "tldr_hf.jsonl").read_text().splitlines()]
    for name in ("train-00000-of-00001.parquet", "test-00000-of-00001.parquet"):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
    with pytest.raises(DataError, match=r"holds the shards of several splits \(test, train\)"):
        load_pairs(tmp_path, "tldr")
