"""Sharing a trained run: the model card in ``RUN/final/README.md`` and ``treegrpo push RUN --repo ID``.

The card is built from the run folder alone (``RUN/config.yaml``, ``RUN/eval.jsonl``, the files in
``RUN/final``), so ``push`` can write it for runs trained before cards existed. Uploads go through
huggingface_hub (``create_repo`` + ``upload_folder``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from treegrpo.errors import ConfigError

LORA_FILE = "pytorch_lora_weights.safetensors"
BUILTIN_PREFIX = "builtin:"


def _read_config(run: Path) -> dict[str, Any]:
    """RUN/config.yaml as a plain dict (one-line error when missing)."""
    from treegrpo.config import load_yaml

    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run} has no config.yaml; pass the folder of a treegrpo training run")
    return load_yaml(run / "config.yaml")


def _last_eval(run: Path) -> dict[str, Any]:
    """The newest eval.jsonl record ({} when there is none)."""
    file = run / "eval.jsonl"
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()] if file.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def _is_hub_id(path: str) -> bool:
    """Whether ``model.path`` looks like a hub repo id (``org/name``) rather than a local folder or alias."""
    return not path.startswith(BUILTIN_PREFIX) and not Path(path).exists() and path.count("/") == 1 and not path.startswith("/")


def _yaml_block(values: dict[str, Any]) -> str:
    """A config section as indented YAML lines."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(values).rstrip()


VIDEO_PIPELINES: tuple[str, ...] = ("WanPipeline", "LTX2Pipeline", "WanImageToVideoPipeline",
                                     "HunyuanVideo15Pipeline")
"""Pipelines whose output is ``.frames`` (clips), not ``.images``."""
GUIDER_PIPELINES: tuple[str, ...] = ("HunyuanVideo15Pipeline",)
"""Pipelines that take the CFG scale from ``pipe.guider`` (no ``guidance_scale`` argument) and have no
``load_lora_weights`` (diffusers 0.42): the snippet sets the guider and loads a LoRA into the transformer."""


def _call_arguments(cfg: dict[str, Any], guider: bool = False) -> str:
    """The pipeline-call arguments the run sampled with: size, steps, guidance (what the card's snippet passes)."""
    model, sampling = cfg.get("model", {}), cfg.get("sampling", {})
    arguments = [f"{key}={model[key]}" for key in ("height", "width", "num_frames") if model.get(key)]
    if sampling.get("steps"):
        arguments.append(f"num_inference_steps={sampling['steps']}")
    if sampling.get("guidance_scale") is not None and not guider:
        arguments.append(f"guidance_scale={sampling['guidance_scale']}")
    return ", ".join(['"a prompt"', *arguments])


def model_card(run: Path, pipeline_class: Optional[str] = None, location: Optional[str] = None) -> str:
    """The README.md of ``RUN/final``: hub metadata, base model, method and settings, rewards, final eval, how to load.

    ``location``: where the snippet loads the trained weights from (a Hub repo id once pushed; default the
    absolute path of ``RUN/final``)."""
    cfg = _read_config(run)
    where = location or str((run / "final").resolve())
    video = (pipeline_class or "") in VIDEO_PIPELINES
    guider = (pipeline_class or "") in GUIDER_PIPELINES
    call = _call_arguments(cfg, guider)
    base = str(cfg.get("model", {}).get("path", ""))
    full = bool(cfg.get("model", {}).get("full_finetune", False)) or not (run / "final" / LORA_FILE).is_file()
    pipeline = pipeline_class or "DiffusionPipeline"
    method = cfg.get("method", "treegrpo")
    evaluation = _last_eval(run)
    tags = list(dict.fromkeys(["treegrpo", "text-to-image", "diffusers", method, "full-finetune" if full else "lora"]))
    meta = ["---", "library_name: diffusers", "pipeline_tag: text-to-image"]
    if _is_hub_id(base):
        meta.append(f"base_model: {base}")
    meta += ["tags:", *[f"- {tag}" for tag in tags], "---"]
    base_text = base if _is_hub_id(base) else f"{base} (a local pipeline, not on the Hub)"
    load_path = '"' + base + '"'
    if base.startswith(BUILTIN_PREFIX):  # the shipped demo base: from treegrpo.demo import BASE_DIR, no T5
        load_path = "str(BASE_DIR), text_encoder_3=None, tokenizer_3=None"
        call += f", max_sequence_length={cfg.get('model', {}).get('max_sequence_length', 1)}"
    output = ([f"frames = pipe({call}).frames[0]", 'export_to_video(frames, "sample.mp4", fps=16)'] if video
              else [f"image = pipe({call}).images[0]"])
    scale = cfg.get("sampling", {}).get("guidance_scale")
    if guider and scale is not None:
        output.insert(0, f"pipe.guider = pipe.guider.new(guidance_scale={scale})")
    lines = [
        *meta, "", f"# {run.name}", "",
        f"{'Full fine-tune' if full else 'LoRA'} of **{base_text}** trained with **{method}** "
        "(treegrpo: RL post-training of diffusion models).", "",
        "## Training", "",
        f"- method: `{method}`, {cfg.get('train', {}).get('iterations')} iterations, "
        f"lr {cfg.get('train', {}).get('lr')}, {cfg.get('sampling', {}).get('steps')} sampling steps, seed {cfg.get('seed')}",
        f"- rewards: `{json.dumps(cfg.get('reward'))}`", "",
        "Method settings:", "", "```yaml",
        _yaml_block({key: cfg.get(key, {}) for key in ("tree", "advantage", "loss", "sampling")}), "```", "",
        "## Final evaluation (held-out prompts, ODE samples)", "",
    ]
    if evaluation:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in evaluation.items()]
    else:
        lines.append("No evaluation was recorded.")
    lines += ["", "## Use", "", "```python", f"from diffusers import {pipeline}"]
    if video:
        lines.append("from diffusers.utils import export_to_video")
    lines += ["from treegrpo.demo import BASE_DIR", ""] if base.startswith(BUILTIN_PREFIX) else [""]
    if full:
        folders = [p.name for p in (run / "final").iterdir() if p.is_dir()] if (run / "final").is_dir() else []
        sub = folders[0] if folders else "transformer"
        lines[lines.index(f"from diffusers import {pipeline}")] = f"from diffusers import AutoModel, {pipeline}"
        lines += [
            f'{sub} = AutoModel.from_pretrained("{where}", subfolder="{sub}")  # the trained weights',
            f'pipe = {pipeline}.from_pretrained({load_path}, {sub}={sub})',
            *output,
        ]
    else:
        lines += [
            f'pipe = {pipeline}.from_pretrained({load_path})',
            f'pipe.transformer.load_lora_adapter("{where}", use_safetensors=True)' if guider
            else f'pipe.load_lora_weights("{where}")',
            *output,
        ]
    lines += ["```", ""]
    return "\n".join(lines)


def write_model_card(run: Path, pipeline_class: Optional[str] = None, location: Optional[str] = None) -> Path:
    """Write ``RUN/final/README.md`` (the pipeline class is kept from an earlier card when not given); returns its path."""
    file = run / "final" / "README.md"
    if pipeline_class is None and file.is_file():
        pipeline_class = _card_pipeline(file.read_text(encoding="utf-8"))
    file.write_text(model_card(run, pipeline_class, location), encoding="utf-8")
    return file


def _card_pipeline(card: str) -> Optional[str]:
    """The pipeline class an earlier card's snippet imports."""
    for line in card.splitlines():
        if line.startswith("from diffusers import "):
            return line.removeprefix("from diffusers import ").split(",")[-1].strip()
    return None


def push(run: Path, repo: str, *, private: bool = False, token: Optional[str] = None) -> str:
    """Upload ``RUN/final`` (with its model card) to the Hub repo ``repo``; returns the repo URL.

    The repo id, the exported weights and a login are checked before anything is written or sent; a
    refusal or an unreachable Hub is one line (nothing half-uploaded: each upload is one commit)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as error:
        raise ConfigError(f"--repo {repo!r} is not a Hub repo id ({str(error).split('. ')[0]}); "
                          "write NAME or USER_OR_ORG/NAME") from None
    final = run / "final"
    if not final.is_dir() or not any(p.suffix == ".safetensors" for p in final.rglob("*")):
        raise ConfigError(f"{final} holds no exported weights; push the folder of a run that finished training")
    if (token or get_token()) is None:
        raise ConfigError("not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN, then push again")
    if not (final / "README.md").is_file():
        write_model_card(run)
    card = model_card(run, _card_pipeline((final / "README.md").read_text(encoding="utf-8")), location=repo)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id=repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(final), repo_id=repo, repo_type="model", ignore_patterns=["README.md"],
                          commit_message=f"treegrpo: upload {run.name}")
        api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md", repo_id=repo, repo_type="model",
                        commit_message="treegrpo: model card")  # its snippet loads from the repo
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise ConfigError(f"the Hub refused the upload to {repo} (HTTP {status}: {str(error).splitlines()[0][:120]}); "
                          "check that your token may write to that namespace (`hf auth whoami`)") from None
    except Exception as error:
        if not is_network_error(error):
            raise
        raise ConfigError(f"cannot reach the Hugging Face Hub ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
                          "check the connection (and that HF_HUB_OFFLINE is unset), then run the same push again") from None
    return str(url)


def is_network_error(error: BaseException) -> bool:
    """A connection failure of the Hub client: an ``OSError`` (requests, offline mode) or an httpx transport error."""
    return isinstance(error, OSError) or any(cls.__module__.split(".")[0] in ("httpx", "httpx2") for cls in type(error).__mro__)
