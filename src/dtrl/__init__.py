"""dtrl: online finetuning of Decision Transformers with pure reinforcement-learning gradients."""

__version__ = "0.1.0"
