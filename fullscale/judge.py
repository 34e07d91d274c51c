"""An off-the-shelf reward model as the golden judge, used as it was trained.

In Tang et al. 2024 (§3) the golden preference model is a different, larger model than the
policy; in practice it is often a published reward model: a sequence-classification model
with one score per text, its own tokenizer, its own chat template and its own maximum length.
``TextJudge`` scores the policy's responses with it: it decodes the prompt and the response
from the policy's tokens, renders them for the judge (its chat template, a user turn and an
assistant turn, when it has one; else prompt text followed by response text), tokenises them
with the judge's tokenizer, cut to the judge's maximum length from the left (the prompt's
beginning goes first, never the response), and reads the score. Decisions
are pointwise Bradley–Terry, as such models are trained (Stiennon et al. 2020; Ouyang et al.
2022): margin = r(x, y1) − r(x, y2), P(y1 ≻ y2) = σ(margin). It is never trained here.

Docs: docs/fullscale.md (§ bring your own judge). Tests: tests/test_fullscale_judge.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fullscale.lm import Prompts
from fullscale.models import load_tokenizer

__all__ = ["TextJudge", "load_judge"]


def load_judge(path: str | Path, device: str = "cpu"):
    """(model, tokenizer) of a local sequence-classification reward model with one output
    (``num_labels == 1``); its head is used as trained, never replaced. No download, no remote code.
    Docs: docs/fullscale.md (Bring your own judge)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification  # lazily: transformers takes seconds to import

    path = Path(path)
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a model directory ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if cfg.num_labels != 1:
        raise ValueError(f"{path}: a judge must be a reward model with one score per text (num_labels 1), this one has {cfg.num_labels}")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"{path}: the reward model cannot be loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    tok = load_tokenizer(path)
    if tok.pad_token is None:  # batching needs one; the score is read where the model's own pooling reads it
        tok.pad_token = tok.eos_token or tok.unk_token
        model.config.pad_token_id = tok.pad_token_id
    return model.to(device).eval(), tok


class TextJudge:
    """A reward model with its own tokenizer as an oracle for ``shared.preferences.label_pairs``
    (the interface of ``fullscale.lm.PMOracle``: ``margin`` and ``prob_first``)."""

    stochastic = False

    def __init__(self, model, tokenizer, policy_tokenizer, prompts: Prompts, eos: int, pad: int, batch: int = 64):
        self.model, self.tok, self.policy_tok, self.prompts = model, tokenizer, policy_tokenizer, prompts
        self.eos, self.pad, self.batch = eos, pad, batch
        limits = [n for n in (getattr(tokenizer, "model_max_length", None), getattr(model.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 10**6]
        self.max_length = min(limits) if limits else 512

    def texts(self, x: torch.Tensor, y: torch.Tensor) -> list[str]:
        """What the judge reads for each (prompt row, response): decoded from the policy's
        tokens (prompt padding and everything from the response's EOS on dropped), rendered
        with the judge's chat template when it has one."""
        out = []
        for xi, yi in zip(x.tolist(), y.tolist()):
            ids, mask = self.prompts.ids[xi], self.prompts.mask[xi].bool()
            prompt_ids = ids[mask].tolist()
            resp = yi[: yi.index(self.eos)] if self.eos in yi else yi
            resp = [t for t in resp if t != self.pad]
            if self.tok.chat_template:  # every transformers tokenizer has the attribute (None without a template)
                prompt, response = (self.policy_tok.decode(t, skip_special_tokens=True) for t in (prompt_ids, resp))
                out.append(self.tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                                        tokenize=False))
            else:  # decoded as one sequence, so the tokenizer puts the space between prompt and response
                out.append(self.policy_tok.decode(prompt_ids + resp, skip_special_tokens=True))
        return out

    @torch.no_grad()
    def scores(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """r(x, y) for each row, in batches of ``batch`` texts. -> [B] float32 on x's device."""
        texts = self.texts(x, y)
        device = next(self.model.parameters()).device
        templated = bool(self.tok.chat_template)  # the template already wrote the special tokens
        side, self.tok.truncation_side = self.tok.truncation_side, "left"  # too long: the prompt's start goes, never the response
        out = []
        try:
            for i in range(0, len(texts), self.batch):
                enc = self.tok(texts[i: i + self.batch], padding=True, truncation=True, max_length=self.max_length,
                               add_special_tokens=not templated, return_tensors="pt")
                out.append(self.model(**{k: v.to(device) for k, v in enc.items()}).logits[:, 0].float())
        finally:
            self.tok.truncation_side = side
        return torch.cat(out).to(x.device) if out else torch.zeros(0, device=x.device)

    def margin(self, x, y1, y2):
        return self.scores(x, y1) - self.scores(x, y2)

    def prob_first(self, x, y1, y2):
        return torch.sigmoid(self.margin(x, y1, y2))
