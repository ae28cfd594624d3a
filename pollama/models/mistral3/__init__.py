"""Mistral 3 (Mistral Small 3.1, Pixtral vision)."""
