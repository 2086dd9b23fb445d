"""
Sample from a trained GPT, printing tokens as they are generated.

    python sample.py --start="def "                        # continue a text (pretrained checkpoint)
    python sample.py --start=FILE:prompt.txt               # the prompt from a file
    python sample.py --out_dir=out-finetune --start="How do I reverse a list?"   # answer a prompt
    python sample.py --out_dir=out-finetune --chat=True    # a prompt loop in the terminal
"""
import os
import sys

import torch

from bpe import Tokenizer
from configurator import configure
from common import answer_ids, checked_tokenizer_path, load_checkpoint, pick_device
from model import GPT, GPTConfig
from prepare import END

# -----------------------------------------------------------------------------
out_dir = "out"  # the run to sample from (pretrain.py's or finetune.py's out_dir)
start = ""  # the prompt, or FILE:path to read it from a file; empty starts a new document
num_samples = 1
max_new_tokens = 300
temperature = 0.8  # 0 picks the most likely token every time
top_k = 200  # 0 turns it off
top_p = 0.95  # 1.0 turns it off
rating = None  # for a checkpoint fine-tuned with rating_mode='condition': the rating asked for (None: 5)
chat = False  # a prompt loop (fine-tuned checkpoints)
seed = 1337
device = "auto"
# -----------------------------------------------------------------------------


def load_run(run_dir, run_device):
    """Return (model, tokenizer, checkpoint) of a pretrain.py or finetune.py run, refusing a mismatched tokenizer."""
    checkpoint_path = os.path.join(run_dir, "ckpt.pt")
    checkpoint = load_checkpoint(checkpoint_path)  # on the CPU: only the weights go to run_device
    tokenizer = Tokenizer.load(checked_tokenizer_path(checkpoint, checkpoint_path))
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(run_device).eval()
    return model, tokenizer, checkpoint


def print_crop_note(n_ids, n_kept):
    print(f"[the prompt has {n_ids} tokens, more than fit the context; keeping the last {n_kept}]", file=sys.stderr)


def stream(model, tokenizer, prompt_ids, device, stop_token=None):
    """Generate after prompt_ids, printing each piece of text as soon as its characters are complete."""
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    new_ids = (int(t[0]) for t in model.generate_stream(idx, max_new_tokens, temperature=temperature,
                                                         top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                                                         stop_token=stop_token))
    if stop_token is not None:  # the end token itself is not printed
        new_ids = (t for t in new_ids if t != stop_token)
    for piece in tokenizer.decode_stream(new_ids):
        print(piece, end="", flush=True)
    print()


def answer(model, tokenizer, template, prompt, rating, device):
    """Ask in the fine-tuning template (common.answer_ids) and print only the response. rating: for a checkpoint
    fine-tuned with rating_mode='condition', the rating to answer at (None: 5)."""
    ids, n_cut = answer_ids(tokenizer, template, prompt, model.config.max_seq_len, rating or 5)
    if n_cut:
        n_kept = len(ids) - 2 - bool(template.get("rating_token"))  # less the template's tokens around the prompt
        print_crop_note(n_kept + n_cut, n_kept)
    stream(model, tokenizer, ids, device, stop_token=tokenizer.special_tokens[template["end"]])


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    configure(globals())
    if rating is not None and (type(rating) is not int or not 1 <= rating <= 5):  # not 5.0, not True
        raise SystemExit(f"rating must be 1 to 5, not {rating!r}")
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise SystemExit(f"temperature must be >= 0, top_k >= 0 and top_p in (0, 1]; got {temperature}, {top_k}, {top_p}")
    if num_samples < 1 or max_new_tokens < 1:
        raise SystemExit(f"num_samples and max_new_tokens must be at least 1; got {num_samples} and {max_new_tokens}")
    try:
        run_device = pick_device(device)
    except ValueError as e:
        raise SystemExit(str(e))
    torch.manual_seed(seed)
    model, tokenizer, checkpoint = load_run(out_dir, run_device)
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"cannot read the prompt file {start[5:]} ({e.strerror if isinstance(e, OSError) else e.reason})")
    fine_tuned = checkpoint["kind"] == "finetune"
    if rating is not None and not (fine_tuned and checkpoint["template"].get("rating_token")):
        raise SystemExit(f"--rating is only for a checkpoint fine-tuned with rating_mode='condition'; {out_dir} is not one")

    if chat:
        if not fine_tuned:
            raise SystemExit(f"--chat=True needs a fine-tuned checkpoint; {out_dir} holds a pretrained one "
                             f"(train one with `python finetune.py config/finetune_small.py`)")
        if start.strip():  # a prompt given with --start is answered first
            answer(model, tokenizer, checkpoint["template"], start, rating, run_device)
        print("type a prompt and press Enter; Ctrl-D or Ctrl-C ends")
        while True:
            try:
                prompt = input("> ").strip()
            except (EOFError, KeyboardInterrupt):
                print()
                break
            try:
                if prompt:
                    answer(model, tokenizer, checkpoint["template"], prompt, rating, run_device)
            except KeyboardInterrupt:  # Ctrl-C during an answer stops the answer, not the loop
                print()
    elif fine_tuned:
        if not start.strip():
            raise SystemExit("a fine-tuned model answers a prompt: give one with --start=..., or use --chat=True")
        for i in range(num_samples):
            if i:
                print("-" * 40)
            answer(model, tokenizer, checkpoint["template"], start, rating, run_device)
    else:
        prompt_ids = tokenizer.encode(start) if start else [tokenizer.special_tokens[END]]
        if len(prompt_ids) > model.config.max_seq_len:  # the end of the prompt matters most
            print_crop_note(len(prompt_ids), model.config.max_seq_len)
            prompt_ids = prompt_ids[-model.config.max_seq_len:]
        for i in range(num_samples):
            if i:
                print("-" * 40)
            print(start, end="")
            stream(model, tokenizer, prompt_ids, run_device)
