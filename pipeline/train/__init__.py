"""QLoRA fine-tuning of the generated dataset: config, data (templating + label masking),
model (quantization and LoRA helpers), loss, trainer, eval.

Import the submodules directly; this package imports nothing heavy on its own.
"""
