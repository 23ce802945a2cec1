"""Read official PyTorch checkpoints as numpy arrays, without torch and without running pickle code.

A `torch.save` file is a pickle whose tensors point at raw storage bytes. We
unpickle it with an allowlist: torch's tensor-rebuild functions, its storage
and dtype names, OrderedDict, torch.Size and the few builtins plain data needs.
Any other global (`os.system`, `builtins.eval`, a class of the training code,
the `argparse.Namespace` official checkpoints keep under 'args') raises
`UnsafeCheckpointError`; with `allow_unknown_classes=True` it becomes an
`Opaque` stand-in that stores what the pickle hands it and calls nothing, so
the tensors around it can still be read.

TorchScript archives (`torch.jit.save`, e.g. OpenAI's CLIP `ViT-B-16.pt`;
told apart by their `constants.pkl`) pickle the module tree in `data.pkl` as
objects of the archive's own `__torch__.*` classes. There, and only there,
exactly those classes (`__torch__` and names under `__torch__.`) also become
`Opaque` stand-ins; every other global follows the rules above. Which of a
module's attributes are parameters and buffers is read, as text, from the
`__parameters__` / `__buffers__` lines its class declares in the archive's
`code/` sources (never compiled or run); the result is
`torch.jit.load(path).state_dict()`: those tensors, names joined with dots, in
its order, including buffers that were non-persistent before scripting (a
scripted module keeps no such flag) and no plain tensor attributes or graph
constants (`constants.pkl` is not read).

Formats: the torch zip archive (default since torch 1.6), the older stream of
`_use_new_zipfile_serialization=False`, TorchScript archives, .safetensors,
and .npz of torch-named arrays. Dtypes stay as stored (bfloat16 and float8 as
ml_dtypes types); converters cast.
"""
from __future__ import annotations

import ast
import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import ml_dtypes
import numpy as np
from absl import logging
from safetensors.numpy import load_file as load_safetensors

WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle asks for something beyond tensors and plain containers."""


def load_weights(path, *, allow_unknown_classes: bool = False) -> dict[str, np.ndarray]:
    """The flat {torch name: array} converters take: `unwrap(load_state_dict(path))`, arrays only."""
    weights = {}
    for name, value in unwrap(load_state_dict(path, allow_unknown_classes=allow_unknown_classes)).items():
        if isinstance(value, np.ndarray):
            weights[name] = value
        else:
            logging.debug("%s: dropping non-array entry %r (%s)", path, name, type(value).__name__)
    return weights


def load_state_dict(path, *, allow_unknown_classes: bool = False) -> dict:
    """The checkpoint's top-level mapping, tensors as numpy arrays, nothing unwrapped.

    A training checkpoint comes back as saved, e.g. {'model': OrderedDict(...),
    'epoch': 3}. Each tensor is its own C-contiguous array (views of one storage
    are copied apart), except that a tensor saved twice is one array, as in torch.
    A TorchScript archive comes back as its module tree's state dict (see the module docstring).

    allow_unknown_classes: objects of classes outside the allowlist become
    `Opaque` stand-ins instead of raising `UnsafeCheckpointError`. Nothing of
    theirs is imported or run, but the file is still untrusted data: use it for
    checkpoints whose extra entries (args, optimizer, scaler) you want skipped.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_safetensors(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # not zipfile.is_zipfile: legacy storage bytes may hold its marker
    if is_zip:
        state = _load_torch_zip(path, allow_unknown_classes)
    else:
        state = _load_torch_legacy(path, allow_unknown_classes)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict at the top level, got {state!r:.200}")
    return state


def unwrap(state: Mapping, keys=WRAPPER_KEYS) -> dict:
    """The model's own mapping: descend through wrapper keys, then drop a DDP 'module.' prefix.

    While the mapping has one of `keys` (tried in order) holding a mapping, descend
    into it, so {'state_dict': {'model': sd}} works too. 'module.' is stripped only
    when every key starts with it.
    """
    seen = set()
    while id(state) not in seen:
        seen.add(id(state))
        state = next((state[k] for k in keys if isinstance(state.get(k), Mapping)), state)
    prefix = "module."
    if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


class Opaque:
    """Inert stand-in for an object whose class is outside the allowlist (allow_unknown_classes only).

    The unpickler hands it what it would hand the real class: constructor
    arguments, state, items. It only stores them; the class it replaces is never
    imported. `qualname` names that class.
    """

    qualname = ""

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
        return self

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self):
        return f"Opaque({self.qualname})"


# torch globals naming an element type: the legacy typed storages, and the dtype objects that
# `_rebuild_tensor_v3` gets for tensors over an UntypedStorage (whose numel counts bytes).
_TORCH_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "bool": np.bool_,
    "complex64": np.complex64, "complex128": np.complex128,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz, "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
}


class TorchType(NamedTuple):
    """What the pickle gets for `torch.FloatStorage`, `torch.float32`, ...: a name and its numpy dtype.

    A tuple, not the np.dtype itself, because a pickle may call `__setstate__` on
    what it is given, and np.dtype's would alter numpy's shared dtype objects.
    """

    name: str
    dtype: np.dtype


class _Storage(NamedTuple):
    key: str
    dtype: np.dtype


class _View(NamedTuple):
    """Where a tensor's elements sit in its storage (offset and strides in elements)."""

    out: np.ndarray
    offset: int
    stride: tuple[int, ...]
    neg: bool
    conj: bool


def _encode(text, encoding):
    """`_codecs.encode` as protocol-2 pickles use it to spell bytes: a str to latin-1, nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafeCheckpointError(f"_codecs.encode({text!r:.50}, {encoding!r:.50}) is not a bytes literal")
    return text.encode("latin1")


class _Unpickler(pickle.Unpickler):
    """Resolves only allowlisted globals; tensors come back as uninitialised arrays.

    Each tensor's array is allocated when the pickle rebuilds it and `pending`
    records which storage bytes it views; `fill(key, data)` copies them in once
    that storage is read, so one storage at a time is held in memory.
    """

    def __init__(self, file, allow_unknown_classes: bool = False, torchscript: bool = False):
        super().__init__(file, encoding="utf-8")
        self._allow_unknown = allow_unknown_classes
        self._torchscript = torchscript
        self._opaque: dict[str, type] = {}
        self.storage_dtypes: dict[str, np.dtype] = {}
        self.pending: dict[str, list[_View]] = {}
        self._globals = {
            "torch._utils._rebuild_tensor": self._rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor_v2,
            "torch._utils._rebuild_tensor_v3": self._rebuild_tensor_v3,
            "torch._utils._rebuild_parameter": self._rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": self._rebuild_parameter,
            "torch.storage.UntypedStorage": TorchType("UntypedStorage", np.dtype(np.uint8)),
            "torch.Size": tuple,
            "collections.OrderedDict": OrderedDict,
            "builtins.set": set,
            "builtins.frozenset": frozenset,
            "builtins.complex": complex,
            "builtins.bytes": bytes,
            "builtins.bytearray": bytearray,
            "_codecs.encode": _encode,
        }

    def find_class(self, module, name):
        module = "builtins" if module == "__builtin__" else module  # protocol <= 2 spelling
        qualname = f"{module}.{name}"
        if qualname in self._globals:
            return self._globals[qualname]
        if module == "torch" and name in _TORCH_DTYPES:
            return TorchType(name, np.dtype(_TORCH_DTYPES[name]))
        if self._torchscript and (module == "__torch__" or module.startswith("__torch__.")):
            return self._stand_in(qualname, name)
        if not self._allow_unknown:
            raise UnsafeCheckpointError(
                f"checkpoint asks for {qualname}, which is not a tensor or plain container; "
                "pass allow_unknown_classes=True to load the tensors and leave such objects as inert stand-ins"
            )
        if qualname not in self._opaque:
            logging.info("checkpoint object of class %s left as an inert stand-in", qualname)
        return self._stand_in(qualname, name)

    def _stand_in(self, qualname: str, name: str) -> type:
        if qualname not in self._opaque:
            self._opaque[qualname] = type(name, (Opaque,), {"qualname": qualname})
        return self._opaque[qualname]

    def persistent_load(self, pid):
        """('storage', type, key, location, numel[, view]) -> _Storage; legacy ('module', cls, ...) -> cls.

        The location (e.g. 'cuda:0') does not matter to numpy and is ignored.
        """
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            return pid[1]  # a whole nn.Module saved in the legacy format; its class went through find_class
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and pid[5:] in ((), (None,))
                and isinstance(pid[1], TorchType)):
            raise ValueError(f"unsupported storage record in checkpoint: {pid!r:.200}")
        key, dtype = str(pid[2]), pid[1].dtype
        self.storage_dtypes[key] = dtype
        return _Storage(key, dtype)

    def _rebuild_tensor(self, storage, storage_offset, size, stride):
        return self._tensor(storage, storage_offset, size, stride)

    def _rebuild_tensor_v2(self, storage, storage_offset, size, stride, requires_grad, backward_hooks,
                           metadata=None):
        return self._tensor(storage, storage_offset, size, stride, metadata)

    def _rebuild_tensor_v3(self, storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                           metadata=None):
        """A tensor of a dtype without a typed storage (uint16, float8, ...): its storage is raw bytes."""
        if not isinstance(dtype, TorchType):
            raise ValueError(f"malformed tensor record in checkpoint: dtype {dtype!r:.100}")
        return self._tensor(storage, storage_offset, size, stride, metadata, dtype.dtype)

    def _tensor(self, storage, offset, size, stride, metadata=None, dtype=None):
        """The tensor's array, uninitialised until `fill` reads its storage. metadata: torch's neg/conj bits."""
        if not (isinstance(storage, _Storage) and _is_index(offset) and isinstance(size, tuple)
                and isinstance(stride, tuple) and len(size) == len(stride) and all(map(_is_index, size + stride))
                and (metadata is None or isinstance(metadata, dict))):
            raise ValueError(f"malformed tensor record in checkpoint: {(storage, offset, size, stride)!r:.200}")
        out = np.empty(size, dtype or storage.dtype)
        metadata = metadata or {}
        view = _View(out, offset, stride, bool(metadata.get("neg")), bool(metadata.get("conj")))
        self.pending.setdefault(storage.key, []).append(view)
        return out

    def _rebuild_parameter(self, data, requires_grad, backward_hooks, state=None):
        return data

    def fill(self, key: str, data: bytes, byteorder: str):
        """Copy storage `key`'s bytes (stored `byteorder`-endian) into every tensor that views it."""
        for out, offset, stride, neg, conj in self.pending.pop(key, ()):
            if out.size == 0:
                continue
            end = offset + 1 + sum((n - 1) * s for n, s in zip(out.shape, stride))
            if end * out.itemsize > len(data):
                raise ValueError(f"checkpoint storage {key} has {len(data)} bytes; a tensor needs {end * out.itemsize}")
            strides = [s * out.itemsize for s in stride]
            out[...] = np.ndarray(out.shape, out.dtype, buffer=data, offset=offset * out.itemsize, strides=strides)
            if byteorder != sys.byteorder:
                _byteswap(out)
            if neg:
                np.negative(out, out=out)
            if conj:
                np.conjugate(out, out=out)


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _byteswap(array: np.ndarray):
    """In place, per scalar: bfloat16 has no big-endian numpy dtype, and complex swaps its halves apart."""
    unit = array.itemsize // 2 if array.dtype.kind == "c" else array.itemsize
    if unit > 1:
        array.reshape(-1).view(f"u{unit}").byteswap(inplace=True)


def _load_torch_zip(path: Path, allow_unknown_classes: bool) -> Any:
    """`<prefix>/data.pkl`, the storages as `<prefix>/data/<key>`, and `<prefix>/byteorder` (little if absent)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a zip archive but not a torch checkpoint (no <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        torchscript = prefix + "constants.pkl" in names
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise ValueError(f"{path}: unknown byteorder {byteorder!r:.50}")
        unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), allow_unknown_classes, torchscript)
        state = unpickler.load()
        for key in sorted(unpickler.pending):
            unpickler.fill(key, archive.read(f"{prefix}data/{key}"), byteorder)
        if torchscript:
            state = _script_state_dict(state, _ModuleDeclarations(archive, prefix))
    return state


class _ModuleDeclarations:
    """The `__parameters__` and `__buffers__` each TorchScript module class declares, read from `code/`.

    Class `__torch__.a.b.C` is printed in `code/__torch__/a/b.py` as
    `class C(Module):` followed by `  __parameters__ = ["weight", ...]` and
    `  __buffers__ = [...]`; only those two list literals are evaluated
    (`ast.literal_eval`). A class declared otherwise, or not at all, is not a module.
    """

    _CLASS = re.compile(
        r"^class (\w+)\(Module\):\n  __parameters__ = (\[.*\])\n(?:  __buffers__ = (\[.*\])\n)?", re.MULTILINE
    )

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        self._archive, self._prefix, self._names = archive, prefix, set(archive.namelist())
        self._files: dict[str, dict[str, tuple[list, list]]] = {}

    def __call__(self, qualname: str) -> tuple[list, list] | None:
        """(parameter names, buffer names) of a module class; None for any other class."""
        module, _, name = qualname.rpartition(".")
        if module not in self._files:
            source = f"{self._prefix}code/{module.replace('.', '/')}.py"
            text = self._archive.read(source).decode() if source in self._names else ""
            self._files[module] = {
                match[1]: (ast.literal_eval(match[2]), ast.literal_eval(match[3] or "[]"))
                for match in self._CLASS.finditer(text)
            }
        return self._files[module].get(name)


def _script_state_dict(root, declarations: _ModuleDeclarations) -> OrderedDict:
    """`torch.jit.load(...).state_dict()` of the unpickled module tree.

    Per module, as `nn.Module.state_dict` does: its parameters, then its
    buffers (each in attribute order, None ones skipped), then its submodules'
    entries under `<attribute>.`.
    """
    state = OrderedDict()

    def visit(module: Opaque, prefix: str, path: tuple):
        declared = declarations(module.qualname)
        if declared is None or not isinstance(module.state, dict):
            raise ValueError(f"TorchScript module {prefix or 'root'} of class {module.qualname} is not a module")
        attributes = module.state
        for names in declared:
            for name, value in attributes.items():
                if name in names and value is not None:
                    state[prefix + name] = value
        for name, value in attributes.items():
            if isinstance(value, Opaque) and value.qualname.startswith("__torch__.") and declarations(value.qualname):
                if id(value) in path:
                    raise ValueError(f"TorchScript module {prefix}{name} contains itself")
                visit(value, f"{prefix}{name}.", path + (id(value),))

    if not isinstance(root, Opaque):
        raise ValueError(f"TorchScript data.pkl holds {root!r:.200}, not a module")
    visit(root, "", (id(root),))
    return state


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_torch_legacy(path: Path, allow_unknown_classes: bool) -> Any:
    """The pre-1.6 stream of `_use_new_zipfile_serialization=False`.

    Pickles of the magic number, the protocol, system info, the object and the
    storage keys; then per key an int64 element count and the storage's bytes,
    both little-endian whatever machine wrote them.
    """
    with open(path, "rb") as f:
        try:
            header = _Unpickler(f).load(), _Unpickler(f).load()
        except Exception:  # any unpickling failure means it is not this format
            header = None
        if header != (_LEGACY_MAGIC, _LEGACY_PROTOCOL):
            raise ValueError(f"{path}: not a torch checkpoint (zip or legacy), .safetensors or .npz file")
        _Unpickler(f).load()  # system info: byte order and C type sizes, none of which the storages depend on
        unpickler = _Unpickler(f, allow_unknown_classes)
        state = unpickler.load()
        for key in _Unpickler(f).load():
            if key not in unpickler.storage_dtypes:
                raise ValueError(f"{path}: storage {key!r:.50} is not referenced by the checkpoint")
            numel = int.from_bytes(f.read(8), "little")
            unpickler.fill(key, f.read(numel * unpickler.storage_dtypes[key].itemsize), "little")
    return state
