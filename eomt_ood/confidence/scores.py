"""Per-pixel confidence maps from stitched mask-classification outputs; higher = more in-distribution.

Every score is one pure function `(outputs: PixelOutputs) -> (H, W) float32 in [0, 1]`. Scores are pooled over
whole BRAVO subsets, so the map from the raw value to [0, 1] is fixed and monotone (never per-image min-max);
each docstring states the raw range and that map. Scores must be pointwise (pixel (y, x) uses only the channels
at (y, x)) because large images are scored in bands of rows.

Inputs (`eomt_ood.confidence.outputs.PixelOutputs`, averaged over window overlaps before any score is taken):
`class_scores` s (C, H, W) with s_c = sum_q softmax(z_q)[c] * sigmoid(m_q), each in [0, Q], and `no_object`
n (H, W) = sum_q softmax(z_q)[C] * sigmoid(m_q). Note k + n = sum_q sigmoid(m_q) with k = sum_c s_c.

RbA ("Rejected by All", Nayal et al., ICCV 2023, github NazirNayal8/RbA) forms its per-pixel class scores from
Mask2Former outputs exactly as s above (softmax over C+1, no-object dropped, sigmoid masks) and scores anomalies
as -sum_c tanh(s_c); its max-logit / energy / entropy baselines use the same s. We follow that, so no stitched
channel of raw class logits is needed.
"""

from __future__ import annotations

import math

import torch

from eomt_ood.confidence.outputs import PixelOutputs
from eomt_ood.confidence.registry import register_confidence

# Smallest positive normal float32: guards a division where every class score underflowed to 0.
_TINY = torch.finfo(torch.float32).tiny


def squash(x: torch.Tensor) -> torch.Tensor:
    """x / (1 + x): strictly increasing [0, inf) -> [0, 1), 0 -> 0, 1 -> 0.5. Used for unbounded raw scores."""
    x = x.clamp(min=0)
    return x / (1 + x)


def class_distribution(outputs: PixelOutputs) -> torch.Tensor:
    """(C, H, W) class scores normalised to sum 1 over c (all zeros where every score is 0)."""
    return outputs.class_scores.float() / outputs.known_mass.clamp(min=_TINY)[None]


def _unit(x: torch.Tensor) -> torch.Tensor:
    # Guard against float rounding just outside [0, 1]; the maps below are in [0, 1] mathematically.
    return x.float().clamp(0.0, 1.0)


@register_confidence("msp")
def msp_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """Maximum of the normalised class distribution: max_c s_c / sum_c s_c.

    Raw range [1/C, 1] (0 where every score underflowed); map: identity. The probability-like score of the
    predicted class (argmax is the same class), so it is the natural choice for calibration (ECE).
    """
    # max_c (s_c / S) = (max_c s_c) / S exactly (division by one positive S is monotone and correctly rounded),
    # so the max shared with the prediction serves here too.
    return _unit(outputs.max_score / outputs.known_mass.clamp(min=_TINY))


@register_confidence("max_score")
def max_score_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """The unnormalised score of the predicted class, max_c s_c ("max logit" of mask classification).

    Raw range [0, Q]; in practice mostly [0, 1], but overlapping queries of one class push it above 1, so
    clipping would tie the most confident pixels. Map: x / (1 + x) (strictly increasing; raw 1 -> 0.5).
    """
    return _unit(squash(outputs.max_score))


@register_confidence("entropy")
def entropy_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """One minus the normalised entropy of the class distribution p = s / sum_c s: 1 - H(p) / log C.

    Raw H in [0, log C] (0 = one class holds all mass); map: 1 - H / log C, so a peaked pixel is near 1 and a
    flat one 0. With C = 1 the entropy is always 0 and the score 1.
    """
    p = class_distribution(outputs)
    num_classes = p.shape[0]
    if num_classes < 2:
        return torch.ones(p.shape[1:], dtype=torch.float32, device=p.device)
    entropy = -(p * torch.log(p.clamp(min=_TINY))).sum(0)
    return _unit(1 - entropy / math.log(num_classes))


@register_confidence("rba")
def rba_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """RbA (Nayal et al., ICCV 2023): a pixel rejected by every class is OOD. Raw t = sum_c tanh(s_c).

    RbA's anomaly score is -t; in-distribution = t, raw range [0, C * tanh(Q)] (about [0, C)). Map: t / (1 + t)
    (strictly increasing; one class fully claiming the pixel gives tanh(1) = 0.76 -> 0.43).
    """
    # tanh(s) = 1 - 2 sigmoid(-2s) = -2 (sigmoid(-2s) - 0.5), in place on one temporary: on the CPU (where this
    # is the costliest score after entropy) 3x faster than torch.tanh and 1.5x faster than tanh through exp.
    # Scaling by -2 is exact, so taking it once after the sum over classes gives the same float32 bits as
    # summing 1 - 2 sigmoid(-2s), one pass over the classes fewer. Within 1e-6 of float64 tanh's sum for small s
    # (1 - 2 sigmoid is exact there), as close as float32 torch.tanh (4e-6) above.
    halves = outputs.class_scores.float().mul(-2.0).sigmoid_().sub_(0.5)
    return _unit(squash(halves.sum(0).mul_(-2.0)))


@register_confidence("energy")
def energy_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """Negative free energy of the class scores, E = logsumexp_c s_c (energy-based OOD, Liu et al. 2020).

    Raw E in [log C, Q + log C] (E >= log C + mean_c s_c >= log C). Map: (E - log C) / (1 + E - log C), strictly
    increasing, 0 for all-zero scores.
    """
    # logsumexp shifted by the max over classes (shared with the prediction): no overflow, one reduction less.
    scores, top = outputs.class_scores.float(), outputs.max_score
    energy = (scores - top).exp_().sum(0).log_().add_(top)
    return _unit(squash(energy - math.log(scores.shape[0])))


@register_confidence("no_object")
def no_object_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """Share of the claimed mask mass that went to known classes: k / (k + n), k = sum_c s_c, n = no-object mass.

    Equals 1 - n / (k + n), i.e. one minus the normalised no-object mass. Raw range [0, 1]; map: identity
    (0 where no query claims the pixel at all).
    """
    known = outputs.known_mass
    total = known + outputs.no_object.float()
    return _unit(known / total.clamp(min=_TINY))


@register_confidence("known_mass")
def known_mass_confidence(outputs: PixelOutputs) -> torch.Tensor:
    """Total known-class mass k = sum_c s_c: low where no query claims the pixel for a known class.

    Raw range [0, Q]. Map: k / (1 + k) (strictly increasing; k = 1 -> 0.5).
    """
    return _unit(squash(outputs.known_mass))
