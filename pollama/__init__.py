"""pollama: Ollama's model engine and runner, in Python, on GGML's kernels."""


def version() -> str:
    """pollama's version, as installed (what /api/version and `pollama --version` report)."""
    from importlib import metadata

    try:
        return metadata.version("pollama")
    except metadata.PackageNotFoundError:
        return "0.0.0"
