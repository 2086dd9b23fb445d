# The default CPU run: a small GPT on the default corpus (Python's standard library), a few minutes on 2 cores.
# The reasons for each value, with their measurements: NOTES.md, Model settings and Optimizer and defaults.
out_dir = "out"
data_path = "data/data.txt"
vocab_size = 3072  # better than 2048, 4096 and 6144 at equal time (NOTES.md, Model settings)
d_model = 128
n_heads = 4
n_layers = 4
d_ff = 512
max_seq_len = 128
bias = False  # as in nanoGPT: faster per step and as good
dropout = 0.0  # on CPU dropout costs about half a step, and it did not help even at equal steps (NOTES.md)
batch_size = 16  # with Muon, better than 8 or 32 for a fixed time
optimizer = "auto"  # Muon for the block matrices where bfloat16 is native, AdamW for everything elsewhere
learning_rate = 2.5e-3  # AdamW's peak
muon_lr = 0.005  # below the usual 0.02: searched at this size and time, NOTES.md
muon_embedding_decay = 1.0  # ten times the usual: rare tokens' rows overfit (NOTES.md); AdamW runs keep 0.1
warmup_iters = 50
cooldown_fraction = 0.4
max_iters = 2450  # about 180 s of training on 2 cores with AVX512-BF16 (python bench.py pretrain)
eval_interval = 250
eval_iters = 20
device = "cpu"
