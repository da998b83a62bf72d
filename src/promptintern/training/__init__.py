"""The parts of progressive LoRA training, one concern per module (the stage loop is
:mod:`promptintern.trainer`):

- :mod:`.data`: stage records → token ids with answer-only labels, and their padding;
- :mod:`.loss`: the answer-only cross-entropy (LM-head logits at answer positions only);
- :mod:`.hf`: the Hugging Face ``Trainer`` subclass, its callbacks and ``TrainingArguments``
  (transformers is imported only when they are built);
- :mod:`.validation`: each stage's validation loss (its own prompt, the Trainer's ``evaluate``
  with the answer-only loss, RNG streams untouched) and the last stage's best checkpoint;
- :mod:`.checkpoints`: the run directory's bookkeeping: what was trained (``config.json``),
  which stages are done, which checkpoint a stage resumes from, and what it carries.
"""
