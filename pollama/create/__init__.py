"""Creating models: Modelfile, conversion from Hugging Face checkpoints, quantization."""
