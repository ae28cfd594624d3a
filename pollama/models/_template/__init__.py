"""A model folder to copy (docs/adding-a-model.md): not imported by the registry, so never registered."""
