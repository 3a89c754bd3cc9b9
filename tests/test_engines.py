"""engines/: cache keys, profiles, FP16 + FP32 pins, cache hits and repairs, CLI — against the fake tensorrt module.

TensorRT itself cannot be installed here; ``tests/fake_tensorrt.make_fake_tensorrt`` records what the builder asks of it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys

import onnx
import pytest

from rtfer.engines import EngineBuildError, EngineCache, EngineSpec, GpuInfo, build_engine, fp32_node_names
from rtfer.engines.__main__ import main as engines_main
from rtfer.engines.cache import default_cache_dir
from rtfer.engines.precision import Fp32Policy, mark_fp32_layers
from fake_tensorrt import ILayer, INetworkDefinition, ITensor, make_fake_tensorrt, write_test_onnx

GPU = GpuInfo("NVIDIA Fake 4090", (8, 9))


@pytest.fixture()
def trt(monkeypatch):
    fake = make_fake_tensorrt("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_test_onnx(tmp_path_factory.mktemp("onnx") / "member.onnx")


@pytest.fixture()
def onnx_path(model, tmp_path):
    path = tmp_path / "member.onnx"
    shutil.copy(model[0], path)
    return path


def _build(onnx_path, cache, **kw):
    kw.setdefault("input_size", 8)
    return build_engine(onnx_path, cache=cache, gpu=GPU, **kw)


def test_cache_key_is_stable_and_changes_with_every_field():
    base = EngineSpec(onnx_sha256="a" * 64, precision="fp16", min_batch=1, opt_batch=8, max_batch=64, input_size=112,
                      gpu_name="NVIDIA A10", compute_capability=(8, 6), trt_version="10.3.0", fp32_policy="p")
    assert base.key() == dataclasses.replace(base).key()
    changes = {"onnx_sha256": "b" * 64, "precision": "fp32", "min_batch": 2, "opt_batch": 16, "max_batch": 128,
               "input_size": 224, "gpu_name": "NVIDIA A100", "compute_capability": (8, 0), "trt_version": "10.4.0",
               "fp32_policy": "none"}
    assert set(changes) == {f.name for f in dataclasses.fields(EngineSpec)}
    keys = {base.key()} | {dataclasses.replace(base, **{k: v}).key() for k, v in changes.items()}
    assert len(keys) == len(changes) + 1


def test_build_keys_follow_onnx_content_and_arguments(trt, onnx_path, tmp_path):
    cache = EngineCache(tmp_path / "cache")
    first = _build(onnx_path, cache)
    assert _build(onnx_path, cache) == first
    others = {_build(onnx_path, cache, max_batch=32), _build(onnx_path, cache, precision="fp32"),
              _build(onnx_path, cache, fp32_layers=None),
              build_engine(onnx_path, input_size=8, cache=cache, gpu=GpuInfo("NVIDIA Other", (9, 0)))}
    write_test_onnx(onnx_path, seed=1)  # same graph, other weights
    others.add(_build(onnx_path, cache))
    assert first not in others and len(others) == 5


def test_profile_workspace_and_timing_cache(trt, onnx_path, tmp_path):
    _build(onnx_path, EngineCache(tmp_path), min_batch=1, opt_batch=8, max_batch=64, workspace_gb=1.5)
    config = trt.state.last_config
    assert len(config.profiles) == 1
    assert config.profiles[0].get_shape("input") == [(1, 3, 8, 8), (8, 3, 8, 8), (64, 3, 8, 8)]
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == int(1.5 * (1 << 30))
    assert config.get_timing_cache() is not None


def test_opt_batch_is_clamped_and_bad_profiles_rejected(trt, onnx_path, tmp_path):
    _build(onnx_path, EngineCache(tmp_path), max_batch=4)
    assert trt.state.last_config.profiles[0].get_shape("input")[1] == (4, 3, 8, 8)
    with pytest.raises(EngineBuildError, match="min <= opt <= max"):
        _build(onnx_path, EngineCache(tmp_path), min_batch=16, opt_batch=8)
    with pytest.raises(EngineBuildError, match="input is 8x8 but input_size is 112"):
        _build(onnx_path, EngineCache(tmp_path), input_size=112)
    with pytest.raises(EngineBuildError, match="precision"):
        _build(onnx_path, EngineCache(tmp_path), precision="int8")


def test_fp16_flag_and_fp32_pins_on_the_right_layers(trt, model, onnx_path, tmp_path):
    _, expected = model
    _build(onnx_path, EngineCache(tmp_path))
    net, config = trt.state.last_network, trt.state.last_config
    assert ("create_network", 0) in trt.state.calls  # weakly typed: FP16 flag + precision constraints
    assert config.get_flag(trt.BuilderFlag.FP16) and config.get_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    pinned = {layer.name for layer in net.layers if layer.precision_is_set}
    assert pinned == expected
    for layer in net.layers:
        if layer.name in expected:
            assert layer.precision == trt.float32
            assert all(layer.get_output_type(j) == trt.float32 and layer.output_type_is_set(j)
                       for j in range(layer.num_outputs))
        else:
            assert not any(layer.output_type_is_set(j) for j in range(layer.num_outputs))
    assert "/head/batchnorm/BatchNormalization" not in pinned and "/head/Div" not in pinned


def test_policy_rules_separately(model):
    path, expected = model
    m = onnx.load(str(path))
    by_structure = fp32_node_names(m, Fp32Policy(name_patterns=()))
    assert "node_of_ln_std" in by_structure and "/stages.0/blocks.0/mlp/grn/Mul_1" not in by_structure
    by_name = fp32_node_names(m, Fp32Policy(structural=False))
    assert by_name == {n for n in expected if "/grn/" in n}
    extra = fp32_node_names(m, Fp32Policy(names=("/head/Relu",)))
    assert extra == expected | {"/head/Relu"}


def test_fp32_build_is_strongly_typed_without_pins(trt, onnx_path, tmp_path):
    _build(onnx_path, EngineCache(tmp_path), precision="fp32")
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", strongly) in trt.state.calls
    assert not trt.state.last_config.get_flag(trt.BuilderFlag.FP16)
    assert not any(layer.precision_is_set for layer in trt.state.last_network.layers)


def test_no_policy_pins_nothing(trt, onnx_path, tmp_path):
    _build(onnx_path, EngineCache(tmp_path), fp32_layers=None)
    assert trt.state.last_config.get_flag(trt.BuilderFlag.FP16)
    assert not trt.state.last_config.get_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    assert not any(layer.precision_is_set for layer in trt.state.last_network.layers)


def test_cache_hit_skips_building(trt, onnx_path, tmp_path):
    cache = EngineCache(tmp_path)
    path = _build(onnx_path, cache)
    assert trt.state.builds == 1 and path.parent == tmp_path and path.suffix == ".engine"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["max_batch"] == 64 and meta["gpu_name"] == GPU.name and meta["trt_version"] == "10.3.0"
    assert _build(onnx_path, cache) == path
    assert trt.state.builds == 1
    assert json.loads(path.read_bytes())["magic"] == "fake-tensorrt-plan"
    assert [e["key"] for e in cache.entries()] == [path.stem]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_sidecar"])
def test_corrupted_entry_is_rebuilt(trt, onnx_path, tmp_path, damage, caplog):
    cache = EngineCache(tmp_path)
    path = _build(onnx_path, cache)
    good = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(good[:10])
    elif damage == "garbage":
        path.write_bytes(b"\0" * len(good))
    else:
        path.with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING, logger="rtfer.engines.cache"):
        again = _build(onnx_path, cache)
    assert again == path and again.read_bytes() == good and trt.state.builds == 2
    assert "rebuilding" in caplog.text


def test_timing_cache_is_shared_per_gpu_and_version(trt, onnx_path, tmp_path):
    cache = EngineCache(tmp_path)
    _build(onnx_path, cache)
    timed = trt.state.layers_timed
    assert timed > 0 and cache.timing_cache_path(GPU, "10.3.0").is_file()
    _build(onnx_path, cache, max_batch=16)  # another engine, same layers: every timing comes from the cache
    assert trt.state.builds == 2 and trt.state.layers_timed == timed
    build_engine(onnx_path, input_size=8, cache=cache, gpu=GpuInfo("NVIDIA Other", (9, 0)))
    assert trt.state.layers_timed == 2 * timed  # another GPU starts its own timing cache


def test_unreadable_timing_cache_is_ignored(trt, onnx_path, tmp_path, caplog):
    cache = EngineCache(tmp_path)
    cache.save_timing_cache(GPU, "10.3.0", b"not a timing cache")
    with caplog.at_level(logging.WARNING, logger="rtfer.engines.builder"):
        assert _build(onnx_path, cache).is_file()
    assert "ignoring unreadable timing cache" in caplog.text
    assert cache.load_timing_cache(GPU, "10.3.0").startswith(b"FAKE-TIMING-CACHE")


def test_errors_are_one_line(monkeypatch, onnx_path, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(EngineBuildError, match=r"^TensorRT is not installed: pip install 'rtfer\[trt\]'$"):
        _build(onnx_path, EngineCache(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("11.0.0"))
    with pytest.raises(EngineBuildError, match="strongly typed networks only") as info:
        _build(onnx_path, EngineCache(tmp_path))
    assert "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(EngineBuildError, match="cannot parse bad.onnx"):
        _build(bad, EngineCache(tmp_path))
    with pytest.raises(EngineBuildError, match="not found"):
        _build(tmp_path / "missing.onnx", EngineCache(tmp_path))


def test_mark_fp32_layers_name_matching():
    import fake_tensorrt as fake

    def layer(name, dtype=fake.DataType.FLOAT, type_=fake.LayerType.ELEMENTWISE):
        return ILayer(name, type_, [ITensor(name + ":0", dtype, (-1, 4))], "?")

    net = INetworkDefinition(0)
    net.layers = [layer("a/Div"), layer("a/Div_1"), layer("b/Sqrt_1"), layer("b/Shape", fake.DataType.INT64),
                  layer("c/LayerNormalization_3", type_=fake.LayerType.NORMALIZATION), layer("d/Conv")]
    trt = make_fake_tensorrt()
    result = mark_fp32_layers(trt, net, {"a/Div", "b/Sqrt", "b/Shape", "z/Missing"},
                              all_node_names={"a/Div", "a/Div_1", "b/Sqrt", "b/Shape", "d/Conv"})
    # "a/Div_1" is its own ONNX node, "b/Sqrt_1" an extra layer of "b/Sqrt"; integer layers are never pinned
    assert result.layers == ["a/Div", "b/Sqrt_1", "c/LayerNormalization_3"]
    assert result.unmatched == ["b/Shape", "z/Missing"]


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RTFER_ENGINE_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" and EngineCache().root == tmp_path / "x"
    monkeypatch.delenv("RTFER_ENGINE_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "rtfer", "engines")


def test_cli_builds_every_bundle_member(trt, model, tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(model[0], bundle / "a.onnx")
    write_test_onnx(bundle / "b.onnx", input_size=16, seed=2)
    (bundle / "bundle.json").write_text(json.dumps({"format": "rtfer-bundle", "members": [
        {"name": "a", "file": "a.onnx", "input_size": 8}, {"name": "b", "file": "b.onnx", "input_size": 16}]}))
    monkeypatch.setattr("rtfer.engines.builder.detect_gpu", lambda device=0: GPU)
    cache = tmp_path / "cache"
    assert engines_main(["build", str(bundle), "--max-batch", "16", "--cache", str(cache)]) == 0
    assert trt.state.builds == 2
    assert trt.state.last_config.profiles[0].get_shape("input")[2] == (16, 3, 16, 16)
    out = capsys.readouterr().out
    assert "a.onnx: " in out and "b.onnx: " in out
    assert len(list(cache.glob("*.engine"))) == 2
    assert engines_main(["list", "--cache", str(cache)]) == 0
    assert capsys.readouterr().out.count("batch 1/8/16") == 2
    assert engines_main(["build", str(tmp_path / "nowhere"), "--cache", str(cache)]) == 2
    assert "is not a model bundle" in capsys.readouterr().err


def test_policy_on_the_torch_dynamo_export_form():
    """What training/export.py emits for ConvNeXt-V2 (checked on convnextv2_test): a LayerNormalization op and
    GRN as ReduceL2 -> ReduceMean -> Add -> Div, with generated node names. Found by op type and structure."""
    from onnx import TensorProto, helper

    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "w", "b"], ["ln"], name="node_layer_norm", axis=-1),
             n("ReduceL2", ["ln"], ["gx"], name="node_linalg_vector_norm", axes=[1, 2], keepdims=1),
             n("ReduceMean", ["gx"], ["gm"], name="node_mean", axes=[-1], keepdims=1),
             n("Add", ["gm", "eps"], ["ge"], name="node_add_7"),
             n("Div", ["gx", "ge"], ["nx"], name="node_div"),
             n("Mul", ["ln", "nx"], ["y0"], name="node_mul_3"),
             n("Add", ["y0", "ln"], ["y"], name="node_add_8")]
    vi = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["batch", 4, 4, 8]) for k in ("x", "y")]
    graph = helper.make_graph(nodes, "g", [vi[0]], [vi[1]], [
        helper.make_tensor("w", TensorProto.FLOAT, [8], [1.0] * 8), helper.make_tensor("b", TensorProto.FLOAT, [8],
                                                                                       [0.0] * 8),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fp32_node_names(model, Fp32Policy(name_patterns=())) == {
        "node_layer_norm", "node_linalg_vector_norm", "node_mean", "node_add_7", "node_div"}


def test_detect_gpu_reads_nvidia_smi_and_fails_clearly(monkeypatch):
    import subprocess

    import rtfer.engines.builder as builder

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without torch
    monkeypatch.setattr(builder.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="NVIDIA H100 80GB HBM3, 9.0\n", stderr="")

    monkeypatch.setattr(builder.subprocess, "run", fake_run)
    assert builder.detect_gpu(1) == GpuInfo("NVIDIA H100 80GB HBM3", (9, 0))
    assert "--id=1" in seen[0]
    monkeypatch.setattr(builder.shutil, "which", lambda name: None)
    with pytest.raises(EngineBuildError, match="no CUDA device 0 found"):
        builder.detect_gpu(0)
