import pytest

TIERS = ("unit", "parity", "fresh", "server", "browser")  # registered in pyproject.toml


@pytest.fixture
def hub_server(monkeypatch, tmp_path):
    """A fake Hugging Face Hub (tests/hubserver.py) that huggingface_hub, transformers and
    lightpipe talk to, with an empty HF cache at `hub_server.cache`. Add repos with
    `hub_server.add(repo_id, files, ...)`; `hub_server.requests` logs every request."""
    from hubserver import HubServer, use_hub

    hub = HubServer().start()
    hub.cache = use_hub(monkeypatch, hub, tmp_path / "hf" / "hub")
    yield hub
    hub.stop()


def pytest_configure(config):
    # The tests' models are tiny: one thread beats OpenMP's spin-up, and keeps the suite quick
    # when other processes hold the cores.
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Every test belongs to a tier (module-level `pytestmark`, or per test where a file mixes
    them), so `-m` expressions such as `make test-fast`'s select what they say."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        raise pytest.UsageError("tests without a tier marker (one of " + ", ".join(TIERS) + "): "
                                + ", ".join(untiered[:10]) + (" ..." if len(untiered) > 10 else ""))
