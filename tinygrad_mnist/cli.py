"""`tinygrad-mnist`: train, evaluate, predict and draw the graph from the command line.

Mistakes a user can make (a bad flag, a missing file) end in one clear line and a
non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import sys


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive layer sizes like "
                                         f"512,256, got {text!r}")
    return sizes


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig
    d = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="tinygrad-mnist", description="Train and inspect an MNIST MLP built on "
        "tinygrad_mnist's own autodiff engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="directory with the MNIST files (default: "
                       "$TINYGRAD_MNIST_DATA, else the user cache, downloading if needed)")

    t = sub.add_parser("train", help="train the MLP on MNIST",
                       description="Train the MLP; checkpoints, metrics and pictures go to the "
                       "run directory.")
    t.add_argument("--epochs", type=_positive_int, default=d.epochs)
    t.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    t.add_argument("--optimizer", choices=["sgd", "adam"], default=d.optimizer)
    t.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    t.add_argument("--momentum", type=float, default=d.momentum)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--schedule", choices=["cosine", "step", "none"], default=d.schedule)
    t.add_argument("--hidden", type=_hidden, default=d.hidden,
                   help="hidden layer sizes, comma-separated (default %(default)s)")
    t.add_argument("--dropout", type=float, default=d.dropout)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--val-size", type=int, default=d.val_size,
                   help="training examples held out for validation")
    t.add_argument("--train-limit", type=_positive_int, default=None,
                   help="train on the first N examples only (a quick run)")
    t.add_argument("--run-dir", default="runs/mnist", help="where checkpoints, metrics and "
                   "pictures go (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from the run dir's checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--no-plots", action="store_true", help="skip the pictures")
    data_flag(t)

    e = sub.add_parser("eval", help="accuracy of a checkpoint on the test set",
                       description="Evaluate a checkpoint on the validation and test sets.")
    e.add_argument("checkpoint", help="a checkpoint.npz written by `train`")
    data_flag(e)

    p = sub.add_parser("predict", help="predict test digits and plot them",
                       description="Print and plot test digits with true label and prediction.")
    p.add_argument("checkpoint", help="a checkpoint.npz written by `train`")
    p.add_argument("--count", type=_positive_int, default=16, help="how many digits")
    p.add_argument("--start", type=int, default=0, help="index of the first test digit")
    p.add_argument("--out", default="predictions.png", help="PNG to write (default %(default)s)")
    data_flag(p)

    g = sub.add_parser("graph", help="draw the MLP's loss graph for one batch",
                       description="Render the computation graph of the MLP's loss for one "
                       "small batch (.svg, .png, .pdf, or .gv for the DOT source).")
    g.add_argument("--out", default="mlp_graph.svg", help="output file (default %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=4)
    g.add_argument("--hidden", type=_hidden, default=(16,), help="hidden sizes (default 16)")
    data_flag(g)

    x = sub.add_parser("explain", help="one digit inside the network, and one backprop step",
                       description="Show one digit going through the network (activations, "
                       "probabilities, which pixels mattered) and what one backprop step on it "
                       "does. Default: the first test digit the model gets wrong.")
    x.add_argument("checkpoint", help="a checkpoint.npz written by `train`")
    x.add_argument("--index", type=int, default=None, help="index of the MNIST digit (default: "
                   "the first one the model gets wrong)")
    x.add_argument("--split", choices=["test", "train"], default="test", help="where --index "
                   "points (default %(default)s)")
    x.add_argument("--image", default=None, help="a PNG or JPEG of a digit instead of MNIST")
    x.add_argument("--label", type=int, default=None, help="the digit's true label (default: "
                   "MNIST's; none for --image)")
    x.add_argument("--lr", type=float, default=0.1, help="learning rate of the backprop step")
    x.add_argument("--out", default="explanation.png", help="PNG to write (default %(default)s)")
    x.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    data_flag(x)

    r = sub.add_parser("report", help="rebuild a run's report.html",
                       description="Write RUN_DIR/report.html from the run's checkpoint and "
                       "metrics: one self-contained page that tells the run's story.")
    r.add_argument("run_dir", help="a run directory written by `train`")
    data_flag(r)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "predict": _predict, "graph": _graph,
                "explain": _explain, "report": _report}[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # user-facing problems: one clear line
        print(f"tinygrad-mnist {args.command}: error: {e}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train
    config = TrainConfig(hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                         weight_decay=args.weight_decay, schedule=args.schedule,
                         dropout=args.dropout, seed=args.seed, val_size=args.val_size,
                         train_limit=args.train_limit)
    train(config, args.run_dir, data_dir=args.data_dir, resume=args.resume,
          progress=not args.no_progress, plots=not args.no_plots)
    return 0


def _load(args: argparse.Namespace):
    from .data import load_mnist
    from .train import load_checkpoint
    ckpt = load_checkpoint(args.checkpoint)
    return ckpt, load_mnist(args.data_dir, val_size=ckpt.config.val_size, seed=ckpt.config.seed)


def _eval(args: argparse.Namespace) -> int:
    from .train import evaluate
    ckpt, data = _load(args)
    print(f"checkpoint {args.checkpoint}: MLP {ckpt.model.sizes}, {ckpt.epoch} epochs")
    for split, x, y in [("validation", data.val_x, data.val_y), ("test", data.test_x, data.test_y)]:
        if len(x):
            loss, acc = evaluate(ckpt.model, x, y)
            print(f"{split:10s} accuracy {100 * acc:.2f}%  loss {loss:.4f}  ({len(x)} digits)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .plots import plot_predictions
    from .train import predict_proba
    ckpt, data = _load(args)
    if not 0 <= args.start < len(data.test_x):
        raise ValueError(f"--start must be in [0, {len(data.test_x)}), got {args.start}")
    sl = slice(args.start, args.start + args.count)
    probs = predict_proba(ckpt.model, data.test_x[sl])
    preds, labels = probs.argmax(axis=1), data.test_y[sl]
    for i, (label, pred, p) in enumerate(zip(labels, preds, probs.max(axis=1))):
        mark = "" if label == pred else "   <-- wrong"
        print(f"test digit {args.start + i:5d}: true {label}  predicted {pred} ({100 * p:.1f}%){mark}")
    print(f"{int((preds == labels).sum())}/{len(labels)} right")
    out = plot_predictions(data.test_x[sl], labels, preds, args.out, probs=probs.max(axis=1),
                           title=f"test digits {args.start}–{args.start + len(labels) - 1}: "
                                 f"true label and prediction")
    print(f"picture: {out}")
    return 0


def _graph(args: argparse.Namespace) -> int:
    from .data import load_mnist
    from .graph import draw_graph, retain_grads
    from .nn import MLP, cross_entropy
    from .tensor import Tensor
    data = load_mnist(args.data_dir, val_size=0)
    model = MLP([784, *args.hidden, 10], seed=0)
    loss = cross_entropy(model(Tensor(data.test_x[:args.batch_size])), data.test_y[:args.batch_size])
    loss.name = "loss"
    retain_grads(loss)  # show the gradient at every node, not only at the parameters
    loss.backward()
    draw_graph(loss, path=args.out)
    print(f"graph of the loss of MLP {model.sizes} on a batch of {args.batch_size}: {args.out}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .explain import explain
    from .plots import plot_explanation
    from .train import predict_proba
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it, or choose "
                         f"another --out")
    if args.image is not None and args.index is not None:
        raise ValueError("give --image or --index, not both")
    ckpt, data = _load(args)
    if args.image is not None:
        image, label, what = args.image, args.label, f"image {args.image}"
    else:
        x, y = (data.test_x, data.test_y) if args.split == "test" else (data.train_x, data.train_y)
        index = args.index
        if index is None:
            wrong = (predict_proba(ckpt.model, x).argmax(axis=1) != y).nonzero()[0]
            index = int(wrong[0]) if len(wrong) else 0
        if not 0 <= index < len(x):
            raise ValueError(f"--index must be in [0, {len(x)}) for the {args.split} split, "
                             f"got {index}")
        image, label = x[index], int(y[index]) if args.label is None else args.label
        what = f"{args.split} digit {index}"
    e = explain(ckpt.model, image, label=label, lr=args.lr)
    verdict = "" if label is None else (" (right)" if e.prediction == label else " (wrong)")
    print(f"{what}: " + ("" if label is None else f"true label {label}, ") +
          f"predicted {e.prediction}{verdict}")
    for digit, p in enumerate(e.probs):
        marks = (["prediction"] if digit == e.prediction else []) + \
            (["true label"] if digit == label else [])
        print(f"  {digit}: {100 * p:5.1f}%" + (f"  <- {', '.join(marks)}" if marks else ""))
    if e.after_step is not None:
        step = e.after_step
        print(f"one backprop step (SGD, lr {step.lr:g}) on this digit: p({label}) "
              f"{100 * e.probs[label]:.1f}% -> {100 * step.probs[label]:.1f}%, loss "
              f"{step.loss_before:.3f} -> {max(step.loss_after, 0.0) + 0.0:.3f}")
    print(f"picture: {plot_explanation(e, out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report
    print(f"report: {write_report(args.run_dir, data_dir=args.data_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
