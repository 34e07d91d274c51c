"""Bad input to ``python -m fullscale.run`` is one line on stderr and exit 2, found before any
training, with nothing written to --out and nothing of the user's deleted (fullscale/checks.py,
fullscale/config.py). Run in-process (``main(argv)``) to keep the suite fast; the end-to-end
subprocess cases are in tests/test_fullscale_run.py."""

import gzip
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from fullscale.models import ModelSpec, build_model, save_model, special_ids, word_tokenizer  # noqa: E402
from fullscale.run import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "fullscale-tiny.json"
PAIRS = ROOT / "tests" / "fixtures" / "pairs.jsonl"


def bad(capsys, tmp_path, *args, config=TINY):
    """Run with ``args``; assert exit 2, one line on stderr, no traceback, --out untouched; return the line."""
    out = tmp_path / "out"
    rc = main([*(["--config", str(config)] if config else []), "--out", str(out), *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists(), "nothing may be written to --out before the inputs are checked"
    return err


@pytest.mark.parametrize("args, message", [
    # silently wrong runs before
    (["--data.max-pairs", "-1"], "--data.max-pairs must be an integer ≥ 1"),
    (["--train.proxy-fraction", "0"], "--train.proxy-fraction must be a number > 0 and ≤ 1"),
    (["--train.proxy-fraction", "-0.5"], "--train.proxy-fraction must be a number > 0"),
    (["--data.max-prompt-tokens", "0"], "--data.max-prompt-tokens must be an integer ≥ 1"),
    (["--data.path", str(PAIRS)], "--data.path is read only with --data.source"),
    # checked too late before
    (["--train.lr", "inf"], "--train.lr must be a number > 0 and ≤ 10, got inf"),
    (["--train.lr", "nan"], "--train.lr must be a number > 0"),
    (["--eval.win-prompts", "0"], "--eval.win-prompts must be an integer ≥ 2"),
    (["--eval.kl-prompts", "9"], "--eval.kl-prompts 9 must be at most --eval.win-prompts 8"),
    (["--train.sweep-lr", "-1", "1"], "--train.sweep-lr must be a number > 0 and ≤ 1000, got -1.0 in (-1.0, 1.0)"),
    (["--train.sweep-beta", "0"], "--train.sweep-beta must be a number > 0"),
    (["--models.policy.width", "17"], "--models.policy.width 17 must be a multiple of --models.policy.heads 2"),
    (["--train.batch-size", "49"], "--train.batch-size 49 exceeds the 48 pairs of the data"),
    (["--data.max-response-tokens", "200"], "beyond its maximum length 128 (--models.policy.max-len)"),
    (["--seeds", "1000"], "--seeds must be an integer ≥ 1 and ≤ 100"),
    (["--train.steps", "100000000"], "--train.steps must be an integer ≥ 1 and ≤ 10000000"),
    (["--data.task.label-noise", "0.5"], "--data.task.label-noise must be a number ≥ 0 and ≤ 0.4999"),
    (["--data.task.doc-words", "50"], "--data.task.doc-words 50 cannot exceed --data.task.words 40"),
    (["--data.source", "hh"], "--data.source hh needs --data.path"),
    (["--models.policy.arch", "gpt3"], "invalid choice 'gpt3'"),
    (["--seeds", "0"], "--seeds must be an integer ≥ 1"),
    (["--hypothesis", "nonsense"], "invalid choice 'nonsense' for argument '--hypothesis'"),
    (["--train.steps", "abc"], "--train.steps"),
])
def test_bad_values_are_one_line_before_any_work(capsys, tmp_path, args, message):
    assert message in bad(capsys, tmp_path, *args)


def test_a_data_directory_and_compressed_or_missing_files_are_named(capsys, tmp_path, monkeypatch):
    assert f"--data.path {tmp_path} is a directory without *.parquet shards" in bad(capsys, tmp_path, "--data.source", "hh", "--data.path", tmp_path)
    gz = tmp_path / "hh.jsonl.gz"
    gz.write_bytes(gzip.compress((ROOT / "tests" / "fixtures" / "hh.jsonl").read_bytes()))
    # a gzipped file is read (fullscale.records): the run gets as far as the data's own size check
    assert "exceeds the 2 pairs of the data" in bad(capsys, tmp_path, "--data.source", "hh", "--data.path", gz)
    pq = tmp_path / "d.parquet"
    pq.write_bytes(b"PAR1" + b"\0" * 8 + b"PAR1")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert 'is parquet; reading it needs pyarrow: pip install -e ".[parquet]"' in bad(capsys, tmp_path, "--data.source", "hh", "--data.path", pq)
    assert "does not exist" in bad(capsys, tmp_path, "--data.source", "hh", "--data.path", tmp_path / "nope.jsonl")
    assert "--data.path /dev/null is not a regular file" in bad(capsys, tmp_path, "--data.source", "hh", "--data.path", "/dev/null")


def test_an_output_or_cache_folder_that_cannot_be_made_is_one_line(capsys, tmp_path):
    for flag in ("--out", "--cache"):
        rc = main(["--config", str(TINY), *(["--out", str(tmp_path / "o")] if flag == "--cache" else []), flag, "/proc/no-such-dir"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: cannot write to") and "\n" not in err, err
        assert not (tmp_path / "o" / "config.json").exists()


def test_a_malformed_data_file_is_named_and_a_corrected_rerun_works(capsys, tmp_path):
    """The data is read before anything is written, so the same command works once the file is fixed."""
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a b", "chosen": "c"}\n')
    args = ["--data.source", "jsonl", "--data.path", data, "--data.vocab-words", "50", "--train.batch-size", "4"]
    assert "missing field 'rejected'" in bad(capsys, tmp_path, *args)
    data.write_text("".join(json.dumps({"prompt": f"doc {i % 5} says {i % 3}", "chosen": f"says {i % 3}",
                                        "rejected": f"um {i % 4}"}) + "\n" for i in range(40)))
    out = tmp_path / "out"
    assert main(["--config", str(TINY), "--out", str(out), *map(str, args)]) == 0, capsys.readouterr().err
    assert (out / "results.json").exists()


def test_a_run_on_trl_conversational_data_in_parquet_shards(capsys, tmp_path):
    """TRL's conversational form, saved as the Hub lays a dataset out, runs end to end; a skipped
    row is counted in results.json."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def msgs(*turns):
        return [{"role": r, "content": c} for r, c in turns]

    rows = [{"prompt": msgs(("user", f"doc {i % 5} says {i % 3}")), "chosen": msgs(("assistant", f"says {i % 3}")),
             "rejected": msgs(("assistant", f"um {i % 4}" if i else f"says {i % 3}"))} for i in range(40)]  # row 0: no preference
    shards = tmp_path / "data"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:20]), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[20:]), shards / "train-00001-of-00002.parquet")
    out = tmp_path / "out"
    args = ["--data.source", "jsonl", "--data.path", str(shards), "--data.vocab-words", "50", "--train.batch-size", "4"]
    assert main(["--config", str(TINY), "--out", str(out), *args]) == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())["extras"]["data"]
    assert data["pairs"] == 39 and data["skipped"] == {"jsonl: chosen and rejected are identical (no preference)": 1}


@pytest.mark.parametrize("body, message", [
    ('{"train": {"steps": "abc"}}', "key 'train.steps' must be an integer, got 'abc'"),
    ('{"train": {"sweep_lr": 1.0}}', "key 'train.sweep_lr' must be a list, got 1.0"),
    ('[1, 2]', "the top level must be a table of RunConfig fields, got list"),
    ('{"train": 3}', "key 'train' must be a table of TrainConfig fields, got int"),
    ('{"train": {"lr": -1}}', "key 'train.lr' must be a number > 0"),
    ('{"seeds": true}', "key 'seeds' must be an integer, got True"),
    ('{"models": {"policy": {"arch": "gpt3"}}}', "key 'models.policy.arch' must be one of gpt2, llama"),
    ('{"preset": "small"}', "key 'preset' is 'small', but the preset in use is 'smoke'"),
    ('{"train": {"steps": 3,}}', "invalid JSON at line 1, column"),
    ('{"train": {"stepz": 3}}', "unknown key 'train.stepz'"),
])
def test_config_file_values_are_checked_by_type_and_range(capsys, tmp_path, body, message):
    cfg = tmp_path / "c.json"
    cfg.write_text(body)
    err = bad(capsys, tmp_path, config=cfg)
    assert message in err and str(cfg) in err


def test_toml_config_errors_name_the_file(capsys, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nsteps = 'x'\n")
    assert f"{cfg}: key 'train.steps' must be an integer" in bad(capsys, tmp_path, config=cfg)
    cfg.write_text("[train\n")
    assert f"{cfg}: invalid TOML" in bad(capsys, tmp_path, config=cfg)
    assert "is a directory" in bad(capsys, tmp_path, config=tmp_path)
    assert "--config /dev/null is not a regular file" in bad(capsys, tmp_path, config=Path("/dev/null"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A valid local causal LM directory (tiny GPT-2 and a word tokenizer of the synthetic task)."""
    from fullscale.task import END, FILLERS

    tok = word_tokenizer([f"w{i:02d}" for i in range(40)] + FILLERS + [END])
    d = tmp_path_factory.mktemp("models") / "good"
    save_model(build_model(ModelSpec(width=16, layers=1, heads=2, max_len=64), len(tok), special_ids(tok), 0), tok, d)
    return d


def _broken(model_dir, tmp_path, how):
    d = tmp_path / how
    shutil.copytree(model_dir, d)
    w = d / "model.safetensors"
    if how == "truncated":
        w.write_bytes(w.read_bytes()[:-100])
    elif how == "corrupt":
        w.write_bytes(b"not a safetensors file" * 10)
    elif how == "no-weights":
        w.unlink()
    elif how == "bad-config":
        (d / "config.json").write_text("{not json")
    elif how == "unknown-arch":
        (d / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    elif how == "no-tokenizer":
        for f in d.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "vocab")):
                f.unlink()
    return d


@pytest.mark.parametrize("how, message", [
    ("truncated", "is corrupt or truncated"), ("corrupt", "is corrupt or truncated"), ("no-weights", "has no weights"),
    ("bad-config", "config.json cannot be read"), ("unknown-arch", "config.json cannot be read"),
    ("no-tokenizer", "has no tokenizer files"),
])
def test_a_broken_model_directory_is_named(capsys, tmp_path, model_dir, how, message):
    d = _broken(model_dir, tmp_path, how)
    for flag in ("--models.policy-path", "--models.golden-pm-path"):
        err = bad(capsys, tmp_path, flag, d)
        assert message in err and flag in err and str(d) in err


def test_a_loaded_model_is_checked_against_the_data_lengths(capsys, tmp_path, model_dir):
    """The golden PM reads prompt + 2 responses + 1 = 7 + 2×30 + 1 = 68 > 64 tokens (its n_positions)."""
    err = bad(capsys, tmp_path, "--models.golden-pm-path", model_dir, "--data.max-response-tokens", "30")
    assert "the golden PM reads up to 68 tokens (a prompt of 7 + 2 responses of 30 + 1)" in err and "maximum length 64" in err
    assert "not a directory" in bad(capsys, tmp_path, "--models.proxy-pm-path", tmp_path / "missing")
    assert "cannot scale a model" in bad(capsys, tmp_path, "--study", "scale", "--models.policy-path", model_dir)


def test_the_stage_cache_removes_only_its_own_temporary_files(capsys, tmp_path):
    """--cache DIR: files the user keeps there (any *.tmp too) survive a failed run and a finished
    one; an unfinished stage folder's own leftover *.tmp (a killed save) is removed when the stage is
    built again (by the run holding its lock, fullscale.store.lock_stage)."""
    cache = tmp_path / "cache"
    mine = [cache / "notes.tmp", cache / "project" / "draft.tmp", cache / "data-keep" / "x.tmp"]
    for f in mine:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("user data")
    bad(capsys, tmp_path, "--cache", cache, "--train.batch-size", "49")  # fails on the data check
    assert all(f.read_text() == "user data" for f in mine)
    out = tmp_path / "run"
    assert main(["--config", str(TINY), "--cache", str(cache), "--out", str(out)]) == 0
    assert all(f.read_text() == "user data" for f in mine)
    stage = next(cache.glob("sft@1-*"))
    (stage / "DONE").unlink()  # as a build killed before it finished leaves it
    (stage / "model.tmp").mkdir()
    (stage / "state.pt.tmp").write_text("half a save")
    assert main(["--config", str(TINY), "--cache", str(cache), "--out", str(tmp_path / "run2")]) == 0
    assert not (stage / "model.tmp").exists() and not (stage / "state.pt.tmp").exists()
    assert all(f.read_text() == "user data" for f in mine)
    capsys.readouterr()
