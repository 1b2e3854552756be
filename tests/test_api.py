"""The public API of birl_lite is fully annotated (stable-baselines3 style).

Every public function, and every public method (and ``__init__``) of a public class, defined in a
module of ``birl_lite`` annotates all its parameters (``*args`` / ``**kwargs`` excepted) and its
return (``__init__`` excepted). Array inputs use :data:`birl_lite.ArrayLike`.
"""

import importlib
import inspect
import pkgutil

import birl_lite


def missing_annotations(skip_modules: tuple[str, ...] = ()) -> list[str]:
    """``"module function [unannotated parameters] return-missing"`` for every gap."""
    gaps = []
    for info in pkgutil.walk_packages(birl_lite.__path__, "birl_lite."):
        if info.name in skip_modules:
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isfunction(obj):
                functions = [(name, obj)]
            elif inspect.isclass(obj):
                functions = [
                    (f"{name}.{key}", value)
                    for key, value in vars(obj).items()
                    if inspect.isfunction(value) and (not key.startswith("_") or key == "__init__")
                ]
            else:
                continue
            for qualname, function in functions:
                sig = inspect.signature(function)
                bad = [
                    p.name
                    for p in sig.parameters.values()
                    if p.name not in ("self", "cls")
                    and p.annotation is inspect.Parameter.empty
                    and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                ]
                no_return = sig.return_annotation is inspect.Signature.empty and not (
                    qualname.endswith("__init__")
                )
                if bad or no_return:
                    gaps.append(f"{mod.__name__} {qualname} {bad} {no_return}")
    return gaps


def test_array_like_is_exported():
    assert "ArrayLike" in birl_lite.__all__
    assert birl_lite.ArrayLike is birl_lite._validation.ArrayLike


def test_public_functions_are_annotated():
    assert missing_annotations() == []
