"""The trainer's typed configuration: one schema for every model and method, and the checks of its values.

Sections (dataclasses used as OmegaConf structured configs)::

    model      ModelConfig (treegrpo.models.config): path, dtype, lora.rank, full_finetune, height, ...
    data       prompts (.txt / .jsonl / HF dataset / builtin:NAME), eval_prompts, builtin, prompts_per_iteration, ...
    method     a preset name from treegrpo.engine.methods.PRESETS (treegrpo, flow_grpo, mix_grpo, ...)
    tree       TreeConfig: schedule, k, window, window_placement, trees, ...
    advantage  AdvantageConfig: clip, min_group_std (zero-spread guard), backup_beta, ...
    loss       LossConfig: clip_eps, node_aggregation, kl_beta
    sampling   steps, noise_level, guidance_scale, max_batch, sde_type
    reward     a reward name, or a map name -> weight, or name -> {weight: w, option: value, ...}
    train      iterations, lr, schedule, EMA, checkpoint / eval / log cadence, ...
    seed, output_dir
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from treegrpo import prompt_sets
from treegrpo.choices import Choice
from treegrpo.engine.methods import AdvantageConfig, TreeConfig
from treegrpo.errors import ConfigError, did_you_mean
from treegrpo.math.loss import LossConfig
from treegrpo.math.sampling import SdeType
from treegrpo.models.config import ModelConfig, check_model_config
from treegrpo.optim import LrSchedule


class BuiltinPrompts(Choice):
    """Prompt generators shipped in the package."""

    shapes = "shapes"
    shapes_composition = "shapes_composition"

    @classmethod
    def parse(cls, value: object, key: str) -> "BuiltinPrompts":
        """As :meth:`Choice.parse`; a prompt set's name (``drawbench``) says where prompt sets go instead."""
        name = str(value).removeprefix(prompt_sets.PREFIX)
        if not isinstance(value, cls) and name in prompt_sets.SETS:
            raise ConfigError(f"{key}={value} is the shapes task's caption generator (shapes, shapes_composition); "
                              f"a prompt set goes in data.prompts=builtin:{name} or data.eval_prompts=builtin:{name}")
        return super().parse(value, key)


class Progress(Choice):
    """``train.progress``: which bars a run shows on a terminal."""

    steps = "steps"  # a bar over the run and one over each rollout's denoising steps
    run = "run"  # only the bar over the run
    none = "none"

    @classmethod
    def from_value(cls, value: object, key: str) -> "Progress":
        """Also accepts the booleans of earlier versions (true = ``steps``, false = ``none``)."""
        if isinstance(value, bool):
            return cls.steps if value else cls.none
        return cls.parse(value, key)


TRACKER_NAMES: tuple[str, ...] = (
    "tensorboard", "wandb", "trackio", "swanlab", "mlflow", "comet_ml", "aim", "clearml", "dvclive",
)
"""accelerate's tracker names (``accelerate.tracking.LOGGER_TYPE_TO_CLASS``)."""

def parse_log_with(value: Any) -> list[str]:
    """``train.log_with`` (list, comma string, ``none``) as tracker names; a one-line error with a did-you-mean."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if names in (["none"], []):
        return []
    for name in names:
        if name not in TRACKER_NAMES:
            raise ConfigError(
                f"train.log_with: unknown tracker {name!r}{did_you_mean(name, TRACKER_NAMES)} "
                f"(available: {', '.join(TRACKER_NAMES)}, or none)"
            )
    return list(dict.fromkeys(names))


class MixedPrecision(Choice):
    """accelerate's autocast setting."""

    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


def _at_least(key: str, value: float, minimum: float) -> None:
    """One-line ConfigError when ``value < minimum``."""
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum:g}, got {value}")




@dataclass
class DataConfig:
    """Where prompts come from and how many each iteration uses."""

    prompts: Optional[str] = None
    """Training prompts: a .txt file (one per line), a .jsonl file (``prompt_field``), a HF dataset, or a
    built-in set ``builtin:NAME`` (:mod:`treegrpo.prompt_sets`: drawbench, geneval, ocr, pickscore, hpdv2)."""
    eval_prompts: Optional[str] = None
    """Held-out prompts (same forms); unset = ``heldout`` prompts split off ``prompts``."""
    builtin: Optional[BuiltinPrompts] = None
    """``"shapes"``: the demo's caption generator (train / held-out captions) instead of files;
    ``"shapes_composition"``: only its count (two or three objects) and relation captions."""
    prompt_field: str = "prompt"
    """Field of a .jsonl record or column of a dataset that holds the prompt."""
    image_field: Optional[str] = "image"
    """Field of a .jsonl record (a path relative to the file) or column of a dataset (images or paths) that
    holds an editing prompt's source image; rows without it are plain prompts; null ignores it."""
    dataset_split: str = "train"
    eval_dataset_split: str = "test"
    heldout: int = 0
    """Prompts split off ``prompts`` (seeded) for evaluation when ``eval_prompts`` is unset."""
    num_eval_prompts: int = 16
    """Prompts per evaluation (the first ones of the held-out list)."""
    prompts_per_iteration: int = 8
    """Prompts drawn per iteration over all processes (each grows ``tree.trees`` trees)."""
    builtin_size: int = 4096
    """Prompts drawn from the built-in generator for the training pool."""
    eval_seed: int = 0
    """Seed of the held-out split and of the evaluation noise. Independent of ``seed`` so runs with
    different seeds are evaluated on the same prompts with the same noise."""

    def check(self) -> None:
        """Exactly one prompt source; ranges. One-line ConfigError naming the key."""
        if self.prompts is None and self.builtin is None:
            raise ConfigError("no prompts configured; set data.prompts=FILE (.txt/.jsonl/dataset) or data.builtin=shapes")
        if self.prompts is not None and self.builtin is not None:
            raise ConfigError(
                f"data.prompts={self.prompts} and data.builtin={self.builtin} both name the training prompts; "
                "set data.builtin=null to train on the file, or drop data.prompts"
            )
        if self.builtin is not None and self.eval_prompts is not None:
            raise ConfigError(
                f"data.eval_prompts={self.eval_prompts} with data.builtin={self.builtin}: the built-in task has its own "
                "held-out prompts; drop data.eval_prompts or set data.builtin=null"
            )
        if self.heldout and (self.builtin is not None or self.eval_prompts is not None):
            source = f"data.builtin={self.builtin}" if self.builtin is not None else f"data.eval_prompts={self.eval_prompts}"
            raise ConfigError(
                f"data.heldout={self.heldout} splits prompts off data.prompts, but {source} already gives the held-out "
                "prompts; set data.heldout=0"
            )
        prompt_sets.check_sources({"data.prompts": self.prompts, "data.eval_prompts": self.eval_prompts},
                                  self.prompt_field, DataConfig.prompt_field)
        self.builtin = None if self.builtin is None else BuiltinPrompts.parse(self.builtin, "data.builtin")
        _at_least("data.prompts_per_iteration", self.prompts_per_iteration, 1)
        _at_least("data.heldout", self.heldout, 0)
        _at_least("data.num_eval_prompts", self.num_eval_prompts, 0)


@dataclass
class SamplingConfig:
    """How trees are sampled (rollout) and how evaluation images are drawn."""

    steps: int = 10
    noise_level: float = 0.7
    """SDE strength (eta for DDIM models); 0 = ODE."""
    guidance_scale: float = 4.5
    max_batch: int = 64
    """Rows per model call during rollout (frontier chunk)."""
    sde_type: SdeType = SdeType.sde
    """``"sde"`` (Flow-GRPO) or ``"cps"`` (coefficients-preserving)."""
    reward_chunks: int = 1
    """Grow each process's trees in this many chunks and score a chunk's images in a worker thread
    while the next chunk is sampled (the policy is the same, so scores stay on-policy). Worth it
    when the reward is slow or remote (a VLM judge, a reward server); 1 = sample, then score."""

    def check(self) -> None:
        """Ranges; one-line ConfigError naming the key."""
        self.sde_type = SdeType.parse(self.sde_type, "sampling.sde_type")
        _at_least("sampling.steps", self.steps, 1)
        if self.steps > MAX_STEPS:
            raise ConfigError(f"sampling.steps must be <= {MAX_STEPS}, got {self.steps}; lower it")
        _at_least("sampling.max_batch", self.max_batch, 1)
        _at_least("sampling.reward_chunks", self.reward_chunks, 1)
        _at_least("sampling.noise_level", self.noise_level, 0)


@dataclass
class TrainConfig:
    """Optimisation, cadence and bookkeeping."""

    iterations: int = 250
    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    lr_schedule: LrSchedule = LrSchedule.constant
    """``constant``, ``cosine`` or ``linear`` (decay to 0), each after a linear warm-up; stepped per iteration."""
    warmup: int = 0
    """Warm-up iterations."""
    max_grad_norm: float = 1.0
    inner_epochs: int = 1
    parents_per_batch: Optional[int] = None
    """Parents per minibatch over all processes (each takes parents_per_batch / processes, so the optimizer
    steps per iteration do not change with the number of GPUs); 16 when neither this nor ``edges_per_batch``
    is set. One forward scores all of a parent's children, so a step of a k-ary tree sees k x this many edges."""
    edges_per_batch: Optional[int] = None
    """Trained edges per minibatch over all processes, filled with whole parents: a k-ary tree and a flat
    method then take the same number of optimizer steps per trained edge. Set this or ``parents_per_batch``."""
    grad_accum: int = 1
    """Minibatches per optimizer step (0 = one step per pass over the edges)."""
    mixed_precision: MixedPrecision = MixedPrecision.no
    """``no``, ``fp16`` or ``bf16`` (accelerate autocast)."""
    ema: float = 0.0
    """EMA decay of the trained weights (0 = off); the EMA is used for evaluation and export."""
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    eval_every: int = 25
    """Iterations between evaluations (0 = only at the end)."""
    eval_every_minutes: float = 0.0
    """Also evaluate when this many minutes passed since the last evaluation (0 = off); with
    ``max_minutes`` an evaluation runs only if it fits the budget."""
    max_minutes: float = 0.0
    """Wall-time budget of the run in minutes, measured while running (0 = none): the loop stops
    before an iteration that would not leave time for the final evaluation and export, then
    evaluates, checkpoints and exports as at the end of ``iterations``."""
    eval_at_start: bool = True
    """Evaluate the untrained model first (the "before" of the report's before/after grids)."""
    log_every: int = 1
    """Iterations between log lines (metrics.jsonl always gets every iteration)."""
    progress: Any = "steps"
    """Bars on the main process when stderr is a terminal: ``steps`` (one over the run and one over each
    rollout's denoising steps), ``run`` (only the run's), ``none``; true / false mean steps / none."""
    log_with: Any = "tensorboard"
    """Experiment trackers: a list or a comma-separated string of ``tensorboard``, ``wandb``, ``trackio``,
    ``swanlab`` (any of accelerate's trackers); ``none`` = only metrics.jsonl / eval.jsonl."""
    find_unused_parameters: bool = False
    """DDP option; needed when some trained weights get no gradient."""
    fsdp: bool = False
    """Shard the denoiser's weights, gradients and optimizer state over processes (FSDP2) instead of DDP."""
    debug_dump: bool = False
    """Write per-process leaf scores, group ids and advantages to RUN/debug/ (tests, debugging)."""
    max_nonfinite_in_a_row: int = 3
    """Stop the run after this many iterations in a row whose update was skipped for NaN / inf values."""
    max_unscored_in_a_row: int = 3
    dist_timeout: float = 10.0
    """Minutes a process waits in a collective for the others (a dead or stalled rank) before it gives up;
    NCCL's own default is 30."""
    """Stop the run (checkpoint saved, resume command printed) after this many iterations in a row in which
    a remote reward (VLM judge, reward server) scored none of the images."""

    def minibatch_sizes(self) -> tuple[Optional[int], Optional[int]]:
        """(parents, edges) per minibatch as the engine takes them: exactly one is set."""
        if self.edges_per_batch is not None:
            return None, self.edges_per_batch
        return (self.parents_per_batch if self.parents_per_batch is not None else DEFAULT_PARENTS_PER_BATCH), None

    def check(self) -> None:
        """Choices, ranges and settings FSDP cannot honour; one-line ConfigError naming the key."""
        self.lr_schedule = LrSchedule.parse(self.lr_schedule, "train.lr_schedule")
        self.log_with = parse_log_with(self.log_with)
        self.mixed_precision = MixedPrecision.parse(self.mixed_precision, "train.mixed_precision")
        self.progress = Progress.from_value(self.progress, "train.progress")
        for key in ("iterations", "inner_epochs", "keep_checkpoints", "log_every", "max_nonfinite_in_a_row",
                    "max_unscored_in_a_row"):
            _at_least(f"train.{key}", getattr(self, key), 1)
        if self.parents_per_batch is not None and self.edges_per_batch is not None:
            raise ConfigError(
                f"train.parents_per_batch={self.parents_per_batch} and train.edges_per_batch={self.edges_per_batch} "
                "both size the minibatches; set one of them (the other to null)"
            )
        for key in ("parents_per_batch", "edges_per_batch"):
            if getattr(self, key) is not None:
                _at_least(f"train.{key}", getattr(self, key), 1)
        for key in ("grad_accum", "checkpoint_every", "eval_every", "warmup", "lr", "eval_every_minutes", "max_minutes"):
            _at_least(f"train.{key}", getattr(self, key), 0)
        if not self.dist_timeout > 0:
            raise ConfigError(f"train.dist_timeout={self.dist_timeout} must be > 0 minutes (e.g. 10)")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema is an EMA decay in [0, 1) (0 = off), got {self.ema}")
        if self.fsdp and self.ema > 0:
            raise ConfigError("train.ema is not supported with train.fsdp=true (the EMA would need whole weights); set train.ema=0")
        if self.fsdp and self.mixed_precision == "fp16":
            raise ConfigError("train.mixed_precision=fp16 is not supported with train.fsdp=true; use bf16")
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas must be two numbers, e.g. [0.9, 0.999], got {self.betas}")


@dataclass
class EvalConfig:
    """Held-out evaluation beyond the training rewards."""

    rewards: Any = None
    """Rewards that also score every evaluation, logged as ``eval/judge/<name>`` and ``eval/judge_score``
    (same forms as ``reward``; unset = none). A held-out judge shows reward hacking: the training
    reward rising while the judge stays flat."""

    more_steps: int = 0
    """Also evaluate the first and the last model with this many sampling steps (e.g. twice
    ``sampling.steps``), logged as ``eval/steps<N>/score``: a gain that holds there is not tied to the
    training sampler (0 = off)."""
    more_steps_samples: int = 0
    """Held-out samples of that check (the first ones of the evaluation set; 0 = all)."""

    def check(self) -> None:
        """The judges' spec has the form of ``reward`` and names known rewards; ranges."""
        if self.rewards is not None:
            _check_reward_names(self.rewards, "eval.rewards")
        _at_least("eval.more_steps", self.more_steps, 0)
        _at_least("eval.more_steps_samples", self.more_steps_samples, 0)


@dataclass
class TrainerConfig:
    """The whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: str = "treegrpo"
    tree: TreeConfig = field(default_factory=TreeConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: Any = "hpsv2"
    """A name, a map name -> weight, or name -> {weight: w, <reward option>: value}."""
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    output_dir: str = "runs/treegrpo"

    def check(self) -> None:
        """Every section's own checks, then what spans sections (rewards, the plan for ``sampling.steps``)."""
        from treegrpo.engine.methods import plan_for_iteration

        _check_finite(self)
        check_model_config(self.model)
        for section in (self.data, self.tree, self.advantage, self.loss, self.sampling, self.train, self.eval):
            section.check()
        _check_reward_names(self.reward, "reward")
        try:
            plan_for_iteration(self.tree, self.sampling.steps, 0, self.seed)
        except ValueError as error:
            raise ConfigError(f"{error}; fix the tree section for sampling.steps={self.sampling.steps}") from None
        self._check_objective_and_rollout()
        self._check_advantage_inputs()

    def _check_advantage_inputs(self) -> None:
        """A sibling baseline needs branching nodes; per-component normalisation needs components."""
        from treegrpo.engine.methods import Baseline, TreeSchedule

        if self.advantage.baseline == Baseline.siblings and self.tree.schedule not in (TreeSchedule.tree,
                                                                                      TreeSchedule.split):
            raise ConfigError(f"advantage.baseline=siblings compares the children of a node, but tree.schedule="
                              f"{self.tree.schedule.value} never branches (every edge would get 0); use "
                              "tree.schedule=tree or split, or advantage.baseline=group")
        if self.advantage.component_norm and len(reward_weights(self.reward)) < 2:
            raise ConfigError("advantage.component_norm normalises each reward before the weighted sum, but reward "
                              "names one; name two or more rewards (reward: {a: 1, b: 1}) or drop it")

    def _check_objective_and_rollout(self) -> None:
        """Edge-level options mean nothing to an objective that trains on clean samples, and an ODE rollout
        gives the clipped objective no edge to train."""
        from treegrpo.engine.methods import AdvantageConfig, TreeSchedule

        if self.loss.objective.likelihood_free:
            defaults = AdvantageConfig()
            for key in ("backup_beta", "per_depth_norm", "depth_scale", "prune_depths", "prune_keep_fraction",
                        "baseline"):
                if getattr(self.advantage, key) != getattr(defaults, key):
                    raise ConfigError(f"advantage.{key} shapes edge advantages, but loss.objective="
                                      f"{self.loss.objective.value} trains on the leaves' clean samples; drop it")
            if self.loss.keeps_anchor and self.train.fsdp:
                raise ConfigError(f"loss.objective={self.loss.objective.value} keeps a slow copy of the weights "
                                  "(loss.old_policy_decay / loss.ema_kl_beta), which needs whole weights; with "
                                  "train.fsdp=true set loss.old_policy_decay=none and loss.ema_kl_beta=0")
        elif self.tree.schedule == TreeSchedule.ode:
            raise ConfigError("tree.schedule=ode samples deterministic trajectories with no edge to train; use it "
                              "with loss.objective=nft or awm (method=diffusion_nft or awm), or choose another schedule")


# ----------------------------------------------------------------------------- value checks


def reward_weights(spec: Any, key: str = "reward") -> dict[str, tuple[float, dict[str, Any]]]:
    """Normalise a ``reward`` value (``key`` names it in errors) to ``{name: (weight, options)}``."""
    if isinstance(spec, str):
        return {spec: (1.0, {})}
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(
            f"{key} must be a name or a map name -> weight (e.g. {key}: {{hpsv2: 1.0, pickscore: 0.5}}), got {spec!r}"
        )
    result: dict[str, tuple[float, dict[str, Any]]] = {}
    for name, value in spec.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result[str(name)] = (float(value), {})
        elif isinstance(value, dict):
            options = dict(value)
            weight = options.pop("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise ConfigError(f"{key}.{name}.weight must be a number, got {weight!r}")
            result[str(name)] = (float(weight), options)
        else:
            raise ConfigError(f"{key}.{name} must be a weight or a map with 'weight' and options, got {value!r}")
    return result


def _check_reward_names(spec: Any, key: str) -> None:
    """Reward names must be registered or be import paths (``my_pkg.rewards:score``)."""
    from treegrpo.rewards import available_rewards, is_import_path

    known = available_rewards()
    for name in reward_weights(spec, key):
        if name not in known and not is_import_path(name):
            raise ConfigError(f"unknown reward {name!r}{did_you_mean(name, known)} (available: {', '.join(known)})")


DEFAULT_PARENTS_PER_BATCH = 16
"""Parents per minibatch when neither train.parents_per_batch nor train.edges_per_batch is set."""

MAX_STEPS = 1000
"""Upper bound on ``sampling.steps`` (a plan is built per step at validation time)."""


def _check_finite(cfg: Any, prefix: str = "") -> None:
    """Every float of the config must be finite (``nan`` and ``inf`` parse as floats)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} is {value}; set it to a finite number")
        elif isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ConfigError(f"{prefix}{f.name} holds {value}; use finite numbers only")


def validate(cfg: TrainerConfig) -> None:
    """Semantic checks that the types cannot express (each section's own, then across sections)."""
    cfg.check()
