"""Read the data in a pickle of plain containers and numpy arrays without running any of it.

The CIFAR "python version" files (``cifar-10-batches-py/data_batch_1``, ``cifar-100-python/train``) are
pickles. Unpickling runs whatever callables the file names, so ``pickle.load`` on a file from elsewhere
can run any code; a restricted ``Unpickler.find_class`` would still *call* the numpy functions it lets
through. This reader goes one step further: it walks the opcodes with :func:`pickletools.genops` (a
parser that builds nothing) and interprets only the opcodes plain data needs. A global is never imported
and nothing is ever called: the few constructors CIFAR files use (numpy's ``_reconstruct`` + ``dtype``
for arrays, ``_codecs.encode`` for bytes written by Python 3 with protocol 2, ``_frombuffer`` with
protocol 5) are recognised by name and rebuilt here from their arguments with ``np.frombuffer``. Any
other global or opcode is refused with :class:`NotPlainData`.

Python 2 strings (``BINSTRING``, as in the original CIFAR files) come back as ``bytes``, like
``pickle.load(..., encoding="bytes")``.
"""

from __future__ import annotations

import pickletools
import re
from typing import Any

import numpy as np

ARRAY_GLOBALS = {"numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct"}
FROMBUFFER_GLOBALS = {"numpy.core.numeric _frombuffer", "numpy._core.numeric _frombuffer"}
DTYPE_GLOBAL, NDARRAY_GLOBAL, CODECS_ENCODE = "numpy dtype", "numpy ndarray", "_codecs encode"
KNOWN_GLOBALS = ARRAY_GLOBALS | FROMBUFFER_GLOBALS | {DTYPE_GLOBAL, NDARRAY_GLOBAL, CODECS_ENCODE}
SIMPLE_DTYPE = re.compile(r"^[|<>=]?(b1|[iu][1248]|f[248])$")  # no object, string or structured dtypes

PUSH = {"NONE": lambda a: None, "NEWTRUE": lambda a: True, "NEWFALSE": lambda a: False,
        "EMPTY_DICT": lambda a: {}, "EMPTY_LIST": lambda a: [], "EMPTY_TUPLE": lambda a: ()}
LITERALS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "UNICODE",
            "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
PY2_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING"}  # genops gives them as latin-1 str: bytes again


class NotPlainData(ValueError):
    """The pickle is damaged, or holds something other than containers, numbers, strings and arrays."""


class _Global:
    def __init__(self, name: str):
        self.name = name


class _Pending:
    """A recognised constructor call, finished by a later BUILD (numpy arrays and dtypes are two-step)."""

    def __init__(self, name: str, args: tuple):
        self.name, self.args, self.state = name, args, None


def read_plain_pickle(data: bytes) -> Any:
    """The object pickled in ``data``, rebuilt without importing or calling anything it names."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                return _resolve(stack.pop())
            if name in PUSH:
                stack.append(PUSH[name](arg))
            elif name in LITERALS:
                stack.append(arg)
            elif name in PY2_STRINGS:
                stack.append(arg.encode("latin-1"))
            elif name == "BYTEARRAY8":
                stack.append(bytes(arg))
            elif name == "MARK":
                marks.append(len(stack))
            elif name in ("TUPLE", "LIST", "DICT", "APPENDS", "SETITEMS", "POP_MARK"):
                start = marks.pop()
                items, stack[start:] = stack[start:], []
                if name == "TUPLE":
                    stack.append(tuple(items))
                elif name == "LIST":
                    stack.append(items)
                elif name == "DICT":
                    stack.append(dict(zip(items[::2], items[1::2])))
                elif name == "APPENDS":
                    _container(stack[-1], list).extend(items)
                elif name == "SETITEMS":
                    _container(stack[-1], dict).update(zip(items[::2], items[1::2]))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items, stack[-n:] = stack[-n:], []
                stack.append(tuple(items))
            elif name == "APPEND":
                value = stack.pop()
                _container(stack[-1], list).append(value)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                _container(stack[-1], dict)[key] = value
            elif name == "POP":
                stack.pop()
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(arg)])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "STACK_GLOBAL":
                    qualname, module = stack.pop(), stack.pop()
                    arg = f"{module} {qualname}"
                if arg not in KNOWN_GLOBALS:
                    raise NotPlainData(f"it refers to '{arg.replace(' ', '.')}', which plain data never does")
                stack.append(_Global(arg))
            elif name == "REDUCE":
                args, func = stack.pop(), stack.pop()
                if not isinstance(func, _Global) or func.name == NDARRAY_GLOBAL or not isinstance(args, tuple):
                    raise NotPlainData("it calls something that is not a numpy array or bytes constructor")
                stack.append(_call(func.name, args))
            elif name == "BUILD":
                state = stack.pop()
                target = stack[-1]
                if not isinstance(target, _Pending) or target.state is not None:
                    raise NotPlainData("it sets the state of an object that is not a numpy array or dtype")
                target.state = state
            else:
                raise NotPlainData(f"it uses the pickle opcode {name}, which plain data does not need")
    except NotPlainData:
        raise
    except Exception as exc:  # truncated, not a pickle, or malformed (stack underflow, bad memo key, ...)
        raise NotPlainData(f"it is not a readable pickle ({type(exc).__name__}: {exc})") from None
    raise NotPlainData("it ends before the pickle's STOP opcode (truncated?)")


def _container(obj: Any, kind: type) -> Any:
    if not isinstance(obj, kind):
        raise NotPlainData(f"it adds items to a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def _call(name: str, args: tuple) -> Any:
    """What a recognised constructor would return, computed here (bytes) or after its BUILD (arrays)."""
    if name == CODECS_ENCODE:  # Python 3 pickles bytes with protocol 2 as _codecs.encode(text, "latin1")
        text, encoding = (args + ("utf-8",))[:2]
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise NotPlainData("it encodes bytes in an unexpected way")
        return text.encode("latin-1")
    if name in FROMBUFFER_GLOBALS:  # protocol 5: _frombuffer(buffer, dtype, shape, order)
        buffer, dtype, shape, order = args
        return np.frombuffer(buffer, _resolve(dtype)).reshape(shape, order=order)
    return _Pending(name, args)


def _resolve(obj: Any) -> Any:
    """Finished values for pending constructors, in containers too (CIFAR files nest one level deep)."""
    if isinstance(obj, _Pending):
        return _finish(obj)
    if isinstance(obj, dict):
        return {_resolve(k): _resolve(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v) for v in obj)
    if isinstance(obj, _Global):
        raise NotPlainData(f"it holds a bare reference to '{obj.name.replace(' ', '.')}'")
    return obj


def _finish(p: _Pending) -> Any:
    if p.name == DTYPE_GLOBAL:  # dtype(name, align, copy), state (version, byte order, ...)
        code = p.args[0].decode("latin-1") if isinstance(p.args[0], bytes) else p.args[0]
        order = p.state[1] if isinstance(p.state, tuple) and len(p.state) > 1 else "|"
        order = order.decode("latin-1") if isinstance(order, bytes) else order
        if not isinstance(code, str) or not SIMPLE_DTYPE.match(code) or order not in "|<>=":
            raise NotPlainData(f"it holds an array of dtype {code!r}, not a plain number type")
        dtype = np.dtype(code)
        return dtype.newbyteorder(order) if order in "<>" else dtype
    # ndarray: _reconstruct(ndarray, (0,), b"b"), state (version, shape, dtype, fortran, raw bytes)
    if not (isinstance(p.args, tuple) and p.args and isinstance(p.args[0], _Global)
            and p.args[0].name == NDARRAY_GLOBAL and isinstance(p.state, tuple) and len(p.state) == 5):
        raise NotPlainData("it holds an array in an unexpected form")
    _, shape, dtype, fortran, raw = p.state
    dtype = _resolve(dtype)
    if not isinstance(dtype, np.dtype) or not isinstance(raw, (bytes, str)):
        raise NotPlainData("it holds an array in an unexpected form")
    raw = raw.encode("latin-1") if isinstance(raw, str) else raw
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) * dtype.itemsize != len(raw):
        raise NotPlainData(f"an array of shape {shape} holds {len(raw):,} bytes instead of "
                           f"{int(np.prod(shape)) * dtype.itemsize:,} (truncated?)")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")
