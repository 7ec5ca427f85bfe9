"""seed2lora: from a handful of human seed tasks to an instruction dataset and a LoRA adapter.

The Python API (docs/python.md):

    from pipeline import Run
    run = Run(settings={"teacher.spec": "openai:gpt-4o-mini", "bootstrap.num_instructions": 50}, name="mine")
    run.run()                        # the config's stages, resuming what is done
    tasks = run.records("filter")    # the dataset, as Task records

Names load on first use, so `import pipeline` stays light (no torch).
"""

import os

# Idle OpenMP threads sleep instead of spinning. On a small or shared CPU, spinning threads
# wait at every parallel region for peers that the OS has descheduled: a QLoRA step of the
# embedded model on 2 busy cores took 186 s with the default, 20 s with PASSIVE, and local
# generation slows down the same way. It only takes effect when set before torch loads,
# so it lives here; an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["Run", "RunConfig", "Task", "Instance", "load_config", "Seed2LoraError", "BudgetReached",
           "TeacherError", "TeacherUnavailable", "Incomplete", "LowYield", "InputError", "__version__"]
# The faults a Run raises (docs/python.md), each with the CLI's exit code: 3, 2 (TeacherError), 4, 5, 6 and 2.
_HOMES = {"Run": "api", "RunConfig": "config", "load_config": "config", "Task": "records", "Instance": "records",
          "Seed2LoraError": "errors", "BudgetReached": "budget", "TeacherError": "errors", "TeacherUnavailable": "errors",
          "Incomplete": "errors", "LowYield": "errors", "InputError": "errors"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
