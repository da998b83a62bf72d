"""promptintern: internalize a recurring prompt into a model by progressive LoRA fine-tuning."""

__version__ = "0.1.0"
