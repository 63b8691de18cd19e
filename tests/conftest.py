import pytest

from paged_context.sim.conversations import default_locomo_path


@pytest.fixture(scope="session")
def locomo_path():
    path = default_locomo_path()
    if path is None or not path.exists():
        pytest.skip("LoCoMo dev split not found (../shared/data/locomo or $PAGED_CONTEXT_LOCOMO)")
    return path
