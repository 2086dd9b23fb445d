"""
Text to token ids on disk, for pretrain.py: the corpus (a UTF-8 text file, a folder or glob of them, an http(s) URL,
or the default corpus built from Python's own library), its split into training and validation text, a tokenizer
trained on the training text (bpe.py), and both splits encoded to files of token ids, on every core. Nothing is
copied: the splits are byte ranges of the corpus's files, each file read and hashed once (remembered by its path,
size and modification time). What is made goes into cache_dir, named after what it was made from, so that a second
run finds it there.

    python prepare.py config/small.py                                         # what pretrain.py config/small.py uses
    python prepare.py config/gpt2_small.py --data_path=FOLDER_OR_FILE_OR_URL  # ahead of a long torchrun, if you like

pretrain.py calls prepare_once for whatever is not cached yet, so running this first is never needed. Under torchrun
that happens before any process group exists: one process prepares and the others wait for its marker file, so that
none waits in a collective, whose timeout a long preparation would pass. This reads the data settings of
pretrain.py's config files and skips their other settings.
"""
import glob
import hashlib
import json
import os
import re
import socket
import stat
import sysconfig
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bpe import Tokenizer, decode_utf8
from configurator import configure

# -----------------------------------------------------------------------------
# settings: pretrain.py's data settings, with its defaults
# the corpus: a UTF-8 text file, a folder or glob of them, or an http(s) URL; the default is built from Python's library
data_path = "data/data.txt"
cache_dir = "data/cache"  # downloads, file hashes, tokenizers and token ids, reused while unchanged
vocab_size = 1024  # 256 bytes + merges + special tokens
val_fraction = 0.1  # the last tenth of the corpus is held out: the last files, where there are several
data_extensions = ".txt,.md,.py"  # the files of a folder that are documents ("" for all); a glob takes what it matches
skip_bad_files = False  # True: leave out files that are not UTF-8 text, naming each, instead of stopping
tokenizer_max_bytes = 2_000_000_000  # the tokenizer learns from at most about this much of the training text
# -----------------------------------------------------------------------------

# the special tokens every tokenizer reserves, named here for all the scripts: documents end with the first,
# fine-tuning's template uses the rest
PROMPT, RESPONSE, END = "<|prompt|>", "<|response|>", "<|endoftext|>"
SPECIAL_TOKENS = [END, PROMPT, RESPONSE] + [f"<|rating_{r}|>" for r in range(1, 6)]
HASH_PIECE = 16 << 20  # files are checked and hashed in pieces of this many bytes, a thread each
LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")  # of a torchrun


def check_data_settings(data_path, vocab_size, val_fraction):
    """One sentence for a data_path, vocab_size or val_fraction that cannot work, before any slow work."""
    if not data_path:
        raise SystemExit("data_path is empty; give the corpus with --data_path=FOLDER_OR_FILE_OR_URL")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise SystemExit(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + special tokens)")
    if not 0 < val_fraction < 1:
        raise SystemExit(f"val_fraction must be between 0 and 1, not {val_fraction}")


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
        f.write(END.join(documents))
    os.replace(tmp, path)
    print(f"built the default corpus {path} from {len(names)} modules in {lib_dir}")


def download(url, cache_dir):
    """The local copy of url in cache_dir, downloaded the first time."""
    # named after the whole URL, so that two URLs ending in the same file name never share a download
    name = os.path.basename(url.rstrip("/")) or "download.txt"
    local = os.path.join(cache_dir, f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}")
    if not os.path.exists(local):
        print(f"downloading {url} to {local}")
        tmp = f"{local}.tmp{os.getpid()}"  # per process, as for the other files in cache_dir
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as e:
            raise SystemExit(f"could not download data_path {url} ({e}); download it yourself and give the file")
        os.replace(tmp, local)
    return local


def walk_folder(folder, extensions, cache_dir):
    """The files under folder, at every level, whose names end in one of extensions (all, if there are none), in
    the sorted order of the names at each level; names that begin with '.' (.git) and cache_dir are left out.
    Symbolic links are followed, but no folder or file is taken twice, so a link loop ends where it closes."""
    seen, files = set(), []
    for path in (folder, cache_dir):
        if os.path.isdir(path):
            seen.add((os.stat(path).st_dev, os.stat(path).st_ino))

    def visit(path):
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except OSError as e:
            raise SystemExit(f"cannot read the folder {path} ({e.strerror}); give data_path a folder you can read")
        for entry in entries:
            try:
                info = entry.stat()  # of what a link points to
            except OSError:  # a broken link
                continue
            if entry.name.startswith(".") or (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            if stat.S_ISDIR(info.st_mode):
                visit(entry.path)
            elif stat.S_ISREG(info.st_mode) and (not extensions or entry.name.endswith(extensions)):
                files.append(entry.path)
    visit(folder)
    return files


def list_files(data_path, extensions, cache_dir):
    """The corpus's local files, in order, without reading them: data_path itself, the files of a folder, or those
    a glob matches (in sorted order, a folder among them read as a folder); [] if there are none (yet)."""
    if os.path.isdir(data_path):
        return walk_folder(data_path, extensions, cache_dir)
    if os.path.exists(data_path):
        return [data_path]
    matches = sorted(glob.glob(data_path, recursive=True))
    return [f for m in matches for f in (walk_folder(m, extensions, cache_dir) if os.path.isdir(m) else [m])]


def corpus_files(data_path, cache_dir, extensions):
    """list_files, after downloading a URL or building the default corpus, with a sentence if there are none."""
    if data_path.startswith(("http://", "https://")):
        return [download(data_path, cache_dir)]
    if data_path == "data/data.txt" and not os.path.exists(data_path):
        build_default_corpus(data_path)
    files = list_files(data_path, extensions, cache_dir)
    if files:
        return files
    if os.path.isdir(data_path):
        raise SystemExit(f"data_path {data_path} is a directory with no file ending in {' or '.join(extensions)} in "
                         f"it; give a folder of UTF-8 text files, set data_extensions, or give a file or URL")
    if glob.has_magic(data_path):
        raise SystemExit(f"data_path {data_path} matches no file; give a glob that matches UTF-8 text files")
    raise SystemExit(f"data_path {data_path} does not exist; give a UTF-8 text file, a folder of them or an "
                     f"http(s) URL")


def hash_pieces(path, size):
    """(path, start, end) byte ranges of HASH_PIECE bytes that cover a file, each starting at a character."""
    starts = [0]
    with open(path, "rb") as f:
        for start in range(HASH_PIECE, size, HASH_PIECE):
            f.seek(start)
            head = f.read(4)
            starts.append(start + next((i for i, b in enumerate(head) if b & 0xC0 != 0x80), 0))  # 0: not UTF-8
    return [(path, start, end) for start, end in zip(starts, starts[1:] + [size])]


def check_and_hash(piece):
    """(sha256, None) of a (path, start, end) byte range of a file that starts and ends at characters, or (None,
    the sentence saying that it is not UTF-8 text)."""
    path, start, end = piece
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        data.isascii() or decode_utf8(data, path)
    except ValueError as e:
        return None, str(e)
    return hashlib.sha256(data).hexdigest(), None


def hash_files(paths, cache_dir, skip_bad_files, workers):
    """The sha256 of each file, or None for one that is not UTF-8 text, read once: the hash is kept in
    cache_dir/hashes.json under the file's path, size and modification time, and found again until they change. Files
    are read in pieces of HASH_PIECE bytes by workers threads (hashlib lets go of the GIL), and a larger file is
    named by the sha256 of its pieces' sha256s. A file that is not UTF-8 text stops the run in one sentence that
    names it, with nothing written, or with skip_bad_files is named and left out."""
    record_path = os.path.join(cache_dir, "hashes.json")
    try:
        with open(record_path, encoding="utf-8") as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    stats = [os.stat(path) for path in paths]
    keys = [os.path.abspath(path) for path in paths]
    todo = [k for k, key in enumerate(keys) if known.get(key, [None])[:2] != [stats[k].st_size, stats[k].st_mtime_ns]]
    if todo:
        t0 = time.time()
        pieces = [hash_pieces(paths[k], stats[k].st_size) for k in todo]
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(check_and_hash, [piece for file_pieces in pieces for piece in file_pieces])
            for k, file_pieces in zip(todo, pieces):
                digests, errors = zip(*[next(results) for _ in file_pieces])
                error = next((e for e in errors if e), None)
                if error and not skip_bad_files:
                    pool.shutdown(cancel_futures=True)  # no reading on
                    raise SystemExit(error)
                if error:  # not kept, so checked again next time
                    print(f"left out: {error}")
                    continue
                if len(digests) > 1:  # a large file: the sha256 of its pieces' sha256s
                    digests = [hashlib.sha256("".join(digests).encode()).hexdigest()]
                known[keys[k]] = [stats[k].st_size, stats[k].st_mtime_ns, digests[0]]
        tmp = f"{record_path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(known, f)
        os.replace(tmp, record_path)
        print(f"checked and hashed {len(todo):,} file(s), {sum(stats[k].st_size for k in todo) / 1e6:.1f} MB, in "
              f"{time.time() - t0:.1f}s; the hashes are kept in {record_path}")
    return [known.get(key, [None] * 3)[2] for key in keys]


def split_documents(paths, sizes, val_fraction):
    """The training and validation text as lists of (path, start, end) byte ranges, each range a document. One file
    is cut where its last val_fraction of bytes begins, moved on to just after the next newline or <|endoftext|>.
    Several are held out whole: the last files whose bytes come closest to val_fraction of all, at least one on
    each side. The tokenizer then learns from the training text alone: merges learned from the held-out text would
    flatter its bits per byte (NOTES.md, Tokenizer)."""
    if len(paths) > 1:
        target, held_out, best = val_fraction * sum(sizes), 0, None
        for k in range(len(paths) - 1, 0, -1):
            held_out += sizes[k]
            if best is None or abs(held_out - target) < best[0]:
                best = (abs(held_out - target), k)
            if held_out >= target:
                break
        documents = [(path, 0, size) for path, size in zip(paths, sizes)]
        return documents[:best[1]], documents[best[1]:]
    path, size = paths[0], sizes[0]
    mark = int(size * (1 - val_fraction))
    window_start = max(0, mark - len(END))  # from a little before the mark, to see a separator across it
    with open(path, "rb") as f:
        f.seek(window_start)
        window = f.read(1 << 20)
    ends = (m.end() for m in re.finditer(rb"\n|" + re.escape(END.encode()), window) if window_start + m.end() > mark)
    # with neither in the next MiB, the first byte at the mark that starts a character
    cut = window_start + next(ends, next((i for i in range(mark - window_start, len(window))
                                          if window[i] & 0xC0 != 0x80), len(window)))
    return [(path, 0, cut)], [(path, cut, size)]


def text_bytes(ranges):
    """The bytes of the text that ranges make, <|endoftext|> between each two."""
    return sum(end - start for _, start, end in ranges) + len(END.encode()) * (len(ranges) - 1)


def prepare_tokens(splits, name, cache_dir, vocab_size, max_bytes, workers):
    """Train (or reuse) the tokenizer on the training text, and encode each split to a uint16/uint32 file of token
    ids, <|endoftext|> between documents. Returns the tokenizer, its path and hash, the ids' paths and their dtype."""
    capped = text_bytes(splits["train"]) > max_bytes  # then the name says so, as other text is learned from
    tokenizer_path = os.path.join(cache_dir, f"{name}-v{vocab_size}{f'-max{max_bytes}' if capped else ''}.json")
    if os.path.exists(tokenizer_path):
        tokenizer = Tokenizer.load(tokenizer_path)
    else:  # trained here, it knows the tokens of the chunks it learned from, so encoding starts warm
        t0 = time.time()
        tokenizer = Tokenizer.train_file(splits["train"], vocab_size, SPECIAL_TOKENS, num_workers=workers,
                                         max_bytes=max_bytes)
        tokenizer.save(tokenizer_path)
        print(f"trained a tokenizer of {tokenizer.vocab_size} tokens in {time.time() - t0:.1f}s on {workers} "
              f"processes{f', from about {max_bytes:,} bytes of the text' if capped else ''}: {tokenizer_path}")
    with open(tokenizer_path, "rb") as f:
        tokenizer_sha = hashlib.sha256(f.read()).hexdigest()
    ids_dtype = "uint16" if tokenizer.vocab_size <= 65536 else "uint32"
    ids_paths = {}
    for split, ranges in splits.items():
        ids_paths[split] = os.path.join(cache_dir, f"{name}-{tokenizer_sha[:12]}-{split}.{ids_dtype}")
        if not os.path.exists(ids_paths[split]):
            t0 = time.time()
            tmp = f"{ids_paths[split]}.tmp{os.getpid()}"  # per process: runs sharing cache_dir may encode at once
            n_ids = tokenizer.encode_file(ranges, tmp, dtype=ids_dtype, num_workers=workers, allowed_special={END},
                                          separator=END)
            os.replace(tmp, ids_paths[split])
            print(f"encoded the {split} split, {text_bytes(ranges) / 1e6:.1f} MB, to {n_ids:,} tokens in "
                  f"{time.time() - t0:.1f}s")
    return tokenizer, tokenizer_path, tokenizer_sha, ids_paths, ids_dtype


def prepare_data(data_path, cache_dir, vocab_size, val_fraction, extensions=data_extensions,
                 skip_bad_files=skip_bad_files, tokenizer_max_bytes=tokenizer_max_bytes, workers=None):
    """Make whatever of the tokenizer and the token ids is not in cache_dir yet, with workers processes (every core
    if None). Returns a dict: ranges (the documents of each split, {'train': [(path, start, end), ...], 'val':
    ...}), text_bytes and ids_paths ({'train': ..., 'val': ...}), ids_dtype ('uint16' or 'uint32'), tokenizer_path,
    tokenizer_sha256 and vocab_size (the tokenizer's)."""
    check_data_settings(data_path, vocab_size, val_fraction)
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    extensions = tuple(e.strip() for e in extensions.split(",") if e.strip())
    os.makedirs(cache_dir, exist_ok=True)
    paths = corpus_files(data_path, cache_dir, extensions)
    try:
        shas = hash_files(paths, cache_dir, skip_bad_files, workers)
        documents = [(path, os.path.getsize(path), sha) for path, sha in zip(paths, shas)
                     if sha and os.path.getsize(path)]  # an empty file is no document
        if not documents:
            what = ("a directory with no text in its files" if os.path.isdir(data_path) else
                    "an empty file" if len(paths) == 1 else "a glob that matches no text")
            raise SystemExit(f"data_path {data_path} is {what}; give UTF-8 text with some text in it")
        paths, sizes, shas = zip(*documents)
        splits = dict(zip(("train", "val"), split_documents(paths, sizes, val_fraction)))
        # named after the file, or the folder or glob, and a hash of the text
        one_file = os.path.isfile(data_path) or data_path.startswith(("http://", "https://"))
        stem = os.path.splitext(os.path.basename(paths[0] if one_file else data_path.rstrip("/")))[0]
        corpus_sha = shas[0] if len(shas) == 1 else hashlib.sha256("\n".join(shas).encode()).hexdigest()
        name = f"{re.sub(r'[^0-9A-Za-z_.-]+', '_', stem)}-{corpus_sha[:12]}-val{val_fraction}"
        tokenizer, tokenizer_path, tokenizer_sha, ids_paths, ids_dtype = prepare_tokens(
            splits, name, cache_dir, vocab_size, tokenizer_max_bytes, workers)
    except (ValueError, RuntimeError) as e:  # bpe.py's sentences: a file that is no longer UTF-8, a killed worker
        raise SystemExit(str(e))
    return {"ranges": splits, "text_bytes": {split: text_bytes(r) for split, r in splits.items()},
            "ids_paths": ids_paths, "ids_dtype": ids_dtype, "tokenizer_path": tokenizer_path,
            "tokenizer_sha256": tokenizer_sha, "vocab_size": tokenizer.vocab_size}


# -----------------------------------------------------------------------------
# under torchrun: one process prepares, the others wait on files in cache_dir, never in a collective


def source_stats(data_path, extensions, cache_dir):
    """What the corpus's files are now, without reading them: [[path, size, modification time], ...] ([[url]])."""
    if data_path.startswith(("http://", "https://")):
        return [[data_path]]  # downloaded once, never changed
    extensions = tuple(e.strip() for e in extensions.split(",") if e.strip())
    return [[path, os.stat(path).st_size, os.stat(path).st_mtime_ns]
            for path in list_files(data_path, extensions, cache_dir)]


def read_json(path):
    """The JSON in path, or None while it is missing or half-written."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, value):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)  # readers see all of it or nothing


def wait_for_data(marker, lock, data_path, extensions, cache_dir, poll_s=0.5):
    """Wait until marker names data made from data_path's files as they are now, and return it; stop in one
    sentence if the process preparing it (whose host and pid the lock file holds) fails, or, on this machine, ends."""
    seen = None
    while True:
        found = read_json(marker)
        if found is not None and found != seen:  # a new marker: compared with the files as they are now
            seen = found
            made = [found["data"]["tokenizer_path"], *found["data"]["ids_paths"].values()]
            if found["sources"] == source_stats(data_path, extensions, cache_dir) and all(map(os.path.exists, made)):
                return found["data"]
        state = read_json(lock) or {}
        if "error" in state:
            raise SystemExit(f"the process preparing the data stopped: {state['error']}")
        if state.get("host") == socket.gethostname():
            try:
                os.kill(state["pid"], 0)
            except ProcessLookupError:
                raise SystemExit(f"the process preparing the data (pid {state['pid']}) ended before it finished; "
                                 f"start again") from None
            except PermissionError:  # alive, as another user
                pass
        time.sleep(poll_s)


def prepare_once(data_path, cache_dir, vocab_size, val_fraction, extensions=data_extensions,
                 skip_bad_files=skip_bad_files, tokenizer_max_bytes=tokenizer_max_bytes, poll_s=0.5):
    """prepare_data, in a process of a torchrun launch too, to be called before its process group exists. The first
    process of the launch to create a lock file in cache_dir prepares (one per machine, or one in all where the
    machines share cache_dir) and leaves a marker naming what it made; the others wait for the marker, so that no
    process waits in a collective, whose timeout (NCCL's is 10 minutes) a long preparation would pass. The marker
    is named after the settings, and holds the files' sizes and modification times, so a stale one is never taken."""
    if "RANK" not in os.environ:
        return prepare_data(data_path, cache_dir, vocab_size, val_fraction, extensions, skip_bad_files,
                            tokenizer_max_bytes)
    check_data_settings(data_path, vocab_size, val_fraction)
    os.makedirs(cache_dir, exist_ok=True)
    where = data_path if data_path.startswith(("http://", "https://")) else os.path.abspath(data_path)
    settings = json.dumps([where, vocab_size, val_fraction, extensions, skip_bad_files, tokenizer_max_bytes])
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    launch = hashlib.sha256(" ".join(os.environ.get(v, "") for v in LAUNCH_VARIABLES).encode()).hexdigest()[:12]
    marker = os.path.join(cache_dir, f"prepared-{key}.json")
    lock = os.path.join(cache_dir, f"preparing-{key}-{launch}.json")
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return wait_for_data(marker, lock, data_path, extensions, cache_dir, poll_s)
    write_json(lock, {"host": socket.gethostname(), "pid": os.getpid()})
    for stale in glob.glob(os.path.join(glob.escape(cache_dir), f"preparing-{key}-*.json")):
        if "error" in (read_json(stale) or {}):  # the failure of an earlier launch, which has ended
            os.remove(stale)
    try:
        data = prepare_data(data_path, cache_dir, vocab_size, val_fraction, extensions, skip_bad_files,
                            tokenizer_max_bytes)
    except BaseException as e:  # the others stop with its sentence
        write_json(lock, {"error": str(e) if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"})
        raise
    write_json(marker, {"sources": source_stats(data_path, extensions, cache_dir), "data": data})
    os.remove(lock)
    return data


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    configure(globals(), json_sections=("model", "training"), skip_others=True)
    data = prepare_data(data_path, cache_dir, vocab_size, val_fraction, data_extensions, skip_bad_files,
                        tokenizer_max_bytes)
    print(f"tokenizer of {data['vocab_size']} tokens: {data['tokenizer_path']}")
    for split in ("train", "val"):
        n_ids = os.path.getsize(data["ids_paths"][split]) // (2 if data["ids_dtype"] == "uint16" else 4)
        print(f"{split} split: {len(data['ranges'][split]):,} file(s), {data['text_bytes'][split]:,} bytes, "
              f"{n_ids:,} tokens: {data['ids_paths'][split]}")
    print(f"all in {cache_dir}; pretrain.py with the same data settings reuses it")
