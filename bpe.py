"""
bpe.py: a byte-level BPE tokenizer (GPT-4 style) in one file, standard library only.

    tok = Tokenizer.train(text, vocab_size=4096, special_tokens=["<|endoftext|>"])
    ids = tok.encode(text)                 # special tokens only with allowed_special=...
    assert tok.decode(ids) == text
    tok.save("tokenizer.json"); tok = Tokenizer.load("tokenizer.json")

Command line: python bpe.py TEXT_FILE --vocab_size=4096 --out=tokenizer.json

Ids 0..255 are the bytes, merge i makes id 256 + i, special tokens come after every merge. Text is first cut into
chunks by a regex (letters, digits, punctuation, whitespace); merges never cross a chunk boundary. The file starts
with BPE in its plainest form, train_reference and encode_reference, then the fast Tokenizer that agrees with them.
"""

import array
import codecs
import json
import os
import pickle
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict, deque
from heapq import heapify, heappop, heappush
from itertools import chain, islice, repeat
from operator import add, itemgetter

# -----------------------------------------------------------------------------
# the split pattern: GPT-4's (cl100k), for Python's re, which has no \p{L} or \p{N}: [^\W\d_] is a letter, \d a
# digit, "[^\s\w]|_" anything else but whitespace, so every character lands in some chunk and none is dropped.
# Numerals that are not decimal digits (², ½, Ⅻ) are \w but not \d to re, so they count as letters here.

SPLIT_PATTERN = "|".join([
    r"'(?i:[sdmt]|ll|ve|re)",       # contractions: 's 'd 'm 't 'll 've 're, in any case
    r"[^\r\n\w]?[^\W\d_]+",         # a letter run with one optional space or punctuation mark before it,
    r"_[^\W\d_]+",                  # ... or an underscore (split out because _ is part of \w)
    r"\d{1,3}",                     # digits, in groups of at most three
    r" ?(?:[^\s\w]|_)+[\r\n]*",     # a punctuation run with an optional space before, newlines after
    r"\s*[\r\n]",                   # whitespace up to and including the last newline
    r"\s+(?!\S)",                   # whitespace, leaving the last space to the word that follows
    r"\s+",                         # whitespace at the end of the text
])


# -----------------------------------------------------------------------------
# the reference: BPE in its plainest form, in the spirit of minbpe. It recounts every pair of every chunk for each
# merge, so it is slow, but it is the definition: the fast Tokenizer further down must give exactly its merges and
# ids, and test_all.py checks that it does.


def count_pairs(ids, counts):
    """Count the adjacent pairs of ids into counts, (a, b) -> n, each as often as merge_pair would replace it:
    in [x, x, x, x] the pair (x, x) counts 2, not 3, as the middle one shares an x with the two that merge."""
    last = None  # the pair counted at the previous position
    for pair in zip(ids, ids[1:]):
        if pair == last:  # an (x, x) overlapping the (x, x) just counted: a merge takes only the first
            last = None
            continue
        counts[pair] = counts.get(pair, 0) + 1
        last = pair


def merge_pair(ids, pair, new_id):
    """ids with each occurrence of pair, scanning left to right, replaced by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _special_splitter(specials):
    """A regex that splits text at the given special tokens, keeping them (longest first wins)."""
    return re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True))) + ")")


def train_reference(text, vocab_size, special_tokens=(), pattern=SPLIT_PATTERN):
    """Tokenizer.train(...).merges, the plain way: cut the text into chunks of bytes, then until the vocabulary
    is full, count the pairs in all chunks and merge the most frequent one everywhere. Returns [(a, b), ...]."""
    pieces = _special_splitter(special_tokens).split(text)[::2] if special_tokens else [text]  # not the specials
    chunks = [list(chunk.encode("utf-8")) for piece in pieces for chunk in re.findall(pattern, piece)]
    merges = []
    while len(merges) < vocab_size - 256 - len(special_tokens):
        counts = {}
        for ids in chunks:
            count_pairs(ids, counts)
        if not counts:
            break  # every chunk is a single token
        pair = min(counts, key=lambda p: (-counts[p], p))  # the most frequent; ties go to the smallest (a, b)
        chunks = [merge_pair(ids, pair, 256 + len(merges)) for ids in chunks]
        merges.append(pair)
    return merges


def encode_chunk_reference(ids, ranks):
    """BPE on one chunk's ids: merge the pair of lowest rank (the earliest learned) until no pair has a rank.
    ranks: (a, b) -> r for merge r, which makes id 256 + r."""
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        ids = merge_pair(ids, pair, 256 + ranks[pair])
    return ids


def encode_reference(text, merges, pattern=SPLIT_PATTERN):
    """Tokenizer(merges, pattern=pattern).encode_ordinary(text), the plain way: BPE on each chunk's bytes."""
    ranks = {pair: r for r, pair in enumerate(merges)}
    chunks = [list(chunk.encode("utf-8")) for chunk in re.findall(pattern, text)]
    return [i for ids in chunks for i in encode_chunk_reference(ids, ranks)]


# -----------------------------------------------------------------------------
# the fast tokenizer. Inside, a token sequence is a str with one character per token (chr(id)), so that merging a
# pair everywhere in a chunk is one str.replace and counting it one str.count, both in C, and both scan left to
# right without overlap: in "aaaa" the pair "aa" counts 2, as merge_pair replaces 2.

# SPLIT_PATTERN for ASCII text, with \w \d \s and letters spelled out as ASCII classes, which re tests with a bitmap
# instead of Unicode lookups (a split almost twice as fast). On ASCII, Unicode \s is [\t-\r\x1c- ] (\x1c-\x1f are
# whitespace to Python). test_all.py checks that both patterns give the same chunks.
_ASCII_SPLIT_PATTERN = "|".join([
    r"'(?i:[sdmt]|ll|ve|re)",
    r"[^\r\n0-9A-Za-z_]?[A-Za-z]+",
    r"_[A-Za-z]+",
    r"[0-9]{1,3}",
    r" ?[^\t-\r\x1c- 0-9A-Za-z]+[\r\n]*",
    r"[\t-\r\x1c- ]*[\r\n]",
    r"[\t-\r\x1c- ]+(?![^\t-\r\x1c- ])",
    r"[\t-\r\x1c- ]+",
])

# Places where a chunk always ends, whatever comes next: a letter before a non-letter, a digit before a non-digit, a
# non-space before a space, a newline before a non-space. Nothing in the split pattern looks across them, so text
# cut there chunks exactly as the whole does. The greedy .* finds the last one.
_LAST_CUT = re.compile(r"(?s:.*)(?:[^\W\d_](?=[\W\d_])|\d(?=\D)|\S(?= )|\n(?=\S))")

FORMAT, VERSION = "bpe.py tokenizer", 1
MAX_VOCAB = 0x10FFFF  # ids are characters, and one character is kept back to be no token:
_NO_TOKEN = chr(MAX_VOCAB)  # it is larger than every token, and it separates chunks that are joined
_NO_TOKENS = repeat(_NO_TOKEN)  # an endless default for map(dict.get, keys, _NO_TOKENS)
_BULK_MERGES = 64  # see _encode_chunks
_U32 = next(c for c in "IL" if array.array(c).itemsize == 4)  # array typecode of a 32-bit id
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
# _PAIRS[n](w) is the tuple of the n - 1 adjacent pairs of a token string w of length n, cut by one C call (faster
# than slicing in Python: NOTES.md, Tokenizer); it takes at least 2 slices, as itemgetter of one returns no tuple.
_PAIRS = [itemgetter(*[slice(i, i + 2) for i in range(max(n - 1, 2))]) for n in range(64)]

# -----------------------------------------------------------------------------
# helpers


def decode_utf8(data, path, final=True):
    """data (from the file path) as text; with final=False, without a character cut off at its end."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(data, final)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot start or continue a "
                         f"character); convert it to UTF-8 first") from None


def _read_text(path, start, end):
    """The text of bytes start..end of a UTF-8 file."""
    with open(path, "rb") as f:
        f.seek(start)
        return decode_utf8(f.read(end - start), path)


def _pieces(path, start, end, block_chars, specials=(), cuttable=True):
    """Yield (start, end) byte ranges of about block_chars bytes that cover bytes start..end of a UTF-8 file, each
    ending where _LAST_CUT finds a place, not inside a special token, so that each chunks as it does in the whole.
    The rule is made for SPLIT_PATTERN: with cuttable=False (another pattern) the range is one piece."""
    if block_chars < 1:
        raise ValueError(f"block_chars is {block_chars}; it must be at least 1")
    longest, target = max(map(len, specials), default=1), start + block_chars
    with open(path, "rb") as f:
        while cuttable and target < end:
            window_start = max(start, target - (1 << 16))  # the last 64 KiB before the target end
            f.seek(window_start)
            window = f.read(target - window_start)
            skip = next((i for i in range(min(4, len(window))) if window[i] & 0xC0 != 0x80), 0)  # inside a character
            text = decode_utf8(window[skip:], path, final=False)
            # the last place to cut that is longest - 1 characters from the end (what follows could end a special
            # token) and that no special token straddles, seen whole: the window starts at start, or that far before
            edge, cut = len(text) - longest + 1, 0
            while edge > 0 and (m := _LAST_CUT.match(text, 0, edge)):
                cut = m.end()
                if (window_start == start or cut >= longest) and not any(
                        s in text[max(0, cut - len(s) + 1):cut + len(s) - 1] for s in specials):
                    break
                edge, cut = cut - 1, 0
            if cut:
                cut = window_start + skip + len(text[:cut].encode("utf-8"))
                yield start, cut
                start, target = cut, cut + block_chars
            else:
                target += block_chars  # no place to cut: the piece grows
    yield start, end


def _ranges(source):  # a file, or a list of (path, start, end) byte ranges of files, as such a list
    return [(source, 0, os.path.getsize(source))] if isinstance(source, (str, os.PathLike)) else list(source)


def _batches(ranges, block_chars, specials, cuttable):
    """The pieces of all ranges in lists of about block_chars bytes, a task each: [(path, start, end, first), ...],
    first telling whether a piece starts a range other than the first."""
    batch, size = [], 0
    for k, (path, start, end) in enumerate(ranges):
        for a, b in _pieces(path, start, end, block_chars, specials, cuttable):
            batch.append((path, a, b, k > 0 and a == start))
            size += b - a
            if size >= block_chars:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _compile(pattern):
    try:
        split = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise ValueError(f"the split pattern does not compile ({e})") from None
    if split.groups:  # findall would return the groups' text instead of the chunks
        raise ValueError(f"the split pattern has {split.groups} capturing group(s); write each as (?:...)")
    return split


def _chunks(split, text):
    """split.findall(text). A pattern other than ours is checked to match every character: what it skipped would
    be lost from the encoding without a word."""
    chunks = split.findall(text)
    if split.pattern not in (SPLIT_PATTERN, _ASCII_SPLIT_PATTERN) and sum(map(len, chunks)) != len(text):
        raise ValueError(f"the split pattern matches only {sum(map(len, chunks))} of the {len(text)} characters of "
                         f"the text; it must match every character (ending it with |[\\s\\S] would)")
    return chunks


def _unique(special_tokens):
    if isinstance(special_tokens, str):  # list("<s>") would make three special tokens of one character each
        raise ValueError(f"special_tokens is the string {special_tokens!r}, not a list of strings")
    if isinstance(special_tokens, (set, frozenset)):  # ids are given in order, and a set's order changes by run
        raise ValueError("special_tokens is a set, whose order (and so the ids) differs from run to run; give a list")
    special_tokens = list(special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens {special_tokens} contain a duplicate")
    return special_tokens


def _training_specials(vocab_size, special_tokens):
    """Check train()'s arguments before the counting starts; return the special tokens as a list."""
    special_tokens = _unique(special_tokens)
    for s in special_tokens:
        if not (isinstance(s, str) and s):
            raise ValueError(f"special token {s!r} is not a non-empty string")
    if type(vocab_size) is not int or not 256 + len(special_tokens) <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} must be between {256 + len(special_tokens)} (bytes and special tokens) and {MAX_VOCAB}")
    return special_tokens


def map_in_order(function, tasks, num_workers, shared=None):
    """Yield function(task, shared) (a function of this file) for each task, in order: here if num_workers <= 1,
    else in num_workers fresh interpreters of this file alone (not multiprocessing, whose 'fork' can hang on a lock
    that numpy's or torch's threads held, and whose 'spawn' imports the caller's script, torch and all)."""
    if num_workers <= 1:
        yield from (function(task, shared) for task in tasks)
        return
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                                     f"import bpe; bpe._serve()"]
    workers = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
               for _ in range(num_workers)]  # their own process group: Ctrl-C is for the parent, which ends them
    messages = chain([pickle.dumps(shared)] * num_workers,  # pickled once, as it may hold a large cache
                     (pickle.dumps((function.__name__, task)) for task in tasks))
    pending = deque()  # the workers, in the order of the tasks they hold
    try:
        for k, message in enumerate(chain(messages, [None] * 2 * num_workers)):  # then None, to collect the rest
            if message is not None:
                worker = workers[k % num_workers]  # in turn: each task goes to the worker that answered last
                worker.stdin.write(message)
                worker.stdin.flush()
                pending.extend([worker] if k >= num_workers else [])
            if pending and (message is None or len(pending) >= 2 * num_workers):
                done, result = pickle.load(pending.popleft().stdout)
                if not done:
                    raise result  # the worker's exception, such as a ValueError for a file that is not UTF-8
                yield result
    except (EOFError, BrokenPipeError):  # a worker has ended without answering
        raise RuntimeError(f"a worker process ended before it answered (exit codes {[w.poll() for w in workers]}; -9 "
                           f"is a kill, often for lack of memory); free some memory or use fewer workers") from None
    finally:  # done, or stopped by an error: the workers end
        for worker in workers:
            worker.kill()
            worker.wait()


def _serve():
    """map_in_order's worker: answers each (function name, task) with (True, result) or (False, error)."""
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    try:
        shared = pickle.load(requests)
        for name, task in iter(lambda: pickle.load(requests), None):  # until EOFError
            try:
                reply = (True, globals()[name](task, shared))
            except Exception as e:
                reply = (False, e)
            pickle.dump(reply, replies)
            replies.flush()
    except (EOFError, BrokenPipeError):  # the parent has gone
        return


def _count_chunks(texts, special_tokens, pattern):
    """Chunk -> count in texts, leaving out the special tokens."""
    split, counts = _compile(pattern), Counter()
    ascii_split = re.compile(_ASCII_SPLIT_PATTERN) if pattern == SPLIT_PATTERN else split
    for text in texts:
        for piece in _special_splitter(special_tokens).split(text)[::2] if special_tokens else [text]:
            counts.update(_chunks(ascii_split if piece.isascii() else split, piece))  # isascii() is O(1)
    return counts


def _count_batch(batch, shared):
    """(chunk -> count, bytes read) in a batch's pieces: shared is (special tokens, pattern)."""
    return _count_chunks((_read_text(p, s, e) for p, s, e, _ in batch), *shared), sum(e - s for _, s, e, _ in batch)


def _encode_batch(batch, shared):
    """A batch's ids as little-endian bytes (codec: 'utf-16-le' or 'utf-32-le' turns token characters into them), the
    separator's token character (if not "") before each piece that starts a range."""
    tokenizer, allowed_special, codec, separator = shared
    tokens = [(separator if first else "") + tokenizer._tokens(_read_text(path, start, end), allowed_special)
              for path, start, end, first in batch]
    return "".join(tokens).encode(codec, "surrogatepass")


# -----------------------------------------------------------------------------
# the tokenizer


class Tokenizer:

    def __init__(self, merges=(), special_tokens=(), pattern=SPLIT_PATTERN, cache_size=1 << 20, *, _trained=False):
        """merges: (a, b) id pairs in rank order; special_tokens: strings (ids given in order after the
        merges) or a dict string -> id; pattern: the split regex; cache_size: how many chunks' encodings
        to keep before starting over. Raises ValueError if these are inconsistent."""
        self._split, self.pattern = _compile(pattern), pattern
        self._ascii_split = re.compile(_ASCII_SPLIT_PATTERN) if pattern == SPLIT_PATTERN else self._split
        vocab = [bytes([i]) for i in range(256)]  # id -> bytes
        self._merges = []
        self._rank = {}   # pair as 2 characters -> the token character it merges into
        self._pair = {}   # the reverse: token character -> pair
        for i, pair in enumerate(merges):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and 256 + i < MAX_VOCAB
                    and all(type(x) is int and 0 <= x < 256 + i for x in pair)):
                raise ValueError(f"merge {i} is {pair!r}, not a pair of ids below {256 + i} (the ids that exist before it)")
            a, b = pair
            p, t = chr(a) + chr(b), chr(256 + i)
            if p in self._rank:
                raise ValueError(f"merge {i} repeats merge {ord(self._rank[p]) - 256}, the pair ({a}, {b})")
            self._merges.append((a, b))
            self._rank[p], self._pair[t] = t, p
            vocab.append(vocab[a] + vocab[b])
        n = len(vocab)
        if not isinstance(special_tokens, dict):
            special_tokens = _unique(special_tokens)
            special_tokens = dict(zip(special_tokens, range(n, n + len(special_tokens))))
        ids = list(special_tokens.values())
        if not all(type(i) is int for i in ids) or sorted(ids) != list(range(n, n + len(ids))) or n + len(ids) > MAX_VOCAB:
            raise ValueError(f"special token ids {ids} are not {n}, {n + 1}, ...: the ids right after the {n - 256} merges, once each")
        for s in special_tokens:
            if not (isinstance(s, str) and s and s.encode("utf-8", "replace").decode("utf-8") == s):
                raise ValueError(f"special token {s!r} is not a non-empty string that UTF-8 can encode")
        self._special = dict(special_tokens)
        self._vocab = dict(enumerate(vocab))  # a dict, so that a negative id is an error, not the last token
        self._vocab.update((i, s.encode("utf-8")) for s, i in self._special.items())
        self._splitters = {}  # frozenset of allowed specials -> regex that splits text at them
        self._cache = {}      # chunk -> its tokens, as a str of token characters
        self.cache_size = cache_size
        # Fast path: a chunk whose bytes are one token is that token, as long as BPE on those bytes really ends
        # there. Every token learned by train() does: the pair it merged was found inside a chunk, and no merge
        # before it crossed the pair's edges there. A merge list from elsewhere need not, so it is checked.
        words = [vocab[i].decode("latin-1") for i in range(256, n)]
        ends = map(chr, range(256, n)) if _trained else self._bpe(words)
        self._whole = {w: e for w, e in zip(words, ends) if len(e) == 1}  # token bytes as latin-1 -> token

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, special_tokens={self._special})"

    @property
    def merges(self):
        """The (a, b) pairs in rank order; merge i makes id 256 + i."""
        return list(self._merges)

    @property
    def special_tokens(self):
        """Special token string -> id."""
        return dict(self._special)

    @property
    def vocab_size(self):
        return 256 + len(self._merges) + len(self._special)

    # -------------------------------------------------------------------------
    # training

    @classmethod
    def train(cls, text, vocab_size, special_tokens=(), pattern=SPLIT_PATTERN, progress=None):
        """Learn merges on text until the vocabulary, special tokens included, has vocab_size ids (or no
        pair is left). Occurrences of the special tokens in text are left out of the counts.
        progress, if given, is called as progress("merge", merges_done, merges_wanted)."""
        special_tokens = _training_specials(vocab_size, special_tokens)
        counts = _count_chunks([text], special_tokens, pattern)
        return cls._from_counts(counts, vocab_size, special_tokens, pattern, progress)

    @classmethod
    def train_file(cls, path, vocab_size, special_tokens=(), pattern=SPLIT_PATTERN, progress=None, block_chars=1 << 22,
                   num_workers=1, max_bytes=None):
        """train() on UTF-8 text of any size: a file, or a list of (path, start, end) byte ranges of files, each a text
        of its own (a corpus's documents). Chunks are counted block by block by num_workers processes; a block's counts
        are those it has in the whole, so their sum and the merges never depend on the number. With max_bytes, learn
        from every k-th block: about that many bytes, spread over the text. Also progress("count", done, to_do)."""
        special_tokens = _training_specials(vocab_size, special_tokens)
        _compile(pattern)  # a pattern that cannot work is found out before any reading
        ranges = _ranges(path)
        total = sum(end - start for _, start, end in ranges)
        every = max(1, -(-total // max_bytes)) if max_bytes else 1  # every k-th block, k = total / max_bytes rounded up
        batches = islice(_batches(ranges, min(block_chars, max_bytes or block_chars), special_tokens,
                                  pattern == SPLIT_PATTERN), 0, None, every)
        counts, done = Counter(), 0
        for batch_counts, n_bytes in map_in_order(_count_batch, batches, num_workers, (special_tokens, pattern)):
            counts.update(batch_counts)
            done += n_bytes
            if progress:
                progress("count", done, min(total, max_bytes or total))
        return cls._from_counts(counts, vocab_size, special_tokens, pattern, progress)

    @classmethod
    def _from_counts(cls, counts, vocab_size, special_tokens, pattern, progress):
        """Learn merges from chunk -> frequency. Each distinct chunk is a str of token characters; pair counts are kept
        in a dict, with an index pair -> chunks that contain it and a heap of (-count, pair) that holds each pair at its
        count or above, so a merge touches only the chunks it changes and the heap only the counts that rose."""
        n_merges = vocab_size - 256 - len(special_tokens)
        if progress:
            progress("merge", 0, n_merges)
        chunks = [chunk for chunk in counts if len(chunk.encode("utf-8")) > 1]
        words = [chunk.encode("utf-8").decode("latin-1") for chunk in chunks]  # one character per byte, chr(byte)
        freqs = [counts[chunk] for chunk in chunks]
        count, where = defaultdict(int), defaultdict(list)  # pair -> count; pair -> indices of words it has been in
        for i, (w, f) in enumerate(zip(words, freqs)):
            for p in set(map(add, w, w[1:])):
                count[p] += f * w.count(p)
                where[p].append(i)
        heap = [(-c, p) for p, c in count.items()]
        heapify(heap)
        merges = []
        while len(merges) < n_merges and heap:
            c, p = heappop(heap)
            if count.get(p) != -c:  # stale: a count that rose was pushed again; one that fell goes back in now
                if count.get(p):
                    heappush(heap, (-count[p], p))
                continue
            # Ties go to the smallest pair, as the heap orders (-count, pair) and chr keeps id order.
            t = chr(256 + len(merges))
            merges.append((ord(p[0]), ord(p[1])))
            a, b = p
            raised = set()
            for i in where.pop(p):
                w = words[i]
                if p not in w:
                    continue  # an earlier merge took this occurrence away
                new = words[i] = w.replace(p, t)
                # Only pairs beside a new token change: on its left (x, a) becomes (x, t), or (b, a) becomes (t, t)
                # where two new tokens touch; on its right (b, y) becomes (t, y). A pair of one character twice is
                # counted without overlaps, so its count depends on the whole run: those are recounted in both words.
                f, runs, j = freqs[i], set(), new.find(t)
                while j >= 0:
                    sides = []  # (the pair that is gone, the pair made in its place)
                    if j:
                        x = new[j - 1]
                        sides.append(((b if x == t else x) + a, x + t))
                    if j + 1 < len(new) and new[j + 1] != t:  # a new token on the right does this on its left
                        sides.append((b + new[j + 1], t + new[j + 1]))
                    for gone, made in sides:
                        if gone[0] == gone[1]:
                            runs.add(gone)
                        else:
                            count[gone] -= f
                        if made == t + t:
                            runs.add(made)
                        else:
                            count[made] += f
                            raised.add(made)
                            where[made].append(i)
                    j = new.find(t, j + 1)
                for q in runs:  # (t, t) can only rise; the others only fall, as their runs lose characters
                    d = new.count(q) - w.count(q)
                    count[q] += d * f
                    if d > 0:
                        raised.add(q)
                        where[q].append(i)
            del count[p]  # every occurrence is merged, and (a, b) can never form again
            for q in raised:
                heappush(heap, (-count[q], q))
            if progress and len(merges) % 64 == 0:
                progress("merge", len(merges), n_merges)
        if progress:
            progress("merge", len(merges), n_merges)
        tokenizer = cls(merges, special_tokens, pattern, _trained=True)
        # each word holds its chunk's tokens now (see _encode_chunks): the most frequent fill half the cache
        if len(words) > tokenizer.cache_size // 2:
            top = sorted(range(len(words)), key=freqs.__getitem__, reverse=True)[:tokenizer.cache_size // 2]
            chunks, words = [chunks[i] for i in top], [words[i] for i in top]
        tokenizer._cache.update(zip(chunks, words))
        return tokenizer

    # -------------------------------------------------------------------------
    # encoding and decoding

    def _bpe(self, words, done=1):
        """BPE on each token-character string in words: merge the lowest-ranked pair (the smallest token character,
        as ids grow with rank) until no pair has a rank or only `done` tokens are left. Returns the results."""
        rank, pair, pairs, no_token, no_tokens, out = self._rank.get, self._pair, _PAIRS, _NO_TOKEN, _NO_TOKENS, []
        for w in words:
            while (n := len(w)) > done:
                t = min(map(rank, pairs[n](w) if n < len(pairs) else map(add, w, w[1:]), no_tokens))
                if t is no_token:
                    break
                w = w.replace(pair[t], t)
            out.append(w)
        return out

    def _encode_chunks(self, chunks):
        """The tokens of each chunk, as strs of token characters. The first merges are needed by most chunks, so they
        are applied to all chunks at once, one str.replace each on the chunks joined (merges in rank order are the same
        as lowest-ranked-first, as a merge can only create pairs of a later rank); past _BULK_MERGES merges each chunk
        finishes alone (NOTES.md, Tokenizer). The fast path catches a chunk that is one token: the others stop at 2."""
        whole = self._whole
        words = [c if c.isascii() else c.encode("utf-8").decode("latin-1") for c in chunks]  # one character per byte
        joined = _NO_TOKEN.join(map(whole.get, words, words))  # fast path: a chunk that is one token
        for p, t in islice(self._rank.items(), _BULK_MERGES):
            joined = joined.replace(p, t)
        return self._bpe(joined.split(_NO_TOKEN), done=2)

    def _ordinary_tokens(self, text):
        """The tokens of text, special-token strings in it read as plain text, as a str of token characters."""
        chunks = _chunks(self._ascii_split if text.isascii() else self._split, text)  # isascii() is O(1)
        cache = self._cache
        new = set(chunks).difference(cache) if cache else set(chunks)  # iterated twice below, in the same order
        if len(cache) + len(new) > self.cache_size:
            cache.clear()  # keep memory bounded on huge corpora; a cold cache only costs time
            new = set(chunks)
        cache.update(zip(new, self._encode_chunks(new)))
        return "".join(map(cache.__getitem__, chunks))

    def _tokens(self, text, allowed_special):
        """The tokens of text as a str of token characters, the special tokens in allowed_special as theirs."""
        if not allowed_special:
            return self._ordinary_tokens(text)
        allowed = frozenset(allowed_special)
        splitter = self._splitters.get(allowed)
        if splitter is None:
            unknown = allowed.difference(self._special)
            if unknown:
                raise ValueError(f"allowed_special names {sorted(unknown)}, which are not special tokens of this tokenizer")
            splitter = self._splitters[allowed] = _special_splitter(allowed)
        parts = splitter.split(text)  # the special tokens it kept are the odd parts
        return "".join(chr(self._special[p]) if k % 2 else self._ordinary_tokens(p) for k, p in enumerate(parts))

    def encode_ordinary(self, text):
        """Encode text as plain text: special-token strings in it are ordinary characters."""
        return array.array(_U32, self._ordinary_tokens(text).encode(_UTF32, "surrogatepass")).tolist()  # ids, in C

    def encode(self, text, allowed_special=()):
        """Encode text to ids. Text that looks like a special token is plain text unless that token is
        in allowed_special (a set of strings, or "all"), so user text cannot inject control tokens."""
        if isinstance(allowed_special, str):
            if allowed_special != "all":
                raise ValueError(f'allowed_special is {allowed_special!r}, not a set of special tokens or "all"')
            allowed_special = self._special
        return array.array(_U32, self._tokens(text, allowed_special).encode(_UTF32, "surrogatepass")).tolist()

    def decode_bytes(self, ids):
        """Ids to the bytes they stand for (one id may be part of a UTF-8 character)."""
        if not isinstance(ids, (list, tuple)):  # an iterator is read once; a tensor or an array holds ids, not ints
            ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        try:
            return b"".join(map(self._vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self._vocab)
            raise ValueError(f"token id {bad!r} is not in this vocabulary of {self.vocab_size} ids") from None

    def decode(self, ids):
        """Ids to text; bytes that are not valid UTF-8 (from a partial sequence of ids) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_stream(self, ids):
        """Yield text as ids arrive, holding back the bytes of a character split across tokens until
        it is complete; the pieces join to decode(ids)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if hasattr(ids, "tolist"):  # a tensor or an array: its items would be 0-d tensors, not ints
            ids = ids.tolist()
        for i in ids:
            text = decoder.decode(self.decode_bytes((i,)))
            if text:
                yield text
        text = decoder.decode(b"", final=True)  # leftover bytes of an unfinished character
        if text:
            yield text

    # -------------------------------------------------------------------------
    # large files

    def encode_file(self, in_path, out_path, dtype="uint16", num_workers=1, allowed_special=(), block_chars=1 << 20,
                    separator=None):
        """Encode UTF-8 text of any size to raw little-endian ids (np.memmap reads them) block by block, by num_workers
        processes: encode(whole text)'s ids. in_path is a file, or a list of (path, start, end) byte ranges of files,
        each a text (a corpus's documents), separator (a special token) between them if given. Returns the id count."""
        bits = {"uint16": 16, "uint32": 32}.get(dtype)
        if bits is None:
            raise ValueError(f"dtype {dtype!r} is not 'uint16' or 'uint32'")
        if self.vocab_size > 1 << bits:
            raise ValueError(f"vocab_size {self.vocab_size} does not fit in {dtype}")
        if separator is not None and separator not in self._special:
            raise ValueError(f"separator {separator!r} is not a special token of this tokenizer")
        allowed = self._special if allowed_special == "all" else allowed_special
        ranges = _ranges(in_path)
        if os.path.exists(out_path) and any(os.path.exists(p) and os.path.samefile(p, out_path) for p, _, _ in ranges):
            raise ValueError(f"encode_file would overwrite its input {out_path}; give another out_path")
        batches = _batches(ranges, block_chars, allowed, self.pattern == SPLIT_PATTERN)
        shared = (self, allowed, f"utf-{bits}-le", "" if separator is None else chr(self._special[separator]))
        n = 0
        try:
            with open(out_path, "wb") as out:
                for ids in map_in_order(_encode_batch, batches, num_workers, shared):
                    n += out.write(ids)
        except BaseException:  # a bad file or Ctrl-C half way: leave no partial output that looks complete
            if os.path.exists(out_path):
                os.remove(out_path)
            raise
        return n * 8 // bits

    # -------------------------------------------------------------------------
    # saving and loading

    def save(self, path):
        """Write one human-readable JSON file: format, version, split pattern, special tokens, merges."""
        head = {"format": FORMAT, "version": VERSION, "pattern": self.pattern, "special_tokens": self._special}
        lines = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()]
        merges = ",\n".join(f"    [{a}, {b}]" for a, b in self._merges)
        text = "{\n" + "\n".join(lines) + '\n  "merges": [\n' + merges + "\n  ]\n}\n"
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)  # never leave a half-written tokenizer behind
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path):
        """Read a file written by save(). A missing, corrupt or inconsistent file raises
        FileNotFoundError or ValueError with one sentence that names the file."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"tokenizer file {path!r} does not exist") from None
        except OSError as e:  # a directory, no permission
            raise ValueError(f"tokenizer file {path!r} cannot be read ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"tokenizer file {path!r} is not valid JSON, perhaps truncated ({e})") from None
        keys = {"format", "version", "pattern", "special_tokens", "merges"}
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"tokenizer file {path!r} is not a {FORMAT} file (its \"format\" is not {FORMAT!r})")
        if data.get("version") != VERSION:
            raise ValueError(f"tokenizer file {path!r} has version {data.get('version')!r}, but this bpe.py reads version {VERSION}")
        if set(data) != keys:
            raise ValueError(f"tokenizer file {path!r} has fields {sorted(data)}, expected {sorted(keys)}")
        if not isinstance(data["merges"], list) or not isinstance(data["special_tokens"], dict):
            raise ValueError(f"tokenizer file {path!r} is inconsistent: merges must be a list and special_tokens an object")
        try:
            return cls(data["merges"], data["special_tokens"], data["pattern"])
        except ValueError as e:
            raise ValueError(f"tokenizer file {path!r} is inconsistent: {e}") from None


# -----------------------------------------------------------------------------
# command line: python bpe.py TEXT_FILE --vocab_size=4096 --out=tokenizer.json [--special=<|endoftext|>,...]

if __name__ == "__main__":
    args = sys.argv[1:]
    files = [a for a in args if not a.startswith("--")]
    opts = dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in args if a.startswith("--"))
    if len(files) != 1 or set(opts) - {"vocab_size", "out", "special"}:
        sys.exit("usage: python bpe.py TEXT_FILE [--vocab_size=4096] [--out=tokenizer.json] [--special=<|endoftext|>]\n"
                 "  --special takes a comma-separated list; --special= means none")
    path, out = files[0], opts.get("out", "tokenizer.json")
    if not opts.get("vocab_size", "4096").isdecimal():  # isdigit() would pass '²', which int() refuses
        sys.exit(f"--vocab_size must be a whole number, not {opts['vocab_size']!r}")
    vocab_size = int(opts.get("vocab_size", 4096))
    specials = [s for s in opts.get("special", "<|endoftext|>").split(",") if s]
    if os.path.isdir(path):
        sys.exit(f"{path} is a directory; give a UTF-8 text file")
    # found out now, not after the training
    if not out or out.endswith(("/", os.sep)) or os.path.isdir(out):
        sys.exit(f"--out={out} is not a file name; give the path of the JSON file to write")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        sys.exit(f"cannot save to {out}: the folder {os.path.dirname(os.path.abspath(out))} does not exist")
    if os.path.exists(out) and os.path.exists(path) and os.path.samefile(path, out):
        sys.exit(f"--out={out} is the text file to train on, which saving would overwrite; give another --out")
    try:
        from tqdm import tqdm
    except ImportError:  # no progress bars, then
        tqdm = None
    bars = {}  # stage -> its progress bar

    def progress(stage, done, total):
        if tqdm:
            bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=stage, mininterval=0.5,
                                                                 unit="B" if stage == "count" else " merges",
                                                                 unit_scale=stage == "count"))
            bar.update(done - bar.n)

    t0 = time.perf_counter()
    try:
        tok = Tokenizer.train_file(path, vocab_size, specials, progress=progress, num_workers=os.cpu_count())
    except ValueError as e:
        sys.exit(str(e))
    except OSError as e:
        sys.exit(f"cannot read {path} ({e.strerror})")
    seconds = time.perf_counter() - t0
    for bar in bars.values():
        bar.close()
    tok.save(out)
    with open(path, encoding="utf-8", newline="") as f:
        sample = f.read(10_000_000)  # bytes per token on the first 10M characters is plenty
    n_bytes, n_ids = len(sample.encode("utf-8")), len(tok.encode(sample))
    print(f"vocab_size {tok.vocab_size} ({len(tok.merges)} merges, {len(specials)} special), "
          f"{n_bytes / max(n_ids, 1):.2f} bytes per token{' (first 10M characters)' if len(sample) == 10_000_000 else ''}, "
          f"trained in {seconds:.2f} s, saved to {out}")
