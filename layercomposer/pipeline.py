"""`LayerComposerPipeline`: FLUX.1 Kontext [dev] conditioned on a layered canvas.

Built on diffusers' `FluxKontextPipeline` (same components, `from_pretrained`, offloading,
prompt encoding, scheduler); only `__call__` differs. Per render:

1. encode the prompt, as Kontext does (cached in memory per prompt);
2. VAE-encode each layer (cached by content: see `LatentCache`), pack 2x2 latents into tokens,
   keep the tokens under the layer's alpha, and give them `[layer, y, x]` ids (locked 0,
   unlocked 1..k) — or, in `collage` mode, encode the flattened canvas as Kontext's one
   reference image with ids `[1, y, x]`;
3. denoise the noisy tokens (`[0, y, x]`) with the conditioning tokens appended, keeping only
   the noisy tokens' prediction; decode.

Steps 1-2 are `prepare`, everything before the first denoising step, which a benchmark or an
interactive editor can time and repeat on its own: after moving a layer by whole tokens with
`encode="box"`, it encodes nothing and only rebuilds the ids.

One canvas per call: diffusers' transformer takes one `img_ids` for the whole batch, and two
canvases' pruned ids differ, so canvases cannot share a batch without per-sample RoPE.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import calculate_shift, retrieve_timesteps
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .fill import DEFAULT_FILL, Fill, check_fill, fill_transparent
from .geometry import Box
from .latents import LatentCache, pack_latents, unpack_latents
from .layers import CanvasLayer, flatten
from .speed import ran_every_block
from .tokens import TOKEN_PX, grid_position_ids, noisy_position_ids, plan_tokens

Mode = Literal["layered", "collage", "auto"]
Encode = Literal["box", "canvas"]
MODES = ("layered", "collage", "auto")
ENCODE_MARGIN = 32  # px of context around a layer's box, so border tokens see their neighbours
# Why `canvas` is the default: the VAE's GroupNorm statistics and mid-block attention span the
# whole image, so a box encode changes every token a little, not only those at the border
# (benchmarks/encode_box.py measures by how much). `canvas` is exact to the method.
PROMPT_CACHE_SIZE = 8  # prompts whose embeddings stay in memory (T5 at 512 tokens: 4 MB in bf16)


@dataclass
class LayerComposerOutput:
    """What one render gives back: the images and what it cost."""

    images: list[Any]
    mode: str  # the mode actually used ("layered" or "collage")
    mode_reason: str | None  # why `auto` chose it
    tokens: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)  # layer latents: hits, misses
    prompt_cached: bool = False  # the text embeddings came from the prompt cache
    first_block_cache: dict[str, float] | None = None  # threshold, steps, full_steps


@dataclass
class Conditioning:
    """Everything the denoising loop reads besides the noisy latents (steps 1-2 of a render)."""

    prompt_embeds: torch.Tensor  # (1, L_txt, 4096)
    pooled_prompt_embeds: torch.Tensor  # (1, 768)
    text_ids: torch.Tensor  # (L_txt, 3)
    tokens: torch.Tensor  # (1, L_cond, 64): kept layer tokens, or the collage's
    ids: torch.Tensor  # (L_cond, 3)
    mode: str
    mode_reason: str | None
    prompt_cached: bool
    timings: dict[str, float]


class LayerComposerPipeline(FluxKontextPipeline):
    """FLUX.1 Kontext [dev] with a layered canvas (LayerComposer). See the module docstring."""

    cache_namespace: str = "default"  # set by the loader to the model id + revision + dtype

    @property
    def latent_cache(self) -> LatentCache:
        if getattr(self, "_latent_cache", None) is None:
            self._latent_cache = LatentCache()
        return self._latent_cache

    @latent_cache.setter
    def latent_cache(self, cache: LatentCache) -> None:
        self._latent_cache = cache

    @property
    def prompt_cache(self) -> OrderedDict:
        """Text embeddings by prompt, most recently used last (see `encode_prompt_cached`)."""
        if getattr(self, "_prompt_cache", None) is None:
            self._prompt_cache = OrderedDict()
        return self._prompt_cache

    def encode_prompt_cached(
        self, prompt: str, max_sequence_length: int = 512
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], bool]:
        """`encode_prompt`'s (embeds, pooled, text ids), from memory when seen before; and whether.

        The key is everything the embeddings depend on: the prompt, the length, the device and
        the text encoders themselves (which objects, their dtype, their LoRA adapters and scales).
        """
        device = self._execution_device
        encoders = (self.text_encoder, self.text_encoder_2)
        key = (prompt, max_sequence_length, str(device), _encoders_state(self, encoders))
        cached = self.prompt_cache.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[0], encoders, strict=True)):
            self.prompt_cache.move_to_end(key)
            return cached[1], True
        embeds = self.encode_prompt(
            prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length,
        )  # fmt: skip
        self.prompt_cache[key] = (encoders, embeds)  # the encoders: an id() alone can be reused
        while len(self.prompt_cache) > PROMPT_CACHE_SIZE:
            self.prompt_cache.popitem(last=False)
        return embeds, False

    def noisy_ids(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """(H/16 * W/16, 3) int64 `[0, y, x]`, built once per grid size (read-only: don't modify)."""
        if getattr(self, "_noisy_ids", None) is None:
            self._noisy_ids = {}
        grid = (grid_height, grid_width)
        if grid not in self._noisy_ids:
            self._noisy_ids[grid] = torch.from_numpy(noisy_position_ids(*grid))
        return self._noisy_ids[grid]

    def resolve_mode(self, mode: str) -> tuple[str, str | None]:
        """The mode to run for `mode`, and for `auto` the reason it was chosen."""
        if mode != "auto":
            return mode, None
        from .lora import has_layercomposer_lora

        if has_layercomposer_lora(self):
            return "layered", "auto: a LayerComposer LoRA is loaded, so layered"
        return "collage", (
            "auto: no LayerComposer LoRA is loaded, so collage: stock Kontext was not trained on "
            "per-layer position indices (pass --mode layered to force it)"
        )

    def check_layer_inputs(
        self,
        prompt: str,
        layers: list[CanvasLayer],
        mode: str,
        encode: str,
        fill: str = DEFAULT_FILL,
    ) -> None:
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("`prompt` must be a non-empty string")
        if not layers:
            raise ValueError("`layers` is empty: a canvas needs at least one layer or a background")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        if encode not in ("box", "canvas"):
            raise ValueError(f"`encode` must be 'box' or 'canvas', got {encode!r}")
        check_fill(fill)
        size = layers[0].canvas_size
        if any(layer.canvas_size != size for layer in layers):
            raise ValueError("all layers must belong to the same canvas size")
        if size.width % TOKEN_PX or size.height % TOKEN_PX:
            raise ValueError(f"canvas {size} is not a multiple of {TOKEN_PX} px")

    # --- step 2: conditioning tokens ---------------------------------------------------------

    @torch.no_grad()
    def _encode_pixels(self, rgb: np.ndarray, generator: torch.Generator | None) -> torch.Tensor:
        """(h, w, 3) uint8 -> (1, h/16 * w/16, 64) packed latent tokens, as Kontext encodes."""
        height, width = rgb.shape[:2]
        image = self.image_processor.preprocess(Image.fromarray(rgb), height, width)
        device = self._execution_device
        dtype = self.vae.dtype if self.vae.dtype != torch.float32 else self.transformer.dtype
        latents = self._encode_vae_image(image.to(device=device, dtype=dtype), generator)
        return pack_latents(latents)  # (1, h/16 * w/16, 64)

    def encode_box(self, layer: CanvasLayer, encode: Encode = "canvas") -> Box:
        """The pixel box a layer is encoded from: its visible part on the token grid, plus margin."""
        canvas = Box(0, 0, *layer.canvas_size)
        if encode == "canvas":
            return canvas
        return layer.visible_box.snapped_out(TOKEN_PX, ENCODE_MARGIN).intersect(canvas)

    def encode_layer(
        self,
        layer: CanvasLayer,
        index: int,
        encode: Encode = "canvas",
        generator=None,
        fill: Fill = DEFAULT_FILL,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a layer's kept tokens (1, n, 64) and their `[index, y, x]` ids (n, 3).

        Transparent pixels are encoded as `fill` (black or grey): the LoRA's training decides.
        """
        box = self.encode_box(layer, encode)
        x, y = layer.origin
        key = LatentCache.key(
            self.cache_namespace, str(self.vae.dtype), layer.content_hash, check_fill(fill),
            (box.x0 - x, box.y0 - y, box.x1 - x, box.y1 - y),
        )  # fmt: skip
        tokens = self.latent_cache.get(key)
        if tokens is None:
            rgb = fill_transparent(layer.crop(box), fill)  # (h, w, 3), never the whole canvas
            tokens = self._encode_pixels(rgb, generator)
            self.latent_cache.put(key, tokens)
        tokens = tokens.to(self._execution_device)

        token_box = Box(*(v // TOKEN_PX for v in box))
        mask = layer.token_mask[token_box.y0 : token_box.y1, token_box.x0 : token_box.x1]
        kept = tokens[:, torch.from_numpy(mask.reshape(-1)).to(tokens.device)]  # (1, n, 64)
        return kept, torch.from_numpy(grid_position_ids(layer.token_mask, index))

    def encode_layers(
        self,
        layers: list[CanvasLayer],
        encode: Encode = "canvas",
        generator=None,
        fill: Fill = DEFAULT_FILL,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers' kept tokens (1, L_cond, 64) and `[layer, y, x]` ids (L_cond, 3), in order.

        The one place the layered conditioning is built: rendering and training both call it.
        """
        plan = plan_tokens(layers)
        encoded = [
            self.encode_layer(layer, planned.index, encode, generator, fill)
            for layer, planned in zip(layers, plan.layers, strict=True)
        ]
        return torch.cat([t for t, _ in encoded], dim=1), torch.cat([i for _, i in encoded])

    def encode_collage(
        self, layers: list[CanvasLayer], generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the flattened canvas as Kontext's reference image: tokens and `[1, y, x]` ids."""
        tokens = self._encode_pixels(flatten(layers), generator)
        grid = layers[0].canvas_size.token_grid
        ids = grid_position_ids(np.ones((grid.height, grid.width), bool), 1)
        return tokens, torch.from_numpy(ids)

    # --- the render -------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(
        self,
        prompt: str,
        layers: list[CanvasLayer],
        mode: Mode = "layered",
        encode: Encode = "canvas",
        generator: torch.Generator | None = None,
        max_sequence_length: int = 512,
        fill: Fill = DEFAULT_FILL,
    ) -> Conditioning:
        """Steps 1-2: the text embeddings and the conditioning tokens with their ids."""
        self.check_layer_inputs(prompt, layers, mode, encode, fill)
        mode, mode_reason = self.resolve_mode(mode)
        device = self._execution_device
        timings: dict[str, float] = {}

        # 1. Encode the prompt.
        started = _now(device)
        (prompt_embeds, pooled_prompt_embeds, text_ids), prompt_cached = self.encode_prompt_cached(
            prompt, max_sequence_length
        )
        timings["text"] = _now(device) - started

        # 2. Conditioning tokens and their position ids.
        started = _now(device)
        if mode == "layered":
            cond_tokens, cond_ids = self.encode_layers(layers, encode, generator, fill)
        else:
            cond_tokens, cond_ids = self.encode_collage(layers, generator)
        cond_tokens = cond_tokens.to(device=device, dtype=prompt_embeds.dtype)
        timings["encode"] = _now(device) - started
        return Conditioning(
            prompt_embeds, pooled_prompt_embeds, text_ids, cond_tokens, cond_ids, mode,
            mode_reason, prompt_cached, timings,
        )  # fmt: skip

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        layers: list[CanvasLayer],
        mode: Mode = "layered",
        num_inference_steps: int = 28,
        guidance_scale: float = 2.5,
        generator: torch.Generator | None = None,
        encode: Encode = "canvas",
        max_sequence_length: int = 512,
        output_type: str = "pil",
        joint_attention_kwargs: dict | None = None,
        step_callback: Callable[[int, int], None] | None = None,
        fill: Fill = DEFAULT_FILL,
    ) -> LayerComposerOutput:
        device = self._execution_device
        hits_before, misses_before = self.latent_cache.hits, self.latent_cache.misses
        self._joint_attention_kwargs = joint_attention_kwargs or {}
        self._interrupt = False

        # 1-2. Text embeddings, conditioning tokens and their ids.
        cond = self.prepare(prompt, layers, mode, encode, generator, max_sequence_length, fill)
        timings = dict(cond.timings)
        grid = layers[0].canvas_size.token_grid
        dtype = cond.prompt_embeds.dtype

        # 3. Noisy latents with ids [0, y, x], drawn as Kontext draws them.
        channels = self.transformer.config.in_channels // 4
        noise = randn_tensor(
            (1, channels, 2 * grid.height, 2 * grid.width), generator=generator, device=device,
            dtype=dtype,
        )  # fmt: skip
        latents = pack_latents(noise)  # (1, L_img, 64)
        noisy_ids = self.noisy_ids(grid.height, grid.width)
        img_ids = torch.cat([noisy_ids, cond.ids]).to(device=device, dtype=dtype)

        # 4. Timesteps, shifted for the image's token count as in FLUX.
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        config = self.scheduler.config
        mu = calculate_shift(
            latents.shape[1], config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )  # fmt: skip
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu
        )
        self._num_timesteps = len(timesteps)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], guidance_scale, device=device, dtype=torch.float32)

        # 5. Denoise: the transformer sees [noisy | conditioning]; only the noisy part steps.
        started = _now(device)
        self.scheduler.set_begin_index(0)
        cached = getattr(self.transformer, "is_cache_enabled", False)  # first-block cache hooks
        full_steps = 0
        # The cache hooks keep their state per named context; without one they refuse to run.
        with self.transformer.cache_context("cond") if cached else nullcontext():
            for i, t in enumerate(timesteps):
                self._current_timestep = t
                prediction = self.transformer(
                    hidden_states=torch.cat(
                        [latents, cond.tokens], dim=1
                    ),  # (1, L_img + L_cond, 64)
                    timestep=t.expand(1).to(latents.dtype) / 1000,
                    guidance=guidance,
                    pooled_projections=cond.pooled_prompt_embeds,
                    encoder_hidden_states=cond.prompt_embeds,
                    txt_ids=cond.text_ids,
                    img_ids=img_ids,
                    joint_attention_kwargs=self._joint_attention_kwargs,
                    return_dict=False,
                )[0]
                full_steps += ran_every_block(self.transformer) if cached else 1
                prediction = prediction[:, : latents.shape[1]]  # (1, L_img, 64)
                latents = self.scheduler.step(prediction, t, latents, return_dict=False)[0]
                if step_callback is not None:
                    step_callback(i + 1, len(timesteps))
        self._current_timestep = None
        timings["denoise"] = _now(device) - started

        # 6. Decode.
        started = _now(device)
        if output_type == "latent":
            images = latents
        else:
            latents = unpack_latents(latents, grid.height, grid.width)  # (1, 16, H/8, W/8)
            latents = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
            decoded = self.vae.decode(latents.to(self.vae.dtype), return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        timings["decode"] = _now(device) - started
        self.maybe_free_model_hooks()  # also resets the first-block cache for the next render

        tokens = {
            "text": int(cond.prompt_embeds.shape[1]),
            "noisy": grid.width * grid.height,
            "conditioning": int(cond.tokens.shape[1]),
        }
        tokens["total"] = tokens["text"] + tokens["noisy"] + tokens["conditioning"]
        cache = {
            "hits": self.latent_cache.hits - hits_before,
            "misses": self.latent_cache.misses - misses_before,
        }
        first_block_cache = None
        if cached:
            threshold = getattr(self.transformer._cache_config, "threshold", None)
            first_block_cache = {
                "threshold": threshold, "steps": len(timesteps), "full_steps": full_steps,
            }  # fmt: skip
        return LayerComposerOutput(
            images, cond.mode, cond.mode_reason, tokens, timings, cache, cond.prompt_cached,
            first_block_cache,
        )  # fmt: skip


def _encoders_state(pipe, encoders) -> tuple:
    """What, besides the prompt, decides the text embeddings: the encoders and their LoRAs."""
    adapters = tuple(tuple(sorted(getattr(e, "peft_config", None) or ())) for e in encoders)
    dtypes = tuple(str(getattr(e, "dtype", None)) for e in encoders)
    scales = tuple(sorted(getattr(pipe, "_lc_lora_scales", {}).items()))  # lora.set_lora_scale
    return (tuple(id(e) for e in encoders), dtypes, adapters, scales)


def _now(device: torch.device) -> float:
    """A wall-clock reading that waits for queued GPU work first, so stage timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
