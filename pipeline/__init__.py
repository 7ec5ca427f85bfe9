"""seed2lora: from a handful of human seed tasks to an instruction dataset and a LoRA adapter."""

import os

# Idle OpenMP threads sleep instead of spinning. On a small or shared CPU, spinning threads
# wait at every parallel region for peers that the OS has descheduled: a QLoRA step of the
# embedded model on 2 busy cores took 186 s with the default, 20 s with PASSIVE, and local
# generation slows down the same way. It only takes effect when set before torch loads,
# so it lives here; an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
