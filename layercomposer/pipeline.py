"""`LayerComposerPipeline`: FLUX.1 Kontext [dev] conditioned on a layered canvas.

A `FluxKontextPipeline` in every respect (same components, `from_pretrained`, offloading,
LoRAs, `__call__` arguments and output): called without a canvas it *is* diffusers' Kontext.
Its `__call__` takes the canvas as added keyword arguments, `layers=` (or `canvas=`), `mode`,
`encode` and `fill`, and then runs Kontext's own denoising loop on the canvas's conditioning:

1. the prompt is encoded as Kontext does (kept in memory per prompt: `prompt_cache`);
2. `prepare_latents` gives the parent, in place of a reference image's tokens, each layer's
   VAE tokens under its alpha with `[layer, y, x]` ids (locked 0, unlocked 1..k; cached by
   content, see `LatentCache`) — or, in `collage` mode, the parent encodes the flattened canvas
   as its one reference image with ids `[1, y, x]`;
3. the parent denoises the noisy tokens (`[0, y, x]`) with the conditioning appended, keeping
   only the noisy tokens' prediction (with true CFG, callbacks and interrupts as usual); decode.

Steps 1-2 are also `prepare` (everything before the first denoising step), which a benchmark or
an interactive editor can time and repeat on its own: after moving a layer by whole tokens with
`encode="box"`, it encodes nothing and only rebuilds the ids. Training calls `encode_layers`.

One canvas per call: diffusers' transformer takes one `img_ids` for the whole batch, and two
canvases' pruned ids differ. Prompt lists and `num_images_per_prompt` share the one canvas.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput
from PIL import Image

from .choices import Encode, Mode, names
from .fill import DEFAULT_FILL, Fill, check_fill, fill_transparent
from .geometry import Box, Extent
from .latents import LatentCache, pack_latents
from .layers import CanvasLayer, flatten
from .speed import ran_every_block
from .tokens import grid_position_ids, layer_indices

MODES = names(Mode)
ENCODES = names(Encode)
ENCODE_MARGIN = 32  # px of context around a layer's box, so border tokens see their neighbours
# Why `canvas` is the default: the VAE's GroupNorm statistics and mid-block attention span the
# whole image, so a box encode changes every token a little, not only those at the border
# (benchmarks/encode_box.py measures by how much). `canvas` is exact to the method.
PROMPT_CACHE_SIZE = 8  # prompts whose embeddings stay in memory (T5 at 512 tokens: 4 MB in bf16)
# Every argument of the parent's __call__, which a canvas call passes on (see __call__).
KONTEXT_ARGUMENTS = tuple(inspect.signature(FluxKontextPipeline.__call__).parameters)[1:]


@dataclass
class LayerComposerOutput(FluxPipelineOutput):
    """A canvas call's result: diffusers' `FluxPipelineOutput` (`images`) and what it cost."""

    mode: str | None = None  # the mode actually used ("layered" or "collage")
    mode_reason: str | None = None  # why `auto` chose it
    tokens: dict[str, int] | None = None  # per image: text, noisy, conditioning, total
    timings: dict[str, float] | None = None  # seconds: text, encode, denoise, decode
    cache: dict[str, int] | None = None  # layer latents: hits, misses
    prompt_cached: bool = False  # every text embedding came from the prompt cache
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


@dataclass
class _CanvasCall:
    """The canvas of the `__call__` in progress, and what the overrides measure during it."""

    layers: list[CanvasLayer]
    mode: str  # layered | collage
    encode: str
    fill: str
    timings: dict[str, float] = field(default_factory=dict)
    text_tokens: int = 0
    conditioning_tokens: int = 0
    prompt_hits: list[bool] = field(default_factory=list)
    denoise_started: float | None = None
    denoise_ended: float | None = None


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

    @property
    def token_px(self) -> int:
        """Canvas pixels per side of one transformer token: the VAE's downsampling, then 2x2."""
        return 2 * self.vae_scale_factor

    def resolve_mode(self, mode: str) -> tuple[str, str | None]:
        """The mode to run for `mode`, and for `auto` the reason it was chosen (naming the LoRA).

        `auto` is layered only with a LoRA whose lc.* metadata says lc trained it for the layered
        canvas; stock Kontext, and any other LoRA, never saw per-layer position indices.
        """
        if mode != "auto":
            return mode, None
        from .lora import loaded_loras, other_adapters

        infos = loaded_loras(self)
        layered = next((info for info in infos if info.layered), None)
        if layered is not None:
            return "layered", (
                f"auto: {Path(layered.path).name} was trained by lc for the layered canvas "
                "(its lc.* metadata), so layered"
            )
        others = [Path(info.path).name for info in infos]
        others += [f"adapter {name!r}" for name in other_adapters(self)]
        if others:
            return "collage", (
                f"auto: {', '.join(others)} {'has' if len(others) == 1 else 'have'} no lc.* "
                "metadata saying lc trained it for the layered canvas, so collage (pass --mode "
                "layered to force it)"
            )
        return "collage", (
            "auto: no LayerComposer LoRA is loaded, so collage: stock Kontext was not trained on "
            "per-layer position indices (pass --mode layered to force it)"
        )

    def check_layer_inputs(
        self,
        layers: list[CanvasLayer],
        mode: str = "layered",
        encode: str = "canvas",
        fill: str = DEFAULT_FILL,
    ) -> None:
        """Raise ValueError, saying what to change, unless the canvas arguments can be rendered."""
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
        check_layers(layers, encode, fill, self.token_px)

    # --- step 1: text embeddings, cached per prompt -------------------------------------------

    def encode_prompt_cached(
        self, prompt: str, max_sequence_length: int = 512
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], bool]:
        """`encode_prompt`'s (embeds, pooled, text ids), from memory when seen before; and whether.

        The key is everything the embeddings depend on: the prompt, the length, the device and
        the text encoders themselves (which objects, their dtype, their LoRA adapters and scales).
        """
        device = self._execution_device

        def encode():
            return self.encode_prompt(
                prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
                max_sequence_length=max_sequence_length,
            )  # fmt: skip

        return self._cached_text(((prompt,), None, max_sequence_length, None), encode)

    def _cached_text(self, what: tuple, encode: Callable[[], tuple]) -> tuple[tuple, bool]:
        """The embeddings of `what` (prompts, prompt_2s, length, LoRA scale), and whether cached."""
        encoders = (self.text_encoder, self.text_encoder_2)
        key = (*what, str(self._execution_device), _encoders_state(self, encoders))
        cached = self.prompt_cache.get(key)
        if cached is not None and all(a is b for a, b in zip(cached[0], encoders, strict=True)):
            self.prompt_cache.move_to_end(key)
            return cached[1], True
        embeds = encode()
        self.prompt_cache[key] = (encoders, embeds)  # the encoders: an id() alone can be reused
        while len(self.prompt_cache) > PROMPT_CACHE_SIZE:
            self.prompt_cache.popitem(last=False)
        return embeds, False

    def cached_prompt_embeds(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        max_sequence_length: int = 512,
        lora_scale: float | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], bool]:
        """`encode_prompt`'s (T5 embeds, pooled) for a batch, via the prompt cache; and whether.

        (B * n, L_txt, D) and (B * n, D_pooled) for B prompts and n images per prompt, as
        `encode_prompt` repeats them; copies, so a caller that changes them leaves the cache be.
        """
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        seconds = (
            None
            if prompt_2 is None
            else (prompt_2,)
            if isinstance(prompt_2, str)
            else tuple(prompt_2)
        )
        device = self._execution_device

        def encode():
            return self.encode_prompt(
                prompt=prompt, prompt_2=prompt_2, device=device, num_images_per_prompt=1,
                max_sequence_length=max_sequence_length, lora_scale=lora_scale,
            )  # fmt: skip

        what = (prompts, seconds, max_sequence_length, lora_scale)
        (t5, pooled, _), hit = self._cached_text(what, encode)
        n, (batch, length, _) = num_images_per_prompt, t5.shape
        t5 = t5.repeat(1, n, 1).view(batch * n, length, -1)  # (B * n, L_txt, D)
        pooled = pooled.repeat(1, n).view(batch * n, -1)  # (B * n, D_pooled)
        return (t5, pooled), hit

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
        return encode_box(layer, encode, self.token_px)

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
        return layer_tokens(
            layer, index, encode, fill, self.token_px,
            lambda rgb: self._encode_pixels(rgb, generator), self._execution_device,
            self.latent_cache, (self.cache_namespace, str(self.vae.dtype)),
        )  # fmt: skip

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
        indices = layer_indices([layer.lock for layer in layers])
        encoded = [
            self.encode_layer(layer, index, encode, generator, fill)
            for layer, index in zip(layers, indices, strict=True)
        ]
        return torch.cat([t for t, _ in encoded], dim=1), torch.cat([i for _, i in encoded])

    def encode_collage(
        self, layers: list[CanvasLayer], generator=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the flattened canvas as Kontext's reference image: tokens and `[1, y, x]` ids."""
        tokens = self._encode_pixels(flatten(layers), generator)
        grid = _token_grid(layers[0].canvas_size, self.token_px)
        ids = grid_position_ids(np.ones((grid.height, grid.width), bool), 1)
        return tokens, torch.from_numpy(ids)

    def prepare_latents(
        self,
        image: torch.Tensor | None,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
    ):
        """diffusers' `prepare_latents`; in a layered call the layers' tokens are the "image".

        Returns (noisy latents, conditioning tokens, noisy ids, conditioning ids): the parent
        appends the conditioning to the noisy tokens at every step and keeps only the noisy
        tokens' prediction.
        """
        call = _active_call(self)
        if call is None:
            return super().prepare_latents(
                image, batch_size, num_channels_latents, height, width, dtype, device, generator,
                latents,
            )  # fmt: skip
        started = _now(device)
        if call.mode == "collage":  # `image` is the preprocessed collage
            prepared = super().prepare_latents(
                image, batch_size, num_channels_latents, height, width, dtype, device, generator,
                latents,
            )  # fmt: skip
        else:
            # The VAE encodes in argmax mode, so no generator is drawn from: the noise is as
            # Kontext's. A list of generators (one per image) gives the shared canvas none.
            one = None if isinstance(generator, list) else generator
            tokens, ids = self.encode_layers(call.layers, call.encode, one, call.fill)
            noisy, _, noisy_ids, _ = super().prepare_latents(
                None, batch_size, num_channels_latents, height, width, dtype, device, generator,
                latents,
            )  # fmt: skip
            tokens = tokens.to(device=device, dtype=dtype).repeat(
                batch_size, 1, 1
            )  # (B, L_cond, 64)
            prepared = (noisy, tokens, noisy_ids, ids.to(device=device, dtype=dtype))
        call.conditioning_tokens = int(prepared[1].shape[1])
        call.timings["encode"] = _now(device) - started
        call.denoise_started = time.perf_counter()
        return prepared

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
        if not isinstance(prompt, str):
            raise ValueError("`prompt` must be a string")
        self.check_layer_inputs(layers, mode, encode, fill)
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
        image=None,
        prompt: str | list[str] = None,
        prompt_2: str | list[str] | None = None,
        negative_prompt: str | list[str] = None,
        negative_prompt_2: str | list[str] | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 3.5,
        num_images_per_prompt: int | None = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.FloatTensor | None = None,
        prompt_embeds: torch.FloatTensor | None = None,
        pooled_prompt_embeds: torch.FloatTensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        negative_ip_adapter_image=None,
        negative_ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        negative_prompt_embeds: torch.FloatTensor | None = None,
        negative_pooled_prompt_embeds: torch.FloatTensor | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[int, int], None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - as diffusers
        max_sequence_length: int = 512,
        max_area: int = 1024**2,
        _auto_resize: bool = True,
        *,
        layers: list[CanvasLayer] | None = None,
        canvas=None,
        mode: Mode = "layered",
        encode: Encode = "canvas",
        fill: Fill = DEFAULT_FILL,
    ):
        r"""FLUX.1 Kontext's call, with the layered canvas as added keyword arguments.

        Every argument before `layers` is `FluxKontextPipeline.__call__`'s, with its meaning and
        default; without `layers` or `canvas` this is exactly diffusers' Kontext (and returns its
        `FluxPipelineOutput`).

        Args:
            layers (`list[CanvasLayer]`, *optional*):
                The canvas, bottom to top, as `layercomposer.layers.build_layers` gives it; each
                layer's `lock` keeps it (position index 0) or lets the model re-render it.
            canvas (`Canvas` or path, *optional*):
                A canvas file (or `load_canvas`'s result) to build `layers` from. Its prompt,
                steps and guidance are not read: pass them as `prompt`, `num_inference_steps`
                and `guidance_scale`.
            mode (`"layered"`, `"collage"` or `"auto"`, defaults to `"layered"`):
                `layered`: every layer's visible tokens with its own position index
                (LayerComposer); `collage`: the flattened canvas as Kontext's one reference
                image; `auto`: layered only with a LoRA trained by lc for the layered canvas.
            encode (`"canvas"` or `"box"`, defaults to `"canvas"`):
                What each layer's VAE encode sees: the whole canvas (exact), or its box plus a
                32-px margin (faster for small layers; the tokens change a little).
            fill (`"black"` or `"grey"`, defaults to `"black"`):
                The colour transparent layer pixels are encoded as: the LoRA's training's.

        With a canvas, the image has the canvas's size: `image` must be left out, `height` and
        `width` (if given) must equal the canvas's, and `max_area` and `_auto_resize` are unused.
        Prompt lists and `num_images_per_prompt` all render the one canvas.

        Returns:
            `LayerComposerOutput` (a `FluxPipelineOutput` with lc's mode, tokens, timings and
            cache figures), or `(images,)` with `return_dict=False`.
        """
        arguments = {name: value for name, value in locals().items() if name in KONTEXT_ARGUMENTS}
        do_true_cfg = true_cfg_scale > 1 and (
            negative_prompt is not None
            or (negative_prompt_embeds is not None and negative_pooled_prompt_embeds is not None)
        )  # as the parent decides
        if isinstance(image, str):  # lc's pipeline before 0.2 took the prompt first
            raise ValueError(
                "`image` is a string: pass the prompt as `prompt=` (the arguments are "
                "FluxKontextPipeline's, the canvas comes as `layers=` or `canvas=`)"
            )
        if layers is None and canvas is None:
            with _cache_contexts(self.transformer, 2 if do_true_cfg else 1):
                return super().__call__(**arguments)

        layers = _canvas_layers(layers, canvas)
        self.check_layer_inputs(layers, mode, encode, fill)
        size = layers[0].canvas_size
        if image is not None:
            raise ValueError("pass either `image` (stock Kontext) or `layers`/`canvas`, not both")
        if (height or size.height, width or size.width) != (size.height, size.width):
            raise ValueError(
                f"height x width {height}x{width} differs from the canvas's {size.height}x"
                f"{size.width}: a canvas renders at its own size (leave them out)"
            )
        mode, mode_reason = self.resolve_mode(mode)
        call = _CanvasCall(layers, mode, encode, fill)

        # 1. The text, from the prompt cache, handed to the parent as precomputed embeddings
        # (already repeated per image, so the parent is told one image per prompt).
        started = _now(self._execution_device)
        lora_scale = (joint_attention_kwargs or {}).get("scale")
        length = max_sequence_length
        if _encodable(prompt, prompt_2, prompt_embeds, num_images_per_prompt, length):
            n = num_images_per_prompt
            (embeds, pooled), hit = self.cached_prompt_embeds(
                prompt, prompt_2, n, length, lora_scale
            )
            arguments.update(
                prompt=None, prompt_2=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                num_images_per_prompt=1,
            )  # fmt: skip
            call.prompt_hits.append(hit)
            negative = (negative_prompt, negative_prompt_2, negative_prompt_embeds)
            if do_true_cfg and _encodable(*negative, n, length):
                (embeds, pooled), hit = self.cached_prompt_embeds(
                    negative_prompt, negative_prompt_2, n, length, lora_scale
                )
                arguments.update(
                    negative_prompt=None, negative_prompt_2=None, negative_prompt_embeds=embeds,
                    negative_pooled_prompt_embeds=pooled,
                )  # fmt: skip
                call.prompt_hits.append(hit)
        if arguments["prompt_embeds"] is not None:
            call.text_tokens = int(arguments["prompt_embeds"].shape[1])
        call.timings["text"] = _now(self._execution_device) - started

        user_callback = callback_on_step_end

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            outputs = user_callback(pipe, step, timestep, tensors) if user_callback else {}
            if step == pipe.num_timesteps - 1:
                call.denoise_ended = _now(pipe._execution_device)
            return outputs

        arguments.update(
            image=Image.fromarray(flatten(layers)) if mode == "collage" else None,
            height=size.height, width=size.width, max_area=size.area, _auto_resize=False,
            callback_on_step_end=on_step_end, return_dict=True,
        )  # fmt: skip
        hits_before, misses_before = self.latent_cache.hits, self.latent_cache.misses
        self._canvas_call = call
        try:
            with _cache_contexts(self.transformer, 2 if do_true_cfg else 1) as first_block:
                images = super().__call__(**arguments).images
        finally:
            self._canvas_call = None
        ended = _now(self._execution_device)

        timings = call.timings
        denoised = call.denoise_ended or ended  # interrupted: no last step
        timings["denoise"] = denoised - (call.denoise_started or denoised)
        timings["decode"] = ended - denoised
        grid = _token_grid(size, self.token_px)
        tokens = {
            "text": call.text_tokens,
            "noisy": grid.width * grid.height,
            "conditioning": call.conditioning_tokens,
        }
        tokens["total"] = sum(tokens.values())
        cache = {
            "hits": self.latent_cache.hits - hits_before,
            "misses": self.latent_cache.misses - misses_before,
        }
        output = LayerComposerOutput(
            images, mode, mode_reason, tokens, timings, cache,
            bool(call.prompt_hits) and all(call.prompt_hits), first_block,
        )  # fmt: skip
        return output if return_dict else (output.images,)


def check_layers(layers: list[CanvasLayer], encode: str, fill: str, token_px: int) -> None:
    """Raise ValueError, saying what to change, unless `layers` make one canvas of whole tokens."""
    if encode not in ENCODES:
        raise ValueError(f"`encode` must be one of {ENCODES}, got {encode!r}")
    check_fill(fill)
    if not layers:
        raise ValueError("`layers` is empty: a canvas needs at least one layer or a background")
    if not all(isinstance(layer, CanvasLayer) for layer in layers):
        raise ValueError("`layers` must be CanvasLayer objects (layercomposer.layers.build_layers)")
    size = layers[0].canvas_size
    if any(layer.canvas_size != size for layer in layers):
        raise ValueError("all layers must belong to the same canvas size")
    if size.width % token_px or size.height % token_px:
        raise ValueError(f"canvas {size.width}x{size.height} is not a multiple of {token_px} px")


def encode_box(layer: CanvasLayer, encode: Encode, token_px: int) -> Box:
    """The pixel box a layer is encoded from: the canvas, or (`box`) the layer's visible part
    snapped out to the token grid plus `ENCODE_MARGIN`, inside the canvas."""
    canvas = Box(0, 0, *layer.canvas_size)
    if encode == "canvas":
        return canvas
    return layer.visible_box.snapped_out(token_px, ENCODE_MARGIN).intersect(canvas)


def layer_tokens(
    layer: CanvasLayer,
    index: int,
    encode: Encode,
    fill: Fill,
    token_px: int,
    encode_pixels: Callable[[np.ndarray], torch.Tensor],
    device: torch.device | str,
    cache: LatentCache | None = None,
    cache_scope: tuple = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's kept VAE tokens (1, n, C*4) on `device` and their `[index, y, x]` ids (n, 3).

    `encode_pixels` turns (h, w, 3) uint8 pixels into packed tokens (1, h/px * w/px, C*4). The
    `cache` keeps them by what the VAE saw (the layer's pixels, the fill, the box relative to
    the layer) under `cache_scope` (the model and dtype), never by where the layer sits.
    """
    box = encode_box(layer, encode, token_px)
    x, y = layer.origin
    key = LatentCache.key(
        *cache_scope, layer.content_hash, check_fill(fill),
        (box.x0 - x, box.y0 - y, box.x1 - x, box.y1 - y),
    )  # fmt: skip
    tokens = cache.get(key) if cache is not None else None
    if tokens is None:
        rgb = fill_transparent(layer.crop(box), fill)  # (h, w, 3), never the whole canvas
        tokens = encode_pixels(rgb)
        if cache is not None:
            cache.put(key, tokens)
    tokens = tokens.to(device)

    token_mask = layer.token_mask_at(token_px)  # (H/px, W/px)
    token_box = Box(*(v // token_px for v in box))
    mask = token_mask[token_box.y0 : token_box.y1, token_box.x0 : token_box.x1]
    kept = tokens[:, torch.from_numpy(mask.reshape(-1)).to(tokens.device)]  # (1, n, C*4)
    return kept, torch.from_numpy(grid_position_ids(token_mask, index))


def _canvas_layers(layers: list[CanvasLayer] | None, canvas) -> list[CanvasLayer]:
    """The layers of a canvas call: `layers`, or those built from `canvas` (a Canvas or a path)."""
    if layers is not None and canvas is not None:
        raise ValueError("pass `layers` or `canvas`, not both")
    if layers is not None:
        return list(layers)
    from .canvas import Canvas, load_canvas
    from .layers import build_layers

    if isinstance(canvas, str | Path):
        canvas = load_canvas(canvas)
    if not isinstance(canvas, Canvas):
        raise ValueError(f"`canvas` must be a canvas file's path or a Canvas, got {type(canvas)}")
    return build_layers(canvas)


def _encodable(prompt, prompt_2, prompt_embeds, num_images_per_prompt, max_length) -> bool:
    """Whether lc encodes these prompts itself; otherwise the parent does, or refuses them."""
    texts = (str, list)
    return (
        prompt_embeds is None
        and isinstance(prompt, texts)
        and (prompt_2 is None or isinstance(prompt_2, texts))
        and isinstance(num_images_per_prompt, int)
        and max_length <= 512  # the parent refuses more
    )


def _active_call(pipe) -> _CanvasCall | None:
    return getattr(pipe, "_canvas_call", None)


def _token_grid(size: Extent, token_px: int) -> Extent:
    return Extent(size.width // token_px, size.height // token_px)


@contextmanager
def _cache_contexts(transformer, calls_per_step: int) -> Iterator[dict[str, float] | None]:
    """Name each transformer call for diffusers' stateful cache hooks, as FluxPipeline does.

    First-block caching (and the other caches that keep state per named call) refuse to run
    outside a `cache_context`, which Kontext's loop does not open. This opens "cond" for the
    first call of every step and "uncond" for true CFG's second. Yields the first-block-cache
    figures (threshold, steps, full_steps; complete when the block ends), or None without one.
    """
    if not _has_stateful_cache_hooks(transformer):
        yield None
        return
    from diffusers.hooks import FirstBlockCacheConfig
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    config = transformer._cache_config
    first_block = isinstance(config, FirstBlockCacheConfig)
    figures = {"threshold": getattr(config, "threshold", None), "steps": 0, "full_steps": 0}
    calls = itertools.count()
    current = {"name": "cond"}

    def before(module, args, kwargs):
        current["name"] = "uncond" if next(calls) % calls_per_step else "cond"
        _set_cache_context(module, CacheContext(current["name"]))

    def after(module, args, kwargs, output):
        if current["name"] == "cond":
            figures["steps"] += 1
            figures["full_steps"] += int(ran_every_block(module))

    handles = [
        transformer.register_forward_pre_hook(before, with_kwargs=True),
        transformer.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        yield figures if first_block else None
    finally:
        for handle in handles:
            handle.remove()
        _set_cache_context(transformer, None)


def _has_stateful_cache_hooks(transformer) -> bool:
    """Whether a cache hook that keeps per-context state is on `transformer` (see `StateManager`)."""
    from diffusers.hooks.hooks import HookRegistry, StateManager

    if not getattr(transformer, "is_cache_enabled", False):
        return False
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if not isinstance(registry, HookRegistry):
            continue
        for hook in registry.hooks.values():
            if any(isinstance(value, StateManager) for value in vars(hook).values()):
                return True
    return False


def _encoders_state(pipe, encoders) -> tuple:
    """What, besides the prompt, decides the text embeddings: the encoders and their LoRAs."""
    adapters = tuple(tuple(sorted(getattr(e, "peft_config", None) or ())) for e in encoders)
    dtypes = tuple(str(getattr(e, "dtype", None)) for e in encoders)
    scales = tuple(sorted(getattr(pipe, "_lc_lora_scales", {}).items()))  # lora.set_lora_scale
    # Textual inversion adds tokens to the tokenizers.
    vocabularies = tuple(
        len(t) if t is not None else None for t in (pipe.tokenizer, pipe.tokenizer_2)
    )
    return (tuple(id(e) for e in encoders), dtypes, adapters, scales, vocabularies)


def _now(device: torch.device) -> float:
    """A wall-clock reading that waits for queued GPU work first, so stage timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
