"""Train our own embedding spaces: a tokenizer plus a tied-embedding LM, or skip-gram vectors.

`embedlens.train.loop.train(TrainOptions(corpus=..., out=...))` writes a checkpoint folder that
`embedlens serve --model NAME=FOLDER` loads (spaces/checkpoint.py; docs/training.md). This
package file imports nothing, so the CLI can configure OpenMP before torch loads.
"""
