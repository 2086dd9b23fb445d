"""
bench.py: speed and memory measurements, one section per command-line argument.

    python bench.py tokenizer [--data=PATH] [--runs=5]

Times are medians over --runs runs; MB means 10^6 bytes of UTF-8 text.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "shared", "data", "tinyshakespeare.txt")


def median_time(fn, runs, setup=None):
    """Median wall time and median CPU time of this process for fn(setup()) over runs calls; setup is
    not timed. CPU time shows what the wall time would be on a machine that nothing else is using."""
    wall, cpu = [], []
    for _ in range(runs):
        arg = setup() if setup else None
        t0, c0 = time.perf_counter(), time.process_time()
        fn(arg)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


# Run in a fresh process: peak() is its peak resident memory so far. On Linux this is VmHWM, since
# ru_maxrss also counts the memory of the parent that forked it; elsewhere it falls back to ru_maxrss.
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


def peak_rss_mb(code):
    """Peak resident memory, in MB, of a fresh Python process that runs code: (at start, at end)."""
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE + code + "\nprint(start, peak())", HERE],
                         capture_output=True, text=True, check=True).stdout.split()
    return [int(x) / 1e6 for x in out[-2:]]


def print_table(title, rows):
    widths = [max(len(str(r[k])) for r in rows) for k in range(len(rows[0]))]
    print(title)
    for k, row in enumerate(rows):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def bench_tokenizer(data=DATA, runs=5):
    sys.path.insert(0, HERE)
    from bpe import Tokenizer
    runs = int(runs)
    with open(data, encoding="utf-8", newline="") as f:
        text = f.read()
    mb = len(text.encode("utf-8")) / 1e6
    special = ["<|endoftext|>"]
    rows = [("measure", "result (wall)", "CPU time", "goal")]
    for vocab_size in (1024, 4096, 16384):
        t, c = median_time(lambda _: Tokenizer.train(text, vocab_size, special), runs)
        rows.append((f"train, vocab {vocab_size}", f"{t:.2f} s", f"{c:.2f} s", "<= 1.0 s" if vocab_size == 4096 else ""))
    before, peak = peak_rss_mb(f"from bpe import Tokenizer\ntext = open({data!r}, encoding='utf-8', newline='').read()\n"
                               f"Tokenizer.train(text, 4096, {special!r})")
    rows.append(("peak memory, train 4096 (VmHWM of a fresh process)", f"{peak:.0f} MB", f"({before:.0f} MB is Python itself)", "< 300 MB"))
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
    t_dec = median_time(lambda _: tok.decode(ids), runs)
    rows.append(("encode, fresh tokenizer (cold cache), one process", f"{mb / t_cold[0]:.1f} MB/s", f"{mb / t_cold[1]:.1f} MB/s", ">= 8 MB/s"))
    rows.append(("... the same text + one non-ASCII character", f"{mb / t_uni[0]:.1f} MB/s", f"{mb / t_uni[1]:.1f} MB/s", ""))
    rows.append(("encode, warm cache", f"{mb / t_warm[0]:.1f} MB/s", f"{mb / t_warm[1]:.1f} MB/s", ""))
    rows.append(("decode", f"{mb / t_dec[0]:.0f} MB/s", f"{mb / t_dec[1]:.0f} MB/s", ""))
    rows.append(("load tokenizer.json, vocab 4096", f"{t_load[0] * 1e3:.0f} ms", f"{t_load[1] * 1e3:.0f} ms", ""))
    print_table(f"tokenizer on {os.path.basename(data)} ({mb:.2f} MB), median of {runs} runs, Python {sys.version.split()[0]}, "
                f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end", rows)


def read_log(out_dir):
    import csv
    with open(os.path.join(out_dir, "log.csv")) as f:
        return list(csv.DictReader(f))


def bench_quality(data=DATA, seconds=75, vocab_size=512, learning_rate=3e-3, batch_size=12, **overrides):
    """Validation bits per byte after training pretrain.py for a fixed wall-clock at nanoGPT's CPU shape
    (4 layers, 4 heads, d_model 128, d_ff 512, context 64, dropout 0), with our BPE instead of characters.
    A short run measures the speed first; the real run gets as many iterations as fit in `seconds`."""
    seconds = float(seconds)
    with tempfile.TemporaryDirectory() as d:
        args = [f"--data_path={data}", f"--cache_dir={d}/cache", f"--out_dir={d}/out", f"--vocab_size={vocab_size}",
                "--n_layers=4", "--n_heads=4", "--d_model=128", "--d_ff=512", "--max_seq_len=64", "--dropout=0.0",
                f"--batch_size={batch_size}", f"--learning_rate={learning_rate}", "--device=cpu"]
        args += [f"--{k}={v}" for k, v in overrides.items() if k != "runs"]
        run = lambda *extra: subprocess.run([sys.executable, os.path.join(HERE, "pretrain.py"), *args, *extra],
                                            capture_output=True, text=True, check=True)
        run("--max_iters=60", "--eval_interval=1000", "--eval_iters=1", "--warmup_iters=10")
        tokens_per_sec = float(read_log(f"{d}/out")[-1]["tokens_per_sec"])
        max_iters = int(seconds * tokens_per_sec / (batch_size * 64))
        t0 = time.perf_counter()
        run(f"--max_iters={max_iters}", f"--eval_interval={max_iters}", "--eval_iters=200")
        wall = time.perf_counter() - t0
        final = read_log(f"{d}/out")[-1]
    bpb = float(final["val_bpb"])
    rows = [("setting", "value"), ("vocabulary", vocab_size), ("learning rate", learning_rate),
            ("batch size x context", f"{batch_size} x 64"), ("iterations", max_iters),
            ("training time (tokens/s from a 60-step probe)", f"{max_iters * batch_size * 64 / tokens_per_sec:.0f} s"),
            ("whole pretrain.py run (tokenizer, 2 evaluations)", f"{wall:.0f} s"),
            ("validation loss (nats/token)", final["val_loss"]), ("validation bits per byte", f"{bpb:.3f}"),
            ("vs nanoGPT's 2.72 bits/char in 75 s", f"{bpb / 2.72:.2f}x (goal <= 0.85x)")]
    print_table(f"quality on {os.path.basename(data)} for {seconds:.0f} s of training, {os.cpu_count()} CPUs, "
                f"load average {os.getloadavg()[0]:.1f} at the end", rows)


SECTIONS = {"tokenizer": bench_tokenizer, "quality": bench_quality}

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    if not names or any(n not in SECTIONS for n in names):
        sys.exit(f"usage: python bench.py {{{','.join(SECTIONS)}}} [--data=PATH] [--runs=5]")
    for name in names:
        SECTIONS[name](**opts)
