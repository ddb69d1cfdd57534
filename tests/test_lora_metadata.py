"""LoRA file metadata: the bounded header reader (against safetensors itself) and `lc lora info`."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from layercomposer.cli.main import app
from layercomposer.errors import InputError
from layercomposer.lora_metadata import (
    decode_lc_metadata,
    encode_lc_metadata,
    lora_fill,
    read_safetensors_header,
)

runner = CliRunner()
PEFT_KEYS = {
    "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
    "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
    "transformer.transformer_blocks.0.attn.to_k.lora_A.weight": torch.zeros(2, 32),
    "transformer.transformer_blocks.0.attn.to_k.lora_B.weight": torch.zeros(32, 2),
}


def test_header_matches_what_safetensors_reads(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = {"a": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.ones(7), "c": torch.ones(0)}
    save_file(tensors, path, metadata={"lc.fill": "grey", "other": "x"})
    metadata, entries = read_safetensors_header(path)
    with safe_open(str(path), "pt") as handle:
        assert metadata == handle.metadata()
        assert set(entries) == set(handle.keys())
        for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            assert entries[key]["shape"] == list(handle.get_slice(key).get_shape())
    assert entries["a"]["dtype"] == "BF16"
    assert lora_fill(path) == "grey"


def test_lc_metadata_round_trips_as_strings():
    values = {"fill": "black", "shift": "auto", "shift_value": 1.8776, "rank": 512, "alpha": 512.0}
    values["target_modules"] = ["to_q", "to_k"]
    encoded = encode_lc_metadata({**values, "base_revision": None})
    assert all(isinstance(v, str) for v in encoded.values()) and "lc.base_revision" not in encoded
    assert encoded["lc.rank"] == "512" and encoded["lc.target_modules"] == '["to_q", "to_k"]'
    assert decode_lc_metadata({**encoded, "format": "pt"}) == values
    assert decode_lc_metadata({"format": "pt"}) is None
    assert decode_lc_metadata({"lc.rank": "many", "lc.future": "1"}) == {
        "rank": "many",
        "future": "1",
    }  # written by another lc version: shown as text
    with pytest.raises(ValueError, match="not lc LoRA metadata"):
        encode_lc_metadata({"colour": "red"})


def _raw(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _header_file(tmp_path, header: object, data: bytes = b"", name="bad.safetensors"):
    text = json.dumps(header).encode()
    return _raw(tmp_path, name, struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _raw(p, "a.safetensors", struct.pack("<Q", 10**12) + b"{}"), "claims"),
        (lambda p: _raw(p, "b.safetensors", struct.pack("<Q", 5000) + b"{}"), "truncated"),
        (lambda p: _raw(p, "c.safetensors", b"\x01\x02"), "too short"),
        (lambda p: _raw(p, "d.safetensors", struct.pack("<Q", 3) + b"\xff\xfe{"), "not JSON"),
        (lambda p: _header_file(p, [1, 2]), "not a JSON object"),
        (lambda p: _header_file(p, {"__metadata__": {"k": 1}}), "strings to strings"),
        (
            lambda p: _header_file(
                p, {"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
            ),
            "invalid header entry",
        ),  # the data is not there
    ],
)
def test_bad_headers_are_refused_with_the_reason(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(InputError, match=message):
        read_safetensors_header(path)
    assert lora_fill(path) is None  # render: the LoRA loader reports it, not the fill lookup
    result = runner.invoke(app, ["lora", "info", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_lora_info_refuses_missing_files_folders_and_pickles(tmp_path):
    (tmp_path / "folder").mkdir()
    for target, message in [
        (tmp_path / "none.safetensors", "no such LoRA file"),
        (tmp_path / "folder", "expected one .safetensors file"),
        (_raw(tmp_path, "w.bin", b"x" * 16), "only .safetensors"),
        (_header_file(tmp_path, {}, name="empty.safetensors"), "no tensors"),
    ]:
        result = runner.invoke(app, ["lora", "info", str(target)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_lora_info_on_a_lora_without_lc_metadata_says_so(tmp_path):
    from diffusers import FluxKontextPipeline

    layers = {k.removeprefix("transformer."): v for k, v in PEFT_KEYS.items()}
    FluxKontextPipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=layers,
        transformer_lora_adapter_metadata={"r": 4, "lora_alpha": 8, "target_modules": ["to_q"]},
    )
    result = runner.invoke(app, ["lora", "info", str(tmp_path)])  # a folder: its LoRA
    assert result.exit_code == 0, result.output
    assert "no lc metadata" in result.output and "transformer.lora_alpha" in result.output
    result = runner.invoke(app, ["lora", "info", str(tmp_path), "--json"])
    info = json.loads(result.stdout)
    assert info["lc"] is None and info["rank"] == 4 and info["tensors"] == 4
    assert info["format"] == "diffusers" and info["adapter"]["transformer.lora_alpha"] == 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_info_gives_the_rank_per_projection_of_fused_layers(tmp_path, dtype):
    # No lc metadata: the up matrix tells an export (block-diagonal: q, k, v of rank 4 each)
    # from a LoRA trained on the fused qkv itself (dense: rank 12 across all three).
    generator = torch.Generator().manual_seed(0)
    blocks = [torch.randn(32, 4, generator=generator) for _ in range(3)]
    layouts = {
        "split": torch.block_diag(*blocks),
        "dense": torch.randn(96, 12, generator=generator),
    }
    plain = {  # a layer that is not fused, of a smaller rank
        "diffusion_model.double_blocks.0.img_attn.proj.lora_down.weight": torch.ones(2, 32),
        "diffusion_model.double_blocks.0.img_attn.proj.lora_up.weight": torch.ones(32, 2),
    }
    for layout, up in layouts.items():
        name = "diffusion_model.double_blocks.0.img_attn.qkv"
        sd = {f"{name}.lora_down.weight": torch.randn(12, 32), f"{name}.lora_up.weight": up}
        sd = {k: v.to(dtype) for k, v in {**sd, **plain}.items()}
        save_file(sd, tmp_path / f"{layout}.safetensors")
        path = str(tmp_path / f"{layout}.safetensors")
        result = runner.invoke(app, ["lora", "info", path], env={"COLUMNS": "200"})  # no wrap
        assert result.exit_code == 0, result.output
        text = result.output
        result = runner.invoke(app, ["lora", "info", path, "--json"])
        info = json.loads(result.stdout)
        (fused,) = info["fused"]
        assert fused["stored_rank"] == 12 and fused["source"] == "tensors"
        if layout == "split":
            assert info["rank"] == 4 and fused["projections"] == 3
            assert "4 (fused qkv: 12 = 3 × 4)" in text
        else:
            assert info["rank"] == 12 and fused["projections"] == 1
            assert "12 (fused qkv: 12, one LoRA across its projections)" in text
