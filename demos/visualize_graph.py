"""Draw two computation graphs after backward(): a scalar expression and a small MLP's loss.

    python demos/visualize_graph.py [--out-dir graphs]

Writes expression.{svg,png,gv} and mlp_loss.{svg,png,gv}; needs the Graphviz `dot` program.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install

from tinygrad_mnist import Tensor  # noqa: E402
from tinygrad_mnist.graph import draw_graph, render_to, retain_grads  # noqa: E402
from tinygrad_mnist.nn import MLP, cross_entropy  # noqa: E402


def expression() -> Tensor:
    """e = tanh(a*b + a), the smallest graph with a shared input."""
    a = Tensor(2.0, requires_grad=True, name="a")
    b = Tensor(-3.0, requires_grad=True, name="b")
    e = (a * b + a).tanh()
    e.name = "e"
    retain_grads(e)  # keep the intermediates' gradients too, to see them in the picture
    e.backward()
    return e


def mlp_loss(batch: int = 4, seed: int = 0) -> Tensor:
    """Cross-entropy of the project's 784-16-10 MLP on a random batch (no MNIST needed); each
    Linear layer records its ops under a name_scope, so it is drawn as one labelled box."""
    rng = np.random.default_rng(seed)
    x = Tensor(rng.random((batch, 784), dtype=np.float32), name="x (images)")
    loss = cross_entropy(MLP([784, 16, 10], seed=seed)(x), rng.integers(0, 10, batch))
    loss.name = "loss"
    retain_grads(loss)
    loss.backward()
    return loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("graphs"),
                        help="where to write the pictures (default: ./graphs)")
    args = parser.parse_args(argv)
    for stem, root in (("expression", expression()), ("mlp_loss", mlp_loss())):
        dot = draw_graph(root, path=args.out_dir / f"{stem}.svg")
        render_to(dot, args.out_dir / f"{stem}.png")
        print(f"{stem}: {args.out_dir / stem}.svg, .png and .gv")


if __name__ == "__main__":
    main()
