"""Image quality: HPSv3, a human-preference reward model (Qwen2-VL based, through `hpsv3`).

`HPSv3RewardInferencer.reward` returns (mu, sigma) per image; the score is mu, as the HPSv3
authors report it (typically about 0 to 15). Its checkpoint (`MizzenAI/HPSv3`) and base model
download from the Hugging Face Hub on first use unless a checkpoint path is given.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .adapters import batches, import_optional, resolve_device

CHECKPOINT_REPO = "MizzenAI/HPSv3"
INSTALL_HINT = (
    'pip install "hpsv3>=1.0" in a virtual environment of its own (it pins transformers '
    "4.45.2); see docs/evaluation.md"
)


def variant(checkpoint: str | None = None) -> str:
    """What a stored score was computed with: the checkpoint's file name, or the hub repo."""
    return f"hpsv3/{Path(checkpoint).name if checkpoint else CHECKPOINT_REPO}"


class HPSv3Scorer:
    """Scores (image, prompt) pairs with HPSv3, loaded once."""

    name = "hpsv3"

    def __init__(self, checkpoint: str | None = None, device: str = "auto"):
        hpsv3 = import_optional("hpsv3", "HPSv3", INSTALL_HINT)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise ModelError(f"HPSv3 checkpoint {checkpoint} not found")
        self.checkpoint = checkpoint
        try:
            self._inferencer = hpsv3.HPSv3RewardInferencer(
                checkpoint_path=checkpoint, device=resolve_device(device)
            )
        except Exception as exc:  # noqa: BLE001 - hub, torch and hpsv3 raise many kinds
            raise ModelError(
                f"HPSv3 cannot be loaded: {type(exc).__name__}: {exc}",
                hint=f"it downloads {CHECKPOINT_REPO} and its Qwen2-VL base from the Hugging Face "
                "Hub on first use; without network, fill the cache first or pass "
                "--hpsv3-checkpoint HPSv3.safetensors (see docs/evaluation.md)",
            ) from None

    @property
    def variant(self) -> str:
        return variant(self.checkpoint)

    def score(self, images: list[Path], prompts: list[str], batch_size: int = 8) -> list[float]:
        """mu of the HPSv3 reward for each image with its own prompt, in order."""
        if len(images) != len(prompts):
            raise ValueError("one prompt per image")
        import torch  # present wherever hpsv3 is: it depends on it

        scores: list[float] = []
        for part in batches(list(zip(images, prompts, strict=True)), batch_size):
            with torch.inference_mode():
                rewards = self._inferencer.reward(
                    image_paths=[str(image) for image, _ in part],
                    prompts=[prompt for _, prompt in part],
                )  # (N, 2): mu, sigma
            scores += [float(r[0]) for r in rewards]
        return scores

    def close(self) -> None:
        self._inferencer = None
