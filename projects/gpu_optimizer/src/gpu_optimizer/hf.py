"""``hf:`` model specs: Hugging Face transformers architectures from their config, no weights.

Grammar (docs/gpu_optimizer.md, "Model specs")::

    hf:ARCH[:TASK][?key=value&key=value]
    hf:path/to/config.json[:TASK][?key=value&...]      (or a directory holding config.json)

``ARCH`` is a transformers ``model_type`` (``gpt2``, ``llama``, ``bert``,
``t5``, ``vit``, ...): its config class with the library's defaults. ``TASK``
picks the head (``causal-lm``, ``masked-lm``, ``seq2seq-lm``,
``image-classification``, ``object-detection``, ``base``); by default the
first of those the architecture has. ``key=value`` overrides config fields
(values read as JSON: ``hidden_size=256``, ``tie_word_embeddings=false``).

Nothing is downloaded, ever: a hub name (``meta-llama/Llama-3.2-1B``) is
refused at once with the way out (save its config.json and pass the path),
and ``trust_remote_code`` is never set, so no config runs code.

Batches are dicts, as a Trainer passes them: token models get
``input_ids`` (and ``labels``) of shape ``(batch, seq_len)`` with ids drawn
from the config's ``vocab_size``; image models get ``pixel_values`` (and
class ``labels``). The loss is the model's own (``output.loss``).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_optimizer.models import ModelSpecError

PREFIX = "hf:"
# Head name -> (transformers auto-mapping name, auto class name), in default order.
TASKS: dict[str, tuple[str, str]] = {
    "causal-lm": ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "AutoModelForCausalLM"),
    "seq2seq-lm": ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "AutoModelForSeq2SeqLM"),
    "masked-lm": ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "AutoModelForMaskedLM"),
    "image-classification": (
        "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
        "AutoModelForImageClassification",
    ),
    "object-detection": ("MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES", "AutoModelForObjectDetection"),
    "base": ("MODEL_MAPPING_NAMES", "AutoModel"),
}
TOKEN_TASKS = {"causal-lm", "seq2seq-lm", "masked-lm"}


def is_hf_spec(spec: str) -> bool:
    return spec.strip().startswith(PREFIX)


@dataclass(frozen=True)
class HfSpec:
    source: str  # a model_type, or a config.json path
    task: str | None
    overrides: tuple[tuple[str, Any], ...]

    @property
    def is_file(self) -> bool:
        return self.source.endswith(".json") or "/" in self.source or "\\" in self.source


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_hf_spec(spec: str) -> HfSpec:
    body = spec.strip()[len(PREFIX) :]
    body, _, query = body.partition("?")
    overrides: list[tuple[str, Any]] = []
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ModelSpecError(
                f"bad model spec {spec!r}: config overrides are key=value pairs joined by &, "
                f"got {item!r}"
            )
        overrides.append((key.strip(), _value(value.strip())))
    source, task = body, None
    head, sep, tail = body.rpartition(":")
    if sep and tail in TASKS:
        source, task = head, tail
    elif sep and tail and not (len(head) == 1 and head.isalpha()):  # not a Windows drive
        raise ModelSpecError(
            f"bad model spec {spec!r}: unknown task {tail!r}; choose one of {', '.join(TASKS)}"
        )
    if not source:
        raise ModelSpecError(f"bad model spec {spec!r}: expected hf:ARCH or hf:path/config.json")
    return HfSpec(source, task, tuple(overrides))


def _auto() -> Any:
    try:
        import transformers
        from transformers.models.auto import modeling_auto
    except ImportError:
        raise ModelSpecError("hf: model specs need the transformers package") from None
    return transformers, modeling_auto


def load_config(parsed: HfSpec, spec: str) -> Any:
    """The config object, without touching the network (raises ModelSpecError)."""
    transformers, _ = _auto()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    overrides = dict(parsed.overrides)
    if parsed.is_file:
        path = Path(parsed.source)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelSpecError(
                f"{spec}: {parsed.source} is not a built-in transformers config class "
                "(a model_type such as gpt2 or llama) and no such config.json exists; this tool "
                "never downloads from the hub: save the model's config.json and pass "
                "hf:path/to/config.json"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelSpecError(f"{spec}: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("model_type") not in CONFIG_MAPPING_NAMES:
            kind = data.get("model_type") if isinstance(data, dict) else None
            raise ModelSpecError(
                f"{spec}: {path} has model_type {kind!r}, which this transformers "
                f"{transformers.__version__} has no built-in config class for"
            )
        data = {k: v for k, v in data.items() if k not in ("auto_map", "trust_remote_code")}
        model_type = data.pop("model_type")
        return transformers.AutoConfig.for_model(model_type, **{**data, **overrides})
    if parsed.source not in CONFIG_MAPPING_NAMES:
        close = sorted(n for n in CONFIG_MAPPING_NAMES if parsed.source.lower() in n)[:6]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ModelSpecError(
            f"{spec}: {parsed.source!r} is not a built-in transformers config class{hint}; "
            "this tool never downloads from the hub: use a model_type such as gpt2 or llama, "
            "or save the model's config.json and pass hf:path/to/config.json"
        )
    try:
        return transformers.AutoConfig.for_model(parsed.source, **overrides)
    except Exception as exc:
        raise ModelSpecError(f"{spec}: bad config override: {exc}") from None


def pick_task(config: Any, task: str | None, spec: str) -> str:
    _, modeling_auto = _auto()
    available = [
        name
        for name, (mapping, _) in TASKS.items()
        if config.model_type in getattr(modeling_auto, mapping, {})
    ]
    if task is None:
        if not available:
            raise ModelSpecError(f"{spec}: transformers has no model class for {config.model_type}")
        return available[0]
    if task not in available:
        raise ModelSpecError(
            f"{spec}: {config.model_type} has no {task} head; it has {', '.join(available)}"
        )
    return task


def is_token_model(config: Any) -> bool:
    return getattr(config, "vocab_size", None) is not None and not hasattr(config, "image_size")


def default_input_shape(spec: str) -> tuple[int, ...] | None:
    """One sample's shape when the user gave none: an image model's config knows it."""
    config = load_config(parse_hf_spec(spec), spec)
    if is_token_model(config):
        return None
    size = getattr(config, "image_size", 224)
    size = size if isinstance(size, int) else int(size[0])
    return (int(getattr(config, "num_channels", 3)), size, size)


def _token_batch(vocab: int, with_labels: bool) -> Callable[[int, tuple[int, ...]], Any]:
    def make(batch: int, shape: tuple[int, ...]) -> dict[str, Any]:
        import torch

        if len(shape) != 1:
            raise ModelSpecError(
                f"a token model takes one sample of shape (seq_len,), got {shape}: "
                "use --seq-len N (or --input-shape N)"
            )
        ids = torch.randint(0, vocab, (batch, shape[0]))
        return {"input_ids": ids, "labels": ids} if with_labels else {"input_ids": ids}

    return make


def _image_batch(num_labels: int | None) -> Callable[[int, tuple[int, ...]], Any]:
    def make(batch: int, shape: tuple[int, ...]) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {"pixel_values": torch.randn(batch, *shape)}
        if num_labels:
            out["labels"] = torch.randint(0, num_labels, (batch,))
        return out

    return make


def model_loss(output: Any, inputs: Any) -> Any:
    """The model's own loss when it computed one, else the dense stand-in of models.py."""
    from gpu_optimizer.models import default_loss

    loss = output.get("loss") if hasattr(output, "get") else None
    if loss is not None:
        return loss
    return default_loss(output.to_tuple() if hasattr(output, "to_tuple") else output, inputs)


def hf_builder(spec: str) -> Callable[[], Any]:
    """A zero-argument builder of the :class:`~gpu_optimizer.models.ModelBundle` for ``spec``."""
    from gpu_optimizer.models import ModelBundle

    parsed = parse_hf_spec(spec)
    config = load_config(parsed, spec)
    task = pick_task(config, parsed.task, spec)
    transformers, _ = _auto()
    auto_cls = getattr(transformers, TASKS[task][1])
    if hasattr(config, "use_cache"):
        config.use_cache = False  # training: no KV cache, as every fine-tuning script sets
    if is_token_model(config):
        make_input = _token_batch(int(config.vocab_size), task in TOKEN_TASKS)
    else:
        labels = getattr(config, "num_labels", None) if task == "image-classification" else None
        make_input = _image_batch(labels)

    def build() -> ModelBundle:
        try:
            model = auto_cls.from_config(config, attn_implementation="sdpa")
        except (ValueError, TypeError):
            model = auto_cls.from_config(config)  # architectures without an SDPA path
        return ModelBundle(model, make_input, model_loss)

    return build


def enable_gradient_checkpointing(model: Any) -> bool:
    """Checkpoint as transformers does (``gradient_checkpointing_enable``), non-reentrant.

    Returns False for models that do not support it (the caller falls back to
    the generic block checkpointing). The checkpoint function is wrapped so the
    tracker still sees the kept block inputs as activations.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    from gpu_optimizer.checkpointing import checkpoint_keeping_stats

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(
            module, "_gradient_checkpointing_func"
        ):
            module._gradient_checkpointing_func = checkpoint_keeping_stats
    return True


def disable_gradient_checkpointing(model: Any) -> None:
    if getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()


@contextlib.contextmanager
def unpacked_batches() -> Iterator[None]:
    """Tell transformers our batches hold one sequence per row, as the real step would find.

    transformers looks at ``position_ids`` to detect several sequences packed
    in one row; on fake tensors it cannot read them and assumes packing, which
    builds a full ``(batch, 1, seq, seq)`` mask and so picks another attention
    kernel than the real step (no mask, ``is_causal``). The batches the
    estimator makes are never packed, so the answer is known: none.
    """
    masking: Any = sys.modules.get("transformers.masking_utils")
    if masking is None or not hasattr(masking, "find_packed_sequence_indices"):
        yield
        return
    original = masking.find_packed_sequence_indices
    masking.find_packed_sequence_indices = lambda *_a, **_k: None
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = original
