"""policykit: declarative concept erasure for text-to-image diffusion models.

``import policykit`` is cheap: it imports neither torch nor pydantic. The
heavy parts load when they are used::

    import policykit
    pipe = policykit.load_pipeline("artifacts/demo/1.0.0", public_key="keys/policykit-signing.pub")
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_pipeline"]


def __getattr__(name: str):
    # Lazy: `policykit.load_pipeline` imports torch only when it is used.
    if name == "load_pipeline":
        from policykit.artifact.load import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'policykit' has no attribute {name!r}")
