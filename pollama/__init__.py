"""pollama: Ollama's model engine and runner, in Python, on GGML's kernels."""

# The Ollama release whose API and CLI pollama follows (the newest stable tag of the Ollama
# sources read, v0.32.15; v0.33.0 was still at rc2). /api/version reports it, so clients that
# check the server's version (for the features they may use) see an Ollama version.
OLLAMA_VERSION = "0.32.15"


def version() -> str:
    """The Ollama version pollama implements: what /api/version and `pollama --version` report."""
    return OLLAMA_VERSION


def package_version() -> str:
    """pollama's own version, as installed (the registry client's User-Agent names it)."""
    from importlib import metadata

    try:
        return metadata.version("pollama")
    except metadata.PackageNotFoundError:
        return "0.0.0"
