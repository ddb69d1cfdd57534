"""InsightFace's antelopev2 pack for the identity metric: SCRFD-10G detection and the glintr100
ArcFace (512-d), the pack many personalization papers report ArcFace with.

The same SCRFD and alignment code as lc's buffalo_l backend (`faces.insightface_backend`), with
the pack's own files. The pack has no stable official download (InsightFace's release page
lacks it), so lc only finds it: unpacked in ~/.insightface/models/antelopev2 (or one folder
deeper, as its zip unpacks), or in lc's cache folder. Its weights are for non-commercial
research only.
"""

from __future__ import annotations

from ..errors import ModelError
from ..faces.insightface_backend import (
    DET_SIZE,
    InsightFaceDetector,
    InsightFaceEmbedder,
    load_model,
    model_zoo,
)
from ..faces.registry import ModelFile, ResolvedFile, resolve_model_file

PACK = "antelopev2"
DETECTION_MODEL = f"insightface/{PACK}/scrfd_10g_bnkps.onnx"
RECOGNITION_MODEL = f"insightface/{PACK}/glintr100.onnx"
LICENCE = "InsightFace antelopev2: non-commercial research use only"


def _entry(key: str) -> ModelFile:
    name = key.rsplit("/", 1)[-1]
    folder = f"~/.insightface/models/{PACK}"
    return ModelFile(
        key, None, url="", licence=LICENCE, offline=(f"{folder}/{name}", f"{folder}/{PACK}/{name}")
    )


FILES = {key: _entry(key) for key in (DETECTION_MODEL, RECOGNITION_MODEL)}


def resolve(key: str) -> ResolvedFile:
    """The pack's file, or a `ModelError` saying where to unpack the pack."""
    try:
        return resolve_model_file(key, download=False, registry=FILES)
    except ModelError as exc:
        raise ModelError(
            exc.message,
            hint=f"unpack InsightFace's {PACK} pack (scrfd_10g_bnkps.onnx, glintr100.onnx) into "
            f"~/.insightface/models/{PACK}; lc does not download it; licence: {LICENCE}",
        ) from None


class Antelopev2Detector(InsightFaceDetector):
    """SCRFD-10G from the antelopev2 pack."""

    name = PACK

    def __init__(self, download: bool = False, min_score: float = 0.5):
        self._model = resolve(DETECTION_MODEL)
        self._detector = load_model(model_zoo(), self._model.path)
        self._detector.prepare(ctx_id=-1, input_size=DET_SIZE, det_thresh=min_score)


class Antelopev2Embedder(InsightFaceEmbedder):
    """glintr100 ArcFace (512-d) from the antelopev2 pack, aligned by its own SCRFD keypoints."""

    name = PACK

    def __init__(self, download: bool = False):
        self._file = resolve(RECOGNITION_MODEL)
        self._detector = Antelopev2Detector()
        self._arcface = load_model(model_zoo(), self._file.path)
        self._arcface.prepare(ctx_id=-1)

    @property
    def detector(self) -> Antelopev2Detector:
        """The SCRFD it aligns with, to detect faces with too (one load, not two)."""
        return self._detector
