"""Exercise 4: ordered replay and the tandem shuffle, read off results.json.
Instructions: docs/exercises/04-tandem.md. Check: python docs/exercises/check.py 4
"""

from shared.metrics import gap_at_matched_kl, seed_ci  # noqa: F401  (you may use these)


def answer(results: dict) -> dict:
    """``results``: the dict in DIR/coverage/results.json (docs/results-schema.md).

    Return a dict with the keys
      "ordered_max_abs_diff":        float, max over seeds and checkpoints of
                                     |win rate(online) − win rate(replay-ordered)|
      "ordered_reproduces_online":   bool, that difference is ≤ 1e-3 (claim 4 of the README's table; Tang et al. 2024, §4.1)
      "online_minus_offline":        (mean, half-width) over seeds of the win-rate gap
                                     online − offline at matched KL
      "online_minus_tandem":         (mean, half-width), the same for online − tandem
      "tandem_clearly_below_online": bool, the lower end of that interval is > 0
    """
    raise NotImplementedError
