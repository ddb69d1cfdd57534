"""lc: multi-subject personalized image generation with a layered canvas (LayerComposer)."""

__version__ = "0.1.0"
