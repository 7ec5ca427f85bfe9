"""QLoRA fine-tuning of the generated dataset: config, data (templating + label masking),
model (quantization and LoRA helpers), loss, trainer, eval.

Import the submodules directly; this package imports nothing heavy on its own.
"""

import logging

# bitsandbytes looks for an optional kernel of its CPU inference layout when it is first
# imported (transformers' Trainer may import it before any module of ours runs), and warns
# when the kernel is absent; keep_one_4bit_layout turns that layout off anyway.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
