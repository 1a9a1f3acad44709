"""The whole story in a few minutes: load MNIST, look at it, train an MLP, look at what it learned.

    python demos/train_mnist.py [--epochs 3] [--out-dir runs/demo] [--data-dir DIR]

Writes the pictures into the output directory (and shows them when there is a display).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout as is

from tinygrad_mnist import Tensor, draw_graph
from tinygrad_mnist.config import TrainConfig
from tinygrad_mnist.data import load_mnist
from tinygrad_mnist.nn import MLP, cross_entropy
from tinygrad_mnist.report import draw_pictures, write_report
from tinygrad_mnist.run_dir import RUN_FILES
from tinygrad_mnist.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out-dir", default="runs/demo")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    out = Path(args.out_dir)
    if any((out / name).exists() for name in RUN_FILES):
        sys.exit(f"{out} already holds a run; pass another --out-dir")

    print("1. The data: 28x28 grey digits, each with its true label.")
    data = load_mnist(args.data_dir)
    print(f"   {len(data.train_x)} training, {len(data.val_x)} validation, {len(data.test_x)} test digits"
          f" (the first ones are drawn in {out / 'digits.png'} after training)")

    print("2. The model's graph for a batch of 4: what backward() walks through.")
    model = MLP([784, 16, 10], seed=0)
    loss = cross_entropy(model(Tensor(data.train_x[:4])), data.train_y[:4])
    loss.name = "loss"
    loss.backward()
    draw_graph(loss, path=out / "mlp_graph.gv")
    print(f"   DOT source in {out / 'mlp_graph.gv'} (render: dot -Tsvg {out / 'mlp_graph.gv'} -o graph.svg)")

    print(f"3. Training the MLP 784-512-256-10 for {args.epochs} epochs.")
    config = TrainConfig(epochs=args.epochs)
    run = train(config, out, data=data)
    drawn = draw_pictures(run.model, data, run.history, out, config)
    report = write_report(out, data=data, pictures=drawn)
    pictures = list(drawn.values())
    print(f"4. Test accuracy {100 * run.summary['test_acc']:.2f}%. Pictures, and the report "
          f"{report}:")
    for p in pictures:
        print(f"   {p}")
    if os.environ.get("DISPLAY") and os.environ.get("MPLBACKEND", "").lower() != "agg":
        import matplotlib.image as mpimg
        import matplotlib.pyplot as plt
        for p in pictures:
            plt.figure(p.stem)
            plt.imshow(mpimg.imread(p))
            plt.axis("off")
        plt.show()


if __name__ == "__main__":
    main()
