"""Hugging Face ``DecisionTransformerModel`` in and out (the ``dtrl hf import`` / ``dtrl hf export``
command around it is ``dtrl.hf_cli``).

The two models compute the same function on a window of K timesteps, so the weights map one to one:

  * tokens (R, s, a) per step, each ``embed_* + embed_timestep`` then ``embed_ln``: the same layers;
  * the HF GPT-2 trunk is called with ``position_ids = 0`` everywhere (the original DT code drops
    position embeddings), so its ``wpe`` adds one constant vector after ``embed_ln``: that vector is
    folded into ``embed_ln.bias`` on import (exported as a zero ``wpe``);
  * GPT-2's ``Conv1D`` weights are the transposes of ``nn.Linear``'s;
  * ``predict_action`` (Linear + Tanh) is the deterministic head ``action_mu``; HF's
    ``predict_state`` / ``predict_return`` are not used to act and are exported as zeros.

What the HF config does not hold, the user gives: the state normaliser (``--dataset`` to compute it
as the DT code did, or a ``dtrl_state_stats.json`` with a model card's state_mean/state_std), the
return scale and K. For RL finetuning a Gaussian head is added whose mean is the HF action (``--policy
gaussian``, state-independent initial ``--init-log-std``), so the greedy actions are unchanged.
``hf:DIR`` loads such a model wherever a policy is loaded (``--init``, ``dtrl eval``: through
``dtrl.models.loading``, which dispatches to ``load_huggingface_policy`` here). An imported
policy is evaluated on the last K steps re-run at each step, as the HF example acts; dtrl's own
sliding-window rollout differs from that after step K (docs/huggingface.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dtrl.config import ModelConfig
from dtrl.errors import DtrlError
from dtrl.files import atomic_replace_directory
from dtrl.models.checkpoint import LoadedPolicy, check_task_dims
from dtrl.models.decision_transformer import DecisionTransformer

# HF activation_function -> ModelConfig.activation
_ACTIVATION_FROM_HF = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                       "silu": "silu", "swish": "silu"}
_ACTIVATION_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
STATS_FILE = "dtrl_state_stats.json"
"""written beside an exported model: state mean/std, return scale, K and the target RTG, which the HF config lacks"""
CARD_FILE = "README.md"
"""the model card ``dtrl hf export`` writes (the Hub shows it on the model's page)"""


def _transformers():
    try:
        import transformers
    except ImportError:
        raise DtrlError("Hugging Face models need the transformers package: pip install 'dtrl[hf]'") from None
    return transformers


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise DtrlError(f"cannot convert this Hugging Face DecisionTransformer: {what}")


def _shared_tensors(n_layer: int) -> list[tuple[str, str, bool]]:
    """(Hugging Face name, dtrl name, transposed) of every tensor both models hold with the same
    meaning; ``embed_ln.bias`` (wpe folded in) and ``embed_timestep`` (optional in dtrl) are handled apart."""
    pairs = [(name, name, False) for name in ("embed_return.weight", "embed_return.bias", "embed_state.weight",
                                             "embed_state.bias", "embed_action.weight", "embed_action.bias",
                                             "embed_ln.weight")]
    for layer in range(n_layer):
        hf_block, block = f"encoder.h.{layer}.", f"transformer.blocks.{layer}."
        for norm in ("ln_1", "ln_2"):
            pairs += [(f"{hf_block}{norm}.{kind}", f"{block}{norm}.{kind}", False) for kind in ("weight", "bias")]
        for conv in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):  # GPT-2 Conv1D: [in, out]
            pairs += [(f"{hf_block}{conv}.weight", f"{block}{conv}.weight", True),
                      (f"{hf_block}{conv}.bias", f"{block}{conv}.bias", False)]
    pairs += [("encoder.ln_f.weight", "transformer.ln_f.weight", False),
              ("encoder.ln_f.bias", "transformer.ln_f.bias", False),
              ("predict_action.0.weight", "action_mu.weight", False),
              ("predict_action.0.bias", "action_mu.bias", False)]
    return pairs


def from_huggingface(hf_model, context_length: int, policy: Literal["deterministic", "gaussian"] = "deterministic",
                     init_log_std: float = -1.0, log_std_bounds: tuple[float, float] = (-5.0, 2.0)
                     ) -> DecisionTransformer:
    """A dtrl ``DecisionTransformer`` computing what ``hf_model`` (a ``DecisionTransformerModel``)
    computes on windows of ``context_length`` steps. ``policy='gaussian'`` adds a Gaussian head with
    mean the HF action and log-std ``init_log_std`` everywhere."""
    hf = hf_model.config
    _require(bool(getattr(hf, "action_tanh", True)), "action_tanh=False (dtrl's actions are tanh-squashed)")
    _require(hf.activation_function in _ACTIVATION_FROM_HF, f"activation {hf.activation_function!r} is not supported")
    _require(getattr(hf, "n_inner", None) in (None, 4 * hf.hidden_size), "n_inner must be 4 * hidden_size")
    _require(math.isclose(hf.layer_norm_epsilon, 1e-5), "layer_norm_epsilon must be 1e-5")
    _require(getattr(hf, "scale_attn_weights", True) and not getattr(hf, "scale_attn_by_inverse_layer_idx", False),
             "only 1/sqrt(head_dim) attention scaling is supported")
    low, high = log_std_bounds
    if policy == "gaussian" and not low < init_log_std < high:
        raise DtrlError(f"--init-log-std must lie strictly between {low} and {high}, got {init_log_std}")
    config = ModelConfig(
        architecture="dt", policy=policy, n_layer=hf.n_layer, n_head=hf.n_head, embed_dim=hf.hidden_size,
        context_length=context_length, dropout=float(hf.resid_pdrop),
        activation=_ACTIVATION_FROM_HF[hf.activation_function], timestep_embedding=True,
        max_timestep=hf.max_ep_len, log_std_min=low, log_std_max=high,
    )
    model = DecisionTransformer(config, hf.state_dim, hf.act_dim)
    source = {name: t.detach().to(torch.float32) for name, t in hf_model.state_dict().items()}
    target = {ours: source[hf].T.contiguous() if transposed else source[hf]
              for hf, ours, transposed in _shared_tensors(hf.n_layer)}
    target["embed_timestep.weight"] = source["embed_timestep.weight"]
    target["embed_ln.bias"] = source["embed_ln.bias"] + source["encoder.wpe.weight"][0]
    if policy == "gaussian":
        # ODT's head maps raw r to low + (high - low)(tanh(r) + 1)/2; pick the constant r giving init_log_std
        raw = math.atanh(2.0 * (init_log_std - low) / (high - low) - 1.0)
        target["action_log_std.weight"] = torch.zeros(hf.act_dim, hf.hidden_size)
        target["action_log_std.bias"] = torch.full((hf.act_dim,), raw)
    target["log_temperature"] = model.log_temperature.detach().clone()
    model.load_state_dict(target, strict=True)
    return model


def to_huggingface(model: DecisionTransformer):
    """A ``transformers.DecisionTransformerModel`` computing ``model``'s greedy action (tanh of the
    head's mean) on windows of up to ``context_length`` steps."""
    transformers = _transformers()
    config = model.config
    if config.architecture != "dt":
        raise DtrlError(f"only Decision Transformers export to Hugging Face, not {config.architecture!r}")
    hf_config = transformers.DecisionTransformerConfig(
        state_dim=model.state_dim, act_dim=model.act_dim, hidden_size=config.embed_dim, max_ep_len=config.max_timestep,
        action_tanh=True, n_layer=config.n_layer, n_head=config.n_head, n_inner=None,
        activation_function=_ACTIVATION_TO_HF[config.activation], resid_pdrop=config.dropout,
        embd_pdrop=config.dropout, attn_pdrop=config.dropout, layer_norm_epsilon=1e-5,
        n_positions=max(1024, 3 * config.context_length),
        bos_token_id=None, eos_token_id=None,  # GPT-2's token ids mean nothing here (HF warns about them)
    )
    hf_model = transformers.DecisionTransformerModel(hf_config)
    source = {name: t.detach().to("cpu", torch.float32) for name, t in model.state_dict().items()}
    target = {name: torch.zeros_like(t) for name, t in hf_model.state_dict().items()}
    for hf, ours, transposed in _shared_tensors(config.n_layer):
        target[hf] = source[ours].T.contiguous() if transposed else source[ours]
    target["embed_ln.bias"] = source["embed_ln.bias"]  # and wpe stays zero
    if "embed_timestep.weight" in source:  # without one, HF's table stays zero: the same function
        target["embed_timestep.weight"] = source["embed_timestep.weight"]
    hf_model.load_state_dict(target, strict=False)  # buffers HF keeps outside state_dict stay as built
    return hf_model.eval()


# ----------------------------------------------------------------------------------------------
# what the HF config lacks, kept beside the model


@dataclass
class StateStats:
    """``dtrl_state_stats.json`` beside a Hugging Face model: what its config does not record. The keys
    are those of the HF DT example and model cards (``state_mean``, ``state_std``, ``scale``...)."""

    state_mean: np.ndarray
    state_std: np.ndarray
    reward_scale: float | None = None
    """returns-to-go are divided by this (None: the task's)"""
    context_length: int | None = None
    """K the model was trained with (None: 20, the DT examples' K)"""
    task: str | None = None
    target_rtg: float | None = None
    """the return-to-go to condition on (what the policy's trainer evaluated it at; None: the task's)"""

    @classmethod
    def read(cls, file: Path, state_dim: int) -> StateStats:
        try:
            raw = json.loads(Path(file).read_text())
            mean = np.asarray(raw["state_mean"], dtype=np.float32)
            std = np.asarray(raw["state_std"], dtype=np.float32)
            scale = raw.get("reward_scale", raw.get("scale"))
            context = raw.get("context_length")
            target = raw.get("target_rtg")
            stats = cls(mean, std, None if scale is None else float(scale), None if context is None else int(context),
                        raw.get("task"), None if target is None else float(target))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DtrlError(f"cannot read {file}: expected JSON with 'state_mean' and 'state_std' lists "
                            f"({type(exc).__name__}: {exc})") from None
        if mean.shape != (state_dim,) or std.shape != (state_dim,):
            raise DtrlError(f"{file}: state_mean and state_std need {state_dim} values each (the model's state size)")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise DtrlError(f"{file}: state_mean must be finite and state_std positive")
        if stats.reward_scale is not None and not (math.isfinite(stats.reward_scale) and stats.reward_scale > 0):
            raise DtrlError(f"{file}: reward_scale must be a positive number")
        if stats.context_length is not None and stats.context_length < 1:
            raise DtrlError(f"{file}: context_length must be >= 1")
        if stats.target_rtg is not None and not math.isfinite(stats.target_rtg):
            raise DtrlError(f"{file}: target_rtg must be a finite number")
        return stats

    def to_dict(self) -> dict:
        return {"state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                "reward_scale": self.reward_scale, "context_length": self.context_length, "task": self.task,
                "target_rtg": self.target_rtg}


DEFAULT_CONTEXT_LENGTH = 20  # the K of the DT code and of the Hugging Face examples


def load_hf_model(source: str):
    """(DecisionTransformerModel, local folder or None) from a hub id or a save_pretrained folder."""
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()
    where = f"a Hugging Face DecisionTransformerModel from {source!r}"
    try:
        hf_config = transformers.AutoConfig.from_pretrained(source)
        if hf_config.model_type != "decision_transformer":
            raise DtrlError(f"cannot load {where}: it holds a {hf_config.model_type!r} model")
        hf_model, info = transformers.DecisionTransformerModel.from_pretrained(source, output_loading_info=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DtrlError(f"cannot load {where}: {first}") from None
    if info["missing_keys"]:
        # transformers would fill them with random numbers: a policy that runs but is not the model
        raise DtrlError(f"cannot load {where}: its weights lack {', '.join(sorted(info['missing_keys'])[:3])}")
    return hf_model.eval()


def _stats_file(source: str) -> Path:
    """``dtrl_state_stats.json`` of a local folder, or downloaded from the hub repository ``source``."""
    if Path(source).is_dir():
        return Path(source) / STATS_FILE
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source, STATS_FILE))
    except Exception:  # noqa: BLE001 - offline, no such repo or no such file: all mean "not there"
        return Path(source) / STATS_FILE


def load_huggingface_policy(source: str, task=None, device: str = "cpu", init_log_std: float = -1.0):
    """``hf:SOURCE`` as a ``LoadedPolicy`` (what ``--init hf:DIR`` and ``dtrl eval hf:DIR`` use): the HF
    model with a Gaussian head around its action, normalised by the ``dtrl_state_stats.json`` beside it."""
    from dtrl.tasks import get_task

    hf_model = load_hf_model(source)
    stats_file = _stats_file(source)
    if not stats_file.is_file():
        raise DtrlError(f"hf:{source} has no {STATS_FILE} (state_mean, state_std; optional reward_scale, "
                        "context_length, task): write one from the model card, or use dtrl hf import --dataset")
    stats = StateStats.read(stats_file, hf_model.config.state_dim)
    task = task if task is not None else stats.task
    if task is None:
        raise DtrlError(f"hf:{source}: give --task ({STATS_FILE} does not name one)")
    task = get_task(task) if isinstance(task, str) else task
    check_task_dims(task, hf_model.config.state_dim, hf_model.config.act_dim, Path(source))
    context = stats.context_length or DEFAULT_CONTEXT_LENGTH
    model = from_huggingface(hf_model, context, "gaussian", init_log_std).to(device).eval()
    from dtrl.data import StateNormalizer

    reward_scale = stats.reward_scale if stats.reward_scale is not None else float(task.reward_scale)
    # evaluated as the HF example acts: on the last K steps, re-run every step
    extra = {"imported_from": f"huggingface:{source}", "eval_context_length": context}
    if stats.target_rtg is not None and (stats.task is None or get_task(stats.task).name == task.name):
        extra["eval_rtg"] = stats.target_rtg  # the RTG its trainer evaluated it at (dtrl eval's default)
    meta = {"architecture": "dt", "task": task.name, "reward_scale": reward_scale, "extra": extra}
    return LoadedPolicy(model, StateNormalizer(stats.state_mean, stats.state_std), reward_scale, task.name, meta)


def export_stats(policy: LoadedPolicy) -> StateStats:
    """What an exported policy's ``dtrl_state_stats.json`` holds: its normaliser, return scale, the
    context it acts with (GRPO-DT's T_eval, say: what the HF example should re-run) and the target RTG
    its trainer evaluated it at (g_online for GRPO-DT; the task's evaluation RTG when none is recorded)."""
    from dtrl.tasks import get_task

    extra = policy.meta.get("extra", {})
    context = extra.get("eval_context_length") or policy.model.config.context_length
    target = extra.get("eval_rtg")
    target = float(target) if target is not None else float(get_task(policy.task_name).eval_rtg)
    return StateStats(policy.normalizer.mean, policy.normalizer.std, policy.reward_scale, int(context),
                      policy.task_name, target)


def model_card(policy: LoadedPolicy, stats: StateStats, score: dict | None = None, name: str = "MODEL") -> str:
    """README.md of an exported model: what it acts in, how it is conditioned, how it scored, how to load it.
    ``score``: the run's final evaluation (``eval_normalized_mean`` etc.), when the export came from a run."""
    from dtrl.tasks import get_task

    task = get_task(policy.task_name)
    extra = policy.meta.get("extra", {})
    trained = extra.get("algo") or ("pretrain" if "loss" in extra else None) or "unknown"
    lines = ["---", "library_name: transformers", "tags:", "- decision-transformer", "- reinforcement-learning",
             "- dtrl", "---", "", f"# Decision Transformer for {task.name} (dtrl)", "",
             f"A `DecisionTransformerModel` exported by `dtrl hf export` (dtrl {_dtrl_version()}); trained by "
             f"dtrl `{trained}`.", "", "| | |", "|---|---|",
             f"| task | `{task.name}` (gymnasium `{task.env_id}`, {task.max_episode_steps} steps) |",
             f"| state / action size | {policy.model.state_dim} / {policy.model.act_dim} |",
             f"| target return-to-go | {stats.target_rtg:g} (raw return; the model sees it divided by the scale) |",
             f"| return scale | {stats.reward_scale:g} |",
             f"| context | {stats.context_length} timesteps (re-run the model on the last {stats.context_length} "
             "steps at every step) |",
             "| state normaliser | (state - state_mean) / state_std, both in `dtrl_state_stats.json` |"]
    if score and score.get("eval_return_mean") is not None:
        normalized = score.get("eval_normalized_mean")
        shown = (f"D4RL-normalised {normalized:.1f} ± {score.get('eval_normalized_std') or 0:.1f}, "
                 if normalized is not None else "")
        lines.append(f"| score | {shown}return {score['eval_return_mean']:.1f} over {score.get('eval_episodes')} "
                     f"mean-action episodes at RTG {score.get('eval_target_rtg')} (the run's last evaluation) |")
    else:
        lines.append("| score | not recorded (exported from a policy folder, not a run) |")
    lines += ["", "## In dtrl", "", "```bash", f"dtrl eval hf:{name}      # at the target RTG and context above",
              f"dtrl finetune --algo grpo --task {task.name} --init hf:{name} --out runs/grpo", "```", "",
              "```python", "import dtrl", f'policy = dtrl.load("hf:{name}")', "actor = policy.actor()  "
              "# reset(), act(obs) -> action, observe(reward)", "print(dtrl.evaluate(policy, episodes=10))", "```",
              "", "## In transformers", "", "```python", "import json, torch",
              "from transformers import DecisionTransformerModel", "",
              f'model = DecisionTransformerModel.from_pretrained("{name}").eval()',
              f'stats = json.load(open("{name}/dtrl_state_stats.json"))  # hf_hub_download on the Hub',
              "mean, std = torch.tensor(stats['state_mean']), torch.tensor(stats['state_std'])",
              "# per step, the last `context_length` steps (left-padded, attention_mask 0 on padding):",
              "#   states = (obs - mean) / std; returns_to_go = (target_rtg - rewards so far) / reward_scale",
              "#   the action is the last position of model(states=..., actions=..., returns_to_go=...,",
              "#   timesteps=..., attention_mask=...).action_preds", "```", ""]
    return "\n".join(lines)


def _dtrl_version() -> str:
    import dtrl

    return dtrl.__version__


def save_huggingface(directory, policy: LoadedPolicy, score: dict | None = None) -> Path:
    """Write ``policy`` (a dtrl Decision Transformer) as a Hugging Face DecisionTransformerModel folder
    (``save_pretrained`` layout) with the ``dtrl_state_stats.json`` its config lacks and a model card
    (README.md; ``score``: the run's final evaluation), replacing ``directory`` atomically; returns the path."""
    hf_model = to_huggingface(policy.model)
    stats = export_stats(policy)
    card = model_card(policy, stats, score, name=str(directory))

    def fill(staging: Path) -> None:
        hf_model.save_pretrained(str(staging))
        (staging / STATS_FILE).write_text(json.dumps(stats.to_dict(), indent=2))
        (staging / CARD_FILE).write_text(card)

    return atomic_replace_directory(Path(directory), fill)
