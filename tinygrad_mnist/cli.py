"""`tinygrad-mnist`: train, evaluate, predict and draw the graph from the command line.

Mistakes a user can make (a bad flag, a missing file) end in one clear line and a
non-zero exit, never a traceback. No command replaces a file it did not create unless
given --overwrite, and never a file of another kind (see files.py). Ctrl-C exits with 130,
SIGTERM with 143, after `train` has saved what it had.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import what they need lazily: `--help` stays fast
    from .checkpoint import Checkpoint
    from .config import Setting
    from .data import MNIST

MAX_PREDICT = 100  # digits in one predictions picture: more is unreadable and slow to draw


def _data_dir(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a directory, got an empty string")
    return text


def _setting_type(setting: Setting) -> Callable[[str], Any]:
    """An argparse type for one TrainConfig setting: its own parser, then its own check, with
    its own words in the message (argparse names the flag)."""
    def parse(text: str) -> Any:
        if setting.parse is None:  # choices: argparse checks them
            return text
        try:
            value = setting.parse(text)
        except ValueError:
            value = None
        if value is None or not setting.ok(value):
            raise argparse.ArgumentTypeError(f"expected {setting.what}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS, SIZES, TrainConfig, integer, number, settings
    parser = argparse.ArgumentParser(
        prog="tinygrad-mnist", description="Train and inspect an MNIST MLP built on "
        "tinygrad_mnist's own autodiff engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=_data_dir, help="directory with the MNIST files "
                       "(default: $TINYGRAD_MNIST_DATA, else the user cache, downloading if needed)")

    def overwrite_flag(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--overwrite", action="store_true", help=f"replace {what} (never a file "
                       f"of another kind)")

    def picture_out(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--out", default=default, help="picture to write: .png, .jpg, .svg or "
                       ".pdf (default %(default)s)")
        overwrite_flag(p, "an existing --out picture")

    t = sub.add_parser("train", help="train the MLP on MNIST",
                       description="Train the MLP; checkpoints, metrics and pictures go to the "
                       "run directory. With --resume, only --epochs may differ from the "
                       "checkpoint's settings.")
    # One flag per TrainConfig setting, read and checked by its config.Setting. They default
    # to None so that --resume can tell which flags were given (see _train).
    for name, setting in settings().items():
        default = getattr(TrainConfig(), name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        t.add_argument("--" + name.replace("_", "-"), type=_setting_type(setting),
                       choices=setting.choices or None, help=f"{setting.help} (default {shown})"
                       if default is not None else setting.help)
    t.add_argument("--preset", choices=sorted(PRESETS), help="a named set of the settings "
                   "above (flags given beside it win): " + "; ".join(
                       f"{name}: {about}" for name, (about, _) in sorted(PRESETS.items())
                   ).replace("%", "%%"))  # argparse formats help text with %
    t.add_argument("--run-dir", default="runs/mnist", help="where checkpoints, metrics and "
                   "pictures go (default %(default)s)")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the run dir's "
                      "checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete the run dir's earlier "
                      "run (checkpoints, metrics, pictures) and start again")
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
    p.add_argument("--count", type=_setting_type(integer(1, MAX_PREDICT)), default=16,
                   help=f"how many digits, at most {MAX_PREDICT} (default %(default)s)")
    p.add_argument("--start", type=_setting_type(integer(0)), default=0,
                   help="index of the first test digit")
    picture_out(p, "predictions.png")
    data_flag(p)

    g = sub.add_parser("graph", help="draw the MLP's loss graph for one batch",
                       description="Render the computation graph of the MLP's loss for one "
                       "small batch (.svg, .png, .pdf with the DOT source beside it as .gv, "
                       "or .gv for the DOT source only).")
    g.add_argument("--out", default="mlp_graph.svg", help="output file (default %(default)s)")
    g.add_argument("--batch-size", type=_setting_type(integer(1)), default=4)
    g.add_argument("--hidden", type=_setting_type(SIZES), default=(16,), help="hidden sizes (default 16)")
    overwrite_flag(g, "an existing --out file and its .gv source")
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
    x.add_argument("--label", type=int, default=None, help="the digit's true label "
                   "(default: MNIST's; none for --image)")
    x.add_argument("--lr", type=_setting_type(number(0, low_open=True)), default=0.1,
                   help="learning rate of the backprop step (default %(default)s)")
    picture_out(x, "explanation.png")
    data_flag(x)

    r = sub.add_parser("report", help="rebuild a run's report.html",
                       description="Write RUN_DIR/report.html from the run's checkpoint and "
                       "metrics: one self-contained page that tells the run's story.")
    r.add_argument("run_dir", help="a run directory written by `train`")
    data_flag(r)

    s = sub.add_parser("serve", help="a local page: draw a digit, watch the network, teach it",
                       description="Serve the draw-a-digit page and its JSON API. Teaching "
                       "changes only each browser's copy of the model, never the checkpoint.")
    s.add_argument("checkpoint", nargs="?", default=None,
                   help="a checkpoint.npz written by `train` (default runs/mnist/checkpoint.npz)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "%(default)s: this machine only; 0.0.0.0 opens it to the network)")
    s.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0 = any free)")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a host name the pages may be opened by besides localhost and --host "
                   "(repeatable), e.g. the name students type")
    s.add_argument("--max-sessions", type=_setting_type(integer(1, 10_000)), default=32,
                   help="browsers whose taught model is kept, the least recently used dropped "
                   "(default %(default)s)")
    data_flag(s)
    return parser


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)  # first: a `kill` while starting up is clean too
    prog = "tinygrad-mnist"
    try:
        args = build_parser().parse_args(argv)
        prog = f"tinygrad-mnist {args.command}"
        return {"train": _train, "eval": _eval, "predict": _predict, "graph": _graph,
                "explain": _explain, "report": _report, "serve": _serve}[args.command](args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (train saved what it had first)
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{prog}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except (OSError, ValueError, RuntimeError) as e:  # user-facing problems: one clear line
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (kill, systemd, job schedulers) unwinds like Ctrl-C: temp files are removed and
    the exit status is 143. train.Interrupted says the same, without importing NumPy here."""
    stop = KeyboardInterrupt("SIGTERM")
    stop.signum = signum  # type: ignore[attr-defined]
    raise stop


def _train(args: argparse.Namespace) -> int:
    """Train, then (unless --no-plots) draw the run's pictures and write its report."""
    from .config import PRESETS, TrainConfig, settings
    from .run_dir import resume_config
    from .train import train
    given = PRESETS[args.preset][1] if args.preset else {}
    given = {**given, **{k: getattr(args, k) for k in settings() if getattr(args, k) is not None}}
    # --resume: the flags not given come from the checkpoint; train() refuses any that differ
    # from it, except --epochs, whose effect on the schedule it explains
    config = resume_config(args.run_dir, **given) if args.resume else TrainConfig(**given)
    run = train(config, args.run_dir, data_dir=args.data_dir, resume=args.resume,
                overwrite=args.overwrite, progress=not args.no_progress,
                data_dir_name="--data-dir")
    if not args.no_plots:
        from .report import draw_pictures, write_report
        run_dir = Path(args.run_dir)
        pictures = draw_pictures(run.model, run.data, run.history, run_dir, config)
        print(f"pictures in {run_dir}")
        print(f"report: {write_report(run_dir, data=run.data, pictures=pictures)}")
    return 0


def _load(args: argparse.Namespace) -> tuple[Checkpoint, MNIST]:
    from .checkpoint import load_checkpoint
    from .data import load_mnist
    ckpt = load_checkpoint(args.checkpoint)
    return ckpt, load_mnist(args.data_dir, val_size=ckpt.config.val_size, seed=ckpt.config.seed,
                            data_dir_name="--data-dir")


def _eval(args: argparse.Namespace) -> int:
    from .predict import evaluate
    ckpt, data = _load(args)
    print(f"checkpoint {args.checkpoint}: MLP {ckpt.model.sizes}, {ckpt.epoch} epochs")
    for split, x, y in [("validation", data.val_x, data.val_y), ("test", data.test_x, data.test_y)]:
        if len(x):
            loss, acc = evaluate(ckpt.model, x, y)
            print(f"{split:10s} accuracy {100 * acc:.2f}%  loss {loss:.4f}  ({len(x)} digits)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .files import check_writable, picture_format
    from .plots import plot_predictions
    from .predict import predict_proba
    check_writable(args.out, picture_format(args.out), args.overwrite)  # before any work
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
    from .config import check_model_size
    from .data import load_mnist
    from .files import PICTURE_FORMATS, check_writable, picture_format
    from .graph import draw_graph, loss_graph
    from .nn import MLP
    out = Path(args.out)
    formats = {**{k: v for k, v in PICTURE_FORMATS.items() if v != "jpeg"}, ".gv": "dot",
               ".dot": "dot"}
    kind = picture_format(out, formats)
    check_writable(out, kind, args.overwrite)
    if kind != "dot":  # the DOT source is written beside the picture: never over the user's own
        check_writable(out.with_suffix(".gv"), "dot", args.overwrite,
                       why=f" (graph writes the DOT source of {out} there)")
    sizes = [784, *args.hidden, 10]
    check_model_size(sizes, args.batch_size)
    data = load_mnist(args.data_dir, val_size=0, data_dir_name="--data-dir")
    if args.batch_size > len(data.test_x):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the test set "
                         f"({len(data.test_x)} digits)")
    model = MLP(sizes, seed=0)
    # every node keeps its gradient, so the picture shows how it flows
    draw_graph(loss_graph(model, data.test_x[:args.batch_size], data.test_y[:args.batch_size]),
               path=out)
    print(f"graph of the loss of MLP {model.sizes} on a batch of {args.batch_size}: {out}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .explain import explain
    from .explain_plot import plot_explanation
    from .files import check_writable, picture_format
    from .predict import first_mistake, predict_proba
    check_writable(args.out, picture_format(args.out), args.overwrite)  # before any work
    if args.image is not None and args.index is not None:
        raise ValueError("give --image or --index, not both")
    ckpt, data = _load(args)
    if args.image is not None:
        image, label, what = args.image, args.label, f"image {args.image}"
    else:
        x, y = (data.test_x, data.test_y) if args.split == "test" else (data.train_x, data.train_y)
        index = args.index
        if index is None:
            index = first_mistake(predict_proba(ckpt.model, x).argmax(axis=1), y)
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
    print(f"picture: {plot_explanation(e, args.out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report import write_report
    path = write_report(args.run_dir, data_dir=args.data_dir, data_dir_name="--data-dir")
    print(f"report: {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import serve
    checkpoint = args.checkpoint or "runs/mnist/checkpoint.npz"
    if args.checkpoint is None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train one first with "
                                f"`tinygrad-mnist train`, or pass a CHECKPOINT")
    serve(checkpoint, host=args.host, port=args.port, max_sessions=args.max_sessions,
          allow_host=tuple(args.allow_host), data_dir=args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
