"""Policies and critics: the Decision Transformer family, its action distribution, MLP critics,
and the on-disk policy format."""

from dtrl.models.decision_transformer import DecisionTransformer, PolicyCache
from dtrl.models.distributions import ActionDistribution
from dtrl.models.gpt import GPT, KVCache
from dtrl.models.reinformer import Reinformer

__all__ = ["ActionDistribution", "DecisionTransformer", "GPT", "KVCache", "PolicyCache", "Reinformer", "build_model"]


def build_model(config, state_dim: int, act_dim: int) -> DecisionTransformer:
    """The model named by ``config.architecture`` ('dt' or 'reinformer')."""
    cls = Reinformer if config.architecture == "reinformer" else DecisionTransformer
    return cls(config, state_dim, act_dim)
