"""
Pretrain a GPT on a text file by next-token prediction.

    python pretrain.py config/small.py                         # the default CPU run, a few minutes
    python pretrain.py config/small.py --init_from=resume      # continue where the last run stopped
    torchrun --standalone --nproc_per_node=2 pretrain.py config/gpt2_small.py   # several processes / GPUs

The corpus is tokenized once with bpe.py (cached in cache_dir); checkpoints, the tokenizer and a CSV
log of every evaluation go to out_dir. Run with --help to list every setting.
"""
import atexit
import codecs
import csv
import dataclasses
import hashlib
import math
import os
import re
import shutil
import signal
import sys
import sysconfig
import time
import urllib.request
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from bpe import Tokenizer
from configurator import configure
from common import (keep_freed_memory, load_checkpoint, load_optimizer_states, measure_peak_flops, pick_device,
                    pick_dtype, pick_optimizer, save_checkpoint)
from model import GPT, GPTConfig

# -----------------------------------------------------------------------------
# settings: override with config files (config/*.py, config.json) and --name=value
# I/O
out_dir = "out"
data_path = "data/data.txt"  # any UTF-8 text file or http(s) URL; the default is built from Python's own library
cache_dir = "data/cache"  # downloaded corpora, trained tokenizers and token ids, reused while unchanged
init_from = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
# tokenizer and model
vocab_size = 1024  # 256 bytes + merges + special tokens
d_model = 128
n_heads = 4
n_layers = 4
d_ff = 512
max_seq_len = 128
dropout = 0.0
bias = True
# training
max_iters = 2000
n_epochs = 0.0  # if > 0, train for this many passes over the training tokens instead of max_iters
eval_interval = 250
eval_iters = 20
val_fraction = 0.1  # the last tenth of the corpus is held out
batch_size = 16
grad_accum_steps = 1  # summed over all processes under torchrun
# 'muon': torch.optim.Muon for the matrices inside the blocks, AdamW for the rest; 'adamw': AdamW for all; 'auto':
# muon where bfloat16 is native (torch's Muon orthogonalises in bfloat16, many times slower elsewhere), else adamw.
# MFU counts the model's FLOPs only, not Muon's orthogonalisation.
optimizer = "auto"
learning_rate = 3e-3  # AdamW's peak
muon_lr = 0.02  # Muon's peak (optimizer='muon')
muon_momentum = 0.95
muon_momentum_warmup = 300  # steps over which Muon's momentum rises linearly from 0.85 to muon_momentum
warmup_iters = 100
cooldown_fraction = 0.4  # the last 40% of the steps decay linearly from the peak to min_lr_ratio of it
min_lr_ratio = 0.1
lr_decay_iters = 0  # the step where the decay ends; 0 means max_iters
weight_decay = 0.1  # AdamW's, on the matrices it trains; never on gains and biases
muon_embedding_decay = 0.1  # AdamW's decay on the tied embedding/head when Muon trains the blocks
beta1 = 0.9
beta2 = 0.95  # measured better than 0.99 for these short runs (NOTES.md, Optimizer and defaults)
grad_clip = 1.0  # 0 turns clipping off
# system
device = "auto"  # 'auto' picks cuda, then mps, then cpu
dtype = "auto"  # 'bfloat16' (autocast) where the device multiplies it natively, else 'float32'; or either by name
compile = False  # torch.compile the model
seed = 1337
# -----------------------------------------------------------------------------
SPECIAL_TOKENS = ["<|endoftext|>", "<|prompt|>", "<|response|>"] + [f"<|rating_{r}|>" for r in range(1, 6)]


def setup_distributed():
    """Return (rank, world_size, device) and start the process group when run under torchrun."""
    try:
        run_device = pick_device(device)
    except ValueError as e:
        raise SystemExit(str(e))
    if "RANK" not in os.environ:
        return 0, 1, run_device
    rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    if run_device.startswith("cuda"):
        run_device = f"cuda:{local_rank}"
        torch.cuda.set_device(run_device)
    dist.init_process_group(backend="nccl" if run_device.startswith("cuda") else "gloo")
    return rank, world_size, run_device


def build_default_corpus(path):
    """Write the top-level modules of Python's standard library, one document each: real text, offline."""
    lib_dir = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(lib_dir) if n.endswith(".py"))
    documents = []
    for name in names:
        with open(os.path.join(lib_dir, name), encoding="utf-8", errors="replace") as f:
            documents.append(f.read())
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"  # per process: two runs may build it at once
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("<|endoftext|>".join(documents))
    os.replace(tmp, path)
    print(f"built the default corpus {path} from {len(names)} modules in {lib_dir}")


def fetch_corpus(path):
    """Return a local text file for data_path: download a URL once, build the default corpus if asked."""
    if path.startswith(("http://", "https://")):
        # named after the whole URL, so that two URLs ending in the same file name never share a download
        name = os.path.basename(path.rstrip("/")) or "download.txt"
        local = os.path.join(cache_dir, f"{hashlib.sha256(path.encode()).hexdigest()[:12]}-{name}")
        if not os.path.exists(local):
            os.makedirs(cache_dir, exist_ok=True)
            print(f"downloading {path} to {local}")
            tmp = f"{local}.tmp{os.getpid()}"  # per process, as for the other files in cache_dir
            try:
                urllib.request.urlretrieve(path, tmp)
            except OSError as e:
                raise SystemExit(f"could not download data_path {path} ({e}); download it yourself and give the file")
            os.replace(tmp, local)
        path = local
    elif os.path.isdir(path):
        raise SystemExit(f"data_path {path} is a directory; give a UTF-8 text file or an http(s) URL")
    elif not os.path.exists(path):
        if path == "data/data.txt":
            build_default_corpus(path)
        else:
            raise SystemExit(f"data_path {path} does not exist; give a UTF-8 text file or an http(s) URL")
    if os.path.getsize(path) == 0:
        raise SystemExit(f"data_path {path} is an empty file; give a UTF-8 text file with some text in it")
    return path


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_corpus(text_path):
    """Cut the corpus into a training and a validation text file in cache_dir, where its last val_fraction of bytes
    begins, moved on to just after the next newline or <|endoftext|>. The tokenizer is then trained on the training
    text alone: merges learned from the held-out text would flatter its bits per byte (NOTES.md, Tokenizer)."""
    stem, text_sha = os.path.splitext(os.path.basename(text_path))[0], file_sha256(text_path)
    os.makedirs(cache_dir, exist_ok=True)
    paths = {split: os.path.join(cache_dir, f"{stem}-{text_sha[:12]}-val{val_fraction}-{split}.txt")
             for split in ("train", "val")}
    if all(os.path.exists(path) for path in paths.values()):
        return paths
    size = os.path.getsize(text_path)
    mark = int(size * (1 - val_fraction))
    window_start = max(0, mark - len("<|endoftext|>"))  # from a little before the mark, to see a separator across it
    with open(text_path, "rb") as f:
        f.seek(window_start)
        window = f.read(1 << 20)
    ends = (m.end() for m in re.finditer(rb"\n|<\|endoftext\|>", window) if window_start + m.end() > mark)
    # with neither in the next MiB, the first byte at the mark that starts a character
    cut = window_start + next(ends, next((i for i in range(mark - window_start, len(window))
                                          if window[i] & 0xC0 != 0x80), len(window)))
    decoder = codecs.getincrementaldecoder("utf-8")()  # checks the text on the way, to name the user's file
    tmp = None
    try:
        with open(text_path, "rb") as f:
            for split, length in (("train", cut), ("val", size - cut)):
                tmp = f"{paths[split]}.tmp{os.getpid()}"  # per process: runs sharing cache_dir may split at once
                with open(tmp, "wb") as out:
                    while length > 0 and (block := f.read(min(length, 1 << 22))):
                        decoder.decode(block)
                        out.write(block)
                        length -= len(block)
                os.replace(tmp, paths[split])
        decoder.decode(b"", final=True)  # the file does not end inside a character
    except UnicodeDecodeError as e:
        for path in (tmp, *paths.values()):  # nothing half-checked stays in the cache
            if path and os.path.exists(path):
                os.remove(path)
        raise ValueError(f"{text_path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot start or continue "
                         f"a character); convert it to UTF-8 first") from None
    return paths


def prepare_tokens(text_paths):
    """Train (or reuse) the tokenizer on the training text, and encode each split to a uint16/uint32 file of token
    ids. Returns the tokenizer, its path and hash, the ids' paths and their dtype."""
    stem = os.path.basename(text_paths["train"]).removesuffix("-train.txt")
    tokenizer_path = os.path.join(cache_dir, f"{stem}-v{vocab_size}.json")
    if not os.path.exists(tokenizer_path):
        t0 = time.time()
        tokenizer = Tokenizer.train_file(text_paths["train"], vocab_size, SPECIAL_TOKENS)
        tokenizer.save(tokenizer_path)
        print(f"trained a tokenizer of {tokenizer.vocab_size} tokens in {time.time() - t0:.1f}s: {tokenizer_path}")
    tokenizer = Tokenizer.load(tokenizer_path)
    tokenizer_sha = file_sha256(tokenizer_path)
    ids_dtype = "uint16" if tokenizer.vocab_size <= 65536 else "uint32"
    ids_paths = {}
    for split, path in text_paths.items():
        ids_paths[split] = os.path.join(cache_dir, f"{stem}-{tokenizer_sha[:12]}-{split}.{ids_dtype}")
        if not os.path.exists(ids_paths[split]):
            t0 = time.time()
            workers = 1 if os.path.getsize(path) < 64 << 20 else max(1, os.cpu_count() - 1)
            tmp = f"{ids_paths[split]}.tmp{os.getpid()}"  # per process: runs sharing cache_dir may encode at once
            n_ids = tokenizer.encode_file(path, tmp, dtype=ids_dtype, num_workers=workers,
                                          allowed_special={"<|endoftext|>"})
            os.replace(tmp, ids_paths[split])
            print(f"encoded the {split} split, {os.path.getsize(path) / 1e6:.1f} MB, to {n_ids:,} tokens in "
                  f"{time.time() - t0:.1f}s")
    return tokenizer, tokenizer_path, tokenizer_sha, ids_paths, ids_dtype


def get_batch(split, generator):
    """Sample batch_size random windows: x (B, T) and y (B, T), y shifted by one token."""
    ids = np.memmap(ids_paths[split], dtype=ids_dtype, mode="r")  # reopened per batch so its pages are not held
    # windows of max_seq_len + 1 tokens; the last possible one ends with the split's last token
    offsets = torch.randint(0, len(ids) - max_seq_len, (batch_size,), generator=generator)
    windows = torch.from_numpy(ids[offsets.numpy()[:, None] + np.arange(max_seq_len + 1)].astype(np.int64))
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if run_device.startswith("cuda"):
        return x.pin_memory().to(run_device, non_blocking=True), y.pin_memory().to(run_device, non_blocking=True)
    return x.to(run_device), y.to(run_device)


def lr_scale(it):
    """The fraction of each optimizer's peak learning rate at step it: warm-up, stable, decay. A linear warm-up from
    1/warmup_iters (never 0), the peak until the last cooldown_fraction of the steps, then a linear decay to
    min_lr_ratio (measured better than cosine decay: NOTES.md, Optimizer and defaults)."""
    decay_iters = lr_decay_iters or max_iters
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    if it >= decay_iters:
        return min_lr_ratio
    cooldown_start = max(warmup_iters, decay_iters - int(cooldown_fraction * decay_iters))
    if it < cooldown_start:
        return 1.0
    progress = (it + 1 - cooldown_start) / max(1, decay_iters - cooldown_start)  # the last step is at the floor
    return min_lr_ratio + (1.0 - progress) * (1.0 - min_lr_ratio)


def muon_momentum_at(it):
    """Muon's momentum at step it: from 0.85 (or muon_momentum, if lower) up to muon_momentum over the first
    muon_momentum_warmup steps, so that early updates follow the fast-changing gradient more closely (measured:
    NOTES.md, Optimizer and defaults)."""
    start = min(0.85, muon_momentum)
    return muon_momentum - (muon_momentum - start) * max(0.0, 1 - it / max(muon_momentum_warmup, 1))


@torch.no_grad()
def estimate_loss():
    """Mean loss on eval_iters fixed batches of each split (the same batches at every evaluation)."""
    eval_model.eval()
    losses = {}
    for split_index, split in enumerate(("train", "val")):
        generator = torch.Generator().manual_seed(seed + 1000 + split_index)  # leaves the training RNG alone
        total = 0.0
        for _ in range(eval_iters):
            x, y = get_batch(split, generator)
            with autocast:
                total += eval_model(x, y)[1].item()
        losses[split] = total / eval_iters
    eval_model.train()
    return losses


def rng_state():
    # CUDA: this process's own device only, so a resume on a machine with fewer GPUs still works
    return {"torch": torch.get_rng_state(), "data": data_generator.get_state(),
            "cuda": [torch.cuda.get_rng_state()] if device_type == "cuda" else []}


def every_rank_rng_state():
    """rng_state() of every rank, in rank order, so that each rank resumes its own dropout and data streams.
    A collective: under torchrun every rank must call it at the same step."""
    states = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


def write_checkpoint(rank_rngs=None):
    # the run's tokenizer goes into out_dir with its first checkpoint, not before: a new run that stops early
    # leaves the previous run's checkpoint next to the tokenizer it was trained with
    tokenizer_out = os.path.join(out_dir, "tokenizer.json")
    if not os.path.exists(tokenizer_out) or file_sha256(tokenizer_out) != tokenizer_sha:
        shutil.copyfile(tokenizer_cache_path, tokenizer_out + ".tmp")
        os.replace(tokenizer_out + ".tmp", tokenizer_out)
    checkpoint = {
        "kind": "pretrain", "model": raw_model.state_dict(), "optimizer_name": run_optimizer,
        "optimizer_states": [o.state_dict() for o in optimizers],
        "model_config": dataclasses.asdict(model_config), "config": settings,
        "iter_num": iter_num, "best_val_loss": best_val_loss,
        "tokenizer_path": "tokenizer.json", "tokenizer_sha256": tokenizer_sha, "rng": rng_state(),
        "rank_rngs": rank_rngs or [],  # under torchrun: every rank's RNG states ("rng" is rank 0's)
    }
    save_checkpoint(checkpoint, os.path.join(out_dir, "ckpt.pt"))


def stop_on_non_finite(what, value):
    """Stop without saving, and say which checkpoint still holds the last good state."""
    kept = (f"{checkpoint_path} keeps iteration {last_saved_iter}, the last good state" if last_saved_iter is not None
            else "this run saved nothing (its first checkpoint was still to come)")
    raise SystemExit(f"the {what} became {value} at iteration {iter_num}; stopped without saving, so {kept}; "
                     f"lower learning_rate or set grad_clip")


def log_evaluation(row):
    path = os.path.join(out_dir, "log.csv")
    new_file = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    settings = configure(globals(), json_sections=("model", "training"))
    if init_from not in ("scratch", "resume"):
        raise SystemExit(f"init_from must be 'scratch' or 'resume', not '{init_from}'")
    if dtype not in ("auto", "float32", "bfloat16"):
        raise SystemExit(f"dtype must be 'auto', 'float32' or 'bfloat16', not '{dtype}'")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise SystemExit(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    for name in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters"):
        if globals()[name] < 1:
            raise SystemExit(f"{name} must be at least 1, not {globals()[name]}")
    if max_iters < 0 or n_epochs < 0:
        raise SystemExit(f"max_iters and n_epochs must not be negative (got {max_iters} and {n_epochs})")
    if not 0 < val_fraction < 1:
        raise SystemExit(f"val_fraction must be between 0 and 1, not {val_fraction}")
    if optimizer not in ("auto", "adamw", "muon"):
        raise SystemExit(f"optimizer must be 'auto', 'adamw' or 'muon', not '{optimizer}'")
    if muon_lr < 0 or not 0 <= muon_momentum < 1:
        raise SystemExit(f"muon_lr must be >= 0 and muon_momentum in [0, 1); got {muon_lr} and {muon_momentum}")
    if muon_momentum_warmup < 0:
        raise SystemExit(f"muon_momentum_warmup must not be negative, not {muon_momentum_warmup}")
    if not 0 <= cooldown_fraction <= 1:
        raise SystemExit(f"cooldown_fraction must be between 0 and 1, not {cooldown_fraction}")
    if min(learning_rate, weight_decay, muon_embedding_decay) < 0 or not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise SystemExit(f"learning_rate, weight_decay and muon_embedding_decay must be >= 0 and beta1 and beta2 "
                         f"in [0, 1); got {learning_rate}, {weight_decay}, {muon_embedding_decay}, {beta1} and {beta2}")
    try:  # the model's settings, before any slow work (the model itself takes the tokenizer's vocab_size)
        model_config = GPTConfig(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_ff=d_ff,
                                 max_seq_len=max_seq_len, dropout=dropout, bias=bias)
    except ValueError as e:
        raise SystemExit(str(e))

    rank, world_size, run_device = setup_distributed()
    master = rank == 0
    if world_size > 1:
        # Once DDP has held the gloo process group, its threads outlive destroy_process_group and can abort the
        # process (SIGABRT, burying the real message) as Python shuts down, on success and on error alike. So a
        # rank leaves at exit with os._exit, past that teardown: 0 after a finished run, 1 after an error.
        exit_status = 1

        def leave_before_teardown():
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(exit_status)
        atexit.register(leave_before_teardown)
    if grad_accum_steps % world_size:
        raise SystemExit(f"grad_accum_steps={grad_accum_steps} must be a multiple of the {world_size} processes")
    accum_per_rank = grad_accum_steps // world_size
    device_type = run_device.split(":")[0]
    if device_type == "cpu":
        keep_freed_memory()  # Linux: each step reuses the memory the last one freed, not fresh pages (model.py)
    run_dtype = pick_dtype(dtype, run_device)
    run_optimizer = pick_optimizer(optimizer, run_device)
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if run_dtype == "bfloat16" else nullcontext()
    peak_flops = measure_peak_flops(run_device, getattr(torch, run_dtype))
    torch.manual_seed(seed)  # the same initial weights on every rank
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # the master prepares corpus, tokenizer and token ids; the others wait, then find them cached
    if not master:
        dist.barrier()
    text_path = fetch_corpus(data_path)
    try:
        text_paths = split_corpus(text_path)
        tokenizer, tokenizer_cache_path, tokenizer_sha, ids_paths, ids_dtype = prepare_tokens(text_paths)
    except ValueError as e:  # one-sentence errors from here and bpe.py, such as a file that is not UTF-8
        raise SystemExit(str(e))
    if master and world_size > 1:
        dist.barrier()
    n_train_tokens, n_val_tokens = (len(np.memmap(ids_paths[split], dtype=ids_dtype, mode="r"))
                                    for split in ("train", "val"))
    n_tokens = n_train_tokens + n_val_tokens
    if min(n_train_tokens, n_val_tokens) < max_seq_len + 1:  # one window of max_seq_len + 1 each
        raise SystemExit(f"{data_path} gives {n_tokens:,} tokens, too few for a train and validation split of "
                         f"windows of max_seq_len={max_seq_len}; use a larger file or a smaller max_seq_len")
    # bits per byte = nats per token * tokens per byte / ln 2, with the bytes of the validation text itself
    val_tokens_per_byte = n_val_tokens / os.path.getsize(text_paths["val"])
    tokens_per_iter = grad_accum_steps * batch_size * max_seq_len
    if n_epochs > 0:
        epoch_iters = math.ceil(n_epochs * n_train_tokens / tokens_per_iter)
        if master:
            print(f"n_epochs={n_epochs}: {epoch_iters} iterations, in place of max_iters={max_iters} "
                  f"(--n_epochs=0 trains for max_iters)")
        max_iters = epoch_iters

    model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
    model = GPT(model_config).to(run_device)
    optimizers = model.configure_optimizers(run_optimizer, learning_rate, weight_decay, (beta1, beta2), device_type,
                                            muon_lr, muon_momentum, muon_embedding_decay)
    if world_size > 1:
        torch.manual_seed(seed + rank)  # the same initial weights, but each rank its own dropout masks
    data_generator = torch.Generator().manual_seed(seed + rank)  # each rank draws its own windows
    iter_num, best_val_loss = 0, float("inf")
    checkpoint_path = os.path.join(out_dir, "ckpt.pt")
    if init_from == "resume":
        if not os.path.exists(checkpoint_path):
            raise SystemExit(f"init_from='resume' but there is no {checkpoint_path}; start with init_from='scratch'")
        try:
            checkpoint = load_checkpoint(checkpoint_path, map_location=run_device)
        except ValueError as e:  # a cut-off or foreign file
            raise SystemExit(str(e))
        if checkpoint.get("kind") != "pretrain":
            raise SystemExit(f"{checkpoint_path} is a {checkpoint.get('kind', 'foreign')} checkpoint, not pretrain.py's; "
                             f"resume a fine-tuning run with finetune.py --init_from=resume")
        for key, value in dataclasses.asdict(model_config).items():
            if checkpoint["model_config"].get(key) != value:
                raise SystemExit(f"{checkpoint_path} has {key}={checkpoint['model_config'].get(key)} but the settings "
                                 f"give {value}; resume with the checkpoint's settings or use init_from='scratch'")
        if checkpoint["config"].get("val_fraction", val_fraction) != val_fraction:  # it would mix the two splits
            raise SystemExit(f"{checkpoint_path} was trained with val_fraction={checkpoint['config']['val_fraction']}, "
                             f"not {val_fraction}; resume with the checkpoint's settings")
        saved_optimizer = checkpoint.get("optimizer_name", "unknown")
        if saved_optimizer != run_optimizer:  # the states of one do not fit the other
            raise SystemExit(f"{checkpoint_path} was trained with optimizer '{saved_optimizer}', not "
                             f"'{run_optimizer}'; resume with --optimizer={saved_optimizer} or use init_from='scratch'")
        if checkpoint["tokenizer_sha256"] != tokenizer_sha:
            raise SystemExit(f"{checkpoint_path} was trained with another tokenizer than the one for {data_path} "
                             f"(vocab_size={vocab_size}); resume with the same data and vocab_size")
        model.load_state_dict(checkpoint["model"])
        try:
            load_optimizer_states(optimizers, checkpoint["optimizer_states"])
        except ValueError:  # other parameter groups: saved by an older pretrain.py
            raise SystemExit(f"{checkpoint_path}'s optimizer state does not fit this pretrain.py's parameter groups "
                             f"(an older version saved it); start again with init_from='scratch'")
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        rank_rngs = checkpoint.get("rank_rngs") or []
        rng = rank_rngs[rank] if len(rank_rngs) == world_size > 1 else checkpoint["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        data_generator.set_state(rng["data"].cpu())
        if rng["cuda"] and device_type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"][0].cpu())
        if world_size > 1 and rng is checkpoint["rng"]:  # saved by another number of processes
            if master:
                print(f"{checkpoint_path} was saved by {max(1, len(rank_rngs))} processes, not {world_size}: every rank "
                      f"continues from rank 0's random state, its data stream offset by its rank")
            data_generator.manual_seed(int(torch.randint(2**62, (1,), generator=data_generator)) + rank)
        del checkpoint
        if master:
            print(f"resuming from {checkpoint_path} at iteration {iter_num}")
    elif master and os.path.exists(os.path.join(out_dir, "log.csv")):
        os.remove(os.path.join(out_dir, "log.csv"))  # a fresh run starts a fresh log
    start_iter = iter_num
    last_saved_iter = iter_num if init_from == "resume" else None  # for the message if the loss turns non-finite
    if master:
        os.makedirs(out_dir, exist_ok=True)

    raw_model = model  # checkpoints hold the plain module's weights: no '_orig_mod.' or 'module.' prefixes
    if compile:
        model = torch.compile(model)
    eval_model = model  # the master evaluates alone, so outside DDP, whose forward talks to every rank
    if world_size > 1:
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if device_type == "cuda" else None,
                    forward_sync_buffers=False)  # the only buffer, the positional table, never changes

    # Ctrl-C finishes the current step, saves and exits; a second Ctrl-C stops at once
    stop_requested = False

    def request_stop(signum, frame):
        global stop_requested
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested = True
    signal.signal(signal.SIGINT, request_stop)

    flops_per_iter = raw_model.flops_per_token() * tokens_per_iter
    if master:
        print(f"{raw_model.num_params() / 1e6:.2f}M parameters, {n_tokens:,} tokens "
              f"({n_train_tokens:,} for training), {tokens_per_iter:,} tokens per iteration, "
              f"{max_iters} iterations on {run_device} x {world_size}, {run_dtype}, {run_optimizer}")
    progress = tqdm(total=max_iters, initial=iter_num, disable=not master, dynamic_ncols=True)
    run_start, last_eval_iter = time.time(), None
    step_time, tokens_per_sec, mfu = 0.0, 0.0, 0.0
    while True:
        if (iter_num % eval_interval == 0 or iter_num >= max_iters) and iter_num != last_eval_iter:
            saving = iter_num > start_iter
            rank_rngs = every_rank_rng_state() if saving and world_size > 1 else None  # every rank takes part
            if master and not (iter_num == start_iter and init_from == "resume"):  # the checkpoint covers that one
                losses = estimate_loss()
                if not math.isfinite(losses["train"] + losses["val"]):
                    stop_on_non_finite("evaluation losses", f"{losses['train']} (train) and {losses['val']} (validation)")
                val_bpb = losses["val"] * val_tokens_per_byte / math.log(2)
                log_evaluation({"iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                "train_loss": f"{losses['train']:.4f}", "val_loss": f"{losses['val']:.4f}",
                                "val_bpb": f"{val_bpb:.4f}",
                                "lr": f"{learning_rate * lr_scale(max(iter_num - 1, 0)):.3e}",
                                "tokens_per_sec": f"{tokens_per_sec:.0f}", "mfu": f"{mfu:.3f}",
                                "elapsed_s": f"{time.time() - run_start:.1f}"})
                progress.write(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                               f"val {val_bpb:.3f} bits/byte")
                best_val_loss = min(best_val_loss, losses["val"])
                if saving:
                    write_checkpoint(rank_rngs)
            if saving:
                last_saved_iter = iter_num  # the master wrote it; every rank keeps count
            last_eval_iter = iter_num
        if iter_num >= max_iters:
            break
        if world_size > 1:  # every rank must stop at the same step
            stop = torch.tensor(float(stop_requested), device=run_device)
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            stop_requested = bool(stop.item())
        if stop_requested:  # after the evaluation due at this step, so that a resume never misses one
            if iter_num > start_iter and last_saved_iter != iter_num:
                rank_rngs = every_rank_rng_state() if world_size > 1 else None
                if master:
                    write_checkpoint(rank_rngs)
                last_saved_iter = iter_num
            if master:
                progress.write(f"interrupted at iteration {iter_num}; " + (
                    f"{checkpoint_path} holds it: continue with --init_from=resume" if last_saved_iter == iter_num
                    else "nothing was saved"))
            break

        t0 = time.time()
        scale = lr_scale(iter_num)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["peak_lr"] * scale
                if isinstance(opt, torch.optim.Muon):
                    group["momentum"] = muon_momentum_at(iter_num)
        step_loss = 0.0
        for micro_step in range(accum_per_rank):
            x, y = get_batch("train", data_generator)
            if world_size > 1:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == accum_per_rank - 1
            with autocast:
                loss = model(x, y)[1] / accum_per_rank
            loss.backward()
            step_loss += loss.item()
        if not math.isfinite(step_loss):
            stop_on_non_finite("loss", step_loss)
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        iter_num += 1

        step_time = 0.9 * step_time + 0.1 * (time.time() - t0) if iter_num - start_iter > 1 else time.time() - t0
        tokens_per_sec = tokens_per_iter / step_time
        mfu = flops_per_iter / step_time / (peak_flops * world_size)
        progress.update(1)
        if iter_num % 10 == 0:
            progress.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_sec:,.0f}", mfu=f"{mfu:.0%}",
                                 lr=f"{learning_rate * scale:.1e}")
    progress.close()

    if world_size > 1:  # all ranks must hold the same weights; print a digest of them so anyone can check
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in raw_model.parameters()))
        print(f"rank {rank}: weights sha256 {digest.hexdigest()}", flush=True)
    if master and iter_num >= max_iters:  # finished, not interrupted
        saved = f"checkpoint {checkpoint_path}" if iter_num > start_iter else "no steps to take, so nothing saved"
        print(f"done in {time.time() - run_start:.0f}s; best val loss {best_val_loss:.4f}; {saved}")
    if world_size > 1:
        dist.destroy_process_group()
        exit_status = 0  # read by leave_before_teardown
