"""Training: fitting the model, one process or several, and quantization-aware training."""
