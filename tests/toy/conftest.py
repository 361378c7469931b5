import pytest


@pytest.fixture(scope="session")
def toy_models():
    """(sd, clean classifier, spurious classifier) from digin/toy/models; skipped when weights are absent."""
    from digin import toy
    from digin.science import toy_science as science

    if not toy.available():
        pytest.skip("toy model weights are not in digin/toy/models (run `digin toy-train`)")
    return science.load_models("cpu")
