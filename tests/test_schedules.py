"""The learning-rate multipliers of models/tasks/base.py against their definitions: LRA's
"constant * linear_warmup * rsqrt_decay" (lra_benchmarks/utils/train_utils.py, with the step counted from 1),
linear decay to min_lr_ratio (the PyTorch reproductions'), and the warm-up + cosine default. Exact to 1e-12."""
import math

import pytest

from models.tasks.base import SCHEDULES, warmup_cosine, warmup_linear, warmup_rsqrt


@pytest.mark.parametrize("step", [0, 1, 499, 999, 1000, 1001, 4999, 10**6])
def test_rsqrt_is_lras_formula(step):
    warmup, s = 1000, step + 1
    lra = min(1.0, s / warmup) / math.sqrt(max(s, warmup))
    assert warmup_rsqrt(warmup, total=5000)(step) == pytest.approx(lra, rel=1e-12)
    # LRA's 0.05 therefore peaks at 0.05 / sqrt(1000) = 1.58e-3 at the end of the warm-up
    assert 0.05 * warmup_rsqrt(1000, 5000)(999) == pytest.approx(0.05 / math.sqrt(1000), rel=1e-12)


def test_linear_and_cosine_endpoints():
    lin, cos = warmup_linear(10, 110, min_ratio=0.1), warmup_cosine(10, 110, min_ratio=0.1)
    assert lin(0) == cos(0) == pytest.approx(0.1) and lin(9) == cos(9) == pytest.approx(1.0)
    assert lin(10) == pytest.approx(1.0) and lin(60) == pytest.approx(0.55) and lin(110) == pytest.approx(0.1)
    assert cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1) and lin(10**6) == pytest.approx(0.1)
    assert set(SCHEDULES) == {"cosine", "linear", "rsqrt"}
