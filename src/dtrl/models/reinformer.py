"""Reinformer (Zhuang et al. 2024): max-return sequence modelling.

Tokens per timestep are (s_t, g_t, a_t). A return head reads the s_t token and is trained by expectile
regression (expectile m = ``config.expectile``, close to 1) towards the observed return-to-go, so it
predicts the *largest return seen in the data* from that state; the action head reads the g_t token.
When acting, no target return is given: the model predicts g_t from s_t and feeds that prediction in
as the g_t token. Same API as ``DecisionTransformer`` (``act`` ignores its ``returns_to_go``; the
returned distribution's ``returns_to_go`` holds the prediction that was fed, which a rollout must
record so that ``forward`` can recompute the same log-probs later).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dtrl.config import ModelConfig
from dtrl.models.decision_transformer import DecisionTransformer, PolicyCache
from dtrl.models.distributions import ActionDistribution, at_least_float32
from dtrl.models.gpt import init_weights
from dtrl.objectives import expectile_loss


class Reinformer(DecisionTransformer):
    """Tokens (s_t, g_t, a_t); return head on s_t (expectile), action head on g_t."""

    max_chunk = 2  # act() runs (previous action, s_t), then the predicted g_t
    STATE, RETURN, ACTION = 0, 1, 2

    def __init__(self, config: ModelConfig, state_dim: int, act_dim: int, return_loss_weight: float = 1.0):
        super().__init__(config, state_dim, act_dim)
        self.return_head = nn.Linear(config.embed_dim, 1)
        self.return_loss_weight = return_loss_weight
        init_weights(self.return_head, config.n_layer)

    def forward_with_returns(
        self, states, actions, returns_to_go, timesteps, mask=None
    ) -> tuple[ActionDistribution, torch.Tensor]:
        """Like ``forward``, plus the return head's prediction [B, T] from each s_t token."""
        hidden = self._trunk(states, actions, returns_to_go, timesteps, mask, (self.STATE, self.RETURN))
        predicted_returns = at_least_float32(self.return_head(hidden[:, :, 0]).squeeze(-1))
        return self._action_distribution(hidden[:, :, 1], returns_to_go), predicted_returns

    def forward(self, states, actions, returns_to_go, timesteps, mask=None) -> ActionDistribution:
        hidden = self._trunk(states, actions, returns_to_go, timesteps, mask, (self.RETURN,))
        return self._action_distribution(hidden[:, :, 0], returns_to_go)

    def act(
        self, cache: PolicyCache, returns_to_go: torch.Tensor | None, states: torch.Tensor, timesteps: torch.Tensor
    ) -> ActionDistribution:
        """One env step. ``returns_to_go`` is ignored: g_t is the model's own max-return prediction."""
        del returns_to_go
        tokens = self._begin_step(cache)
        tokens.append(self._embed(self.STATE, states, timesteps).unsqueeze(1))
        hidden_state = self.transformer.forward_cached(torch.cat(tokens, dim=1), cache.kv)[:, -1]
        predicted_return = self.return_head(hidden_state).squeeze(-1)
        return_token = self._embed(self.RETURN, predicted_return, timesteps).unsqueeze(1)
        hidden_return = self.transformer.forward_cached(return_token, cache.kv)[:, -1]
        cache.awaiting_action = True
        cache.last_timesteps = timesteps
        return self._action_distribution(hidden_return, predicted_return)

    def reinformer_loss(
        self,
        dist: ActionDistribution,
        predicted_returns: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Action loss (Gaussian: NLL - temperature * entropy; deterministic: MSE) + weighted expectile
        loss of the predicted returns. Returns (loss, metrics); ``metrics['entropy']`` is attached."""
        return_loss = expectile_loss(returns_to_go - predicted_returns, self.config.expectile, mask)
        metrics = {"return_loss": return_loss.detach()}
        if self.stochastic:
            action_loss, nll, entropy = self.nll_entropy_loss(dist, actions, mask)
            metrics.update(nll=nll.detach(), entropy=entropy, temperature=self.temperature.detach())
        else:
            action_loss = self.mse_loss(dist, actions, mask)
            metrics["mse"] = action_loss.detach()
        return action_loss + self.return_loss_weight * return_loss, metrics

    def return_loss(self, states, actions, returns_to_go, timesteps, mask=None) -> torch.Tensor:
        """The expectile loss of the return head alone (masked mean over steps)."""
        _, predicted_returns = self.forward_with_returns(states, actions, returns_to_go, timesteps, mask)
        return expectile_loss(returns_to_go - predicted_returns, self.config.expectile, mask)

    def pretrain_loss(self, states, actions, returns_to_go, timesteps, mask=None):
        dist, predicted_returns = self.forward_with_returns(states, actions, returns_to_go, timesteps, mask)
        return self.reinformer_loss(dist, predicted_returns, actions, returns_to_go, mask)
