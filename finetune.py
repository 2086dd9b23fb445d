"""
Fine-tune a pretrained GPT on rated prompt/response pairs (a CSV with columns prompt,response,rating).

    python finetune.py config/finetune_small.py                     # after python pretrain.py config/small.py
    python finetune.py config/finetune_small.py --rating_mode=dpo   # weight, filter, condition, kto or dpo
    python finetune.py config/finetune_small.py --init_from=resume  # continue where the last run stopped
    python sample.py --out_dir=out-finetune --start="How do I reverse a list?"

Each row becomes [<|prompt|>] prompt [<|response|>] response [<|endoftext|>], the parts encoded separately, and
only the response and the end token are learned. rating_mode says what the ratings do; each mode has one block
below with its rows, its loss and what it logs. Prompts are split into training and validation; every
evaluation logs the held-out response loss of each rating and the preference score to out_dir/log.csv. With
--answer_checks=True the model then answers each held-out prompt that has checks greedily, sandbox.py runs the
checks, and parse and pass rates are printed (every answer goes to out_dir/answers.csv). --help lists every setting.
"""
import copy
import dataclasses
import json
import math
import os
import random
import time

import pandas as pd
import torch
from torch.nn import functional as F
from tqdm import tqdm

from bpe import Tokenizer
from configurator import configure
from common import (answer_ids, append_log, check_settings, checked_tokenizer_path,
                    copy_tokenizer, file_sha256, keep_freed_memory, load_checkpoint, non_finite_stop, restore_rng_state,
                    resume_optimizers, rng_state, save_checkpoint, setup_device, step_optimizers, stop_on_ctrl_c)
from model import GPT, GPTConfig
from prepare import END, PROMPT, RESPONSE
from sandbox import defines_function, run_checks

# -----------------------------------------------------------------------------
# settings: override with config files (config/*.py, the finetuning section of a config.json) and --name=value
# I/O
init_from = "out"  # the pretrained run's out_dir or a checkpoint file in it; 'resume' continues out_dir's run
data_path = "data/fine_tune_data.csv"
out_dir = "out-finetune"  # must differ from the pretrained run's directory, which is never written to
skip_bad_rows = False  # True skips rows with a bad rating or an empty field (and says how many) instead of stopping
# how ratings are used
rating_mode = "filter"  # 'weight', 'filter', 'condition', 'kto' or 'dpo' (their blocks below say what each does)
min_rating = 4  # filter, and dpo's SFT term: the lowest rating that is learned
condition_contrast = 1.0  # condition: weight of the contrast term (see contrast_loss); 0 turns it off
condition_rank = 0.5  # condition: weight of the ranking term (see rank_loss); 0 turns it off
condition_beta = 5.0  # condition: how sharply both terms saturate in the per-token log-probability gap
kto_beta = 0.1  # kto: how sharply the value function saturates in the log-probability ratio
kto_lambda_desirable = 1.0  # kto: weight of desirable rows
kto_lambda_undesirable = 1.0  # kto: weight of undesirable rows (loss aversion when larger)
dpo_beta = 0.1  # dpo: how sharply the loss saturates in the summed log-probability ratios (0.1 as in the paper)
dpo_sft = 0.3  # dpo: weight of an SFT term on preferred answers rated >= min_rating (NOTES.md, Fine-tuning)
# training
max_iters = 150
n_epochs = 0.0  # if > 0, train for this many passes over the training rows instead of max_iters
eval_interval = 50
val_fraction = 0.2  # of the prompts (with all their responses) held out
batch_size = 16
optimizer = "auto"  # 'adamw', or 'muon' for the blocks' matrices as in pretrain.py; 'auto': as common.pick_optimizer
learning_rate = 3e-4  # AdamW's peak
muon_lr = 3e-4  # Muon's peak (optimizer='muon')
min_lr_ratio = 0.1
warmup_iters = 20
lr_decay_iters = 0  # 0 means the run's length
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 turns clipping off
dropout = 0.0  # replaces the pretrained run's dropout
# judging what the model writes (runs model-written code in sandbox.py's child process; off unless asked for)
answer_checks = False  # True: after training, answer each held-out prompt that has checks and run its checks
checks_path = "data/fine_tune_checks.json"  # {prompt: [Python expression a correct answer makes true, ...]}
answer_tokens = 160  # the most tokens of one greedy answer
check_seconds = 2.0  # wall-clock and CPU limit of each answer's run
check_memory_mb = 512  # address-space limit of the process that runs the answers
# system
device = "auto"  # 'auto' picks cuda, then mps, then cpu
dtype = "auto"  # 'bfloat16' (autocast) where the device multiplies it natively, else 'float32'; or either by name
compile = False  # torch.compile the model (batches are then padded to max_seq_len to keep one shape)
seed = 1337
# -----------------------------------------------------------------------------
REFERENCE_MODES = ("kto", "dpo")  # the modes that train against a frozen copy of the pretrained model
REWARD_COLUMNS = ("reward_margin", "reward_accuracy", "chosen_logprob")  # log.csv, reference modes only
COLUMNS = ("prompt", "response", "rating")
HEAD_ELEMENTS = 1 << 22  # logits scored at once: 16 MiB in float32

# -----------------------------------------------------------------------------
# the rated rows: read, cleaned, split by prompt

def read_rows(path):
    """Read the CSV with pandas into a DataFrame of stripped strings with the columns prompt, response, rating."""
    if not os.path.isfile(path):
        raise SystemExit(f"data_path {path} does not exist; give a CSV file with the columns prompt,response,rating")
    try:
        # utf-8-sig drops a BOM; str and keep_default_na keep texts such as 'None' or 'NA' as they are
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True,
                         skip_blank_lines=False)  # kept, so that row numbers in messages count them
    except pd.errors.EmptyDataError:
        raise SystemExit(f"{path} is empty; it needs the header prompt,response,rating and one row per rated response")
    except UnicodeDecodeError:
        raise SystemExit(f"{path} is not UTF-8 text; save it as UTF-8")
    except pd.errors.ParserError as e:
        raise SystemExit(f"{path} is not valid CSV ({str(e).strip()}); quote fields that hold commas or newlines")
    df.columns = [str(c).strip().lower() for c in df.columns]
    if missing := [c for c in COLUMNS if c not in df.columns]:
        raise SystemExit(f"{path} has no column {', '.join(missing)} (found: {', '.join(df.columns)}); "
                         f"the header must name prompt, response and rating")
    df = df[list(COLUMNS)].apply(lambda column: column.str.strip())  # extra columns go
    df = df[(df != "").any(axis=1)]  # blank lines go, keeping their index labels for the row numbers
    if len(df) == 0:
        raise SystemExit(f"{path} is empty; it has a header but no rows")
    return df


def clean_rows(df, path, skip_bad_rows=False):
    """Return the rows with integer ratings 1-5 and non-empty texts; stop on bad rows unless skip_bad_rows."""
    rating = pd.to_numeric(df["rating"], errors="coerce")
    bad_rating = ~(rating.isin([1, 2, 3, 4, 5]))  # NaN, 0, 6 and 4.5 all fail; '5.0' is fine
    empty = (df["prompt"] == "") | (df["response"] == "")
    # the rows' numbers as a spreadsheet shows them: the header is row 1
    rows = lambda mask: ", ".join(str(i + 2) for i in df.index[mask][:5]) + (", ..." if mask.sum() > 5 else "")
    for mask, what in [(bad_rating, "a rating that is not a whole number from 1 to 5"),
                       (empty & ~bad_rating, "an empty prompt or response")]:
        if mask.any() and not skip_bad_rows:
            raise SystemExit(f"{path}: {mask.sum()} row{'s have' if mask.sum() > 1 else ' has'} {what} (row "
                             f"{rows(mask)}; the header is row 1); fix them or set skip_bad_rows=True to skip them")
    bad = bad_rating | empty
    if bad.any():
        print(f"skipped {bad.sum()} of {len(df)} rows of {path} with a bad rating or an empty prompt or "
              f"response (rows {rows(bad)})")
    df = df[~bad].copy()
    df["rating"] = rating[~bad].astype(int)
    return df.reset_index(drop=True)


def split_by_prompt(df, val_fraction, seed, path="the data"):
    """Split into (train, val) so that all responses to one prompt land on the same side (seeded)."""
    prompts = list(dict.fromkeys(df["prompt"]))  # in order of appearance, so the split depends only on the seed
    if len(prompts) < 2:
        raise SystemExit(f"{path} has {len(df)} usable rows with {len(prompts)} distinct prompt"
                         f"{'s' if len(prompts) != 1 else ''} after cleaning; at least 2 prompts are needed to hold "
                         f"some out for validation")
    random.Random(seed).shuffle(prompts)
    is_val = df["prompt"].isin(prompts[:min(len(prompts) - 1, max(1, round(val_fraction * len(prompts))))])
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def resolve_init(init_from, out_dir):
    """Return the pretrained checkpoint's path, refusing an out_dir that would overwrite it."""
    path = os.path.join(init_from, "ckpt.pt") if os.path.isdir(init_from) else init_from
    if not os.path.isfile(path):
        raise SystemExit(f"no pretrained checkpoint at {path}; run `python pretrain.py config/small.py` first "
                         f"or point init_from at a run's out_dir")
    if os.path.realpath(out_dir) == os.path.realpath(os.path.dirname(path)):
        raise SystemExit(f"out_dir={out_dir} is the directory of the pretrained checkpoint {path}, which "
                         f"fine-tuning must not overwrite; choose another out_dir")
    return path


# -----------------------------------------------------------------------------
# examples: the rows as token ids, and the model's log-probability of their responses

def rating_token(rating):
    return f"<|rating_{rating}|>"


@dataclasses.dataclass
class Example:
    prefix: list  # [<|rating_k|>] in condition mode, then [<|prompt|>]
    prompt_ids: list  # the prompt, encoded on its own
    reply: list  # [<|response|>] + the response encoded on its own + [<|endoftext|>]
    rating: int
    prompt: str
    weight: float = 1.0
    desirable: bool = True


def encode_row(tokenizer, prompt, response, rating, condition, weight=1.0, desirable=True):
    """Encode prompt and response separately, so that no merge can cross the boundary between them."""
    special = tokenizer.special_tokens
    prefix = ([special[rating_token(rating)]] if condition else []) + [special[PROMPT]]
    reply = [special[RESPONSE]] + tokenizer.encode(response) + [special[END]]
    return Example(prefix, tokenizer.encode(prompt), reply, rating, prompt, weight, desirable)


def join(prefix, prompt_ids, reply, max_seq_len):
    """(x, y, n_prompt_tokens_cut) of one example, or None if the reply does not fit beside one prompt token.
    x = prefix + prompt + [<|response|>] + response; y is x shifted left by one, -1 (ignored) wherever the next
    token is not the response's or the end token. A prompt too long is cut from the left (its end matters most)."""
    room = max_seq_len + 1 - len(prefix) - len(reply)  # x is one shorter than the full sequence
    if room < 1:
        return None
    kept = prompt_ids[max(0, len(prompt_ids) - room):]
    x = prefix + kept + reply[:-1]
    y = [-1] * (len(prefix) + len(kept)) + reply[1:]
    return x, y, len(prompt_ids) - len(kept)


def prepare(tokenizer, df, rating_mode, max_seq_len):
    """Turn rows into Examples; returns (examples, n_prompts_cut, n_rows_skipped_as_too_long)."""
    examples, n_cut, n_long = [], 0, 0
    for row in df.itertuples(index=False):
        example = encode_row(tokenizer, row.prompt, row.response, row.rating, rating_mode == "condition",
                             getattr(row, "weight", 1.0), getattr(row, "desirable", row.rating >= 4))
        joined = join(example.prefix, example.prompt_ids, example.reply, max_seq_len)
        if joined is None:
            n_long += 1
        else:
            n_cut += joined[2] > 0
            examples.append(example)
    return examples, n_cut, n_long


def inputs_and_targets(examples, max_seq_len, prefix=None):
    """The (x, y) lists of each example (join), with prefix in place of the examples' own where given."""
    return [join(prefix or e.prefix, e.prompt_ids, e.reply, max_seq_len)[:2] for e in examples]


def collate(pairs, pad_id, device, pad_to=None):
    """Stack (x, y) lists into (B, T) tensors, padded on the right; padded targets are -1, so the loss skips them."""
    T = pad_to or max(len(x) for x, _ in pairs)
    x = torch.tensor([x + [pad_id] * (T - len(x)) for x, _ in pairs], dtype=torch.long)
    y = torch.tensor([y + [-1] * (T - len(y)) for _, y in pairs], dtype=torch.long)
    return x.to(device), y.to(device)


def sequence_logprobs(model, x, y):
    """Per example, the summed log-probability of its targets (B,) and their number (B,). Only positions with a target
    go through the head, a few hundred at a time: (B, T, V) logits at once would be a step's largest tensor."""
    has_target = y != -1
    rows, cols = has_target.nonzero(as_tuple=True)
    hidden, targets = model.hidden_states(x)[rows, cols], y[rows, cols]  # (N, C), (N,)
    step = max(1, HEAD_ELEMENTS // model.config.vocab_size)
    logprobs = torch.cat([-F.cross_entropy(model.lm_head(hidden[i:i + step]).float(), targets[i:i + step],
                                           reduction="none") for i in range(0, len(targets), step)])
    return torch.zeros(len(y), device=y.device).index_add(0, rows, logprobs), has_target.sum(dim=1)


def batch_logprobs(net, pairs, run):
    """sequence_logprobs of (x, y) pairs padded into one batch (run: pad_id, device, pad_to, autocast)."""
    x, y = collate(pairs, run["pad_id"], run["device"], run["pad_to"])
    with run["autocast"]:
        return sequence_logprobs(net, x, y)


# -----------------------------------------------------------------------------
# the rating modes, one block each: the rows it learns, what its batches are drawn from, and its loss of a batch,
# batch_loss(model, reference, batch, it, run) -> (loss, {name: number worth logging}); run holds the set-up a loss
# needs: max_seq_len, pad_id, device, pad_to, autocast, special, sample_prefix and rows_by_prompt

# ---- weight: every row, its loss scaled by rating/5 (the original project's behaviour)

def weight_rows(df, min_rating):
    return df.assign(weight=df["rating"] / 5)


def weighted_loss(logprobs, n_tokens, weights):
    """Mean loss per response token, each row's tokens scaled by its weight (1, or rating/5 in weight mode)."""
    return -(weights * logprobs).sum() / n_tokens.sum().clamp(min=1)


def weight_batch_loss(model, reference, batch, it, run):
    """weight's and filter's loss: weighted_loss of the rows' responses. Logs nothing."""
    logprobs, n_tokens = batch_logprobs(model, inputs_and_targets(batch, run["max_seq_len"]), run)
    weights = torch.tensor([e.weight for e in batch], device=run["device"])
    return weighted_loss(logprobs, n_tokens, weights), {}


# ---- filter: the rows rated at least min_rating, each at weight 1

def filter_rows(df, min_rating):
    return df[df["rating"] >= min_rating]


# ---- condition: every row under its own rating token, told apart from a contrasting rating and ranked

def contrast_rating(rating):
    """The rating token a row is also read under in condition mode: the top one, or for a top-rated row the bottom."""
    return 5 if rating < 5 else 1


def contrast_loss(logprobs, contrast_logprobs, n_tokens, beta):
    """Mean over rows of -log sigmoid(beta * gap), gap: how much likelier per token the response is under its own
    rating token than under contrast_rating's. The model must tell a row's rating from the answer at every token:
    without it, a rude answer learned under <|rating_1|> is as likely under <|rating_5|> once it has begun."""
    gap = (logprobs - contrast_logprobs) / n_tokens.clamp(min=1)
    return F.softplus(-beta * gap).mean()


def rivals(batch, rows_by_prompt, seed, it):
    """For each row of a batch, another training row of the same prompt with a different rating, or None if its
    prompt has none; drawn from a generator seeded by seed and the iteration, so a resumed run draws the same."""
    rng = random.Random(f"{seed}:{it}")
    chosen = []
    for e in batch:
        others = [r for r in rows_by_prompt[e.prompt] if r.rating != e.rating]
        chosen.append(rng.choice(others) if others else None)
    return chosen


def rank_loss(logprobs, n_tokens, rival_logprobs, rival_n_tokens, higher, beta):
    """Mean over rows of -log sigmoid(beta * margin), margin: how much likelier per token the higher-rated of two
    answers to one prompt is than the other, both under <|rating_5|> (higher: where the row, not its rival, is the
    higher-rated). It teaches what the top rating means across answers, which the contrast term does not."""
    gap = logprobs / n_tokens.clamp(min=1) - rival_logprobs / rival_n_tokens.clamp(min=1)
    return F.softplus(-beta * torch.where(higher, gap, -gap)).mean()


def condition_batch_loss(model, reference, batch, it, run):
    """The mean loss per token of the rows under their own rating tokens, plus condition_contrast times the contrast
    term and condition_rank times the ranking term (logged as contrast and rank), all in one forward pass."""
    B, special, max_seq_len = len(batch), run["special"], run["max_seq_len"]
    pairs = inputs_and_targets(batch, max_seq_len)
    contrast, rank = condition_contrast > 0, condition_rank > 0
    if contrast or rank:  # the same rows with their contrasting rating token first
        pairs += [([special[rating_token(contrast_rating(e.rating))], *x[1:]], y) for e, (x, y) in zip(batch, pairs)]
    if rank:  # and a rival answer to each row's prompt under <|rating_5|>, where it has one
        rival = rivals(batch, run["rows_by_prompt"], seed, it)
        ranked = [k for k in range(B) if rival[k] is not None]
        pairs += inputs_and_targets([rival[k] for k in ranked], max_seq_len, run["sample_prefix"])
    logprobs, n_tokens = batch_logprobs(model, pairs, run)
    weights = torch.tensor([e.weight for e in batch], device=run["device"])
    loss, logged = weighted_loss(logprobs[:B], n_tokens[:B], weights), {}
    if contrast:
        contrast_term = contrast_loss(logprobs[:B], logprobs[B:2 * B], n_tokens[:B], condition_beta)
        loss, logged["contrast"] = loss + condition_contrast * contrast_term, contrast_term.item()
    if rank and ranked:  # a 5-rated row's own reading is under <|rating_5|>, any other's contrasting one is
        top = torch.tensor([k if batch[k].rating == 5 else B + k for k in ranked], device=run["device"])
        higher = torch.tensor([batch[k].rating > rival[k].rating for k in ranked], device=run["device"])
        rank_term = rank_loss(logprobs[top], n_tokens[top], logprobs[2 * B:], n_tokens[2 * B:], higher,
                              condition_beta)
        loss, logged["rank"] = loss + condition_rank * rank_term, rank_term.item()
    return loss, logged


# ---- kto: rows rated 4-5 desirable, 1-2 undesirable, against the frozen pretrained model

def kto_rows(df, min_rating):
    df = df[df["rating"] != 3]  # a middling rating says neither 'more of this' nor 'less of this'
    return df.assign(desirable=df["rating"] >= 4)


def kto_loss(logprobs, ref_logprobs, kl_logprobs, kl_ref_logprobs, desirable, beta, lambda_d, lambda_u):
    """KTO (Ethayarajh et al. 2024): reward r = log pi(y|x) - log pi_ref(y|x); z0 = KL(pi || pi_ref) estimated on
    mismatched pairs, clamped at 0, not differentiated; value = lambda_D sigmoid(beta (r - z0)) for desirable rows,
    lambda_U sigmoid(beta (z0 - r)) for undesirable; loss = mean(lambda_y - value). Returns (loss, z0)."""
    z0 = (kl_logprobs - kl_ref_logprobs).mean().clamp(min=0).detach()
    reward = logprobs - ref_logprobs
    lam = torch.where(desirable, torch.full_like(reward, lambda_d), torch.full_like(reward, lambda_u))
    value = lam * torch.sigmoid(torch.where(desirable, beta * (reward - z0), beta * (z0 - reward)))
    return (lam - value).mean(), z0


def kto_batch_loss(model, reference, batch, it, run):
    """kto_loss of a batch, each prompt paired with the next row's response for the KL term. Logs z0, and with rows
    of both kinds the desirable rows' mean reward above the others' and their log-probability per token."""
    pairs = inputs_and_targets(batch, run["max_seq_len"])
    mismatched = [join(a.prefix, a.prompt_ids, b.reply, run["max_seq_len"])[:2]
                  for a, b in zip(batch, batch[1:] + batch[:1])]
    logprobs, n_tokens = batch_logprobs(model, pairs, run)
    with torch.no_grad():  # the frozen reference reads exactly what the model reads
        ref_logprobs, _ = batch_logprobs(reference, pairs, run)
        kl_logprobs, _ = batch_logprobs(model, mismatched, run)
        kl_ref_logprobs, _ = batch_logprobs(reference, mismatched, run)
    desirable = torch.tensor([e.desirable for e in batch], device=run["device"])
    loss, z0 = kto_loss(logprobs, ref_logprobs, kl_logprobs, kl_ref_logprobs, desirable, kto_beta,
                        kto_lambda_desirable, kto_lambda_undesirable)
    logged = {"z0": z0.item()}
    if desirable.any() and not desirable.all():
        reward = (logprobs - ref_logprobs).detach()
        logged["reward_margin"] = (reward[desirable].mean() - reward[~desirable].mean()).item()
        logged["chosen_logprob"] = (logprobs[desirable] / n_tokens[desirable].clamp(min=1)).mean().item()
    return loss, logged


# ---- dpo: pairs of differently rated answers to one prompt, against the frozen pretrained model

def preference_pairs(examples):
    """dpo's (chosen, rejected) pairs: within each prompt, every answer with every lower-rated one (equal ratings
    make no pair). Returns (pairs, the number of prompts that have none)."""
    by_prompt = {}
    for e in examples:
        by_prompt.setdefault(e.prompt, []).append(e)
    pairs = [(a, b) for answers in by_prompt.values() for a in answers for b in answers if a.rating > b.rating]
    return pairs, sum(len({e.rating for e in answers}) < 2 for answers in by_prompt.values())


def dpo_pairs(examples):
    """What dpo's batches are drawn from: preference_pairs, refusing data_path if it has none."""
    pairs, n_alone = preference_pairs(examples)
    print(f"dpo: {len(pairs)} pairs of differently rated answers to the same prompt; left out {n_alone} training "
          f"prompts that have none")
    if not pairs:
        raise SystemExit(f"{data_path} has no training prompt with two differently rated answers, so dpo has no "
                         f"pairs; add rows or choose another rating_mode")
    return pairs


def dpo_loss(chosen_logprobs, rejected_logprobs, ref_chosen_logprobs, ref_rejected_logprobs, beta):
    """DPO (Rafailov et al. 2023): an answer's reward is beta * (log pi(y|x) - log pi_ref(y|x)), summed over the
    response and end token; loss = mean of -log sigmoid(chosen - rejected). Returns (loss, chosen (B,), rejected (B,)),
    the rewards detached."""
    chosen = beta * (chosen_logprobs - ref_chosen_logprobs)
    rejected = beta * (rejected_logprobs - ref_rejected_logprobs)
    return F.softplus(rejected - chosen).mean(), chosen.detach(), rejected.detach()


def dpo_batch_loss(model, reference, batch, it, run):
    """dpo_loss of a batch of pairs plus dpo_sft times the mean loss per token of the chosen answers rated at least
    min_rating. Logs the reward margin, how often the chosen reward is the higher and the chosen log-probability."""
    B = len(batch)
    pairs = inputs_and_targets([c for c, _ in batch] + [r for _, r in batch], run["max_seq_len"])  # chosen first
    logprobs, n_tokens = batch_logprobs(model, pairs, run)
    with torch.no_grad():  # the frozen reference reads exactly what the model reads
        ref_logprobs, _ = batch_logprobs(reference, pairs, run)
    loss, chosen, rejected = dpo_loss(logprobs[:B], logprobs[B:], ref_logprobs[:B], ref_logprobs[B:], dpo_beta)
    if dpo_sft > 0:  # imitate the preferred answers filter would learn, not a wrong one preferred to a rude one
        learned = torch.tensor([float(c.rating >= min_rating) for c, _ in batch], device=run["device"])
        loss = loss + dpo_sft * weighted_loss(logprobs[:B], n_tokens[:B] * learned, learned)
    return loss, {"reward_margin": (chosen - rejected).mean().item(),
                  "reward_accuracy": (chosen > rejected).float().mean().item(),
                  "chosen_logprob": (logprobs[:B] / n_tokens[:B].clamp(min=1)).mean().item()}


# rating_mode: (the training rows it learns, what its batches are drawn from (list: those rows), its loss of a batch)
RATING_MODES = {"weight": (weight_rows, list, weight_batch_loss),
                "filter": (filter_rows, list, weight_batch_loss),
                "condition": (lambda df, min_rating: df, list, condition_batch_loss),
                "kto": (kto_rows, list, kto_batch_loss),
                "dpo": (lambda df, min_rating: df, dpo_pairs, dpo_batch_loss)}


def training_rows(df, rating_mode, min_rating):
    """The rows rating_mode learns, with the column weight, their loss scale (1 unless the mode sets it)."""
    learned_rows, _, _ = RATING_MODES[rating_mode]
    return learned_rows(df.assign(weight=1.0), min_rating).reset_index(drop=True)


# -----------------------------------------------------------------------------
# evaluation, the loop's schedule, and what the model writes to held-out prompts

def preference_score(examples, scores):
    """Of the pairs of differently rated answers to one prompt (preference_pairs), the fraction whose higher-rated
    answer has the higher score (a tie counts half; None without pairs), and that fraction for each pair of ratings
    as {'5>4': ..., '2>1': ...}. scores: one number per example."""
    score = {id(e): s for e, s in zip(examples, scores)}
    tally = {}  # 'higher>lower' -> [wins, pairs]
    for a, b in preference_pairs(examples)[0]:
        counts = tally.setdefault(f"{a.rating}>{b.rating}", [0.0, 0])
        counts[0] += 1.0 if score[id(a)] > score[id(b)] else 0.5 if score[id(a)] == score[id(b)] else 0.0
        counts[1] += 1
    wins, pairs = sum(w for w, _ in tally.values()), sum(n for _, n in tally.values())
    return (wins / pairs if pairs else None), {k: w / n for k, (w, n) in sorted(tally.items(), reverse=True)}


@torch.no_grad()
def evaluate(model, examples, run, batch_size):
    """Mean response loss per token of each rating ('loss_r1'...'loss_r5', None where absent) and the preference
    score, overall ('pref') and per pair of ratings ('pref_by_pair'), each response read as sample.py asks for an
    answer: after run['sample_prefix'] (condition mode: <|rating_5|> <|prompt|>) where there is one."""
    model.eval()
    logprobs, counts = [], []
    for i in range(0, len(examples), batch_size):
        pairs = inputs_and_targets(examples[i:i + batch_size], run["max_seq_len"], run["sample_prefix"])
        lp, n = batch_logprobs(model, pairs, run)
        logprobs, counts = logprobs + lp.tolist(), counts + n.tolist()
    model.train()
    result = {}
    for r in range(1, 6):
        rows = [i for i, e in enumerate(examples) if e.rating == r]
        result[f"loss_r{r}"] = -sum(logprobs[i] for i in rows) / sum(counts[i] for i in rows) if rows else None
    result["pref"], result["pref_by_pair"] = preference_score(examples, [lp / n for lp, n in zip(logprobs, counts)])
    return result


def fmt(value, digits=4):
    return "" if value is None else f"{value:.{digits}f}"


def batch_indices(it, n_rows, batch_size, seed):
    """Row indices of iteration it: consecutive slices of one seeded permutation per epoch. A pure function of
    it, so a resumed run draws exactly the batches the uninterrupted run would have."""
    start = it * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n_rows)
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch))
        indices += order[offset:offset + batch_size - len(indices)].tolist()
    return indices


def lr_scale(it, total_iters):
    """The fraction of each optimizer's peak learning rate at step it: a linear warm-up from 1/warmup_iters (never
    0), then cosine decay to min_lr_ratio."""
    decay_iters = lr_decay_iters or total_iters
    if it < warmup_iters:
        return (it + 1) / warmup_iters
    progress = min(1.0, (it - warmup_iters) / max(1, decay_iters - warmup_iters))
    return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)


def greedy_answer(model, tokenizer, template, prompt, max_new_tokens):
    """The answer sample.py gives at temperature 0: the prompt in the run's template (common.py, answer_ids),
    continued up to the end token, which is not part of the answer."""
    ids, _ = answer_ids(tokenizer, template, prompt, model.config.max_seq_len)
    end = tokenizer.special_tokens[template["end"]]
    new = model.generate(torch.tensor([ids], device=next(model.parameters()).device), max_new_tokens, temperature=0,
                         stop_token=end)[0, len(ids):].tolist()
    return tokenizer.decode([t for t in new if t != end])


def check_answers(model, tokenizer, template, prompts, autocast):
    """Answer each of the held-out prompts that has checks in checks_path greedily, run each answer against its
    prompt's checks in sandbox.py's limited child process, print the parse and pass rates and write every answer to
    out_dir/answers.csv."""
    checks = {}
    if os.path.isfile(checks_path):
        with open(checks_path, encoding="utf-8") as f:
            checks = json.load(f)
    checked = [p for p in prompts if checks.get(p)]
    if not checked:
        print(f"none of the {len(prompts)} held-out prompts has checks in {checks_path}; parse and pass rates are not "
              f"measured")
        return
    model.eval()
    with autocast:
        answers = [greedy_answer(model, tokenizer, template, p, answer_tokens)
                   for p in tqdm(checked, desc="answering", leave=False)]
    passed = run_checks([(a, checks[p]) for p, a in zip(checked, answers)], check_seconds, check_memory_mb)
    parses = [defines_function(a) for a in answers]
    answers_path = os.path.join(out_dir, "answers.csv")
    pd.DataFrame({"prompt": checked, "answer": answers, "parses": parses, "passes": passed}).to_csv(answers_path,
                                                                                                  index=False)
    print(f"greedy answers to the {len(checked)} held-out prompts with checks: parse rate "
          f"{sum(parses) / len(checked):.0%}, pass rate {sum(passed) / len(checked):.0%} ({answers_path})")


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    settings = configure(globals(), json_sections=("finetuning",))
    check_settings([  # (what is wrong, the sentence that says so), before any work
        (rating_mode not in RATING_MODES, f"rating_mode must be one of {', '.join(RATING_MODES)}, not '{rating_mode}'"),
        (not 1 <= min_rating <= 5, f"min_rating must be 1 to 5, not {min_rating}"),
        (not 0 < val_fraction < 1, f"val_fraction must be between 0 and 1, not {val_fraction}"),
        *((globals()[name] < 1, f"{name} must be at least 1, not {globals()[name]}")
          for name in ("batch_size", "eval_interval")),
        (max_iters < 0 or n_epochs < 0,
         f"max_iters and n_epochs must not be negative (got {max_iters} and {n_epochs})"),
        (dpo_beta <= 0 or dpo_sft < 0, f"dpo_beta must be > 0 and dpo_sft >= 0 (got {dpo_beta} and {dpo_sft})"),
        (answer_tokens < 1 or check_seconds <= 0 or check_memory_mb < 64,
         f"answer_tokens must be at least 1, check_seconds above 0 and check_memory_mb at least 64 (got "
         f"{answer_tokens}, {check_seconds} and {check_memory_mb})"),
        (condition_contrast < 0 or condition_rank < 0 or condition_beta <= 0,
         f"condition_contrast and condition_rank must be >= 0 and condition_beta > 0 (got {condition_contrast}, "
         f"{condition_rank} and {condition_beta})"),
        (not 0 <= dropout < 1, f"dropout must be in [0, 1), not {dropout}"),
        (learning_rate < 0 or muon_lr < 0 or weight_decay < 0 or not (0 <= beta1 < 1 and 0 <= beta2 < 1),
         f"learning_rate, muon_lr and weight_decay must be >= 0 and beta1 and beta2 in [0, 1); got {learning_rate}, "
         f"{muon_lr}, {weight_decay}, {beta1} and {beta2}")])
    run_device, device_type, run_dtype, run_optimizer, autocast = setup_device(device, dtype, optimizer)
    if device_type == "cpu":
        keep_freed_memory()  # Linux: each step reuses the memory the last one freed, not fresh pages (common.py)
    torch.manual_seed(seed)
    checkpoint_path = os.path.join(out_dir, "ckpt.pt")

    # the data first, so that a bad file stops the run before anything is loaded
    df = clean_rows(read_rows(data_path), data_path, skip_bad_rows)
    data_sha = file_sha256(data_path)
    train_df, val_df = split_by_prompt(df, val_fraction, seed, data_path)
    train_df = training_rows(train_df, rating_mode, min_rating)
    if len(train_df) == 0:
        raise SystemExit(f"{data_path} leaves no training rows for rating_mode='{rating_mode}'"
                         f"{f' with min_rating={min_rating}' if rating_mode == 'filter' else ''}; lower min_rating "
                         f"or add rows")

    # the starting weights: a pretrained run, or this run's own checkpoint when resuming
    if init_from == "resume" and not os.path.exists(checkpoint_path):
        raise SystemExit(f"init_from='resume' but there is no {checkpoint_path}; start from a pretrained run "
                         f"with init_from=out")
    start_path = checkpoint_path if init_from == "resume" else resolve_init(init_from, out_dir)
    checkpoint = load_checkpoint(start_path)  # on the CPU: weights and optimizer states go where they train
    if init_from == "resume":
        if checkpoint.get("kind") != "finetune" or checkpoint["rating_mode"] != rating_mode:
            raise SystemExit(f"{checkpoint_path} is not a fine-tuning run with rating_mode='{rating_mode}'; resume "
                             f"with the settings it was started with")
        # these decide which rows train and which are held out: another value would mix the two
        for name in ["seed", "val_fraction", "skip_bad_rows"] + (["min_rating"] if rating_mode == "filter" else []):
            if checkpoint["config"].get(name, settings[name]) != settings[name]:
                raise SystemExit(f"{checkpoint_path} was trained with {name}={checkpoint['config'][name]!r}, not "
                                 f"{settings[name]!r}; resume with the settings it was started with")
        if checkpoint.get("data_sha256", data_sha) != data_sha:
            raise SystemExit(f"{data_path} has changed since {checkpoint_path} was saved, which would change the "
                             f"held-out prompts; resume with the file it was started with")
    base_path = checkpoint["base_checkpoint"] if init_from == "resume" else start_path
    tokenizer_path, tokenizer_sha = checked_tokenizer_path(checkpoint, start_path), checkpoint["tokenizer_sha256"]
    try:
        tokenizer = Tokenizer.load(tokenizer_path)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e))
    special = tokenizer.special_tokens
    needed = [PROMPT, RESPONSE, END] + ([rating_token(r) for r in range(1, 6)] if rating_mode == "condition" else [])
    if absent := [t for t in needed if t not in special]:
        raise SystemExit(f"the tokenizer {tokenizer_path} has no special token {', '.join(absent)}; pretrain with "
                         f"this version of pretrain.py, which reserves them")
    # its vocab_size is the tokenizer's, as the tokenizer is the file the run trained with (checked_tokenizer_path)
    model_config = GPTConfig(**{**checkpoint["model_config"], "dropout": dropout})
    max_seq_len = model_config.max_seq_len
    template = {"prompt": PROMPT, "response": RESPONSE, "end": END,
                "rating_token": rating_token(5) if rating_mode == "condition" else None}

    # encode: prompt and response separately, the prompt cut from the left where a pair is too long
    train_examples, n_cut, n_long = prepare(tokenizer, train_df, rating_mode, max_seq_len)
    val_examples, val_cut, val_long = prepare(tokenizer, val_df, rating_mode, max_seq_len)
    if n_cut + val_cut:
        print(f"cut the prompt of {n_cut + val_cut} rows from the left to fit max_seq_len={max_seq_len}")
    if n_long + val_long:
        print(f"skipped {n_long + val_long} rows whose response alone does not fit max_seq_len={max_seq_len}")
    if not train_examples or not val_examples:
        raise SystemExit(f"{data_path} has too few rows that fit max_seq_len={max_seq_len} to train and validate")
    ratings = {r: sum(e.rating == r for e in train_examples) for r in range(1, 6)}
    print(f"{len(df)} rows, {df['prompt'].nunique()} prompts: {len(train_examples)} rows for training (ratings "
          f"{ratings}), {len(val_examples)} rows of {val_df['prompt'].nunique()} prompts held out; "
          f"rating_mode={rating_mode}, {run_device}, {run_dtype}, {run_optimizer}")
    run = {"max_seq_len": max_seq_len, "device": run_device, "autocast": autocast, "special": special,
           "pad_id": special[END],  # padded positions have target -1, so what they hold never matters
           "pad_to": max_seq_len if compile else None,
           "sample_prefix": [special[rating_token(5)], special[PROMPT]] if rating_mode == "condition" else None,
           "rows_by_prompt": {}}  # condition mode's ranking term draws each row's rival from its prompt's rows
    for e in train_examples:
        run["rows_by_prompt"].setdefault(e.prompt, []).append(e)
    _, batch_items, batch_loss = RATING_MODES[rating_mode]
    train_items = batch_items(train_examples)  # rows, or in dpo mode pairs of rows

    # model, optimizer, and in kto and dpo modes the frozen reference
    model = GPT(model_config).to(run_device)
    model.load_state_dict(checkpoint["model"])
    reference = None
    if rating_mode in REFERENCE_MODES:
        reference = copy.deepcopy(model).eval().requires_grad_(False)  # the pretrained model, frozen
        if init_from == "resume":
            reference.load_state_dict(checkpoint["reference_model"])
    optimizers = model.configure_optimizers(run_optimizer, learning_rate, weight_decay, (beta1, beta2), device_type,
                                            muon_lr)
    total_iters = math.ceil(n_epochs * len(train_items) / batch_size) if n_epochs > 0 else max_iters
    if n_epochs > 0:
        print(f"n_epochs={n_epochs}: {total_iters} iterations, in place of max_iters={max_iters} "
              f"(--n_epochs=0 trains for max_iters)")
    iter_num, best_val_loss = 0, float("inf")
    if init_from == "resume":
        resume_optimizers(optimizers, checkpoint, run_optimizer, checkpoint_path, "finetune.py",
                          "fine-tune again from the pretrained run")
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
        restore_rng_state(checkpoint["rng"], device_type)
        print(f"resuming from {checkpoint_path} at iteration {iter_num}")
    else:  # a fresh run starts a fresh log, and judges its own answers
        for name in ("log.csv", "answers.csv"):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    del checkpoint
    start_iter = iter_num
    last_saved_iter = iter_num if init_from == "resume" else None  # for the message if the loss turns non-finite
    os.makedirs(out_dir, exist_ok=True)
    if compile:  # the body, on batches padded to one shape; the head runs on however many targets a batch has
        model.hidden_states = torch.compile(model.hidden_states)

    # the loop: evaluate and save every eval_interval steps; Ctrl-C finishes the step, saves and exits
    stop_requested = stop_on_ctrl_c()
    progress = tqdm(total=total_iters, initial=iter_num, dynamic_ncols=True)
    run_start, train_loss, first, metrics = time.time(), None, None, None
    rewards = {name: [] for name in REWARD_COLUMNS if reference is not None}  # each step's, since the last evaluation
    while True:
        evaluating = iter_num % eval_interval == 0 or iter_num >= total_iters
        if evaluating and not (iter_num == start_iter and init_from == "resume"):  # the checkpoint already covers it
            metrics = evaluate(model, val_examples, run, 2 * batch_size)
            losses = [metrics[f"loss_r{r}"] for r in range(1, 6) if metrics[f"loss_r{r}"] is not None]
            if not all(map(math.isfinite, losses)):
                raise non_finite_stop("held-out response losses", ", ".join(map(str, losses)), iter_num,
                                      checkpoint_path, last_saved_iter)
            first = first or metrics
            append_log(out_dir, {
                "iter": iter_num, "epoch": f"{iter_num * batch_size / len(train_items):.2f}",
                "train_loss": fmt(train_loss), **{f"val_loss_r{r}": fmt(metrics[f"loss_r{r}"]) for r in range(1, 6)},
                "pref_score": fmt(metrics["pref"], 3),
                "pref_by_pair": " ".join(f"{k}={v:.3f}" for k, v in metrics["pref_by_pair"].items()),
                **{name: fmt(sum(v) / len(v) if v else None) for name, v in rewards.items()},
                "lr": f"{learning_rate * lr_scale(max(iter_num - 1, 0), total_iters):.3e}",
                "elapsed_s": f"{time.time() - run_start:.1f}"})
            progress.write(f"iter {iter_num}: val response loss by rating "
                           f"{' '.join(fmt(metrics[f'loss_r{r}'], 3) or '-' for r in range(1, 6))}, "
                           f"preference score {fmt(metrics['pref'], 3) or '-'}")
            if metrics["loss_r5"] is not None:
                best_val_loss = min(best_val_loss, metrics["loss_r5"])
            rewards = {name: [] for name in rewards}
        stopping = stop_requested.is_set() and iter_num < total_iters  # after the evaluation due at this step
        if (evaluating or stopping) and iter_num > start_iter:
            copy_tokenizer(tokenizer_path, tokenizer_sha, out_dir)
            save_checkpoint({
                "kind": "finetune", "model": model.state_dict(), "optimizer_name": run_optimizer,
                "optimizer_states": [o.state_dict() for o in optimizers],
                "model_config": dataclasses.asdict(model_config), "config": settings, "iter_num": iter_num,
                "best_val_loss": best_val_loss, "tokenizer_path": "tokenizer.json", "tokenizer_sha256": tokenizer_sha,
                "rng": rng_state(device_type), "rating_mode": rating_mode, "template": template,
                "base_checkpoint": base_path, "data_sha256": data_sha,
                # the frozen reference travels with the run, so that a resume needs nothing else
                **({"reference_model": reference.state_dict()} if reference is not None else {})}, checkpoint_path)
            last_saved_iter = iter_num  # named if the loss later turns non-finite
        if iter_num >= total_iters or stopping:
            break

        batch = [train_items[i] for i in batch_indices(iter_num, len(train_items), batch_size, seed)]
        loss, logged = batch_loss(model, reference, batch, iter_num, run)
        for name in rewards.keys() & logged.keys():
            rewards[name].append(logged[name])
        if not math.isfinite(loss.item()):
            raise non_finite_stop("loss", loss.item(), iter_num, checkpoint_path, last_saved_iter)
        loss.backward()
        scale = lr_scale(iter_num, total_iters)
        step_optimizers(model, optimizers, grad_clip, scale)
        iter_num += 1
        train_loss = loss.item() if train_loss is None else 0.9 * train_loss + 0.1 * loss.item()
        progress.update(1)
        progress.set_postfix(loss=f"{train_loss:.3f}", lr=f"{learning_rate * scale:.1e}",
                             **{k: f"{v:.2f}" for k, v in logged.items()})
    progress.close()
    if stopping:
        print(f"interrupted at iteration {iter_num}; " + (f"{checkpoint_path} holds it: continue with "
              f"--init_from=resume" if last_saved_iter == iter_num else "nothing was saved"))
    else:
        saved = f"checkpoint {checkpoint_path}" if iter_num > start_iter else "no steps to take, so nothing saved"
        trend = ""
        if first is not metrics and first["loss_r5"] and metrics["loss_r5"]:  # at least two evaluations
            change = metrics["loss_r5"] / first["loss_r5"] - 1
            trend = (f"; rating-5 response loss {first['loss_r5']:.3f} -> {metrics['loss_r5']:.3f} ({abs(change):.0%} "
                     f"{'higher' if change > 0 else 'lower'}), preference score {fmt(first['pref'], 3)} -> "
                     f"{fmt(metrics['pref'], 3)}")
        print(f"done in {time.time() - run_start:.0f}s; {saved}{trend}")
        if answer_checks:  # what the model writes
            if compile:
                del model.hidden_states  # the plain method: generation's shapes change at every step
            check_answers(model, tokenizer, template, list(dict.fromkeys(val_df["prompt"])), autocast)
