"""Every user-facing error is a lightseq.Error that also subclasses the builtin a caller would
catch (ValueError for a bad value, TypeError for a wrong type), with a message that names what is
wrong; the native extension raises the same classes. CPU only."""
import ast
import pathlib
import pickle

import pytest
import torch
from torch import nn

import lightseq
from lightseq import _spec

PACKAGE = pathlib.Path(lightseq.__file__).parent


def test_classes_are_exported_and_subclass_the_builtins():
    for name in ("Error", "ArgumentError", "ArgumentTypeError", "Unsupported", "SpecError"):
        assert name in lightseq.__all__
        cls = getattr(lightseq, name)
        assert issubclass(cls, lightseq.Error) and cls.__module__ == "lightseq"
    assert issubclass(lightseq.Error, RuntimeError)
    assert issubclass(lightseq.ArgumentError, ValueError)
    assert issubclass(lightseq.ArgumentTypeError, TypeError)
    assert issubclass(lightseq.Unsupported, ValueError)
    assert issubclass(lightseq.SpecError, ValueError)
    assert _spec.Unsupported is lightseq.Unsupported
    e = pickle.loads(pickle.dumps(lightseq.Unsupported("why")))
    assert type(e) is lightseq.Unsupported and str(e) == "why"


def raised(fn):
    with pytest.raises(lightseq.Error) as info:
        fn()
    return info.value


@pytest.mark.parametrize("dtype", [torch.int8, torch.float64])
def test_compile_with_an_unsupported_dtype(dtype):
    e = raised(lambda: lightseq.compile(nn.Linear(2, 2), dtype=dtype))
    assert type(e) is lightseq.Unsupported and isinstance(e, ValueError)
    assert str(e) == f"lightseq.compile: dtype {dtype} (lightseq runs float32, float16 and bfloat16)"


def test_compile_with_a_dtype_that_is_not_a_dtype():
    e = raised(lambda: lightseq.compile(nn.Linear(2, 2), dtype="fp16"))
    assert isinstance(e, TypeError)
    assert str(e) == ("dtype 'fp16' is a str, not a torch.dtype; pass torch.float32, torch.float16 or "
                      "torch.bfloat16")


@pytest.mark.parametrize("cls", [lightseq.nn.TransformerEncoderLayer, lightseq.nn.TransformerDecoderLayer])
def test_standalone_layer_with_an_unsupported_dtype(cls):
    e = raised(lambda: cls(64, 4, 128, dtype=torch.float64))
    assert type(e) is lightseq.Unsupported and isinstance(e, ValueError)
    base = "TransformerEncoderLayer" if "Encoder" in cls.__name__ else "TransformerDecoderLayer"
    assert str(e) == f"lightseq.nn.{base}: dtype torch.float64 (lightseq runs float32, float16 and bfloat16)"


def test_standalone_layer_sizes_and_activation():
    e = raised(lambda: lightseq.nn.TransformerEncoderLayer(64, 16, 128))
    assert type(e) is lightseq.Unsupported
    assert str(e) == ("lightseq.nn.TransformerEncoderLayer: head dimension 4 (lightseq needs a multiple "
                      "of 8, at most 256)")
    e = raised(lambda: lightseq.nn.TransformerEncoderLayer(64, 4, 128, activation="tanh"))
    assert type(e) is lightseq.ArgumentError
    assert str(e) == ("lightseq.nn.TransformerEncoderLayer: activation 'tanh': lightseq compiles 'relu', "
                      "'gelu', 'gelu_tanh'")


@pytest.mark.parametrize("value,article", [(42, "an int"), ("model", "a str"), (None, "a NoneType")])
def test_explain_and_compile_say_what_they_take(value, article):
    e = raised(lambda: lightseq.explain(value))
    assert type(e) is lightseq.ArgumentTypeError and isinstance(e, TypeError)
    assert str(e) == f"lightseq.explain takes the nn.Module given to lightseq.compile, not {article}"
    e = raised(lambda: lightseq.compile(value))
    assert isinstance(e, TypeError)
    assert str(e) == f"lightseq.compile takes an nn.Module, not {article}"


def test_extractor_errors_are_lightseq_errors():
    m = nn.TransformerEncoderLayer(64, 4, 128, bias=False)
    e = raised(lambda: _spec.from_torch_encoder_layer(m))
    assert isinstance(e, lightseq.Unsupported) and isinstance(e, ValueError)


def test_layer_input_of_the_wrong_type():
    layer = lightseq.compile(nn.TransformerEncoderLayer(64, 4, 128, batch_first=True))
    e = raised(lambda: layer([1, 2]))
    assert isinstance(e, TypeError)
    assert str(e) == "lightseq-compiled TransformerEncoderLayer: the input is a list, not a tensor"


def test_native_errors_are_the_package_classes():
    C = pytest.importorskip("lightseq._C", reason="the native extension is not built")
    assert C.Error is lightseq.Error and C.SpecError is lightseq.SpecError
    e = raised(lambda: C.CompiledModel.load("{}", 0))
    assert type(e) is lightseq.SpecError and isinstance(e, ValueError)
    assert str(e).startswith("<python>: invalid model spec (3 issues):\nname = (missing): required")


def test_no_builtin_exception_is_raised_directly():
    """Every `raise` in the package raises a lightseq error class (or re-raises)."""
    ours = {"Error", "ArgumentError", "ArgumentTypeError", "Unsupported", "SpecError"}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                name = call.attr if isinstance(call, ast.Attribute) else getattr(call, "id", None)
                assert name in ours or name in {"why", "e"}, f"{path.name}:{node.lineno} raises {name}"
