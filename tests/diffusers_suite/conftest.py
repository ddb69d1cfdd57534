"""Collect only the Kontext pipeline tests (stock, and lc's run of them) from the pinned files.

The other test modules here are copied only because the Kontext tests import from them.
"""

import pytest

collect_ignore = [
    "models/test_modeling_common.py",
    "models/transformers/test_models_transformer_flux.py",
    "models/unets/test_models_unet_2d_condition.py",
    "others/test_utils.py",
    "pipelines/test_pipelines_common.py",
]

# Fails for stock FluxKontextPipeline on a CPU too: the output with an IP-Adapter at scale 0
# differs from the output without one by 2.8e-3, over the test's CPU tolerance of 9e-4 (diffusers
# v0.40.0 tests, diffusers 0.42.1). Only an assertion may fail it: an error is still a failure.
STOCK_FAILURES = {
    "test_ip_adapter": "misses its 9e-4 CPU tolerance by 2.8e-3 for stock Kontext as well",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = STOCK_FAILURES.get(item.name)
        if reason and "diffusers_suite" in str(item.path):
            item.add_marker(pytest.mark.xfail(reason=reason, raises=AssertionError, strict=False))
