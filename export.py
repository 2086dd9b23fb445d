"""
Export a run to a folder that Hugging Face transformers loads like any GPT-2:

    python export.py --out_dir=out --to=out-hf
    python export.py --out_dir=out-finetune --to=out-finetune-hf --dtype=bfloat16

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained("out-hf")
    model = AutoModelForCausalLM.from_pretrained("out-hf")

The model becomes a GPT2LMHeadModel: the same pre-LayerNorm blocks under GPT-2's names, the sinusoidal table
(times its scale) as GPT-2's position table, zero biases where the run has none, and the exact (erf) GELU. The
tokenizer becomes a `tokenizers` byte-level BPE with bpe.py's ids, merges and split pattern; a fine-tuned run's
prompt template becomes its chat template. test_all.py checks that logits, greedy generation, token ids and
decoding agree. It needs `pip install transformers tokenizers safetensors`, which nothing else here does.
"""
import functools
import json
import os
import re
import shutil
import unicodedata

import torch

from bpe import SPLIT_PATTERN
from configurator import configure
from prepare import END
from sample import load_run

# -----------------------------------------------------------------------------
out_dir = "out"  # the run to export (pretrain.py's or finetune.py's out_dir)
to = ""  # the folder to write; it must not exist yet, or be empty
dtype = "float32"  # of the weights written: float32 (the run's own numbers) or bfloat16 (half the size)
# -----------------------------------------------------------------------------


# ---- the tokenizer ----------------------------------------------------------------------------------

def byte_alphabet():
    """GPT-2's names for the 256 bytes, which `tokenizers`' ByteLevel uses: a printable byte is its own
    character, and the other 68 (controls, space, a few of Latin-1) are chr(256), chr(257), ... in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


def class_body(code_point_runs):
    """[(first, last), ...] as the inside of a [...] class: ASCII letters and digits as themselves, the rest as
    \\x{...}, which Oniguruma reads whatever the character (Python's re does not read this form)."""
    name = lambda c: chr(c) if chr(c).isascii() and chr(c).isalnum() else f"\\x{{{c:X}}}"
    return "".join(name(a) if a == b else f"{name(a)}-{name(b)}" for a, b in code_point_runs)


@functools.cache  # about a second: it reads every code point six times
def portable_split_pattern():
    """bpe.SPLIT_PATTERN for `tokenizers`, whose regex engine (Oniguruma) reads \\w, \\d and \\s differently from
    Python's re outside ASCII: Python's \\w holds numerals such as ² and ½ but no combining marks, its \\s holds
    \\x1c-\\x1f, and the two follow different Unicode versions. Here every class is spelled out as the code points
    Python's re matches, line for line as in bpe.py; test_all.py checks that both split text the same way."""
    texts = [(start, "".join(map(chr, range(start, stop)))) for start, stop in ((0, 0xD800), (0xE000, 0x110000))]

    def python_class(regex):  # the code points regex matches, as runs (surrogates are no text)
        return class_body([(start + m.start(), start + m.end() - 1)
                           for start, text in texts for m in re.finditer(f"(?:{regex})+", text)])
    letter, digit, space, word, alnum = map(python_class, (r"[^\W\d_]", r"\d", r"\s", r"\w", r"[^\W_]"))
    cased = [x for _, text in texts for x in re.findall("(?i:[sdmtlver])", text)]  # (?i) also lets s match ſ
    s, d, m, t, l, v, e, r = (class_body((ord(x), ord(x)) for x in cased if re.fullmatch(f"(?i:{c})", x))
                              for c in "sdmtlver")
    return "|".join([
        f"'(?:[{s}{d}{m}{t}]|[{l}][{l}]|[{v}][{e}]|[{r}][{e}])",
        f"[^\\r\\n{word}]?[{letter}]+",
        f"_[{letter}]+",
        f"[{digit}]{{1,3}}",
        f" ?[^{space}{alnum}]+[\\r\\n]*",
        f"[{space}]*[\\r\\n]",
        f"[{space}]+(?![^{space}])",
        f"[{space}]+",
    ])


def token_names(tokenizer):
    """Each id's bytes in GPT-2's byte alphabet, which is how a `tokenizers` vocabulary names tokens."""
    names = byte_alphabet()
    for a, b in tokenizer.merges:
        names.append(names[a] + names[b])
    if len(set(names)) != len(names):
        raise SystemExit("two merges of this tokenizer make the same bytes, which one id stands for in a "
                         "transformers vocabulary; it cannot be exported exactly")
    return names


def hf_tokenizer(tokenizer):
    """bpe.py's tokenizer as a `tokenizers` Tokenizer with the same ids: split by the pattern, bytes named in
    GPT-2's alphabet, merged by rank, the special tokens matched before all of that."""
    from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    if tokenizer.pattern != SPLIT_PATTERN:
        raise SystemExit("this tokenizer splits text with a pattern other than bpe.SPLIT_PATTERN, which export.py "
                         "cannot carry over exactly")
    names = token_names(tokenizer)
    bpe = models.BPE(vocab={name: i for i, name in enumerate(names)},
                     merges=[(names[a], names[b]) for a, b in tokenizer.merges], ignore_merges=False)
    hf = HFTokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(portable_split_pattern()), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.decoder = decoders.ByteLevel()
    specials = sorted(tokenizer.special_tokens.items(), key=lambda item: item[1])
    hf.add_special_tokens([AddedToken(s, special=True, normalized=False) for s, _ in specials])
    assert all(hf.token_to_id(s) == i for s, i in specials)  # added after the merges, in id order
    return hf


def chat_template(template):
    """A fine-tuned run's prompt template (common.answer_ids) as Jinja: one user message, stripped, between
    the prompt and response tokens, after a rating token where the run was fine-tuned with one."""
    rating = ("{%- set r = rating if rating is defined else 5 -%}"
              "{%- if r not in [1, 2, 3, 4, 5] -%}{{ raise_exception('rating must be 1 to 5') }}{%- endif -%}"
              "{{- '<|rating_' ~ r ~ '|>' -}}") if template.get("rating_token") else ""
    return ("{%- if messages | length != 1 or messages[0]['role'] != 'user' -%}"
            "{{ raise_exception('this model answers one user message') }}{%- endif -%}"
            f"{rating}{template['prompt']}{{{{- messages[0]['content'] | trim -}}}}"
            f"{{%- if add_generation_prompt -%}}{template['response']}{{%- endif -%}}")


# ---- the model --------------------------------------------------------------------------------------

def gpt2_weights(model):
    """The run's weights under GPT-2's names. GPT-2's Conv1D layers keep their weights as (in, out), the
    transpose of nn.Linear's, and always have biases."""
    def bias(layer, size):
        return layer.bias.detach() if layer.bias is not None else torch.zeros(size)
    weights = {"transformer.wte.weight": model.tok_emb.weight.detach(),
               "transformer.wpe.weight": model.pos_enc(0, model.config.max_seq_len),  # the table times its scale
               "transformer.ln_f.weight": model.ln_f.weight.detach(),
               "transformer.ln_f.bias": bias(model.ln_f, model.config.d_model)}
    for i, block in enumerate(model.blocks):
        for name, norm in (("ln_1", block.ln1), ("ln_2", block.ln2)):
            weights[f"transformer.h.{i}.{name}.weight"] = norm.weight.detach()
            weights[f"transformer.h.{i}.{name}.bias"] = bias(norm, model.config.d_model)
        for name, linear in (("attn.c_attn", block.attn.qkv), ("attn.c_proj", block.attn.proj),
                             ("mlp.c_fc", block.mlp.fc), ("mlp.c_proj", block.mlp.proj)):
            weights[f"transformer.h.{i}.{name}.weight"] = linear.weight.detach().t().contiguous()
            weights[f"transformer.h.{i}.{name}.bias"] = bias(linear, linear.out_features)
    weights["lm_head.weight"] = model.tok_emb.weight.detach()  # tied, as in the run
    return weights


def hf_model(model, end_id):
    """The run's GPT as a GPT2LMHeadModel, every setting taken from the run (GPT-2's defaults are not ours:
    tanh GELU, dropout 0.1, 1024 positions, token 50256)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model, n_layer=c.n_layers,
                        n_head=c.n_heads, n_inner=c.d_ff, activation_function="gelu", layer_norm_epsilon=model.ln_f.eps,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                        bos_token_id=end_id, eos_token_id=end_id, pad_token_id=end_id, tie_word_embeddings=True)
    hf = GPT2LMHeadModel(config)
    hf.load_state_dict(gpt2_weights(model))
    return hf.eval()


# ---- the folder -------------------------------------------------------------------------------------

def folder_readme(run_dir, checkpoint, model, tokenizer, weights_dtype):
    """What the folder holds, how to load it, and where it behaves otherwise than the run's own scripts."""
    c, fine_tuned = model.config, checkpoint.get("kind") == "finetune"
    if fine_tuned:
        ask = ('ids = tokenizer.apply_chat_template([{"role": "user", "content": "How do I reverse a list?"}],\n    '
               '    add_generation_prompt=True, return_dict=False, return_tensors="pt")')
        template = checkpoint["template"]
        rating = "<|rating_5|>" if template.get("rating_token") else ""
        choose = " (`rating=1` to `5` in apply_chat_template picks the rating token)" if rating else ""
        chat = (f"\nIts chat template asks the way sample.py does, with one user message, stripped: "
                f"`{rating}{template['prompt']}` message `{template['response']}`{choose}; the answer ends with "
                f"{template['end']}. sample.py cuts a prompt too long for the context from the left; the template "
                f"does not.\n")
    else:
        ask, chat = 'ids = tokenizer("def ", return_tensors="pt").input_ids', ""
    return f"""# A GPT exported from {os.path.basename(os.path.abspath(run_dir))}

A {"fine-tuned" if fine_tuned else "pretrained"} GPT ({model.num_params():,} parameters: {c.n_layers} layers, \
d_model {c.d_model}, {c.n_heads} heads, d_ff {c.d_ff}) and its byte-level BPE tokenizer ({tokenizer.vocab_size} ids), \
written by export.py as a transformers GPT-2 (GPT2LMHeadModel), weights in {weights_dtype}.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
    model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")
    {ask}
    print(tokenizer.decode(model.generate(ids, max_new_tokens={min(50, c.max_seq_len // 2)}, do_sample=False)[0]))

The model reads at most {c.max_seq_len} tokens, prompt and answer together. sample.py slides its window on past \
that; transformers' generate fails with an IndexError, so keep the prompt's length plus max_new_tokens within \
{c.max_seq_len}.
{chat}
Special tokens ({", ".join(tokenizer.special_tokens)}): like every transformers tokenizer, `tokenizer(text)` \
turns their text inside `text` into the tokens themselves. For text you did not write, pass \
`split_special_tokens=True`: it is then encoded as plain text, to the same ids as bpe.py's `encode(text)`. \
`apply_chat_template(..., sanitize_control_tokens=True)` (transformers 5) does so for the messages.

The tokenizer splits text with bpe.py's pattern, its character classes spelled out as Python's re reads them \
(Unicode {unicodedata.unidata_version}), since the regex engine of `tokenizers` reads \\w, \\d and \\s otherwise.
"""


def export(run_dir, to_dir, weights_dtype="float32"):
    """Write the Hugging Face folder for the run in run_dir to to_dir: into a new folder beside it, renamed to
    to_dir once complete, so that a failure leaves nothing behind."""
    try:
        import safetensors, tokenizers, transformers  # noqa: F401 (only this script needs them)
    except ImportError as e:
        raise SystemExit(f"export.py needs {e.name}: pip install transformers tokenizers safetensors")
    if not to_dir:
        raise SystemExit("give the folder to write with --to=FOLDER")
    if weights_dtype not in ("float32", "bfloat16"):
        raise SystemExit(f"dtype must be float32 or bfloat16, not {weights_dtype!r}")
    if os.path.exists(to_dir) and not (os.path.isdir(to_dir) and not os.listdir(to_dir)):
        raise SystemExit(f"{to_dir} exists and is not an empty folder; give a new --to, or remove it first")
    model, tokenizer, checkpoint = load_run(run_dir, "cpu")
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer(tokenizer), bos_token=END, eos_token=END, pad_token=END,
        model_max_length=model.config.max_seq_len, clean_up_tokenization_spaces=False,
        chat_template=chat_template(checkpoint["template"]) if checkpoint.get("kind") == "finetune" else None)
    hf = hf_model(model, tokenizer.special_tokens[END]).to(getattr(torch, weights_dtype))
    to_dir = os.path.abspath(to_dir)
    tmp = os.path.join(os.path.dirname(to_dir), f".{os.path.basename(to_dir)}.tmp{os.getpid()}")
    try:
        os.makedirs(tmp)
        hf.save_pretrained(tmp)
        hf_tok.save_pretrained(tmp)
        config_path = os.path.join(tmp, "tokenizer_config.json")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # transformers 5 reads it too; 4 knows no other name
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(folder_readme(run_dir, checkpoint, model, tokenizer, weights_dtype))
        if os.path.isdir(to_dir):
            os.rmdir(to_dir)  # empty, as checked above
        os.replace(tmp, to_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    configure(globals())
    export(out_dir, to, dtype)
    print(f"exported {out_dir} to {to}")
