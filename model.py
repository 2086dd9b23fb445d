"""
A GPT language model, all of it in this one file, meant to be read from top to bottom:
GPTConfig -> TokenEmbedding -> SinusoidalPositions -> LayerNorm -> CausalSelfAttention -> MLP -> Block ->
HeadLoss -> sampling one token -> GPT, and last walk_through: `python model.py` takes a few bytes through
every component above and prints what each does. It imports only torch and the standard library; what the scripts
need around the model (device, dtype, checkpoints) is in common.py.

Shapes in comments: B batch, T sequence length, C = d_model, H heads, D = C // H head size, V vocabulary.
"""

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    d_model: int = 128       # width of the residual stream
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 512          # hidden width of the MLP, usually 4 * d_model
    max_seq_len: int = 64    # context length: the longest sequence the model sees
    dropout: float = 0.0     # 0 for short CPU runs (it costs time there); 0.1 against overfitting on small data
    bias: bool = True        # biases in Linear layers and LayerNorms, as in GPT-2
    attention: str = "sdpa"  # "sdpa": fused kernel, the default; "math": the explicit formula, same result

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            try:  # numpy and torch integers become plain ints, which a checkpoint loaded with weights_only can hold
                number = -1 if isinstance(value, bool) else operator.index(value)
            except TypeError:
                number = -1
            if number < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}.")
            setattr(self, name, number)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout!r}.")
        if self.attention not in ("sdpa", "math"):
            raise ValueError(f"attention must be 'sdpa' or 'math', not {self.attention!r}.")


class TokenEmbedding(nn.Module):
    """A learned table with one row of d_model numbers per token id; the output head reuses it (weight tying)."""

    def __init__(self, vocab_size, d_model):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))

    def forward(self, idx):  # (B, T) int64 -> (B, T, C)
        return F.embedding(idx, self.weight)  # row lookup, the same as one_hot(idx) @ weight but without the matmul


class SinusoidalPositions(nn.Module):
    """Fixed positional encoding of "Attention Is All You Need": position p, channel pair (2i, 2i+1) holds
    sin(p / 10000^(2i/C)) and cos(p / 10000^(2i/C)). Nothing is learned, so it is a buffer, not a parameter.

    It is added to token embeddings that start at std 0.02; at full amplitude (1) it would drown them and the
    model learns slowly, so forward() returns it times scale (0.1 learned best: NOTES.md, Model settings)."""

    def __init__(self, max_seq_len, d_model, scale=0.1):
        super().__init__()
        position = torch.arange(max_seq_len, dtype=torch.float32).unsqueeze(1)             # (L, 1)
        inv_freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (ceil(C/2),)
        table = torch.zeros(max_seq_len, d_model)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])  # an odd d_model has one cosine less
        # persistent=False: moves with .to(device) but stays out of state_dict, since it is rebuilt from the config
        self.register_buffer("table", table, persistent=False)
        self.scale = scale

    def forward(self, start, length):  # -> (length, C) for positions start .. start+length-1
        return self.scale * self.table[start:start + length]


class LayerNorm(nn.Module):
    """Normalise each vector to mean 0 and variance 1 over its C channels, then scale and shift (learned).
    forward() calls the fused F.layer_norm (one kernel instead of about eight, and much faster backward);
    reference() spells out the same formula and the tests check that the two agree."""

    def __init__(self, d_model, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def reference(self, x):
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)  # biased: divide by C, not C - 1
        y = (x - mean) / torch.sqrt(var + self.eps)           # eps inside the square root
        return y * self.weight + self.bias if self.bias is not None else y * self.weight


def causal_mask(t_q, t_k, device=None):
    """(t_q, t_k) bools, True where a query may look. The t_q queries are the last t_q of the t_k positions
    (with a KV cache the earlier keys are cached), so query i sits at position t_k - t_q + i and sees keys
    0 .. t_k - t_q + i: a lower triangle shifted right by t_k - t_q."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


class KVCache:
    """Keys and values of every layer for the tokens already processed, so that generating one more token
    only computes that token. Storage for max_seq_len positions is allocated on first use (in the dtype the
    layers produce), and positions 0 .. pos-1 are filled."""

    def __init__(self, n_layers, max_seq_len):
        self.keys, self.values = [None] * n_layers, [None] * n_layers
        self.max_seq_len, self.pos = max_seq_len, 0

    def update(self, layer, k, v):
        """Store k, v (B, H, T, D) at positions pos .. pos+T-1; return all keys and values so far (B, H, pos+T, D).
        GPT.forward advances pos once every layer has been through."""
        if self.keys[layer] is None:
            B, H, _, D = k.shape
            self.keys[layer] = k.new_empty(B, H, self.max_seq_len, D)
            self.values[layer] = v.new_empty(B, H, self.max_seq_len, D)
        end = self.pos + k.size(2)
        self.keys[layer][:, :, self.pos:end] = k
        self.values[layer][:, :, self.pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    """Every position mixes the values of itself and the positions before it, weighted by how well its query
    matches their keys; n_heads heads do this side by side on D = C / n_heads channels each."""

    def __init__(self, config, layer):
        super().__init__()
        self.n_heads, self.layer, self.dropout = config.n_heads, layer, config.dropout
        self.use_sdpa = config.attention == "sdpa"
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)  # q, k, v in one matmul
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)     # mixes the heads back
        self.attn_drop = nn.Dropout(config.dropout)   # only the math path uses it; sdpa takes dropout_p
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        # (B, T, 3C) -> (B, T, 3, H, D) -> three (B, H, T, D) views, no copies
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, T_k, D): the cached positions, then these T
        T_k = k.size(2)
        if self.use_sdpa:
            # is_causal assumes T_q == T_k (its triangle starts at the top left), so a cache needs the shifted mask;
            # a single new query may look at every cached key, so it needs none
            mask = None if T in (1, T_k) else causal_mask(T, T_k, x.device)
            args = dict(attn_mask=mask, is_causal=mask is None and T > 1,
                        dropout_p=self.dropout if self.training else 0.0)
            if q.dtype == torch.bfloat16 and q.device.type == "cpu":
                # torch's CPU attention kernel is much slower in bfloat16 than in float32 (NOTES.md, bfloat16 on
                # CPU), so it runs in float32, with autocast off, which would cast it back
                with torch.autocast("cpu", enabled=False):
                    y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **args).bfloat16()
            else:
                y = F.scaled_dot_product_attention(q, k, v, **args)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))             # (B, H, T, T_k) similarities
            att = att.masked_fill(~causal_mask(T, T_k, x.device), float("-inf"))  # no looking ahead
            att = self.attn_drop(F.softmax(att, dim=-1))                          # each row sums to 1
            y = att @ v                                                           # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: widen to d_ff, GELU, project back to d_model."""

    def __init__(self, config):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x):
        # the exact (erf) GELU; GPT-2's tanh approximation is slower on CPU (NOTES.md, Training speed)
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """One transformer layer, pre-LayerNorm: each sublayer reads a normalised copy of the residual stream
    and adds its result back, so the stream itself is never normalised and gradients flow straight through."""

    def __init__(self, config, layer):
        super().__init__()
        self.ln1 = LayerNorm(config.d_model, config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln2 = LayerNorm(config.d_model, config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class HeadLoss(torch.autograd.Function):
    """The tied head and the mean cross-entropy in one step, without keeping the logits. The plain way,
    F.cross_entropy(F.linear(x, weight), targets), writes the (N, V) logits, casts them to float32 and keeps their
    log-softmax for the backward pass: trips through memory far larger than the caches, a large share of a CPU step
    when V is thousands and d_model small. Here the logits are made once, in the dtype the matmul runs in, and a few
    rows at a time, while those rows are in cache, they become their own gradient: (softmax - one_hot(target)) / the
    number of targets counted. The backward pass's two matmuls then run at once and backward() only scales their
    results (NOTES.md, Training speed). Use it through GPT.forward."""

    @staticmethod
    def forward(ctx, x, weight, targets, grad_enabled):  # x (N, C), weight (V, C), targets (N,), -1 ignored -> mean
        # grad_enabled: torch.is_grad_enabled() at the call. Inside forward() grad mode is always off, and
        # ctx.needs_input_grad says only whether the inputs require grad, true under torch.no_grad() too
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        with torch.autocast(device_type, enabled=False):  # the dtypes here are set by hand
            x_, weight_ = x.to(dtype), weight.to(dtype)
            logits = x_ @ weight_.t()                                     # (N, V), overwritten by its gradient
            counted = targets != -1
            n_counted = counted.sum().clamp(min=1)
            index = targets.clamp(min=0).unsqueeze(1)                     # (N, 1), ignored rows point at id 0
            upcast = torch.promote_types(dtype, torch.float32)  # float32, or float64 where x is
            total = torch.zeros((), dtype=upcast, device=x.device)
            # on CPU about 1 MiB of float32 logits at a time, which stays in cache; a GPU takes all rows at once
            rows = max(1, 2**18 // weight.size(0)) if device_type == "cpu" else len(targets)
            needs_grad = grad_enabled and any(ctx.needs_input_grad)
            for i in range(0, len(targets), rows):
                logprobs = F.log_softmax(logits[i:i + rows].to(upcast), dim=-1)
                total -= (logprobs.gather(1, index[i:i + rows]).squeeze(1) * counted[i:i + rows]).sum()
                if needs_grad:
                    grad = logprobs.exp_().scatter_add_(1, index[i:i + rows], torch.full_like(logprobs[:, :1], -1.0))
                    logits[i:i + rows] = grad * (counted[i:i + rows].unsqueeze(1) / n_counted)
            if needs_grad:
                ctx.save_for_backward((logits @ weight_).to(x.dtype), (logits.t() @ x_).to(weight.dtype))
        return total / n_counted

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_loss, grad_weight * grad_loss, None, None


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None):
    """Draw one token id per row from logits (B, V) -> (B, 1). temperature 0 takes the most likely token;
    top_k keeps the k most likely (k is clamped to V); top_p keeps the smallest set of most likely tokens
    whose probabilities add up to at least top_p (the nucleus)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # the largest logit becomes 0 first, so that a tiny temperature gives -inf (never inf - inf = nan) elsewhere
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.size(-1):
        values, indices = torch.topk(logits, top_k, dim=-1)  # exactly k, even where logits tie
        logits = torch.full_like(logits, float("-inf")).scatter(-1, indices, values)
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the more likely tokens before it already reach top_p; the first one always stays
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return torch.multinomial(probs, num_samples=1)


class GPT(nn.Module):
    """Token embedding + positions -> n_layers Blocks -> final LayerNorm -> logits over the vocabulary."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_emb = TokenEmbedding(config.vocab_size, config.d_model)
        self.pos_enc = SinusoidalPositions(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, layer) for layer in range(config.n_layers)])
        self.ln_f = LayerNorm(config.d_model, config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # weight tying: the head scores a hidden vector against every token's embedding; one tensor, two uses
        self.lm_head.weight = self.tok_emb.weight

        # GPT-2 initialisation: N(0, 0.02) for matrices, zero biases; the projections that write into the
        # residual stream get 0.02 / sqrt(2 * n_layers), so the stream's variance stays put as layers add up
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * config.n_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def hidden_states(self, idx, cache=None):
        """(B, T) token ids -> (B, T, C) after the final LayerNorm. With a cache, idx continues the cached
        tokens, so its positions start at cache.pos."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"a sequence of {start + T} tokens is longer than max_seq_len={self.config.max_seq_len}; "
                             f"keep its last {self.config.max_seq_len} tokens.")
        x = self.drop(self.tok_emb(idx) + self.pos_enc(start, T))  # (B, T, C) + (T, C) broadcasts over B
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.pos += T
        return self.ln_f(x)

    def forward(self, idx, targets=None, cache=None):
        """Without targets: logits (B, T, V) for the token after each position, and None. With targets (B, T):
        None and the mean cross-entropy against them, where targets equal to -1 are ignored; the logits are
        never all kept then (HeadLoss)."""
        x = self.hidden_states(idx, cache)
        if targets is None:
            return self.lm_head(x), None
        return None, HeadLoss.apply(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1), torch.is_grad_enabled())

    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                        use_cache=True):
        """Continue idx (B, T) by up to max_new_tokens tokens, yielding each step's (B, 1) tokens as they come.

        The model sees at most max_seq_len tokens, always the last ones. Positions are absolute, so when the
        window slides every cached key is at the wrong position: the window then jumps to the last
        max_seq_len // 2 tokens and the cache is refilled from them in one pass (about one extra forward
        token per generated token). use_cache=False recomputes the same window at every step, so both give the
        same tokens under the same seed. With stop_token, a row that has produced it keeps repeating it, and
        generation ends once every row has. The model is in eval mode while this runs, then back as it was."""
        if idx.size(1) == 0:
            raise ValueError("idx must hold at least one token to continue from.")
        if not temperature >= 0 or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise ValueError("temperature must be >= 0, top_k >= 1 and top_p in (0, 1].")
        # the checks above run at the call; a generator's body would wait for the first next()
        return self._generate_steps(idx, max_new_tokens, temperature, top_k, top_p, stop_token, use_cache)

    @torch.no_grad()
    def _generate_steps(self, idx, max_new_tokens, temperature, top_k, top_p, stop_token, use_cache):
        L = self.config.max_seq_len
        keep = max(1, L // 2)
        was_training = self.training
        self.eval()
        try:
            tokens = idx
            start = max(0, idx.size(1) - L)  # the model's context is tokens[:, start:]
            cache = KVCache(self.config.n_layers, L) if use_cache else None
            cached_from = start              # the cache holds tokens[:, cached_from : cached_from + cache.pos]
            finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
            for _ in range(max_new_tokens):
                if tokens.size(1) - start > L:
                    start = tokens.size(1) - keep
                if cache is None:
                    x = self.hidden_states(tokens[:, start:])
                else:
                    if start != cached_from:  # the window slid: refill the cache from the new start
                        cache.pos, cached_from = 0, start
                    x = self.hidden_states(tokens[:, cached_from + cache.pos:], cache)  # only uncached tokens
                logits = self.lm_head(x[:, -1]).float()  # (B, V) for the next token only
                next_token = sample_next_token(logits, temperature, top_k, top_p)  # (B, 1)
                if stop_token is not None:
                    next_token = next_token.masked_fill(finished.unsqueeze(1), stop_token)
                    finished |= next_token.squeeze(1) == stop_token
                tokens = torch.cat((tokens, next_token), dim=1)
                yield next_token
                if stop_token is not None and finished.all():
                    break
        finally:
            self.train(was_training)

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_token=None,
                 use_cache=True):
        """idx (B, T) followed by the generated tokens, (B, T + n) with n <= max_new_tokens; see generate_stream."""
        steps = self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, stop_token, use_cache)
        return torch.cat([idx, *steps], dim=1)

    def num_params(self):
        """Number of learned numbers; the tied embedding counts once and the positional table is not learned."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token as nanoGPT counts them: 6 per parameter (2 forward, 4 backward) plus the
        attention scores and weighted sums, 12 * n_layers * max_seq_len * d_model."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layers * c.max_seq_len * c.d_model

    def configure_optimizers(self, optimizer, learning_rate, weight_decay, betas, device_type, muon_lr=0.02,
                             muon_momentum=0.95, muon_embedding_decay=None):
        """The optimizers to step together, as a list. Each param group keeps its own peak learning rate as
        'peak_lr', so that a schedule scales every group from its own base value.

        'adamw': AdamW for everything, with weight decay on matrices only (shrinking gains and biases towards 0
        regularises nothing useful).
        'muon': torch.optim.Muon for the weight matrices inside the blocks, AdamW as above for the rest: the tied
        embedding/head (a lookup table, whose rows should move independently, not as one orthogonalised matrix),
        the LayerNorm gains and the biases. Muon replaces each matrix's momentum by the nearest orthogonal matrix,
        so every direction of the update moves at the same rate; its lr is scaled by sqrt(max(1, rows / cols)).
        The blocks then learn so fast that the embedding's rows for rare tokens are what overfits, so there it
        decays by muon_embedding_decay (None: weight_decay)."""
        if optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', not {optimizer!r}.")
        embedding = self.tok_emb.weight
        matrices = [p for p in self.blocks.parameters() if p.requires_grad and p.dim() == 2 and optimizer == "muon"]
        taken = {id(p) for p in matrices + [embedding]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        embedding_decay = weight_decay if not matrices or muon_embedding_decay is None else muon_embedding_decay
        groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [embedding], "weight_decay": embedding_decay},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]  # with Muon, AdamW keeps no block matrix
        # fused: one kernel updates every tensor, several times faster than foreach on CPU (NOTES.md, Training speed)
        optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))]
        if matrices:
            optimizers.append(torch.optim.Muon(matrices, lr=muon_lr, momentum=muon_momentum, weight_decay=0.0,
                                               adjust_lr_fn="original"))
        for opt in optimizers:
            for group in opt.param_groups:
                group["peak_lr"] = group["lr"]
        return optimizers


def walk_through(config, text):
    """Print what each component does to the bytes of text, in this file's reading order (python model.py)."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    show = lambda t, fmt="+.3f": " ".join(f"{v:{fmt}}" for v in t.tolist())  # a row of numbers, aligned
    print(f"An untrained {config}\n")

    idx = torch.tensor([list(text.encode("utf-8"))])  # (1, T): bytes as made-up token ids, no tokenizer needed
    B, T = idx.shape
    emb = model.tok_emb(idx)
    print(f"TokenEmbedding: {text!r} as {T} ids {idx[0].tolist()}\n  ids {tuple(idx.shape)} -> embeddings "
          f"{tuple(emb.shape)}: one learned row of {config.d_model} numbers per id\n")

    print(f"SinusoidalPositions: a fixed ({config.max_seq_len}, {config.d_model}) table times {model.pos_enc.scale}; "
          f"channels 0-3 (sin, cos, sin, cos) of positions 0-3:")
    for p, row in enumerate(model.pos_enc(0, 4)[:, :4]):
        print(f"  position {p}: {show(row)}")

    x = emb + model.pos_enc(0, T)  # (B, T, C): what the first block reads
    ln = model.blocks[0].ln1
    print(f"\nLayerNorm (block 0's ln1) over the {config.d_model} channels of the first 4 positions:")
    for name, rows in (("before", x[0, :4]), ("after", ln(x)[0, :4])):
        print(f"  {name:<6}  mean {show(rows.mean(-1))}   variance {show(rows.var(-1, unbiased=False), '.3f')}")

    n = min(T, 6)
    print(f"\ncausal_mask({n}, {n}): row i is a query, column j a key; 1 where query i may look at key j")
    for row in causal_mask(n, n).int():
        print("  " + " ".join(map(str, row.tolist())))

    attn, H, D = model.blocks[0].attn, config.n_heads, config.d_model // config.n_heads
    q, k, v = attn.qkv(ln(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
    weights = F.softmax((q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~causal_mask(T, T), float("-inf")), -1)
    same = torch.allclose(attn.proj((weights @ v).transpose(1, 2).reshape(B, T, -1)), attn(ln(x)), atol=1e-6)
    print(f"\nCausalSelfAttention, block 0, head 0 of {H}: softmax(q kᵀ / √{D}) over the keys it may see, "
          f"first {n} positions\n(untrained, so nearly even over the past):")
    for row in weights[0, 0, :n, :n]:
        print("  " + show(row, ".2f"))
    print(f"  all {T} rows sum to 1: {torch.allclose(weights.sum(-1), torch.ones(1))}; "
          f"largest weight above the diagonal: {weights.triu(1).max().item():.1f}\n"
          f"  weights @ v, heads joined, through proj = CausalSelfAttention's output: {same}")

    mlp = model.blocks[0].mlp
    print(f"\nMLP: {tuple(x.shape)} -> fc -> {tuple(mlp.fc(x).shape)} -> GELU -> proj -> {tuple(mlp(x).shape)}")

    print("\nBlock: x = x + attn(ln1(x)), then x = x + mlp(ln2(x)); the residual stream keeps its shape:")
    print(f"  {'embeddings + positions':<22} {tuple(x.shape)}")
    for i, block in enumerate(model.blocks):
        x = block(x)
        print(f"  {f'after block {i}':<22} {tuple(x.shape)}")

    logits, targets = model(idx[:, :-1])[0], idx[:, 1:]  # each position predicts the next byte
    loss = model(idx[:, :-1], targets)[1]
    plain = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    print(f"\nGPT.forward: positions 0-{T - 2} predict bytes 1-{T - 1}: logits {tuple(logits.shape)}, a score for "
          f"each of the {config.vocab_size} ids at each position\n  loss {loss.item():.3f} (HeadLoss; from the "
          f"logits, F.cross_entropy gives {plain.item():.3f}); an untrained model guesses about evenly: "
          f"ln({config.vocab_size}) = {math.log(config.vocab_size):.3f}")

    parts = {"tok_emb (tied: also lm_head)": "tok_emb.", "attention": ".attn.", "MLP": ".mlp.",
             "LayerNorms in blocks": ".ln", "ln_f": "ln_f."}
    counts = dict.fromkeys(parts, 0)
    for name, p in model.named_parameters():  # a shared tensor is listed once, under its first name
        counts[next(part for part, key in parts.items() if key in name)] += p.numel()
    print("\nParameters (the positional table is a buffer, not learned):")
    for part, count in counts.items():
        print(f"  {part:<28} {count:>8,}")
    print(f"  {'total = GPT.num_params()':<28} {model.num_params():>8,}")


if __name__ == "__main__":
    walk_through(GPTConfig(vocab_size=256, d_model=32, n_heads=4, n_layers=2, d_ff=128, max_seq_len=16),
                 "hello, world")
