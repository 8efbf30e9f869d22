"""Two tiny models with different planted sink channels, so no test can pass by matching one planting."""

import pytest

from lmms_var.testing import TinySpec, build_tiny_model
from tests.conftest import TINY_SPEC

OTHER_SPEC = TinySpec(sink_dims=(5, 77), seed=1)


@pytest.fixture(scope="session")
def other_tiny_model():
    """(model, processor) planted in OTHER_SPEC.sink_dims, with other random weights. Do not mutate."""
    return build_tiny_model(OTHER_SPEC)


@pytest.fixture(params=["default", "other"])
def planted(request, tiny_model):
    """(model, processor, planted dims) for each planting."""
    if request.param == "default":
        return (*tiny_model, TINY_SPEC.sink_dims)
    return (*request.getfixturevalue("other_tiny_model"), OTHER_SPEC.sink_dims)
