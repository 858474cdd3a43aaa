"""LoRA fine-tuning through `peft`, on one process or sharded with FSDP2.

Adapters are injected into the model while it is still on the meta device (fsdp_utils.load_model),
so FSDP2 shards them with their layer like any other weight; the base weights are frozen. After
training they are merged into the base weights and removed: what a LoRA run saves is then an
ordinary checkpoint (same tensor names and shapes as full fine-tuning), which loads wherever a
full one does, plus a PEFT adapter folder `adapter/` inside it (adapter_config.json +
adapter_model.safetensors, the layout `PeftModel.from_pretrained` reads) relative to the model
the adapters were trained on.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, fields

import torch

from al_utils import InputError, add_config_args, config_from, flag_of, setting

ADAPTER_DIR = "adapter"  # inside a LoRA run's checkpoint
DEFAULT_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # every Llama projection


OPTIMIZER_FILE = "optimizer.safetensors"  # inside adapter/: the adapters' Adam moments (--save_opt)
PEFT_PREFIX = "base_model.model."  # PEFT's file names: PEFT_PREFIX + module + ".lora_A.weight"


def peft_key(module: str, part: str) -> str:
    """PEFT's file name of `module`'s adapter matrix `part` (lora_A or lora_B)."""
    return f"{PEFT_PREFIX}{module}.{part}.weight"


@dataclass(frozen=True)
class Adapter:
    """The LoRA adapter of one linear module (`module`: its name in the plain model), which then
    computes W x + scale B A x."""
    module: str
    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    scale: float

    @property
    def size(self) -> int:
        return self.A.numel() + self.B.numel()


@dataclass(frozen=True)
class LoraSpec:
    """LoRA settings: each field but seed is its flag too (add_lora_args). lora_spec() gives None
    for full fine-tuning (r = 0)."""
    r: int = setting(0, "LoRA rank; 0 = full fine-tuning (default). LoRA usually wants a larger --lr (1e-4..1e-3)",
                     flag="lora_r")
    alpha: float = setting(16.0, "LoRA scaling numerator: updates are alpha/r x BA", flag="lora_alpha")
    dropout: float = setting(0.0, "dropout on the adapters' input (> 0 makes results depend on the number of ranks)",
                             flag="lora_dropout")
    target_modules: str = setting(DEFAULT_TARGETS, "comma-separated names of the linear modules that get adapters",
                                  flag="lora_target_modules")
    seed: int = 0  # of the adapters' initialisation (A random, B zero)

    def __post_init__(self) -> None:
        if self.r < 0:
            raise InputError(f"--lora_r: {self.r}: must be >= 0 (0 = full fine-tuning)")
        if self.r == 0:  # the others are refused rather than recorded and ignored
            for f in fields(self):
                if f.name != "seed" and getattr(self, f.name) != f.default:
                    raise InputError(f"{flag_of(LoraSpec, f.name)}: {getattr(self, f.name)} has no effect without "
                                     "--lora_r (full fine-tuning); leave it out or give --lora_r")
            return
        if self.alpha <= 0:
            raise InputError(f"--lora_alpha: {self.alpha}: must be > 0")
        if not 0 <= self.dropout < 1:
            raise InputError(f"--lora_dropout: {self.dropout}: must be in [0, 1)")
        if not self.targets:
            raise InputError("--lora_target_modules: empty")

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.target_modules.split(",") if t.strip())

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), bias="none", task_type="CAUSAL_LM")


def add_lora_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p.add_argument_group("LoRA (peft)"), LoraSpec)


def lora_spec(args: argparse.Namespace, seed: int = 0) -> LoraSpec | None:
    """The run's LoRA settings (None = full fine-tuning), checked."""
    spec = config_from(LoraSpec, args, seed=seed)
    return spec if spec.r else None


def check_targets(spec: LoraSpec | None, config_dir: str) -> None:
    """Every target names a linear module of the model built from config_dir (no weights read)."""
    if spec is None:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    linear = {leaf for leaf, _, _ in linear_modules(model)}
    missing = [t for t in spec.targets if t not in linear]
    if missing:
        raise InputError(f"--lora_target_modules: {', '.join(missing)}: no such linear module in "
                         f"{config_dir}/config.json's model (it has {', '.join(sorted(linear))})")


def linear_modules(model: torch.nn.Module) -> list[tuple[str, str, torch.nn.Linear]]:
    """(last name part, full name, module) of every linear module: what --lora_target_modules names."""
    return [(n.rsplit(".", 1)[-1], n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def inject(model: torch.nn.Module, spec: LoraSpec) -> None:
    """Add adapters to `model` in place (on the meta device: they are initialised after the base
    weights are loaded, by init_adapters) and freeze everything else."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(spec.peft_config(), model, low_cpu_mem_usage=True)
    for name, p in model.named_parameters():
        p.requires_grad_(is_adapter(name))


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def base_names(model: torch.nn.Module) -> dict[str, str]:
    """Name in a plain checkpoint -> name in `model.state_dict()`, adapters left out (the identity
    for a model without them): peft moves a wrapped layer's weight to `<layer>.base_layer.weight`."""
    return {k.replace(".base_layer.", "."): k for k in model.state_dict() if not is_adapter(k)}


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _assign(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write a full tensor into a parameter, sharded or not (each rank keeps its own shard)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.no_grad():
        if isinstance(param, DTensor):
            param.copy_(distribute_tensor(full.to(param.device), param.device_mesh, param.placements))
        else:
            param.copy_(full)


def initial_weights(shapes: list[tuple[int, int]], r: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """peft's default initialisation of rank-r adapters of linear modules with weights [out, in], in
    order (A: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)); B: zero, so
    training starts from the base model), drawn from a seeded generator as full tensors so that 1
    rank and N ranks start from the same adapters."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for o, i in shapes:
        bound = 1 / math.sqrt(i)
        out.append((torch.rand((r, i), generator=gen, dtype=torch.float32) * 2 * bound - bound, torch.zeros(o, r)))
    return out


def init_adapters(model: torch.nn.Module, spec: LoraSpec) -> None:
    """Set every adapter of `model` to initial_weights (one rank or many alike)."""
    pairs = [(a, b) for _, layer in lora_layers(model) for a, b in zip(layer.lora_A.values(), layer.lora_B.values())]
    shapes = [(b.weight.shape[0], a.weight.shape[1]) for a, b in pairs]
    for (a, b), (A, B) in zip(pairs, initial_weights(shapes, spec.r, spec.seed)):
        _assign(a.weight, A)
        _assign(b.weight, B)


def merge(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Merge every adapter into its base weight (W += alpha/r B A) and put the plain layer back,
    so `model` is an ordinary model again; returns the adapters as full CPU tensors under PEFT's
    file names. Every rank must call it."""
    adapters = {}
    for name, layer in lora_layers(model):
        (key, a), (_, b) = next(iter(layer.lora_A.items())), next(iter(layer.lora_B.items()))
        A, B = _full(a.weight).detach().float(), _full(b.weight).detach().float()
        w = layer.base_layer.weight
        _assign(w, _full(w).detach() + (B @ A * layer.scaling[key]).to(w.dtype))
        adapters[peft_key(name, "lora_A")] = A.cpu().contiguous()
        adapters[peft_key(name, "lora_B")] = B.cpu().contiguous()
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, layer.base_layer)
    return adapters


def adapter_moments(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The adapters' Adam moments as full CPU tensors, under PEFT's parameter names + ".exp_avg" /
    ".exp_avg_sq" (call before merge(), which removes the adapters). Every rank must call it."""
    out = {}
    for name, layer in lora_layers(model):
        for part, mods in (("lora_A", layer.lora_A), ("lora_B", layer.lora_B)):
            state = opt.state[next(iter(mods.values())).weight]
            for k in ("exp_avg", "exp_avg_sq"):
                out[f"{peft_key(name, part)}.{k}"] = _full(state[k]).detach().float().cpu().contiguous()
    return out


def save_adapter(path: str, spec: LoraSpec, adapters: dict[str, torch.Tensor], base: str,
                 moments: dict[str, torch.Tensor] | None = None) -> None:
    """PEFT's adapter folder: adapter_config.json + adapter_model.safetensors (rank 0), and with
    `moments` (adapter_moments) the adapters' Adam state in OPTIMIZER_FILE, which PEFT ignores."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    cfg = spec.peft_config()
    cfg.base_model_name_or_path = base
    cfg.save_pretrained(path)
    save_file(adapters, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})
    if moments is not None:
        save_file(moments, os.path.join(path, OPTIMIZER_FILE), metadata={"format": "pt"})


def read_adapters(ckpt: str) -> tuple[list[Adapter], dict | None] | None:
    """A LoRA checkpoint's adapters (in file order) and, when it was saved with --save_opt, their
    Adam moments (module -> (exp_avg, exp_avg_sq) of A and B flattened and concatenated, A first,
    as al_similarity.lora_grad lays out a gradient); None when `ckpt` has no adapter folder."""
    import json

    from safetensors.torch import load_file

    folder = os.path.join(ckpt, ADAPTER_DIR)
    if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
        return None
    cfg = json.load(open(os.path.join(folder, "adapter_config.json")))
    scale = cfg["lora_alpha"] / cfg["r"]
    w = load_file(os.path.join(folder, "adapter_model.safetensors"))
    modules = [k[len(PEFT_PREFIX):-len(".lora_A.weight")] for k in sorted(w) if k.endswith(".lora_A.weight")]
    adapters = [Adapter(m, w[peft_key(m, "lora_A")], w[peft_key(m, "lora_B")], scale) for m in modules]
    opt_file = os.path.join(folder, OPTIMIZER_FILE)
    if not os.path.isfile(opt_file):
        return adapters, None
    st = load_file(opt_file)
    moments = {m: tuple(torch.cat([st[f"{peft_key(m, part)}.{k}"].flatten() for part in ("lora_A", "lora_B")])
                        for k in ("exp_avg", "exp_avg_sq")) for m in modules}
    return adapters, moments


def fresh_adapters(model: torch.nn.Module, spec: LoraSpec) -> list[Adapter]:
    """The adapters a round training `spec` on `model` (plain, no adapters) starts from
    (initial_weights with spec.seed)."""
    mods = [(n, m) for leaf, n, m in linear_modules(model) if leaf in spec.targets]
    weights = initial_weights([tuple(m.weight.shape) for _, m in mods], spec.r, spec.seed)
    return [Adapter(n, A, B, spec.alpha / spec.r) for (n, _), (A, B) in zip(mods, weights)]


def as_meta(spec: LoraSpec | None) -> dict | None:
    """What al_checkpoint.json records about a run's LoRA."""
    return None if spec is None else {"r": spec.r, "alpha": spec.alpha, "dropout": spec.dropout,
                                      "targets": list(spec.targets), "seed": spec.seed}
