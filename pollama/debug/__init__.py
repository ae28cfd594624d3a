"""Debugging a model layer by layer: record our intermediates, compute the reference's, compare.

`record.py` runs a forward pass with the backend's recorder on (what `ctx.record` names in
model code), `reference.py` gets the same tensors from transformers with forward hooks, and
`compare.py` lines them up and names the first one that goes wrong.
"""
