"""PRIMA benchmark: SQuARE with vs without relational queries, and training / inference throughput.

    .venv/bin/python benchmarks/prima.py --groups 360 --epochs 5

Tiny random parts (tests/tiny_prima.py) on the synthetic coloured-shapes task (tests/
synthetic_shapes.py), both trained the same way from the same seed in one run. Validation is
scored by `autolabel eval` per question kind: `common` needs the other image (cross-image),
`find` and `absent` can be answered image by image. Throughput: training examples/s, and groups/s
of greedy inference through the model's generate path.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from synthetic_shapes import make_task  # noqa: E402
from tiny_prima import TINY_SAM, build_tiny_parts  # noqa: E402

KINDS = ("common", "find", "absent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=360, help="training groups")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training uses bf16 autocast on CUDA)")
    args = parser.parse_args()

    import torch

    from autolabel.prima.config import LoraSpec, SquareSpec
    from autolabel.prima.data import load_records
    from autolabel.prima.model import PrimaModel
    from autolabel.prima.train import TrainOptions, train
    from autolabel.prima_validation import validate

    if args.device == "cpu":
        torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="autolabel-prima-bench-") as tmp:
        root = Path(tmp)
        parts = build_tiny_parts(root)
        train_file, val_file = make_task(root, args.groups, seed=0), make_task(root, 60, seed=1, name="val")
        val = load_records(val_file).records
        print(f"== {args.groups} training groups x {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}; "
              f"{len(val)} validation groups; on {torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}")
        for relational in (True, False):
            square = SquareSpec(num_relational_queries=4, num_image_queries=8, num_layers=2, num_heads=4,
                                use_relational_queries=relational)
            out = root / f"out-{relational}"
            start = time.perf_counter()
            summary = train(TrainOptions(data=train_file, out=out, vision=parts["vision"], llm=parts["llm"],
                                         sam=parts["sam"], sam_spec=TINY_SAM, square=square,
                                         lora=LoraSpec(r=16, alpha=32, dropout=0.0), epochs=args.epochs,
                                         batch_size=args.batch_size, lr=args.lr, save_every=10**9, device=args.device))
            train_s = time.perf_counter() - start
            model = PrimaModel.from_pretrained(out, device=args.device)
            start = time.perf_counter()
            scores = {kind: validate(model, [r for r in val if r.data["kind"] == kind], max_new_tokens=96)
                      for kind in KINDS}
            infer_s = time.perf_counter() - start
            name = "with relational queries" if relational else "without (ablation)"
            print(f"\n{name}: train {summary.examples / train_s:.1f} examples/s ({train_s:.0f} s), "
                  f"inference {len(val) / infer_s:.2f} groups/s; last losses {summary.last_loss}")
            for kind in KINDS:
                s = scores[kind]
                print(f"  {kind:7s} gIoU {s['gIoU']}  cIoU {s['cIoU']}  N-acc {s['N-acc']}  T-acc {s['T-acc']}  "
                      f"recall@0.5 {s['recall@0.5']}")


if __name__ == "__main__":
    main()
