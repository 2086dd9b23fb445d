# About GPT-2 small (124M parameters with a 50k vocabulary) for one or more GPUs, on a corpus of some GB you give:
#   torchrun --standalone --nproc_per_node=8 pretrain.py config/gpt2_small.py --data_path=FOLDER_OR_FILE_OR_URL
out_dir = "out-gpt2-small"
data_path = ""  # none: pretrain.py and prepare.py ask for --data_path, as the default corpus is far too small
val_fraction = 0.0005  # a few MB of a corpus of some GB: enough to measure, and little kept from training
vocab_size = 32768
d_model = 768
n_heads = 12
n_layers = 12
d_ff = 3072
max_seq_len = 1024
dropout = 0.0
batch_size = 16
grad_accum_steps = 32  # 16 x 1024 x 32 = 524k tokens per step, shared out over the processes
# Muon for the block matrices at the learning rate its authors suggest (0.02), AdamW for the tied embedding at
# nanoGPT's GPT-2-small rate: published recipes, not yet measured with this code (NOTES.md, Optimizer and defaults)
optimizer = "muon"
muon_lr = 0.02
learning_rate = 6e-4
min_lr_ratio = 0.1
warmup_iters = 2000
max_iters = 60000
eval_interval = 1000
eval_iters = 100
weight_decay = 0.1
beta2 = 0.95
device = "cuda"
dtype = "bfloat16"
compile = True
