"""policykit: declarative concept erasure for text-to-image diffusion models.

``import policykit`` is cheap: it imports neither torch nor pydantic. The
heavy parts load when they are used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
