"""seed2lora: from a handful of human seed tasks to an instruction dataset and a LoRA adapter."""

__version__ = "0.1.0"
