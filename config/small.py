# The default CPU run: a small GPT on the default corpus (Python's standard library), a few minutes on 2 cores.
out_dir = "out"
data_path = "data/data.txt"
vocab_size = 1024
d_model = 128
n_heads = 4
n_layers = 4
d_ff = 512
max_seq_len = 128
dropout = 0.0  # on CPU dropout costs about half a step; a few minutes of training cannot overfit anyway
batch_size = 16
learning_rate = 3e-3
warmup_iters = 100
max_iters = 2000
eval_interval = 250
eval_iters = 20
device = "cpu"
