"""QLoRA fine-tuning of the generated dataset: config, data (templating + label masking),
model (quantization and LoRA helpers), loss, trainer, eval.

Import the submodules directly; this package imports nothing heavy on its own.
"""

import os

# Idle OpenMP threads sleep instead of spinning. On a small or shared CPU, spinning threads
# wait at every parallel region for peers that the OS has descheduled: a QLoRA step of the
# embedded model on 2 busy cores took 186 s with the default, 30 s with PASSIVE. It only
# takes effect when set before torch loads (the CLI imports this package first); an
# OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
