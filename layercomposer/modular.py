"""LayerComposer as Modular Diffusers blocks: diffusers' Flux Kontext block set with three swapped.

diffusers' `FluxKontextAutoBlocks` encode the text, VAE-encode one reference image, expand the
inputs to the batch, prepare latents and timesteps, build the RoPE ids, denoise and decode. A
layered canvas changes three of those steps, and `LayerComposerKontextBlocks` swaps exactly
them, keeping diffusers' own blocks for the rest:

- `vae_encoder` -> `LayerComposerVaeEncoderStep`: each layer's VAE tokens under its alpha (the
  same code as `LayerComposerPipeline.encode_layers`), already packed, with their `[layer, y, x]`
  ids; and the canvas's size as the image size;
- `additional_inputs` -> `LayerComposerAdditionalInputsStep`: the conditioning repeated to the
  batch (it is packed already, so not patchified again);
- `prepare_rope_inputs` -> `LayerComposerRoPEInputsStep`: the noisy tokens' `[0, y, x]` ids
  followed by the layers' ids.

Kontext's denoise step appends `image_latents` to the noisy tokens at every step and keeps only
the noisy tokens' prediction, as `LayerComposerPipeline` does; on the same components, seed and
canvas the two give the same image, bit for bit (tests/test_modular.py):

    blocks = LayerComposerKontextBlocks()
    pipe = blocks.init_pipeline()
    pipe.update_components(**components)  # a FluxKontextPipeline's
    image = pipe(prompt=..., layers=build_layers(canvas), generator=..., output="images")
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import FrozenDict
from diffusers.image_processor import VaeImageProcessor
from diffusers.modular_pipelines import (
    ModularPipelineBlocks,
    PipelineState,
    SequentialPipelineBlocks,
)
from diffusers.modular_pipelines.flux.before_denoise import (
    FluxPrepareLatentsStep,
    FluxSetTimestepsStep,
)
from diffusers.modular_pipelines.flux.decoders import FluxDecodeStep, FluxUnpackLatentsStep
from diffusers.modular_pipelines.flux.denoise import FluxKontextDenoiseStep
from diffusers.modular_pipelines.flux.encoders import FluxTextEncoderStep, encode_vae_image
from diffusers.modular_pipelines.flux.inputs import (
    FluxKontextSetResolutionStep,
    FluxTextInputStep,
)
from diffusers.modular_pipelines.modular_pipeline_utils import (
    ComponentSpec,
    InputParam,
    InsertableDict,
    OutputParam,
)
from diffusers.modular_pipelines.qwenimage.inputs import repeat_tensor_to_batch_size
from diffusers.pipelines import FluxPipeline
from PIL import Image

from .fill import DEFAULT_FILL
from .latents import pack_latents
from .pipeline import check_layers, layer_tokens
from .tokens import layer_indices

MODEL_NAME = "flux-kontext"  # the block set's: init_pipeline() gives a FluxKontextModularPipeline


class LayerComposerVaeEncoderStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return (
            "VAE-encodes each layer of a layered canvas and keeps the tokens under its alpha, "
            "with [layer, y, x] ids (locked 0, unlocked 1..k); sets the image size to the "
            "canvas's. Replaces Flux Kontext's VAE-encode step."
        )

    @property
    def expected_components(self) -> list[ComponentSpec]:
        return [
            ComponentSpec("vae", AutoencoderKL),
            ComponentSpec(
                "image_processor", VaeImageProcessor,
                config=FrozenDict({"vae_scale_factor": 16}), default_creation_method="from_config",
            ),
        ]  # fmt: skip

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("layers", required=True, description="CanvasLayers, bottom to top"),
            InputParam("encode", default="canvas", description="canvas | box"),
            InputParam("fill", default=DEFAULT_FILL, description="black | grey"),
            InputParam("latent_cache", description="a LatentCache for the layer tokens"),
            InputParam("height"),
            InputParam("width"),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("image_latents", type_hint=torch.Tensor, description="(1, L_cond, C*4)"),
            OutputParam("layer_ids", type_hint=torch.Tensor, description="(L_cond, 3)"),
            OutputParam("height", type_hint=int, description="the canvas's"),
            OutputParam("width", type_hint=int, description="the canvas's"),
            OutputParam("max_area", type_hint=int, description="the canvas's"),
        ]

    @torch.no_grad()
    def __call__(self, components, state: PipelineState):
        block_state = self.get_block_state(state)
        layers, token_px = list(block_state.layers), 2 * components.vae_scale_factor
        check_layers(layers, block_state.encode, block_state.fill, token_px)
        size = layers[0].canvas_size
        given = (block_state.height or size.height, block_state.width or size.width)
        if given != (size.height, size.width):
            raise ValueError(
                f"height x width {block_state.height}x{block_state.width} differs from the "
                f"canvas's {size.height}x{size.width}: a canvas renders at its own size"
            )
        vae, device = components.vae, components._execution_device
        transformer = getattr(components, "transformer", None)
        # As LayerComposerPipeline._encode_pixels: a float32 VAE encodes at the transformer's dtype.
        dtype = (
            vae.dtype if vae.dtype != torch.float32 or transformer is None else transformer.dtype
        )

        def encode_pixels(rgb):
            height, width = rgb.shape[:2]
            image = components.image_processor.preprocess(Image.fromarray(rgb), height, width)
            latents = encode_vae_image(vae, image.to(device=device, dtype=dtype), None, "argmax")
            return pack_latents(latents)  # (1, h/px * w/px, C*4)

        cache = block_state.latent_cache
        scope = (getattr(components, "cache_namespace", "modular"), str(vae.dtype))
        encoded = [
            layer_tokens(
                layer,
                index,
                block_state.encode,
                block_state.fill,
                token_px,
                encode_pixels,
                device,
                cache,
                scope,
            )  # fmt: skip
            for layer, index in zip(layers, layer_indices([x.lock for x in layers]), strict=True)
        ]
        block_state.image_latents = torch.cat([tokens for tokens, _ in encoded], dim=1)
        block_state.layer_ids = torch.cat([ids for _, ids in encoded])
        block_state.height, block_state.width, block_state.max_area = (
            size.height, size.width, size.area,
        )  # fmt: skip
        self.set_block_state(state, block_state)
        return components, state


class LayerComposerAdditionalInputsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return (
            "Repeats the packed layer tokens to the batch (prompts x images per prompt), in the "
            "text's dtype. Replaces Flux Kontext's additional-inputs step, which would patchify "
            "an image's latents."
        )

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("num_images_per_prompt", default=1),
            InputParam("batch_size", required=True),
            InputParam("prompt_embeds", required=True),
            InputParam("image_latents", required=True),
        ]

    def __call__(self, components, state: PipelineState):
        block_state = self.get_block_state(state)
        tokens = block_state.image_latents.to(dtype=block_state.prompt_embeds.dtype)
        block_state.image_latents = repeat_tensor_to_batch_size(
            input_name="image_latents", input_tensor=tokens,
            num_images_per_prompt=block_state.num_images_per_prompt,
            batch_size=block_state.batch_size,
        )  # fmt: skip  # (B * n, L_cond, C*4)
        self.set_block_state(state, block_state)
        return components, state


class LayerComposerRoPEInputsStep(ModularPipelineBlocks):
    model_name = MODEL_NAME

    @property
    def description(self) -> str:
        return (
            "The RoPE ids: the text's zeros, and the noisy tokens' [0, y, x] followed by the "
            "layers' [layer, y, x]. Replaces Flux Kontext's RoPE-inputs step."
        )

    @property
    def inputs(self) -> list[InputParam]:
        return [
            InputParam("height", required=True),
            InputParam("width", required=True),
            InputParam("prompt_embeds", required=True),
            InputParam("layer_ids", required=True),
        ]

    @property
    def intermediate_outputs(self) -> list[OutputParam]:
        return [
            OutputParam("txt_ids", kwargs_type="denoiser_input_fields", type_hint=torch.Tensor),
            OutputParam("img_ids", kwargs_type="denoiser_input_fields", type_hint=torch.Tensor),
        ]

    def __call__(self, components, state: PipelineState):
        block_state = self.get_block_state(state)
        embeds = block_state.prompt_embeds
        device, dtype = embeds.device, embeds.dtype
        block_state.txt_ids = torch.zeros(embeds.shape[1], 3).to(device=device, dtype=dtype)
        height = 2 * (int(block_state.height) // (components.vae_scale_factor * 2))
        width = 2 * (int(block_state.width) // (components.vae_scale_factor * 2))
        noisy_ids = FluxPipeline._prepare_latent_image_ids(
            None, height // 2, width // 2, device, dtype
        )
        layer_ids = block_state.layer_ids.to(device=device, dtype=dtype)
        block_state.img_ids = torch.cat([noisy_ids, layer_ids])  # (L_img + L_cond, 3)
        self.set_block_state(state, block_state)
        return components, state


class LayerComposerInputStep(SequentialPipelineBlocks):
    model_name = MODEL_NAME
    block_classes = [
        FluxKontextSetResolutionStep(), FluxTextInputStep(), LayerComposerAdditionalInputsStep(),
    ]  # fmt: skip
    block_names = ["set_resolution", "text_inputs", "additional_inputs"]

    @property
    def description(self) -> str:
        return "Flux Kontext's input step, with the layered canvas's additional inputs."


class LayerComposerBeforeDenoiseStep(SequentialPipelineBlocks):
    model_name = MODEL_NAME
    block_classes = [
        FluxPrepareLatentsStep(),
        FluxSetTimestepsStep(),
        LayerComposerRoPEInputsStep(),
    ]
    block_names = ["prepare_latents", "set_timesteps", "prepare_rope_inputs"]

    @property
    def description(self) -> str:
        return "Flux Kontext's before-denoise step, with the layered canvas's RoPE ids."


class LayerComposerCoreDenoiseStep(SequentialPipelineBlocks):
    model_name = MODEL_NAME
    block_classes = [
        LayerComposerInputStep, LayerComposerBeforeDenoiseStep, FluxKontextDenoiseStep,
        FluxUnpackLatentsStep,
    ]  # fmt: skip
    block_names = ["input", "before_denoise", "denoise", "unpack_latents"]

    @property
    def description(self) -> str:
        return "Flux Kontext's core denoise step on a layered canvas."


LAYERCOMPOSER_BLOCKS = InsertableDict(
    [
        ("text_encoder", FluxTextEncoderStep()),
        ("vae_encoder", LayerComposerVaeEncoderStep()),
        ("denoise", LayerComposerCoreDenoiseStep()),
        ("decode", FluxDecodeStep()),
    ]
)


class LayerComposerKontextBlocks(SequentialPipelineBlocks):
    """diffusers' Flux Kontext blocks on a layered canvas (LayerComposer); see the module."""

    model_name = MODEL_NAME
    block_classes = LAYERCOMPOSER_BLOCKS.values()
    block_names = LAYERCOMPOSER_BLOCKS.keys()

    @property
    def description(self) -> str:
        return (
            "LayerComposer on FLUX.1 Kontext: a layered canvas (`layers`) instead of one "
            "reference image."
        )
