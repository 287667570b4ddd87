"""Names of the files in every run directory (DESIGN.md's contract), in one place.

Kept free of torch and Lightning so that the callbacks and the report can import it cheaply.
"""

GRAD_NORMS_FILE = "grad_norms.csv"  # written by GradientNormCallback
GRADIENT_FLOW_FILE = "gradient_flow.png"  # GradientNormCallback
SUMMARY_FILE = "summary.json"  # the run record
CHECKPOINT_DIR = "checkpoints"  # ModelCheckpoint and the interrupt checkpoint
CONFIG_FILE = "config.yaml"  # provenance: the resolved config of the latest launch
PROVENANCE_FILE = "provenance.json"  # provenance: one entry per launch
LOCK_FILE = ".lock"  # the run lock: one launch at a time
TENSORBOARD_DIR = "tensorboard"  # the TensorBoard logger's save_dir
WANDB_ID_FILE = "wandb_id"  # the W&B run a resume continues
