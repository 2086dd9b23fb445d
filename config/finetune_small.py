# Fine-tune the default CPU run (python pretrain.py config/small.py) on data/fine_tune_data.csv: under a minute.
init_from = "out"
out_dir = "out-finetune"
data_path = "data/fine_tune_data.csv"
rating_mode = "filter"  # the most answers that parse without learning the rude ones (NOTES.md, Fine-tuning)
max_iters = 300  # 300 steps of 16 rows, about 20 passes over the 240 or so rows filter learns; more gained nothing
eval_interval = 50
batch_size = 16
learning_rate = 3e-4
warmup_iters = 20
device = "cpu"
