"""
The project's specification, as tests: python -m pytest -q test_all.py (CPU, a few minutes on 2 cores; -k picks
a part, e.g. -k bpe or -k causal).

One section a file, in the order of the files themselves: model.py, bpe.py, prepare.py, pretrain.py, finetune.py,
sandbox.py, sample.py, export.py, configurator.py, common.py, bench.py. Every test is named
test_<file>_<behaviour> after the file it tests and checks one behaviour; a table of bad inputs is one parametrized
test. Helpers that several sections use come first; the others, and the fixtures that share a section's set-up (a
trained run, a fine-tuning folder), open the section that first needs them. The end-to-end tests run the scripts as
a user would, on tiny corpora and models. Speed and memory are measured in bench.py, never here.
"""
import array
import csv
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bpe import (SPLIT_PATTERN, Tokenizer, _LAST_CUT, _pieces, encode_chunk_reference, encode_reference,
                 train_reference)
from configurator import configure
import finetune
import sandbox
from common import (keep_freed_memory, load_checkpoint, measure_peak_flops, pick_device, pick_dtype, pick_optimizer,
                    save_checkpoint)
from model import GPT, GPTConfig, HeadLoss, KVCache, LayerNorm, SinusoidalPositions, causal_mask, sample_next_token

REPO = os.path.dirname(os.path.abspath(__file__))
NOT_AUTO_DTYPE = "float32" if pick_dtype("auto", "cpu") == "bfloat16" else "bfloat16"  # a dtype that is not the default here
SPECIAL_TOKENS = ["<|endoftext|>", "<|prompt|>", "<|response|>"] + [f"<|rating_{r}|>" for r in range(1, 6)]  # as pretrain.py trains them


# ---- used by several sections: the scripts run as a user runs them, a tiny corpus, a run's log and model ----

def run_script(script, args=(), check=True, timeout=300, **kwargs):
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                            cwd=REPO, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout}\n{result.stderr}")
    return result


def run_side_by_side(*commands, env=None):
    """Run commands (what follows `python`) at once, as independent runs need not wait for each other, and check each
    as run_script does; their results, in order."""
    children = [subprocess.Popen([sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=REPO, env=env) for command in commands]
    try:
        outputs = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            child.kill()
    for command, child, (stdout, stderr) in zip(commands, children, outputs):
        if child.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, command))} failed:\n{stdout}\n{stderr}")
    return [subprocess.CompletedProcess(child.args, child.returncode, out, err)
            for child, (out, err) in zip(children, outputs)]


RUN_MANY = """
import json, runpy, sys, torch
torch.set_num_threads(1)  # the same arithmetic in every run, so that equal settings give equal weights
script, runs = sys.argv[1], json.loads(sys.argv[2])
for args in runs:
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
"""


def in_one_process(script, *runs):
    """The command that runs script once per argument list, one run after another in one process: torch, and the
    compiler its optimizers import, load once rather than once a run, which is most of a tiny run's time."""
    return ["-c", RUN_MANY, os.path.join(REPO, script), json.dumps(runs)]


def run_script_many_times(script, runs):
    """Run script once per argument list in runs, half in each of two processes side by side."""
    run_side_by_side(in_one_process(script, *runs[0::2]), in_one_process(script, *runs[1::2]))


def make_corpus(path, n_words=12000, seed=0):
    """A small text with repeated structure, so a tiny model can learn something in seconds."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "café", "naïve", "日本"]
    lines = []
    while sum(len(line.split()) for line in lines) < n_words:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + ".")
    path.write_text("\n".join(lines), encoding="utf-8")


def tiny_args(run_dir, corpus, **overrides):
    """pretrain.py's settings for a tiny run in run_dir (its out/ and cache/) on corpus."""
    settings = dict(out_dir=run_dir / "out", data_path=corpus, cache_dir=run_dir / "cache", vocab_size=300,
                    d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=32, batch_size=8, max_iters=30,
                    eval_interval=10, eval_iters=4, warmup_iters=5, learning_rate=3e-3, device="cpu")
    settings.update(overrides)
    return [f"--{k}={v}" for k, v in settings.items()]


def read_log(out_dir):
    """A run's log.csv, one dict a row."""
    with open(os.path.join(out_dir, "log.csv")) as f:
        return list(csv.DictReader(f))


def libraries_loaded_alone(tmp_path, module, files):
    """Copy files of this repository alone into tmp_path, import module there in a fresh Python (an import error fails
    the test) and return which of the run-time libraries (torch, numpy, pandas, tqdm) that loaded."""
    for name in files:
        shutil.copy(os.path.join(REPO, name), tmp_path / name)
    code = f"import sys, {module}; print(sorted({{'torch', 'numpy', 'pandas', 'tqdm'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)


def load_model(path):
    """(the GPT that the checkpoint at path holds, in eval mode, the checkpoint); strict: every key must fit."""
    checkpoint = load_checkpoint(path)
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint


# ====================================================================================================
# model.py: the GPT
# ====================================================================================================

def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=16, dropout=0.0)
    return GPT(GPTConfig(**{**settings, **overrides})).eval()


def twin_with_attention(model, attention):
    """The same weights with the other attention path."""
    twin = GPT(dataclasses.replace(model.config, attention=attention)).eval()
    twin.load_state_dict(model.state_dict())
    return twin


# ---- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (dict(n_heads=5), "n_heads"),
    (dict(dropout=1.0), "dropout"),
    (dict(attention="flash"), "attention"),
    (dict(n_layers=0), "n_layers"),
    (dict(d_ff=64.0), "d_ff"),
    (dict(vocab_size=True), "vocab_size must be a positive integer, not True"),
], ids=["heads-not-dividing-d_model", "dropout-1", "unknown-attention", "no-layers", "float-d_ff", "bool-vocab_size"])
def test_model_config_refuses_a_setting_that_cannot_work_naming_it(bad, message):
    good = dict(vocab_size=50, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_seq_len=16)
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**good, **bad})


def test_model_config_takes_numpy_and_torch_integers_as_plain_ints():
    config = GPTConfig(vocab_size=np.int64(50), d_model=torch.tensor(32), n_heads=4)
    assert (type(config.vocab_size), type(config.d_model)) == (int, int)  # so checkpoints load with weights_only


def test_model_every_setting_has_an_effect():
    base = tiny_model()
    for name, value in (("vocab_size", 60), ("d_model", 48), ("n_layers", 3), ("d_ff", 96), ("bias", False)):
        assert tiny_model(**{name: value}).num_params() != base.num_params(), name
    idx = torch.randint(0, 50, (1, 16))
    assert not torch.allclose(tiny_model(n_heads=2)(idx)[0], base(idx)[0])  # same weights, other head split
    assert tiny_model(max_seq_len=8).pos_enc.table.shape[0] == 8
    assert not tiny_model(attention="math").blocks[0].attn.use_sdpa and base.blocks[0].attn.use_sdpa
    # dropout: see test_model_dropout_only_in_train_mode


# ---- positions, LayerNorm, attention -------------------------------------------------------------

def test_model_positional_encoding_is_fixed_sinusoid():
    model = tiny_model()
    assert all("pos_enc" not in name for name, _ in model.named_parameters())
    assert all("pos_enc" not in key for key in model.state_dict())
    table = SinusoidalPositions(16, 6).table
    for p in (0, 1, 7, 15):
        for i in range(3):
            angle = p / 10000 ** (2 * i / 6)
            assert math.isclose(table[p, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
            assert math.isclose(table[p, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)
    assert SinusoidalPositions(4, 5).table.shape == (4, 5)  # odd width works
    assert torch.equal(model.pos_enc(3, 5), model.pos_enc.scale * model.pos_enc.table[3:8])


def test_model_layernorm_matches_functional():
    torch.manual_seed(0)
    x = torch.randn(4, 7, 32) * 3 + 1
    for bias in (True, False):
        ln = LayerNorm(32, bias=bias)
        with torch.no_grad():
            ln.weight.normal_()
            if bias:
                ln.bias.normal_()
        expected = F.layer_norm(x, (32,), ln.weight, ln.bias, 1e-5)
        assert torch.allclose(ln(x), expected, atol=1e-5)
        assert torch.allclose(ln.reference(x), expected, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_model_causal_mask_future_tokens_do_not_change_past_logits(attention):
    model = tiny_model(attention=attention)
    idx = torch.randint(0, 50, (2, 16))
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 50, (2, 15 - t))
        a, b = model(idx)[0], model(changed)[0]
        assert torch.allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6)
        assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])  # the change does reach later positions


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_model_causal_mask_holds_through_the_kv_cache(attention):
    model = tiny_model(attention=attention)
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 9:] = torch.randint(0, 50, (2, 7))
    outputs = []
    for seq in (idx, changed):
        cache = KVCache(model.config.n_layers, model.config.max_seq_len)
        # chunks of 6, 3 (several new queries on top of cached keys: the shifted mask), then 1 at a time
        chunks = [seq[:, :6], seq[:, 6:9]] + [seq[:, i:i + 1] for i in range(9, 16)]
        outputs.append(torch.cat([model(chunk, cache=cache)[0] for chunk in chunks], dim=1))
        assert cache.pos == 16
        assert torch.allclose(outputs[-1], model(seq)[0], atol=1e-5)  # the cache changes nothing
    assert torch.allclose(outputs[0][:, :9], outputs[1][:, :9], atol=1e-6)


def test_model_causal_mask_holds_under_bfloat16_autocast():
    model = tiny_model()
    idx = torch.randint(0, 50, (2, 16))
    changed = idx.clone()
    changed[:, 6:] = torch.randint(0, 50, (2, 10))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :6], b[:, :6])
    assert not torch.equal(a[:, 6:], b[:, 6:])


def test_model_attention_paths_agree_with_and_without_cache():
    fast = tiny_model(attention="sdpa")
    slow = twin_with_attention(fast, "math")
    idx = torch.randint(0, 50, (3, 16))
    assert torch.allclose(fast(idx)[0], slow(idx)[0], atol=1e-5)
    caches = [KVCache(2, 16), KVCache(2, 16)]
    for chunk in (idx[:, :7], idx[:, 7:11], idx[:, 11:12], idx[:, 12:]):
        a, b = fast(chunk, cache=caches[0])[0], slow(chunk, cache=caches[1])[0]
        assert torch.allclose(a, b, atol=1e-5)


def test_model_attention_paths_agree_in_training_gradients():
    fast = tiny_model(attention="sdpa").train()
    slow = twin_with_attention(fast, "math").train()
    idx = torch.randint(0, 50, (2, 16))
    fast(idx, idx)[1].backward()
    slow(idx, idx)[1].backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_model_attention_paths_agree_in_bfloat16_on_cpu():
    # on CPU the fused path runs attention in float32 even under bfloat16 (it is faster there): under autocast, and
    # in a model cast to bfloat16 outright, it must still match the math path and hand bfloat16 on. A fresh model's
    # attention is nearly uniform, which would hide a wrong softmax scale, so the query and key weights are scaled up
    # until each late row puts several times a uniform share on its largest weight; the hidden states (normalised,
    # unlike the tiny logits of a fresh tied head) are compared
    fast = tiny_model(attention="sdpa")
    with torch.no_grad():
        for block in fast.blocks:
            block.attn.qkv.weight[:2 * 32] *= 12  # the q and k rows of the (3C, C) weight
    slow = twin_with_attention(fast, "math")
    idx = torch.randint(0, 50, (3, 16))
    x = fast.tok_emb(idx) + fast.pos_enc(0, 16)
    q, k, _ = fast.blocks[0].attn.qkv(fast.blocks[0].ln1(x)).view(3, 16, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-2, -1)) / math.sqrt(8)).masked_fill(~causal_mask(16, 16), float("-inf")).softmax(-1)
    assert weights[..., 8:, :].max(dim=-1).values.mean() > 3 / 12  # rows 8-15 see 9-16 positions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast.blocks[0].attn(x).dtype == torch.bfloat16
        a, b = fast.hidden_states(idx), slow.hidden_states(idx)
    assert torch.allclose(a, b, atol=0.05, rtol=0)
    a, b = fast.to(torch.bfloat16).hidden_states(idx), slow.to(torch.bfloat16).hidden_states(idx)
    assert a.dtype == torch.bfloat16 and torch.allclose(a.float(), b.float(), atol=0.05, rtol=0)


def test_model_dropout_only_in_train_mode():
    model = tiny_model(dropout=0.3)
    idx = torch.randint(0, 50, (2, 16))
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    no_dropout = tiny_model(dropout=0.0).train()
    assert torch.allclose(no_dropout(idx)[0], no_dropout(idx)[0], atol=1e-6)
    for attention in ("sdpa", "math"):  # both paths drop attention weights
        model = tiny_model(dropout=0.3, attention=attention).train()
        for block in model.blocks:
            block.attn.resid_drop.p = block.mlp.drop.p = 0.0
        model.drop.p = 0.0
        assert not torch.allclose(model(idx)[0], model(idx)[0])


# ---- the model: initialisation, the tied head, the loss ------------------------------------------

def test_model_gpt2_init():
    model = tiny_model(d_model=128, n_heads=4, d_ff=512, n_layers=8)
    residual_std = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.proj.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(model.blocks[3].mlp.proj.weight.std().item() - residual_std) < 0.1 * residual_std
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
    assert torch.all(model.blocks[0].attn.qkv.bias == 0) and torch.all(model.ln_f.weight == 1)


def test_model_weight_tying_survives_training():
    model = tiny_model().train()
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    (optimizer,) = model.configure_optimizers("adamw", 1e-2, 0.1, (0.9, 0.95), "cpu")
    before = model.tok_emb.weight.detach().clone()
    idx = torch.randint(0, 50, (2, 16))
    model(idx, idx)[1].backward()
    optimizer.step()
    assert not torch.equal(before, model.tok_emb.weight)
    assert torch.equal(model.lm_head.weight, model.tok_emb.weight)
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()
    state = model.state_dict()
    assert torch.equal(state["lm_head.weight"], state["tok_emb.weight"])


def test_model_forward_shapes_and_loss():
    assert not any(name.endswith("bias") for name, _ in tiny_model(bias=False).named_parameters())
    model = tiny_model()
    idx = torch.randint(0, 50, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 50) and loss is None
    targets = idx.clone()
    targets[:, :4] = -1  # ignored positions do not count in the mean
    no_logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 4:].reshape(-1, 50), idx[:, 4:].reshape(-1))
    assert no_logits is None and torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("autocast", [False, True], ids=["float64", "bfloat16-autocast"])
def test_model_head_loss_gives_the_plain_loss_and_gradients(autocast):
    """HeadLoss (the head and cross-entropy in chunks, the gradient made in the forward pass) against
    F.cross_entropy(F.linear(...)): the same loss and gradients, ignored targets included, in float64 and under
    bfloat16 autocast (where both round the logits' gradient to bfloat16 before the matmuls); and the same loss
    without gradients, where it skips their work. 1,000 rows at a vocabulary of 2,000 make several chunks."""
    torch.manual_seed(0)
    dtype = torch.float32 if autocast else torch.float64
    x, weight = torch.randn(1000, 16, dtype=dtype), torch.randn(2000, 16, dtype=dtype)
    targets = torch.randint(0, 2000, (1000,))
    targets[::7] = -1
    results = []
    for loss_fn in (lambda x, w: HeadLoss.apply(x, w, targets, torch.is_grad_enabled()),
                    lambda x, w: F.cross_entropy(F.linear(x, w), targets, ignore_index=-1)):
        x_, weight_ = x.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(x_, weight_)
            (3 * loss).backward()
            with torch.no_grad():
                assert torch.equal(loss_fn(x, weight), loss)
        results.append((loss, x_.grad, weight_.grad))
    (loss, grad_x, grad_weight), (expected, expected_x, expected_weight) = results
    tolerance = dict(rtol=2e-2, atol=5e-4) if autocast else dict(rtol=1e-7, atol=1e-10)
    assert torch.allclose(loss, expected, **tolerance)
    assert torch.allclose(grad_x, expected_x, **tolerance) and torch.allclose(grad_weight, expected_weight, **tolerance)


def test_model_loss_without_grad_does_only_the_forward_matmuls():
    # evaluation runs under torch.no_grad() with weights that require grad: HeadLoss must not make the gradient
    # there, so the loss costs what the logits alone cost
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny_model()
    x, y = torch.randint(0, 50, (4, 16)), torch.randint(0, 50, (4, 16))
    flops = []
    for targets in (None, y):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, targets)
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0


def test_model_sequence_too_long_raises():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    cache = KVCache(model.config.n_layers, model.config.max_seq_len)
    model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_seq_len"):  # 10 cached + 7 new > 16
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)


def test_model_counts_parameters_and_flops():
    model = tiny_model()
    n = sum(p.numel() for p in model.parameters())
    assert model.num_params() == n  # the tied matrix counts once
    assert model.flops_per_token() == 6 * n + 12 * 2 * 16 * 32


# ---- optimizers ----------------------------------------------------------------------------------

def test_model_adamw_decays_only_matrices():
    model = tiny_model()
    (optimizer,) = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), "cpu", muon_embedding_decay=1.0)
    groups = optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1, 0.0]  # the Muon-only rate leaves AdamW runs alone
    assert groups[1]["params"] == [model.tok_emb.weight] and model.lm_head.weight is model.tok_emb.weight
    assert {id(p) for g in groups[:2] for p in g["params"]} == {id(p) for p in model.parameters() if p.dim() >= 2}
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in model.parameters() if p.dim() < 2}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_model_muon_takes_the_matrices_inside_the_blocks_and_adamw_the_rest():
    model = tiny_model()
    adamw, muon = model.configure_optimizers("muon", 1e-3, 0.1, (0.9, 0.95), "cpu", muon_lr=0.02,
                                             muon_embedding_decay=1.0)
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): name for name, p in model.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    in_adamw = {names[id(p)] for group in adamw.param_groups for p in group["params"]}
    matrices = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    assert in_muon == {f"blocks.{i}.{m}.weight" for i in range(2) for m in matrices}
    assert "tok_emb.weight" in in_adamw and not in_muon & in_adamw  # the tied embedding/head never goes to Muon
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters()))
    assert [g["peak_lr"] for g in muon.param_groups] == [0.02] and muon.param_groups[0]["weight_decay"] == 0.0
    assert [g["peak_lr"] for g in adamw.param_groups] == [1e-3, 1e-3]
    assert adamw.param_groups[0]["params"] == [model.tok_emb.weight]
    assert [g["weight_decay"] for g in adamw.param_groups] == [1.0, 0.0]  # the embedding's own rate; gains, biases


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_model_training_lowers_loss_with_each_optimizer(optimizer):
    model = tiny_model().train()
    optimizers = model.configure_optimizers(optimizer, 3e-3, 0.0, (0.9, 0.95), "cpu", muon_lr=0.02)
    data = torch.arange(17).repeat(4, 1) % 7  # a repeating pattern to learn
    x, y = data[:, :-1], data[:, 1:]
    losses = []
    for _ in range(40):
        _, loss = model(x, y)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_model_unknown_optimizer_is_one_sentence():
    with pytest.raises(ValueError, match="optimizer must be 'adamw' or 'muon', not 'sgd'"):
        tiny_model().configure_optimizers("sgd", 1e-3, 0.1, (0.9, 0.95), "cpu")


# ---- generation and sampling one token -----------------------------------------------------------

def test_model_generate_temperature_zero_is_greedy():
    model = tiny_model()
    idx = torch.randint(0, 50, (2, 5))
    expected = idx
    for _ in range(8):
        next_token = model(expected)[0][:, -1].argmax(dim=-1, keepdim=True)
        expected = torch.cat((expected, next_token), dim=1)
    assert torch.equal(model.generate(idx, 8, temperature=0), expected)
    assert torch.equal(model.generate(idx, 8, temperature=1.0, top_k=1), expected)


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_model_generate_cached_matches_uncached_past_context(attention):
    model = tiny_model(attention=attention)
    for prompt_len in (3, 40):  # a prompt longer than max_seq_len=16 is cropped to its last 16 tokens
        idx = torch.randint(0, 50, (2, prompt_len))
        outputs = []
        for use_cache in (True, False):
            torch.manual_seed(123)
            outputs.append(model.generate(idx, 50, temperature=1.0, top_k=20, top_p=0.9, use_cache=use_cache))
        assert outputs[0].shape == (2, prompt_len + 50)
        assert torch.equal(outputs[0], outputs[1])


def test_model_generate_stream_yields_the_generated_tokens():
    model = tiny_model()
    idx = torch.randint(0, 50, (1, 4))
    torch.manual_seed(5)
    steps = list(model.generate_stream(idx, 20))
    torch.manual_seed(5)
    assert all(step.shape == (1, 1) for step in steps)
    assert torch.equal(torch.cat([idx, *steps], dim=1), model.generate(idx, 20))


def test_model_generate_top_k_larger_than_the_vocabulary_is_clamped():
    model = tiny_model()
    out = model.generate(torch.zeros(2, 1, dtype=torch.long), 5, top_k=1000)
    assert out.shape == (2, 6) and int(out.max()) < 50


def test_model_generate_stop_token_stops_every_row():
    model = tiny_model()
    idx = torch.randint(0, 50, (2, 3))
    torch.manual_seed(3)
    free = model.generate(idx, 30, temperature=1.0)  # sampled: without the stop, rows go on with other tokens
    stop = int(free[0, 5])  # the third token row 0 generates
    torch.manual_seed(3)
    out = model.generate(idx, 30, temperature=1.0, stop_token=stop)
    ends = []
    for row in range(2):
        new = free[row, 3:].tolist()
        ends.append(new.index(stop) + 1 if stop in new else 30)
    assert ends[0] < ends[1] < 30  # row 0 stops first, row 1 later, which ends the generation
    assert out.shape[1] == 3 + ends[1]
    for row in range(2):
        assert torch.equal(out[row, :3 + ends[row]], free[row, :3 + ends[row]])
        assert torch.all(out[row, 3 + ends[row]:] == stop)  # a finished row repeats the stop token
    assert not torch.all(free[0, 3 + ends[0]:3 + ends[1]] == stop)  # where, unstopped, it went on


def test_model_generate_past_the_context_follows_the_documented_window():
    """Past max_seq_len (16 here) the window jumps to the last max_seq_len // 2 tokens, and the cache is refilled
    from them; the model is spied on to see exactly which tokens it is given at each step."""
    model = tiny_model()
    idx = torch.randint(0, 50, (1, 10))
    for use_cache in (True, False):
        seen, real = [], model.hidden_states
        model.hidden_states = lambda x, *cache: seen.append(x) or real(x, *cache)
        try:
            out = model.generate(idx, 40, use_cache=use_cache)
        finally:
            del model.hidden_states
        assert len(seen) == 40
        start = 0
        for step, x in enumerate(seen):
            n_tokens = 10 + step  # prompt and generated tokens so far
            slides = n_tokens - start > 16
            if slides:
                start = n_tokens - 8
            whole_window = not use_cache or step == 0 or slides  # the cache holds the rest
            assert torch.equal(x, out[:, start:n_tokens] if whole_window else out[:, n_tokens - 1:n_tokens])


def test_model_generate_restores_train_mode():
    model = tiny_model()
    model.train()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert not model.training
    model.train()
    stream = model.generate_stream(torch.zeros(1, 1, dtype=torch.long), 10)
    next(stream)
    stream.close()  # a caller that stops early gets its mode back too
    assert model.training


@pytest.mark.parametrize("start, message", [
    (lambda model: model.generate_stream(torch.zeros(1, 1, dtype=torch.long), 1, temperature=float("nan")),
     "temperature must be >= 0"),
    (lambda model: model.generate_stream(torch.zeros(1, 1, dtype=torch.long), 3, top_p=0.0), None),
    (lambda model: model.generate(torch.zeros(1, 0, dtype=torch.long), 3), None),  # nothing to continue
], ids=["nan-temperature", "top_p-0", "empty-prompt"])
def test_model_generate_refuses_bad_arguments_at_the_call_not_at_the_first_token(start, message):
    with pytest.raises(ValueError, match=message):
        start(tiny_model())


def test_model_sample_next_token_top_k_keeps_exactly_k_even_where_logits_tie():
    torch.manual_seed(0)
    tied = torch.tensor([[1.0, 1.0, 0.0]])
    assert len({sample_next_token(tied, top_k=1).item() for _ in range(50)}) == 1  # one token, not both tied ones


def test_model_sample_next_token_tiny_or_zero_temperature_is_greedy():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    assert sample_next_token(logits, temperature=1e-45).item() == 1
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(3, 4)
    assert torch.all(sample_next_token(logits, temperature=0) == 0)


def test_model_sample_next_token_top_p_keeps_only_the_nucleus():
    torch.manual_seed(0)
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().expand(4000, 4)
    for top_p, nucleus in ((0.45, {0}), (0.75, {0, 1}), (0.9, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        drawn = set(sample_next_token(logits, top_p=top_p).flatten().tolist())
        assert drawn == nucleus, top_p


# ---- the walk-through ----------------------------------------------------------------------------

def test_model_copied_alone_imports_with_torch_and_the_standard_library_only(tmp_path):
    assert libraries_loaded_alone(tmp_path, "model", ["model.py"]) == libraries_loaded_alone(tmp_path, "torch", [])


def test_model_walk_through_prints_the_models_own_numbers():
    out = run_script("model.py", timeout=60).stdout
    config = eval(out.splitlines()[0].removeprefix("An untrained "), {"GPTConfig": GPTConfig})  # the config it used
    counts = [int(n.replace(",", "")) for n in re.findall(r"^  .*? +([\d,]+)$", out.split("Parameters")[1], re.M)]
    assert sum(counts[:-1]) == counts[-1] == GPT(config).num_params()  # the parts add up; the tied head counts once
    loss = float(re.search(r"loss (\d+\.\d+)", out)[1])
    assert abs(loss - math.log(config.vocab_size)) < 0.1
    assert "  1 1 0 0 0 0\n" in out and "rows sum to 1: True" in out and "CausalSelfAttention's output: True" in out


# ====================================================================================================
# bpe.py: the tokenizer
# ====================================================================================================

BPE_TRICKY = [
    "", " ", "a", "\n", "\r\n", "\r\n\r\n", "\t\tx\t", "   ", " " * 100 + "x", "x" + " " * 100, "\n" * 50,
    "Hello, world! It's 12345 o'clock; we'LL see... don't you?", "snake_case __dunder__ _x x_",
    "naïve café, résumé", "e\u0301 a\u0300\u0323 Z\u0351\u0352\u0353",  # combining marks
    "Привет, мир", "こんにちは世界", "中文字符，标点。", "مرحبا بالعالم", "שלום", "हिन्दी", "ภาษาไทย", "한국어 텍스트",
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇯🇵🇺🇸", "a😀b 😀😀😀",  # ZWJ sequences, flags
    "\x00\x01\x7f\x80\xff", "\ufeffBOM", "\u2028\u2029\x85\x0b\x0c", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010ffff \U000e0001",
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext", "<|endoftext|><|endoftext|>", "<|im_start|>",
    "123 1234 12345 ١٢٣٤ ²³", "aaaa aaa aa a", "'s 'S 'll 'LL 're", "    def f(x):\n        return x\n",
]


def _bpe_text(n_words, seed):
    """Real-looking text from a fixed-seed word generator: Zipf-like word frequencies, capitals,
    punctuation, contractions, numbers, a little non-ASCII, newlines and indentation."""
    rng = random.Random(seed)
    sylls = ["th", "e", "an", "re", "qu", "ing", "o", "st", "ly", "ou", "x", "ed", "a", "ch", "ll", "é", "ß", "aa"]
    words = ["".join(rng.choice(sylls) for _ in range(rng.randint(1, 4))) for _ in range(500)]
    weights = [1 / (k + 1) for k in range(len(words))]
    out = []
    for w in rng.choices(words, weights, k=n_words):
        r = rng.random()
        if r < 0.05:
            w = w.capitalize()
        elif r < 0.08:
            w = str(rng.randint(0, 10 ** rng.randint(1, 7)))
        elif r < 0.10:
            w += rng.choice(["'s", "'ll", "n't", "'RE"])
        out.append(w)
        out.append(rng.choices([" ", ", ", ". ", "!\n", "\n\n", ":\n    ", "  ", " — ", "\r\n"], [60, 8, 8, 2, 2, 1, 1, 1, 1])[0])
    return "".join(out)


def _bpe_random_unicode(rng, n):
    """n random characters that UTF-8 can encode, weighted toward ASCII, whitespace and multi-byte."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            out.append(chr(rng.randrange(32, 127)))
        elif r < 0.4:
            out.append(rng.choice(" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000"))
        elif r < 0.6:
            out.append(chr(rng.randrange(0x80, 0x800)))
        else:
            c = rng.randrange(0x800, 0x110000)
            out.append(chr(c) if not 0xD800 <= c < 0xE000 else "x")  # surrogates cannot be UTF-8
    return "".join(out)


# ---- the split pattern ---------------------------------------------------------------------------

def test_bpe_split_pattern_covers_every_character():
    pattern = Tokenizer().pattern
    rng = random.Random(0)
    for s in BPE_TRICKY + [_bpe_random_unicode(rng, 2000) for _ in range(20)] + [_bpe_text(2000, 1)]:
        assert "".join(re.findall(pattern, s)) == s


def test_bpe_split_pattern_chunks():
    found = re.findall(Tokenizer().pattern, "Hello world's  12345 x_y!!\n\n  foo\r\nbar\t é")
    assert found == ["Hello", " world", "'s", " ", " ", "123", "45", " x", "_y", "!!\n\n", " ", " foo", "\r\n", "bar", "\t", " é"]


def test_bpe_ascii_split_matches_split_pattern():
    # ASCII text is split with a twin of the pattern written with ASCII classes; it must cut exactly the same
    from bpe import _ASCII_SPLIT_PATTERN
    full, ascii_ = re.compile(SPLIT_PATTERN), re.compile(_ASCII_SPLIT_PATTERN)
    chars = [chr(i) for i in range(128)]
    tricky = " \t\n\r\x0b\x0c\x1c\x1f'_aslLSVR1,!\x00\x7f"
    rng = random.Random(20)
    texts = chars + [a + b for a in chars for b in chars] + [a + b + c for a in tricky for b in tricky for c in tricky]
    texts += ["".join(rng.choice(tricky + "".join(chars)) for _ in range(rng.randint(0, 300))) for _ in range(300)]
    texts += [_bpe_text(3000, 20).encode("ascii", "ignore").decode(), "".join(s for s in BPE_TRICKY if s.isascii())]
    for s in texts:
        assert ascii_.findall(s) == full.findall(s), repr(s)


# ---- training ------------------------------------------------------------------------------------

def test_bpe_first_merges_by_hand():
    # chunks "ab", " ab", " ab", " abc": (a, b) occurs 4 times, then (" ", ab) 3 times, then (" ab", c) once; nothing is left after
    tok = Tokenizer.train("ab ab ab abc", vocab_size=300)
    assert tok.merges == [(97, 98), (32, 256), (257, 99)] and tok.vocab_size == 259
    # ties go to the smallest pair: (" ", a), (a, b), (b, a) all occur once
    assert Tokenizer.train("ba ab", vocab_size=259).merges == [(32, 97), (98, 97), (256, 98)]
    # "aaaa" holds (a, a) twice, as merging replaces it, not three times: it ties with (" ", b) and (b, c) and loses to the smaller pair
    assert Tokenizer.train("aaaa bc bc", vocab_size=258).merges == [(32, 98), (97, 97)]
    assert Tokenizer.train("", vocab_size=300).merges == [] and Tokenizer.train("x", 300, ["<|endoftext|>"]).vocab_size == 257


def test_bpe_training_matches_reference_trainer():
    rng = random.Random(3)
    texts = [_bpe_text(1500, 2), "".join(rng.choice(["ab", "ba", "a", "b", " ", "abab", "c", "cc", "aaa\n"]) for _ in range(2000)),
             _bpe_random_unicode(rng, 1500) * 2]
    for text in texts:
        tok = Tokenizer.train(text, vocab_size=256 + 120)
        assert tok.merges == train_reference(text, 256 + 120)


def test_bpe_training_matches_reference_on_overlaps_ties_unicode_special_tokens_and_patterns():
    # the hand-worked merges of test_bpe_first_merges_by_hand are the reference's too
    assert train_reference("ab ab ab abc", 300) == [(97, 98), (32, 256), (257, 99)]
    assert train_reference("ba ab", 259) == [(32, 97), (98, 97), (256, 98)]
    assert train_reference("aaaa bc bc", 258) == [(32, 98), (97, 97)]
    cases = [
        ("aaaa bc bc", [], SPLIT_PATTERN),          # (a, a) counts 2 in "aaaa", and ties with (" ", b)
        ("aaaaaaa aaa aa a\n" * 3, [], SPLIT_PATTERN),  # runs of odd and even length overlap differently
        ("ba ab cd dc ef fe", [], SPLIT_PATTERN),   # every pair once: a tie at every merge
        ("ééé ñ ñ 😀😀😀 日本語日本語 Привет привет", [], SPLIT_PATTERN),  # tokens built from the bytes of characters
        ("a<|endoftext|>a aa<|end|>aaa<|endoftext|>ab", ["<|endoftext|>", "<|end|>"], SPLIT_PATTERN),
        ("aa bb, aab! abba 1234", [], r"\S+|\s+"),  # another pattern: punctuation stays on words
        ("aa bb aab abba a", [], r"[\s\S]"),        # one character a chunk: nothing to merge
    ]
    rng = random.Random(21)
    cases += [("".join(rng.choice("aab \né") for _ in range(rng.randint(0, 60))), [], SPLIT_PATTERN) for _ in range(40)]
    for text, specials, pattern in cases:
        for vocab_size in (256 + len(specials) + 3, 256 + len(specials) + 300):  # a few merges, then until no pair is left
            fast = Tokenizer.train(text, vocab_size, specials, pattern).merges
            assert fast == train_reference(text, vocab_size, specials, pattern), (text, vocab_size)


def test_bpe_training_is_deterministic(tmp_path):
    text = _bpe_text(20000, 4)
    merges = Tokenizer.train(text, vocab_size=800, special_tokens=["<|endoftext|>"]).merges
    assert Tokenizer.train(text, vocab_size=800, special_tokens=["<|endoftext|>"]).merges == merges
    # across processes too, whatever str hashing (and so set and dict order) they use
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from bpe import Tokenizer; "
            "print(Tokenizer.train(open(sys.argv[2], encoding='utf-8', newline='').read(), 800, ['<|endoftext|>']).merges)")
    bpe_dir = os.path.dirname(os.path.abspath(sys.modules[Tokenizer.__module__].__file__))
    path = str(tmp_path / "text.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, bpe_dir, path], env=dict(os.environ, PYTHONHASHSEED=seed),
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == str(merges)


def test_bpe_special_tokens_take_the_ids_after_the_merges():
    tok = Tokenizer.train(_bpe_text(5000, 5), vocab_size=500, special_tokens=["<|endoftext|>", "<|pad|>"])
    assert tok.vocab_size == 500 == 256 + len(tok.merges) + 2
    assert tok.special_tokens == {"<|endoftext|>": 498, "<|pad|>": 499}
    assert all(a < 256 + r and b < 256 + r for r, (a, b) in enumerate(tok.merges))


@pytest.mark.parametrize("make, message", [
    (lambda: Tokenizer.train("a <s> b", vocab_size=300, special_tokens="<s>"),
     re.escape("special_tokens is the string '<s>', not a list of strings")),
    # a set's order, and so the ids, would change from run to run
    (lambda: Tokenizer.train("a <s> b", 300, special_tokens={"<s>", "</s>"}),
     "special_tokens is a set, whose order .* give a list"),
    (lambda: Tokenizer(special_tokens=frozenset(["<s>", "</s>"])), "special_tokens is a set, whose order .* give a list"),
    (lambda: Tokenizer.train("a b c", 300, special_tokens=[""]), re.escape("special token '' is not a non-empty string")),
    (lambda: Tokenizer.train("a b c", 300, special_tokens=[5]), re.escape("special token 5 is not a non-empty string")),
    (lambda: Tokenizer.train("a b c", 300.5, special_tokens=[]), re.escape("vocab_size 300.5 must be between 256")),
    (lambda: Tokenizer.train("abc", vocab_size=256, special_tokens=["<|endoftext|>"]), None),
    (lambda: Tokenizer.train("abc", vocab_size=300, special_tokens=["<|x|>", "<|x|>"]), None),
    (lambda: Tokenizer.train("hello, world", 260, pattern=r"( ?\w+)|\W+"),
     r"has 1 capturing group\(s\); write each as \(\?:\.\.\.\)"),
    (lambda: Tokenizer.train("hello, world", 260, pattern=r"[a-z]+"),
     "matches only 10 of the 12 characters of the text; it must match every"),
    # a loaded file may hold such a pattern: encoding refuses to drop text
    (lambda: Tokenizer(pattern=r"[a-z]+").encode("hello, world"), "matches only 10 of the 12 characters"),
], ids=["special-tokens-as-one-string", "special-tokens-as-a-set", "special-tokens-as-a-frozenset",
        "empty-special-token", "special-token-not-a-string", "fractional-vocab-size", "no-room-for-a-special-token",
        "repeated-special-token", "pattern-with-a-group", "pattern-that-skips-text", "encoding-that-would-skip-text"])
def test_bpe_bad_special_tokens_vocab_sizes_and_patterns_are_one_sentence_before_any_counting(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bpe_pattern_that_matches_every_character_is_taken():
    tok = Tokenizer(pattern=r"[a-z]+|[\s\S]")  # the fix the message for a pattern that skips text suggests
    assert tok.decode(tok.encode("hello, world")) == "hello, world"


# ---- encoding ------------------------------------------------------------------------------------

def test_bpe_round_trip_tricky_strings():
    toks = [Tokenizer(), Tokenizer.train(_bpe_text(20000, 6) + "".join(BPE_TRICKY), vocab_size=1000, special_tokens=["<|endoftext|>"])]
    for tok in toks:
        for s in BPE_TRICKY + ["".join(BPE_TRICKY)]:
            ids = tok.encode(s)
            assert tok.decode(ids) == s
            assert all(type(i) is int and 0 <= i < tok.vocab_size for i in ids)
        assert tok.encode("") == []
        with pytest.raises(UnicodeEncodeError):
            tok.encode("a\ud800b")  # a lone surrogate has no UTF-8 bytes: an error, never silently dropped


def test_bpe_round_trip_random_unicode():
    rng = random.Random(7)
    tok = Tokenizer.train(_bpe_random_unicode(rng, 20000) + _bpe_text(5000, 7), vocab_size=1200)
    for _ in range(30):
        s = _bpe_random_unicode(rng, rng.randint(0, 500))
        assert tok.decode(tok.encode(s)) == s


def test_bpe_encode_matches_reference_encoder():
    rng = random.Random(8)
    train_texts = [_bpe_text(20000, 8), _bpe_random_unicode(rng, 10000) * 3,
                   "".join(rng.choice(["a", "aa", "ab", "b", " ", "ba", "aaa"]) for _ in range(5000))]
    tests = [_bpe_text(3000, 9), _bpe_random_unicode(rng, 3000), "".join(BPE_TRICKY),
             "".join(rng.choice(["a", "aa", "ab", "b", " ", "ba", "aaaaa"]) for _ in range(2000))]
    for text in train_texts:
        tok = Tokenizer.train(text, vocab_size=900)
        small_cache = Tokenizer(tok.merges, cache_size=50)  # starts its cache over again and again
        for s in tests + [text[:3000]]:
            assert tok.encode(s) == encode_reference(s, tok.merges)
            assert tok.encode(s) == encode_reference(s, tok.merges)  # again, from the cache
            assert small_cache.encode(s) == tok.encode(s)


def test_bpe_training_leaves_the_tokens_of_the_chunks_it_learned_from_in_the_cache():
    rng = random.Random(19)
    for text in [_bpe_text(8000, 19), "".join(rng.choice(["a", "aa", "ab", "b", " ", "ba", "aaa"]) for _ in range(4000))]:
        tok = Tokenizer.train(text, vocab_size=700)
        chunks = list(tok._cache)  # as the chunks' own BPE makes them
        assert len(chunks) > 20 and [tok._cache[c] for c in chunks] == Tokenizer(tok.merges)._encode_chunks(chunks)


def test_bpe_trained_tokens_are_what_bpe_makes_of_their_bytes():
    # why the fast path (a chunk whose bytes are one token is that token) is exact for trained merges
    rng = random.Random(18)
    for text in [_bpe_text(5000, 18), "".join(rng.choice(["ab", "ba", "a", "b", " ", "abab", "aaa", "c"]) for _ in range(3000))]:
        tok = Tokenizer.train(text, vocab_size=700)
        ranks, vocab = {pair: r for r, pair in enumerate(tok.merges)}, [bytes([i]) for i in range(256)]
        for a, b in tok.merges:
            vocab.append(vocab[a] + vocab[b])
            assert encode_chunk_reference(list(vocab[-1]), ranks) == [len(vocab) - 1]


def test_bpe_fast_path_only_for_tokens_bpe_reaches():
    # "abc" is token 258 = (ab, c), but BPE on the bytes "abc" merges (b, c) first and stops at [a, bc]
    tok = Tokenizer([(98, 99), (97, 98), (257, 99)])
    assert tok.encode("abc") == [97, 256] == encode_reference("abc", tok.merges)
    assert tok.decode([258]) == "abc"


def test_bpe_encode_with_any_merge_list_matches_reference_encoder():
    # merge lists that train() would not make: tokens BPE never reaches, tokens with the same bytes as another
    # (so the fast path, and "a chunk it does not catch stops at 2 tokens", are checked on them), non-ASCII text
    rng = random.Random(19)
    text = "".join(rng.choice(["ab", "ba", "abc", " a", " b", "c", "aa", "é", "\n", "bb "]) for _ in range(3000))
    for _ in range(5):
        merges = []
        while len(merges) < 150:
            ids = [*b" abc\n\xc3\xa9", *range(256, 256 + len(merges))]
            pair = (rng.choice(ids), rng.choice(ids))
            if pair not in merges:
                merges.append(pair)
        tok = Tokenizer(merges)
        for s in (text[:2000], "".join(BPE_TRICKY), _bpe_random_unicode(rng, 300)):
            assert tok.encode(s) == encode_reference(s, tok.merges)


def test_bpe_encode_with_another_pattern_matches_reference_encoder():
    text = _bpe_text(3000, 22) + "".join(BPE_TRICKY)
    for pattern in (r"\S+|\s+", r" ?\S+|\s+"):  # punctuation stays on words, digits are not cut in threes
        tok = Tokenizer.train(text, 700, pattern=pattern)
        for s in (text[:3000], "".join(BPE_TRICKY), "aaaaa aaa ab" * 3):
            assert tok.encode_ordinary(s) == encode_reference(s, tok.merges, pattern)


def test_bpe_ids_in_the_surrogate_range():
    # inside, ids are characters, and 55296..57343 are the surrogates there: they must pass through
    text = "שלום עולם"
    used = sorted({p for w in re.findall(Tokenizer().pattern, text) for p in zip(w.encode(), w.encode()[1:])})
    filler = [(a, b) for a in range(256) for b in range(256) if (a, b) not in used][:55100]
    tok = Tokenizer(filler + used)
    ids = tok.encode(text)
    assert any(0xD800 <= i < 0xE000 for i in ids) and ids == encode_reference(text, tok.merges) and tok.decode(ids) == text


# ---- special tokens ------------------------------------------------------------------------------

def test_bpe_special_tokens_only_when_allowed():
    tok = Tokenizer.train(_bpe_text(10000, 12), vocab_size=600, special_tokens=["<|endoftext|>", "<|endoftext|>x"])
    eot, eotx = tok.special_tokens["<|endoftext|>"], tok.special_tokens["<|endoftext|>x"]
    s = "hello <|endoftext|>world<|endoftext|>x"
    plain = tok.encode(s)
    assert eot not in plain and eotx not in plain and tok.decode(plain) == s
    assert tok.encode(s, allowed_special={"<|endoftext|>"}) == tok.encode("hello ") + [eot] + tok.encode("world") + [eot] + tok.encode("x")
    assert tok.encode(s, allowed_special="all") == tok.encode("hello ") + [eot] + tok.encode("world") + [eotx]
    assert tok.decode(tok.encode(s, allowed_special="all")) == s
    with pytest.raises(ValueError):
        tok.encode(s, allowed_special={"<|unknown|>"})


def test_bpe_ordinary_text_never_decodes_to_a_special_token():
    special = "<|endoftext|>"
    rng = random.Random(13)
    # train on text full of pieces of the special token, so that merges for them exist
    text = _bpe_text(20000, 13).replace(" ", " <|endoftext ", 300) + "matter <|end|> endoftext|>" * 50
    tok = Tokenizer.train(text, vocab_size=800, special_tokens=[special])
    sid = tok.special_tokens[special]
    assert sid == 799 and all(256 + r != sid for r in range(len(tok.merges)))
    assert all(tok.decode([i]) != special for i in range(sid))
    for s in [text[:5000], special * 3, _bpe_random_unicode(rng, 2000) + special, "matter"]:
        assert sid not in tok.encode(s) and special not in [tok.decode([i]) for i in tok.encode(s)]


# ---- decoding ------------------------------------------------------------------------------------

def test_bpe_decode_stream_holds_back_a_split_character():
    tok = Tokenizer()  # bytes only: every multi-byte character is split across tokens
    s = "aé中😀👨\u200d👩 b\r\n"
    ids = tok.encode(s)
    pieces = list(tok.decode_stream(ids))
    assert "".join(pieces) == s and all("\ufffd" not in p for p in pieces) and "😀" in pieces
    # invalid bytes are replaced as decode() does, an unfinished character only at the end
    for ids in ([0xE4, 0xB8], [0xE4, 0xB8, 0x41, 0xFF, 0x41], [0xF0, 0x9F, 0x98]):
        assert "".join(tok.decode_stream(ids)) == tok.decode(ids)
    rng = random.Random(15)
    tok = Tokenizer.train(_bpe_random_unicode(rng, 5000) * 2, vocab_size=600)
    for _ in range(50):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(0, 30))]
        assert "".join(tok.decode_stream(ids)) == tok.decode(ids)


def test_bpe_decode_bytes_gives_exact_bytes_even_for_part_of_a_character():
    tok = Tokenizer.train("héllo wörld, 中文 " * 50, vocab_size=300)
    text = "héllo wörld, 中文 😀"
    ids = tok.encode(text)
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert b"".join(tok.decode_bytes([i]) for i in ids) == text.encode("utf-8")  # what bits per byte counts
    assert tok.decode_bytes([0xF0, 0x9F]) == b"\xf0\x9f"  # not replaced, unlike decode()


def test_bpe_decode_takes_tensors_tuples_and_iterators():
    tok = Tokenizer()
    assert tok.decode(torch.tensor([72, 105])) == tok.decode(iter([72, 105])) == tok.decode((72, 105)) == "Hi"
    assert "".join(tok.decode_stream(torch.tensor([72, 105]))) == "Hi"


@pytest.mark.parametrize("ids, message", [
    ([256], None),  # the vocabulary's size: one past its last id
    ([-1], None),
    (iter([72, 1000]), "token id 1000 is not in this vocabulary of 256 ids"),
    ([72, [1]], r"token id \[1\] is not in this vocabulary"),
], ids=["vocab-size", "negative", "too-large-from-an-iterator", "not-an-int"])
def test_bpe_decode_refuses_an_id_outside_the_vocabulary_naming_it(ids, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer().decode(ids)


# ---- saving and loading --------------------------------------------------------------------------

def test_bpe_save_load_round_trip(tmp_path):
    tok = Tokenizer.train(_bpe_text(20000, 10), vocab_size=700, special_tokens=["<|endoftext|>", "<|im_end|>"])
    path = str(tmp_path / "tok.json")
    tok.save(path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["format"] == "bpe.py tokenizer" and data["version"] == 1 and data["pattern"] == tok.pattern
    assert data["merges"][0] == list(tok.merges[0]) and data["special_tokens"] == tok.special_tokens
    tok2 = Tokenizer.load(path)
    assert (tok2.merges, tok2.special_tokens, tok2.pattern, tok2.vocab_size) == (tok.merges, tok.special_tokens, tok.pattern, 700)
    s = _bpe_text(2000, 11) + "<|endoftext|>" + "".join(BPE_TRICKY)
    assert tok2.encode(s, allowed_special="all") == tok.encode(s, allowed_special="all")
    Tokenizer().save(path)
    assert Tokenizer.load(path).vocab_size == 256


@pytest.fixture(scope="module")
def saved_tokenizer_text(tmp_path_factory):
    """The text of a good tokenizer file: 300 ids, 43 merges and <|endoftext|>."""
    path = tmp_path_factory.mktemp("tokenizer") / "good.json"
    Tokenizer.train(_bpe_text(3000, 14), vocab_size=300, special_tokens=["<|endoftext|>"]).save(str(path))
    return path.read_text(encoding="utf-8")


BAD_TOKENIZER_FILES = [  # (file name, what it holds made from the good file's text and JSON, the error, its words)
    ("missing.json", None, FileNotFoundError, ["does not exist"]),
    ("truncated.json", lambda text, data: text[: len(text) // 2], ValueError, ["not valid JSON"]),
    ("empty.json", lambda text, data: "", ValueError, ["not valid JSON"]),
    ("list.json", lambda text, data: [1, 2], ValueError, ["format"]),
    ("version.json", lambda text, data: dict(data, version=2), ValueError, ["version 2"]),
    ("extra.json", lambda text, data: dict(data, extra=1), ValueError, ["fields"]),
    ("future.json", lambda text, data: dict(data, merges=data["merges"] + [[300, 97]]), ValueError, ["merge 43"]),
    ("bad_pair.json", lambda text, data: dict(data, merges=[[97]] + data["merges"][1:]), ValueError, ["merge 0"]),
    ("repeat.json", lambda text, data: dict(data, merges=data["merges"] + [data["merges"][0]]), ValueError, ["repeats"]),
    ("collide.json", lambda text, data: dict(data, special_tokens={"<|endoftext|>": 298}), ValueError,
     ["special token ids"]),
    ("gap.json", lambda text, data: dict(data, special_tokens={"<|endoftext|>": 301}), ValueError,
     ["special token ids"]),
    ("empty_special.json", lambda text, data: dict(data, special_tokens={"": 300}), ValueError, ["special token"]),
    ("pattern.json", lambda text, data: dict(data, pattern="(unclosed"), ValueError, ["pattern"]),
    ("groups.json", lambda text, data: dict(data, pattern="(a)|b"), ValueError, ["capturing group"]),
    ("deep.json", lambda text, data: "[" * 100_000, ValueError, ["not valid JSON"]),
    ("folder.json", "a folder", ValueError, ["cannot be read"]),
]


@pytest.mark.parametrize("name, content, error, words", BAD_TOKENIZER_FILES,
                         ids=[name.removesuffix(".json") for name, *_ in BAD_TOKENIZER_FILES])
def test_bpe_load_refuses_a_bad_file_in_one_sentence_naming_it(tmp_path, saved_tokenizer_text, name, content, error,
                                                               words):
    path = str(tmp_path / name)
    if content == "a folder":
        os.mkdir(path)
    elif content is not None:
        content = content(saved_tokenizer_text, json.loads(saved_tokenizer_text))
        with open(path, "w", encoding="utf-8") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(error) as e:
        Tokenizer.load(path)
    msg = str(e.value)
    assert path in msg and "\n" not in msg and all(w in msg for w in words), msg


# ---- files: encoding and training in blocks ------------------------------------------------------

def test_bpe_encode_file_matches_encode(tmp_path):
    rng = random.Random(16)
    special = "<|endoftext|>"
    parts = [_bpe_text(rng.randint(0, 300), k) for k in range(30)] + BPE_TRICKY + [_bpe_random_unicode(rng, 300) for _ in range(5)]
    rng.shuffle(parts)
    text = special.join(parts) + "  \n\n  12345"
    path, out = str(tmp_path / "in.txt"), str(tmp_path / "ids.bin")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    tok = Tokenizer.train(text, vocab_size=700, special_tokens=[special])
    other = Tokenizer.train(text, vocab_size=700, special_tokens=[special], pattern=r"\S+|\s+")  # another pattern: one block
    for t, dtype, workers, allowed, block in [(tok, "uint16", 1, (), 50), (tok, "uint32", 1, "all", 37),
                                              (tok, "uint16", 2, {special}, 200), (tok, "uint16", 1, "all", 1 << 20),
                                              (other, "uint16", 1, (), 50)]:
        n = t.encode_file(path, out, dtype=dtype, num_workers=workers, allowed_special=allowed, block_chars=block)
        ids = array.array("H" if dtype == "uint16" else "I")
        assert ids.itemsize * 8 == int(dtype[4:])
        with open(out, "rb") as f:
            ids.frombytes(f.read())
        if sys.byteorder == "big":
            ids.byteswap()
        assert n == len(ids) and ids.tolist() == t.encode(text, allowed_special=allowed)
    with pytest.raises(ValueError):
        tok.encode_file(path, out, dtype="int8")


def test_bpe_file_blocks_are_cut_only_where_the_chunks_stay_the_same():
    """_pieces cuts where _LAST_CUT finds a place (a letter before a non-letter, a digit before a non-digit,
    a non-space before a space, a newline before a non-space): at every such place in random text, the two
    sides chunk as the whole does."""
    split, rng = re.compile(SPLIT_PATTERN), random.Random(5)
    cut_here = re.compile(_LAST_CUT.pattern.replace("(?s:.*)", ""))
    alphabet = list("aZé1٣² \n\r\t's_!.\x1c\xa0😀\u0301") + ["'ll", "  ", "\r\n"]
    n_cuts = 0
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        for p in range(1, len(text)):
            if (m := cut_here.match(text, p - 1)) and m.end() == p:
                n_cuts += 1
                assert split.findall(text[:p]) + split.findall(text[p:]) == split.findall(text), (text, p)
    assert n_cuts > 5000


def test_bpe_file_without_letters_is_still_read_in_blocks(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text("".join(f"{i},{i * i}\n" for i in range(20000)))  # no letter anywhere
    text = path.read_text()
    blocks = [text[start:end] for start, end in _pieces(str(path), 0, len(text), 1000)]  # ASCII: bytes are characters
    assert "".join(blocks) == text and max(map(len, blocks)) < 2000
    with pytest.raises(ValueError, match="block_chars is 0; it must be at least 1"):
        list(_pieces(str(path), 0, len(text), 0))


def test_bpe_train_file_matches_train(tmp_path):
    text = _bpe_text(20000, 17) + "<|endoftext|>" + "".join(BPE_TRICKY) + "\n\n  \n"
    path = str(tmp_path / "in.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    for specials in ([], ["<|endoftext|>"]):
        tok = Tokenizer.train(text, vocab_size=700, special_tokens=specials)
        tok2 = Tokenizer.train_file(path, vocab_size=700, special_tokens=specials, block_chars=97)
        assert tok2.merges == tok.merges and tok2.special_tokens == tok.special_tokens


def test_bpe_file_that_is_not_utf8_is_one_sentence_naming_it(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait\n".encode("latin-1") * 50)
    tok = Tokenizer.train("café au lait", vocab_size=260)
    for read in (lambda: Tokenizer.train_file(str(path), vocab_size=300),
                 lambda: tok.encode_file(str(path), str(tmp_path / "ids.bin"))):
        with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text \(byte 0xe9 .*convert it to UTF-8"):
            read()
    result = run_script("bpe.py", [str(path), "--out=" + str(tmp_path / "t.json")], check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "is not UTF-8 text" in result.stderr


def test_bpe_encode_file_refuses_to_overwrite_its_input(tmp_path):
    tok = Tokenizer.train("hello world", vocab_size=260)
    text = tmp_path / "text.txt"
    text.write_text("hello world\n")
    with pytest.raises(ValueError, match="would overwrite its input"):
        tok.encode_file(str(text), str(text))
    assert text.read_text() == "hello world\n"


def test_bpe_encode_file_leaves_no_partial_output_when_a_late_block_is_not_utf8(tmp_path):
    tok = Tokenizer.train("hello world", vocab_size=260)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 1000 + b"\xff")  # the fault is in the last of several blocks
    with pytest.raises(ValueError, match="not UTF-8"):
        tok.encode_file(str(bad), str(tmp_path / "ids.bin"), block_chars=1000)
    assert not (tmp_path / "ids.bin").exists()


# ---- at scale: several processes, a budget of bytes ----------------------------------------------

def _read_ids(path, dtype="uint16"):
    ids = array.array("H" if dtype == "uint16" else "I")
    ids.frombytes(path.read_bytes())
    if sys.byteorder == "big":
        ids.byteswap()
    return ids.tolist()


def test_bpe_at_scale_counts_merges_and_ids_are_the_same_on_1_2_or_3_processes(tmp_path):
    """Small blocks, so that there are hundreds: each process counts its own, and the counts add up to the whole
    text's, ties and all, so the merges are train()'s; encoding documents given as byte ranges, <|endoftext|>
    between them, gives encode() of the joined text."""
    end = "<|endoftext|>"
    texts = [_bpe_text(12000, 31) + end + "".join(BPE_TRICKY), _bpe_text(3000, 32) + "\r\n  x"]
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for path, text in zip(paths, texts):
        path.write_bytes(text.encode("utf-8"))
    reference = Tokenizer.train(texts[0], vocab_size=700, special_tokens=[end])
    expected = reference.encode(end.join(texts), allowed_special={end})
    ranges = [(str(path), 0, path.stat().st_size) for path in paths]
    for workers in (1, 2, 3):
        tokenizer = Tokenizer.train_file(str(paths[0]), 700, [end], block_chars=300, num_workers=workers)
        assert tokenizer.merges == reference.merges, workers
        out = tmp_path / f"ids-{workers}.bin"
        n = tokenizer.encode_file(ranges, str(out), num_workers=workers, allowed_special={end}, block_chars=200,
                                  separator=end)
        assert n == len(expected) and _read_ids(out) == expected, workers
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 2000 + b"\xff")
    with pytest.raises(ValueError, match=r"bad\.txt is not UTF-8 text"):  # a worker's error, in its sentence
        reference.encode_file(str(bad), str(tmp_path / "ids.bin"), num_workers=2, block_chars=1000)
    assert not (tmp_path / "ids.bin").exists()


def test_bpe_at_scale_a_worker_that_is_killed_stops_the_work_in_one_sentence(tmp_path, monkeypatch):
    path = tmp_path / "in.txt"
    path.write_text(_bpe_text(20000, 34), encoding="utf-8")
    started, popen = [], subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kw: started.append(popen(*args, **kw)) or started[-1])
    progress = []
    with pytest.raises(RuntimeError, match=r"a worker process ended before it answered \(exit codes \[-9, -9\]; -9 "
                                           r"is a kill, often for lack of memory\); free some memory or use fewer"):
        Tokenizer.train_file(str(path), 600, block_chars=500, num_workers=2,  # the workers die after the first block
                             progress=lambda *a: progress.append(a) or [w.kill() or w.wait() for w in started])
    assert len(started) == 2 and progress


def test_bpe_at_scale_the_tokenizer_learns_from_at_most_about_max_bytes_spread_over_the_text(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text(_bpe_text(20000, 33), encoding="utf-8")
    size, seen, merges = path.stat().st_size, [], {}
    for workers in (1, 3):
        merges[workers] = Tokenizer.train_file(str(path), 600, block_chars=500, num_workers=workers,
                                               max_bytes=size // 5, progress=lambda *a: seen.append(a)).merges
    counted = [done for stage, done, _ in seen if stage == "count"][-1]
    assert size // 10 < counted <= size // 5 + 500 and merges[1] == merges[3]  # every k-th block of ~500 bytes
    assert merges[1] != Tokenizer.train_file(str(path), 600, block_chars=500).merges


# ---- the command line ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--vocab_size=abc"], "--vocab_size must be a whole number, not 'abc'"),
    (["--out=/no/such/folder/t.json"], "cannot save to /no/such/folder/t.json: the folder"),
    (["DIRECTORY"], "is a directory; give a UTF-8 text file"),
    (["--vocab_size=²"], "--vocab_size must be a whole number, not '²'"),  # a digit to isdigit(), not to int()
    (["--out=TEXT"], "is the text file to train on, which saving would overwrite"),
    (["--out=FOLDER"], "is not a file name"),
    (["--out=FOLDER/"], "is not a file name"),
    (["--out="], "is not a file name"),
], ids=["vocab-size-not-a-number", "out-in-no-folder", "text-is-a-folder", "vocab-size-superscript",
        "out-over-the-text", "out-is-a-folder", "out-is-a-folder-slash", "out-empty"])
def test_bpe_command_line_mistakes_are_one_sentence_before_any_training(tmp_path, args, message):
    text = tmp_path / "text.txt"
    text.write_text("hello world\n")
    files = [str(tmp_path)] if args == ["DIRECTORY"] else [str(text)]
    args = [a.replace("TEXT", str(text)).replace("FOLDER", str(tmp_path)) for a in args if a != "DIRECTORY"]
    result = run_script("bpe.py", [*files, *args], check=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert text.read_text() == "hello world\n" and sorted(os.listdir(tmp_path)) == ["text.txt"]  # nothing written


def test_bpe_copied_alone_imports_with_the_standard_library_only(tmp_path):
    assert libraries_loaded_alone(tmp_path, "bpe", ["bpe.py"]) == []


# ====================================================================================================
# prepare.py: text to token ids on disk
# ====================================================================================================

def prepare_args(run_dir, corpus, **overrides):
    """prepare.py's settings for a tiny run, as tiny_args gives them to pretrain.py."""
    settings = dict(data_path=corpus, cache_dir=run_dir / "cache", vocab_size=300)
    settings.update(overrides)
    return [f"--{k}={v}" for k, v in settings.items()]


def test_prepare_settings_are_pretrains_data_settings_with_its_defaults():
    import prepare
    import pretrain
    for name in ("data_path", "cache_dir", "vocab_size", "val_fraction", "data_extensions", "skip_bad_files",
                 "tokenizer_max_bytes"):
        assert getattr(prepare, name) == getattr(pretrain, name), name


def test_prepare_runs_beside_bpe_and_configurator_without_torch(tmp_path):
    assert libraries_loaded_alone(tmp_path, "prepare", ["prepare.py", "bpe.py", "configurator.py"]) == []


@pytest.mark.parametrize("separator", ["\n", "<|endoftext|>", " "], ids=["newline", "end-token", "space"])
def test_prepare_holds_out_the_last_tenth_of_the_bytes_cut_after_a_line_or_document(tmp_path, separator):
    """The training and validation texts are the corpus cut in two, just after the first newline or separator past
    90% of its bytes; without either, at the first character there (the corpus has multi-byte characters)."""
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, n_words=3000)
    corpus.write_text(separator.join(corpus.read_text(encoding="utf-8").split("\n")), encoding="utf-8")
    run_script("prepare.py", prepare_args(tmp_path, corpus))
    tokenizer = Tokenizer.load(next((tmp_path / "cache").glob("*-v300.json")))  # the splits are what their ids spell
    train, val = (tokenizer.decode_bytes(np.fromfile(next((tmp_path / "cache").glob(f"*-{split}.uint16")), "<u2"))
                  for split in ("train", "val"))
    data = corpus.read_bytes()
    assert train + val == data and int(len(data) * 0.9) <= len(train) < int(len(data) * 0.9) + 200
    if separator != " ":
        assert train.endswith(separator.encode()) and separator.encode() not in train[int(len(data) * 0.9):-1]
    val.decode("utf-8")  # a whole number of characters


def test_prepare_tokenizer_never_sees_the_validation_text(tmp_path):
    """A word that occurs only in the last tenth, hundreds of times, gets no token of its own: the tokenizer learns
    its merges from the training text alone, so the held-out bits per byte are not flattered."""
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, n_words=3000)
    text = corpus.read_text(encoding="utf-8")
    corpus.write_text(text + "\n" + " zebrafish." * (len(text) // 60), encoding="utf-8")
    run_script("prepare.py", prepare_args(tmp_path, corpus))
    tokenizer = Tokenizer.load(next((tmp_path / "cache").glob("*-v300.json")))
    assert len(tokenizer.encode(" zebrafish")) > 3
    assert b" zebrafish" not in {tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)}


def test_prepare_corpus_separator_is_the_end_token_and_nothing_else_is(tmp_path):
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, n_words=3000)
    documents = corpus.read_text(encoding="utf-8").split("\n")
    corpus.write_text("<|endoftext|>".join(documents), encoding="utf-8")
    run_script("prepare.py", prepare_args(tmp_path, corpus))
    tokenizer = Tokenizer.load(next((tmp_path / "cache").glob("*-v300.json")))
    ids = [i for split in ("train", "val")
           for i in np.fromfile(next((tmp_path / "cache").glob(f"*-{split}.uint16")), dtype="<u2").tolist()]
    special_ids = set(tokenizer.special_tokens.values())
    assert [i for i in ids if i in special_ids] == [tokenizer.special_tokens["<|endoftext|>"]] * (len(documents) - 1)


def test_prepare_downloads_two_urls_with_the_same_file_name_to_two_files(tmp_path):
    import http.server
    import threading
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / "site" / name).mkdir(parents=True)
        make_corpus(tmp_path / "site" / name / "input.txt", n_words=3000, seed=seed)
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("a", "b"):
            url = f"http://127.0.0.1:{server.server_address[1]}/{name}/input.txt"
            run_script("prepare.py", prepare_args(tmp_path, url))
    finally:
        server.shutdown()
    downloads = sorted((tmp_path / "cache").glob("*input.txt"))
    assert [p.read_bytes() for p in downloads] in ([(tmp_path / "site" / n / "input.txt").read_bytes() for n in ab]
                                                   for ab in (("a", "b"), ("b", "a")))


def test_prepare_alone_prepares_what_pretrain_then_finds_cached(tmp_path):
    """python prepare.py with a pretrain.py config file (whose other settings it skips) makes the split, the
    tokenizer and the ids, and says where; a following pretrain.py run trains and encodes nothing again."""
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, n_words=3000)
    for config in ("small.py", "gpt2_small.py"):  # gpt2_small.py's val_fraction set back to the default
        result = run_script("prepare.py", [os.path.join(REPO, "config", config),
                                           *prepare_args(tmp_path, corpus, val_fraction=0.1)])
        assert ("trained a tokenizer" in result.stdout) == (config == "small.py")
    cached = {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").iterdir()}
    # the tokenizer, the ids of each split and the corpus's hash, and no copy of its text
    assert len(cached) == 4 and all(str(path) in result.stdout for path in cached if path.name != "hashes.json")
    result = run_script("pretrain.py", tiny_args(tmp_path, corpus, max_iters=0))
    assert "trained a tokenizer" not in result.stdout and "encoded" not in result.stdout
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "cache").iterdir()} == cached


def test_prepare_refuses_a_setting_of_pretrain_alone_on_its_command_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, n_words=3000)
    result = run_script("prepare.py", [*prepare_args(tmp_path, corpus), "--max_iters=3"], check=False)
    assert result.returncode != 0 and "unknown setting 'max_iters' in the command line" in result.stderr


def test_prepare_file_that_is_not_utf8_is_one_sentence_and_leaves_nothing_in_the_cache(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait\n".encode("latin-1") * 50)
    result = run_script("prepare.py", prepare_args(tmp_path, path), check=False)
    assert result.returncode != 0 and "latin1.txt is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr and list((tmp_path / "cache").iterdir()) == []


# ---- at scale: folders, hashes kept, a waiting process -------------------------------------------

def _make_folder(folder, names):
    texts = {}
    for k, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        make_corpus(folder / name, n_words=500, seed=k)
        texts[name] = (folder / name).read_text(encoding="utf-8")
    return texts


def _split_texts(cache):
    tokenizer = Tokenizer.load(next(cache.glob("*-v300.json")))
    return [tokenizer.decode(_read_ids(next(cache.glob(f"*-{split}.uint16")))) for split in ("train", "val")]


def test_prepare_at_scale_a_folder_is_read_in_sorted_order_each_file_a_document_the_last_held_out(tmp_path):
    """Every level, sorted by name, only data_extensions, no hidden folder, no file twice, no endless link loop;
    <|endoftext|> between documents, so that two never fuse; the held-out part is the last whole files."""
    corpus = tmp_path / "corpus"
    texts = _make_folder(corpus, ["z.txt", "b/2.txt", "a.md", "b/1.py", "c/d/3.txt", ".hidden/4.txt"])
    (corpus / "notes.json").write_text('{"not": "text to learn"}')
    os.symlink(corpus, corpus / "c" / "loop")
    os.symlink(corpus / "a.md", corpus / "c" / "again.md")
    run_script("prepare.py", prepare_args(tmp_path, corpus, val_fraction=0.2))
    order = ["a.md", "b/1.py", "b/2.txt", "c/d/3.txt", "z.txt"]
    assert _split_texts(tmp_path / "cache") == ["<|endoftext|>".join(texts[n] for n in order[:-1]), texts["z.txt"]]
    assert not list((tmp_path / "cache").glob("*.txt"))  # the splits are read from the files, not copied


def test_prepare_at_scale_a_file_that_is_not_utf8_is_refused_by_name_or_left_out(tmp_path):
    corpus = tmp_path / "corpus"
    texts = _make_folder(corpus, ["1.txt", "3.txt"])
    (corpus / "2.txt").write_bytes("café au lait\n".encode("latin-1") * 50)
    result = run_script("prepare.py", prepare_args(tmp_path, corpus), check=False)
    assert result.returncode != 0 and "2.txt is not UTF-8 text" in result.stderr and "Traceback" not in result.stderr
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half made
    result = run_script("prepare.py", prepare_args(tmp_path, f"{corpus}/*.txt", skip_bad_files=True,
                                                   val_fraction=0.5))  # a glob, this time
    assert "left out" in result.stdout and "2.txt is not UTF-8 text" in result.stdout
    assert _split_texts(tmp_path / "cache") == [texts["1.txt"], texts["3.txt"]]
    result = run_script("prepare.py", prepare_args(tmp_path, f"{corpus}/*.txt", val_fraction=0.5), check=False)
    assert result.returncode != 0 and "2.txt is not UTF-8 text" in result.stderr  # left out once, not forever


def test_prepare_at_scale_each_file_is_hashed_once_and_a_change_is_noticed(tmp_path):
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, n_words=3000)
    assert "hashed 1 file" in run_script("prepare.py", prepare_args(tmp_path, corpus)).stdout
    again = run_script("prepare.py", prepare_args(tmp_path, corpus)).stdout
    assert "hashed" not in again and "trained" not in again and "encoded" not in again
    text = corpus.read_text(encoding="utf-8")
    corpus.write_text(text.replace("cat", "dog", 1), encoding="utf-8")  # the same size
    os.utime(corpus, ns=(corpus.stat().st_atime_ns, corpus.stat().st_mtime_ns + 10**9))
    changed = run_script("prepare.py", prepare_args(tmp_path, corpus)).stdout
    assert "hashed 1 file" in changed and "trained a tokenizer" in changed
    capped = run_script("prepare.py", prepare_args(tmp_path, corpus, tokenizer_max_bytes=5000)).stdout
    assert "from about 5,000 bytes of the text" in capped and "-v300-max5000.json" in capped  # another tokenizer


def test_prepare_at_scale_gpt2_small_asks_for_its_corpus_in_one_sentence(tmp_path):
    for script in ("prepare.py", "pretrain.py"):
        result = run_script(script, [os.path.join(REPO, "config", "gpt2_small.py"), f"--cache_dir={tmp_path}"],
                            check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert "data_path is empty; give the corpus with --data_path=FOLDER_OR_FILE_OR_URL" in result.stderr


def test_prepare_at_scale_a_waiting_process_stops_in_a_sentence_when_the_preparing_one_fails_or_ends(tmp_path):
    import prepare
    import socket
    import threading
    corpus, cache = tmp_path / "corpus.txt", tmp_path / "cache"
    make_corpus(corpus, n_words=200)
    marker, lock = tmp_path / "prepared.json", tmp_path / "preparing.json"
    wait = lambda: prepare.wait_for_data(str(marker), str(lock), str(corpus), ".txt", str(cache), poll_s=0.01)
    lock.write_text(json.dumps({"error": "corpus.txt is not UTF-8 text (byte 0xe9 ...)"}))
    with pytest.raises(SystemExit, match=r"the process preparing the data stopped: corpus\.txt is not UTF-8"):
        wait()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(ended.stdout)}))
    with pytest.raises(SystemExit, match=rf"the process preparing the data \(pid {int(ended.stdout)}\) ended"):
        wait()
    # a marker made from the file as it was is no answer; one made from it as it is, is
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    data = {"tokenizer_path": str(corpus), "ids_paths": {"train": str(corpus), "val": str(corpus)}}
    marker.write_text(json.dumps({"sources": [[str(corpus), 1, 1]], "data": data}))
    sources = prepare.source_stats(str(corpus), ".txt", str(cache))
    threading.Timer(0.3, lambda: marker.write_text(json.dumps({"sources": sources, "data": data}))).start()
    assert wait() == data


def test_prepare_at_scale_a_failed_launch_leaves_no_lock_file_after_the_next_one(tmp_path, monkeypatch):
    import prepare
    corpus, cache = tmp_path / "corpus.txt", tmp_path / "cache"
    corpus.write_bytes("café au lait\n".encode("latin-1") * 50)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "first")
    with pytest.raises(SystemExit, match="is not UTF-8 text"):
        prepare.prepare_once(str(corpus), str(cache), 300, 0.1)
    assert len(list(cache.glob("preparing-*.json"))) == 1  # it holds the sentence for the processes that wait
    make_corpus(corpus, n_words=2000)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "second")
    prepare.prepare_once(str(corpus), str(cache), 300, 0.1)
    assert not list(cache.glob("preparing-*.json"))


def test_prepare_at_scale_torchrun_trains_when_preparing_outlasts_the_process_group_timeout(tmp_path):
    """One process downloads and prepares, slowly, while the other waits on a file: with a process-group timeout of
    4 s, a rank waiting in a collective (a barrier) for the 8 s download would stop the run."""
    import http.server
    import threading
    (tmp_path / "site").mkdir()
    make_corpus(tmp_path / "site" / "input.txt", n_words=4000)

    class SlowHandler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            time.sleep(8)
            super().do_GET()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *args: SlowHandler(*args, directory=str(tmp_path / "site")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    try:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 os.path.join(REPO, "pretrain.py"),
                                 *tiny_args(tmp_path, url, max_iters=4, eval_interval=2, grad_accum_steps=2,
                                            dist_timeout_s=4)], capture_output=True, text=True, cwd=REPO, timeout=300)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    digests = {line.split()[1]: line.split()[-1] for line in result.stdout.splitlines() if "weights sha256" in line}
    assert len(digests) == 2 and len(set(digests.values())) == 1
    assert result.stdout.count("downloading") == 1 and len(list((tmp_path / "cache").glob("*input.txt"))) == 1


# ====================================================================================================
# pretrain.py: the pretraining loop, run end to end on a tiny corpus
# ====================================================================================================

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run folder, corpus): 30 steps of pretrain.py on a 12,000-word corpus, evaluated every 10, with dropout."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    corpus = run_dir / "corpus.txt"
    make_corpus(corpus)
    run_script("pretrain.py", tiny_args(run_dir, corpus, dropout=0.1))
    return run_dir, corpus


@pytest.fixture
def copied_run(tiny_run, tmp_path):
    """A copy of tiny_run's out_dir, for a test that changes it."""
    shutil.copytree(tiny_run[0] / "out", tmp_path / "out")
    return tmp_path / "out"


@pytest.fixture(scope="module")
def short_corpus(tmp_path_factory):
    """A 4,000-word corpus for the runs of a few steps; each test prepares it in a cache of its own."""
    corpus = tmp_path_factory.mktemp("short_corpus") / "corpus.txt"
    make_corpus(corpus, n_words=4000)
    return corpus


@pytest.mark.parametrize("override, message", [
    ("--eval_interval=0", "eval_interval must be at least 1, not 0"),
    ("--val_fraction=0", "val_fraction must be between 0 and 1, not 0.0"),
    ("--device=gpu", "device 'gpu' is not one of"),
    ("--data_path=MISSING", "nope.txt does not exist"),
    ("--data_path=LATIN1", "latin1.txt is not UTF-8 text"),
    ("--data_path=EMPTY", "is an empty file"),
    ("--data_path=DIRECTORY", "is a directory"),
    ("--n_heads=3", "d_model=32 must be divisible by n_heads=3"),  # before any data is read (there is none here)
    ("--beta2=1.0", "beta1 and beta2 in [0, 1)"),
    ("--muon_embedding_decay=-1", "learning_rate, weight_decay and muon_embedding_decay must be >= 0"),
    ("--optimizer=sgd", "optimizer must be 'auto', 'adamw' or 'muon', not 'sgd'"),
    ("--muon_momentum=1", "muon_momentum in [0, 1)"),
    ("--muon_momentum_warmup=-1", "muon_momentum_warmup must not be negative, not -1"),
], ids=["eval_interval-0", "val_fraction-0", "unknown-device", "missing-data", "data-not-utf8", "empty-data",
        "data-is-a-folder", "heads-not-dividing-d_model", "beta2-1", "negative-embedding-decay", "unknown-optimizer",
        "muon_momentum-1", "negative-momentum-warmup"])
def test_pretrain_settings_and_data_that_cannot_work_are_one_sentence(tmp_path, override, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 50)
    (tmp_path / "folder").mkdir()  # a folder is a corpus, but this one holds no text file
    for name, path in (("MISSING", "nope.txt"), ("LATIN1", "latin1.txt"), ("EMPTY", "empty.txt"),
                       ("DIRECTORY", "folder")):
        override = override.replace(name, str(tmp_path / path))
    result = run_script("pretrain.py", tiny_args(tmp_path, tmp_path / "corpus.txt") + [override], check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


# ---- a run: its loss, its log, its schedule, its checkpoint --------------------------------------

def test_pretrain_lowers_the_validation_loss(tiny_run):
    rows = read_log(tiny_run[0] / "out")
    assert [int(r["iter"]) for r in rows] == [0, 10, 20, 30]
    assert float(rows[-1]["val_loss"]) < 0.8 * float(rows[0]["val_loss"])


def test_pretrain_logs_the_validation_loss_in_bits_per_byte_of_the_validation_text(tiny_run):
    run_dir = tiny_run[0]
    rows = read_log(run_dir / "out")
    tokenizer = Tokenizer.load(run_dir / "out" / "tokenizer.json")
    val_ids = np.fromfile(next((run_dir / "cache").glob("*-val.uint16")), dtype="<u2").tolist()
    tokens_per_byte = len(val_ids) / len(tokenizer.decode_bytes(val_ids))
    for r in rows:
        assert float(r["val_bpb"]) == pytest.approx(float(r["val_loss"]) * tokens_per_byte / math.log(2), rel=1e-3)


def test_pretrain_learning_rate_warms_up_from_above_zero_holds_then_decays_to_the_floor(tiny_run):
    rows = read_log(tiny_run[0] / "out")  # 30 steps: the lr logged at step s is the one its last step used
    assert float(rows[0]["lr"]) == pytest.approx(3e-3 / 5)  # first step of a 5-step warm-up
    assert float(rows[1]["lr"]) == pytest.approx(3e-3)  # the peak holds until the last 40% of the steps
    assert float(rows[2]["lr"]) == pytest.approx(3e-3 * (0.1 + 0.9 * 10 / 12))  # 2 of the 12 decay steps taken
    assert float(rows[-1]["lr"]) == pytest.approx(3e-4)  # min_lr_ratio 0.1 at the end


def test_pretrain_checkpoint_holds_weights_optimizer_config_and_rng(tiny_run):
    checkpoint = load_checkpoint(tiny_run[0] / "out" / "ckpt.pt", map_location="cpu")
    assert checkpoint["iter_num"] == 30 and checkpoint["kind"] == "pretrain"
    assert checkpoint["model_config"]["d_model"] == 32 and checkpoint["model_config"]["dropout"] == 0.1
    assert checkpoint["config"]["batch_size"] == 8
    assert checkpoint["optimizer_name"] in ("adamw", "muon") and set(checkpoint["rng"]) == {"torch", "cuda", "data"}
    assert all(state["state"] for state in checkpoint["optimizer_states"])  # every optimizer's moments are there
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in checkpoint["model"])
    assert os.path.exists(tiny_run[0] / "out" / "tokenizer.json")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_pretrain_a_few_steps_with_each_optimizer_beat_the_untrained_model(tmp_path, short_corpus, optimizer):
    result = run_script("pretrain.py", tiny_args(tmp_path, short_corpus, optimizer=optimizer, max_iters=20,
                                                 eval_interval=20))
    assert f", {optimizer}; MFU against" in result.stdout  # the run says which optimizer it uses
    untrained, trained = read_log(tmp_path / "out")
    assert float(trained["val_loss"]) < float(untrained["val_loss"]) - 1.0  # nats per token


def test_pretrain_muon_momentum_warms_up_linearly_from_085(tmp_path, short_corpus):
    run_script("pretrain.py", tiny_args(tmp_path, short_corpus, optimizer="muon", max_iters=4, eval_interval=4,
                                        muon_momentum_warmup=8))
    adamw_state, muon_state = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["optimizer_states"]
    assert muon_state["param_groups"][0]["momentum"] == pytest.approx(0.95 - 0.10 * (1 - 3 / 8))  # the last step's


def test_pretrain_every_training_setting_changes_the_trained_weights(tmp_path, short_corpus):
    """No setting is read and then ignored: changing any one of them alone changes the weights after 4 steps, while
    a control run with the base settings gives the base weights again."""
    variants = {"optimizer": "adamw", "muon_lr": 0.05, "muon_momentum": 0.5,
                "muon_momentum_warmup": 0, "learning_rate": 1e-3, "min_lr_ratio": 0.5,
                "cooldown_fraction": 1.0, "warmup_iters": 1, "lr_decay_iters": 3,
                "weight_decay": 0.5, "muon_embedding_decay": 0.5, "beta1": 0.5, "beta2": 0.5, "grad_clip": 0.01,
                "grad_accum_steps": 2, "batch_size": 4, "dropout": 0.1, "seed": 1, "max_seq_len": 16,
                "val_fraction": 0.3, "dtype": NOT_AUTO_DTYPE, "bias": False, "n_epochs": 0.01, "control": None}
    adamw_only = {"weight_decay"}  # it decays AdamW's block matrices, which Muon takes in the base run

    def args(name, value=None):
        overrides = dict(max_iters=4, eval_interval=4, eval_iters=1, warmup_iters=2, cache_dir=tmp_path / "cache",
                         optimizer="adamw" if name in adamw_only else "muon")
        return tiny_args(tmp_path / name, short_corpus,
                         **{**overrides, **({name: value} if value is not None else {})})
    run_script_many_times("pretrain.py", [args("base")] + [args(name, value) for name, value in variants.items()])
    for name in variants:
        # the 'optimizer' run is the base run with AdamW
        base = load_checkpoint(tmp_path / ("optimizer" if name in adamw_only else "base") / "out" / "ckpt.pt")["model"]
        weights = load_checkpoint(tmp_path / name / "out" / "ckpt.pt")["model"]
        changed = weights.keys() != base.keys() or any(not torch.equal(weights[k], base[k]) for k in base)
        assert changed != (name == "control"), f"{name}: {'changed' if changed else 'no effect'}"


def test_pretrain_compiled_trains_like_eager_and_saves_the_plain_modules_weights(tmp_path, short_corpus):
    """compile=True (torch.compile; on CPU inductor needs a C++ compiler, which this machine image has) gives the
    losses of the eager run, and its checkpoint loads into an uncompiled GPT (no _orig_mod. prefix)."""
    common = dict(max_iters=6, eval_interval=3, eval_iters=2, cache_dir=tmp_path / "cache", dtype="float32")
    traced = {**os.environ, "TORCH_LOGS": "graph_code"}  # torch prints each graph it compiles
    runs = [[os.path.join(REPO, "pretrain.py"), *tiny_args(tmp_path / name, short_corpus, **common, compile=compile_)]
            for name, compile_ in (("eager", False), ("compiled", True))]
    eager_run, compiled_run = run_side_by_side(*runs, env=traced)
    assert "TRACED GRAPH" not in eager_run.stderr and "TRACED GRAPH" in compiled_run.stderr
    eager, compiled = read_log(tmp_path / "eager" / "out"), read_log(tmp_path / "compiled" / "out")
    assert [r["iter"] for r in compiled] == ["0", "3", "6"]
    for a, b in zip(eager, compiled):  # fused kernels round differently, so close rather than equal
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-3)
    load_model(tmp_path / "compiled" / "out" / "ckpt.pt")  # strict: every key is the plain module's


# ---- resuming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_pretrain_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, short_corpus, optimizer):
    common = dict(dropout=0.1, max_iters=16, eval_interval=4, lr_decay_iters=16, optimizer=optimizer)
    run_side_by_side(in_one_process("pretrain.py", tiny_args(tmp_path / "a", short_corpus, **common)),
                     in_one_process("pretrain.py", tiny_args(tmp_path / "b", short_corpus, **{**common, "max_iters": 10}),
                                    tiny_args(tmp_path / "b", short_corpus, **common, init_from="resume")))
    a = torch.load(tmp_path / "a" / "out" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "out" / "ckpt.pt", weights_only=True)
    assert a["iter_num"] == b["iter_num"] == 16
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):  # momenta too
        for index, moments in state_a["state"].items():
            for key, value in moments.items():
                assert torch.equal(value, state_b["state"][index][key]), (index, key)


def test_pretrain_resume_takes_the_weight_decay_given_on_its_command_line(tiny_run, tmp_path):
    run_dir, corpus = tiny_run
    for decay in ("same", "other"):
        shutil.copytree(run_dir / "out", tmp_path / decay)
    saved = load_checkpoint(run_dir / "out" / "ckpt.pt")
    more = saved["iter_num"] + 5
    script = os.path.join(REPO, "pretrain.py")
    run_side_by_side([script, *tiny_args(run_dir, corpus, out_dir=tmp_path / "same", init_from="resume", dropout=0.1,
                                         max_iters=more)],
                     [script, *tiny_args(run_dir, corpus, out_dir=tmp_path / "other", init_from="resume", dropout=0.1,
                                         max_iters=more, weight_decay=0.9, muon_embedding_decay=9.0)])
    same, other = (load_checkpoint(tmp_path / decay / "ckpt.pt") for decay in ("same", "other"))

    def decays(checkpoint):
        return {group["weight_decay"] for state in checkpoint["optimizer_states"] for group in state["param_groups"]}
    assert decays(other) & {0.9, 9.0} and not decays(same) & {0.9, 9.0}
    assert any(not torch.equal(same["model"][k], other["model"][k]) for k in same["model"])


@pytest.mark.parametrize("overrides, message", [
    (dict(d_model=48), "d_model=32 but the settings give 48"),
    (dict(dropout=0.1, val_fraction=0.2), "was trained with val_fraction=0.1, not 0.2"),
    (dict(dropout=0.1, optimizer="OTHER"), "was trained with optimizer 'SAVED', not 'OTHER'"),
    (dict(dropout=0.1, data_path="ANOTHER CORPUS"), "was trained with another tokenizer"),
], ids=["another-shape", "another-validation-split", "another-optimizer", "another-tokenizer"])
def test_pretrain_resume_refuses_other_settings_or_data_in_one_sentence(tiny_run, tmp_path, overrides, message):
    run_dir, corpus = tiny_run
    saved_optimizer = load_checkpoint(run_dir / "out" / "ckpt.pt")["optimizer_name"]
    other_optimizer = "muon" if saved_optimizer == "adamw" else "adamw"
    make_corpus(tmp_path / "other.txt", seed=1)
    placeholders = {"OTHER": other_optimizer, "ANOTHER CORPUS": tmp_path / "other.txt"}
    overrides = {name: placeholders.get(value, value) for name, value in overrides.items()}
    message = message.replace("SAVED", saved_optimizer).replace("OTHER", other_optimizer)
    # a cache of its own: the run prepares its data before it reads the checkpoint
    result = run_script("pretrain.py", tiny_args(run_dir, corpus, init_from="resume", cache_dir=tmp_path / "cache",
                                                 **overrides), check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def without_the_last_parameter_group(checkpoint):
    """As an older pretrain.py, with a group fewer, saved it."""
    checkpoint["optimizer_states"][-1]["param_groups"].pop()
    return checkpoint


@pytest.mark.parametrize("alter, message", [
    (lambda checkpoint: {**checkpoint, "kind": "finetune"}, "is a finetune checkpoint, not pretrain.py's"),
    (without_the_last_parameter_group, "optimizer state does not fit this pretrain.py's parameter groups"),
], ids=["fine-tuning-checkpoint", "older-optimizer-state"])
def test_pretrain_resume_refuses_a_checkpoint_it_cannot_continue_in_one_sentence(tiny_run, copied_run, alter, message):
    run_dir, corpus = tiny_run
    save_checkpoint(alter(load_checkpoint(copied_run / "ckpt.pt")), copied_run / "ckpt.pt")
    result = run_script("pretrain.py", tiny_args(run_dir, corpus, out_dir=copied_run, init_from="resume", dropout=0.1),
                        check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_pretrain_new_run_that_saves_nothing_leaves_the_previous_checkpoint_and_tokenizer_together(tiny_run, copied_run,
                                                                                                  tmp_path):
    run_dir, corpus = tiny_run
    before = (copied_run / "tokenizer.json").read_bytes()
    result = run_script("pretrain.py", tiny_args(run_dir, corpus, out_dir=copied_run, cache_dir=tmp_path / "cache",
                                                 vocab_size=310, max_iters=0))
    assert "nothing saved" in result.stdout
    assert (copied_run / "tokenizer.json").read_bytes() == before  # still the one ckpt.pt was trained with
    run_script("sample.py", [f"--out_dir={copied_run}", "--start=the", "--max_new_tokens=5"])


# ---- stopping: Ctrl-C, a loss that is not finite -------------------------------------------------

def test_pretrain_ctrl_c_saves_a_checkpoint_exits_cleanly_and_the_resume_misses_no_evaluation(tmp_path, short_corpus):
    out_dir = tmp_path / "out"
    every_step = dict(eval_interval=1, eval_iters=1)  # so that Ctrl-C always lands on a step that is due an evaluation
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "pretrain.py"),
                                *tiny_args(tmp_path, short_corpus, max_iters=100000, **every_step)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(out_dir / "log.csv") and time.time() < deadline:  # the loop has started
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    stopped = torch.load(out_dir / "ckpt.pt", weights_only=True)["iter_num"]
    assert stopped > 0 and f"interrupted at iteration {stopped}; {out_dir / 'ckpt.pt'} holds it" in stderr + stdout
    run_script("pretrain.py", tiny_args(tmp_path, short_corpus, init_from="resume", max_iters=stopped + 2,
                                        **every_step))
    assert [int(row["iter"]) for row in read_log(out_dir)] == list(range(stopped + 3))  # each step, once


def test_pretrain_non_finite_loss_stops_with_a_sentence_and_keeps_the_last_checkpoint(tmp_path, short_corpus):
    run_script("pretrain.py", tiny_args(tmp_path, short_corpus, max_iters=10, eval_interval=10))
    checkpoint = tmp_path / "out" / "ckpt.pt"
    saved = checkpoint.read_bytes()
    result = run_script("pretrain.py", tiny_args(tmp_path, short_corpus, init_from="resume", learning_rate=1e30,
                                                 grad_clip=0), check=False)
    assert result.returncode == 1 and "the loss became nan" in result.stderr and "Traceback" not in result.stderr
    assert "ckpt.pt keeps iteration 10, the last good state" in result.stderr and checkpoint.read_bytes() == saved


COUNT_SYNCS = """
import runpy, sys, torch
item, syncs = torch.Tensor.item, [0]
def counted(tensor):  # .item() waits for the device: each call is a sync
    syncs[0] += 1
    return item(tensor)
torch.Tensor.item = counted
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("syncs", syncs[0])
"""


def test_pretrain_syncs_with_the_device_once_a_step_however_many_micro_steps_it_has(tmp_path, short_corpus):
    runs = [["-c", COUNT_SYNCS, os.path.join(REPO, "pretrain.py"),
             *tiny_args(tmp_path / str(accum), short_corpus, max_iters=6, eval_interval=6, grad_accum_steps=accum)]
            for accum in (1, 4)]
    syncs = [int(result.stdout.split("syncs")[-1]) for result in run_side_by_side(*runs)]
    assert syncs[0] == syncs[1] > 6  # the evaluations' and one a step; four micro-steps add none


# ---- torchrun ------------------------------------------------------------------------------------

def test_pretrain_under_torchrun_keeps_ranks_identical_and_resumes_bit_identically(tmp_path, short_corpus):
    def torchrun(run, **overrides):
        settings = dict(max_iters=6, eval_interval=3, grad_accum_steps=2, dropout=0.1, lr_decay_iters=6, optimizer="muon")
        args = tiny_args(tmp_path / run, short_corpus, **{**settings, **overrides})
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 os.path.join(REPO, "pretrain.py"), *args],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr
        digests = {line.split()[1].rstrip(":"): line.split()[-1]
                   for line in result.stdout.splitlines() if "weights sha256" in line}
        assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]  # the ranks agree
        return digests["0"]
    uninterrupted = torchrun("a")
    rank_rngs = load_checkpoint(tmp_path / "a" / "out" / "ckpt.pt")["rank_rngs"]
    for stream in ("torch", "data"):  # each rank draws its own dropout masks and data windows
        assert not torch.equal(rank_rngs[0][stream], rank_rngs[1][stream])
    torchrun("b", max_iters=3)
    assert torchrun("b", init_from="resume") == uninterrupted  # each rank resumed its own dropout and data streams


def test_pretrain_under_torchrun_an_error_ends_each_rank_with_its_sentence_not_an_abort(tmp_path, short_corpus):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             os.path.join(REPO, "pretrain.py"),
                             *tiny_args(tmp_path, short_corpus, grad_accum_steps=2, learning_rate=1e30, grad_clip=0)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode != 0 and "the loss became nan at iteration 1" in result.stderr
    assert "this run saved nothing" in result.stderr and "terminate called" not in result.stderr
    exit_codes = [line.split(":")[1].split()[0] for line in result.stderr.splitlines() if line.strip().startswith("exitcode")]
    # torchrun's summary of the failed ranks: status 1, or -15 for a rank it stopped after the first; never -6 (SIGABRT)
    assert "1" in exit_codes and set(exit_codes) <= {"1", "-15"}


# ====================================================================================================
# finetune.py: fine-tuning on rated answers
# ====================================================================================================

@pytest.fixture(scope="module")
def ft_tokenizer():
    """A tiny BPE that has learned 'hello' and ' world' as tokens, with the project's special tokens."""
    text = "hello world, hello world. def f(x):\n    return x + 1\n" * 50 + "Repeat the word cat dog sun. Go away.\n" * 20
    return Tokenizer.train(text, 300, SPECIAL_TOKENS)


def write_csv(path, rows, header=("prompt", "response", "rating"), encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def ft_rows(words=("cat", "dog", "sun", "hat", "pen", "cup", "box", "bee")):
    """Rated answers a tiny model can learn: a good one repeats the word, a bad one is rude."""
    rows = []
    for w in words:
        rows += [(f"Repeat {w}.", f"{w} {w} {w}", 5), (f"Repeat {w}.", w, 3), (f"Repeat {w}.", "Go away.", 1)]
    return rows


def read_csv_rows(path, **kwargs):
    """The rows of a CSV file as finetune.py reads and cleans them."""
    return finetune.clean_rows(finetune.read_rows(str(path)), str(path), **kwargs)


def pretrained_run(run_dir, tokenizer, max_seq_len=32):
    """A pretrain.py-style run directory: ckpt.pt (untrained weights) and the tokenizer file it names."""
    os.makedirs(run_dir, exist_ok=True)
    tokenizer.save(os.path.join(run_dir, "tokenizer.json"))
    config = GPTConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2, n_layers=2, d_ff=64,
                       max_seq_len=max_seq_len)
    torch.manual_seed(0)
    with open(os.path.join(run_dir, "tokenizer.json"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    save_checkpoint({"kind": "pretrain", "model": GPT(config).state_dict(), "model_config": dataclasses.asdict(config),
                     "tokenizer_path": "tokenizer.json", "tokenizer_sha256": sha, "iter_num": 0},
                    os.path.join(run_dir, "ckpt.pt"))
    return str(run_dir)


def run_finetune(args, check=True, env=None):
    result = subprocess.run([sys.executable, os.path.join(REPO, "finetune.py"), *args], capture_output=True,
                            text=True, cwd=REPO, timeout=300, env=env and {**os.environ, **env})
    if check and result.returncode != 0:
        raise AssertionError(f"finetune.py failed:\n{result.stdout}\n{result.stderr}")
    return result


def ft_args(run_dir, out, **overrides):
    """finetune.py's settings: from the pretrained run run_dir/out on run_dir/d.csv, into out_dir run_dir/out (a
    name in run_dir, or a path of its own)."""
    # AdamW unless a test asks for Muon: the same optimizer on every CPU, and the one the margins below were measured with
    settings = dict(init_from=run_dir / "out", data_path=run_dir / "d.csv", out_dir=run_dir / out, max_iters=8,
                    eval_interval=4, batch_size=4, warmup_iters=2, device="cpu", optimizer="adamw")
    settings.update(overrides)
    return [f"--{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def ft_base(tmp_path_factory, ft_tokenizer):
    """What ft_args starts from: out/, a pretrained run (untrained weights, ft_tokenizer), and d.csv, ft_rows().
    Tests write their runs elsewhere (ft_args(ft_base, tmp_path / name)) and never change these two."""
    base = tmp_path_factory.mktemp("ft_base")
    pretrained_run(base / "out", ft_tokenizer)
    write_csv(base / "d.csv", ft_rows())
    return base


@pytest.fixture(scope="module")
def ft_trained(tmp_path_factory, ft_base):
    """Four steps of finetune.py from ft_base (filter mode, AdamW), for the tests that resume a copy of it."""
    out = tmp_path_factory.mktemp("ft_trained") / "a"
    run_finetune(ft_args(ft_base, out, max_iters=4))
    return out


@pytest.fixture(scope="module")
def ft_condition_run(tmp_path_factory, ft_base):
    """Four steps of finetune.py from ft_base in condition mode."""
    out = tmp_path_factory.mktemp("ft_condition") / "c"
    run_finetune(ft_args(ft_base, out, rating_mode="condition", max_iters=4, eval_interval=4))
    return out


# ---- the default data: data/fine_tune_data.csv and its checks ------------------------------------

def fine_tune_data_generator():
    spec = importlib.util.spec_from_file_location("make_fine_tune_data", os.path.join(REPO, "data", "make_fine_tune_data.py"))
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


def test_finetune_default_data_is_what_its_generator_writes_and_has_the_promised_shape():
    generator = fine_tune_data_generator()
    generator.check()  # every good function passes its checks, every wrong one fails one, every stated fact is evaluated
    df = read_csv_rows(os.path.join(REPO, "data", "fine_tune_data.csv"))
    assert list(df.itertuples(index=False, name=None)) == [(p, r.strip(), k) for p, r, k in generator.make_rows()]
    with open(os.path.join(REPO, "data", "fine_tune_checks.json"), encoding="utf-8") as f:
        assert json.load(f) == generator.checks_by_prompt()
    per_prompt = df.groupby("prompt", sort=False)["rating"].agg(list)
    assert len(per_prompt) >= 100
    assert all(2 <= len(ratings) <= 4 and len(set(ratings)) == len(ratings) for ratings in per_prompt)
    assert set(df["rating"]) == {1, 2, 3, 4, 5}


def test_finetune_default_checks_pass_every_5_rated_answer_and_fail_every_answer_rated_1_or_2():
    """Run in sandbox.py, as fine-tuned answers are: every candidate answer the generator writes for a
    prompt with checks, and every row of the CSV for one."""
    generator = fine_tune_data_generator()
    checks = generator.checks_by_prompt()
    rng = random.Random(0)
    unhelpful = generator.cycle_shuffled(generator.RUDE + generator.OFF_TOPIC, rng)
    answers = [(prompt, response, rating) for prompt, response, rating in generator.make_rows() if prompt in checks]
    for task in generator.DEFS:
        prompt, by_rating = generator.answers_for("def", task, rng, unhelpful)
        answers += [(prompt, response, rating) for rating in (1, 2, 5) for response in by_rating[rating]]
    answers = list(dict.fromkeys(answers))  # the CSV repeats some candidates
    passed = sandbox.run_checks([(response, checks[prompt]) for prompt, response, _ in answers], 2.0, 512)
    good = [ok for (_, _, rating), ok in zip(answers, passed) if rating == 5]
    bad = [(response, ok) for (_, response, rating), ok in zip(answers, passed) if rating <= 2]
    assert len(good) == len(checks) and all(good)  # one 5-rated answer a prompt
    assert sum(sandbox.defines_function(response) for response, _ in bad) > len(checks)  # many wrong ones are code
    assert not any(ok for _, ok in bad), [response for response, ok in bad if ok][:3]


# ---- reading the CSV -----------------------------------------------------------------------------

def test_finetune_reads_bom_quoted_commas_newlines_extra_columns_and_whitespace(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes('\ufeff prompt , response ,rating, note\n'
                     '  "How, exactly?" , "def f():\n    return 1, 2" , 5 ,x\n'
                     'What is None?,None, 4.0,\n'.encode("utf-8"))
    df = read_csv_rows(path)
    assert list(df.columns) == ["prompt", "response", "rating"]
    assert df.values.tolist() == [["How, exactly?", "def f():\n    return 1, 2", 5], ["What is None?", "None", 4]]


HEADER = ("prompt", "response", "rating")


@pytest.mark.parametrize("name, content, message", [
    ("nope.csv", None, r"data_path .*nope.csv does not exist; give a CSV file"),
    ("d.csv", [("question", "response"), ("a", "b")], r"has no column prompt, rating \(found: question, response\)"),
    ("empty.csv", "", "empty.csv is empty"),
    ("header.csv", [HEADER], "header.csv is empty; it has a header but no rows"),
    ("d.csv", [HEADER, ("a", "x", 5), ("b", "y", "good"), ("c", "z", 4), ("d", "w", 7), ("e", "v", 4.5)],
     r"3 rows have a rating that is not a whole number from 1 to 5 \(row 3, 5, 6; the header is row 1\); fix them "
     r"or set skip_bad_rows=True"),
    # row numbers count blank lines, as a spreadsheet shows them: c is row 5
    ("d.csv", 'prompt,response,rating\na,x,5\n\nb,"two\nlines",4\nc,y,good\n', r"1 row has a rating .* \(row 5;"),
    ("d.csv", [HEADER, ("a", "x", 5), ("  ", "y", 3), ("c", "", 4)], r"2 rows have an empty prompt or response \(row 3, 4;"),
    ("d.csv", [HEADER, ("only one prompt", "x", 5), ("only one prompt", "y", 1)],
     "has 2 usable rows with 1 distinct prompt after cleaning; at least 2"),
], ids=["missing-file", "missing-columns", "empty-file", "header-only", "bad-ratings", "row-numbers-count-blank-lines",
        "empty-prompt-or-response", "too-few-prompts-to-split"])
def test_finetune_csv_mistakes_are_one_sentence_giving_the_rows(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        write_csv(path, content[1:], header=content[0])
    with pytest.raises(SystemExit, match=message):
        finetune.split_by_prompt(read_csv_rows(path), 0.2, 0, str(path))


def test_finetune_skip_bad_rows_skips_them_and_says_how_many(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", [("a", "x", 5), ("b", "y", "bad"), ("", "z", 4), ("d", "w", 2)])
    df = read_csv_rows(path, skip_bad_rows=True)
    assert df["prompt"].tolist() == ["a", "d"] and df["rating"].tolist() == [5, 2]
    assert "skipped 2 of 4 rows" in capsys.readouterr().out


def test_finetune_split_holds_out_whole_prompts():
    train, val = finetune.split_by_prompt(finetune.pd.DataFrame(ft_rows(), columns=["prompt", "response", "rating"]),
                                          0.25, 0)
    assert not set(train["prompt"]) & set(val["prompt"]) and val["prompt"].nunique() == 2


# ---- one row to token ids: the template, the mask, the cut ---------------------------------------

def test_finetune_loss_mask_is_exactly_the_response_and_end_token(ft_tokenizer):
    special = ft_tokenizer.special_tokens
    example = finetune.encode_row(ft_tokenizer, "Repeat cat.", "cat cat", 5, condition=False)
    x, y, cut = finetune.join(example.prefix, example.prompt_ids, example.reply, max_seq_len=64)
    prompt_ids, response_ids = ft_tokenizer.encode("Repeat cat."), ft_tokenizer.encode("cat cat")
    assert x == [special["<|prompt|>"]] + prompt_ids + [special["<|response|>"]] + response_ids and cut == 0
    r = x.index(special["<|response|>"])
    assert y[r] == response_ids[0]  # the first response token is learned, at the <|response|> position
    assert y[:r] == [-1] * r and y[r:] == response_ids + [special["<|endoftext|>"]]
    # in condition mode the rating token goes first and is never a target
    example = finetune.encode_row(ft_tokenizer, "Repeat cat.", "cat cat", 2, condition=True)
    x2, y2, _ = finetune.join(example.prefix, example.prompt_ids, example.reply, max_seq_len=64)
    assert x2[0] == special["<|rating_2|>"] and x2[1:] == x and y2 == [-1] + y
    # padding is ignored by the loss
    xb, yb = finetune.collate([(x, y), (x[:3], y[:3])], pad_id=0, device="cpu")
    assert xb.shape == yb.shape == (2, len(x)) and (yb[1, 3:] == -1).all()


def test_finetune_boundary_is_exact_where_bpe_would_merge_across_the_join(ft_tokenizer):
    prompt, response = "Say hell", "o world"
    joined = ft_tokenizer.encode(prompt + response)  # 'hello' is one token here, so the naive split is wrong
    assert joined[:len(ft_tokenizer.encode(prompt))] != ft_tokenizer.encode(prompt)
    example = finetune.encode_row(ft_tokenizer, prompt, response, 5, condition=False)
    x, y, _ = finetune.join(example.prefix, example.prompt_ids, example.reply, max_seq_len=64)
    targets = [t for t in y if t != -1]
    assert targets[:-1] == ft_tokenizer.encode(response) and ft_tokenizer.decode(targets[:-1]) == response
    assert ft_tokenizer.decode(x[1:x.index(ft_tokenizer.special_tokens["<|response|>"])]) == prompt


def test_finetune_long_prompt_is_cut_from_the_left_and_keeps_the_end_token(ft_tokenizer):
    special = ft_tokenizer.special_tokens
    prompt = " ".join(f"word{i}" for i in range(40))
    example = finetune.encode_row(ft_tokenizer, prompt, "cat", 5, condition=False)
    x, y, cut = finetune.join(example.prefix, example.prompt_ids, example.reply, max_seq_len=20)
    assert len(x) == 20 and cut == len(example.prompt_ids) - (20 - 1 - len(example.reply) + 1)
    assert x[1:x.index(special["<|response|>"])] == example.prompt_ids[cut:]  # the prompt's end survives
    assert y[-1] == special["<|endoftext|>"]
    df = finetune.training_rows(finetune.pd.DataFrame({"prompt": [prompt, "hi", "hi"], "response": ["cat", "x " * 60, "ok"],
                                                       "rating": [5, 4, 3]}), "weight", 4)
    examples, n_cut, n_long = finetune.prepare(ft_tokenizer, df, "weight", max_seq_len=20)
    assert (len(examples), n_cut, n_long) == (2, 1, 1)  # a response that cannot fit is skipped, not cut


def test_finetune_special_token_text_in_a_prompt_or_response_stays_plain_text(ft_tokenizer):
    example = finetune.encode_row(ft_tokenizer, "say <|endoftext|> <|rating_5|>", "<|response|> hi", 1, condition=True)
    special_ids = set(ft_tokenizer.special_tokens.values())
    assert not special_ids & set(example.prompt_ids) and not special_ids & set(example.reply[1:-1])
    assert example.prefix == [ft_tokenizer.special_tokens[t] for t in ("<|rating_1|>", "<|prompt|>")]


# ---- the rating modes: their rows and their losses -----------------------------------------------

def test_finetune_weight_and_filter_modes_do_what_they_say(tmp_path):
    df = read_csv_rows(write_csv(tmp_path / "d.csv", [("a", "x", 1), ("a", "y", 3), ("b", "z", 5), ("b", "w", 4)]))
    weighted = finetune.training_rows(df, "weight", 4)
    assert weighted["weight"].tolist() == [0.2, 0.6, 1.0, 0.8]
    assert finetune.training_rows(df, "filter", 4)["response"].tolist() == ["z", "w"]
    assert finetune.training_rows(df, "filter", 5)["response"].tolist() == ["z"]
    kto = finetune.training_rows(df, "kto", 4)
    assert kto["response"].tolist() == ["x", "z", "w"] and kto["desirable"].tolist() == [False, True, True]
    assert finetune.training_rows(df, "condition", 4)["weight"].tolist() == [1.0] * 4
    # the weighted loss scales each row's token losses by its weight, averaged over all response tokens
    logprobs, n_tokens = torch.tensor([-2.0, -6.0]), torch.tensor([2, 3])
    loss = finetune.weighted_loss(logprobs, n_tokens, torch.tensor([0.2, 1.0]))
    assert loss.item() == pytest.approx((0.2 * 2.0 + 1.0 * 6.0) / 5)


def test_finetune_kto_loss_matches_a_hand_computed_value():
    logprobs = torch.tensor([-10.0, -12.0, -8.0], requires_grad=True)
    ref_logprobs = torch.tensor([-11.0, -11.5, -9.0])
    kl_logprobs, kl_ref_logprobs = torch.tensor([-20.0, -18.0, -15.0]), torch.tensor([-21.0, -18.5, -15.0])
    desirable = torch.tensor([True, False, True])
    beta, lambda_d, lambda_u = 0.5, 1.0, 1.5
    loss, z0 = finetune.kto_loss(logprobs, ref_logprobs, kl_logprobs, kl_ref_logprobs, desirable, beta, lambda_d,
                                 lambda_u)
    z = max(0.0, (1.0 + 0.5 + 0.0) / 3)  # mean log-ratio of the mismatched pairs
    sig = lambda v: 1 / (1 + math.exp(-v))
    expected = ((1.0 - 1.0 * sig(beta * (1.0 - z))) + (1.5 - 1.5 * sig(beta * (z - (-0.5))))
                + (1.0 - 1.0 * sig(beta * (1.0 - z)))) / 3
    assert z0.item() == pytest.approx(z) and loss.item() == pytest.approx(expected)
    loss.backward()  # desirable rows are pushed up, the undesirable one down; z0 carries no gradient
    assert logprobs.grad[0] < 0 and logprobs.grad[1] > 0 and logprobs.grad[2] < 0
    # the reference point is clamped at 0
    _, z0 = finetune.kto_loss(logprobs, ref_logprobs, kl_ref_logprobs, kl_logprobs, desirable, beta, 1.0, 1.0)
    assert z0.item() == 0.0


def test_finetune_contrast_loss_matches_a_hand_computed_value():
    logprobs = torch.tensor([-6.0, -10.0], requires_grad=True)  # each row under its own rating token
    contrast_logprobs = torch.tensor([-9.0, -8.0], requires_grad=True)  # the same rows under the contrasting one
    n_tokens, beta = torch.tensor([3, 5]), 2.0
    loss = finetune.contrast_loss(logprobs, contrast_logprobs, n_tokens, beta)
    gaps = [(-6.0 + 9.0) / 3, (-10.0 + 8.0) / 5]  # per token: 1.0 for the first row, -0.4 for the second
    expected = sum(math.log(1 + math.exp(-beta * gap)) for gap in gaps) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()  # each row is pushed up under its own rating and down under the contrasting one
    assert (logprobs.grad < 0).all() and (contrast_logprobs.grad > 0).all()
    assert [finetune.contrast_rating(r) for r in range(1, 6)] == [5, 5, 5, 5, 1]


def test_finetune_rank_loss_matches_a_hand_computed_value():
    logprobs = torch.tensor([-6.0, -10.0], requires_grad=True)  # two rows under <|rating_5|>
    rival_logprobs = torch.tensor([-9.0, -4.0], requires_grad=True)  # a rival answer to each row's prompt, under it too
    n_tokens, rival_n_tokens, beta = torch.tensor([3, 5]), torch.tensor([2, 4]), 2.0
    higher = torch.tensor([True, False])  # the first row is rated above its rival, the second below
    loss = finetune.rank_loss(logprobs, n_tokens, rival_logprobs, rival_n_tokens, higher, beta)
    margins = [-6.0 / 3 + 9.0 / 2, -(-10.0 / 5 + 4.0 / 4)]  # higher-rated minus lower-rated, per token: 2.5 and 1.0
    expected = sum(math.log(1 + math.exp(-beta * m)) for m in margins) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()  # the higher-rated answer of each pair goes up, the lower-rated one down
    assert logprobs.grad[0] < 0 < logprobs.grad[1] and rival_logprobs.grad[1] < 0 < rival_logprobs.grad[0]


def test_finetune_rivals_are_other_ratings_of_the_same_prompt_drawn_the_same_on_a_resume():
    rows = [finetune.Example([], [], [], rating, prompt) for prompt, rating in
            [("a", 5), ("a", 3), ("a", 1), ("b", 4), ("b", 2), ("c", 5)]]
    by_prompt = {}
    for e in rows:
        by_prompt.setdefault(e.prompt, []).append(e)
    draws = [finetune.rivals(rows, by_prompt, seed=1337, it=it) for it in range(20)]
    for chosen in draws:
        for e, rival in zip(rows, chosen):
            if e.prompt == "c":
                assert rival is None  # its prompt has no other answer
            else:
                assert rival.prompt == e.prompt and rival.rating != e.rating
    assert len({tuple(id(r) for r in chosen) for chosen in draws}) > 1  # each iteration draws anew
    assert finetune.rivals(rows, by_prompt, seed=1337, it=7) == draws[7]  # a resumed run's draw at iteration 7


def test_finetune_dpo_pairs_every_answer_with_every_lower_rated_answer_to_the_same_prompt():
    rows = [finetune.Example([], [], [], rating, prompt) for prompt, rating in
            [("a", 5), ("a", 3), ("a", 3), ("a", 1), ("b", 4), ("c", 2), ("c", 2), ("d", 1), ("d", 2)]]
    pairs, n_alone = finetune.preference_pairs(rows)
    assert [(chosen.prompt, chosen.rating, rejected.rating) for chosen, rejected in pairs] == [
        ("a", 5, 3), ("a", 5, 3), ("a", 5, 1), ("a", 3, 1), ("a", 3, 1), ("d", 2, 1)]
    assert all(chosen is not rejected for chosen, rejected in pairs)
    assert n_alone == 2  # b has one answer, c two equally rated ones


def test_finetune_dpo_loss_matches_a_hand_computed_value():
    chosen, rejected = torch.tensor([-10.0, -20.0], requires_grad=True), torch.tensor([-12.0, -15.0], requires_grad=True)
    ref_chosen, ref_rejected = torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -16.0])
    loss, chosen_rewards, rejected_rewards = finetune.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=0.5)
    assert chosen_rewards.tolist() == [0.5, -1.0] and rejected_rewards.tolist() == [-0.5, 0.5]  # 0.5 * (1, -2, -1, 1)
    margins = [0.5 - (-0.5), -1.0 - 0.5]
    assert loss.item() == pytest.approx(sum(math.log(1 + math.exp(-m)) for m in margins) / 2)
    loss.backward()  # chosen up, rejected down; hardest on the pair the model ranks the wrong way
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all() and chosen.grad[1] < chosen.grad[0]
    assert chosen.grad[0].item() == pytest.approx(-0.5 * 0.5 * (1 - 1 / (1 + math.exp(-1.0))))


def test_finetune_preference_score_counts_higher_rated_pairs():
    scored = [("p", 5, -1.0), ("p", 3, -2.0), ("p", 1, -0.5),  # 5>3 right, 5>1 wrong, 3>1 wrong
              ("q", 4, -1.0), ("q", 2, -1.0),                   # a tie counts half
              ("r", 5, -3.0)]                                   # one response: no pair
    examples = [finetune.Example([], [], [], rating, prompt) for prompt, rating, _ in scored]
    scores = [score for _, _, score in scored]
    score, by_pair = finetune.preference_score(examples, scores)
    assert score == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert by_pair == {"5>3": 1.0, "5>1": 0.0, "4>2": 0.5, "3>1": 0.0}
    assert list(by_pair) == ["5>3", "5>1", "4>2", "3>1"]  # the order log.csv lists them in
    assert finetune.preference_score(examples[-1:], scores[-1:]) == (None, {})


# ---- batches, log-probabilities, a few steps by hand ---------------------------------------------

def test_finetune_batches_cover_each_epoch_and_depend_only_on_the_iteration():
    seen = [i for it in range(5) for i in finetune.batch_indices(it, 10, 4, seed=1)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert finetune.batch_indices(3, 10, 4, seed=1) == seen[12:16]


def test_finetune_sequence_logprobs_equal_the_whole_logits_however_the_head_is_cut(monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=16))
    x, y = torch.randint(0, 300, (5, 16)), torch.randint(0, 300, (5, 16))
    y[:, :6] = -1  # prompts
    y[2, 9:] = -1  # padding
    logits, _ = model(x)
    expected = -F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction="none").sum(dim=1)
    for elements in (1 << 22, 300 * 7, 1):  # one piece; pieces of 7 positions; one position at a time
        monkeypatch.setattr(finetune, "HEAD_ELEMENTS", elements)
        logprobs, n_tokens = finetune.sequence_logprobs(model, x, y)
        assert torch.allclose(logprobs, expected, rtol=1e-5) and n_tokens.tolist() == [10, 10, 3, 10, 10]


def test_finetune_a_tiny_finetune_lowers_the_response_loss(ft_tokenizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=ft_tokenizer.vocab_size, d_model=32, n_heads=2, n_layers=2, d_ff=64,
                          max_seq_len=32))
    df = finetune.training_rows(finetune.pd.DataFrame(ft_rows(), columns=["prompt", "response", "rating"]),
                                "filter", 5)
    examples, _, _ = finetune.prepare(ft_tokenizer, df, "filter", 32)
    pad = ft_tokenizer.special_tokens["<|endoftext|>"]
    run = {"max_seq_len": 32, "pad_id": pad, "device": "cpu", "pad_to": None, "autocast": nullcontext(),
           "sample_prefix": None}
    before = finetune.evaluate(model, examples, run, 8)["loss_r5"]
    (optimizer,) = model.configure_optimizers("adamw", 1e-2, 0.0, (0.9, 0.99), "cpu")
    for it in range(40):
        batch = [examples[i] for i in finetune.batch_indices(it, len(examples), 4, seed=0)]
        x, y = finetune.collate([finetune.join(e.prefix, e.prompt_ids, e.reply, 32)[:2] for e in batch], pad, "cpu")
        logprobs, n_tokens = finetune.sequence_logprobs(model, x, y)
        finetune.weighted_loss(logprobs, n_tokens, torch.ones(len(batch))).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = finetune.evaluate(model, examples, run, 8)["loss_r5"]
    assert after < 0.5 * before


# ---- the pretrained run it starts from -----------------------------------------------------------

def test_finetune_refuses_the_pretrained_out_dir_and_a_missing_pretrained_run(tmp_path, ft_base):
    run_dir = str(ft_base / "out")
    path = finetune.resolve_init(run_dir, str(tmp_path / "out-finetune"))
    assert path == os.path.join(run_dir, "ckpt.pt")
    with pytest.raises(SystemExit, match="is the directory of the pretrained checkpoint .* choose another out_dir"):
        finetune.resolve_init(path, run_dir + "/.")
    with pytest.raises(SystemExit, match="no pretrained checkpoint at .*python pretrain.py"):
        finetune.resolve_init(str(tmp_path / "nowhere"), str(tmp_path / "x"))


def test_finetune_refuses_a_tokenizer_other_than_the_one_the_checkpoint_was_trained_with(tmp_path, ft_tokenizer):
    run_dir = pretrained_run(tmp_path / "out", ft_tokenizer)  # its own: its tokenizer is replaced
    path = os.path.join(run_dir, "ckpt.pt")
    checkpoint = load_checkpoint(path)
    assert finetune.checked_tokenizer_path(checkpoint, path) == os.path.join(run_dir, "tokenizer.json")
    Tokenizer.train("something else entirely " * 20, 270, SPECIAL_TOKENS).save(os.path.join(run_dir, "tokenizer.json"))
    with pytest.raises(SystemExit, match="is not the tokenizer .*ckpt.pt was trained with"):
        finetune.checked_tokenizer_path(checkpoint, path)


# ---- the script, end to end ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(dropout=1.0), "dropout must be in [0, 1), not 1.0"),
    (dict(learning_rate=-1), "learning_rate, muon_lr and weight_decay must be >= 0"),
    (dict(muon_lr=-1), "learning_rate, muon_lr and weight_decay must be >= 0"),
    (dict(optimizer="sgd"), "optimizer must be 'auto', 'adamw' or 'muon', not 'sgd'"),
    (dict(condition_beta=0), "condition_rank must be >= 0 and condition_beta > 0"),
    (dict(dpo_beta=0), "dpo_beta must be > 0 and dpo_sft >= 0"),
    (dict(), "missing.csv does not exist"),
    (dict(data_path="d.csv", out_dir="the pretrained run", max_iters=2), "must not overwrite"),
], ids=["dropout-1", "negative-learning-rate", "negative-muon-lr", "unknown-optimizer", "condition_beta-0",
        "dpo_beta-0", "missing-data", "out-dir-of-the-pretrained-run"])
def test_finetune_settings_and_paths_that_cannot_work_are_one_sentence_before_any_work(tmp_path, ft_base, overrides,
                                                                                       message):
    """Settings are checked before the data is read: the runs for them are given a data_path that does not exist."""
    shutil.copytree(ft_base, tmp_path, dirs_exist_ok=True)  # a copy: the last one names the pretrained run as out_dir
    overrides = {"data_path": tmp_path / "missing.csv", **overrides}
    overrides = {name: {"d.csv": tmp_path / "d.csv", "the pretrained run": tmp_path / "out"}.get(value, value)
                 for name, value in overrides.items()}
    result = run_finetune(ft_args(tmp_path, "ft", **overrides), check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


# each mode with a draw of its own (a reference, rivals), and Muon's state as well as AdamW's
@pytest.mark.parametrize("mode, optimizer", [("kto", "adamw"), ("condition", "adamw"), ("dpo", "muon")])
def test_finetune_script_logs_saves_and_resumes_bit_identically(tmp_path, ft_base, mode, optimizer):
    with open(ft_base / "out" / "ckpt.pt", "rb") as f:
        pretrained = f.read()
    common = dict(rating_mode=mode, optimizer=optimizer, dropout=0.1, lr_decay_iters=8)
    _, result = run_side_by_side(in_one_process("finetune.py", ft_args(ft_base, tmp_path / "a", **common)),
                                 in_one_process("finetune.py", ft_args(ft_base, tmp_path / "b", **common, max_iters=4),
                                                ft_args(ft_base, tmp_path / "b", **common, init_from="resume")))
    assert "resuming from" in result.stdout
    a, b = (load_checkpoint(tmp_path / run / "ckpt.pt") for run in ("a", "b"))
    assert a["iter_num"] == b["iter_num"] == 8
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["optimizer_name"] == optimizer and len(a["optimizer_states"]) == (2 if optimizer == "muon" else 1)
    for state_a, state_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):  # momenta too
        for k in state_a["state"]:
            for name, value in state_a["state"][k].items():
                assert torch.equal(value, state_b["state"][k][name]), (k, name)
    assert a["kind"] == "finetune" and a["rating_mode"] == mode and a["template"] == {
        "prompt": "<|prompt|>", "response": "<|response|>", "end": "<|endoftext|>",
        "rating_token": "<|rating_5|>" if mode == "condition" else None}
    log = read_log(tmp_path / "a")
    assert [r["iter"] for r in log] == ["0", "4", "8"] and all(0 <= float(r["pref_score"]) <= 1 for r in log)
    assert all(re.fullmatch(r"([1-5]>[1-5]=[01]\.\d{3} ?)+", r["pref_by_pair"]) for r in log)
    assert ("reward_margin" in log[0]) == (mode in ("kto", "dpo")) and (mode != "dpo" or log[-1]["reward_accuracy"])
    assert os.path.exists(tmp_path / "a" / "tokenizer.json")
    assert not os.path.exists(tmp_path / "a" / "answers.csv")  # model-written code runs only when asked for
    with open(ft_base / "out" / "ckpt.pt", "rb") as f:
        assert f.read() == pretrained  # the pretrained run is never written to


def test_finetune_condition_mode_saves_the_top_rating_template_and_the_pretrained_context(ft_condition_run):
    checkpoint = load_checkpoint(ft_condition_run / "ckpt.pt")
    assert checkpoint["template"]["rating_token"] == "<|rating_5|>" and checkpoint["model_config"]["max_seq_len"] == 32


@pytest.mark.parametrize("overrides, message", [
    (dict(seed=2), "was trained with seed=1337, not 2"),
    (dict(val_fraction=0.5), "was trained with val_fraction=0.2, not 0.5"),
    (dict(optimizer="muon"), "was trained with optimizer 'adamw', not 'muon'"),
    (dict(data_path="one row fewer"), "d.csv has changed since"),
], ids=["another-seed", "another-validation-split", "another-optimizer", "changed-data"])
def test_finetune_resume_refuses_settings_or_data_that_would_change_the_held_out_prompts(tmp_path, ft_base, ft_trained,
                                                                                        overrides, message):
    shutil.copytree(ft_trained, tmp_path / "a")
    if overrides.get("data_path"):
        overrides = {"data_path": write_csv(tmp_path / "d.csv", ft_rows()[:-1])}
    result = run_finetune(ft_args(ft_base, tmp_path / "a", init_from="resume", **overrides), check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_finetune_refuses_in_one_sentence_an_optimizer_state_with_other_parameter_groups(tmp_path, ft_base, ft_trained):
    shutil.copytree(ft_trained, tmp_path / "a")
    checkpoint = load_checkpoint(tmp_path / "a" / "ckpt.pt")
    checkpoint["optimizer_states"][-1]["param_groups"].pop()
    save_checkpoint(checkpoint, tmp_path / "a" / "ckpt.pt")
    result = run_finetune(ft_args(ft_base, tmp_path / "a", init_from="resume"), check=False)
    assert result.returncode != 0
    assert "optimizer state does not fit this finetune.py's parameter groups" in result.stderr
    assert "Traceback" not in result.stderr


def test_finetune_ctrl_c_saves_exits_cleanly_and_the_resume_misses_no_evaluation(tmp_path, ft_base):
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "finetune.py"),
                                *ft_args(ft_base, tmp_path / "ft", max_iters=100000, eval_interval=1)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(tmp_path / "ft" / "log.csv") and time.time() < deadline:  # the loop has started
        time.sleep(0.1)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    stopped = load_checkpoint(tmp_path / "ft" / "ckpt.pt")["iter_num"]
    assert stopped > 0 and f"interrupted at iteration {stopped}; " in stderr + stdout
    run_finetune(ft_args(ft_base, tmp_path / "ft", init_from="resume", max_iters=stopped + 2, eval_interval=1))
    assert [int(row["iter"]) for row in read_log(tmp_path / "ft")] == list(range(stopped + 3))  # each step, once


def test_finetune_compiled_trains_like_eager_and_saves_the_plain_modules_weights(tmp_path, ft_base):
    """compile=True compiles the transformer body on padded batches (condition mode: rows, contrasts and rivals in
    one batch); its held-out losses match the eager run's and its checkpoint loads strictly into a plain GPT."""
    common = dict(rating_mode="condition", dtype="float32", max_iters=4, eval_interval=2)
    runs = [[os.path.join(REPO, "finetune.py"), *ft_args(ft_base, tmp_path / name, **common, compile=compile_)]
            for name, compile_ in (("eager", False), ("compiled", True))]
    eager_run, compiled_run = run_side_by_side(*runs, env={**os.environ, "TORCH_LOGS": "graph_code"})
    assert "TRACED GRAPH" not in eager_run.stderr and "TRACED GRAPH" in compiled_run.stderr  # each graph it compiles
    logs = {run: read_log(tmp_path / run) for run in ("eager", "compiled")}
    assert [r["iter"] for r in logs["compiled"]] == ["0", "2", "4"]
    for a, b in zip(logs["eager"], logs["compiled"]):  # fused kernels round differently, so close rather than equal
        losses = [(a[f"val_loss_r{r}"], b[f"val_loss_r{r}"]) for r in range(1, 6) if a[f"val_loss_r{r}"]]
        assert len(losses) >= 2 and all(float(lb) == pytest.approx(float(la), rel=1e-3) for la, lb in losses)
    load_model(tmp_path / "compiled" / "ckpt.pt")  # strict


def test_finetune_answer_checks_judge_the_answer_sample_py_writes_to_each_held_out_prompt_with_checks(tmp_path,
                                                                                                    ft_base):
    with open(tmp_path / "checks.json", "w") as f:
        json.dump({f"Repeat {w}.": ["True"] for w in ("cat", "dog", "sun", "hat", "pen", "cup", "box", "bee")}, f)
    result = run_finetune(ft_args(ft_base, tmp_path / "a", max_iters=2, answer_checks=True,
                                  checks_path=tmp_path / "checks.json", answer_tokens=12))
    held_out = list(dict.fromkeys(finetune.split_by_prompt(read_csv_rows(ft_base / "d.csv"), 0.2, 1337)[1]["prompt"]))
    answers = finetune.pd.read_csv(tmp_path / "a" / "answers.csv", dtype=str, keep_default_na=False)
    assert answers["prompt"].tolist() == held_out
    for prompt, answer in zip(held_out, answers["answer"]):
        written = run_script("sample.py", [f"--out_dir={tmp_path / 'a'}", f"--start={prompt}", "--temperature=0",
                                           "--max_new_tokens=12"]).stdout
        assert written == answer + "\n"
    passes = sandbox.run_checks([(answer, ["True"]) for answer in answers["answer"]], 2.0, 512)
    assert answers["parses"].tolist() == [str(sandbox.defines_function(a)) for a in answers["answer"]]
    assert answers["passes"].tolist() == [str(p) for p in passes]
    assert (f"greedy answers to the 2 held-out prompts with checks: parse rate "
            f"{sum(map(sandbox.defines_function, answers['answer'])) / 2:.0%}, pass rate {sum(passes) / 2:.0%}"
            in result.stdout)


def test_finetune_answer_checks_for_prompts_without_checks_are_skipped_with_a_one_line_notice(tmp_path, ft_base):
    result = run_finetune(ft_args(ft_base, tmp_path / "a", max_iters=2, answer_checks=True))  # the default data's checks
    assert "none of the 2 held-out prompts has checks in data/fine_tune_checks.json; parse and pass rates are not " \
           "measured" in result.stdout
    assert not os.path.exists(tmp_path / "a" / "answers.csv")


def test_finetune_weight_and_condition_modes_learn_from_the_ratings(tmp_path, ft_base):
    """Changing only the ratings of the 1-rated rows (to 2) changes what weight and condition modes learn."""
    data = {"d": ft_base / "d.csv",
            "d2": write_csv(tmp_path / "d2.csv", [(prompt, response, 2 if rating == 1 else rating)
                                                  for prompt, response, rating in ft_rows()])}
    modes = ("weight", "condition")
    run_script_many_times("finetune.py", [ft_args(ft_base, tmp_path / f"{mode}-{name}", rating_mode=mode, max_iters=4,
                                                  eval_interval=4, data_path=path)
                                          for mode in modes for name, path in data.items()])
    for mode in modes:
        before, after = (load_checkpoint(tmp_path / f"{mode}-{name}" / "ckpt.pt")["model"] for name in data)
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{mode} ignored the ratings"


def test_finetune_every_training_setting_changes_the_trained_weights(tmp_path, ft_base):
    """As for pretrain.py: each setting alone changes the weights after 4 steps; a control run repeats its base."""
    variants = {"filter": {"learning_rate": 1e-3, "min_lr_ratio": 0.5, "warmup_iters": 1, "lr_decay_iters": 3,
                           "weight_decay": 0.5, "beta2": 0.5, "grad_clip": 0.01, "batch_size": 3, "dropout": 0.1,
                           "seed": 1, "min_rating": 3, "val_fraction": 0.4, "beta1": 0.5, "n_epochs": 0.25,
                           "dtype": NOT_AUTO_DTYPE, "optimizer": "muon", "control": None},
                "filter-muon": {"muon_lr": 1e-2, "control": None},
                "condition": {"condition_contrast": 0.0, "condition_rank": 0.0, "condition_beta": 1.0,
                              "control": None},
                "kto": {"kto_beta": 1.0, "kto_lambda_desirable": 2.0, "kto_lambda_undesirable": 2.0, "control": None},
                "dpo": {"dpo_beta": 1.0, "dpo_sft": 0.5, "control": None}}

    def args(run, name, value=None):  # run: a rating_mode, or filter-muon for Muon's own settings
        mode, optimizer = run.split("-") if "-" in run else (run, "adamw")
        overrides = dict(rating_mode=mode, optimizer=optimizer, max_iters=4, eval_interval=4)
        overrides.update({name: value} if value is not None else {})
        return ft_args(ft_base, tmp_path / f"{run}-{name}", **overrides)
    run_script_many_times("finetune.py", [args(run, "base") for run in variants] +
                          [args(run, name, value) for run in variants for name, value in variants[run].items()])
    for run, names in variants.items():
        base = load_checkpoint(tmp_path / f"{run}-base" / "ckpt.pt")["model"]
        for name in names:
            weights = load_checkpoint(tmp_path / f"{run}-{name}" / "ckpt.pt")["model"]
            changed = any(not torch.equal(weights[k], base[k]) for k in base)
            assert changed != (name == "control"), f"{run} {name}: {'changed' if changed else 'no effect'}"


def test_finetune_dpo_sft_term_learns_only_answers_rated_at_least_min_rating(tmp_path, ft_base):
    """Every pair here prefers a 3-rated answer to a 1-rated one: at min_rating=4 the SFT term has nothing to learn
    and leaves the weights exactly as they are without it; at min_rating=3 it learns the 3-rated answers."""
    data_path = write_csv(tmp_path / "d.csv", [row for row in ft_rows() if row[2] < 5])
    runs = {"no-sft": {"dpo_sft": 0.0}, "sft-4": {"dpo_sft": 1.0, "min_rating": 4},
            "sft-3": {"dpo_sft": 1.0, "min_rating": 3}}
    run_script_many_times("finetune.py", [ft_args(ft_base, tmp_path / name, rating_mode="dpo", max_iters=4,
                                                  eval_interval=4, data_path=data_path, **settings)
                                          for name, settings in runs.items()])
    weights = {name: load_checkpoint(tmp_path / name / "ckpt.pt")["model"] for name in runs}
    assert all(torch.equal(weights["sft-4"][k], weights["no-sft"][k]) for k in weights["no-sft"])
    assert any(not torch.equal(weights["sft-3"][k], weights["no-sft"][k]) for k in weights["no-sft"])


# ---- every rating_mode, end to end: does training go the right way? ------------------------------

FT_MODES = ["weight", "filter", "condition", "kto", "dpo"]


@pytest.fixture(scope="module")
def ft_modes(tmp_path_factory, ft_base):
    """A folder of runs: twenty steps of finetune.py from ft_base in every rating_mode (dpo with the paper's loss
    alone), half the prompts held out; condition mode without its ranking term, as a control; filter mode with
    Muon; and sixty faster steps of condition mode, after which the rating token changes what the model writes.
    Each log.csv starts with the pretrained model's scores."""
    folder = tmp_path_factory.mktemp("ft_modes")
    runs = {mode: {"rating_mode": mode} for mode in FT_MODES}
    runs["dpo"]["dpo_sft"] = 0.0  # the paper's loss alone, so that its direction is what the tests below see
    runs["condition-unranked"] = {"rating_mode": "condition", "condition_rank": 0}
    runs["filter-muon"] = {"rating_mode": "filter", "optimizer": "muon", "muon_lr": 3e-3}
    runs = {name: {"max_iters": 20, "eval_interval": 20, "learning_rate": 3e-3, **settings}
            for name, settings in runs.items()}
    # float32, so that a test can recompute its logged losses exactly on a CPU where 'auto' means bfloat16
    runs["condition-long"] = {"rating_mode": "condition", "max_iters": 60, "eval_interval": 60, "learning_rate": 1e-2,
                              "dtype": "float32"}
    run_script_many_times("finetune.py", [ft_args(ft_base, folder / name, val_fraction=0.5, **settings)
                                          for name, settings in runs.items()])
    return folder


def rating_gap(row):
    """How much likelier per token the held-out 5-rated answers are than the 1-rated ones (nats)."""
    return float(row["val_loss_r1"]) - float(row["val_loss_r5"])


@pytest.mark.parametrize("mode", ["weight", "filter", "condition", "filter-muon"])
def test_finetune_imitating_modes_lower_the_held_out_rating_5_loss(ft_modes, mode):
    """By a margin that training the wrong way (gradient ascent) cannot meet: it raises the loss."""
    before, after = read_log(ft_modes / mode)[0], read_log(ft_modes / mode)[-1]
    assert float(after["val_loss_r5"]) < float(before["val_loss_r5"]) - 0.3


@pytest.mark.parametrize("mode", ["kto", "dpo"])
def test_finetune_preference_modes_rank_held_out_5_rated_answers_above_1_rated_ones(ft_modes, mode):
    before, after = read_log(ft_modes / mode)[0], read_log(ft_modes / mode)[-1]
    assert rating_gap(after) > rating_gap(before) + 0.5
    assert float(after["pref_score"]) > float(before["pref_score"]) + 0.2


def test_finetune_condition_ranking_term_ranks_higher_rated_answers_up_against_a_run_without_it(ft_modes):
    ranked, unranked = read_log(ft_modes / "condition")[-1], read_log(ft_modes / "condition-unranked")[-1]
    assert rating_gap(ranked) > rating_gap(unranked) + 0.3


@pytest.mark.parametrize("mode", ["kto", "dpo"])
def test_finetune_reference_stays_the_frozen_pretrained_model_and_rewards_are_measured_against_it(ft_modes, ft_base,
                                                                                                   mode):
    pretrained = load_checkpoint(ft_base / "out" / "ckpt.pt")["model"]
    checkpoint = load_checkpoint(ft_modes / mode / "ckpt.pt")
    assert all(torch.equal(checkpoint["reference_model"][k], pretrained[k]) for k in pretrained)
    assert any(not torch.equal(checkpoint["model"][k], pretrained[k]) for k in pretrained)
    # a reference that moved with the model would make every reward, and so the margin, 0
    assert float(read_log(ft_modes / mode)[-1]["reward_margin"]) > 0.3


def test_finetune_condition_evaluation_scores_every_held_out_answer_under_the_top_rating_token(ft_modes, ft_base,
                                                                                               ft_tokenizer):
    """Not under its own rating token, which would leak the label into the scores."""
    model, _ = load_model(ft_modes / "condition-long" / "ckpt.pt")
    special = ft_tokenizer.special_tokens
    held_out = finetune.split_by_prompt(read_csv_rows(ft_base / "d.csv"), 0.5, 1337)[1]

    def losses(token_of):  # mean loss per response token for each rating, each answer read after token_of(its rating)
        totals = {}
        for prompt, response, rating in held_out.itertuples(index=False):
            targets = ft_tokenizer.encode(response) + [special["<|endoftext|>"]]
            x = [special[token_of(rating)], special["<|prompt|>"], *ft_tokenizer.encode(prompt), special["<|response|>"],
                 *targets[:-1]]
            with torch.no_grad():
                logits = model(torch.tensor([x]))[0][0, -len(targets):]
            loss_sum, count = totals.get(rating, (0.0, 0))
            totals[rating] = (loss_sum + F.cross_entropy(logits, torch.tensor(targets), reduction="sum").item(),
                              count + len(targets))
        return {rating: loss_sum / count for rating, (loss_sum, count) in totals.items()}
    top, own = losses(lambda rating: "<|rating_5|>"), losses(lambda rating: f"<|rating_{rating}|>")
    logged = read_log(ft_modes / "condition-long")[-1]
    assert all(float(logged[f"val_loss_r{r}"]) == pytest.approx(top[r], abs=2e-4) for r in top)
    assert max(abs(own[r] - top[r]) for r in own) > 0.1  # the rating token matters, so a leak would show


# ====================================================================================================
# sandbox.py: running model-written code and judging it
# ====================================================================================================

def test_sandbox_copied_alone_imports_with_the_standard_library_only(tmp_path):
    assert libraries_loaded_alone(tmp_path, "sandbox", ["sandbox.py"]) == []


def test_sandbox_parse_rate_counts_answers_that_parse_and_define_a_function():
    assert sandbox.defines_function("def f(x):\n    return x")
    assert sandbox.defines_function("import math\n\nasync def g():\n    pass")
    assert not sandbox.defines_function("x = 1")  # Python, but no function
    assert not sandbox.defines_function("defdef ps(xs):\n    return")
    assert not sandbox.defines_function("def f(x):\n    return x\x00")


def test_sandbox_run_checks_passes_an_answer_only_when_every_check_is_true():
    add_one = "def f(x):\n    return x + 1"
    jobs = [(add_one, ["f(1) == 2", "f(-1) == 0"]), (add_one, ["f(1) == 2", "f(1) == 3"]), (add_one, [])]
    assert sandbox.run_checks(jobs, 2.0, 512) == [True, False, True]


def test_sandbox_run_checks_fails_answers_that_hang_exhaust_memory_crash_raise_or_exit_early_and_goes_on():
    jobs = [("def f():\n    while True:\n        pass", ["f()"]),
            ("def f():\n    import time\n    time.sleep(60)", ["f()"]),
            ("def f():\n    xs = []\n    while True:\n        xs.append(bytearray(1 << 20))", ["f()"]),
            ("def f():\n    return '*' * (1 << 40)", ["f()"]),
            ("def f():\n    raise ValueError('no')", ["f()"]),
            ("import os\nos._exit(0)", ["True"]),  # exits with success before any check runs
            ("import ctypes\nctypes.string_at(0)", ["True"]),  # a segmentation fault
            ("print('[true]')\ndef f():\n    return False", ["f()"]),  # printing cannot pass it
            ("def f():\n    return 1", ["f() == 1"])]
    start = time.time()
    assert sandbox.run_checks(jobs, 1.0, 256) == [False] * 8 + [True]
    assert time.time() - start < 30  # each hang ends at its limit


def test_sandbox_run_checks_gives_answers_an_empty_environment_and_a_temporary_directory_that_is_removed(
        tmp_path, monkeypatch):
    monkeypatch.setenv("A_SECRET_OF_THE_CALLER", "1")
    monkeypatch.setattr(sandbox.tempfile, "tempdir", str(tmp_path))
    answer = "import os\nopen('left.txt', 'w').write('x')\ndef f():\n    return os.environ, os.getcwd()"
    checks = ["'A_SECRET_OF_THE_CALLER' not in f()[0] and 'PATH' not in f()[0]",
              f"f()[1].startswith({str(tmp_path)!r}) and os.path.exists('left.txt')"]
    assert sandbox.run_checks([(answer, checks)], 2.0, 512) == [True]
    assert os.listdir(tmp_path) == []


def test_sandbox_kills_the_processes_an_answer_leaves_running(tmp_path):
    pid_path = tmp_path / "pid"
    answer = (f"import subprocess\nchild = subprocess.Popen(['sleep', '60'])\n"
              f"open({str(pid_path)!r}, 'w').write(str(child.pid))\ndef f():\n    return True")
    assert sandbox.run_checks([(answer, ["f()"])], 2.0, 512) == [True]
    stat_path = f"/proc/{int(pid_path.read_text())}/stat"
    deadline = time.time() + 10
    while os.path.exists(stat_path) and open(stat_path).read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.time() < deadline, "the answer's sleep outlived its check"
        time.sleep(0.05)


# ====================================================================================================
# sample.py: generation from a run, and the chat loop
# ====================================================================================================

def test_sample_prints_the_prompt_and_a_continuation(tiny_run):
    out_dir = tiny_run[0] / "out"
    result = run_script("sample.py", [f"--out_dir={out_dir}", "--start=the cat", "--max_new_tokens=20"])
    assert result.stdout.startswith("the cat") and len(result.stdout) > len("the cat\n")


def test_sample_loads_the_checkpoint_on_the_cpu_and_moves_only_the_weights(tiny_run, monkeypatch):
    import sample
    where, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kw: where.append(kw.get("map_location")) or load(*args, **kw))
    model, _, checkpoint = sample.load_run(str(tiny_run[0] / "out"), "meta")  # no optimizer state on the device
    assert where == ["cpu"] and next(model.parameters()).device.type == "meta" and checkpoint["optimizer_states"]


def test_sample_keeps_the_end_of_a_prompt_too_long_for_the_context_and_says_so(tiny_run, copied_run):
    out_dir = tiny_run[0] / "out"
    long_prompt = " the cat sat on a mat." * 40
    tokenizer = Tokenizer.load(out_dir / "tokenizer.json")
    result = run_script("sample.py", [f"--out_dir={out_dir}", f"--start={long_prompt}", "--max_new_tokens=2"])
    n_ids = len(tokenizer.encode(long_prompt))
    assert f"[the prompt has {n_ids} tokens, more than fit the context; keeping the last 32]" in result.stderr
    # as a fine-tuned run: <|prompt|>, <|response|> and one answer token take 3 of the 32 positions
    checkpoint = load_checkpoint(copied_run / "ckpt.pt")
    template = {"prompt": "<|prompt|>", "response": "<|response|>", "end": "<|endoftext|>", "rating_token": None}
    save_checkpoint({**checkpoint, "kind": "finetune", "template": template}, copied_run / "ckpt.pt")
    result = run_script("sample.py", [f"--out_dir={copied_run}", f"--start={long_prompt}", "--max_new_tokens=2"])
    n_ids = len(tokenizer.encode(long_prompt.strip()))
    assert f"[the prompt has {n_ids} tokens, more than fit the context; keeping the last 29]" in result.stderr


def test_sample_answers_in_the_fine_tuning_template_and_prints_only_the_response(ft_condition_run, ft_tokenizer):
    model, _ = load_model(ft_condition_run / "ckpt.pt")
    special, end = ft_tokenizer.special_tokens, ft_tokenizer.special_tokens["<|endoftext|>"]
    prompt = [special["<|rating_5|>"], special["<|prompt|>"], *ft_tokenizer.encode("Repeat cat."), special["<|response|>"]]
    new = model.generate(torch.tensor([prompt]), 12, temperature=0, stop_token=end)[0, len(prompt):].tolist()
    expected = ft_tokenizer.decode([t for t in new if t != end]) + "\n"
    common = [f"--out_dir={ft_condition_run}", "--temperature=0", "--max_new_tokens=12"]
    for start in ("Repeat cat.", "  Repeat cat.\n"):  # stripped, as fine-tuning strips its prompts
        assert run_script("sample.py", [*common, f"--start={start}"]).stdout == expected
    chat = run_script("sample.py", [*common, "--chat=True", "--start=Repeat cat."], input="")  # then Ctrl-D
    assert chat.stdout.startswith(expected)


@pytest.mark.parametrize("mode", FT_MODES)
def test_sample_answers_in_the_template_each_mode_trained(ft_modes, ft_tokenizer, mode):
    model, _ = load_model(ft_modes / mode / "ckpt.pt")
    special, end = ft_tokenizer.special_tokens, ft_tokenizer.special_tokens["<|endoftext|>"]
    trained = finetune.encode_row(ft_tokenizer, "Repeat cat.", "cat", 5, condition=mode == "condition")
    prompt = trained.prefix + trained.prompt_ids + [special["<|response|>"]]  # as a 5-rated row was learned
    new = model.generate(torch.tensor([prompt]), 12, temperature=0, stop_token=end)[0, len(prompt):].tolist()
    written = run_script("sample.py", [f"--out_dir={ft_modes / mode}", "--temperature=0", "--max_new_tokens=12",
                                       "--start=Repeat cat."]).stdout
    assert written == ft_tokenizer.decode([t for t in new if t != end]) + "\n"


def test_sample_rating_changes_what_a_condition_checkpoint_writes_and_defaults_to_the_top_rating(ft_modes):
    common = [f"--out_dir={ft_modes / 'condition-long'}", "--temperature=0", "--max_new_tokens=12", "--start=Repeat cat."]
    written = {rating: run_script("sample.py", common + ([f"--rating={rating}"] if rating else [])).stdout
               for rating in (None, 1, 5)}
    assert written[None] == written[5] != written[1]


@pytest.mark.parametrize("override, message", [
    ("--top_p=0", "top_p in (0, 1]"),
    ("--start=FILE:/no/such/prompt.txt", "cannot read the prompt file /no/such/prompt.txt"),
    ("--rating=3", "--rating is only for a checkpoint fine-tuned with rating_mode='condition'"),
    ("--rating=5.0", "rating must be 1 to 5, not 5.0"),
    ("--rating=True", "rating must be 1 to 5, not True"),
    ("--device=cuda:99", "device 'cuda:99' is not available"),
    ("--out_dir=A FOLDER WITHOUT A CHECKPOINT", "python pretrain.py"),  # says how to train one
], ids=["top_p-0", "missing-prompt-file", "rating-for-a-pretrained-run", "fractional-rating", "bool-rating",
        "unavailable-device", "no-checkpoint"])
def test_sample_bad_settings_are_one_sentence(tiny_run, tmp_path, override, message):
    override = override.replace("A FOLDER WITHOUT A CHECKPOINT", str(tmp_path))
    result = run_script("sample.py", [f"--out_dir={tiny_run[0] / 'out'}", override], check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr


# ====================================================================================================
# export.py: a run to a Hugging Face folder
# ====================================================================================================

import importlib  # noqa: E402 (this section's own imports: transformers itself is optional, see the fixture)
import itertools  # noqa: E402
import runpy  # noqa: E402

import export  # noqa: E402
from common import answer_ids  # noqa: E402
from sample import load_run  # noqa: E402


def stdlib_source(*modules):
    """The source of some standard-library modules: Python text that a tokenizer may not have seen."""
    texts = []
    for name in modules:
        with open(importlib.import_module(name).__file__, encoding="utf-8") as f:
            texts.append(f.read())
    return "".join(texts)


def random_unicode(n_bytes, seed):
    """About n_bytes of UTF-8 from a seeded RNG: code points from every plane (surrogates cannot be encoded; no
    U+FFFD, which a test below reads as an unfinished character), with more of what splitting is sensitive to:
    ASCII, controls, separators, combining marks, CRLF and lone CR, long runs of spaces and digits, contractions
    in odd cases, numerals that Python counts as letters."""
    rng = random.Random(seed)
    tricky = ["\r\n", "\r", "\n", "\t", "\x0b\x0c", "\x1c\x1d\x1e\x1f", "\x85", "\xa0", "\u2028", "\u3000", "_",
              "'s", "'S", "'\u017f", "'LL", "'Ve", "'re", "\u212a", "\u0130", "\u00df", "²", "½", "Ⅻ", "٣", "𝟙", "‿"]
    pieces, size = [], 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.3:
            piece = chr(rng.randrange(0x20, 0x7F))
        elif kind < 0.35:
            piece = chr(rng.randrange(0x20))
        elif kind < 0.45:
            piece = rng.choice(tricky)
        elif kind < 0.48:
            piece = " " * rng.randrange(1, 80)
        elif kind < 0.51:
            piece = "".join(rng.choices("0123456789", k=rng.randrange(1, 40)))
        elif kind < 0.56:
            piece = chr(rng.randrange(0x300, 0x370))  # combining marks
        elif kind < 0.7:
            piece = chr(rng.randrange(0x80, 0x3000))  # most scripts' letters, digits and marks
        else:
            code = rng.randrange(0x110000 - 0x800)
            piece = chr(code + 0x800 if code >= 0xD800 else code).replace("\ufffd", "?")
        pieces.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(pieces)


@pytest.fixture(scope="module")
def exported(request, ft_tokenizer, tmp_path_factory):
    """Runs and their exports, {name: (run folder, exported folder)}. 'pretrained': tiny_run (pretrain.py, with
    biases, 32 positions), exported as the command line does. 'finetuned': four steps of condition-mode fine-tuning
    of a run with 64 positions. 'code': no biases, a tokenizer trained on Python source, random weights moved well
    away from their initial scale."""
    for package in ("transformers", "tokenizers", "safetensors"):
        pytest.importorskip(package)
    tiny_run = request.getfixturevalue("tiny_run")  # after the check: without transformers, no run is trained
    tmp = tmp_path_factory.mktemp("export")
    pretrained_run(tmp / "out", ft_tokenizer, max_seq_len=64)
    write_csv(tmp / "d.csv", ft_rows())
    run_finetune(ft_args(tmp, "finetuned", rating_mode="condition", max_iters=4, eval_interval=4))
    code = tmp / "code"
    code.mkdir()
    source = stdlib_source("json.decoder", "json.encoder", "textwrap", "string")
    tokenizer = Tokenizer.train(source, 1024, SPECIAL_TOKENS)
    tokenizer.save(code / "tokenizer.json")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=64,
                       bias=False)
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    with open(code / "tokenizer.json", "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    save_checkpoint({"kind": "pretrain", "model": model.state_dict(), "model_config": dataclasses.asdict(config),
                     "tokenizer_path": "tokenizer.json", "tokenizer_sha256": sha, "iter_num": 0}, code / "ckpt.pt")
    runs = {"pretrained": tiny_run[0] / "out", "finetuned": tmp / "finetuned", "code": code}
    argv, sys.argv = sys.argv, ["export.py", f"--out_dir={runs['pretrained']}", f"--to={tmp / 'pretrained-hf'}"]
    try:  # the command line, in this process: transformers is imported once
        runpy.run_path(os.path.join(REPO, "export.py"), run_name="__main__")
    finally:
        sys.argv = argv
    for name in ("finetuned", "code"):
        export.export(str(runs[name]), str(tmp / f"{name}-hf"))
    return {name: (run, tmp / f"{name}-hf") for name, run in runs.items()}


@pytest.fixture(scope="module")
def export_pair(exported):
    """export_pair(name) -> (model, tokenizer, checkpoint, transformers model, transformers tokenizer), loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    loaded = {}

    def load(name):
        if name not in loaded:
            run, folder = exported[name]
            loaded[name] = (*load_run(str(run), "cpu"), AutoModelForCausalLM.from_pretrained(folder),
                            AutoTokenizer.from_pretrained(folder))
        return loaded[name]
    return load


def random_ids(model, rows, seed):
    return torch.randint(0, model.config.vocab_size, (rows, model.config.max_seq_len),
                         generator=torch.Generator().manual_seed(seed))


def test_export_writes_a_gpt2_folder_with_every_setting_from_the_run(exported, export_pair):
    for name, (run, folder) in exported.items():
        model, tokenizer, checkpoint, hf, hf_tok = export_pair(name)
        c, end = model.config, tokenizer.special_tokens["<|endoftext|>"]
        assert type(hf).__name__ == "GPT2LMHeadModel" and hf.dtype == torch.float32
        want = dict(n_positions=c.max_seq_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff,
                    vocab_size=c.vocab_size, bos_token_id=end, eos_token_id=end, pad_token_id=end,
                    activation_function="gelu", layer_norm_epsilon=1e-5, tie_word_embeddings=True)
        assert {k: getattr(hf.config, k) for k in want} == want
        assert hf.config.resid_pdrop == hf.config.embd_pdrop == hf.config.attn_pdrop == 0
        assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
        assert torch.equal(hf.transformer.wpe.weight, model.pos_enc.table * model.pos_enc.scale)
        attn, block = hf.transformer.h[1].attn, model.blocks[1]
        assert torch.equal(attn.c_attn.weight, block.attn.qkv.weight.t())  # Conv1D: (in, out)
        zero = lambda n: torch.zeros(n)  # GPT-2 always has biases: a run without them exports zeros
        assert torch.equal(attn.c_attn.bias, block.attn.qkv.bias if c.bias else zero(3 * c.d_model))
        assert torch.equal(hf.transformer.ln_f.bias, model.ln_f.bias if c.bias else zero(c.d_model))
        assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == ("<|endoftext|>",) * 3
        files = set(os.listdir(folder))
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= files
        assert ("chat_template.jinja" in files) == (name == "finetuned")
        with open(folder / "tokenizer_config.json", encoding="utf-8") as f:  # a name transformers 4 knows too
            assert json.load(f)["tokenizer_class"] == "PreTrainedTokenizerFast"
        with open(folder / "README.md", encoding="utf-8") as f:
            assert "AutoModelForCausalLM.from_pretrained" in f.read()
        assert not [f for f in os.listdir(folder.parent) if ".tmp" in f]
    assert export_pair("pretrained")[0].config.bias and not export_pair("code")[0].config.bias


@pytest.mark.parametrize("name", ["pretrained", "finetuned", "code"])
def test_export_logits_and_greedy_tokens_match_the_run(export_pair, name):
    """Within 1e-5 in float32; greedy generation the same for 50 tokens, or up to the context: transformers' GPT-2 has
    max_seq_len positions and no sliding window, so prompt and new tokens must fit in them."""
    model, tokenizer, checkpoint, hf, hf_tok = export_pair(name)
    ids = random_ids(model, 2, seed=0)
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)[0]).abs().max().item() < 1e-5
    if checkpoint["kind"] == "finetune":
        prompt = hf_tok.apply_chat_template([{"role": "user", "content": "Repeat cat."}], add_generation_prompt=True,
                                            return_dict=False)
        assert prompt == answer_ids(tokenizer, checkpoint["template"], "Repeat cat.", model.config.max_seq_len)[0]
    else:
        prompt = hf_tok("def f(x):")["input_ids"]
    n_new = min(50, model.config.max_seq_len - len(prompt))
    assert n_new == 50 or name == "pretrained"
    ours = model.generate(torch.tensor([prompt]), n_new, temperature=0)
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False, eos_token_id=None)  # no stop
    assert ours.tolist() == theirs.tolist() and ours.size(1) == len(prompt) + n_new


def test_export_token_ids_equal_bpe_on_code_random_unicode_and_special_tokens(export_pair):
    model, tokenizer, checkpoint, hf, hf_tok = export_pair("code")
    source = stdlib_source("difflib", "argparse", "dataclasses")  # not what the tokenizer was trained on
    assert hf_tok(source, split_special_tokens=True)["input_ids"] == tokenizer.encode(source)
    text = random_unicode(1_000_000, seed=0)
    assert hf_tok(text, split_special_tokens=True)["input_ids"] == tokenizer.encode(text)
    # the split itself, on every code point once, in order: where Python's re and Oniguruma read a class differently
    # (\w, \d, \s outside ASCII), runs of one class break at other places
    every = "".join(map(chr, itertools.chain(range(0xD800), range(0xE000, 0x110000))))
    pre_tokenizer = hf_tok.backend_tokenizer.pre_tokenizer
    spans = [m.span() for m in re.finditer(SPLIT_PATTERN, every)]
    assert [span for _, span in pre_tokenizer.pre_tokenize_str(every)] == spans
    # special tokens: transformers matches them in text unless split_special_tokens=True; bpe.py only when allowed
    for text in ["a<|endoftext|>b", "<|prompt|> x <|response|>\n<|rating_5|>", "<|endoftext", "<|endoftext|>" * 2]:
        assert hf_tok(text)["input_ids"] == tokenizer.encode(text, allowed_special="all")
        assert hf_tok(text, split_special_tokens=True)["input_ids"] == tokenizer.encode(text)
    assert hf_tok("a<|endoftext|>b")["input_ids"] != tokenizer.encode("a<|endoftext|>b")


def test_export_decoding_agrees_with_bpe_streaming_included(export_pair):
    from transformers import TextStreamer
    model, tokenizer, checkpoint, hf, hf_tok = export_pair("code")
    rng = random.Random(0)
    ids = tokenizer.encode(random_unicode(3000, seed=1) + "<|endoftext|>", allowed_special="all")
    id_runs = [ids] + [[rng.randrange(tokenizer.vocab_size) for _ in range(rng.randrange(30))] for _ in range(300)]
    for run in id_runs:  # the random runs hold bytes that are no UTF-8 character, and special tokens
        assert hf_tok.decode(run) == tokenizer.decode(run)

    class Collect(TextStreamer):  # transformers' own streamer, keeping what it would print
        def on_finalized_text(self, text, stream_end=False):
            self.pieces.append(text)
    for run in id_runs[:20]:  # fed one token at a time, as generate() feeds it
        streamer = Collect(hf_tok)
        streamer.pieces = []
        for i in run:
            streamer.put(torch.tensor([i]))
        streamer.end()
        assert "".join(streamer.pieces) == "".join(tokenizer.decode_stream(run)) == tokenizer.decode(run)
    # growing prefixes, holding back an unfinished character (U+FFFD at the end), give decode_stream's pieces
    pieces, shown = [], ""
    for n in range(1, len(ids) + 1):
        text = hf_tok.decode(ids[:n]).rstrip("\ufffd")
        if len(text) > len(shown):
            pieces.append(text[len(shown):])
            shown = text
    assert pieces == list(tokenizer.decode_stream(ids)) and len(pieces) > 1000


def test_export_chat_template_asks_as_answer_ids(export_pair):
    from jinja2 import TemplateError
    model, tokenizer, checkpoint, hf, hf_tok = export_pair("finetuned")
    template, L = checkpoint["template"], model.config.max_seq_len
    assert template["rating_token"]  # condition mode: the rating is part of the question
    chat = lambda content, **kw: hf_tok.apply_chat_template([{"role": "user", "content": content}],
                                                            add_generation_prompt=True, return_dict=False, **kw)
    for prompt in ["Repeat cat.", "  Repeat dog.\n", "x", "naïve café ²", "def f(x):\r\n    return x\n", ""]:
        assert chat(prompt) == answer_ids(tokenizer, template, prompt, L)[0]
        for rating in range(1, 6):
            assert chat(prompt, rating=rating) == answer_ids(tokenizer, template, prompt, L, rating)[0]
    with pytest.raises(TemplateError, match="rating must be 1 to 5"):
        chat("x", rating=6)
    with pytest.raises(TemplateError, match="answers one user message"):
        hf_tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    # special-token text in a message: a control token by default, as in every transformers chat template; plain
    # text with sanitize_control_tokens=True (encoded in pieces around it, where bpe.py encodes the message whole)
    prompt_id = tokenizer.special_tokens["<|prompt|>"]
    assert chat("a <|prompt|> b").count(prompt_id) == 2
    sanitized = chat("a <|prompt|> b", sanitize_control_tokens=True)
    assert sanitized.count(prompt_id) == 1 and hf_tok.decode(sanitized[2:-1]) == "a <|prompt|> b"


def test_export_survives_loading_and_saving_again_with_transformers(export_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tokenizer, checkpoint, hf, hf_tok = export_pair("finetuned")
    hf.save_pretrained(tmp_path)
    hf_tok.save_pretrained(tmp_path)
    hf2, hf_tok2 = AutoModelForCausalLM.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)
    ids = random_ids(model, 1, seed=1)
    with torch.no_grad():
        assert (hf2(ids).logits - model(ids)[0]).abs().max().item() < 1e-5
    text = random_unicode(20_000, seed=2) + "<|endoftext|>"
    assert hf_tok2(text)["input_ids"] == tokenizer.encode(text, allowed_special="all")
    assert hf_tok2(text, split_special_tokens=True)["input_ids"] == tokenizer.encode(text)
    chat = [{"role": "user", "content": "Repeat cat."}]
    assert hf_tok2.apply_chat_template(chat, add_generation_prompt=True, return_dict=False) == \
        answer_ids(tokenizer, checkpoint["template"], "Repeat cat.", model.config.max_seq_len)[0]


def test_export_bfloat16_halves_the_weights_and_stays_close(exported, export_pair, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM
    run, folder = exported["code"]
    export.export(str(run), str(tmp_path / "bf16"), "bfloat16")
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    model = export_pair("code")[0]
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    ids = random_ids(model, 2, seed=0)
    with torch.no_grad():
        ours, theirs = model(ids)[0], hf(ids).logits.float()
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()
    size = lambda folder: os.path.getsize(folder / "model.safetensors")
    assert size(tmp_path / "bf16") < 0.6 * size(folder)


def test_export_refuses_bad_input_in_one_sentence_and_leaves_nothing_behind(exported, tmp_path, monkeypatch):
    run = exported["code"][0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no checkpoint at .*ckpt.pt"):
        export.export(str(tmp_path / "empty"), str(tmp_path / "a"))
    other = tmp_path / "other"
    shutil.copytree(run, other)
    Tokenizer.train("something else entirely " * 20, 270, SPECIAL_TOKENS).save(other / "tokenizer.json")
    with pytest.raises(SystemExit, match="is not the tokenizer .*ckpt.pt was trained with"):
        export.export(str(other), str(tmp_path / "a"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists and is not an empty folder"):
        export.export(str(run), str(tmp_path / "full"))
    with pytest.raises(SystemExit, match="dtype must be float32 or bfloat16"):
        export.export(str(run), str(tmp_path / "a"), "float16")
    monkeypatch.setattr(export, "folder_readme", lambda *args: 1 / 0)  # a failure half-way through writing
    with pytest.raises(ZeroDivisionError):
        export.export(str(run), str(tmp_path / "a"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(SystemExit, match="needs transformers: pip install transformers tokenizers safetensors"):
        export.export(str(run), str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path)) == ["empty", "full", "other"]
    assert os.listdir(tmp_path / "full") == ["keep.txt"] and not os.listdir(tmp_path / "empty")
    # tokenizers that a transformers vocabulary cannot hold exactly: another split pattern; two ids for one string
    with pytest.raises(SystemExit, match="pattern other than bpe.SPLIT_PATTERN"):
        export.hf_tokenizer(Tokenizer([(97, 98)], ["<|endoftext|>"], pattern=r"\S+|\s+"))
    with pytest.raises(SystemExit, match="two merges of this tokenizer make the same bytes"):
        export.hf_tokenizer(Tokenizer([(97, 98), (256, 99), (98, 99), (97, 258)], ["<|endoftext|>"]))


# ====================================================================================================
# configurator.py: settings from config files and --key=value
# ====================================================================================================

def fresh_settings():
    return {"__doc__": "a script", "n_layers": 4, "learning_rate": 3e-4, "start": "x", "compile": False,
            "top_k": None, "device": "cpu"}


def test_configurator_overrides_from_command_line():
    settings = fresh_settings()
    result = configure(settings, argv=["--n_layers=6", "--compile=True", "--top_k=5"], verbose=False)
    assert (settings["n_layers"], settings["compile"], settings["top_k"]) == (6, True, 5)
    assert result["n_layers"] == 6 and "__doc__" not in result


def test_configurator_help_lists_every_setting_with_its_default_and_comment(tmp_path, capsys):
    script = tmp_path / "script.py"
    script.write_text('"""A script."""\nn_layers = 4  # how deep\nlearning_rate = 3e-4\nEND = "<|endoftext|>"\n')
    settings = {"__doc__": "A script.", "__file__": str(script), "n_layers": 4, "learning_rate": 3e-4,
                "END": "<|endoftext|>"}
    with pytest.raises(SystemExit) as exit_info:
        configure(settings, argv=["--help"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"  --n_layers = 4 +how deep", lines[-2]) and lines[-1] == "  --learning_rate = 0.0003"
    with pytest.raises(SystemExit, match="unknown setting 'END'"):  # an UPPER_CASE global is a constant
        configure(settings, argv=["--END=x"], verbose=False)


def test_configurator_value_may_contain_equals_sign():
    settings = fresh_settings()
    configure(settings, argv=["--start=a=b==c"], verbose=False)
    assert settings["start"] == "a=b==c"


def test_configurator_accepts_int_for_float_setting():
    settings = fresh_settings()
    configure(settings, argv=["--learning_rate=1"], verbose=False)
    assert settings["learning_rate"] == 1.0 and isinstance(settings["learning_rate"], float)


def test_configurator_python_file_sets_values_and_later_arguments_win(tmp_path):
    good = tmp_path / "good.py"
    good.write_text("import math\nn_layers = 2 * 3\nlearning_rate = 1\n")
    settings = fresh_settings()
    configure(settings, argv=[str(good), "--n_layers=8"], verbose=False)
    assert settings["n_layers"] == 8 and settings["learning_rate"] == 1.0


def test_configurator_reads_json_whatever_the_case_of_its_suffix(tmp_path):
    path = tmp_path / "CONFIG.JSON"
    path.write_text('{"model": {"n_layers": 2}}')
    settings = fresh_settings()
    configure(settings, json_sections=("model",), argv=[str(path)], verbose=False)
    assert settings["n_layers"] == 2


def test_configurator_reads_nested_config_json_sections(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model": {"n_layers": 2}, "training": {"learning_rate": 1, "device": "cuda"},'
                    ' "finetuning": {"learning_rate": 5e-5}}')
    settings = fresh_settings()
    configure(settings, json_sections=("model", "training"), argv=[str(path)], verbose=False)
    assert (settings["n_layers"], settings["learning_rate"], settings["device"]) == (2, 1.0, "cuda")
    settings = fresh_settings()
    configure(settings, json_sections=("finetuning",), argv=[str(path)], verbose=False)
    assert (settings["n_layers"], settings["learning_rate"]) == (4, 5e-5)


def test_configurator_seed_config_json_works_for_pretrain_settings():
    pretrain_settings = {"vocab_size": 1024, "d_model": 64, "n_heads": 2, "n_layers": 2, "d_ff": 256,
                         "max_seq_len": 128, "dropout": 0.0, "batch_size": 16, "learning_rate": 3e-3,
                         "n_epochs": 0.0, "device": "auto"}
    configure(pretrain_settings, json_sections=("model", "training"),
              argv=[os.path.join(REPO, "config", "config.json")], verbose=False)
    assert pretrain_settings["d_model"] == 128 and pretrain_settings["n_epochs"] == 5.0


@pytest.mark.parametrize("file, argv, message", [
    (None, ["--n_layer=3"], "unknown setting 'n_layer'.*did you mean 'n_layers'"),
    (None, ["--n_layers=four"], "'n_layers' expects int.*got 'four'"),
    (("bad.py", "n_layer = 3\n"), ["FILE"], "unknown setting 'n_layer' in .*bad.py; did you mean 'n_layers'"),
    # whatever the type of the value
    (("bad.py", "n_layer = [4]\n"), ["FILE"], "unknown setting 'n_layer' in .*bad.py; did you mean 'n_layers'"),
    (("wrong_type.py", 'device = ["cpu"]\n'), ["FILE"], "setting 'device' in .*wrong_type.py expects str"),
    # nanoGPT's configs may use other settings
    (("raises.py", "n_layers = 2\nlearning_rate = 3e-4 * batch_size\n"), ["FILE"],
     r"raises.py failed on line 2 \(NameError: .*'batch_size'.*the names it sets itself"),
    (("config.json", '{"modle": {"n_layers": 2}}'), ["FILE"], "unknown section 'modle'.*did you mean 'model'"),
], ids=["typo-suggests-the-right-key", "string-for-int", "unknown-name-in-a-file", "unknown-name-with-a-list-value",
        "list-for-str-in-a-file", "file-that-raises-names-its-line", "unknown-json-section"])
def test_configurator_mistakes_are_one_sentence(tmp_path, file, argv, message):
    json_sections = ()
    if file:
        name, text = file
        (tmp_path / name).write_text(text)
        argv = [str(tmp_path / name) if arg == "FILE" else arg for arg in argv]
        json_sections = ("model",) if name.endswith(".json") else ()
    with pytest.raises(SystemExit, match=message):
        configure(fresh_settings(), json_sections=json_sections, argv=argv, verbose=False)


# ====================================================================================================
# common.py: what the scripts share
# ====================================================================================================

# ---- device, dtype and optimizer choice ----------------------------------------------------------

def test_common_pick_device_takes_cpu_and_auto():
    assert pick_device("cpu") == "cpu" and pick_device("auto") in ("cpu", "cuda", "mps")


@pytest.mark.parametrize("name, message", [
    ("gpu", "device 'gpu' is not one of auto, cpu, cuda"),
    ("cuda:99", "device 'cuda:99' is not available on this machine"),
], ids=["unknown", "unavailable"])
def test_common_pick_device_refuses_unknown_and_unavailable_devices(name, message):
    with pytest.raises(ValueError, match=message):
        pick_device(name)


def test_common_pick_dtype_auto_is_bfloat16_only_where_the_cpu_multiplies_it_natively():
    assert pick_dtype("float32", "cpu") == "float32" and pick_dtype("bfloat16", "cpu") == "bfloat16"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):  # not Linux: only the choice itself can be checked
        assert pick_dtype("auto", "cpu") in ("float32", "bfloat16")
        return
    if "avx512_bf16" in flags:
        assert pick_dtype("auto", "cpu") == "bfloat16"
    elif "amx_bf16" not in flags:  # (AMX alone also needs the kernel to enable it, which torch checks and this does not)
        assert pick_dtype("auto", "cpu") == "float32"


def test_common_pick_dtype_auto_refuses_a_gpu_that_only_emulates_bfloat16(monkeypatch):
    # a V100 or T4: torch counts its emulated bfloat16 as support unless asked not to
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert pick_dtype("auto", "cuda") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert pick_dtype("auto", "cuda") == "bfloat16"


def test_common_pick_optimizer_auto_is_muon_exactly_where_bfloat16_is_native():
    assert pick_optimizer("adamw", "cpu") == "adamw" and pick_optimizer("muon", "cpu") == "muon"
    assert pick_optimizer("auto", "cpu") == ("muon" if pick_dtype("auto", "cpu") == "bfloat16" else "adamw")


def test_common_setup_device_gives_each_torchrun_process_its_gpu_with_tf32_before_anything_is_timed(monkeypatch):
    import common
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    run_device, device_type, run_dtype, run_optimizer, _ = common.setup_device("auto", "float32", "adamw")
    assert (run_device, device_type, run_dtype, run_optimizer) == ("cuda:1", "cuda", "float32", "adamw")
    assert chosen == ["cuda:1"] and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    monkeypatch.delenv("LOCAL_RANK")
    assert common.setup_device("auto", "float32", "adamw")[0] == "cuda" and chosen == ["cuda:1"]


# ---- the allocator -------------------------------------------------------------------------------

def test_common_keep_freed_memory_keeps_large_freed_blocks_resident():
    if platform.libc_ver()[0] != "glibc" or sys.maxsize < 2**32:
        assert keep_freed_memory() is False
        return
    # a fresh process each way, so that nothing earlier moved glibc's own adaptive thresholds, and without the
    # variables that would set them or swap the allocator
    probe = """
import os, sys
from common import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
statm, page = os.open("/proc/self/statm", os.O_RDONLY), os.sysconf("SC_PAGE_SIZE")
resident = lambda: int(os.pread(statm, 200, 0).split()[1]) * page  # allocates nothing on the C heap
x = bytearray(int(sys.argv[2]) * 2**20)  # one zero-filled block: at the top of the heap, when it is in the heap
held = resident()
del x
print(held - resident())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD"))}
    for mib in (24, 100):  # below and above the 32 MiB that glibc's mmap threshold can be raised to
        released = {way: int(subprocess.run([sys.executable, "-c", probe, way, str(mib)], cwd=REPO, env=env,
                                            capture_output=True, text=True, check=True).stdout)
                    for way in ("keep", "default")}
        assert released["default"] > (mib - 4) * 2**20  # glibc unmapped the block ...
        assert released["keep"] < 4 * 2**20               # ... unless told to keep it


# ---- the peak FLOPs behind MFU -------------------------------------------------------------------

def test_common_measures_a_plausible_peak_flops():
    assert measure_peak_flops("cpu") > 1e8


def test_common_measuring_the_peak_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    measure_peak_flops("cpu")
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name, expected", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                            ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H200", 989e12),
                                            ("NVIDIA GeForce RTX 4090", "timed")],
                         ids=["h100-sxm", "h100-pcie", "a100", "h200", "unknown-gpu"])
def test_common_peak_flops_is_the_published_peak_where_known_else_timed(monkeypatch, name, expected):
    import common
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(common, "measure_peak_flops", lambda device, dtype: "timed")
    flops, source = common.peak_flops("cuda", torch.bfloat16)
    assert flops == expected and ("published" in source) == (expected != "timed")
    assert common.peak_flops("cuda", torch.float32)[0] == "timed"  # the published figures are bfloat16's


# ---- checkpoints ---------------------------------------------------------------------------------

def a_checkpoint(model):
    """What a run saves, in miniature: weights, config, numbers, strings, an RNG state, nested containers."""
    return {"model": model.state_dict(), "model_config": dataclasses.asdict(model.config), "iter_num": 7,
            "best_val_loss": 1.5, "tokenizer_path": "tokenizer.json", "betas": [0.9, 0.95],
            "rng": torch.get_rng_state(), "nested": {"a": [1, 2.5, "x", None, True]}}


def test_common_checkpoint_round_trip_into_a_new_folder(tmp_path):
    model = tiny_model()
    checkpoint = a_checkpoint(model)
    path = os.path.join(tmp_path, "sub", "ckpt.pt")  # the folder does not exist yet
    save_checkpoint(checkpoint, path)
    assert os.listdir(os.path.dirname(path)) == ["ckpt.pt"]  # no .tmp left behind
    loaded = load_checkpoint(path)  # weights_only=True
    assert all(not key.startswith("_orig_mod.") for key in loaded["model"])
    assert loaded["iter_num"] == 7 and loaded["best_val_loss"] == 1.5 and loaded["betas"] == [0.9, 0.95]
    assert loaded["nested"] == {"a": [1, 2.5, "x", None, True]} and torch.equal(loaded["rng"], checkpoint["rng"])
    restored, _ = load_model(path)
    idx = torch.randint(0, 50, (2, 16))
    assert torch.equal(restored(idx)[0], model(idx)[0])


def test_common_save_checkpoint_interrupted_half_way_leaves_the_last_good_checkpoint(tmp_path):
    checkpoint = a_checkpoint(tiny_model())
    path = tmp_path / "ckpt.pt"
    save_checkpoint(checkpoint, path)
    before = path.read_bytes()

    def crash_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt
    real_save, torch.save = torch.save, crash_half_way
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint({**checkpoint, "iter_num": 8}, path)
    finally:
        torch.save = real_save
    assert path.read_bytes() == before  # the last good checkpoint is untouched


def test_common_save_checkpoint_refuses_a_compiled_modules_keys(tmp_path):
    with pytest.raises(ValueError, match="_orig_mod"):
        save_checkpoint({"model": {"_orig_mod.tok_emb.weight": torch.zeros(1)}}, tmp_path / "ckpt.pt")


def test_common_load_cut_off_checkpoint_is_one_sentence_naming_it(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": tiny_model().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(SystemExit, match=r"ckpt\.pt cannot be read as a checkpoint .*cut off"):
        load_checkpoint(path)


def test_common_load_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint at .*pretrain.py"):
        load_checkpoint(os.path.join(tmp_path, "nothing.pt"))


# ---- held-out bits as a compressor counts them ---------------------------------------------------

def test_common_score_every_token_gives_each_token_its_longest_context_at_stride_1():
    from common import score_every_token
    model = tiny_model().float()
    ids = torch.randint(0, 50, (40,))
    nats = score_every_token(model, ids, stride=1)
    L = model.config.max_seq_len
    expected = [F.cross_entropy(model(ids[max(0, k - L):k][None])[0][0, -1], ids[k]).item() for k in range(1, 40)]
    assert nats.shape == (39,) and torch.allclose(nats, torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("stride", [1, 5, 8, 16])
def test_common_score_every_token_scores_each_token_once_and_never_from_the_future(stride):
    from common import score_every_token
    model = tiny_model()
    ids = torch.randint(0, 50, (45,))
    nats = score_every_token(model, ids, stride)
    assert nats.shape == (44,) and torch.isfinite(nats).all()
    for i in (3, 17, 30):  # every token after position i changed: the scores of tokens 1..i stay
        changed = torch.cat([ids[:i + 1], torch.randint(0, 50, (44 - i,))])
        assert torch.allclose(score_every_token(model, changed, stride)[:i], nats[:i], atol=1e-6)
    # disjoint windows (stride = max_seq_len) score what the model's mean loss over each window says
    if stride == model.config.max_seq_len:
        x, y = ids[:16][None], ids[1:17][None]
        assert math.isclose(nats[:16].mean().item(), model(x, y)[1].item(), rel_tol=1e-5)


def test_common_score_every_token_refuses_a_stride_outside_the_context():
    from common import score_every_token
    with pytest.raises(ValueError, match="stride"):
        score_every_token(tiny_model(), torch.randint(0, 50, (40,)), stride=17)


# ====================================================================================================
# bench.py: the benchmarks
# ====================================================================================================

def test_bench_split_bytes_reads_a_run_s_splits_from_the_cache_it_was_prepared_in(tiny_run):
    import bench
    run_dir, corpus = tiny_run  # prepared in run_dir/cache, not data/cache
    train, val = bench.split_bytes(str(run_dir / "out"))
    assert train + val == corpus.read_bytes() and 0 < len(val) < len(train)


def test_bench_dynamic_evaluation_never_scores_a_token_from_itself_or_the_future():
    import bench
    model = tiny_model()
    ids = torch.randint(0, 50, (60,))
    nats = bench.dynamic_evaluation(model, ids, chunk=8, lr=0.05, embedding_lr=0.2)
    assert nats.shape == (59,) and torch.isfinite(nats).all()
    # it adapts: later chunks score differently from the model as it is, which it leaves unchanged
    static = bench.dynamic_evaluation(model, ids, chunk=8, lr=0.0, embedding_lr=0.0)
    assert torch.allclose(nats[:8], static[:8], atol=1e-6) and not torch.allclose(nats[8:], static[8:], atol=1e-3)
    for i in (5, 20, 41):  # every token after position i changed: the scores of tokens 1..i stay
        changed = torch.cat([ids[:i + 1], torch.randint(0, 50, (59 - i,))])
        assert torch.allclose(bench.dynamic_evaluation(model, changed, chunk=8, lr=0.05, embedding_lr=0.2)[:i],
                              nats[:i], atol=1e-5)


def test_bench_windows_through_the_loss_agree_with_score_every_token():
    import bench
    from common import score_every_token
    model = tiny_model().float()
    ids = torch.randint(0, 50, (70,))
    expected = score_every_token(model, ids, 8).sum().item()
    assert math.isclose(bench.windows_through_the_loss(model, ids, 8, torch.autocast("cpu", enabled=False)), expected, rel_tol=1e-5)
