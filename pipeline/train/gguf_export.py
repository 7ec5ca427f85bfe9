"""The names `seed2lora export-adapter` (pipeline/adapter_cli.py) imports from here, now in their own modules.

gguf_header.py reads a GGUF file, gguf_tensors.py names and lays out LoRA tensors for llama.cpp,
gguf_adapter.py writes the GGUF adapter, gguf_merged.py the merged model, ollama.py the Modelfile.
Import from those; this module goes once adapter_cli.py does.
"""

from .gguf_adapter import write_adapter_gguf
from .gguf_merged import write_merged_gguf
from .ollama import MODELFILE, chat_format, modelfile, ollama_name, run_commands

__all__ = ["MODELFILE", "chat_format", "modelfile", "ollama_name", "run_commands", "write_adapter_gguf",
           "write_merged_gguf"]
