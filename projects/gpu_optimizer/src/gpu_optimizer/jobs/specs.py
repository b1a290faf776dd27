"""Which MODEL specs the service accepts: user code only from the configured directory.

A ``file.py:factory`` or ``package.module:factory`` spec imports and runs
arbitrary Python, so the service takes it only from under
``GPU_OPT_USER_MODELS_DIR``, and turns it into an absolute ``file.py:factory``
spec so the worker loads exactly that file, never a same-named installed module.
Nothing here imports user code: that happens in the worker process only.
"""

from __future__ import annotations

from pathlib import Path

MAX_SPEC_LENGTH = 512


class SpecError(ValueError):
    """A model spec the service cannot use (HTTP 422); the message names the spec."""


class UserCodeRefused(SpecError):
    """A spec that would run user code from outside the allowed directory (HTTP 403)."""


def is_user_code(spec: str) -> bool:
    spec = spec.strip()
    return ":" in spec and not spec.endswith((".yaml", ".yml")) and not spec.startswith("hf:")


def _hf_worker_spec(spec: str, user_models_dir: Path | None) -> str:
    """``hf:ARCH`` passes; ``hf:path/config.json`` only from the user models directory.

    A config file is data, not code (remote code is never enabled), but reading
    any path the client names would let it probe the server's files.
    """
    body = spec[len("hf:") :]
    source, sep_q, query = body.partition("?")
    head, sep_t, task = source.rpartition(":")
    path_text = head if sep_t and task and "/" not in task and "." not in task else source
    rest = source[len(path_text) :] + (sep_q + query)
    if not (path_text.endswith(".json") or "/" in path_text or "\\" in path_text):
        return spec
    if user_models_dir is None:
        raise UserCodeRefused(
            f"model {spec!r} reads a config file, which this service takes only from "
            "GPU_OPT_USER_MODELS_DIR; set it, or use a built-in hf:ARCH"
        )
    root = user_models_dir.resolve()
    path = Path(path_text)
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.is_relative_to(root):
        raise UserCodeRefused(
            f"model {spec!r}: {path_text} is outside the user models directory "
            "(GPU_OPT_USER_MODELS_DIR); put the config there"
        )
    if resolved.is_dir():
        resolved = resolved / "config.json"
    if not resolved.is_file():
        raise SpecError(f"model {spec!r}: {path_text} not found in the user models directory")
    return f"hf:{resolved}{rest}"


def worker_spec(spec: str, user_models_dir: Path | None) -> str:
    """The spec the worker should load; raises SpecError / UserCodeRefused.

    Built-in specs (torchvision names, Ultralytics yamls, ``hf:ARCH``) pass through unchanged.
    """
    spec = spec.strip()
    if not spec:
        raise SpecError("model: empty model spec")
    if len(spec) > MAX_SPEC_LENGTH:
        raise SpecError(f"model: spec is longer than {MAX_SPEC_LENGTH} characters")
    if spec.startswith("hf:"):
        return _hf_worker_spec(spec, user_models_dir)
    if not is_user_code(spec):
        return spec
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise SpecError(
            f"model {spec!r}: expected file.py:factory or package.module:factory "
            "with a Python identifier after the colon"
        )
    if user_models_dir is None:
        raise UserCodeRefused(
            f"model {spec!r} runs user code, which this service does not accept: "
            "set GPU_OPT_USER_MODELS_DIR to the directory holding your model files"
        )
    root = user_models_dir.resolve()
    if target.endswith(".py"):
        path = Path(target)
        candidates = [path if path.is_absolute() else root / path]
    else:
        parts = target.split(".")
        if not all(p.isidentifier() for p in parts):
            raise SpecError(f"model {spec!r}: {target!r} is not a Python module path")
        base = root.joinpath(*parts)
        candidates = [base.with_suffix(".py"), base / "__init__.py"]
    for candidate in candidates:
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root):
            raise UserCodeRefused(
                f"model {spec!r}: {target} is outside the user models directory "
                "(GPU_OPT_USER_MODELS_DIR); put the file there"
            )
        if resolved.is_file():
            return f"{resolved}:{attr}"
    raise SpecError(
        f"model {spec!r}: {target} not found in the user models directory (GPU_OPT_USER_MODELS_DIR)"
    )


def validate_model(spec: str, user_models_dir: Path | None) -> str:
    """Like :func:`worker_spec`, and built-in names are checked against torchvision / the yaml.

    Imports torchvision (or reads the yaml with Ultralytics): seconds the first
    time, so call it off the event loop.
    """
    resolved = worker_spec(spec, user_models_dir)
    if not is_user_code(resolved):
        from gpu_optimizer.models import ModelSpecError, resolve_builder

        try:
            resolve_builder(resolved)
        except ModelSpecError as exc:
            raise SpecError(str(exc)) from None
    return resolved
