"""MyModel (TEMPLATE: one line). A folder to copy (docs/adding-a-model.md): folders whose name
starts with `_` are never found, so this one is not an architecture until copied.

Importing the folder imports its model, which registers itself; relative, so a copy imports its own.
"""
from .model import MyModel  # noqa: F401
