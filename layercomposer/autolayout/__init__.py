"""`lc autolayout`: a canvas derived from a prior image by face detection and segmentation.

- prior.py: the prior (FLUX.1 [dev] through diffusers' FluxPipeline, or a given image)
- inputs.py: reading images (EXIF orientation, clear errors)
- segment.py: person masks and RGBA cut-outs
- place.py: subject-to-face assignment and placement math (pure)
- output.py: all-or-nothing output folder
- layout.py: the steps, end to end
"""

from .layout import AutolayoutRequest, AutolayoutResult, autolayout
from .prior import PriorSettings

__all__ = ["AutolayoutRequest", "AutolayoutResult", "PriorSettings", "autolayout"]
