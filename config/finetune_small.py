# Fine-tune the default CPU run (python pretrain.py config/small.py) on data/fine_tune_data.csv: well under a minute.
init_from = "out"
out_dir = "out-finetune"
data_path = "data/fine_tune_data.csv"
rating_mode = "condition"
max_iters = 150  # about 7 passes over the training rows; more overfits 300 rows
eval_interval = 50
batch_size = 16
learning_rate = 3e-4
warmup_iters = 20
device = "cpu"
