"""monet-tune's search layer: the only package that imports Ray and Optuna.

Modules:
    spaces      per-family define-by-run Optuna spaces, overridable from a YAML file
    searcher    OptunaSearch that tells Optuna the truth about ASHA-stopped trials (PRUNED)
    trainable   ``monet.train.fit`` wrapped for Ray Tune (report, checkpoint, restore)
    results     the experiment folder: trials.parquet/csv and best_config.yaml
    storage     a local folder or object storage (s3://, gs://) through pyarrow filesystems
    tune_monet  the command users run: ``python search/tune_monet.py --dataset toy``
"""
