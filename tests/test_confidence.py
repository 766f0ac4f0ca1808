import math

import pytest
import torch

from eomt_ood.confidence import PixelOutputs, get_confidence, list_confidences, register_confidence, scores
from eomt_ood.errors import UserError

C = 19


def pixel(class_scores, no_object=0.0) -> PixelOutputs:
    """A 1x1 image with the given C class scores and no-object mass."""
    scores = torch.tensor(class_scores, dtype=torch.float32).reshape(-1, 1, 1)
    return PixelOutputs(class_scores=scores, no_object=torch.full((1, 1), float(no_object)))


def one_hot(value: float, index: int = 0) -> list[float]:
    scores = [0.0] * C
    scores[index] = value
    return scores


PEAKED = one_hot(1.0)  # one query fully claims the pixel for class 0
FLAT = [1.0 / C] * C  # the same mass spread evenly
REJECTED = [0.01] * C  # no class claims the pixel (RbA's "rejected by all")

# For every registered score: (a pixel it must call more in-distribution, one it must call less).
ORDERING_CASES = {
    "msp": (pixel(PEAKED), pixel(FLAT)),
    "max_score": (pixel(PEAKED), pixel(FLAT)),
    "entropy": (pixel(PEAKED), pixel(FLAT)),
    "rba": (pixel(PEAKED), pixel(REJECTED)),
    "energy": (pixel(PEAKED), pixel(FLAT)),
    "no_object": (pixel(PEAKED, no_object=0.1), pixel(PEAKED, no_object=0.9)),
    "known_mass": (pixel(PEAKED), pixel(REJECTED)),
}


def random_outputs(seed: int, num_queries: int = 10, height: int = 6, width: int = 7) -> PixelOutputs:
    """Outputs formed the way inference forms them, from random class and mask logits (some extreme)."""
    g = torch.Generator().manual_seed(seed)
    probs = (torch.randn(num_queries, C + 1, generator=g) * 6).softmax(-1)
    masks = (torch.randn(num_queries, height, width, generator=g) * 20).sigmoid()
    stack = torch.einsum("qhw,qk->khw", masks, probs)
    return PixelOutputs.from_stack(stack)


def test_every_registered_score_has_an_ordering_case():
    assert sorted(ORDERING_CASES) == list_confidences()


@pytest.mark.parametrize("name", list_confidences())
def test_score_shape_range_finiteness(name, monkeypatch):
    # Every score ends in a clamp to [0, 1] against float rounding (`_unit`), so the range is checked on the
    # values before it: a formula that left [0, 1] by more than rounding would fail here, not be hidden.
    monkeypatch.setattr(scores, "_unit", lambda x: x.float())
    fn = get_confidence(name)

    def in_range(conf: torch.Tensor) -> bool:
        return bool(torch.isfinite(conf).all() and conf.min() >= -1e-6 and conf.max() <= 1 + 1e-6)

    for seed in range(3):
        outputs = random_outputs(seed)
        conf = fn(outputs)
        assert conf.shape == (6, 7) and conf.dtype == torch.float32
        assert in_range(conf)
    # Degenerate inputs: nothing claimed at all, and every query claiming the pixel with certainty (raw max Q).
    assert in_range(fn(PixelOutputs(torch.zeros(C, 2, 2), torch.zeros(2, 2))))
    full = PixelOutputs(torch.zeros(C, 2, 2).index_fill_(0, torch.tensor([3]), 100.0), torch.zeros(2, 2))
    assert in_range(fn(full))


@pytest.mark.parametrize("name", list_confidences())
def test_score_orders_a_confident_pixel_above_an_unconfident_one(name):
    confident, unconfident = ORDERING_CASES[name]
    fn = get_confidence(name)
    assert fn(confident).item() > fn(unconfident).item()


@pytest.mark.parametrize("name", list_confidences())
def test_score_is_pointwise(name):
    # Bands of rows are scored separately at inference, so a pixel's score may not depend on other pixels.
    outputs = random_outputs(7)
    fn = get_confidence(name)
    whole = fn(outputs)
    top = fn(PixelOutputs(outputs.class_scores[:, :2], outputs.no_object[:2]))
    torch.testing.assert_close(top, whole[:2])


def test_hand_values():
    s = pixel([0.6, 0.2] + [0.0] * (C - 2), no_object=0.2)
    assert get_confidence("msp")(s).item() == pytest.approx(0.75)
    assert get_confidence("max_score")(s).item() == pytest.approx(0.6 / 1.6)
    assert get_confidence("no_object")(s).item() == pytest.approx(0.8)
    assert get_confidence("known_mass")(s).item() == pytest.approx(0.8 / 1.8)
    t = math.tanh(0.6) + math.tanh(0.2)
    assert get_confidence("rba")(s).item() == pytest.approx(t / (1 + t))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert get_confidence("entropy")(s).item() == pytest.approx(1 - entropy / math.log(C), abs=1e-6)
    e = math.log(math.exp(0.6) + math.exp(0.2) + (C - 2)) - math.log(C)
    assert get_confidence("energy")(s).item() == pytest.approx(e / (1 + e), abs=1e-6)


def test_maps_are_monotone_and_the_same_for_every_image():
    # A fixed map: the same pixel scores the same whatever else is in the image (no per-image normalisation).
    lone = pixel(PEAKED)
    for name in list_confidences():
        fn = get_confidence(name)
        crowd = PixelOutputs(
            torch.cat([lone.class_scores, random_outputs(3, height=1, width=1).class_scores], 2),
            torch.cat([lone.no_object, torch.full((1, 1), 5.0)], 1),
        )
        assert fn(crowd)[0, 0].item() == fn(lone).item(), name
    # max_score strictly increases with the raw score even above 1 (no clipping ties).
    values = [get_confidence("max_score")(pixel(one_hot(v))).item() for v in (0.5, 1.0, 2.0, 5.0)]
    assert values == sorted(values) and len(set(values)) == 4


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UserError, match="available: .*msp"):
        get_confidence("nope")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="twice"):
        register_confidence("msp")(lambda outputs: outputs.no_object)


def test_shared_reductions_give_the_definitions_bit_for_bit():
    """MSP and max score reuse the max taken for the prediction; they equal their definitions exactly."""
    torch.manual_seed(1)
    stack = torch.rand(20, 31, 17) * 2
    stack[:-1, 0, 0] = 0  # every class score zero at one pixel
    outputs = PixelOutputs.from_stack(stack)
    scores = stack[:-1]
    distribution = scores / scores.sum(0, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)
    assert torch.equal(get_confidence("msp")(outputs), distribution.amax(0).clamp(0, 1))
    raw = scores.amax(0)
    assert torch.equal(get_confidence("max_score")(outputs), (raw / (1 + raw)).clamp(0, 1))
    assert torch.equal(outputs.prediction, scores.argmax(0))


@pytest.mark.parametrize("shape", [(19, 300, 700), (19, 5, 3), (1, 4, 4), (3, 10), (254, 6, 6), (19, 9, 1)])
def test_first_max_equals_torch_max(shape):
    """The CPU fast path of the shared max / argmax equals `torch.max(dim=0)`: values, first index on ties."""
    from eomt_ood.confidence.outputs import first_max

    generator = torch.Generator().manual_seed(sum(shape))
    scores = (torch.rand(shape, generator=generator) * 8).round() / 8  # coarse values: many exact ties
    scores[..., :2] = 0  # all classes tied at zero
    values, indices = first_max(scores)
    expected_values, expected_indices = scores.max(0)
    assert torch.equal(values, expected_values) and torch.equal(indices, expected_indices)
    assert indices.dtype == torch.int64 and values.dtype == torch.float32
    band = torch.rand(20, 256, 300, generator=generator)[:-1, 40:90]  # a strided band of a canvas
    assert torch.equal(first_max(band)[1], band.max(0)[1])


def test_first_max_nan_as_torch():
    from eomt_ood.confidence.outputs import first_max

    scores = torch.rand(19, 6, 6)
    scores[4, 2, 3] = float("nan")
    values, indices = first_max(scores)
    expected_values, expected_indices = scores.max(0)
    assert torch.equal(indices, expected_indices)
    assert torch.equal(values.isnan(), expected_values.isnan())


def test_rba_and_energy_equal_their_textbook_forms():
    """RbA's tanh through exp and the energy shifted by the shared max agree with torch.tanh / torch.logsumexp."""
    generator = torch.Generator().manual_seed(5)
    stack = torch.rand(20, 40, 30, generator=generator) * 3
    stack[:-1, 0, 0] = 0  # no class claims this pixel
    outputs = PixelOutputs.from_stack(stack)
    scores = stack[:-1]
    t = torch.tanh(scores).sum(0)
    torch.testing.assert_close(get_confidence("rba")(outputs), t / (1 + t), atol=1e-6, rtol=0)
    e = torch.logsumexp(scores, 0) - math.log(C)
    torch.testing.assert_close(get_confidence("energy")(outputs), e / (1 + e), atol=1e-6, rtol=0)
