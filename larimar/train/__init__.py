"""Training: the plain loop, Ray Train + DeepSpeed, data, validation, checkpoints, Ray Tune sweeps.

    config        TrainConfig (model + data + optim + scaling + run + deepspeed), from YAML or a recipe
    data          text chunks and fact/edit rows -> Ray Data episodes
    fact_corpus   edit records of the fact files, with the evaluation cases excluded
    loop          one optimisation step and the LR schedule, shared by every trainer
    distributed   Ray Train's TorchTrainer with DeepSpeed ZeRO-2: fit, resume, export
    checkpoints   what a checkpoint holds and how it is written and read
    validation    held-out metrics computed during training
    run_record    config.yaml + metrics.jsonl of every run
    tuning        Ray Tune sweeps over training runs

Command line: ``larimar train --config tiny`` (or ``python jobs/train.py``), ``larimar sweep``.
"""
