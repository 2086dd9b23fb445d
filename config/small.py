# The default CPU run: a small GPT on the default corpus (Python's standard library), a few minutes on 2 cores.
out_dir = "out"
data_path = "data/data.txt"
vocab_size = 6144  # 1.851 bits/byte against 1.888 at 4096 (3 seeds), also at equal time; 8192 is slower (README: why the CPU defaults)
d_model = 128
n_heads = 4
n_layers = 4
d_ff = 512
max_seq_len = 128
bias = False  # as in nanoGPT: about 7% faster per step here and as good (README: why the CPU defaults)
dropout = 0.0  # on CPU dropout costs about half a step; a few minutes of training cannot overfit anyway
batch_size = 8  # smaller batches, more steps: measured better for a fixed time (README: why the CPU defaults)
learning_rate = 5e-3
warmup_iters = 50
max_iters = 2500
eval_interval = 250
eval_iters = 20
device = "cpu"
