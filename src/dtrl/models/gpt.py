"""A causal transformer over token embeddings, nanoGPT-style, with sliding-window attention.

Every token attends to itself and to the ``window - 1`` tokens before it (a Mistral-style band,
``window = context_length * tokens_per_step``). There is no absolute position embedding inside the
transformer, so the output at a token depends only on the tokens in its band (per layer), which is what
makes an incremental rollout with a ring buffer of the last ``window`` keys/values per layer compute
*the same function* as the uncached forward over the whole history. Within a training window of
``context_length`` timesteps the band covers everything: ordinary causal attention.

The caller (``DecisionTransformer``, ``Reinformer``) turns (return, state, action) into token embeddings;
this module only mixes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dtrl.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.embed_dim // config.n_head
        self.c_attn = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.c_proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, N, hd]

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def project_qkv_subset(
        self, x: torch.Tensor, query_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keys/values for every token of x [B, N, E] but queries only for x[:, query_index]."""
        embed = x.shape[-1]
        weight, bias = self.c_attn.weight, self.c_attn.bias
        k, v = F.linear(x, weight[embed:], bias[embed:]).split(embed, dim=2)
        q = F.linear(x[:, query_index], weight[:embed], bias[:embed])
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def attend(self, q, k, v, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """q [B,H,Nq,hd] over k, v [B,H,Nk,hd]; ``attn_mask`` is boolean, True = may attend."""
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        batch, _, length, _ = y.shape
        y = y.transpose(1, 2).reshape(batch, length, self.n_head * self.head_dim)
        return self.resid_dropout(self.c_proj(y))


ACTIVATIONS = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,  # exact (erf) GELU
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": nn.ReLU,  # Hugging Face DecisionTransformerConfig's default
}


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.embed_dim, 4 * config.embed_dim)
        self.act = ACTIVATIONS[config.activation]()
        self.c_proj = nn.Linear(4 * config.embed_dim, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block (as GPT-2 / nanoGPT)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.embed_dim)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.embed_dim)
        self.mlp = MLP(config)


@dataclass
class KVCache:
    """Per-layer ring buffers of the most recent keys/values, for incremental decoding.

    Slot order does not matter (attention has no positions inside the transformer); ``positions``
    records which absolute token each slot holds, so the band mask can be built from it. The buffer
    has ``window + max_chunk - 1`` slots so a chunk of up to ``max_chunk`` new tokens can be written
    before attending without evicting a key that one of those tokens still needs.
    """

    keys: list[torch.Tensor]
    """per layer [B, H, slots, head_dim]"""
    values: list[torch.Tensor]
    """per layer [B, H, slots, head_dim]"""
    positions: torch.Tensor
    """[slots] long: absolute token index held by each slot, -1 while empty"""
    valid: torch.Tensor
    """[B, slots] bool: False for padding tokens and for rows that were reset"""
    window: int
    """attention band in tokens: the model's, or less for a cache that will never hold more tokens
    (its keys are then all in band, so the result is the same with fewer slots to attend over)"""
    n_tokens: int = 0
    """tokens written so far (the absolute index of the next token)"""

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def slots(self) -> int:
        return self.positions.shape[0]

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Forget the history of the given rows (bool mask [B] or indices): they start a new episode."""
        self.valid[rows] = False

    def select_rows(self, index: torch.Tensor) -> KVCache:
        """A cache of the rows ``index`` [B'] only (e.g. the episodes still running), in that order."""
        return KVCache(keys=[k[index] for k in self.keys], values=[v[index] for v in self.values],
                       positions=self.positions.clone(), valid=self.valid[index], window=self.window,
                       n_tokens=self.n_tokens)


class GPT(nn.Module):
    """The transformer trunk: token embeddings [B, N, E] in, hidden states [B, N, E] out."""

    def __init__(self, config: ModelConfig, tokens_per_step: int):
        super().__init__()
        self.config = config
        self.window = config.context_length * tokens_per_step
        """attention band in tokens: each token sees itself and the window - 1 tokens before it"""
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.embed_dim)

    def band_mask(
        self, n_tokens: int, token_valid: torch.Tensor | None, device, query_index: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Boolean [B or 1, 1, Nq, N] mask (True = may attend), or None when plain causal attention
        over all N queries is the same thing. ``query_index`` keeps only those query rows."""
        if token_valid is None and n_tokens <= self.window and query_index is None:
            return None
        keys = torch.arange(n_tokens, device=device)
        queries = keys if query_index is None else query_index
        offset = queries[:, None] - keys[None, :]  # query - key
        mask = ((offset >= 0) & (offset < self.window))[None, None]
        if token_valid is not None:
            # padding keys are hidden; every query still sees itself so no softmax row is empty
            # (outputs at padding tokens are garbage that the caller masks out)
            mask = mask & (token_valid[:, None, None, :] | (offset == 0)[None, None])
        return mask

    def forward(
        self,
        x: torch.Tensor,
        token_valid: torch.Tensor | None = None,
        return_kv: bool = False,
        output_index: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Uncached forward of x [B, N, E]. ``token_valid`` [B, N] bool (None: all valid).

        ``output_index`` (long [Nq]): only these tokens' outputs are wanted, e.g. the s_t tokens a
        Decision Transformer predicts from. The last block then runs queries, attention output and MLP
        for those tokens alone (its keys/values still cover every token): same numbers, ~1/7 fewer
        FLOPs for a 4-layer DT. With ``return_kv`` also returns each layer's (keys, values)
        [B, H, N, hd], used to prefill a cache.
        """
        if token_valid is not None and bool(token_valid.all()):
            token_valid = None
        n_tokens = x.shape[1]
        mask = self.band_mask(n_tokens, token_valid, x.device)
        x = self.drop(x)
        kv = []
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            if layer == last and output_index is not None:
                q, k, v = block.attn.project_qkv_subset(block.ln_1(x), output_index)
                x = x[:, output_index]
                layer_mask, is_causal = self.band_mask(n_tokens, token_valid, x.device, output_index), False
            else:
                q, k, v = block.attn.project_qkv(block.ln_1(x))
                layer_mask, is_causal = mask, mask is None
            if return_kv:
                kv.append((k, v))
            x = x + block.attn.attend(q, k, v, layer_mask, is_causal)
            x = x + block.mlp(block.ln_2(x))
        x = self.ln_f(x)
        return (x, kv) if return_kv else x

    # ---- incremental decoding -------------------------------------------------------------------

    def new_cache(self, batch_size: int, max_chunk: int, device=None, dtype=None,
                  max_tokens: int | None = None) -> KVCache:
        """An empty cache; ``max_tokens``: the caller never writes more tokens than this (e.g. a
        rollout that rebuilds its cache every step from a short context), so fewer slots suffice."""
        param = self.ln_f.weight
        device = device or param.device
        dtype = dtype or param.dtype
        window = self.window if max_tokens is None else max(1, min(self.window, max_tokens))
        slots = window + max_chunk - 1
        shape = (batch_size, self.config.n_head, slots, self.config.embed_dim // self.config.n_head)
        return KVCache(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in self.blocks],
            positions=torch.full((slots,), -1, dtype=torch.long, device=device),
            valid=torch.zeros(batch_size, slots, dtype=torch.bool, device=device),
            window=window,
        )

    def forward_cached(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run ``c`` new tokens x [B, c, E] (c <= the cache's max chunk), append them to the cache and
        return the output of the last one [B, 1, E] (the last block runs its query and MLP only)."""
        chunk = x.shape[1]
        start = cache.n_tokens
        if chunk > cache.slots - cache.window + 1:
            raise ValueError(f"chunk of {chunk} tokens is larger than this cache allows")
        new_positions = torch.arange(start, start + chunk, device=x.device)
        slots = new_positions % cache.slots
        cache.positions[slots] = new_positions
        cache.valid[:, slots] = True
        # band mask over slots, built from the absolute positions they hold
        offset = new_positions[:, None] - cache.positions[None, :]  # [c, slots]
        mask = (offset >= 0) & (offset < cache.window) & (cache.positions[None, :] >= 0)
        mask = (mask[None] & cache.valid[:, None, :])[:, None]  # [B, 1, c, slots]
        x = self.drop(x)
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            if layer == last and chunk > 1:
                q, k, v = block.attn.project_qkv_subset(block.ln_1(x), torch.tensor([chunk - 1], device=x.device))
                x, mask = x[:, -1:], mask[:, :, -1:]
            else:
                q, k, v = block.attn.project_qkv(block.ln_1(x))
            cache.keys[layer][:, :, slots] = k
            cache.values[layer][:, :, slots] = v
            x = x + block.attn.attend(q, cache.keys[layer], cache.values[layer], mask, False)
            x = x + block.mlp(block.ln_2(x))
        cache.n_tokens = start + chunk
        return self.ln_f(x)

    def prefill_cache(self, x: torch.Tensor, token_valid: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """Fill an empty cache from a whole history x [B, N, E] in one uncached pass; returns its outputs."""
        if cache.n_tokens != 0:
            raise ValueError("prefill needs a fresh cache (new_cache)")
        out, kv = self.forward(x, token_valid, return_kv=True)
        n_tokens = x.shape[1]
        keep = min(n_tokens, cache.slots)
        positions = torch.arange(n_tokens - keep, n_tokens, device=x.device)
        slots = positions % cache.slots
        for layer, (k, v) in enumerate(kv):
            cache.keys[layer][:, :, slots] = k[:, :, n_tokens - keep:]
            cache.values[layer][:, :, slots] = v[:, :, n_tokens - keep:]
        cache.positions[slots] = positions
        cache.valid[:, slots] = True if token_valid is None else token_valid[:, n_tokens - keep:]
        cache.n_tokens = n_tokens
        return out


def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
