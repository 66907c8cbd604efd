"""GenAI builds are reused only when they were built from the same weights with the same recipe."""

from __future__ import annotations

import os

from kubedistill_jobs import genai_export


def _fake_builder(calls: list[str]):
    def build(hf_folder, out, precision, *, timeout=1800):
        out.mkdir(parents=True, exist_ok=True)
        (out / "genai_config.json").write_text("{}")
        calls.append(precision)
        return out
    return build


def test_a_build_is_reused_until_its_weights_or_recipe_change(tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"weights")
    calls: list[str] = []
    monkeypatch.setattr(genai_export, "build_genai_model", _fake_builder(calls))
    build = tmp_path / "build"
    genai_export.ensure_build(hf, build, "int4")
    genai_export.ensure_build(hf, build, "int4")
    assert calls == ["int4"]
    assert genai_export._precision_of(build) == "int4"
    genai_export.ensure_build(hf, build, "fp32")  # another precision
    assert calls == ["int4", "fp32"]
    later = (build / "genai_config.json").stat().st_mtime + 10
    os.utime(hf / "model.safetensors", (later, later))  # newer weights
    genai_export.ensure_build(hf, build, "fp32")
    assert calls == ["int4", "fp32", "fp32"]
    os.utime(hf / "model.safetensors", (1e9, 1e9))  # back to the past: only the marker decides below
    # An fp32 build marked by an earlier release is still fresh; its int4 build (output layer at 4 bits) is not.
    (build / genai_export.PRECISION_MARKER).write_text("fp32\n")
    genai_export.ensure_build(hf, build, "fp32")
    assert calls == ["int4", "fp32", "fp32"]
    genai_export.ensure_build(hf, build, "int4")
    (build / genai_export.PRECISION_MARKER).write_text("int4\n")
    genai_export.ensure_build(hf, build, "int4")
    assert calls == ["int4", "fp32", "fp32", "int4", "int4"]
