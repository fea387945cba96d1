"""PRIMA (multi-image pixel-grounded reasoning): SQuARE + LLM + SAM decoder, trainable here.

One concept per file: `config` (sizes), `vision` (frozen tower), `square` (cross-image queries),
`sam_decoder` (SAM, encoder frozen), `model` (the wiring, save/load), `data` (training format),
`train` (the loop). torch is imported only when these modules are.
"""
