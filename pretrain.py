"""
Pretrain a GPT on a text file by next-token prediction.

    python pretrain.py config/small.py                         # the default CPU run, a few minutes
    python pretrain.py config/small.py --init_from=resume      # continue where the last run stopped
    torchrun --standalone --nproc_per_node=2 pretrain.py config/gpt2_small.py   # several processes / GPUs

The corpus is split, its tokenizer trained and both splits encoded once by prepare.py (cached in cache_dir);
checkpoints, the tokenizer and a CSV log of every evaluation go to out_dir. Run with --help to list every setting.
"""
import atexit
import dataclasses
import datetime
import hashlib
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from bpe import Tokenizer
from configurator import configure
from common import (append_log, check_settings, copy_tokenizer, keep_freed_memory, load_checkpoint,
                    non_finite_stop, peak_flops, restore_rng_state, resume_optimizers, rng_state, save_checkpoint,
                    score_every_token, setup_device, step_optimizers, stop_on_ctrl_c)
from model import GPT, GPTConfig
from prepare import END, check_data_settings, prepare_once

# -----------------------------------------------------------------------------
# settings: override with config files (config/*.py, config.json) and --name=value
# I/O
out_dir = "out"
# the corpus: a UTF-8 text file, a folder or glob of them, or an http(s) URL; the default is built from Python's library
data_path = "data/data.txt"
cache_dir = "data/cache"  # downloads, file hashes, tokenizers and token ids, reused while unchanged
data_extensions = ".txt,.md,.py"  # the files of a folder that are documents ("" for all); a glob takes what it matches
skip_bad_files = False  # True: leave out files that are not UTF-8 text, naming each, instead of stopping
tokenizer_max_bytes = 2_000_000_000  # the tokenizer learns from at most about this much of the training text
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
eval_iters = 20  # batches per split of the estimate at each evaluation
eval_stride = 0  # the final, full evaluation's window step (score_every_token); 0 means max_seq_len // 2
val_fraction = 0.1  # the last tenth of the corpus is held out: the last files, where there are several
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
dist_timeout_s = 0  # under torchrun, how long a collective may wait for the other processes; 0: the backend's default
seed = 1337
# -----------------------------------------------------------------------------


def setup_distributed(device_type, timeout_s):
    """Return (rank, world_size) and start the process group when run under torchrun (each process's GPU is chosen
    by common.setup_device)."""
    if "RANK" not in os.environ:
        return 0, 1
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s) if timeout_s else None)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def leave_before_teardown(outcome):
    """Flush and end the process at once with outcome['status'], skipping the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(outcome["status"])


def get_batch(ids_path, ids_dtype, generator, device):
    """Sample batch_size random windows of the token ids in ids_path: x (B, T) and y (B, T), y shifted by one."""
    ids = np.memmap(ids_path, dtype=ids_dtype, mode="r")  # reopened per batch so its pages are not held
    # windows of max_seq_len + 1 tokens; the last possible one ends with the split's last token
    offsets = torch.randint(0, len(ids) - max_seq_len, (batch_size,), generator=generator)
    windows = torch.from_numpy(ids[offsets.numpy()[:, None] + np.arange(max_seq_len + 1)].astype(np.int64))
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if device.startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def held_out_bits_per_byte(model, ids_path, ids_dtype, start_id, text_bytes, autocast):
    """Bits per byte of the held-out text with every token counted once and as much context as fits
    (common.score_every_token): what the model would spend on it as a compressor. The first token is predicted from
    start_id (<|endoftext|>), as after the end of a document."""
    ids = torch.from_numpy(np.fromfile(ids_path, dtype=ids_dtype).astype(np.int64))
    nats = score_every_token(model, torch.cat([torch.tensor([start_id]), ids]), eval_stride or max_seq_len // 2,
                             autocast)
    return nats.sum().item() / math.log(2) / text_bytes


@torch.no_grad()
def estimate_loss(model, ids_paths, ids_dtype, device, autocast):
    """Mean loss on eval_iters fixed batches of each split (the same batches at every evaluation)."""
    model.eval()
    losses = {}
    for split_index, split in enumerate(("train", "val")):
        generator = torch.Generator().manual_seed(seed + 1000 + split_index)  # leaves the training RNG alone
        total = 0.0
        for _ in range(eval_iters):
            x, y = get_batch(ids_paths[split], ids_dtype, generator, device)
            with autocast:
                total += model(x, y)[1].item()
        losses[split] = total / eval_iters
    model.train()
    return losses


def lr_scale(it, total_iters):
    """The fraction of each optimizer's peak learning rate at step it of total_iters: warm-up, stable, decay. A
    linear warm-up from 1/warmup_iters (never 0), the peak until the last cooldown_fraction of the steps, then a
    linear decay to min_lr_ratio (measured better than cosine decay: NOTES.md, Optimizer and defaults)."""
    decay_iters = lr_decay_iters or total_iters
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    if it >= decay_iters:
        return min_lr_ratio
    cooldown_start = max(warmup_iters, decay_iters - int(cooldown_fraction * decay_iters))
    if it < cooldown_start:
        return 1.0
    progress = (it + 1 - cooldown_start) / max(1, decay_iters - cooldown_start)  # the last step is at the floor
    return min_lr_ratio + (1.0 - progress) * (1.0 - min_lr_ratio)


def every_rank_rng_state(world_size, device_type, data_generator):
    """rng_state of every rank, in rank order, so that each rank resumes its own dropout and data streams.
    A collective: under torchrun every rank must call it at the same step."""
    states = [None] * world_size
    dist.all_gather_object(states, rng_state(device_type, data_generator))
    return states


def muon_momentum_at(it):
    """Muon's momentum at step it: from 0.85 (or muon_momentum, if lower) up to muon_momentum over the first
    muon_momentum_warmup steps, so that early updates follow the fast-changing gradient more closely (measured:
    NOTES.md, Optimizer and defaults)."""
    start = min(0.85, muon_momentum)
    return muon_momentum - (muon_momentum - start) * max(0.0, 1 - it / max(muon_momentum_warmup, 1))


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    settings = configure(globals(), json_sections=("model", "training"))
    check_settings([  # (what is wrong, the sentence that says so), before any slow work
        (init_from not in ("scratch", "resume"), f"init_from must be 'scratch' or 'resume', not '{init_from}'"),
        *((globals()[name] < 1, f"{name} must be at least 1, not {globals()[name]}")
          for name in ("batch_size", "grad_accum_steps", "eval_interval", "eval_iters")),
        (max_iters < 0 or n_epochs < 0,
         f"max_iters and n_epochs must not be negative (got {max_iters} and {n_epochs})"),
        (not 0 <= eval_stride <= max_seq_len,
         f"eval_stride must be from 0 (max_seq_len // 2) to max_seq_len={max_seq_len}, not {eval_stride}"),
        (muon_lr < 0 or not 0 <= muon_momentum < 1,
         f"muon_lr must be >= 0 and muon_momentum in [0, 1); got {muon_lr} and {muon_momentum}"),
        (muon_momentum_warmup < 0, f"muon_momentum_warmup must not be negative, not {muon_momentum_warmup}"),
        (not 0 <= cooldown_fraction <= 1, f"cooldown_fraction must be between 0 and 1, not {cooldown_fraction}"),
        (min(learning_rate, weight_decay, muon_embedding_decay) < 0 or not (0 <= beta1 < 1 and 0 <= beta2 < 1),
         f"learning_rate, weight_decay and muon_embedding_decay must be >= 0 and beta1 and beta2 in [0, 1); got "
         f"{learning_rate}, {weight_decay}, {muon_embedding_decay}, {beta1} and {beta2}"),
        (grad_accum_steps % int(os.environ.get("WORLD_SIZE", 1)),  # torchrun's number of processes
         f"grad_accum_steps={grad_accum_steps} must be a multiple of the {os.environ.get('WORLD_SIZE')} processes")])
    check_data_settings(data_path, vocab_size, val_fraction)
    try:  # the model's settings, before any slow work (the model itself takes the tokenizer's vocab_size)
        model_config = GPTConfig(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers, d_ff=d_ff,
                                 max_seq_len=max_seq_len, dropout=dropout, bias=bias)
    except ValueError as e:
        raise SystemExit(str(e))
    # the device, dtype and optimizer, and under torchrun this process's GPU
    run_device, device_type, run_dtype, run_optimizer, autocast = setup_device(device, dtype, optimizer)

    # -------------------------------------------------------------------------
    # data first: prepare.py makes the tokenizer and token ids that are not cached yet. Under torchrun this comes
    # before the process group exists: one process prepares while the others wait on a file, not in a collective.
    data = prepare_once(data_path, cache_dir, vocab_size, val_fraction, data_extensions, skip_bad_files,
                        tokenizer_max_bytes)

    # -------------------------------------------------------------------------
    # set-up: the processes (device, dtype and optimizer were chosen above), the peak FLOP/s, the data's sizes
    rank, world_size = setup_distributed(device_type, dist_timeout_s)
    master = rank == 0
    if world_size > 1:
        # Once DDP has held the gloo process group, its threads outlive destroy_process_group and can abort the
        # process (SIGABRT, burying the real message) as Python shuts down, on success and on error alike. So a
        # rank leaves at exit with os._exit, past that teardown: 0 after a finished run, 1 after an error.
        outcome = {"status": 1}  # set to 0 when the run has finished
        atexit.register(leave_before_teardown, outcome)
    accum_per_rank = grad_accum_steps // world_size
    if device_type == "cpu":
        keep_freed_memory()  # Linux: each step reuses the memory the last one freed, not fresh pages (common.py)
    torch.manual_seed(seed)  # the same initial weights on every rank
    peak, peak_source = peak_flops(run_device, getattr(torch, run_dtype))
    # the data's sizes: tokens in each split, bytes of the held-out text
    ids_paths, ids_dtype, tokenizer_sha = data["ids_paths"], data["ids_dtype"], data["tokenizer_sha256"]
    end_id = Tokenizer.load(data["tokenizer_path"]).special_tokens[END]
    n_train_tokens, n_val_tokens = (len(np.memmap(ids_paths[split], dtype=ids_dtype, mode="r"))
                                    for split in ("train", "val"))
    n_tokens = n_train_tokens + n_val_tokens
    if min(n_train_tokens, n_val_tokens) < max_seq_len + 1:  # one window of max_seq_len + 1 each
        raise SystemExit(f"{data_path} gives {n_tokens:,} tokens, too few for a train and validation split of "
                         f"windows of max_seq_len={max_seq_len}; use a larger file or a smaller max_seq_len")
    # bits per byte = nats per token * tokens per byte / ln 2, with the bytes of the validation text itself
    val_tokens_per_byte = n_val_tokens / data["text_bytes"]["val"]
    tokens_per_iter = grad_accum_steps * batch_size * max_seq_len
    if n_epochs > 0:
        epoch_iters = math.ceil(n_epochs * n_train_tokens / tokens_per_iter)
        if master:
            print(f"n_epochs={n_epochs}: {epoch_iters} iterations, in place of max_iters={max_iters} "
                  f"(--n_epochs=0 trains for max_iters)")
        max_iters = epoch_iters

    # -------------------------------------------------------------------------
    # model and optimizers, from scratch or from the checkpoint to resume
    model_config = dataclasses.replace(model_config, vocab_size=data["vocab_size"])
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
        checkpoint = load_checkpoint(checkpoint_path, map_location=run_device)
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
        if checkpoint["tokenizer_sha256"] != tokenizer_sha:
            raise SystemExit(f"{checkpoint_path} was trained with another tokenizer than the one for {data_path} "
                             f"(vocab_size={vocab_size}); resume with the same data and vocab_size")
        resume_optimizers(optimizers, checkpoint, run_optimizer, checkpoint_path, "pretrain.py",
                          "start again with init_from='scratch'")
        model.load_state_dict(checkpoint["model"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        rank_rngs = checkpoint.get("rank_rngs") or []
        rng = rank_rngs[rank] if len(rank_rngs) == world_size > 1 else checkpoint["rng"]
        restore_rng_state(rng, device_type, data_generator)
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

    # -------------------------------------------------------------------------
    # the loop: evaluate and save every eval_interval steps, and take a step
    stop_requested = stop_on_ctrl_c()  # Ctrl-C finishes the current step, saves and exits
    flops_per_iter = raw_model.flops_per_token() * tokens_per_iter
    if master:
        print(f"{raw_model.num_params() / 1e6:.2f}M parameters, {n_tokens:,} tokens "
              f"({n_train_tokens:,} for training), {tokens_per_iter:,} tokens per iteration, "
              f"{max_iters} iterations on {run_device} x {world_size}, {run_dtype}, {run_optimizer}; MFU against "
              f"{peak / 1e12:.3g} TFLOP/s per process, {peak_source}")
    progress = tqdm(total=max_iters, initial=iter_num, disable=not master, dynamic_ncols=True)
    run_start = time.time()
    step_time, tokens_per_sec, mfu, full_bpb = 0.0, 0.0, 0.0, None
    while True:
        evaluating = iter_num % eval_interval == 0 or iter_num >= max_iters
        if evaluating and master and not (iter_num == start_iter and init_from == "resume"):  # the checkpoint has it
            losses = estimate_loss(eval_model, ids_paths, ids_dtype, run_device, autocast)
            if not math.isfinite(losses["train"] + losses["val"]):
                raise non_finite_stop("evaluation losses", f"{losses['train']} (train) and {losses['val']} (validation)",
                                      iter_num, checkpoint_path, last_saved_iter)
            val_bpb = losses["val"] * val_tokens_per_byte / math.log(2)
            elapsed_s = time.time() - run_start  # before the full pass below, which is no training time
            # at the end, every held-out token once as well: the figure to compare (the estimate is for the curve)
            full_bpb = (held_out_bits_per_byte(eval_model, ids_paths["val"], ids_dtype, end_id,
                                               data["text_bytes"]["val"], autocast) if iter_num >= max_iters else None)
            append_log(out_dir, {"iter": iter_num, "tokens": iter_num * tokens_per_iter,
                                 "train_loss": f"{losses['train']:.4f}", "val_loss": f"{losses['val']:.4f}",
                                 "val_bpb": f"{val_bpb:.4f}", "val_bpb_full": "" if full_bpb is None else f"{full_bpb:.4f}",
                                 "lr": f"{learning_rate * lr_scale(max(iter_num - 1, 0), max_iters):.3e}",
                                 "tokens_per_sec": f"{tokens_per_sec:.0f}", "mfu": f"{mfu:.3f}",
                                 "elapsed_s": f"{elapsed_s:.1f}"})
            progress.write(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                           f"val {val_bpb:.3f} bits/byte (estimate from {eval_iters} batches)" + (
                               "" if full_bpb is None else f"; every held-out token once: {full_bpb:.3f} bits/byte"))
            best_val_loss = min(best_val_loss, losses["val"])
        finished = iter_num >= max_iters
        if world_size > 1 and not finished:  # every rank must stop at the same step
            stop = torch.tensor(float(stop_requested.is_set()), device=run_device)
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item():
                stop_requested.set()
        # a stop comes after the evaluation due at this step, so that a resume never misses one
        interrupted = stop_requested.is_set() and not finished
        if iter_num > start_iter and (evaluating or interrupted):
            rank_rngs = every_rank_rng_state(world_size, device_type, data_generator) if world_size > 1 else []
            if master:
                copy_tokenizer(data["tokenizer_path"], tokenizer_sha, out_dir)
                save_checkpoint({
                    "kind": "pretrain", "model": raw_model.state_dict(), "optimizer_name": run_optimizer,
                    "optimizer_states": [o.state_dict() for o in optimizers],
                    "model_config": dataclasses.asdict(model_config), "config": settings,
                    "iter_num": iter_num, "best_val_loss": best_val_loss,
                    "tokenizer_path": "tokenizer.json", "tokenizer_sha256": tokenizer_sha,
                    "rng": rng_state(device_type, data_generator),
                    "rank_rngs": rank_rngs,  # under torchrun: every rank's RNG states ("rng" is rank 0's)
                }, checkpoint_path)
            last_saved_iter = iter_num  # the master wrote it; every rank keeps count
        if interrupted:
            if master:
                progress.write(f"interrupted at iteration {iter_num}; " + (
                    f"{checkpoint_path} holds it: continue with --init_from=resume" if last_saved_iter == iter_num
                    else "nothing was saved"))
            break
        if finished:
            break

        t0 = time.time()
        step_loss = torch.zeros((), device=run_device)  # summed on the device: one sync per step, not per micro-step
        for micro_step in range(accum_per_rank):
            x, y = get_batch(ids_paths["train"], ids_dtype, data_generator, run_device)
            if world_size > 1:  # synchronise gradients only on the last micro-step
                model.require_backward_grad_sync = micro_step == accum_per_rank - 1
            with autocast:
                loss = model(x, y)[1] / accum_per_rank
            loss.backward()
            step_loss += loss.detach()
        step_loss = step_loss.item()
        if not math.isfinite(step_loss):
            raise non_finite_stop("loss", step_loss, iter_num, checkpoint_path, last_saved_iter)
        scale = lr_scale(iter_num, max_iters)
        step_optimizers(model, optimizers, grad_clip, scale, muon_momentum_at(iter_num))
        iter_num += 1

        step_time = 0.9 * step_time + 0.1 * (time.time() - t0) if iter_num - start_iter > 1 else time.time() - t0
        tokens_per_sec = tokens_per_iter / step_time
        mfu = flops_per_iter / step_time / (peak * world_size)
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
        full = "" if full_bpb is None else f"; every held-out token once: {full_bpb:.3f} bits per byte"
        print(f"done in {time.time() - run_start:.0f}s; best val loss {best_val_loss:.4f}{full}; {saved}")
    if world_size > 1:
        dist.destroy_process_group()
        outcome["status"] = 0  # the run finished: leave_before_teardown exits with 0
