"""
Text to token ids on disk, for pretrain.py: the corpus (a UTF-8 text file, an http(s) URL, or the default corpus
built from Python's own library), its split into a training and a validation text, a tokenizer trained on the
training text (bpe.py), and both splits encoded to files of token ids. Everything goes into cache_dir, named after
what it was made from, so that a second run finds it there.

    python prepare.py config/small.py                               # what `python pretrain.py config/small.py` uses
    python prepare.py config/gpt2_small.py --data_path=URL_OR_FILE  # before torchrun, so that no process waits on it

pretrain.py calls prepare_data for whatever is not cached yet, so running this first is never needed. It reads
the data settings of pretrain.py's config files and skips their other settings.
"""
import codecs
import hashlib
import os
import re
import sysconfig
import time
import urllib.request

from bpe import Tokenizer
from common import END, SPECIAL_TOKENS, file_sha256
from configurator import configure

# -----------------------------------------------------------------------------
# settings: pretrain.py's data settings, with its defaults
data_path = "data/data.txt"  # any UTF-8 text file or http(s) URL; the default is built from Python's own library
cache_dir = "data/cache"  # downloaded corpora, trained tokenizers and token ids, reused while unchanged
vocab_size = 1024  # 256 bytes + merges + special tokens
val_fraction = 0.1  # the last tenth of the corpus is held out
# -----------------------------------------------------------------------------


def check_data_settings(vocab_size, val_fraction):
    """One sentence for a vocab_size or val_fraction that cannot work, before any slow work."""
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


def fetch_corpus(path, cache_dir):
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


def split_corpus(text_path, cache_dir, val_fraction):
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
    window_start = max(0, mark - len(END))  # from a little before the mark, to see a separator across it
    with open(text_path, "rb") as f:
        f.seek(window_start)
        window = f.read(1 << 20)
    ends = (m.end() for m in re.finditer(rb"\n|" + re.escape(END.encode()), window) if window_start + m.end() > mark)
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


def prepare_tokens(text_paths, cache_dir, vocab_size):
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
            n_ids = tokenizer.encode_file(path, tmp, dtype=ids_dtype, num_workers=workers, allowed_special={END})
            os.replace(tmp, ids_paths[split])
            print(f"encoded the {split} split, {os.path.getsize(path) / 1e6:.1f} MB, to {n_ids:,} tokens in "
                  f"{time.time() - t0:.1f}s")
    return tokenizer, tokenizer_path, tokenizer_sha, ids_paths, ids_dtype


def prepare_data(data_path, cache_dir, vocab_size, val_fraction):
    """Make whatever of the corpus, its split, the tokenizer and the token ids is not in cache_dir yet. Returns a
    dict: text_paths and ids_paths ({'train': path, 'val': path}), ids_dtype ('uint16' or 'uint32'),
    tokenizer_path, tokenizer_sha256 and vocab_size (the tokenizer's)."""
    check_data_settings(vocab_size, val_fraction)
    text_path = fetch_corpus(data_path, cache_dir)
    try:
        text_paths = split_corpus(text_path, cache_dir, val_fraction)
        tokenizer, tokenizer_path, tokenizer_sha, ids_paths, ids_dtype = prepare_tokens(text_paths, cache_dir,
                                                                                        vocab_size)
    except ValueError as e:  # one-sentence errors from here and bpe.py, such as a file that is not UTF-8
        raise SystemExit(str(e))
    return {"text_paths": text_paths, "ids_paths": ids_paths, "ids_dtype": ids_dtype,
            "tokenizer_path": tokenizer_path, "tokenizer_sha256": tokenizer_sha, "vocab_size": tokenizer.vocab_size}


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    configure(globals(), json_sections=("model", "training"), skip_others=True)
    data = prepare_data(data_path, cache_dir, vocab_size, val_fraction)
    print(f"tokenizer of {data['vocab_size']} tokens: {data['tokenizer_path']}")
    for split in ("train", "val"):
        n_ids = os.path.getsize(data["ids_paths"][split]) // (2 if data["ids_dtype"] == "uint16" else 4)
        print(f"{split} split: {os.path.getsize(data['text_paths'][split]):,} bytes, {n_ids:,} tokens: "
              f"{data['ids_paths'][split]}")
    print(f"all in {cache_dir}; pretrain.py with the same data_path, cache_dir, vocab_size and val_fraction reuses it")
