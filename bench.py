"""
bench.py: speed, memory and quality measurements, one section per command-line argument.

    python bench.py tokenizer [--data=PATH] [--runs=5]   # bpe.py: training, encoding, decoding, memory
    python bench.py prepare [--data=PATH] [--vocab_size=32768] [--mb=320] [--rev=eeac0cc~]  # prepare.py's stages
    python bench.py train                                  # training tokens/s and MFU against the measured peak
    python bench.py nanogpt [--path=../nanoGPT]            # our training step against nanoGPT's (clone it first)
    python bench.py bf16                                   # float32 against bfloat16 autocast on CPU
    python bench.py allocator [--batch_size=8] [--runs=3]  # what keep_freed_memory saves in pretrain.py
    python bench.py sample                                 # generation with and without the KV cache
    python bench.py memory                                 # peak resident memory of training and sampling
    python bench.py quality [--seconds=75]                 # tinyshakespeare: bits per byte after a fixed training time
    python bench.py pretrain [--seconds=180]               # the default run with each optimizer, against xz
    python bench.py plot [--runs=out,out-adamw]            # runs' bits per byte against time, and xz: assets/bpb.png
    python bench.py compress [--runs=out,out-1,out-2]      # held-out bits: xz, PPMd, the model static and adapting
    python bench.py optimizer                              # the cost of an AdamW and a Muon step
    python bench.py head                                   # a training step with HeadLoss and with the plain loss
    python bench.py finetune [--modes=weight,filter,...]   # every rating_mode on the default run, with parse and
                                                           # pass rates of the answers it writes; a mode may
                                                           # carry settings: condition:condition_contrast=0

Times are medians of repeated runs; MB means 10^6 bytes of UTF-8 text. Like pretrain.py on CPU, this process
keeps freed memory (common.keep_freed_memory); the allocator section compares pretrain.py with and without.
The tokenizer and quality sections read data/tinyshakespeare.txt (download it from TINYSHAKESPEARE_URL below)
unless --data names another file. NOTES.md holds the figures these sections gave.
"""

import copy
import csv
import glob
import hashlib
import importlib.util
import inspect
import io
import json
import lzma
import math
import os
import resource
import runpy
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from bpe import Tokenizer
from common import (autocast_for, keep_freed_memory, load_checkpoint, measure_peak_flops, pick_dtype,
                    pick_optimizer, score_every_token)
from model import GPT, GPTConfig
from prepare import END

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data", "tinyshakespeare.txt")
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# nanoGPT's CPU shape (shakespeare_char on a laptop) and nanoGPT's shakespeare_char GPU shape with a smaller batch
SMALL = dict(vocab_size=65, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_seq_len=64, dropout=0.0)
WIDER = dict(vocab_size=65, d_model=384, n_heads=6, n_layers=6, d_ff=1536, max_seq_len=256, dropout=0.0)
# the default run's model, read from config/small.py (its vocabulary of thousands makes the logits the largest tensor)
_small = runpy.run_path(os.path.join(HERE, "config", "small.py"))
CONFIG_SMALL = {k: _small[k] for k in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len", "dropout",
                                       "bias")}
# (config, batch size) of the shapes that several sections time a training step at
NANOGPT_SHAPE, SMALL_PY_SHAPE = ({**SMALL, "bias": False}, 12), (CONFIG_SMALL, _small["batch_size"])


def median_time(fn, runs, setup=None):
    """Median wall and CPU seconds of this process for fn(setup()) over runs calls, setup untimed (CPU time shows
    what the wall time would be on a machine that nothing else is using)."""
    wall, cpu = [], []
    for _ in range(runs):
        arg = setup() if setup else None
        t0, c0 = time.perf_counter(), time.process_time()
        fn(arg)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


# in a fresh process, peak() is its peak resident memory so far: VmHWM on Linux (ru_maxrss counts the forking parent)
PEAK_PROBE = """
import sys
def peak():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
start = peak()
sys.path.insert(0, sys.argv[1])
"""


def peak_rss(code):
    """Peak resident bytes of a fresh Python process that runs code: (at its start, at its end)."""
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE + code + "\nprint(start, peak())", HERE],
                         capture_output=True, text=True, check=True).stdout.split()
    return [int(x) for x in out[-2:]]


def print_table(title, rows):
    widths = [max(len(str(r[k])) for r in rows) for k in range(len(rows[0]))]
    print(title)
    for k, row in enumerate(rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def machine_load():
    """The end of a table's title: the CPUs, and how busy they were."""
    return f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"


# stage_usage's child: one version's prepare_data (argv[1] is its code's folder), or HF tokenizers' trainer on the
# first argv[3] bytes, printing ["stage", time] as each stage begins (train_file wrapped to see where merging begins)
PREPARE_STAGES = """
import json, sys, time
mark = lambda stage: print(json.dumps([stage, time.time()]), flush=True)
if sys.argv[1] == "hf":
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    def lines(left=int(sys.argv[3])):
        with open(sys.argv[2], "rb") as f:
            while left > 0 and (line := f.readline(left)):
                left -= len(line)
                yield line.decode("utf-8")
    mark("train")
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(lines(), trainers.BpeTrainer(vocab_size=int(sys.argv[4]), show_progress=False,
                           special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
else:
    sys.path.insert(0, sys.argv[1])
    import bpe, prepare
    train_file = bpe.Tokenizer.train_file.__func__
    def timed(cls, *args, **kwargs):
        mark("count")
        started = []
        tokenizer = train_file(cls, *args, **kwargs, progress=lambda stage, done, total: stage == "merge" and not
                               started and started.append(mark("merges")))
        mark("encode")
        return tokenizer
    bpe.Tokenizer.train_file = classmethod(timed)
    mark("split")
    prepare.prepare_data(sys.argv[2], sys.argv[3], int(sys.argv[4]), 0.1)
mark("end")
"""


def stage_usage(*args):
    """Run PREPARE_STAGES with args: {stage: (wall seconds, CPU seconds of its processes, the peak of their resident
    bytes summed, sampled every 0.1 s)}. Workers end within their stage, so the script's CPU time includes theirs."""
    child = subprocess.Popen([sys.executable, "-c", PREPARE_STAGES, *args], stdout=subprocess.PIPE, text=True, cwd=HERE)
    marks, samples, done = [], [], threading.Event()

    def tree_rss(pid):  # resident bytes of pid and its descendants
        try:
            with open(f"/proc/{pid}/statm") as f, open(f"/proc/{pid}/task/{pid}/children") as children:
                return (int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") +
                        sum(tree_rss(int(child)) for child in children.read().split()))
        except OSError:  # it has ended
            return 0

    def cpu_seconds():  # of the script and the workers it has waited for
        with open(f"/proc/{child.pid}/stat") as f:
            return sum(map(int, f.read().rsplit(")", 1)[1].split()[11:15])) / os.sysconf("SC_CLK_TCK")
    threading.Thread(target=lambda: [(samples.append((time.time(), tree_rss(child.pid))), time.sleep(0.1))
                                     for _ in iter(done.is_set, True)], daemon=True).start()
    for line in child.stdout:
        if line.startswith('["'):  # a stage begins; other output is left aside
            marks.append((json.loads(line)[0], time.time(), cpu_seconds()))
            samples.append((time.time(), tree_rss(child.pid)))
    done.set()
    if child.wait():
        sys.exit(f"the stages of {args} failed; see above")
    return {stage: (t1 - t0, cpu1 - cpu0, max((rss for t, rss in samples if t0 <= t <= t1), default=0))
            for (stage, t0, cpu0), (_, t1, cpu1) in zip(marks, marks[1:])}


def seconds_until(args, cwd, text):
    """Seconds from starting a script until it prints a line with text (then it is stopped)."""
    t0 = time.perf_counter()
    with subprocess.Popen([sys.executable, "-u", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as child:
        next(line for line in child.stdout if text in line)
        child.kill()
    return time.perf_counter() - t0


def quiet_timing(fn, max_others=0.05, tries=20):
    """Run fn() and time it; run it again while other processes took more than max_others of the machine's
    CPU meanwhile (they slow it down). Returns (seconds, what fn returned, number of runs thrown away)."""
    def cpu_busy_jiffies():  # (busy, total) of the whole machine since boot, or None without /proc/stat
        try:
            with open("/proc/stat") as f:
                user, nice, system, idle, iowait, irq, softirq = map(int, f.readline().split()[1:8])
        except OSError:
            return None
        return user + nice + system + irq + softirq, user + nice + system + idle + iowait + irq + softirq

    for attempt in range(tries + 1):
        before, own_before = cpu_busy_jiffies(), os.times()
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        after, own_after = cpu_busy_jiffies(), os.times()
        if before is None:
            return seconds, value, 0
        own = (own_after.user + own_after.system - own_before.user - own_before.system) * os.sysconf("SC_CLK_TCK")
        others = (after[0] - before[0] - own) / max(1, after[1] - before[1])
        if others <= max_others or attempt == tries:
            return seconds, value, attempt
        time.sleep(1.0)


def model_and_batch(config, batch_size, optimizer="adamw"):
    """Our model at config (seed 0), its optimizers and a batch of random tokens (x, y)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config)).train()
    optimizers = model.configure_optimizers(optimizer, 1e-3, 0.1, (0.9, 0.95), "cpu")
    x, y = (torch.randint(0, config["vocab_size"], (batch_size, config["max_seq_len"])) for _ in range(2))
    return model, optimizers, x, y


def training_step(model, optimizers, x, y, autocast=nullcontext(), loss_fn=lambda model, x, y: model(x, y)[1]):
    """A training step on fixed tokens as pretrain.py's (forward under autocast, backward, clip, step, zero_grad)."""
    def step():
        with autocast:
            loss = loss_fn(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def interleaved_ms(step_fns, repeats, steps, warmup=3):
    """{name: median ms per call} of step_fns, timed steps calls at a time in turn (so all see the same machine)."""
    for step in step_fns.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in step_fns}
    for _ in range(int(repeats)):
        for name, step in step_fns.items():
            times[name].append(quiet_timing(lambda: [step() for _ in range(steps)])[0] / steps * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def run_timed(args):
    """Run a script of this repository: (wall seconds, CPU seconds of the child, stdout); exit with its error."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), result.stdout


# pretrain.py as a user runs it, but with keep_freed_memory replaced by a no-op that leaves glibc's default
UNKEPT_PRETRAIN = """
import runpy, sys
import common
common.keep_freed_memory = lambda: False
sys.argv = ["pretrain.py", *sys.argv[1:]]
runpy.run_path("pretrain.py", run_name="__main__")
"""
# peak_rss's code for bench_memory, after `what = ...`: the nanoGPT CPU shape, then what to do with it
MEMORY_SCRIPT = """
import torch
from common import keep_freed_memory
from model import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_seq_len=64, dropout=0.0))
if what.startswith("train"):
    keep_freed_memory()  # as pretrain.py does on CPU
    (optimizer,) = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), "cpu")
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=what == "train-bf16")
    for _ in range(20):
        x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))
        with autocast:
            loss = model(x, y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
elif what == "sample":
    model.generate(torch.zeros(1, 1, dtype=torch.long), 500, top_k=50)
"""


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.csv")) as f:
        return list(csv.DictReader(f))


def training_seconds(log):
    """Each log row's clock less the evaluations (elapsed_s is read after each; the first row's is the first's)."""
    return [float(row["elapsed_s"]) - (k + 1) * float(log[0]["elapsed_s"]) for k, row in enumerate(log)]


def timed_runs(args, seconds, seeds, evaluations=1, eval_iters=200):
    """Run `pretrain.py config/small.py *args` (with --out_dir) once per seed, all for the steps that train for about
    `seconds`: the step count and each seed's (training seconds, final val_bpb_full as logged)."""
    out_dir = next(a.split("=", 1)[1] for a in args if a.startswith("--out_dir="))

    def train(iters, seed, eval_iters=eval_iters):
        run_timed(["pretrain.py", "config/small.py", *args, f"--max_iters={iters}",
                   f"--eval_interval={max(1, iters // evaluations)}", f"--eval_iters={eval_iters}", f"--seed={seed}"])
        return read_log(out_dir)

    # a 100-step probe gives a first count; long runs step more slowly than short ones, so the first seed's run is
    # repeated with the count rescaled whenever it trained more than 5% off the budget
    max_iters = int(seconds * 100 / training_seconds(train(100, seeds[0], eval_iters=1))[-1])
    logs = [train(max_iters, seeds[0])]
    if abs(training_seconds(logs[0])[-1] / seconds - 1) > 0.05:
        max_iters = int(max_iters * seconds / training_seconds(logs[0])[-1])
        logs = [train(max_iters, seeds[0])]
    logs += [train(max_iters, seed) for seed in seeds[1:]]
    return max_iters, [(training_seconds(log)[-1], log[-1]["val_bpb_full"]) for log in logs]


def split_bytes(out_dir):
    """A finished run's training and validation text as bytes: its splits' ids in its cache_dir, decoded."""
    tokenizer_path = os.path.join(out_dir, "tokenizer.json")
    with open(tokenizer_path, "rb") as f:
        tokenizer_sha = hashlib.sha256(f.read()).hexdigest()
    tokenizer = Tokenizer.load(tokenizer_path)
    cache_dir = os.path.join(HERE, load_checkpoint(os.path.join(out_dir, "ckpt.pt"))["config"]["cache_dir"])
    names = os.listdir(cache_dir)
    splits = []
    for split in ("train", "val"):
        name = next(n for n in names if f"-{tokenizer_sha[:12]}-{split}." in n and ".tmp" not in n)
        ids = np.fromfile(os.path.join(cache_dir, name), dtype=name.rsplit(".", 1)[1])  # .uint16 or .uint32
        splits.append(tokenizer.decode_bytes(ids.tolist()))
    return tuple(splits)


def xz_bits_per_byte(train, val):
    """What xz -9e spends on val when it has already seen train: the conditional size, in bits per byte of val."""
    size = lambda data: len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    return 8 * (size(train + val) - size(train)) / len(val)


def answer_rates(out_dir):
    """Shares of out_dir/answers.csv's greedy answers that parse as Python and define a function, and that pass."""
    with open(os.path.join(out_dir, "answers.csv"), newline="") as f:
        answers = list(csv.DictReader(f))
    return [statistics.mean(a[key] == "True" for a in answers) for key in ("parses", "passes")]


def parse_rate(pretrained_dir, seed):
    """answer_rates, as text, of a pretrained run fine-tuned with config/finetune_small.py."""
    with tempfile.TemporaryDirectory() as d:
        run_timed(["finetune.py", "config/finetune_small.py", f"--init_from={pretrained_dir}",
                   f"--out_dir={d}/finetune", f"--seed={seed}", "--answer_checks=True"])
        parses, passes = answer_rates(f"{d}/finetune")
    return f"{parses:.0%} (pass {passes:.0%})"


def dynamic_evaluation(model, ids, chunk=64, lr=0.003, embedding_lr=0.024, autocast=nullcontext()):
    """Nats the model spends on each token of ids after the first while it adapts as it reads, as in dynamic
    evaluation (Krause et al., 2018) and NNCP: score the next chunk of tokens in the max_seq_len window that ends
    with it, then take one SGD step on that window, every token of which is scored by then. The tied embedding has
    a rate of its own (the settings: NOTES.md, Held-out bits). (len(ids) - 1,) nats; the model is left as it was."""
    model = copy.deepcopy(model).eval()  # eval: no dropout; gradients still flow
    embedding = model.tok_emb.weight
    rest = [p for p in model.parameters() if p is not embedding]
    optimizer = torch.optim.SGD([{"params": rest}, {"params": [embedding], "lr": embedding_lr}], lr=lr)
    L, n = model.config.max_seq_len, len(ids) - 1
    nats = torch.empty(n)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        first = max(0, end - L)  # the window: inputs ids[first:end], targets ids[first + 1:end + 1]
        with autocast:
            logits = model(ids[None, first:end])[0]
        window_nats = F.cross_entropy(logits[0].float(), ids[first + 1:end + 1], reduction="none")
        nats[start:end] = window_nats[start - first:].detach()
        window_nats.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return nats


def windows_through_the_loss(model, ids, stride, autocast):
    """score_every_token's total nats another way, for a check: a window at a time through the model's own loss
    (HeadLoss), ignoring (-1) the targets an earlier window scored."""
    L, n, total, scored = model.config.max_seq_len, len(ids) - 1, 0.0, 0
    with torch.no_grad():
        for start in [*range(0, n - L, stride), max(0, n - L)]:
            x, y = ids[None, start:start + L], ids[None, start + 1:start + L + 1].clone()
            y[0, :scored - start] = -1
            with autocast:
                total += model(x, y)[1].item() * (y != -1).sum().item()
            scored = start + y.size(1)
    return total


def bench_tokenizer(data=DATA, runs=5):
    runs = int(runs)
    with open(data, encoding="utf-8", newline="") as f:
        text = f.read()
    mb = len(text.encode("utf-8")) / 1e6
    special = ["<|endoftext|>"]
    seconds = lambda times: [f"{t:.2f} s" for t in times]  # (wall, CPU) times
    rates = lambda times, digits=1: [f"{mb / t:.{digits}f} MB/s" for t in times]  # of the whole text
    ratios = lambda times, others: [f"{t / o:.2f}x" for t, o in zip(times, others)]
    rows = [("measure", "result (wall)", "CPU time", "goal")]
    for vocab_size in (1024, 4096, 16384):
        times = median_time(lambda _: Tokenizer.train(text, vocab_size, special), runs)
        rows.append((f"train, vocab {vocab_size}", *seconds(times), "<= 1.0 s" if vocab_size == 4096 else ""))
    try:  # HF tokenizers is not a requirement: with it installed, its Rust BPE trainer is the yardstick for training
        from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    except ImportError:
        rows.append(("HF tokenizers, train 4096 (pip install tokenizers to compare)", "not installed", "", ""))
    else:
        def train_hf(_):  # byte-level BPE, as ours, with HF's own GPT-2 split
            hf = HFTokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.train_from_iterator(text.splitlines(keepends=True), trainers.BpeTrainer(
                vocab_size=4096, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False))
        rows.append(("HF tokenizers (Rust, all cores), train 4096", *seconds(median_time(train_hf, runs)), ""))
    before, peak = peak_rss(f"from bpe import Tokenizer\ntext = open({data!r}, encoding='utf-8', newline='').read()\n"
                            f"Tokenizer.train(text, 4096, {special!r})")
    rows.append(("peak memory, train 4096 (VmHWM of a fresh process)", f"{peak / 1e6:.0f} MB",
                 f"({before / 1e6:.0f} MB is Python itself)", "< 300 MB"))
    tok = Tokenizer.train(text, 4096, special)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    rows.append(("bytes per token, vocab 4096", f"{mb * 1e6 / len(ids):.2f}", "", ""))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tokenizer.json")
        tok.save(path)
        t_load = median_time(lambda _: Tokenizer.load(path), runs)
        t_cold = median_time(lambda fresh: fresh.encode(text), runs, setup=lambda: Tokenizer.load(path))
        # ASCII text is split with an ASCII twin of the pattern; one non-ASCII character sends it all the general way
        t_uni = median_time(lambda fresh: fresh.encode(text + "é"), runs, setup=lambda: Tokenizer.load(path))
    t_warm = median_time(lambda _: tok.encode(text), runs)
    rows += [("encode, fresh tokenizer (cold cache), one process", *rates(t_cold), ">= 8 MB/s"),
             ("... the same text + one non-ASCII character", *rates(t_uni), ""),
             ("encode, warm cache", *rates(t_warm), ""),
             ("decode", *rates(median_time(lambda _: tok.decode(ids), runs), 0), ""),
             ("load tokenizer.json, vocab 4096", *[f"{t * 1e3:.0f} ms" for t in t_load], "")]
    try:  # tiktoken is not a requirement: with it installed, the same merges in Rust give a same-machine yardstick
        import tiktoken
    except ImportError:
        rows.append(("tiktoken, same merges (pip install tiktoken to compare)", "not installed", "", ""))
    else:
        token_bytes = [bytes([i]) for i in range(256)]
        for a, b in tok.merges:
            token_bytes.append(token_bytes[a] + token_bytes[b])
        # tiktoken keys ranks by bytes; where two merges spell the same bytes, the first one's rank is kept
        ranks = {t: i for i, t in reversed(list(enumerate(token_bytes)))}
        rust = tiktoken.Encoding("bench", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens={})
        same = rust.encode_ordinary(text) == ids
        t_rust = median_time(lambda _: rust.encode_ordinary(text), runs)
        # a warm encode does no BPE at all (split, look up, join), so its speed bounds what a cold one can reach
        rows += [(f"tiktoken {tiktoken.__version__}, same merges and pattern (ids {'equal' if same else 'DIFFER'})",
                  *rates(t_rust), ""), ("cold encode / tiktoken", *ratios(t_rust, t_cold), ""),
                 ("warm encode / tiktoken (a ceiling for cold)", *ratios(t_rust, t_warm), "")]
    print_table(f"tokenizer on {os.path.basename(data)} ({mb:.2f} MB), median of {runs} runs, Python "
                f"{sys.version.split()[0]}, {machine_load()}", rows)


def bench_prepare(data=None, vocab_size=32768, mb=320, rev="eeac0cc~"):
    """prepare.py's stages on a corpus (by default up to mb MB of this machine's Python source) with this code and
    commit rev's (by default the last before prepare.py read folders on every core): wall time, MB/s, CPU use (CPU
    time of all its processes / wall time), peak resident memory summed over them; pretrain.py config/small.py from
    a fresh cache to its first evaluation; HF tokenizers' trainer on the same training text; and from the rates
    measured, a 40 GB corpus on 32 cores."""
    from prepare import split_documents
    with tempfile.TemporaryDirectory() as d:
        if data is None:
            data, written = os.path.join(d, "python.txt"), 0
            with open(data, "w", encoding="utf-8") as out:
                for path in sorted(glob.glob(f"{sysconfig.get_paths()['stdlib']}/**/*.py", recursive=True)):
                    try:
                        with open(path, encoding="utf-8") as f:
                            text = f.read()
                    except (OSError, UnicodeDecodeError):
                        continue
                    if written + len(text.encode()) <= float(mb) * 1e6:
                        out.write(("<|endoftext|>" if written else "") + text)
                        written += len(text.encode()) + len("<|endoftext|>")
        code = {rev: os.path.join(d, "then"), "now": HERE}
        tar = subprocess.run(["git", "-C", HERE, "archive", rev], capture_output=True, check=True).stdout
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(code[rev])
        train_mb = split_documents([data], [os.path.getsize(data)], 0.1)[0][0][2] / 1e6
        stages = {label: stage_usage(code[label], data, os.path.join(d, label), str(vocab_size)) for label in code}
        first = {label: seconds_until(["pretrain.py", "config/small.py", f"--data_path={data}", "--max_iters=1",
                                       f"--vocab_size={vocab_size}", f"--cache_dir={d}/fresh-{label}",
                                       f"--out_dir={d}/out"], code[label], "iter 0:") for label in code}
        hf = importlib.util.find_spec("tokenizers") and stage_usage("hf", data, str(int(train_mb * 1e6)),
                                                                    str(vocab_size))["train"]
        data_mb = os.path.getsize(data) / 1e6
    size = {"split": data_mb, "count": train_mb, "merges": train_mb, "encode": data_mb}

    def cells(usage, mb_done):  # wall, MB/s, CPU use, peak RSS
        wall, cpu, rss = usage
        return f"{wall:.1f} s", f"{mb_done / wall:.1f}", f"{cpu / wall:.2f}", f"{rss / 1e6:.0f} MB"
    rows = [("stage", *[f"{label}: {what}" for label in code for what in ("wall", "MB/s", "CPU use", "peak RSS")])]
    rows += [(stage, *cells(stages[rev][stage], mb_done), *cells(stages["now"][stage], mb_done))
             for stage, mb_done in size.items()]
    rows.append((f"pretrain.py config/small.py to its first evaluation, from a fresh cache (now / {rev}: "
                 f"{first['now'] / first[rev]:.2f}x)", f"{first[rev]:.1f} s", *[""] * 3, f"{first['now']:.1f} s",
                 *[""] * 3))
    rows.append(("HF tokenizers' BpeTrainer (Rust), the same training text", *[""] * 4,
                 *(cells(hf, train_mb) if hf else ["not installed (pip install tokenizers)", *[""] * 3])))
    print_table(f"prepare.py on {data_mb:.0f} MB ({os.path.basename(data)}), vocabulary {vocab_size}; {machine_load()}",
                rows)
    # 40 GB on 32 cores at each stage's MB per CPU-second here: split and encoded in full, on 1 core then and 32 now
    # (31 for encoding then: cpu_count - 1); counted in full then, on 1, at most 2 GB now (tokenizer_max_bytes);
    # merges as measured, times the square root of the growth in text counted (distinct chunks: Heaps' law)
    for label, counted, cores in ((rev, 36e3, 1), ("now", 2e3, 32)):
        estimate = {stage: (counted if stage == "count" else 40e3) / size[stage] * stages[label][stage][1] /
                    (31 if label == rev and stage == "encode" else cores) for stage in ("split", "count", "encode")}
        estimate["merges"] = stages[label]["merges"][0] * (counted / train_mb) ** 0.5
        print(f"{label}: 40 GB on 32 cores in about {sum(estimate.values()) / 60:.0f} minutes (" +
              ", ".join(f"{stage} {seconds / 60:.1f}" for stage, seconds in estimate.items()) + ")")


def bench_train(repeats=5):
    # nanoGPT's own default is bias=False, so those rows are its shape exactly; bias=True is GPTConfig's default
    shapes = [("nanoGPT CPU shape", *NANOGPT_SHAPE, 10), ("  same, bias=True", SMALL, 12, 10),
              ("  same, dropout=0.1", {**SMALL, "dropout": 0.1}, 12, 10), ("wider", {**WIDER, "bias": False}, 8, 2),
              ("  same, bias=True", WIDER, 8, 2), ("config/small.py", *SMALL_PY_SHAPE, 10)]
    table = [("shape", "L/H/C/FF", "batch x ctx", "params", "ms/iter", "tokens/s", "peak GFLOP/s", "MFU", "dropped")]
    for name, config, batch_size, steps in shapes:
        model, optimizers, x, y = model_and_batch(config, batch_size)
        step = training_step(model, optimizers, x, y)
        for _ in range(3):
            step()  # warm-up: allocations, optimizer state, kernel selection
        times, peaks, dropped = [], [], 0
        for _ in range(int(repeats)):
            seconds, _, thrown = quiet_timing(lambda: [step() for _ in range(steps)])
            _, peak, thrown_peak = quiet_timing(lambda: measure_peak_flops("cpu", torch.float32))
            times.append(seconds / steps)
            peaks.append(peak)
            dropped += thrown + thrown_peak
        ms, peak, tokens = statistics.median(times) * 1e3, statistics.median(peaks), batch_size * config["max_seq_len"]
        mfu = statistics.median(model.flops_per_token() * tokens / t / p for t, p in zip(times, peaks))
        table.append((name, f"{config['n_layers']}/{config['n_heads']}/{config['d_model']}/{config['d_ff']}",
                      f"{batch_size} x {config['max_seq_len']}", f"{model.num_params() / 1e6:.2f}M", f"{ms:.1f}",
                      f"{tokens / (ms / 1e3):.0f}", f"{peak / 1e9:.0f}", f"{mfu:.1%}", dropped))
    print_table(f"training, fp32, {torch.get_num_threads()} threads; each repeat times its steps and measures the "
                f"matmul peak next to them; medians of {repeats} repeats", table)


def bench_nanogpt(path=os.path.join(HERE, "..", "nanoGPT"), repeats=15):
    """Our model against nanoGPT's (a clone of https://github.com/karpathy/nanoGPT at path: only its model.py is
    used), in the same step loop, at nanoGPT's CPU shape (bias=False, as its default), interleaved."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", os.path.join(path, "model.py"))
    if spec is None or not os.path.isfile(spec.origin):
        sys.exit(f"no model.py in {path}; clone nanoGPT there or give --path=FOLDER")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    torch.manual_seed(0)
    theirs = nanogpt.GPT(nanogpt.GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                                           bias=False)).train()
    # nanoGPT's own parameter groups, but with the fused AdamW that ours uses on CPU (nanoGPT fuses only on CUDA)
    params = [p for p in theirs.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.95), fused=True)
    x, y = torch.randint(0, 65, (12, 64)), torch.randint(0, 65, (12, 64))
    ms = interleaved_ms({
        "this project's model.py": training_step(*model_and_batch(*NANOGPT_SHAPE)),
        f"the same, bfloat16 autocast (dtype='auto' picks {pick_dtype('auto', 'cpu')} here)":
            training_step(*model_and_batch(*NANOGPT_SHAPE), torch.autocast("cpu", torch.bfloat16)),
        "nanoGPT's model.py": training_step(theirs, [optimizer], x, y)}, repeats, 20, warmup=10)
    baseline = ms["nanoGPT's model.py"]
    print_table(f"one training step at nanoGPT's CPU shape (4/4/128/512, 12 x 64, {torch.get_num_threads()} "
                f"threads), medians of {repeats} interleaved repeats of 20 steps",
                [("model", "ms/iter", "speed against nanoGPT")] +
                [(name, f"{ms[name]:.1f}", f"{baseline / ms[name]:.2f}x") for name in ms])


def bench_bf16(repeats=7):
    """float32 against bfloat16 autocast on CPU, interleaved: the matmul peak, and a training step at three shapes.
    bfloat16 pays only where the CPU multiplies it natively (AVX512-BF16 or AMX); elsewhere it is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
        native = ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "neither avx512_bf16 nor amx_bf16"
    except (OSError, StopIteration):
        native = "unknown (no /proc/cpuinfo)"
    dtypes = {"float32": (torch.float32, nullcontext()),
              "bfloat16": (torch.bfloat16, torch.autocast("cpu", torch.bfloat16))}
    peaks = {name: [] for name in dtypes}
    for _ in range(int(repeats)):
        for name, (dtype, _) in dtypes.items():
            peaks[name].append(quiet_timing(lambda: measure_peak_flops("cpu", dtype))[1] / 1e9)
    peak = {name: statistics.median(p) for name, p in peaks.items()}
    rows = [("measure", "float32", "bfloat16 autocast", "float32 time / bfloat16 time"),
            ("matmul peak, GFLOP/s", f"{peak['float32']:.0f}", f"{peak['bfloat16']:.0f}",
             f"{peak['bfloat16'] / peak['float32']:.2f}")]
    for name, config, batch_size, steps in [("nanoGPT CPU shape, ms/step", *NANOGPT_SHAPE, 10),
                                            ("config/small.py, ms/step", *SMALL_PY_SHAPE, 5),
                                            ("wider, ms/step", {**WIDER, "bias": False}, 8, 1)]:
        ms = interleaved_ms({n: training_step(*model_and_batch(config, batch_size), autocast)
                             for n, (_, autocast) in dtypes.items()}, repeats, steps)
        rows.append((name, f"{ms['float32']:.1f}", f"{ms['bfloat16']:.1f}", f"{ms['float32'] / ms['bfloat16']:.2f}"))
    print_table(f"float32 against bfloat16 autocast on CPU ({torch.get_num_threads()} threads; native bfloat16: "
                f"{native}), medians of {repeats} interleaved repeats", rows)


def bench_allocator(runs=3, iters=500, batch_size=8):
    """pretrain.py config/small.py for iters steps, with and without keep_freed_memory, alternating: wall time and
    system CPU time of the whole process (start-up, about 3 s, included)."""
    rows = [(f"pretrain.py config/small.py --max_iters={iters} --batch_size={batch_size}", "wall time",
             "system CPU time")]
    ways = [("glibc default", ["-c", UNKEPT_PRETRAIN]), ("keep_freed_memory (the default)", ["pretrain.py"])]
    with tempfile.TemporaryDirectory() as out_dir:
        args = ["config/small.py", f"--max_iters={iters}", "--eval_interval=100000", f"--out_dir={out_dir}",
                f"--batch_size={batch_size}"]
        run_timed(["pretrain.py", *args[:1], "--max_iters=1", *args[2:]])  # untimed: builds the corpus and caches
        results = {label: [] for label, _ in ways}
        for k in range(int(runs)):
            for label, script in ways[::-1] if k % 2 else ways:  # alternate which goes first
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
                wall, _, _ = run_timed([*script, *args])
                results[label].append((wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - before))
    for label, timings in results.items():
        wall, system = statistics.median(w for w, _ in timings), statistics.median(s for _, s in timings)
        rows.append((label, f"{wall:.1f} s", f"{system:.1f} s"))
    print_table(f"glibc's allocator during training: medians of {runs} alternating runs each; {machine_load()}", rows)


def bench_sample(new_tokens=500, repeats=3):
    """The wider shape, batch 1: a full 256-token prompt, then new_tokens more (the window slides, the cache refilled
    from the last 128 tokens); use_cache=False runs the same windows, nanoGPT's loop recomputes the last 256."""
    new_tokens, repeats = int(new_tokens), int(repeats)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**WIDER)).eval()
    L = model.config.max_seq_len
    prompt = torch.randint(0, WIDER["vocab_size"], (1, L))

    @torch.no_grad()
    def nanogpt_loop():
        idx = prompt
        for _ in range(new_tokens):
            logits = model(idx[:, -L:])[0][:, -1]
            idx = torch.cat((idx, torch.multinomial(torch.softmax(logits, dim=-1), 1)), dim=1)

    ways = [("KV cache (default)", lambda: model.generate(prompt, new_tokens, top_k=50)),
            ("use_cache=False", lambda: model.generate(prompt, new_tokens, top_k=50, use_cache=False)),
            (f"last {L}, no cache", nanogpt_loop)]
    rows, cached = [("method", "seconds", "tokens/s", "cache speed-up", "dropped")], None
    ways[0][1]()  # warm-up
    for name, run in ways:
        runs = [quiet_timing(run, tries=5) for _ in range(repeats)]
        seconds = statistics.median(t for t, _, _ in runs)
        cached = cached or seconds
        rows.append((name, f"{seconds:.2f}", f"{new_tokens / seconds:.1f}", f"{seconds / cached:.1f}x",
                     sum(d for _, _, d in runs)))
    print_table(f"sampling {new_tokens} tokens after a {L}-token prompt, batch 1, {WIDER['n_layers']}/"
                f"{WIDER['n_heads']}/{WIDER['d_model']}/{WIDER['d_ff']} context {L}, {torch.get_num_threads()} "
                f"threads; medians of {repeats} repeats", rows)


def bench_memory():
    rows = [("process", "peak RSS")]
    for what, label in (("import", "python + import torch + model only"), ("train", "train: 20 steps, batch 12 x 64"),
                        ("train-bf16", "the same under bfloat16 autocast"), ("sample", "sample: 500 tokens, KV cache")):
        rows.append((label, f"{peak_rss(f'what = {what!r}' + MEMORY_SCRIPT)[1] / 2**20:.0f} MiB"))
    print_table("peak resident memory (VmHWM) of a fresh process at the nanoGPT CPU shape", rows)


def bench_quality(data=DATA, seconds=75, seeds="1337,1,2", **overrides):
    """Validation bits per byte after a fixed training time at nanoGPT's CPU shape with config/small.py's other
    settings, against nanoGPT's 2.72 bits per character and xz on the same split."""
    seconds, seeds, options = float(seconds), seeds.split(","), [f"--{k}={v}" for k, v in overrides.items()]
    with tempfile.TemporaryDirectory() as d:
        max_iters, results = timed_runs([f"--data_path={data}", f"--cache_dir={d}/cache", f"--out_dir={d}/out",
                                         "--n_layers=4", "--n_heads=4", "--d_model=128", "--d_ff=512",
                                         "--max_seq_len=64", "--dropout=0.0", "--device=cpu", *options], seconds, seeds)
        xz = xz_bits_per_byte(*split_bytes(f"{d}/out"))
    rows = [("seed", "steps", "training time", "validation bits per byte")]
    rows += [(seed, max_iters, f"{trained:.0f} s", bpb) for seed, (trained, bpb) in zip(seeds, results)]
    bpb = statistics.median(float(bpb) for _, bpb in results)
    rows.append(("median", max_iters, "", f"{bpb:.3f} = {bpb / 2.72:.2f}x nanoGPT's 2.72 bits per character; "
                 f"xz: {xz:.3f}"))
    print_table(f"quality on {os.path.basename(data)}: {seconds:.0f} s of training at nanoGPT's CPU shape "
                f"({' '.join(options) or 'config/small.py otherwise'}); {machine_load()}", rows)


def bench_pretrain(seconds=180, optimizers="adamw,muon", seeds="1337,1,2", finetune="yes", **overrides):
    """The default run (with any other settings given) with each optimizer at equal training time, over seeds:
    held-out bits per byte against xz on the same split, and with finetune='yes' each run's parse_rate."""
    seconds, seeds, options = float(seconds), seeds.split(","), [f"--{k}={v}" for k, v in overrides.items()]
    rows = [("optimizer", "seed", "steps", "training time", "bits per byte", "xz", "ratio", "parse rate")]
    medians = []
    with tempfile.TemporaryDirectory() as d:
        for optimizer in optimizers.split(","):
            max_iters, results = timed_runs([f"--out_dir={d}/{optimizer}", f"--optimizer={optimizer}",
                                             "--device=cpu", *options], seconds, seeds, evaluations=10, eval_iters=60)
            if not medians:
                xz = xz_bits_per_byte(*split_bytes(f"{d}/{optimizer}"))
            for seed, (trained, bpb) in zip(seeds, results):
                bpb = float(bpb)
                rows.append((optimizer, seed, max_iters, f"{trained:.0f} s", f"{bpb:.3f}", f"{xz:.3f}",
                             f"{bpb / xz:.2f}", parse_rate(f"{d}/{optimizer}", seed) if finetune == "yes" else ""))
            medians.append((optimizer, statistics.median(float(bpb) for _, bpb in results)))
    rows += [(f"{optimizer}: median", "", "", "", f"{bpb:.3f}", f"{xz:.3f}", f"{bpb / xz:.2f}", "")
             for optimizer, bpb in medians]
    print_table(f"the default run{''.join(' ' + option for option in options)} at equal wall-clock ({seconds:.0f} s "
                f"of training), held-out bits per byte against xz -9e given the training split; {machine_load()}", rows)


def bench_plot(runs="out", out="assets/bpb.png"):
    """Held-out bits per byte of runs (pretrain.py's out_dirs) against training time, and xz -9e's on the first's."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("bench.py plot needs matplotlib, which the project itself does not use: pip install matplotlib")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for run in runs.split(","):
        log = read_log(os.path.join(HERE, run))
        checkpoint = torch.load(os.path.join(HERE, run, "ckpt.pt"), map_location="cpu", weights_only=True)
        train_s = training_seconds(log)
        line, = ax.plot(train_s[1:], [float(r["val_bpb"]) for r in log[1:]], marker=".",
                        label=f"{run}/: {checkpoint['optimizer_name']}, {checkpoint['iter_num']} steps (estimates)")
        if log[-1].get("val_bpb_full"):  # the end of a finished run: every held-out token once
            ax.plot(train_s[-1], float(log[-1]["val_bpb_full"]), marker="*", markersize=12, linestyle="none",
                    color=line.get_color(), label=f"every held-out token once: {float(log[-1]['val_bpb_full']):.2f}")
    xz = xz_bits_per_byte(*split_bytes(os.path.join(HERE, runs.split(",")[0])))
    ax.axhline(xz, color="black", linestyle="--", label=f"xz -9e, given the training text: {xz:.2f}")
    ax.set(xlabel="training time (s)", ylabel="held-out bits per byte", title="python pretrain.py config/small.py")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.join(HERE, out)), exist_ok=True)
    fig.savefig(os.path.join(HERE, out))
    print(f"wrote {out}; xz -9e given the training split: {xz:.3f} bits per byte of the validation split")


def bench_compress(runs="out"):
    """Held-out bits per byte of finished runs (comma-separated out_dirs) as compressors count them, each given the
    training text first: xz -9e, PPMd of order 24, the model as it is (score_every_token, stride max_seq_len // 2,
    and the same another way as a check) and the model adapting as it reads (dynamic_evaluation)."""
    try:
        import pyppmd
    except ImportError:
        pyppmd = None
        print("PPMd is left out: pip install pyppmd to compare with it")
    autocast = autocast_for("cpu", pick_dtype("auto", "cpu"))
    cells = lambda figures: [f"{x:.3f}" if x is not None else "-" for x in figures[:5]] + [f"{figures[5]:.0f} s"]
    rows, figures = [("run", "xz -9e", "PPMd", "static", "static, checked", "dynamic", "dynamic's time")], []
    for run in runs.split(","):
        train, val = split_bytes(os.path.join(HERE, run))
        bits = lambda nats: nats / math.log(2) / len(val)
        ppmd_size = lambda data: len(pyppmd.compress(data, max_order=24, mem_size=1 << 30))
        ppmd = 8 * (ppmd_size(train + val) - ppmd_size(train)) / len(val) if pyppmd else None
        checkpoint = load_checkpoint(os.path.join(HERE, run, "ckpt.pt"))
        model = GPT(GPTConfig(**checkpoint["model_config"]))
        model.load_state_dict(checkpoint["model"])
        tokenizer = Tokenizer.load(os.path.join(HERE, run, "tokenizer.json"))
        ids = torch.tensor([tokenizer.special_tokens[END]] + tokenizer.encode(val.decode("utf-8"), {END}))
        stride = model.config.max_seq_len // 2
        static = bits(score_every_token(model, ids, stride, autocast).sum().item())
        checked = bits(windows_through_the_loss(model, ids, stride, autocast))
        t0 = time.perf_counter()
        dynamic = bits(dynamic_evaluation(model, ids, autocast=autocast).sum().item())
        figures.append((xz_bits_per_byte(train, val), ppmd, static, checked, dynamic, time.perf_counter() - t0))
        rows.append((run, *cells(figures[-1])))
    if len(figures) > 1:
        rows.append(("median", *cells([None if None in f else statistics.median(f) for f in zip(*figures)])))
    print_table(f"held-out bits per byte, every token once, each given the training text first; {os.cpu_count()} "
                f"CPUs, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at the end", rows)


def bench_optimizer(repeats=5):
    """Each optimizer's step next to a whole training step of config/small.py, in float32 and, where native, under
    bfloat16 autocast (torch's Muon orthogonalises in bfloat16 whatever the dtype: 'auto' picks it only there)."""
    rows = [("optimizer", "dtype", "optimizer step", "whole training step", "share of the step")]
    for dtype in ["float32"] + (["bfloat16"] if pick_dtype("auto", "cpu") == "bfloat16" else []):
        autocast = autocast_for("cpu", dtype)
        for optimizer in ("adamw", "muon"):
            model, optimizers, x, y = model_and_batch(*SMALL_PY_SHAPE, optimizer)
            step = training_step(model, optimizers, x, y, autocast)  # as pretrain.py's: clipped, then zero_grad

            def backward():
                with autocast:
                    model(x, y)[1].backward()

            def update(_):
                for opt in optimizers:
                    opt.step()
                    opt.zero_grad(set_to_none=True)

            for _ in range(3):  # warm-up, and the optimizers' state exists from here on
                step()
            whole = median_time(lambda _: step(), int(repeats))[0]
            update_only = median_time(update, int(repeats), setup=backward)[0]
            rows.append((optimizer, dtype, f"{update_only * 1e3:.1f} ms", f"{whole * 1e3:.1f} ms",
                         f"{update_only / whole:.0%}"))
    print_table(f"optimizer steps on config/small.py's model, batch {_small['batch_size']}, "
                f"{torch.get_num_threads()} threads; medians of {repeats}", rows)


def bench_head(repeats=7):
    """A training step with model.py's HeadLoss against the plain F.cross_entropy(lm_head(x), targets), interleaved,
    in the dtype and with the optimizer that pretrain.py's 'auto' picks here."""
    dtype, optimizer = pick_dtype("auto", "cpu"), pick_optimizer("auto", "cpu")
    autocast = autocast_for("cpu", dtype)
    ways = {"plain": lambda model, x, y: F.cross_entropy(model.lm_head(model.hidden_states(x)).flatten(0, 1),
                                                          y.flatten()),
            "HeadLoss": lambda model, x, y: model(x, y)[1]}
    rows = [("shape", "vocabulary", "batch x context", "plain", "HeadLoss", "plain / HeadLoss")]
    shapes = [("nanoGPT CPU shape", *NANOGPT_SHAPE, 10), ("config/small.py", *SMALL_PY_SHAPE, 5),
              ("the quality run", {**CONFIG_SMALL, "max_seq_len": 64}, _small["batch_size"], 5)]
    for name, config, batch_size, steps in shapes:
        ms = interleaved_ms({way: training_step(*model_and_batch(config, batch_size, optimizer), autocast, loss_fn)
                             for way, loss_fn in ways.items()}, repeats, steps)
        rows.append((name, config["vocab_size"], f"{batch_size} x {config['max_seq_len']}", f"{ms['plain']:.1f} ms",
                     f"{ms['HeadLoss']:.1f} ms", f"{ms['plain'] / ms['HeadLoss']:.2f}x"))
    print_table(f"a training step with the plain head and loss against HeadLoss ({dtype}, {optimizer}, "
                f"{torch.get_num_threads()} threads), medians of {repeats} interleaved repeats", rows)


def bench_finetune(modes="weight,filter,condition,kto,dpo", seeds="1337,1,2", pretrain="auto",
                   config="config/finetune_small.py", init_from="out"):
    """Fine-tune the default pretrained run (out/, or init_from) in every rating_mode (settings after colons:
    condition:condition_contrast=0), once per seed (which also draws the held-out prompts): means over seeds of the
    held-out rating-5 and rating-1 response losses (a higher rating-1 loss: less likely to answer rudely or
    off-topic), the preference score and the time; medians (range) of answer_rates on the prompts with checks; the
    preference score per pair of ratings. pretrain='auto' runs pretrain.py first only if out/ckpt.pt is missing and
    init_from is the default; 'always' reruns and times it."""
    seeds, mean = seeds.split(","), statistics.mean
    rows = [("run", "rows learned", "rating-5 loss", "change", "rating-1 loss", "preference score",
             "parse rate", "pass rate", "wall time", "CPU time")]
    if pretrain == "always" or (init_from == "out" and not os.path.exists(os.path.join(HERE, "out", "ckpt.pt"))):
        wall, cpu, _ = run_timed(["pretrain.py", "config/small.py"])
        rows.append(("python pretrain.py config/small.py", *[""] * 7, f"{wall:.0f} s", f"{cpu:.0f} s"))
    else:
        rows.append((f"pretrained: the existing {init_from} (not timed)", *[""] * 9))
    before, after = {}, {}  # run -> each seed's preference per pair of ratings, before and after fine-tuning
    for run in modes.split(","):
        mode, *settings = run.split(":")
        options, out_dir, runs = [f"--{setting}" for setting in settings], f"out-finetune-{mode}", []
        for seed in seeds:
            wall, cpu, stdout = run_timed(["finetune.py", config, f"--rating_mode={mode}", f"--out_dir={out_dir}",
                                           f"--seed={seed}", f"--init_from={init_from}", "--answer_checks=True",
                                           *options])
            log = read_log(os.path.join(HERE, out_dir))
            learned = next(int(line.split(": ")[1].split()[0]) for line in stdout.splitlines()
                           if " rows for training" in line)
            parses, passes = answer_rates(os.path.join(HERE, out_dir))
            runs.append({"first": log[0], "last": log[-1], "wall": wall, "cpu": cpu, "learned": learned,
                         "parse": parses, "pass": passes})

        def avg(row, key):
            return mean(float(r[row][key]) for r in runs)

        def spread(values, spec):  # the range over seeds
            return f"({min(values):{spec}}-{max(values):{spec}})"
        r5_before, r5_after = avg("first", "val_loss_r5"), avg("last", "val_loss_r5")
        name = " ".join(["finetune.py", f"--rating_mode={mode}", *options])
        rows.append((name, f"{mean(r['learned'] for r in runs):.0f}",
                     f"{r5_before:.2f} -> {r5_after:.2f}", f"{r5_after / r5_before - 1:+.0%}",
                     f"{avg('first', 'val_loss_r1'):.2f} -> {avg('last', 'val_loss_r1'):.2f}",
                     f"{avg('first', 'pref_score'):.3f} -> {avg('last', 'pref_score'):.3f} "
                     + spread([float(r["last"]["pref_score"]) for r in runs], ".2f"),
                     *[f"{statistics.median(r[key] for r in runs):.0%} " + spread([r[key] for r in runs], ".0%")
                       for key in ("parse", "pass")],
                     f"{mean(r['wall'] for r in runs):.0f} s", f"{mean(r['cpu'] for r in runs):.0f} s"))
        pretrained = "pretrained, under the top rating token" if mode == "condition" else "pretrained"
        before.setdefault(pretrained, [r["first"]["pref_by_pair"] for r in runs])
        after[name] = [r["last"]["pref_by_pair"] for r in runs]
    print_table(f"fine-tuning on data/fine_tune_data.csv with {config}: held-out prompts, means over seeds {seeds} "
                f"(preference range in brackets), parse and pass rates as medians (range); {machine_load()}", rows)
    # which distinctions each mode learns: log.csv's pref_by_pair reads '5>4=0.810 5>3=1.000 ...'
    by_pair = {name: [dict(item.split("=") for item in log.split()) for log in logs]
               for name, logs in {**before, **after}.items()}
    pairs = sorted({pair for runs in by_pair.values() for run in runs for pair in run}, reverse=True)
    rows = [("run", *pairs)] + [(name, *[f"{mean(float(run[pair]) for run in runs if pair in run):.2f}"
                                         for pair in pairs]) for name, runs in by_pair.items()]
    print_table(f"preference score per pair of ratings (higher>lower), the same runs, means over seeds {seeds}", rows)


SECTIONS = {"tokenizer": bench_tokenizer, "prepare": bench_prepare, "train": bench_train, "nanogpt": bench_nanogpt,
            "bf16": bench_bf16, "allocator": bench_allocator, "sample": bench_sample, "memory": bench_memory,
            "quality": bench_quality, "pretrain": bench_pretrain, "plot": bench_plot, "finetune": bench_finetune,
            "optimizer": bench_optimizer, "head": bench_head, "compress": bench_compress}

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if not names or any(n not in SECTIONS for n in names):
        sys.exit(f"usage: python bench.py {{{','.join(SECTIONS)}}} [--name=value ...] (see the top of bench.py)")
    data = opts.get("data", DATA)
    if {"tokenizer", "quality"} & set(names) and not os.path.isfile(data):
        sys.exit(f"no text file at {data}; download {TINYSHAKESPEARE_URL} to it, or pass --data=PATH")
    # each section takes the options it has parameters for (all of them with **overrides); others are refused
    params = {name: inspect.signature(SECTIONS[name]).parameters for name in names}
    takes = {name: {o for o in opts if o in params[name] or any(p.kind is p.VAR_KEYWORD for p in params[name].values())}
             for name in names}
    if unknown := sorted(set(opts).difference(*takes.values())):
        sys.exit(f"no section named takes --{unknown[0]}; each section's options are its function's parameters")
    keep_freed_memory()  # as pretrain.py does on CPU, for every section alike
    for name in names:
        SECTIONS[name](**{o: opts[o] for o in takes[name]})
