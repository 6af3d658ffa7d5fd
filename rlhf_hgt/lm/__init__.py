"""The language-model stack: models, data, reward model, DPO (TRL) and our own LoRA PPO.

Importing this package is light; each module imports torch/transformers/TRL itself.
"""
