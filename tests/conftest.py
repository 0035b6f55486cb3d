import pytest


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
