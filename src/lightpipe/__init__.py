"""lightpipe: the Hugging Face course's `pipeline()`, rebuilt lean and fast on plain PyTorch.

Nothing heavy is imported here: `import lightpipe` stays cheap, and torch is only loaded
when a pipeline is built.
"""

__version__ = "0.1.0"


def pipeline(task=None, model=None, **kwargs):
    """Build a pipeline for `task` (see `lightpipe tasks`) with `model` (Hub id or folder)."""
    from .tasks import build_pipeline

    return build_pipeline(task, model, **kwargs)


__all__ = ["pipeline", "__version__"]
