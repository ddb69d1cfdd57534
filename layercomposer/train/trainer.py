"""The LoRA trainer: flow matching on FLUX.1 Kontext with locking-aware layered conditioning.

The conditioning of every example is built by the rendering code itself (`encode_layer` and
the token plan), so training and inference cannot drift apart. Every example of a step draws
its randomness from its own generator, seeded by (seed, step, its index in the global batch): the
examples of a step are the same whatever the process count, and `--resume` continues exactly.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import LcError, UsageError
from ..files import TEMP_SUFFIX, atomic_path, write_json_atomic
from ..limits import read_json_bounded
from ..tokens import noisy_position_ids
from .config import TrainConfig
from .dataset import load_datasets
from .optim import make_optimizer
from .run_folder import check_resumable, config_fingerprint, prepare_run_folder
from .sampler import SamplingConfig, TrainingSample, sample_example
from .sharding import (
    fsdp_requested,
    full_optimizer_state,
    full_trainable_state,
    gradient_sync,
    is_sharded,
    load_full_state,
    repoint_optimizer,
    settings_from_launch,
    shard_model,
)
from .text_cache import TextEmbeddingCache
from .timesteps import resolve_shift, shift_sigmas

ADAPTER = "layercomposer"
LORA_FILE = "pytorch_lora_weights.safetensors"
METRICS_FIELDS = ["step", "loss", "learning_rate", "seconds", "samples_per_second"]


@dataclass
class StepReport:
    step: int
    steps: int
    loss: float
    samples_per_second: float


def sample_sigmas(rng: np.random.Generator, count: int, config, shift: float) -> np.ndarray:
    """Noise levels in (0, 1) for flow matching: logit-normal (as FLUX/SD3 training) or uniform,
    then the schedule shift sigma' = shift * s / (1 + (shift - 1) * s) (`Trainer.shift`)."""
    if config.timestep_sampling == "logit_normal":
        sigmas = 1 / (1 + np.exp(-rng.normal(config.logit_mean, config.logit_std, count)))
    else:
        sigmas = rng.uniform(0, 1, count)
    return shift_sigmas(sigmas, shift)


def example_rng(seed: int, step: int, example: int) -> np.random.Generator:
    """The generator of one example: `example` is its index in the step's global batch (process
    p of N, with b examples each, owns indices p*b .. p*b+b-1)."""
    return np.random.default_rng([seed, step, example])


class Trainer:
    """One training run. `run()` returns the path of the final LoRA."""

    def __init__(
        self,
        config: TrainConfig,
        resume: bool = False,
        on_step: Callable[[StepReport], None] | None = None,
        overwrite: bool = False,
    ):
        from accelerate import Accelerator

        self.config = config
        self.resume = resume
        self.on_step = on_step
        self.output = Path(config.output_dir)
        use_cuda = torch.cuda.is_available() and config.device in ("auto", "cuda")
        precision = config.train.mixed_precision if use_cuda else "no"
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not use_cuda)
        global_batch = self.accelerator.num_processes * config.train.batch_size
        self.fingerprint = config_fingerprint(config.model_dump(mode="json"), global_batch)
        self.index = load_datasets(config.data.path)
        if self.accelerator.is_main_process:
            # Before the model loads: a refused rerun costs seconds and changes nothing.
            prepare_run_folder(self.output, resume, overwrite)
            if resume and (checkpoint := self.latest_checkpoint()) is not None:
                state = read_json_bounded(checkpoint / "state.json")
                check_resumable(checkpoint, state, config.model_dump(mode="json"), global_batch)
        self.sampling = SamplingConfig(
            config.data.lock_probability,
            config.data.scale_jitter,
            config.data.shift_jitter,
            config.data.color_jitter,
            min_donor_seconds=config.data.min_donor_seconds,
        )
        train = config.train
        self.text_cache = TextEmbeddingCache(train.text_cache_gb * 1e9 if train.cache_text else 0)
        self._setup_model()
        self.image_tokens = (self.index.resolution // 16) ** 2  # noisy tokens per example
        # `auto`: FLUX's own shift for this many tokens, from the loaded scheduler's config.
        self.shift = resolve_shift(
            config.train.shift, self.image_tokens, self.pipe.scheduler.config
        )

    # --- set-up ---------------------------------------------------------------------------------

    def _setup_model(self) -> None:
        from peft import LoraConfig

        if self.config.model_quantization != "none" and self._sharded_launch():
            # Refused before loading 12 B weights: fully_shard splits every weight with ops
            # (aten.split, ...) that torchao's Int8Tensor does not implement.
            raise UsageError(
                "model_quantization: int8 cannot be sharded with FSDP (torchao's int8 weights "
                "do not support the splits FSDP2 makes)",
                hint="shard the bf16 base (model_quantization: none), or train on one GPU "
                "without FSDP (configs/flux-kontext-1gpu.yaml)",
            )

        from ..latents import LatentCache
        from ..models import load_pipeline
        from ..speed import SpeedOptions
        from .placement import place_for_training, stage_on_cpu

        dtype = "bfloat16" if self.accelerator.device.type == "cuda" else "float32"
        t5_encoder = self.config.train.t5_encoder
        staged = stage_on_cpu(self.config.model_quantization, t5_encoder)
        self.pipe, self.model_info = load_pipeline(
            self.config.model,
            self.config.revision,
            dtype=dtype,
            device="cpu" if staged else str(self.accelerator.device),
            # Quantized before the LoRA is added: peft then wraps the int8 linears
            # (TorchaoLoraLinear), and the LoRA itself stays a plain fp32 layer.
            speed=SpeedOptions(quantize=self.config.model_quantization),
        )
        if staged:
            place_for_training(self.pipe, self.accelerator.device, t5_encoder)
        self.pipe.latent_cache = LatentCache(
            max_entries=4096 if self.config.train.cache_latents else 0
        )
        for module in (
            self.pipe.transformer,
            self.pipe.vae,
            self.pipe.text_encoder,
            self.pipe.text_encoder_2,
        ):
            module.requires_grad_(False)
        lora = self.config.lora
        torch.manual_seed(self.config.seed)  # the LoRA's random init: the same run, the same start
        # peft warns that a LoRA over torchao weights cannot be merged into them; lc never merges.
        warnings.filterwarnings("ignore", "TorchaoLoraLinear was instantiated", UserWarning)
        self.pipe.transformer.add_adapter(
            LoraConfig(
                r=lora.rank, lora_alpha=lora.alpha or lora.rank, lora_dropout=lora.dropout,
                target_modules=lora.target_modules, init_lora_weights="gaussian",
            ),
            adapter_name=ADAPTER,
        )  # fmt: skip
        trainable = [p for p in self.pipe.transformer.parameters() if p.requires_grad]
        if not trainable:
            raise LcError(
                f"lora.target_modules {lora.target_modules} matched no module of the transformer"
            )
        for parameter in trainable:  # LoRA weights train in fp32 even when the base is bf16
            parameter.data = parameter.data.float()
        if self.config.train.gradient_checkpointing:
            self.pipe.transformer.enable_gradient_checkpointing()
        optimizer = make_optimizer(trainable, self.config.optim, self.accelerator.device)
        self._distribute(optimizer)

    def _sharded_launch(self) -> bool:
        return fsdp_requested() and self.accelerator.num_processes > 1

    def _distribute(self, optimizer: torch.optim.Optimizer) -> None:
        """Shard the transformer (FSDP2) when the launch asked for FSDP, else let accelerate
        wrap it (DDP over several processes, nothing on one)."""
        if not self._sharded_launch():
            self.transformer, self.optimizer = self.accelerator.prepare(
                self.pipe.transformer, optimizer
            )
            self.trainable = [p for group in optimizer.param_groups for p in group["params"]]
            return
        if self.accelerator.mixed_precision == "fp16":
            raise LcError(
                "FSDP training in fp16 needs a sharded gradient scaler lc does not set up",
                hint="use train.mixed_precision: bf16",
            )
        # accelerate's own FSDP preparation runs only on accelerator devices (it leaves CPU
        # processes unsharded), so lc shards with torch's fully_shard itself, everywhere.
        names = {id(p): n for n, p in self.pipe.transformer.named_parameters()}
        model = shard_model(
            self.pipe.transformer, settings_from_launch(), self.accelerator.device.type
        )
        self.transformer, self.optimizer = model, optimizer
        self.trainable = repoint_optimizer(optimizer, names, model)

    # --- one example ----------------------------------------------------------------------------

    def _encode_caption(self, caption: str) -> tuple:
        with torch.no_grad():
            return self.pipe.encode_prompt(
                prompt=caption, prompt_2=None, device=self.accelerator.device,
                max_sequence_length=512,
            )  # fmt: skip

    def _text(self, caption: str) -> tuple:
        """(prompt_embeds, pooled, text_ids) on the training device; kept in CPU memory."""
        return self.text_cache.get(caption, self._encode_caption, self.accelerator.device)

    def _target_latents(self, sample: TrainingSample) -> torch.Tensor:
        cache = self.pipe.latent_cache  # a dataset image: the same file, the same latents
        namespace = (self.pipe.cache_namespace, str(self.pipe.vae.dtype))
        key = cache.key(*namespace, "target", sample.target_file)
        latents = cache.get(key)
        if latents is None:
            latents = self.pipe._encode_pixels(np.ascontiguousarray(sample.target), None)
            cache.put(key, latents)
        return latents

    def example_loss(self, sample: TrainingSample, sigma: float, noise_seed: int) -> torch.Tensor:
        """Flow-matching loss ||v(z_t) - (noise - z_0)||^2 on the noisy tokens only."""
        device = self.accelerator.device
        dtype = self.pipe.transformer.dtype
        with torch.no_grad():
            target = self._target_latents(sample)  # (1, L, 64)
            cond_tokens, cond_ids = self.pipe.encode_layers(
                sample.layers, fill=self.config.data.fill
            )
            prompt_embeds, pooled, text_ids = self._text(sample.caption)
        target = target.to(device, torch.float32)
        generator = torch.Generator("cpu").manual_seed(noise_seed)
        noise = torch.randn(target.shape, generator=generator).to(device)
        noisy = (1 - sigma) * target + sigma * noise  # z_t on the straight path
        grid = self.index.resolution // 16
        img_ids = torch.cat([torch.from_numpy(noisy_position_ids(grid, grid)), cond_ids]).to(
            device, dtype
        )
        guidance = torch.full([1], self.config.train.guidance, device=device, dtype=torch.float32)
        with self.accelerator.autocast():
            prediction = self.transformer(
                hidden_states=torch.cat([noisy.to(dtype), cond_tokens.to(device, dtype)], dim=1),
                timestep=torch.tensor([sigma], device=device, dtype=dtype),
                guidance=guidance if self.pipe.transformer.config.guidance_embeds else None,
                pooled_projections=pooled,
                encoder_hidden_states=prompt_embeds,
                txt_ids=text_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
        prediction = prediction[:, : target.shape[1]].float()  # the noisy tokens only
        return torch.nn.functional.mse_loss(prediction, noise - target)

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> Path:
        start = self._resume()
        steps, batch = self.config.train.steps, self.config.train.batch_size
        first = self.accelerator.process_index * batch  # this process's slice of the global batch
        writer = self._tensorboard()
        self.transformer.train()
        for step in range(start + 1, steps + 1):
            started = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for i in range(batch):
                rng = example_rng(self.config.seed, step, first + i)
                torch.manual_seed(int(rng.integers(2**62)))  # LoRA dropout, reproducible
                sigma = float(sample_sigmas(rng, 1, self.config.train, self.shift)[0])
                sample = sample_example(self.index, rng, self.sampling)
                noise_seed = int(rng.integers(2**62))
                # Gradients are reduced across processes once per step, after the last example.
                with gradient_sync(self.transformer, self.accelerator, i == batch - 1):
                    loss = self.example_loss(sample, sigma, noise_seed) / batch
                    self.accelerator.backward(loss)
                total += float(loss.detach())
            # The global batch's mean loss: the same number whatever the process count.
            total = float(self.accelerator.reduce(self._scalar(total), reduction="mean"))
            # The gradient's norm (clipped when max_grad_norm is set): checked with the loss
            # *before* the update, so a non-finite step never reaches the LoRA.
            norm = self._clip_gradients(self.config.optim.max_grad_norm or math.inf)
            if not (math.isfinite(total) and math.isfinite(norm)):
                self.optimizer.zero_grad(set_to_none=True)
                raise self._non_finite(step, total, norm)
            self.optimizer.step()
            seconds = time.perf_counter() - started
            self._log(step, total, seconds, batch / seconds, writer)
            if step % self.config.checkpoint_every == 0 or step == steps:
                self.save_checkpoint(step)
            if self.config.validation_canvases and (
                step % self.config.sample_every == 0 or step == steps
            ):
                self.render_samples(step)
        final = self._save_lora(self.output, steps)
        if writer is not None:
            writer.close()
        return final

    def _scalar(self, value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64, device=self.accelerator.device)

    def _clip_gradients(self, max_norm: float) -> float:
        """Clip the gradient to `max_norm` (inf: measure only); return its norm before."""
        if is_sharded(self.transformer):
            # The norm of the whole gradient: torch reduces the DTensor shards' norms.
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        else:
            norm = self.accelerator.clip_grad_norm_(self.trainable, max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        return float(norm)

    def _non_finite(self, step: int, loss: float, norm: float) -> LcError:
        what = (
            f"the loss became {loss}"
            if not math.isfinite(loss)
            else f"the gradient norm became {norm}"
        )
        latest = self.latest_checkpoint()
        kept = f"; the newest checkpoint is {latest.name}" if latest is not None else ""
        return LcError(
            f"{what} at step {step}: training stopped before that step's update, so the LoRA "
            f"is as it was after step {step - 1}{kept}",
            hint="lower optim.learning_rate or set optim.max_grad_norm, then start over with "
            "--overwrite (or check the dataset's images for damage)",
        )

    def _log(self, step: int, loss: float, seconds: float, speed: float, writer) -> None:
        if not self.accelerator.is_main_process:
            return  # one progress report and one metrics file for all processes
        if self.on_step:
            self.on_step(StepReport(step, self.config.train.steps, loss, speed))
        row = {
            "step": step, "loss": f"{loss:.6g}", "learning_rate": self.config.optim.learning_rate,
            "seconds": f"{seconds:.4f}", "samples_per_second": f"{speed:.4f}",
        }  # fmt: skip
        path = self.output / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer_csv = csv.DictWriter(handle, METRICS_FIELDS)
            if new:
                writer_csv.writeheader()
            writer_csv.writerow(row)
        if writer is not None:
            writer.add_scalar("loss", loss, step)
            writer.add_scalar("samples_per_second", speed, step)

    def _tensorboard(self):
        if self.config.tensorboard == "off" or not self.accelerator.is_main_process:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.config.tensorboard == "on":
                raise LcError(
                    "tensorboard: on, but the tensorboard package is not installed"
                ) from None
            return None
        return SummaryWriter(str(self.output / "tensorboard"))

    # --- checkpoints ----------------------------------------------------------------------------

    def _lora_state(self) -> dict[str, torch.Tensor]:
        """The LoRA's full weights in peft's naming on the main process (empty on the others).
        Every process must call it: a sharded model gathers its shards."""
        from peft import get_peft_model_state_dict

        model = self.accelerator.unwrap_model(self.transformer)
        full = full_trainable_state(model)  # by parameter name, adapter name included
        if not self.accelerator.is_main_process:
            return {}
        return get_peft_model_state_dict(model, state_dict=full, adapter_name=ADAPTER)

    def _save_lora(self, folder: Path, step: int) -> Path:
        """Write the LoRA in diffusers format (what `lc render --lora` reads), with its alpha
        and how it was trained (`lora_metadata`: fill, shift, rank, base model, ...)."""
        self.accelerator.wait_for_everyone()
        weights = self._lora_state()  # on every process: a sharded model gathers
        if self.accelerator.is_main_process:
            weights = {k: v.detach().float().cpu().contiguous() for k, v in weights.items()}
            model = self.accelerator.unwrap_model(self.transformer)
            adapter = model.peft_config[ADAPTER].to_dict()
            self.pipe.save_lora_weights(
                folder,
                transformer_lora_layers=weights,
                save_function=_lora_writer(adapter, self.lora_metadata(step)),
            )
        return folder / LORA_FILE

    def lora_metadata(self, step: int) -> dict[str, str]:
        """The `lc.*` keys written into the LoRA file at `step`: what reproducing it takes."""
        from .. import __version__
        from ..lora_metadata import METADATA_VERSION, encode_lc_metadata

        config, lora, train = self.config, self.config.lora, self.config.train
        targets = lora.target_modules
        return encode_lc_metadata({
            "metadata_version": METADATA_VERSION, "lc_version": __version__,
            "conditioning": "layered",
            "base_model": config.model, "base_revision": self.model_info.revision or config.revision,
            "base_config_sha256": self.model_info.config_sha256, "fill": config.data.fill,
            "shift": str(train.shift), "shift_value": self.shift,
            "timestep_sampling": train.timestep_sampling, "logit_mean": train.logit_mean,
            "logit_std": train.logit_std, "resolution": self.index.resolution,
            "image_tokens": self.image_tokens, "guidance": train.guidance,
            "sample_guidance": train.sample_guidance, "config_sha256": self.fingerprint, "rank": lora.rank,
            "alpha": lora.alpha or lora.rank, "dropout": lora.dropout,
            "target_modules": [targets] if isinstance(targets, str) else targets,
            "step": step, "steps": train.steps, "batch_size": train.batch_size,
            "processes": self.accelerator.num_processes,
            "learning_rate": config.optim.learning_rate, "optimizer": config.optim.name,
            "base_quantization": config.model_quantization, "seed": config.seed,
        })  # fmt: skip

    def save_checkpoint(self, step: int) -> Path:
        """Write `checkpoints/step-NNNNNNN/`: LoRA, optimizer state and step, atomically.

        Every process calls it (a sharded run gathers its shards); the main process writes full
        tensors, so any process count can resume from it. The sampling needs no saved state:
        each example's generator is seeded by (seed, step, index)."""
        final = self.output / "checkpoints" / f"step-{step:07d}"
        main = self.accelerator.is_main_process
        temp = final.with_name(final.name + TEMP_SUFFIX)
        if main:
            shutil.rmtree(temp, ignore_errors=True)
        self._save_lora(temp, step)
        optimizer = full_optimizer_state(
            self.accelerator.unwrap_model(self.transformer), _inner(self.optimizer)
        )
        if not main:
            self.accelerator.wait_for_everyone()
            return final
        torch.save(optimizer, temp / "optimizer.pt")
        state = {
            "step": step,
            "processes": self.accelerator.num_processes,
            "global_batch": self.accelerator.num_processes * self.config.train.batch_size,
            "config": self.config.model_dump(mode="json"),
            "config_sha256": self.fingerprint,
        }
        write_json_atomic(temp / "state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        temp.rename(final)
        for old in sorted((self.output / "checkpoints").glob("step-???????"))[
            : -self.config.keep_checkpoints
        ]:
            shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.output / "checkpoints").glob("step-???????"))
        return found[-1] if found else None

    def _resume(self) -> int:
        """Restore the latest checkpoint if `resume` was asked for; return the step reached.

        The main process reads the checkpoint and broadcasts it (the other processes, maybe on
        other machines, need not see the run folder)."""
        from accelerate.utils import broadcast_object_list

        self.output.mkdir(parents=True, exist_ok=True)
        main = self.accelerator.is_main_process
        checkpoint = self.latest_checkpoint() if self.resume and main else None
        step, weights, optimizer = 0, {}, {}
        if checkpoint is not None:
            step = int(read_json_bounded(checkpoint / "state.json")["step"])
            weights, optimizer = self._read_checkpoint(checkpoint)
        step = broadcast_object_list([step])[0]
        if step == 0:
            if main:  # --resume without a checkpoint: the rows of the steps redone go
                (self.output / "metrics.csv").unlink(missing_ok=True)
            return 0
        model = self.accelerator.unwrap_model(self.transformer)
        load_full_state(model, _inner(self.optimizer), weights, optimizer)
        if main:
            _truncate_metrics(self.output / "metrics.csv", step)
        return step

    def _read_checkpoint(self, checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict]:
        """A checkpoint's LoRA weights by parameter name, and its optimizer state."""
        from safetensors.torch import load_file

        model = self.accelerator.unwrap_model(self.transformer)
        # peft names a LoRA weight in the file as the parameter without its adapter name.
        names = {
            name.replace(f".{ADAPTER}", ""): name
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
        }
        saved = {
            key.removeprefix("transformer."): value
            for key, value in load_file(checkpoint / LORA_FILE).items()
        }
        optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        if saved.keys() != names.keys() or not all(
            isinstance(key, str) for key in optimizer.get("state", {})
        ):
            raise LcError(
                f"{checkpoint} does not fit this run: its LoRA or optimizer state is laid out "
                "differently (another lora config, or an older lc)",
                hint="resume with the config the run was started with, or start a new output_dir",
            )
        return {names[key]: value for key, value in saved.items()}, optimizer

    # --- samples --------------------------------------------------------------------------------

    def render_samples(self, step: int) -> list[Path]:
        """Render the validation canvases with the LoRA as it is now (layered mode)."""
        main = self.accelerator.is_main_process
        # A sharded transformer's forward gathers from every process: all render, main writes.
        if not (main or is_sharded(self.transformer)):
            return []
        from ..canvas import load_canvas
        from ..files import write_png_atomic
        from ..layers import build_layers

        self.transformer.eval()
        written = []
        for path in self.config.validation_canvases:
            canvas = load_canvas(path)
            output = self.pipe(
                prompt=canvas.spec.prompt, layers=build_layers(canvas), mode="layered", num_inference_steps=self.config.sample_steps,
                guidance_scale=self.config.train.sample_guidance, generator=torch.Generator("cpu").manual_seed(canvas.spec.seed or 0),
                output_type="np", fill=self.config.data.fill,
            )  # fmt: skip
            pixels = np.clip(np.rint(output.images[0] * 255), 0, 255).astype(np.uint8)
            if not main:
                continue
            written.append(
                write_png_atomic(
                    self.output / "samples" / f"step-{step:07d}" / f"{canvas.name}.png", pixels
                )
            )
        self.transformer.train()
        return written


def _lora_writer(adapter_config: dict, lc_metadata: dict[str, str]) -> Callable:
    """A `save_function` for diffusers' `save_lora_weights` that also writes lc's metadata.

    diffusers writes the peft config (where alpha lives) only with its own save function, so
    this one writes it the same way (`transformer.`-prefixed, under `lora_adapter_metadata`),
    beside the `lc.*` keys; atomically, so a killed run leaves no half-written LoRA.
    """
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors.torch import save_file

    packed = {
        f"transformer.{key}": sorted(value) if isinstance(value, set) else value
        for key, value in adapter_config.items()
    }
    metadata = {
        "format": "pt",
        LORA_ADAPTER_METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True),
        **lc_metadata,
    }

    def save(weights: dict[str, torch.Tensor], filename: str) -> None:
        with atomic_path(filename) as temp:
            save_file(weights, str(temp), metadata=metadata)

    return save


def _inner(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper (the state-dict helpers need its params)."""
    return getattr(optimizer, "optimizer", optimizer)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= step]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
