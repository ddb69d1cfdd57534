"""VQAScore and HPSv3 adapters with fake `t2v_metrics` / `hpsv3` modules (the real models are
gigabytes): what they are called with, what comes back, and the errors when they are absent."""

from __future__ import annotations

import importlib.machinery
import sys
import types

import pytest

torch = pytest.importorskip("torch", reason="the fakes return tensors, as the real ones do")

from layercomposer.errors import ModelError  # noqa: E402
from layercomposer.eval.hpsv3 import HPSv3Scorer  # noqa: E402
from layercomposer.eval.vqascore import VQAScorer  # noqa: E402


def fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() sees it
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def prompt_score(image: str, prompt: str) -> float:
    """A deterministic stand-in score, so order mix-ups show."""
    return (len(prompt) % 7) / 10 + (int(image.rsplit("/", 1)[-1][0]) / 100)


class FakeVQAScore:
    instances: list[FakeVQAScore] = []

    def __init__(self, model, device, cache_dir):
        self.model, self.device, self.cache_dir, self.calls = model, device, cache_dir, []
        FakeVQAScore.instances.append(self)

    def __call__(self, images, texts):
        self.calls.append((images, texts))
        return torch.tensor([[prompt_score(i, t) for t in texts] for i in images])


class FakeHPSv3:
    instances: list[FakeHPSv3] = []

    def __init__(self, checkpoint_path=None, device="cuda"):
        self.checkpoint_path, self.device, self.calls = checkpoint_path, device, []
        FakeHPSv3.instances.append(self)

    def reward(self, image_paths, prompts):
        self.calls.append(len(image_paths))
        # (N, 2): mu, sigma; sigma large so taking the wrong column shows
        return torch.tensor(
            [[prompt_score(i, p) * 10, 99.0] for i, p in zip(image_paths, prompts, strict=True)]
        )


@pytest.fixture
def fakes(monkeypatch):
    FakeVQAScore.instances.clear()
    FakeHPSv3.instances.clear()
    monkeypatch.setitem(
        sys.modules, "t2v_metrics", fake_module("t2v_metrics", VQAScore=FakeVQAScore)
    )
    monkeypatch.setitem(sys.modules, "hpsv3", fake_module("hpsv3", HPSv3RewardInferencer=FakeHPSv3))


IMAGES = ["/x/1.png", "/x/2.png", "/x/3.png"]
PROMPTS = ["a cat", "two friends at a cafe", "four people"]


def test_vqascore_scores_each_image_with_its_own_prompt(fakes):
    scorer = VQAScorer(device="cpu")
    assert scorer.score(IMAGES, PROMPTS) == pytest.approx(
        [prompt_score(i, p) for i, p in zip(IMAGES, PROMPTS, strict=True)]
    )
    (model,) = FakeVQAScore.instances
    assert model.model == "clip-flant5-xxl" and model.device == "cpu"
    assert model.calls[0] == (["/x/1.png"], ["a cat"])  # one pair per call, never m x n
    assert "hf_cache" not in model.cache_dir  # not t2v_metrics' folder under the cwd
    assert scorer.variant == "t2v_metrics/clip-flant5-xxl"


def test_hpsv3_takes_mu_in_batches(fakes):
    scorer = HPSv3Scorer(device="cpu")
    scores = scorer.score(IMAGES, PROMPTS, batch_size=2)
    assert scores == pytest.approx(
        [prompt_score(i, p) * 10 for i, p in zip(IMAGES, PROMPTS, strict=True)]
    )
    assert FakeHPSv3.instances[0].calls == [2, 1]
    assert scorer.variant == "hpsv3/MizzenAI/HPSv3"


def test_missing_packages_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "t2v_metrics", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "hpsv3", None)
    with pytest.raises(ModelError) as vqa:
        VQAScorer()
    assert "t2v_metrics" in vqa.value.message and 'pip install "t2v_metrics>=3.0"' in vqa.value.hint
    with pytest.raises(ModelError) as hps:
        HPSv3Scorer()
    assert "hpsv3" in hps.value.message and 'pip install "hpsv3>=1.0"' in hps.value.hint


def test_missing_weights_are_a_model_error_with_a_hint(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setitem(sys.modules, "t2v_metrics", fake_module("t2v_metrics", VQAScore=offline))
    monkeypatch.setitem(sys.modules, "hpsv3", fake_module("hpsv3", HPSv3RewardInferencer=offline))
    with pytest.raises(ModelError) as vqa:
        VQAScorer()
    assert "couldn't connect" in vqa.value.message and "Hugging Face Hub" in vqa.value.hint
    with pytest.raises(ModelError) as hps:
        HPSv3Scorer()
    assert "--hpsv3-checkpoint" in hps.value.hint
    with pytest.raises(ModelError, match="not found"):
        HPSv3Scorer(checkpoint=str(tmp_path / "HPSv3.safetensors"))


def test_an_import_that_fails_otherwise_is_a_model_error(monkeypatch):
    # t2v_metrics raises RuntimeError at import time when ffmpeg is missing.
    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name == "t2v_metrics":
                raise RuntimeError("ffmpeg is a required system requirement but not found")
            return None

    monkeypatch.delitem(sys.modules, "t2v_metrics", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(ModelError, match="ffmpeg"):
        VQAScorer()
