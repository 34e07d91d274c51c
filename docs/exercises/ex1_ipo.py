"""Exercise 1: the IPO loss. Instructions: docs/exercises/01-ipo-loss.md.
Check: python docs/exercises/check.py 1
"""

import torch


def ipo_loss(pi_logp_w, pi_logp_l, ref_logp_w, ref_logp_l, beta):
    """IPO, Azar et al. 2023 (arXiv 2310.12036), Eq. 17, on summed log-probs:

        (h − 1/(2β))²,   h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)].

    Inputs: four tensors of one shape [...] (summed sequence log-probs), and
    ``beta`` a float or a tensor that broadcasts against them.
    Returns the per-example loss, shape [...] (do not reduce).
    """
    raise NotImplementedError
