"""torch_io reads torch.save files like torch.load(weights_only=True) does, and never runs their pickle code."""
import argparse
import os
import pickle
import pickletools
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file as save_numpy_safetensors

from vfm_jax.converters.torch_io import (
    Opaque, TorchType, UnsafeCheckpointError, load_state_dict, load_weights, unwrap,
)

try:
    import torch
except ImportError:  # parity tests need torch as the reference; the rest run without it
    torch = None

parity = pytest.mark.parity
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (requirements-dev.txt)")


@pytest.fixture(params=["zip", "legacy"])
def save(request, tmp_path):
    """save(obj) -> path of a torch.save file in the default zip format or the pre-1.6 legacy one."""
    def _save(obj, name="ckpt.pth"):
        path = tmp_path / name
        torch.save(obj, path, _use_new_zipfile_serialization=request.param == "zip")
        return path
    return _save


def _as_numpy(t):
    """torch's value as numpy, in a dtype numpy can compare exactly (bf16/float8 widened to float32)."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
        return t.float().numpy()
    return t.numpy()


def _expected_dtype(torch_dtype):
    special = {torch.bfloat16: ml_dtypes.bfloat16, torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn,
               torch.float8_e5m2: ml_dtypes.float8_e5m2}
    return np.dtype(special.get(torch_dtype) or torch.empty(0, dtype=torch_dtype).numpy().dtype)


def _assert_matches(ours, ref):
    """Same tree as torch.load's, every tensor an array of the stored dtype with equal values."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(ours, np.ndarray) and ours.dtype == _expected_dtype(ref.dtype)
        expected = _as_numpy(ref)
        assert ours.shape == expected.shape
        np.testing.assert_array_equal(ours.astype(expected.dtype), expected)
    elif isinstance(ref, dict):
        assert type(ours) is type(ref) and list(ours) == list(ref)
        for key in ref:
            _assert_matches(ours[key], ref[key])
    else:
        assert ours == ref


def _check_against_torch(path):
    ours = load_state_dict(path)
    _assert_matches(ours, torch.load(path, weights_only=True))
    return ours


@parity
@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16",
                                   "int8", "uint8", "bool", "complex64"])
def test_dtypes_match_torch(save, dtype):
    dtype = getattr(torch, dtype)
    values = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)) * 50
    tensor = values > 0 if dtype == torch.bool else values.to(dtype)
    ours = _check_against_torch(save({"w": tensor}))
    assert ours["w"].flags.c_contiguous and ours["w"].flags.writeable


@parity
@needs_torch
def test_dtypes_without_a_typed_storage(save):
    """uint16 and float8 are saved as UntypedStorage bytes plus a dtype (`_rebuild_tensor_v3`).

    torch 2.13 itself cannot load them back from the legacy format, so the saved tensors are the reference.
    """
    base = torch.linspace(-4, 4, 12).reshape(3, 4)
    tensors = {
        "u16": torch.tensor([[0, 1, 65535], [7, 300, 40000]], dtype=torch.uint16),
        "f8": base.to(torch.float8_e4m3fn),
        "f8_t": base.to(torch.float8_e5m2).t(),
    }
    path = save(tensors)
    _assert_matches(load_state_dict(path), tensors)
    if zipfile.is_zipfile(path):
        _assert_matches(load_state_dict(path), torch.load(path, weights_only=True))


@parity
@needs_torch
def test_shapes_and_views_match_torch(save):
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    shared = torch.arange(10, dtype=torch.int64)
    tied = torch.randn(4, 3)
    ours = _check_against_torch(save({
        "scalar": torch.tensor(3.5),
        "int_scalar": torch.tensor(7),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(0, 3),
        "transposed": base[0].t(),
        "permuted": base.permute(2, 0, 1),
        "sliced": base[1:, 2:, 1:4],
        "stepped": base[:, ::2, 1::3],
        "expanded": torch.ones(3, 1).expand(3, 4),
        "head": shared[:4],
        "tail": shared[6:],
        "strided_tail": shared[3::2],
        "tied_a": tied,
        "tied_b": tied,
    }))
    assert ours["scalar"].shape == () and ours["empty_2d"].shape == (0, 3)
    assert ours["tied_a"] is ours["tied_b"]  # one tensor saved twice is one array, as in torch
    views = [ours[k] for k in ("head", "tail", "strided_tail")]
    for i, a in enumerate(views):
        assert a.flags.c_contiguous
        for b in views[i + 1:]:
            assert not np.shares_memory(a, b)
    ours["head"][:] = -1
    np.testing.assert_array_equal(ours["strided_tail"], [3, 5, 7, 9])


@parity
@needs_torch
def test_parameters_and_neg_conj_bits_match_torch(save):
    param = torch.nn.Parameter(torch.randn(2, 3))
    with_state = torch.nn.Parameter(torch.randn(4))
    with_state.tag = "kept by _rebuild_parameter_with_state"
    complex_values = torch.randn(3, dtype=torch.complex64)
    _check_against_torch(save({
        "param": param,
        "param_with_state": with_state,
        "neg": torch.randn(3)._neg_view(),
        "conj": complex_values.conj(),
    }))


@parity
@needs_torch
def test_module_state_dict_and_training_checkpoint(save):
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Conv3d(2, 3, (1, 2, 2)))
    sd = module.state_dict()
    ours = _check_against_torch(save(sd))
    assert type(ours) is OrderedDict and list(ours) == list(sd)

    path = save({"model": sd, "epoch": 3}, "train.pth")
    raw = _check_against_torch(path)
    assert raw["epoch"] == 3 and type(raw["model"]) is OrderedDict
    weights = load_weights(path)
    assert list(weights) == list(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(weights[key], value.numpy())


@parity
@needs_torch
def test_ddp_checkpoint(save):
    sd = torch.nn.Linear(2, 2).state_dict()
    path = save({"module": OrderedDict((f"module.{k}", v) for k, v in sd.items()), "step": 10})
    weights = load_weights(path)
    assert list(weights) == ["weight", "bias"]
    np.testing.assert_array_equal(weights["bias"], sd["bias"].numpy())


@parity
@needs_torch
def test_namespace_args_need_allow_unknown_classes(save):
    """Official UMT/UniFormerV2 checkpoints keep an argparse.Namespace under 'args' next to optimizer state."""
    module = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(module.parameters(), betas=(0.9, 0.95))
    module(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    sd = module.state_dict()
    path = save({"model": sd, "optimizer": optimizer.state_dict(), "scaler": torch.amp.GradScaler("cpu").state_dict(),
                 "args": argparse.Namespace(lr=1e-3, model="vit_b16"), "epoch": 5})
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace"):
        load_state_dict(path)
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace"):
        load_weights(path)

    raw = load_state_dict(path, allow_unknown_classes=True)
    args = raw["args"]
    assert isinstance(args, Opaque) and args.qualname == "argparse.Namespace"
    assert args.state == {"lr": 1e-3, "model": "vit_b16"} and raw["epoch"] == 5
    assert raw["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    np.testing.assert_array_equal(raw["optimizer"]["state"][0]["exp_avg"],
                                  optimizer.state_dict()["state"][0]["exp_avg"].numpy())
    weights = load_weights(path, allow_unknown_classes=True)
    np.testing.assert_array_equal(weights["weight"], sd["weight"].numpy())


@parity
@needs_torch
def test_whole_module_in_legacy_format(tmp_path):
    """Legacy saves of an nn.Module name its class in the persistent id; the tensors beside it still load."""
    path = tmp_path / "legacy.pth"
    weight = torch.randn(3)
    torch.save({"w": weight, "net": torch.nn.Linear(2, 2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.nn\.modules\.linear\.Linear"):
        load_state_dict(path)
    raw = load_state_dict(path, allow_unknown_classes=True)
    assert isinstance(raw["net"], Opaque) and raw["net"].qualname == "torch.nn.modules.linear.Linear"
    np.testing.assert_array_equal(load_weights(path, allow_unknown_classes=True)["w"], weight.numpy())


class _Payload:
    """Pickles as a call of `function(argument)`: what a hostile checkpoint smuggles in."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@parity
@needs_torch
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_malicious_checkpoint_runs_nothing(save, tmp_path, attack):
    marker = tmp_path / "pwned"
    if attack == "os.system":
        payload, qualname = _Payload(os.system, f"touch {marker}"), f"{os.system.__module__}.system"
    else:
        payload, qualname = _Payload(eval, f"open({str(marker)!r}, 'w').close()"), "builtins.eval"
    weight = torch.randn(2, 2)
    path = save({"model": {"w": weight}, "payload": payload})

    with pytest.raises(UnsafeCheckpointError, match=qualname.replace(".", r"\.")):
        load_state_dict(path)
    assert not marker.exists()

    raw = load_state_dict(path, allow_unknown_classes=True)
    assert not marker.exists()
    assert isinstance(raw["payload"], Opaque) and raw["payload"].qualname == qualname
    assert raw["payload"].args == (payload.argument,)
    np.testing.assert_array_equal(load_weights(path, allow_unknown_classes=True)["w"], weight.numpy())
    assert not marker.exists()


def _short_str(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _zip_checkpoint(path, data_pkl: bytes, **records):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", data_pkl)
        for name, data in records.items():
            archive.writestr(f"ckpt/{name}", data)
    return path


@pytest.mark.parametrize("module, name", [
    ("torch", "load"),
    ("torch._utils", "_rebuild_tensor_v2.__globals__"),  # a dotted name must not walk attributes
    ("builtins", "getattr"),
    ("numpy", "dtype"),
])
@pytest.mark.parametrize("allow_unknown_classes", [False, True])
def test_only_exact_allowlisted_globals_resolve(tmp_path, module, name, allow_unknown_classes):
    """Hand-written pickles (protocol 4 STACK_GLOBAL) calling a global that is not on the allowlist."""
    data_pkl = (pickle.PROTO + b"\x04" + _short_str(module) + _short_str(name) + pickle.STACK_GLOBAL
                + _short_str("touch-nothing") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    path = _zip_checkpoint(tmp_path / "crafted.pth", data_pkl)
    if not allow_unknown_classes:
        with pytest.raises(UnsafeCheckpointError, match=f"{module}.{name}".replace(".", r"\.")):
            load_state_dict(path)
    else:  # the stand-in comes back, which is not a dict
        with pytest.raises(ValueError, match="expected a dict"):
            load_state_dict(path, allow_unknown_classes=True)


def test_plain_data_needs_no_classes(tmp_path):
    """bytes, sets, complex numbers, torch.Size and dtype objects load with the default allowlist."""
    data = {"blob": b"\x00\xffab", "empty": b"", "tags": {"a", "b"}, "frozen": frozenset([1]), "z": 1 + 2j,
            "ba": bytearray(b"x")}
    path = _zip_checkpoint(tmp_path / "plain.pth", pickle.dumps(data, protocol=2))
    assert load_state_dict(path) == data
    size_and_dtype = (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT
                      + _short_str("size") + b"ctorch\nSize\n" + pickle.MARK + pickle.BININT1 + b"\x02"
                      + pickle.BININT1 + b"\x03" + pickle.TUPLE + pickle.TUPLE1 + pickle.REDUCE + pickle.SETITEM
                      + _short_str("dtype") + b"ctorch\nbfloat16\n" + pickle.SETITEM + pickle.STOP)
    loaded = load_state_dict(_zip_checkpoint(tmp_path / "size.pth", size_and_dtype))
    assert loaded == {"size": (2, 3), "dtype": TorchType("bfloat16", np.dtype(ml_dtypes.bfloat16))}


@parity
@needs_torch
def test_legacy_stream_is_little_endian_with_element_counts(tmp_path):
    """The pre-1.6 layout we parse: after the pickles, int64 LE element count then the bytes, per storage."""
    path = tmp_path / "legacy.pth"
    torch.save({"h": torch.tensor([1.0, -2.0], dtype=torch.float16)}, path, _use_new_zipfile_serialization=False)
    tail = path.read_bytes()[-12:]
    assert int.from_bytes(tail[:8], "little") == 2
    np.testing.assert_array_equal(np.frombuffer(tail[8:], "<f2"), [1.0, -2.0])
    assert load_state_dict(path)["h"].dtype == np.float16


@parity
@needs_torch
def test_big_endian_zip_matches_torch(tmp_path):
    """A checkpoint written on a big-endian machine: storages byte-swapped and byteorder says 'big'."""
    tensors = {"f": torch.randn(3, 2), "h": torch.randn(4).to(torch.bfloat16), "i": torch.arange(5) * 1000,
               "c": torch.randn(3, dtype=torch.complex64), "b": torch.tensor([True, False])}
    little = tmp_path / "little.pth"
    torch.save(tensors, little)
    scalar = {"f": "f4", "h": "u2", "i": "i8", "c": "f4", "b": "u1"}  # swap unit per storage, keys '0'.. in order
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                unit = scalar[list(tensors)[int(name.rsplit("/", 1)[1])]]
                data = np.frombuffer(data, unit).byteswap().tobytes()
            dst.writestr(name, data)
    _assert_matches(load_state_dict(big), torch.load(big, weights_only=True))
    _assert_matches(load_state_dict(big), tensors)


@parity
@needs_torch
def test_truncated_storage_is_an_error(tmp_path):
    path = tmp_path / "full.pth"
    torch.save({"w": torch.randn(4, 4)}, path)
    cut = tmp_path / "cut.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(cut, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name)[:10] if name.endswith("/data/0") else src.read(name))
    with pytest.raises(ValueError, match="has 10 bytes; a tensor needs 64"):
        load_state_dict(cut)


def _net():
    """Nested modules with state of every kind (torch is imported lazily, so classes are built on call)."""

    class Block(torch.nn.Module):
        """A None parameter (no bias), buffers (one non-persistent, one None), plain attributes."""

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 2, bias=False)
            self.register_buffer("counts", torch.arange(4))
            self.register_buffer("scale", torch.tensor([0.5, 2.0], dtype=torch.float16), persistent=False)
            self.register_buffer("unused", None)
            self.mask = torch.tensor([1.0, -1.0])  # a plain tensor attribute: not state
            self.steps = 5

        def forward(self, x):
            return self.proj(x) * self.scale.float() + self.mask * self.steps + self.counts[:2]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
            self.tied = self.head[0].weight  # one parameter under two names
            self.temperature = torch.nn.Parameter(torch.tensor(0.07))
            self.register_buffer("input_resolution", torch.tensor(24))

        def forward(self, x):
            return self.head(self.block(x)) / self.temperature + self.tied.sum()

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.head[1].weight.normal_()
    return net


def _jit_save(module, path, mode, example):
    compiled = torch.jit.script(module) if mode == "script" else torch.jit.trace(module, example)
    torch.jit.save(compiled, path)
    return path


@parity
@needs_torch
@pytest.mark.parametrize("mode", ["script", "trace"])
def test_torchscript_archive_matches_jit_state_dict(tmp_path, mode):
    """`torch.jit.load(p).state_dict()`: parameters and buffers, non-persistent ones too; no plain attributes."""
    net = _net()
    path = _jit_save(net, tmp_path / "net.pt", mode, torch.randn(1, 3))
    ref = torch.jit.load(path).state_dict()
    ours = load_state_dict(path)
    _assert_matches(ours, ref)
    assert set(ours) == set(net.state_dict()) | {"block.scale"}  # scripting forgets `persistent=False`
    assert ours["tied"] is ours["head.0.weight"]
    _assert_matches(load_weights(path), dict(ref))


def _insert_before_last(data: bytes, opcode: str, insert: bytes) -> bytes:
    """`insert` spliced into a pickle just before its last `opcode`."""
    position = [pos for op, _, pos in pickletools.genops(data) if op.name == opcode][-1]
    return data[:position] + insert + data[position:]


def _edit_data_pkl(src, dst, edit):
    with zipfile.ZipFile(src) as source, zipfile.ZipFile(dst, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, edit(data) if name.endswith("/data.pkl") else data)
    return dst


@parity
@needs_torch
def test_torchscript_with_other_classes_needs_allow_unknown_classes(tmp_path):
    """Only `__torch__.*` classes are let in: a List[int] attribute (`torch.jit._pickle.build_intlist`) is not."""
    net = _net()
    net.block.sizes = [2, 3]
    path = _jit_save(net, tmp_path / "net.pt", "script", None)
    with pytest.raises(UnsafeCheckpointError, match=r"torch\.jit\._pickle\.build_intlist"):
        load_state_dict(path)
    _assert_matches(load_state_dict(path, allow_unknown_classes=True), torch.jit.load(path).state_dict())


@parity
@needs_torch
@pytest.mark.parametrize("module", ["os", "__torch__x"])
def test_malicious_torchscript_archive_runs_nothing(tmp_path, module):
    """A call of `<module>.system` set as an attribute of the root module: refused, or an inert stand-in."""
    marker = tmp_path / "pwned"
    path = _jit_save(_net(), tmp_path / "net.pt", "script", None)
    payload = (_short_str("payload") + f"c{module}\nsystem\n".encode() + _short_str(f"touch {marker}")
               + pickle.TUPLE1 + pickle.REDUCE + pickle.SETITEM)
    crafted = _edit_data_pkl(path, tmp_path / "crafted.pt", lambda d: _insert_before_last(d, "BUILD", payload))
    with pytest.raises(UnsafeCheckpointError, match=rf"{module}\.system"):
        load_state_dict(crafted)
    _assert_matches(load_state_dict(crafted, allow_unknown_classes=True), torch.jit.load(path).state_dict())
    assert not marker.exists()


@parity
@needs_torch
def test_torch_classes_outside_torchscript_archives_are_unknown(tmp_path):
    """`__torch__.*` stand-ins are only for archives with a constants.pkl; elsewhere they are unknown classes."""
    weight = torch.randn(2)
    path = tmp_path / "ckpt.pth"
    torch.save({"w": weight}, path)
    stand_in = _short_str("net") + b"c__torch__\nNet\n" + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.SETITEM
    crafted = _edit_data_pkl(path, tmp_path / "crafted.pth", lambda d: _insert_before_last(d, "STOP", stand_in))
    with pytest.raises(UnsafeCheckpointError, match=r"__torch__\.Net"):
        load_state_dict(crafted)
    raw = load_state_dict(crafted, allow_unknown_classes=True)
    assert isinstance(raw["net"], Opaque) and raw["net"].qualname == "__torch__.Net"
    np.testing.assert_array_equal(raw["w"], weight.numpy())


def _traced_like_openai(state: dict, context: int):
    """OpenAI CLIP names -> arrays as a traced module tree, the way OpenAI's jit files hold them.

    Floating arrays become parameters, the recorded sizes buffers; each text
    block also keeps its causal `attn_mask` as a plain attribute, which tracing
    turns into a graph constant (constants.pkl).
    """

    class Node(torch.nn.Module):
        def forward(self, x):
            for module in self.modules():
                if isinstance(getattr(module, "attn_mask", None), torch.Tensor):
                    x = x + module.attn_mask
            return x

    root = Node()
    for name, value in state.items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, Node())
            module = getattr(module, part)
        tensor = torch.from_numpy(value)
        if tensor.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))
        else:
            module.register_buffer(leaf, tensor)
    for block in root.transformer.resblocks.children():
        block.attn_mask = torch.full((context, context), float("-inf")).triu(1)
    return torch.jit.trace(root, torch.zeros(context, context))


@parity
@needs_torch
def test_openai_clip_torchscript_converts(tmp_path):
    """A tiny CLIP in OpenAI's jit layout (float16, sizes as tensors) -> `python -m vfm_jax.convert --model clip`."""
    import jax

    import vfm_jax
    from conftest import run_module
    from test_clip_convert import EMBED, TEXT, VISION, _convert, _hf_model, _state

    state = {k: v.astype(np.float16) for k, v in _state(_hf_model("quick_gelu")).items()}
    state.update(input_resolution=np.array(VISION["image"]), context_length=np.array(TEXT["context"]),
                 vocab_size=np.array(TEXT["vocab"]))
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(_traced_like_openai(state, TEXT["context"]), path)
    with zipfile.ZipFile(path) as archive:
        assert any("/constants/" in name for name in archive.namelist())  # the causal masks
    ref = torch.jit.load(path).state_dict()
    assert set(ref) == set(state)
    _assert_matches(load_weights(path), dict(ref))

    out = tmp_path / "clip"
    proc = run_module("vfm_jax.convert", "--model=clip", f"--src={path}", f"--out={out}", "--num_heads=4",
                      "--text_num_heads=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, variables = vfm_jax.load_pretrained(out)
    assert model.embed_dim == EMBED and model.activation == "quick_gelu"
    _, direct = _convert(state)
    got, want = jax.tree_util.tree_leaves_with_path(variables), jax.tree_util.tree_leaves_with_path(direct)
    assert [p for p, _ in got] == [p for p, _ in want]
    for (where, a), (_, b) in zip(got, want):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(where))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", pickle.dumps({"a": 1})])
def test_unknown_files_are_refused(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_state_dict(path)
    zipped = tmp_path / "other.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("readme.txt", content)
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_state_dict(zipped)


@parity
@needs_torch
def test_safetensors_from_torch(tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(3, 4), "h": torch.randn(5).to(torch.bfloat16), "i": torch.arange(3)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    _assert_matches(dict(sorted(load_state_dict(path).items())), dict(sorted(tensors.items())))


def test_safetensors_and_npz_round_trip(tmp_path):
    arrays = {"module.a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "module.b": np.array([1, -2], dtype=np.int64)}
    with_bf16 = dict(arrays, **{"module.h": np.array([1.5, -3.0], dtype=ml_dtypes.bfloat16)})
    save_numpy_safetensors(with_bf16, tmp_path / "m.safetensors")
    np.savez(tmp_path / "m.npz", **arrays)
    for path, expected in ((tmp_path / "m.safetensors", with_bf16), (tmp_path / "m.npz", arrays)):
        loaded = load_state_dict(path)
        assert sorted(loaded) == sorted(expected)
        for key, value in expected.items():
            assert loaded[key].dtype == value.dtype
            np.testing.assert_array_equal(loaded[key], value)
        assert sorted(load_weights(path)) == sorted(k.removeprefix("module.") for k in expected)


def test_unwrap():
    w = np.zeros(2)
    assert unwrap({"model": {"a": w}, "epoch": 1}) == {"a": w}
    assert unwrap({"state_dict": {"model": {"module.a": w, "module.b": w}}}) == {"a": w, "b": w}
    assert unwrap({"model_state": {"x": w}}) == {"x": w}
    assert unwrap({"module": {"a": w}, "model": {"b": w}}) == {"b": w}  # `keys` order decides
    assert unwrap({"module.a": w, "b": w}) == {"module.a": w, "b": w}  # strip only if every key has it
    assert unwrap({"model": w, "head.weight": w}) == {"model": w, "head.weight": w}  # 'model' here is a tensor
    assert unwrap({"ema": {"a": w}}, keys=("ema",)) == {"a": w}
    loop = {}
    loop["model"] = loop
    assert list(unwrap(loop)) == ["model"]  # a self-referencing wrapper ends the descent
