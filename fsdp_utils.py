"""Process group, rank helpers, model build/shard/load and checkpoint save/load.

One process per rank, launched by torchrun (or plain python = one rank, no process group).
Under torchrun the model is built on the meta device, each decoder layer and then the root are
sharded with FSDP2 `fully_shard`, and weights are loaded straight into the shards. Checkpoints
the suite writes are torch.distributed.checkpoint (DCP) folders with config.json and the
tokenizer beside `.metadata`; a HF folder (config.json + *.safetensors) is accepted wherever a
checkpoint is read. Saves are atomic at the directory level.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

import al_lora
from al_lora import LoraSpec
from al_utils import InputError, kill_point, progress_bar

# DCP warns on every single-process save/load; single process is a supported mode here
warnings.filterwarnings("ignore", message="torch.distributed is disabled")

# ----------------------------------------------------------------------------------------------
# process group and ranks


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def deterministic_cuda() -> None:
    """Deterministic CUDA kernels. Without them, identical runs on an H100 differed by up to 1e-3 nats
    in their scores and in 1 pick of 50 (bf16 training, cuDNN attention's backward); with them they
    were identical, resumed runs too (README "GPUs (CUDA)")."""
    # cuBLAS reads its workspace size when its first handle is made, i.e. before the first matmul
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def setup(threads: int, deterministic: bool = False) -> torch.device:
    """Fix the thread count (CPU results are bitwise reproducible for a given count and world size;
    CUDA results with `deterministic`), start the process group under torchrun (nccl on CUDA, gloo
    on CPU) and pick the device."""
    if threads > 0:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    if cuda and deterministic:
        deterministic_cuda()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def teardown() -> None:
    """The end of a script's work: under torchrun, end the process group and exit at once (exit code 0,
    stdio flushed; every file is written and closed by then). Leaving gloo's objects to the
    interpreter's finalization now and then aborted a rank after a finished run ("terminate called
    without an active exception", SIGABRT: 2 of ~20 suite runs, in different 2-rank tests), which
    torchrun reports as a failed run. One process (no group): nothing to do, the caller returns."""
    if dist.is_initialized():
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_lists(items: list) -> list:
    """Concatenate every rank's list in rank order (slices are contiguous, so order is kept)."""
    if not dist.is_initialized():
        return items
    out: list = [None] * world()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


def my_slice(n: int) -> slice:
    """This rank's contiguous share of n items (the first n mod world ranks take one more)."""
    w, r = world(), rank()
    lo = r * (n // w) + min(r, n % w)
    return slice(lo, lo + n // w + (1 if r < n % w else 0))


def max_over_ranks(n: int) -> int:
    """The largest of every rank's n (n itself on one process)."""
    return max(gather_lists([n])) if dist.is_initialized() else n


def all_reduce_sum(x: float) -> float:
    if not dist.is_initialized():
        return x
    # nccl reduces CUDA tensors only (setup made this rank's GPU the current device)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([x], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return float(t.item())


# ----------------------------------------------------------------------------------------------
# checkpoints on disk


def checkpoint_kind(path: str) -> str | None:
    """'dcp' for a torch.distributed.checkpoint folder, 'hf' for a HF model folder, else None."""
    if os.path.isfile(os.path.join(path, ".metadata")):
        return "dcp"
    if os.path.isfile(os.path.join(path, "config.json")) and glob.glob(os.path.join(path, "*.safetensors")):
        return "hf"
    return None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja")
META_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)


def copy_meta(src: str, dst: str, names: tuple[str, ...] = META_FILES) -> None:
    """Config, generation config and tokenizer files of a checkpoint folder (what the converters carry over)."""
    for name in names:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


# what a torch.distributed.checkpoint .metadata pickle holds (checked on every checkpoint the suite
# writes, model and optimizer state); anything else could be a payload that runs code on loading
DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict")}


def read_dcp_metadata(path: str):
    """A DCP `.metadata` file, unpickled admitting only the classes DCP writes (and torch dtypes):
    a crafted file is refused, naming the class, before anything in it runs."""
    import io
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in DCP_METADATA_CLASSES or (
                    module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
                return super().find_class(module, name)
            raise InputError(f"{path}: (pickle): refers to {module}.{name}, which torch.distributed.checkpoint "
                             "never writes; not loading it (unpickling it could run code)")

    with open(path, "rb") as f:
        return Restricted(io.BytesIO(f.read())).load()


def safe_reader(path: str):
    """A DCP FileSystemReader whose metadata is read by read_dcp_metadata: every DCP load and every
    metadata read goes through this, so any checkpoint flag may point at a downloaded folder."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def __init__(self) -> None:
            super().__init__(path)
            self.cache: dict = {}  # rank -> metadata: a check before dcp.load and the load unpickle once

        def read_metadata(self, *args, **kwargs):
            rank = kwargs.get("rank")
            if rank not in self.cache:
                md = read_dcp_metadata(os.path.join(path, ".metadata" if rank is None else f"__{rank}.metadata"))
                if getattr(md, "storage_meta", None) is None:
                    md.storage_meta = StorageMeta()
                self.cache[rank] = md
            md = self.cache[rank]
            md.storage_meta.load_id = self.load_id
            return md

    return SafeReader()


def check_model_dir(path: str, flag: str) -> None:
    """Fail early, naming the flag, when `path` is not a model folder."""
    if not os.path.isdir(path) or checkpoint_kind(path) is None:
        raise InputError(f"{flag}: {path}: not a model folder (expected config.json + *.safetensors, "
                         "or a sharded checkpoint with .metadata)")


def _stored_shapes(path: str, flag: str) -> dict[str, tuple]:
    """Tensor name -> shape from a checkpoint's headers/metadata (no weights read); a file cut
    short is reported here, before any work, instead of deep inside a load."""
    shapes = {}
    if checkpoint_kind(path) == "dcp":
        try:
            md = safe_reader(path).read_metadata()
        except InputError as e:
            raise InputError(f"{flag}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise InputError(f"{flag}: {path}/.metadata: unreadable ({type(e).__name__}): "
                             "truncated or corrupt?") from None
        for info in md.storage_data.values():
            f = os.path.join(path, info.relative_path)
            size = os.path.getsize(f) if os.path.isfile(f) else -1
            if size < info.offset + info.length:
                raise InputError(f"{flag}: {f}: truncated ({max(size, 0)} bytes, the metadata needs "
                                 f"{info.offset + info.length}); re-save or re-convert the checkpoint")
        for k, v in md.state_dict_metadata.items():
            if k.startswith("model.") and hasattr(v, "size"):
                shapes[k.removeprefix("model.")] = tuple(v.size)
        return shapes
    from safetensors import safe_open

    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        try:
            with safe_open(f, framework="pt") as fh:
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise InputError(f"{flag}: {f}: unreadable safetensors file ({e}): truncated or corrupt?") from None
    return shapes


def check_weights(path: str, flag: str, config_path: str | None = None) -> None:
    """Pre-flight check of a checkpoint against the config the run builds its model from: files
    complete, every tensor present with the right shape. Reads headers only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    cfg_dir = config_path or path
    config = AutoConfig.from_pretrained(cfg_dir)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    got = _stored_shapes(path, flag)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in got:
        want.pop("lm_head.weight", None)
    for k, shape in want.items():
        if k not in got:
            raise InputError(f"{flag}: {path}: no tensor {k} (checkpoint from a different model than "
                             f"{cfg_dir}/config.json?)")
        if got[k] != shape:
            raise InputError(f"{flag}: {path}: {k} has shape {list(got[k])} but {cfg_dir}/config.json "
                             f"needs {list(shape)} (checkpoint from a different model config)")
    extra = sorted(set(got) - set(want))
    if extra:
        raise InputError(f"{flag}: {path}: tensors {extra[:3]} are not in {cfg_dir}/config.json's model")


def _quiet_transformers() -> None:
    """Per-file 'Loading weights' bars and hub notices only clutter a loop that loads every round."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(path)


def read_safetensors(path: str, progress: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a HF folder's *.safetensors files, dtype as stored, read one by one."""
    from safetensors import safe_open

    sd = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        with safe_open(f, framework="pt") as fh:
            for k in progress_bar(list(fh.keys()), desc=os.path.basename(f), enabled=progress):
                sd[k] = fh.get_tensor(k)
    return sd


# ----------------------------------------------------------------------------------------------
# models


def _reset_rotary(model: torch.nn.Module, device: torch.device) -> None:
    """to_empty() leaves non-persistent buffers (rotary inv_freq) as garbage: recompute them."""
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb"):
            fresh = type(mod)(config=model.config)  # built on the CPU: real values
            for bname, buf in fresh.named_buffers():
                getattr(mod, bname).copy_(buf.to(device))


def shard(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2: fully_shard each decoder layer, the input embeddings and the LM head (torchtitan's
    layout), then the root. Each is gathered only while it runs: the root's own parameters stay
    gathered from forward to backward, and with embeddings and head left in the root (a large
    vocabulary makes them a tenth of a small model) no-grad passes would hold them all along. Tied
    embeddings share one weight, which then stays the root's. On CUDA bf16 compute with fp32
    master weights and fp32 gradient reduction; on CPU everything stays fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()
    own = [] if getattr(model.config, "tie_word_embeddings", False) else \
        [model.get_input_embeddings(), model.get_output_embeddings()]
    for module in [*model.model.layers, *own]:
        fully_shard(module, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def load_model(path: str, device: torch.device, config_path: str | None = None,
               activation_checkpointing: bool = False, lora: LoraSpec | None = None) -> torch.nn.Module:
    """Load a HF folder or DCP checkpoint as an fp32 model, sharded across ranks under torchrun;
    with `lora`, fresh adapters (seeded by it) on top of the frozen weights.

    The model is built on the meta device and materialised only as this rank's shards. From a
    DCP folder each rank reads only its shards; from a HF folder rank 0 reads the file and
    broadcasts into the shards (no full copy per rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    _quiet_transformers()
    kind = checkpoint_kind(path)
    if kind is None:
        raise InputError(f"{path}: not a model folder")
    config = AutoConfig.from_pretrained(config_path or path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if os.path.exists(os.path.join(config_path or path, "generation_config.json")):
        # from_config ignores it, and its eos_token_id may list more stop ids (al_scoring.stop_ids);
        # only those: its sampling defaults (repetition_penalty, top_k, ...) would change what our
        # flags decode
        eos = GenerationConfig.from_pretrained(config_path or path).eos_token_id
        if eos is not None:
            model.generation_config.eos_token_id = eos
    if activation_checkpointing:  # recompute each layer's activations in backward (HF's own hook)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:  # before sharding: FSDP2 then shards the adapters with their layer
        al_lora.inject(model, lora)
    if world() > 1:
        shard(model, device)
    model.to_empty(device=device)
    _reset_rotary(model, device)
    if kind == "dcp":
        load_dcp(model, path)
    else:
        names = al_lora.base_names(model)  # checkpoint name -> the model's (they differ under LoRA)
        sd = read_safetensors(path) if is_main() else {}  # rank 0 reads, broadcasts under torchrun
        sd = {names.get(k, k): v.float() if world() > 1 else v for k, v in _with_tied(model, sd).items()}
        if world() > 1:
            set_model_state_dict(model, sd, options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=True, strict=lora is None))
        else:
            missing, unexpected = model.load_state_dict(sd, strict=False)
            missing = [k for k in missing if not al_lora.is_adapter(k)]
            if missing or unexpected:
                raise InputError(f"{path}: weights do not match config.json (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    if lora is not None:
        al_lora.init_adapters(model, lora)
    model.eval()
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is sharded with FSDP2 (under torchrun)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def has_optimizer_state(path: str) -> bool:
    """Whether a DCP checkpoint holds optimizer state (saved with --save_opt)."""
    if checkpoint_kind(path) != "dcp":
        return False
    return any(k.startswith("optim.") for k in safe_reader(path).read_metadata().state_dict_metadata)


def adamw(params: list, lr: float = 1e-3, weight_decay: float = 0.0,
          betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The AdamW that training builds (decay on matrices, none on vectors): adam_moments() rebuilds
    it to load the saved state, so both must group the parameters the same way."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)


def adam_moments(model: torch.nn.Module, path: str, names: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (exp_avg, exp_avg_sq) from the optimizer state saved in `path` (an AdamW over the
    model's parameters, as train() builds it). Every rank must call it. In one process: CPU tensors.
    Sharded (FSDP2): each rank keeps its shards, DTensors as the optimizer held them, and less
    gathers one weight's at a time (al_similarity.gathered). A whole copy of every LESS weight's
    moments on every rank grew with the model, not with the shard: 8.0 GiB a rank for a 7B Llama,
    more than its share of the weights on 8 ranks (benchmarks/results/less_ranks.md)."""
    from torch.distributed.tensor import DTensor

    opt = adamw(list(model.parameters()))
    load_dcp(model, path, opt)
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        m, v = (opt.state[params[name]][k].detach() for k in ("exp_avg", "exp_avg_sq"))
        out[name] = (m, v) if isinstance(m, DTensor) else (m.float().cpu(), v.float().cpu())
    return out


def _with_tied(model: torch.nn.Module, sd: dict) -> dict:
    """HF files omit lm_head.weight when it is tied to the embeddings: fill it in."""
    if sd and getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def load_dcp(model: torch.nn.Module, path: str, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Read a DCP checkpoint into the (sharded) model in place: each rank reads only its shards,
    straight into its parameters' storage (model.state_dict() shares it), with no extra copy."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    sd = model.state_dict()
    state = {"model": {k: sd[v] for k, v in al_lora.base_names(model).items()}}  # adapters are not in a checkpoint
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    reader = safe_reader(path)
    reader.read_metadata()  # a crafted file fails here with its one line (dcp.load would wrap the error);
    # the reader keeps what it read, so dcp.load does not unpickle it again
    dcp.load(state, storage_reader=reader, no_dist=not dist.is_initialized())
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])


@contextlib.contextmanager
def full_params(model: torch.nn.Module) -> Iterator[None]:
    """Hold every rank's full parameters for a stretch of local inference (scoring, generation):
    each rank then runs forward calls on its own slice of the data with no collectives, so ranks
    may make different numbers of calls. One all-gather per module on entry, freed on exit."""
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.unshard()
        m.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for m in mods:
            m.set_reshard_after_forward(True)
            m.reshard()


def set_grad_sync(model: torch.nn.Module, sync: bool) -> None:
    """Skip the gradient reduce-scatter on non-final micro-steps of an accumulated step."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def save_checkpoint(model: torch.nn.Module, tokenizer, path: str, meta: dict,
                    optimizer: torch.optim.Optimizer | None = None,
                    extra: Callable[[str], None] | None = None) -> None:
    """Save a DCP checkpoint (+ config, tokenizer, al_checkpoint.json) atomically: every rank
    writes its shards into a temp sibling, then rank 0 swaps it in. A crash at any point leaves
    either the old or the new checkpoint, never a half-written one that looks valid. `extra(dir)`
    writes more files into it (rank 0; e.g. a LoRA run's adapter folder)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    path = path.rstrip("/")
    parent, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tmp = os.path.join(parent, f".{base}.tmp")
    if is_main():
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    msd, osd = get_state_dict(model, optimizer or [])
    try:
        dcp.save({"model": msd, **({"optim": osd} if optimizer is not None else {})}, checkpoint_id=tmp,
                 no_dist=not dist.is_initialized())
        if is_main():
            model.config.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            with open(os.path.join(tmp, "al_checkpoint.json"), "w") as f:
                json.dump(meta, f, indent=2)
            if extra is not None:
                extra(tmp)
    except BaseException as e:  # e.g. a full disk: the old checkpoint stays; free what the new one took
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(e, path)
        if err is e:
            raise
        raise err from e
    if is_main():
        kill_point("checkpoint_save", meta.get("round", -1))
        old = tmp + ".old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def write_error(e: BaseException, where: str) -> BaseException:
    """The OSError under a failed checkpoint write (DCP wraps it per rank), naming a file; else e."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(e, CheckpointException):
        e = next((exc for exc, _ in e.failures.values() if isinstance(exc, OSError)), e)
    if isinstance(e, OSError) and e.filename is None:
        return OSError(e.errno, e.strerror, where)
    return e


def recover_checkpoint(path: str) -> None:
    """Undo a swap cut short by a crash: if the checkpoint is missing but its previous version
    was parked as .old, put it back; drop a half-written temp folder. Rank 0 only."""
    if not is_main():
        return
    path = path.rstrip("/")
    parent, base = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tmp = os.path.join(parent, f".{base}.tmp")
    if not os.path.exists(path) and os.path.exists(tmp + ".old"):
        os.replace(tmp + ".old", path)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(tmp + ".old", ignore_errors=True)


def checkpoint_meta(path: str) -> dict:
    f = os.path.join(path, "al_checkpoint.json")
    if not os.path.isfile(f):
        return {}
    with open(f) as fh:
        return json.load(fh)
