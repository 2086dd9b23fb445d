"""
What the training and sampling scripts share, and nothing else: refusing impossible settings, the device, dtype and
optimizer to run with, an allocator setting for CPU training, a peak-FLOPs probe, checkpoints (optimizer states
included) and the tokenizer that goes with them, random state, the CSV log and stopping on Ctrl-C. It imports only
torch and the standard library; model.py needs none of it, so that file can be copied alone.
"""
import csv
import ctypes
import hashlib
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext

import torch
from torch.nn import functional as F


# -----------------------------------------------------------------------------
# settings, device, dtype, optimizer

def check_settings(problems):
    """Stop at the first (wrong, sentence) of problems whose wrong is true, with its sentence: a setting that cannot
    work is refused in one sentence before any slow work."""
    for wrong, sentence in problems:
        if wrong:
            raise SystemExit(sentence)


def pick_device(name="auto"):
    """'auto' picks cuda, then mps (Apple GPUs), then cpu. A name given is checked here, so that asking for a GPU
    the machine lacks is one clear ValueError instead of a failure deep inside torch."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = name.partition(":")
    counts = {"cpu": 1, "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
              "mps": int(torch.backends.mps.is_available())}
    if kind not in counts or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N or mps")
    if counts[kind] <= (int(index) if index else 0):
        raise ValueError(f"device '{name}' is not available on this machine; use device='auto' or 'cpu'")
    return name


def pick_dtype(name, device):
    """'auto' picks bfloat16 where the device multiplies it natively, float32 elsewhere: a CUDA GPU that supports
    it, or a CPU with AVX512-BF16 or AMX, where bfloat16 matmuls outrun float32's (without them they are slower:
    NOTES.md, bfloat16 on CPU). Any other name is returned as it is."""
    if name != "auto":
        return name
    kind = torch.device(device).type
    if kind == "cuda":  # without including_emulation=False a V100 or T4, which only emulates it, would count
        return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    # torch.cpu asks the processor itself; these helpers are private, hence getattr (a test checks them on Linux)
    checks = [getattr(torch.cpu, f, lambda: False) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return "bfloat16" if kind == "cpu" and any(check() for check in checks) else "float32"


def pick_optimizer(name, device):
    """'auto' picks 'muon' where the device multiplies bfloat16 natively (torch's Muon orthogonalises in bfloat16,
    many times slower elsewhere), 'adamw' elsewhere. Any other name is returned as it is."""
    if name != "auto":
        return name
    return "muon" if pick_dtype("auto", device) == "bfloat16" else "adamw"


def autocast_for(device_type, run_dtype):
    """bfloat16 autocast for run_dtype 'bfloat16', nothing for float32."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if run_dtype == "bfloat16" else nullcontext()


def keep_freed_memory():
    """Make CPU training faster on 64-bit Linux. Every step frees its activations and allocates the same sizes
    again; glibc gives large freed blocks back to the kernel, and the next step page-faults them in again, zeroed
    (NOTES.md, Allocator). Keep them for reuse instead. Returns whether it applied: False, having changed
    nothing, with another C library or on a 32-bit system."""
    try:
        is_glibc = bool(os.confstr("CS_GNU_LIBC_VERSION"))  # only glibc answers this; Windows has no confstr
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None) if is_glibc else None
    except (AttributeError, ValueError, OSError):
        return False
    if mallopt is None or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    # every block comes from the heap, never from mmap (glibc's mmap threshold stops at 32 MiB, below a large
    # batch's logits), and the heap is not shrunk while less than 1 GiB of it is free; the second alone is worse
    # than neither (NOTES.md, Allocator), so it only follows the first
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 2**30))


def setup_device(device, dtype, optimizer):
    """What a training run's settings device, dtype and optimizer come to: (device, its type, dtype name, optimizer
    name, the autocast context to run the model in). A name that cannot work is one SystemExit sentence. Under
    torchrun each process takes the GPU of its LOCAL_RANK."""
    if dtype not in ("auto", "float32", "bfloat16"):
        raise SystemExit(f"dtype must be 'auto', 'float32' or 'bfloat16', not '{dtype}'")
    if optimizer not in ("auto", "adamw", "muon"):
        raise SystemExit(f"optimizer must be 'auto', 'adamw' or 'muon', not '{optimizer}'")
    try:
        run_device = pick_device(device)
    except ValueError as e:
        raise SystemExit(str(e))
    if run_device == "cuda" and "LOCAL_RANK" in os.environ:  # under torchrun each process has its own GPU, chosen
        run_device = f"cuda:{os.environ['LOCAL_RANK']}"  # before anything below starts CUDA on the first one
        torch.cuda.set_device(run_device)
    device_type = run_device.split(":")[0]
    if device_type == "cuda":  # float32 matmuls in TensorFloat-32, set before the peak FLOP/s is timed
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    run_dtype, run_optimizer = pick_dtype(dtype, run_device), pick_optimizer(optimizer, run_device)
    return run_device, device_type, run_dtype, run_optimizer, autocast_for(device_type, run_dtype)


def measure_peak_flops(device="cpu", dtype=torch.float32):
    """FLOP/s of large square matmuls on device in dtype (median of five, after one to warm up): the ceiling
    that MFU is measured against where no published peak is known. Takes well under a second; on a GPU, switch
    TF32 on before, as training does."""
    device = torch.device(device)
    n = 1536 if device.type == "cpu" else 8192
    g = torch.Generator().manual_seed(0)  # its own generator: measuring must not move the training RNG
    a, b = (torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else torch.mps.synchronize if device.type == "mps" else None
    times = []
    for _ in range(6):
        if sync:
            sync()
        t0 = time.perf_counter()
        a @ b
        if sync:
            sync()  # GPU work is asynchronous: wait for it before reading the clock
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / sorted(times[1:])[2]


# dense bfloat16 tensor-core FLOP/s from the makers' data sheets, by a word of torch.cuda.get_device_name();
# MFU divides by these where known, as nanoGPT does with the A100's 312e12, so that figures compare across projects
PUBLISHED_BF16_PEAKS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
                        ("A100", 312e12)]


def peak_flops(device, dtype):
    """(FLOP/s, where it comes from) that MFU is measured against: a CUDA GPU's published bfloat16 peak where
    PUBLISHED_BF16_PEAKS knows it and the run is in bfloat16, else a matmul timed here (measure_peak_flops)."""
    if torch.device(device).type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for word, flops in PUBLISHED_BF16_PEAKS:
            if word in name:
                return flops, f"the published bfloat16 peak of the {word}"
    return measure_peak_flops(device, dtype), "a matmul timed on this device"


# -----------------------------------------------------------------------------
# checkpoints and their tokenizer

def save_checkpoint(checkpoint, path):
    """torch.save checkpoint to path atomically: write path + '.tmp', flush it to disk, then rename, so a
    crash while saving leaves the previous checkpoint intact."""
    model_state = checkpoint.get("model", {}) if isinstance(checkpoint, dict) else {}
    if any(key.startswith("_orig_mod.") for key in model_state):
        raise ValueError("the model state_dict comes from a torch.compile wrapper; save model._orig_mod.state_dict().")
    path = os.fspath(path)  # a str or a pathlib.Path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = path + ".tmp"
    with open(tmp_path, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint saved by save_checkpoint, or stop in one sentence if it is missing or unreadable.
    weights_only=True unpickles only tensors and plain containers, numbers and strings, so a checkpoint from
    elsewhere cannot run code on load."""
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}; train one with `python pretrain.py config/small.py` or name "
                         f"a run that has one")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch reports a cut-off or foreign file in many ways; say which file it was
        raise SystemExit(f"{path} cannot be read as a checkpoint ({type(e).__name__}): it is cut off, or not a "
                         f"checkpoint saved by this code") from None


def load_optimizer_states(optimizers, states):
    """Each optimizer's state (its moments) from a checkpoint's list of state_dicts, while every group keeps the
    settings this run gave it (peak learning rates, decays), so a setting changed on resume takes effect. Raises
    ValueError if the parameter groups do not match."""
    for opt, state in zip(optimizers, states):
        settings = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
        opt.load_state_dict(state)
        for group, setting in zip(opt.param_groups, settings):
            group.update(setting)


def step_optimizers(model, optimizers, grad_clip, lr_scale, muon_momentum=None):
    """Clip the gradients' norm to grad_clip (0 does not clip), take every optimizer's step at lr_scale times each
    group's peak_lr (and, given muon_momentum, at that momentum for Muon's groups) and clear the gradients."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * lr_scale
            if muon_momentum is not None and isinstance(opt, torch.optim.Muon):
                group["momentum"] = muon_momentum
        opt.step()
        opt.zero_grad(set_to_none=True)


def resume_optimizers(optimizers, checkpoint, optimizer_name, checkpoint_path, script, start_again):
    """load_optimizer_states from a checkpoint saved by script ('pretrain.py', 'finetune.py'), refusing in one
    sentence, which ends with start_again (what to do instead), one saved by another optimizer or with other
    parameter groups."""
    saved = checkpoint.get("optimizer_name", "unknown")
    if saved != optimizer_name:  # the states of one do not fit the other
        raise SystemExit(f"{checkpoint_path} was trained with optimizer '{saved}', not '{optimizer_name}'; resume with "
                         f"--optimizer={saved} or {start_again}")
    try:
        load_optimizer_states(optimizers, checkpoint["optimizer_states"])
    except ValueError:  # other parameter groups: saved by an older version of the script
        raise SystemExit(f"{checkpoint_path}'s optimizer state does not fit this {script}'s parameter groups (an older "
                         f"version saved it); {start_again}")


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_tokenizer_path(checkpoint, checkpoint_path):
    """The path of the tokenizer a checkpoint was trained with (stored beside it), refusing a missing or changed
    file: a different tokenizer would silently turn the model's ids into other text."""
    tokenizer_path = os.path.join(os.path.dirname(checkpoint_path), checkpoint["tokenizer_path"])
    if not os.path.isfile(tokenizer_path):
        raise SystemExit(f"{checkpoint_path} needs its tokenizer {tokenizer_path}, which is missing; restore it "
                         f"or train again")
    if file_sha256(tokenizer_path) != checkpoint["tokenizer_sha256"]:
        raise SystemExit(f"{tokenizer_path} is not the tokenizer {checkpoint_path} was trained with (its sha256 "
                         f"differs); restore the original file or train again")
    return tokenizer_path


def copy_tokenizer(tokenizer_path, tokenizer_sha, out_dir):
    """Put the run's tokenizer into out_dir as tokenizer.json, unless it is there already. Called with a run's first
    checkpoint, not before: a new run that stops early leaves the previous run's checkpoint next to its tokenizer."""
    tokenizer_out = os.path.join(out_dir, "tokenizer.json")
    if not os.path.exists(tokenizer_out) or file_sha256(tokenizer_out) != tokenizer_sha:
        shutil.copyfile(tokenizer_path, tokenizer_out + ".tmp")
        os.replace(tokenizer_out + ".tmp", tokenizer_out)


def answer_ids(tokenizer, template, prompt, max_seq_len, rating=5):
    """The ids that ask a fine-tuned model to answer prompt, in the template its checkpoint stores:
    [<|rating_k|>] (a run fine-tuned with rating_mode='condition') <|prompt|> prompt <|response|>. The prompt is
    stripped, as fine-tuning stripped every prompt, and cut from the left (its end matters most) to leave room for
    at least one answer token. Returns (ids, the number of prompt tokens cut)."""
    special = tokenizer.special_tokens
    prefix = [special[template["prompt"]]]
    if template.get("rating_token"):
        prefix = [special[f"<|rating_{rating}|>"]] + prefix
    prompt_ids = tokenizer.encode(prompt.strip())
    cut = max(0, len(prompt_ids) - max(0, max_seq_len - len(prefix) - 2))
    return prefix + prompt_ids[cut:] + [special[template["response"]]], cut


# -----------------------------------------------------------------------------
# held-out bits, as a compressor counts them

@torch.no_grad()
def score_every_token(model, ids, stride, autocast=nullcontext()):
    """Nats of each token of ids (a 1-D int64 tensor) after the first, (len(ids) - 1,) float32: every token scored
    exactly once, with as much context as fits. Windows of max_seq_len tokens move stride tokens at a time; each
    window scores only the tokens no earlier window scored, so a token sees between max_seq_len - stride and
    max_seq_len tokens before it (all of them near the start). A score depends on nothing at or after its token."""
    L, n = model.config.max_seq_len, len(ids) - 1
    if not 1 <= stride <= L:
        raise ValueError(f"stride must be from 1 to max_seq_len={L}, not {stride}")
    T = min(L, n)
    starts = sorted({min(s, n - T) for s in range(0, n - T + stride, stride)})  # the last window ends at the end
    batch = max(1, (1 << 24) // (T * model.config.vocab_size))  # windows at once: 64 MiB of float32 logits
    nats, scored = torch.empty(n), 0  # targets ids[1 : scored + 1] have their score
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for i in range(0, len(starts), batch):
        group = starts[i:i + batch]
        x = torch.stack([ids[s:s + T] for s in group]).to(device)          # (B, T)
        y = torch.stack([ids[s + 1:s + T + 1] for s in group]).to(device)  # (B, T), x shifted by one
        with autocast:
            logits = model(x)[0]
        window_nats = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").cpu()  # (B, T)
        for s, row in zip(group, window_nats):
            nats[scored:s + T] = row[scored - s:]
            scored = s + T
    model.train(was_training)
    return nats


# -----------------------------------------------------------------------------
# random state, the log, stopping

def rng_state(device_type, data_generator=None):
    """The random state a resume restores. CUDA: this process's own device only, so that a resume on a machine
    with fewer GPUs still works."""
    state = {"torch": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state()] if device_type == "cuda" else []}
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def restore_rng_state(state, device_type, data_generator=None):
    torch.set_rng_state(state["torch"].cpu())
    if data_generator is not None:
        data_generator.set_state(state["data"].cpu())
    if state["cuda"] and device_type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0].cpu())


def append_log(out_dir, row):
    """Add row (a dict) to out_dir/log.csv, with a header when the file is new."""
    path = os.path.join(out_dir, "log.csv")
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


def non_finite_stop(what, value, iter_num, checkpoint_path, last_saved_iter):
    """The SystemExit for a loss that turned inf or nan: stop without saving, and say which checkpoint still holds
    the last good state."""
    kept = (f"{checkpoint_path} keeps iteration {last_saved_iter}, the last good state" if last_saved_iter is not None
            else "this run saved nothing (its first checkpoint was still to come)")
    return SystemExit(f"the {what} became {value} at iteration {iter_num}; stopped without saving, so {kept}; "
                      f"lower learning_rate or set grad_clip")


def stop_on_ctrl_c():
    """An Event that the first Ctrl-C sets, so that the loop can finish its step, save and stop; a second Ctrl-C
    stops at once."""
    requested = threading.Event()

    def request_stop(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
    signal.signal(signal.SIGINT, request_stop)
    return requested
