"""Per-pixel confidence: the model outputs a score reads (`PixelOutputs`), the scores by name, their 16-bit levels.

Importing the package registers every score of `eomt_ood.confidence.scores`.
"""

from eomt_ood.confidence import scores as scores
from eomt_ood.confidence.outputs import PixelOutputs
from eomt_ood.confidence.registry import ConfidenceFn, get_confidence, list_confidences, register_confidence

__all__ = ["ConfidenceFn", "PixelOutputs", "get_confidence", "list_confidences", "register_confidence"]
