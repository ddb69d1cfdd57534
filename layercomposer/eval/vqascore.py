"""Prompt following: VQAScore (CLIP-FlanT5, through the `t2v_metrics` package).

VQAScore asks a vision-language model "Does this figure show '<prompt>'?" and reports the
probability of "Yes" (0..1). `t2v_metrics` downloads its weights (clip-flant5-xxl, about 11 B
parameters) from the Hugging Face Hub on first use; lc never triggers a download in tests.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .adapters import import_optional, resolve_device

DEFAULT_MODEL = "clip-flant5-xxl"
INSTALL_HINT = (
    'pip install "t2v_metrics>=3.0" in a virtual environment of its own (it pins torch 2.5.1 '
    "and transformers 4.49; it needs ffmpeg); see docs/evaluation.md"
)


def variant(model: str = DEFAULT_MODEL) -> str:
    """What a stored score was computed with: another model gives another score."""
    return f"t2v_metrics/{model}"


class VQAScorer:
    """Scores (image, prompt) pairs with one VQAScore model, loaded once."""

    name = "vqascore"

    def __init__(
        self, model: str = DEFAULT_MODEL, device: str = "auto", cache_dir: str | None = None
    ):
        t2v_metrics = import_optional("t2v_metrics", "VQAScore", INSTALL_HINT)
        self.model = model
        # t2v_metrics' own default cache is "./hf_cache/" under the current folder; the usual
        # Hugging Face cache is where a prepared machine keeps weights.
        cache = cache_dir or _hub_cache()
        try:
            self._scorer = t2v_metrics.VQAScore(
                model=model, device=resolve_device(device), cache_dir=cache
            )
        except Exception as exc:  # noqa: BLE001 - hub, torch and t2v_metrics raise many kinds
            raise ModelError(
                f"VQAScore model {model!r} cannot be loaded: {type(exc).__name__}: {exc}",
                hint=f"its weights download from the Hugging Face Hub into {cache} on first use; "
                "on a machine without network, copy a filled cache there (see docs/evaluation.md)",
            ) from None

    @property
    def variant(self) -> str:
        return variant(self.model)

    def score(self, images: list[Path], prompts: list[str], batch_size: int = 8) -> list[float]:
        """P("Yes") for each image with its own prompt, in order.

        One pair per call: t2v_metrics scores an m-image, n-text call as all m x n pairs, and
        its `batch_forward` loops over pairs too. `batch_size` is accepted for symmetry.
        """
        if len(images) != len(prompts):
            raise ValueError("one prompt per image")
        import torch  # present wherever t2v_metrics is: it depends on it

        scores: list[float] = []
        with torch.inference_mode():
            for image, prompt in zip(images, prompts, strict=True):
                result = self._scorer(images=[str(image)], texts=[prompt])  # (1 image, 1 text)
                scores.append(float(result.reshape(-1)[0]))
        return scores

    def close(self) -> None:
        self._scorer = None


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:
        return str(Path.home() / ".cache" / "huggingface" / "hub")
    return str(constants.HF_HUB_CACHE)
