"""Decision Transformer (Chen et al. 2021) with the ODT stochastic head (Zheng et al. 2022).

Each timestep t is three tokens, (return-to-go g_t, state s_t, action a_t); the action at t is
predicted from the hidden state of s_t, i.e. from everything up to s_t. Tokens are per-token linear
embeddings plus an optional learned embedding of the episode timestep, then LayerNorm; the trunk is
``gpt.GPT`` with a sliding window of ``context_length`` timesteps.

Two ways to run it, computing the same function:
  * ``forward`` over whole windows [B, T] (training, recomputing log-probs);
  * ``new_cache`` / ``act`` / ``append_action`` one env step at a time with a KV cache (rollouts); each
    step runs one chunk (the previous action, g_t, s_t) through the trunk, so its cost does not grow
    with the episode length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from dtrl.config import ModelConfig
from dtrl.models.distributions import ActionDistribution, at_least_float32
from dtrl.models.gpt import GPT, KVCache, init_weights
from dtrl.objectives import masked_mean


@dataclass
class PolicyCache:
    """State of an incremental rollout: the trunk's KV cache and the token bookkeeping around it."""

    kv: KVCache
    pending_action: torch.Tensor | None = None
    """[B, 1, E] embedding of the action appended last, run through the trunk with the next act()"""
    awaiting_action: bool = False
    """act() was called and append_action() not yet"""
    last_timesteps: torch.Tensor | None = None
    """[B] timesteps of the last act(), used to embed the action that follows"""

    @property
    def batch_size(self) -> int:
        return self.kv.batch_size

    def select_rows(self, index: torch.Tensor) -> PolicyCache:
        """A cache of the rows ``index`` [B'] only, in that order (rollouts drop ended episodes)."""
        return PolicyCache(
            kv=self.kv.select_rows(index),
            pending_action=None if self.pending_action is None else self.pending_action[index],
            awaiting_action=self.awaiting_action,
            last_timesteps=None if self.last_timesteps is None else self.last_timesteps[index],
        )


class DecisionTransformer(nn.Module):
    """Tokens (g_t, s_t, a_t); the action head reads s_t. See the module docstring."""

    tokens_per_step = 3
    max_chunk = 3  # act() runs (previous action, g_t, s_t) together
    RETURN, STATE, ACTION = 0, 1, 2  # token slot of each modality within a timestep

    def __init__(self, config: ModelConfig, state_dim: int, act_dim: int):
        super().__init__()
        config.validate()
        self.config = config
        self.state_dim = state_dim
        self.act_dim = act_dim
        embed = config.embed_dim
        self.embed_return = nn.Linear(1, embed)
        self.embed_state = nn.Linear(state_dim, embed)
        self.embed_action = nn.Linear(act_dim, embed)
        self.embed_timestep = nn.Embedding(config.max_timestep, embed) if config.timestep_embedding else None
        self.embed_ln = nn.LayerNorm(embed)
        self.transformer = GPT(config, self.tokens_per_step)
        self.action_mu = nn.Linear(embed, act_dim)
        self.action_log_std = nn.Linear(embed, act_dim) if config.policy == "gaussian" else None
        init_weights(self, config.n_layer)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.init_temperature)))
        self.target_entropy = -float(act_dim)

    # ---- properties the algorithms use ----------------------------------------------------------

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    @property
    def receptive_field(self) -> int:
        """Timesteps of history before a segment after which recomputed outputs equal the rollout's.

        Each layer widens a token's dependence by ``3K - 1`` tokens, so the s_t (or g_t) token of the
        first segment step needs ``ceil((n_layer (3K - 1) - 1) / 3)`` earlier timesteps; ``n_layer * K``
        is a little more and easy to remember.
        """
        return self.config.n_layer * self.config.context_length

    @property
    def stochastic(self) -> bool:
        return self.action_log_std is not None

    def policy_parameters(self) -> list[nn.Parameter]:
        """Everything but ``log_temperature`` (which ODT trains with its own optimiser)."""
        return [p for name, p in self.named_parameters() if name != "log_temperature"]

    # ---- embeddings and heads -------------------------------------------------------------------

    def _timestep_embedding(self, timesteps: torch.Tensor) -> torch.Tensor | float:
        if self.embed_timestep is None:
            return 0.0
        # episodes longer than the table reuse its last row rather than crash mid-rollout
        return self.embed_timestep(timesteps.long().clamp(0, self.config.max_timestep - 1))

    def _embed(self, kind: int, values: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """One modality's tokens: values [..., D] (returns [...]), timesteps [...] -> [..., E]."""
        if kind == self.RETURN:
            token = self.embed_return(values.unsqueeze(-1).to(self.embed_return.weight.dtype))
        elif kind == self.STATE:
            token = self.embed_state(values.to(self.embed_state.weight.dtype))
        else:
            token = self.embed_action(values.to(self.embed_action.weight.dtype))
        return self.embed_ln(token + self._timestep_embedding(timesteps))

    def _action_distribution(self, hidden: torch.Tensor, returns_to_go: torch.Tensor | None) -> ActionDistribution:
        # heads may run in bfloat16 under autocast; the distribution maths stays in >= float32
        mu = at_least_float32(self.action_mu(hidden))
        if self.action_log_std is None:
            return ActionDistribution(mu, None, returns_to_go)
        # ODT: squash the raw log-std into [log_std_min, log_std_max] with a tanh
        low, high = self.config.log_std_min, self.config.log_std_max
        log_std = low + 0.5 * (high - low) * (torch.tanh(at_least_float32(self.action_log_std(hidden))) + 1.0)
        return ActionDistribution(mu, log_std, returns_to_go)

    def _token_sequence(self, states, actions, returns_to_go, timesteps) -> torch.Tensor:
        """[B, T, ...] inputs -> [B, 3T, E] interleaved in this model's token order."""
        tokens = [None] * 3
        tokens[self.RETURN] = self._embed(self.RETURN, returns_to_go, timesteps)
        tokens[self.STATE] = self._embed(self.STATE, states, timesteps)
        tokens[self.ACTION] = self._embed(self.ACTION, actions, timesteps)
        batch, steps = timesteps.shape
        return torch.stack(tokens, dim=2).reshape(batch, 3 * steps, -1)

    def _trunk(self, states, actions, returns_to_go, timesteps, mask, slots: tuple[int, ...]) -> torch.Tensor:
        """Hidden states [B, T, len(slots), E] of the uncached forward at the given token slots of each
        step (only those are computed in the last block)."""
        batch, steps = timesteps.shape
        x = self._token_sequence(states, actions, returns_to_go, timesteps)
        token_valid = None if mask is None else mask.bool().repeat_interleave(3, dim=1)
        index = (torch.arange(steps, device=x.device)[:, None] * 3
                 + torch.tensor(slots, device=x.device)[None, :]).reshape(-1)
        return self.transformer(x, token_valid, output_index=index).reshape(batch, steps, len(slots), -1)

    # ---- sequence forward -----------------------------------------------------------------------

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> ActionDistribution:
        """states [B,T,O], actions [B,T,A], returns_to_go [B,T] (scaled), timesteps [B,T] long,
        mask [B,T] bool (True = real step; padding on the left) -> distribution over [B, T].

        The action at t is predicted from tokens up to s_t, so a_t itself is never seen by its own
        prediction (the value passed at the last step can be anything, e.g. zeros).
        """
        hidden = self._trunk(states, actions, returns_to_go, timesteps, mask, (self.STATE,))
        return self._action_distribution(hidden[:, :, 0], returns_to_go)

    # ---- incremental rollout --------------------------------------------------------------------

    def new_cache(self, batch_size: int, max_steps: int | None = None) -> PolicyCache:
        """An empty rollout cache; ``max_steps``: the caller feeds it at most this many steps (a
        short-context rollout rebuilds its cache every step), so it gets fewer slots: the same
        actions, computed faster (attention and allocation scale with the slots)."""
        max_tokens = None if max_steps is None else max_steps * self.tokens_per_step
        return PolicyCache(self.transformer.new_cache(batch_size, self.max_chunk, max_tokens=max_tokens))

    def _begin_step(self, cache: PolicyCache) -> list[torch.Tensor]:
        """Tokens that open a step: the pending previous action, if any."""
        if cache.awaiting_action:
            raise RuntimeError("act() was called twice without append_action() in between")
        tokens = [] if cache.pending_action is None else [cache.pending_action]
        cache.pending_action = None
        return tokens

    def reset_rows(self, cache: PolicyCache, rows: torch.Tensor) -> None:
        """Forget the history of some rows (bool [B] or indices) so they start a new episode at the
        next ``act`` (call it after ``append_action``); the other rows are unaffected."""
        if cache.awaiting_action:
            raise RuntimeError("reset_rows() between act() and append_action()")
        if cache.pending_action is not None:
            # the pending action still belongs to the old episode: run it in now, then hide it
            self.transformer.forward_cached(cache.pending_action, cache.kv)
            cache.pending_action = None
        cache.kv.reset_rows(rows)

    def act(
        self, cache: PolicyCache, returns_to_go: torch.Tensor, states: torch.Tensor, timesteps: torch.Tensor
    ) -> ActionDistribution:
        """One env step: append g_t [B] and s_t [B, O] at timesteps [B]; distribution over a_t [B]."""
        tokens = self._begin_step(cache)
        tokens.append(self._embed(self.RETURN, returns_to_go, timesteps).unsqueeze(1))
        tokens.append(self._embed(self.STATE, states, timesteps).unsqueeze(1))
        hidden = self.transformer.forward_cached(torch.cat(tokens, dim=1), cache.kv)
        cache.awaiting_action = True
        cache.last_timesteps = timesteps
        return self._action_distribution(hidden[:, -1], returns_to_go)

    def append_action(self, cache: PolicyCache, actions: torch.Tensor) -> None:
        """Record the action a_t [B, A] taken after the last ``act``."""
        if not cache.awaiting_action:
            raise RuntimeError("append_action() without a preceding act()")
        cache.pending_action = self._embed(self.ACTION, actions, cache.last_timesteps).unsqueeze(1)
        cache.awaiting_action = False

    def prefill(
        self,
        cache: PolicyCache,
        states: torch.Tensor,
        actions: torch.Tensor,
        returns_to_go: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Load a history of complete steps [B, T] (left-padded by ``mask``) into a fresh cache in one
        pass; the next ``act`` continues after it exactly as if the steps had been rolled out."""
        x = self._token_sequence(states, actions, returns_to_go, timesteps)
        token_valid = None if mask is None else mask.bool().repeat_interleave(3, dim=1)
        self.transformer.prefill_cache(x, token_valid, cache.kv)

    # ---- pretraining losses ---------------------------------------------------------------------

    def nll_entropy_loss(
        self, dist: ActionDistribution, actions: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ODT objective: mean NLL - temperature * entropy (temperature detached).

        Returns (loss, nll, entropy), the last two masked means; feed ``entropy`` to ``temperature_loss``.
        """
        nll = -masked_mean(dist.log_prob(actions), mask)
        entropy = masked_mean(dist.entropy(), mask)
        return nll - self.temperature.detach() * entropy, nll, entropy

    def temperature_loss(self, entropy: torch.Tensor) -> torch.Tensor:
        """ODT: temperature * (entropy - target_entropy), entropy detached; minimising it raises the
        temperature while the entropy is below target and lowers it above."""
        return self.temperature * (entropy - self.target_entropy).detach()

    def mse_loss(self, dist: ActionDistribution, actions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Original DT objective: mean squared error of the (tanh) action over valid steps."""
        return masked_mean(((dist.mean - actions) ** 2).mean(dim=-1), mask)

    def pretrain_loss(
        self, states, actions, returns_to_go, timesteps, mask=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Offline objective for this model's head: (loss, metrics). With the Gaussian head the
        metrics hold ``entropy`` (attached), to be passed to ``temperature_loss``."""
        dist = self(states, actions, returns_to_go, timesteps, mask)
        if not self.stochastic:
            loss = self.mse_loss(dist, actions, mask)
            return loss, {"mse": loss.detach()}
        loss, nll, entropy = self.nll_entropy_loss(dist, actions, mask)
        return loss, {"nll": nll.detach(), "entropy": entropy, "temperature": self.temperature.detach()}
