"""One training iteration on the SD3.5-medium (or ``--size sd35l``: SD3.5-large) architecture: TreeGRPO k3w3 against a DanceGRPO schedule.

Random weights of the published sizes (the shared ``MODEL-CONFIGS.md``): the SD3.5-medium
transformer, the SD3 VAE (decode included) and a CLIP ViT-H/14-sized vision tower as the reward
model, at 512 x 512 (latents 16 x 64 x 64), 10 steps, CFG 4.5 (uncond + cond in one batch), random
prompt embeddings of the real shapes ((B, 333, 4096) and pooled (B, 2048)). The iteration runs the
library's real code path: ``SD3Backbone`` (built around the random transformer) gives the model
function and the schedule; ``rollout_trees``, ``compute_advantages``, ``select_edges`` and
``update_policy`` with a plain-torch learner do the rest.

Measured per method: seconds of rollout / decode + reward / training, rollout and training NFE from
the engine's counters (and the closed forms), peak GPU memory, and the achieved TFLOP/s of one
training forward + backward (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``, which
counts matrix products, convolutions and attention), with MFU against ``--peak-tflops``.

    python -m benchmarks.gpu_iteration --size sd35m --device cuda --dtype bf16 --out benchmarks/results
    python -m benchmarks.gpu_iteration --size tiny --device cpu --dtype fp32      # seconds, for tests

The other families at their published sizes (``gpu_families.py``; random prompt embeddings of the
real width, no pooled embedding): ``--size qwenimage`` (about 20B: ``--train lora``), ``flux2_klein4b``,
``flux2_dev`` (FLUX.2 [dev], about 32B: ``--train lora``),
``zimage``, ``sana_1600m`` / ``sana_600m``, ``flux_kontext`` (FLUX.1-Kontext-dev, about 12B, with random source images: ``--train lora``) and
``qwenimage_edit`` (Qwen-Image-Edit, about 20B, random source images: ``--train lora``), ``ltx2_19b`` (LTX-2, 19B,
GPU only: ``--train lora``), ``wan21_i2v_14b`` and ``wan22_ti2v_5b`` (Wan I2V at 480 x 480 x 33 frames, random
source images), ``hunyuanvideo15_480p`` (HunyuanVideo 1.5 480p text-to-video, about 8.3B,
33 frames), with ``*_tiny`` variants of the same code path for CPU runs.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from benchmarks.common import markdown_table, portable_args, write_json
from benchmarks.gpu_families import FAMILY_BUILDS
from benchmarks.gpu_sizes import SIZES, SizeSpec

from treegrpo.math import plans
from treegrpo.rewards.video import DEFAULT_FRAMES, frame_indices
from treegrpo.engine.update import TorchLearner, UpdateConfig, compute_advantages, select_edges, update_policy
from treegrpo.engine.methods import MethodConfig, plan_for_iteration, preset
from treegrpo.models.common import TextConditioning
from treegrpo.models.common import DiffusersBackbone
from treegrpo.models.config import LoraConfig, ModelConfig, torch_dtype
from treegrpo.models.registry import adapter_class
from treegrpo.models.sd3 import SD3Backbone
from treegrpo.engine.rollout import TreeRollout, rollout_trees
from treegrpo.engine.minibatches import make_minibatches, minibatch_loss

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------- options


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="sd35m", choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--prompts", type=int, default=2, help="prompts per iteration")
    parser.add_argument("--methods", nargs="+", default=["treegrpo", "dance_grpo"], choices=["treegrpo", "dance_grpo"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--window-start", type=int, default=0,
                        help="TreeGRPO window start (fixed; 0 = the most expensive placement)")
    parser.add_argument("--dance-train-fraction", type=float, default=0.6,
                        help="fraction of the 10 steps DanceGRPO trains (the preset's 0.6; 1.0 = every step)")
    parser.add_argument("--leaves", type=int, default=27, help="DanceGRPO trajectories per prompt (= k3w3 leaves)")
    parser.add_argument("--train", default="full", choices=["full", "lora"], help="full fine-tuning (paper) or LoRA")
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--train-batch", type=int, default=4, help="parents per training forward (x2 rows with CFG)")
    parser.add_argument("--max-batch", type=int, default=16, help="rollout rows per model call (x2 with CFG)")
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--reward-batch", type=int, default=32)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--mixed-precision", default="bf16", choices=["bf16", "no"],
                        help="full fine-tuning: fp32 master weights computed under bf16 autocast (the trainer's "
                             "train.mixed_precision), rollout and training alike; 'no' computes in fp32")
    parser.add_argument("--storage-dtype", default=None, choices=["fp8_e4m3", "fp8_e5m2"],
                        help="model.storage_dtype: frozen weights stored in float8 (LoRA only)")
    parser.add_argument("--compile", action="store_true", help="model.compile: torch.compile of the repeated blocks")
    parser.add_argument("--fused-adam", action="store_true", help="torch.optim.AdamW(fused=True)")
    parser.add_argument("--sdpa-kernels", nargs="+", default=None, choices=["flash", "efficient", "cudnn", "math"],
                        help="restrict attention to these SDPA kernels (default: torch's choice)")
    parser.add_argument("--reward-offload", action="store_true", help="the reward model on the CPU between calls")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per method first")
    parser.add_argument("--warmup-first-only", action="store_true",
                        help="warm up only before the first method (the later ones reuse its kernels; saves GPU time)")
    parser.add_argument("--iterations", type=int, default=1, help="timed iterations per method (medians reported)")
    parser.add_argument("--flop-repeats", type=int, default=3, help="timed training forward+backward repeats")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense peak of the device (H100 SXM bf16: 989)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_iteration_<size>.json")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- building the models


@contextlib.contextmanager
def created_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New modules are initialised directly on ``device`` in ``dtype`` (no fp32 CPU copy of 2.5B weights)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def score_clips_or_images(bench: Any, images: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """The reward of images, or of clips as the mean over 4 evenly spaced frames (``rewards.video``'s default)."""
    if images.dim() == 4:
        return bench.reward(images, cond)
    index = frame_indices(int(images.shape[1]), DEFAULT_FRAMES)
    scores = bench.reward(images[:, index].flatten(0, 1), cond.repeat_interleave(len(index)))
    return scores.view(-1, len(index)).mean(dim=1)


def build_backbone(spec: SizeSpec, args: argparse.Namespace) -> DiffusersBackbone:
    """The family's pipeline of random weights (no text encoders) wrapped by the library's adapter."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(args.seed)
    with created_on(torch.device(args.device), torch_dtype(args.dtype)):
        if spec.family == "sd3":
            pipe = StableDiffusion3Pipeline(
                transformer=SD3Transformer2DModel(**spec.transformer), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=AutoencoderKL(**spec.vae), text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                text_encoder_3=None, tokenizer_3=None,
            )
        else:
            pipe = FAMILY_BUILDS[spec.family].build(spec.transformer, spec.vae)
    # Wan 2.2 is the wan adapter with two experts; FLUX.2 [dev] the flux2 adapter around a Flux2Pipeline
    family = {"wan22": "wan", "flux2_dev": "flux2"}.get(spec.family, spec.family)
    config = ModelConfig(
        path="random-weights", family=family, dtype=args.dtype, device=args.device, num_frames=spec.num_frames,
        max_sequence_length=spec.text_tokens,
        full_finetune=args.train == "full", lora=LoraConfig(rank=args.lora_rank, alpha=float(args.lora_rank)),
        gradient_checkpointing=args.gradient_checkpointing, height=spec.resolution, width=spec.resolution,
        decode_batch_size=args.decode_batch, storage_dtype=args.storage_dtype, compile=args.compile,
    )
    adapter = SD3Backbone if spec.family == "sd3" else adapter_class(family)
    return adapter(pipe, config, torch.device(args.device))


def with_random_sources(backbone: Any, conditioning: TextConditioning, prompts: int, resolution: int) -> TextConditioning:
    """``conditioning`` plus the packed latents of random source images (one per prompt) and their ids."""
    from PIL import Image

    generator = torch.Generator().manual_seed(2)
    images = [Image.fromarray(torch.randint(0, 256, (resolution, resolution, 3), generator=generator,
                                            dtype=torch.uint8).numpy()) for _ in range(prompts)]
    if backbone.family == "wan_i2v":  # the VAE condition, and Wan 2.1's CLIP embedding, of each source
        conditioning.source_embeds = backbone._encode_image_embeds(images)
    encoded = backbone._encode_sources(images)
    conditioning.source_latents, conditioning.source_ids = encoded if isinstance(encoded, tuple) else (encoded, None)
    return conditioning


def random_conditioning(spec: SizeSpec, prompts: int, dtype: torch.dtype, device: torch.device) -> TextConditioning:
    """Random prompt embeddings of the real shapes (and pooled ones when the family has them), with the negative row."""
    generator = torch.Generator().manual_seed(1)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    return TextConditioning(
        prompt_embeds=draw(prompts, spec.text_tokens, spec.text_dim),
        negative_prompt_embeds=draw(1, spec.text_tokens, spec.text_dim),
        pooled_prompt_embeds=draw(prompts, spec.pooled_dim) if spec.pooled_dim else None,
        negative_pooled_prompt_embeds=draw(1, spec.pooled_dim) if spec.pooled_dim else None,
    )


class ClipReward:
    """A CLIP-vision-tower reward of realistic size: cosine of the image embedding with a per-prompt embedding."""

    def __init__(self, spec: SizeSpec, prompts: int, dtype: torch.dtype, device: torch.device, batch: int,
                 offload: bool = False) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        config = CLIPVisionConfig(**spec.reward)
        self.device = device
        self.offload = offload
        self.model = CLIPVisionModelWithProjection(config).to("cpu" if offload else device, dtype).eval().requires_grad_(False)
        self.size = config.image_size
        self.dtype = dtype
        self.batch = batch
        generator = torch.Generator().manual_seed(2)
        self.text = torch.nn.functional.normalize(torch.randn(prompts, config.projection_dim, generator=generator), dim=-1).to(device)
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` of images ``[B, 3, H, W]`` in [0, 1] for their prompts (the model on the device meanwhile)."""
        if self.offload:
            self.model.to(self.device)
        try:
            return self._score(images, prompt_index)
        finally:
            if self.offload:
                self.model.to("cpu")

    def _score(self, images: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        scores = []
        for start in range(0, images.shape[0], self.batch):
            chunk = images[start : start + self.batch]
            pixels = torch.nn.functional.interpolate(chunk, size=(self.size, self.size), mode="bicubic",
                                                     antialias=True, align_corners=False)
            pixels = ((pixels - self.mean) / self.std).to(self.dtype)
            embeds = self.model(pixel_values=pixels).image_embeds.to(torch.float32)
            text = self.text[prompt_index[start : start + self.batch]]
            scores.append((torch.nn.functional.normalize(embeds, dim=-1) * text).sum(-1))
        return torch.cat(scores)


# ----------------------------------------------------------------------------- one iteration


@dataclass
class IterationResult:
    """Timings and counters of one measured iteration of one method."""

    method: str
    plan: str
    leaves_per_prompt: int
    rollout_s: float
    decode_reward_s: float
    training_s: float
    rollout_nfe: int
    training_nfe: int
    rollout_nfe_closed_form: int
    training_nfe_closed_form: int
    rollout_model_calls: int
    optimizer_steps: int
    peak_memory_gb: float | None
    peak_reserved_gb: float | None = None
    """The caching allocator's peak reservation (what the device must hold; an out-of-memory happens against it)."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.rollout_s + self.decode_reward_s + self.training_s


def method_config(name: str, args: argparse.Namespace) -> MethodConfig:
    """TreeGRPO k3w3 with a fixed window, or DanceGRPO flat with ``--leaves`` trajectories per prompt."""
    if name == "treegrpo":
        return preset("treegrpo", tree={"window_placement": "fixed", "window_start": args.window_start})
    return preset("dance_grpo", tree={"trees": args.leaves, "train_fraction": args.dance_train_fraction})


def compute_precision(args: argparse.Namespace, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for a full fine-tune's fp32 master weights (as the trainer's ``train.mixed_precision``), else none."""
    if args.train == "full" and args.mixed_precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sdpa_kernels(names: Optional[Sequence[str]]) -> contextlib.AbstractContextManager[Any]:
    """Restrict ``scaled_dot_product_attention`` to these kernels (``None``: torch's own choice)."""
    if not names:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([backends[name] for name in names])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall seconds (device synchronised on both ends)."""
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return value, time.perf_counter() - start


@dataclass
class Bench:
    """Everything an iteration needs, built once."""

    args: argparse.Namespace
    backbone: DiffusersBackbone
    conditioning: TextConditioning
    reward: ClipReward
    learner: TorchLearner
    device: torch.device


def run_iteration(bench: Bench, name: str, epoch: int) -> tuple[IterationResult, TreeRollout, torch.Tensor, torch.Tensor]:
    """Rollout, decode + reward, advantages + update of ``name``; returns the result, rollout, advantages, mask."""
    args, backbone, device = bench.args, bench.backbone, bench.device
    method = method_config(name, args)
    plan = plan_for_iteration(method.tree, args.steps, epoch, args.seed)
    schedule = backbone.schedule(args.steps)
    stepper = schedule.stepper(args.noise_level)
    model_fn = backbone.model_fn(bench.conditioning, args.guidance, schedule)
    roots = args.prompts * method.tree.trees
    root_cond = torch.arange(args.prompts, device=device).repeat_interleave(method.tree.trees)
    rollout_generator = torch.Generator(device=device).manual_seed(args.seed + epoch)
    update_generator = torch.Generator().manual_seed(args.seed + epoch)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the reservation left by building the models is not the iteration's
        torch.cuda.reset_peak_memory_stats(device)
    noise = backbone.initial_noise(roots, rollout_generator)
    with compute_precision(args, device):
        rollout, rollout_s = timed(device, lambda: rollout_trees(model_fn, stepper, plan, noise, root_cond,
                                                                 max_batch=args.max_batch, generator=rollout_generator))
    scores, reward_s = timed(device, lambda: score_clips_or_images(bench, backbone.decode(rollout.leaf_latents), rollout.leaf_cond))
    # Random weights (CFG 4.5 drives their latents far out) decode to saturated, near-identical images, whose rewards
    # fall under the zero-spread guard (advantages 0, edges skipped); a seeded jitter keeps every edge trained, as in
    # a real run. It changes values only, not the cost.
    scores = scores + 0.05 * torch.randn(scores.shape, generator=torch.Generator().manual_seed(epoch)).to(scores)

    def train() -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        advantages = compute_advantages(rollout.structure, scores, method.advantage)
        mask = select_edges(rollout.structure, advantages.edge, method.advantage, kl_on=False)
        stats = update_policy(model_fn, stepper, rollout, advantages.edge, mask, bench.learner, method.loss,
                              UpdateConfig(inner_epochs=1, parents_per_batch=args.train_batch, grad_accum=0),
                              generator=update_generator).stats
        return stats, advantages.edge, mask

    with compute_precision(args, device):
        (stats, edge_advantages, mask), training_s = timed(device, train)
    training_nfe_closed_form = roots * plans.training_nfe_per_tree(plan)
    if int(stats["training_nfe"]) != training_nfe_closed_form:
        raise RuntimeError(f"{name}: the update trained {int(stats['training_nfe'])} of {training_nfe_closed_form} edges "
                           "(rewards under the zero-spread guard give zero advantages); the timing would not be an iteration's")
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None
    result = IterationResult(
        method=name, plan=plans.describe(plan), leaves_per_prompt=method.tree.trees * plans.leaves_per_tree(plan),
        rollout_s=rollout_s, decode_reward_s=reward_s, training_s=training_s,
        rollout_nfe=rollout.nfe, training_nfe=int(stats["training_nfe"]),
        rollout_nfe_closed_form=roots * plans.rollout_nfe_per_tree(plan),
        training_nfe_closed_form=training_nfe_closed_form,
        rollout_model_calls=rollout.model_calls, optimizer_steps=int(stats["optimizer_steps"]), peak_memory_gb=peak,
        peak_reserved_gb=reserved,
    )
    return result, rollout, edge_advantages, mask


def measure_training_flops(bench: Bench, name: str, rollout: TreeRollout, edge_advantages: torch.Tensor,
                           mask: torch.Tensor) -> dict[str, float]:
    """FLOPs of one training forward + backward (one minibatch of ``--train-batch`` parents) and its time."""
    from torch.utils.flop_counter import FlopCounterMode

    args, backbone, device = bench.args, bench.backbone, bench.device
    method = method_config(name, args)
    schedule = backbone.schedule(args.steps)
    stepper = schedule.stepper(args.noise_level)
    model_fn = backbone.model_fn(bench.conditioning, args.guidance, schedule)
    batch = make_minibatches(rollout, mask, args.train_batch, torch.Generator().manual_seed(0))[0]

    def forward_backward() -> None:
        with compute_precision(args, device):
            out = minibatch_loss(model_fn, stepper, rollout, batch, edge_advantages, method.loss)
        out.loss.backward()

    with FlopCounterMode(display=False) as counter:
        forward_backward()
    bench.learner.optimizer.zero_grad(set_to_none=True)
    seconds = []
    for _ in range(max(1, args.flop_repeats)):
        seconds.append(timed(device, forward_backward)[1])
        bench.learner.optimizer.zero_grad(set_to_none=True)
    flops = float(counter.get_total_flops())
    median = statistics.median(seconds)
    tflops = flops / median / 1e12
    return {"minibatch_parents": float(batch.parent_slots.numel()), "minibatch_flops": flops,
            "minibatch_seconds": median, "tflops": tflops, "mfu": tflops / args.peak_tflops}


def median_result(results: Sequence[IterationResult]) -> IterationResult:
    """The measured iteration with the median total time."""
    ordered = sorted(results, key=lambda r: r.total_s)
    return ordered[len(ordered) // 2]


def benchmark_method(bench: Bench, name: str, warmup: int) -> IterationResult:
    """``warmup`` untimed iterations, timed iterations, then the training FLOP measurement."""
    for epoch in range(warmup):
        run_iteration(bench, name, epoch)
    timed_runs = [run_iteration(bench, name, warmup + i) for i in range(max(1, bench.args.iterations))]
    result = median_result([run[0] for run in timed_runs])
    _, rollout, edge_advantages, mask = timed_runs[-1]
    flops = measure_training_flops(bench, name, rollout, edge_advantages, mask)
    per_parent = flops["minibatch_flops"] / flops["minibatch_parents"]
    flops["training_phase_tflops_estimate"] = per_parent * result.training_nfe / max(result.training_s, 1e-12) / 1e12
    result.extra = flops
    return result


# ----------------------------------------------------------------------------- report


def results_table(results: Sequence[IterationResult]) -> str:
    """Markdown table of the measured iterations."""
    header = ["method", "plan", "leaves/prompt", "rollout s", "decode+reward s", "training s", "total s",
              "rollout NFE (closed form)", "training NFE (closed form)", "peak GiB", "train fwd+bwd TFLOP/s", "MFU"]
    body = []
    for r in results:
        body.append([
            r.method, r.plan, str(r.leaves_per_prompt), f"{r.rollout_s:.3f}", f"{r.decode_reward_s:.3f}",
            f"{r.training_s:.3f}", f"{r.total_s:.3f}", f"{r.rollout_nfe} ({r.rollout_nfe_closed_form})",
            f"{r.training_nfe} ({r.training_nfe_closed_form})",
            "-" if r.peak_memory_gb is None else f"{r.peak_memory_gb:.1f}",
            f"{r.extra['tflops']:.2f}", f"{100 * r.extra['mfu']:.1f}%",
        ])
    return markdown_table(header, body)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the device name."""
    import diffusers
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "device_name": name, "torch_threads": torch.get_num_threads()}


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Build the models, measure every method, print the table and write JSON; returns the payload."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = SIZES[args.size]
    started = time.perf_counter()
    backbone = build_backbone(spec, args)
    print(f"{args.size}: models built in {time.perf_counter() - started:.1f} s", flush=True)
    dtype = torch_dtype(args.dtype)
    parameters = backbone.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0, **({"fused": True} if args.fused_adam else {}))
    conditioning = random_conditioning(spec, args.prompts, dtype, device)
    if spec.family in ("flux_kontext", "qwenimage_edit", "wan_i2v"):  # editing: random source images, VAE-encoded by the adapter's own code
        conditioning = with_random_sources(backbone, conditioning, args.prompts, spec.resolution)
    bench = Bench(args, backbone, conditioning,
                  ClipReward(spec, args.prompts, dtype, device, args.reward_batch, offload=args.reward_offload),
                  TorchLearner(parameters, optimizer, max_grad_norm=1.0), device)
    results = []
    for position, name in enumerate(args.methods):  # a line per method: a run cut off by a time limit shows how far it got
        warmup = 0 if args.warmup_first_only and position > 0 else args.warmup
        with sdpa_kernels(args.sdpa_kernels):
            results.append(benchmark_method(bench, name, warmup))
        print(f"{args.size}: {name} measured at {time.perf_counter() - started:.1f} s", flush=True)
    table = results_table(results)
    payload = {
        "size": args.size, "args": portable_args(vars(args)),
        "environment": environment(device),
        "trainable_parameters": sum(p.numel() for p in parameters),
        "transformer_parameters": sum(p.numel() for p in backbone.denoiser.parameters()),
        "results": [asdict(r) | {"total_s": r.total_s} for r in results], "table": table,
    }
    by_name = {r.method: r for r in results}
    if {"treegrpo", "dance_grpo"} <= set(by_name):
        payload["dance_over_tree_seconds"] = by_name["dance_grpo"].total_s / by_name["treegrpo"].total_s
    print(table)
    if args.out is not None:
        path = args.out / f"gpu_iteration_{args.size}.json"
        write_json(path, payload)
        print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
