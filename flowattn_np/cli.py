"""Command line: ``python -m flowattn_np`` or ``flowattn-np``.

```text
flowattn-np reproduce [--quick] [--out DIR] [--layers 1,2,4] [--noise 0,0.5,1] ...
flowattn-np data [--download]      where the data is found (or fetch it)
flowattn-np info                   version, backend, CuPy, data, thread policy and CPUs
flowattn-np coursework init DIR    an nbgrader course directory with the assignments
flowattn-np notebooks DIR          copy the teaching notebooks into DIR
```
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from flowattn_np import __version__


class _Parser(argparse.ArgumentParser):
    """argparse, with errors of the form ``prog: error: --flag: what was expected, got X``."""

    def error(self, message):
        super().error(message.removeprefix("argument "))


def _number(text, positive):
    try:
        value = float(text)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        what = "a positive finite number" if positive else "a finite number >= 0"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def _positive_float(text):
    return _number(text, positive=True)


def _non_negative_float(text):
    return _number(text, positive=False)


def _distinct(values, text):
    """``values`` if none repeats: a repeated column would only redo the same compute."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"expected distinct values, got {text!r} ({', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in repeated)} repeated)")
    return values


def _floats(text):
    parts = [v.strip() for v in text.split(",") if v.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}")
    try:
        values = tuple(_number(v, positive=False) for v in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated finite numbers >= 0, got {text!r}") from None
    return _distinct(values, text)


def _ints(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return _distinct(values, text)


def _names(text):
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return _distinct(values, text)


def _parts(text):
    from flowattn_np.experiments.common import PARTS

    values = _ints(text)
    if any(v not in PARTS for v in values):
        raise argparse.ArgumentTypeError(
            f"expected part numbers among {','.join(map(str, PARTS))}, got {text!r}")
    return values


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _threads(text):
    from flowattn_np.threads import check_setting

    try:
        return check_setting(text, "--threads")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'off', got {text!r}") from None


def _add_threads_option(*commands):
    """--threads on the commands that compute (and on info, which shows the policy)."""
    for command in commands:
        command.add_argument("--threads", type=_threads, metavar="K|off",
                             help="host threads sharing a batch, BLAS at one thread inside the package; "
                                  "'off': BLAS's own threads (default: $FLOWATTN_THREADS, else the CPUs "
                                  "this process may use)")


def _apply_threads(args):
    """--threads sets the thread policy for this process (over $FLOWATTN_THREADS); without it,
    an unusable $FLOWATTN_THREADS is one error line before a command that computes."""
    from flowattn_np.threads import check_env, set_threads

    if getattr(args, "threads", None) is not None:
        set_threads(args.threads)
    elif args.command == "reproduce":
        try:
            check_env()
        except ValueError as exc:
            args.parser.error(str(exc))


def _add_early_stopping_options(rep):
    """The options of parts 4 and 5 sized by their early stopping."""
    rep.add_argument("--norm-variants", type=_names, help="part 4 label-free variants, e.g. oracle (default oracle,memory)")
    rep.add_argument("--max-epochs", type=_positive, help="parts 4 and 5: early stopping's cap on the epochs (default 10)")
    rep.add_argument("--patience", type=_positive, help="parts 4 and 5: epochs without a better validation accuracy before stopping (default 2)")


def build_parser():
    """The ``flowattn-np`` argument parser: reproduce, data, info, threads, notebooks, coursework."""
    parser = _Parser(
        prog="flowattn-np",
        description="Transformers derived as gradient flows of multinomial regression "
                    "(Actor, Gruber & Cyr, arXiv 2509.04653), in NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"flowattn-np {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rep = _add_reproduce_parser(sub)

    dat = sub.add_parser("data", help="show where Fashion-MNIST is found, or download it")
    dat.set_defaults(parser=dat)
    dat.add_argument("--data-dir")
    dat.add_argument("--download", action="store_true", help="download from the official mirror if missing")

    info = sub.add_parser("info", help="version, backend, CuPy availability and data location")
    info.set_defaults(parser=info)
    for command in (rep, dat, info):
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    _add_threads_option(rep, info)
    from flowattn_np.teaching.coursework import add_parser as add_coursework_parser

    add_coursework_parser(sub)
    _add_notebooks_parser(sub)
    return parser


def _add_reproduce_parser(sub):
    rep = sub.add_parser(
        "reproduce", help="run the paper's Fashion-MNIST experiment (table, Figure 1, results.json)",
        description="Reproduce the paper's Fashion-MNIST experiment: (1) multinomial regression, "
                    "(2) feature discovery with the true labels (an oracle computation), (3) label-free "
                    "classifiers trained end to end; with --parts 4, (4) normalisation as a sphere "
                    "constraint; with --parts 5, (5) the MLP oracle inside the blocks against its controls. "
                    "Writes results.json, results.md and PNG figures.")
    rep.set_defaults(parser=rep)
    rep.add_argument("--out", help="output folder (default: a new folder under runs/)")
    rep.add_argument("--parts", type=_parts,
                     help="comma-separated parts to run, e.g. 4, 5 or 1,2,3,4,5 (default 1,2,3; parts 2 and 4 also run part 1, whose theta they use)")
    rep.add_argument("--norm-layers", type=_positive, help="part 4: depth L of the normalised networks (default 2)")
    rep.add_argument("--layers", type=_ints, help="part 3 depths L, e.g. 1,2,4 (default 1,2,4)")
    rep.add_argument("--max-layers", type=_positive, help="part 2: blocks L = 0..MAX (default 8)")
    rep.add_argument("--noise", type=_floats, help="test noise levels sigma (default 0,0.5,1.0)")
    rep.add_argument("--train-noise", type=_non_negative_float, help="sigma of the noise augmentation (default 0.5)")
    rep.add_argument("--epochs", type=_positive, help="training epochs (default 5)")
    rep.add_argument("--seeds", type=_positive, help="number of seeds for parts 1, 3 and 5 (default 3)")
    rep.add_argument("--seed", type=_non_negative_int, help="first seed (default 0)")
    rep.add_argument("--optimizer", choices=("adam", "sgd"), help="part 3 optimiser (default adam)")
    rep.add_argument("--lr", type=_positive_float, help="part 3 and 5 learning rate (default 3e-3)")
    rep.add_argument("--h-units", type=_positive_float, help="part 2 step h in units of 1/lam_max (default 1)")
    rep.add_argument("--mlp-widths", type=_ints, help="part 5 hidden widths k of the MLP oracle (default 64,256)")
    rep.add_argument("--mlp-layers", type=_ints, help="part 5 depths L of the MLP-oracle networks (default 1,2,4)")
    rep.add_argument("--mlp-activation", choices=("gelu", "relu"), help="part 5 activation (default gelu)")
    _add_early_stopping_options(rep)
    rep.add_argument("--train-size", type=_positive, help="use the first N training images (default all)")
    rep.add_argument("--test-size", type=_positive, help="use the first N test images (default all)")
    rep.add_argument("--backend", choices=("numpy", "cupy"), default=None,
                     help="array backend (default: $FLOWATTN_BACKEND or numpy)")
    rep.add_argument("--data-dir", help="folder holding the four Fashion-MNIST .gz files")
    rep.add_argument("--quick", action="store_true", help="a smoke-sized run (seconds)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    rep.add_argument("--overwrite", action="store_true",
                     help="replace the previous run in --out (all its files, together, at the end)")
    return rep


def _add_notebooks_parser(sub):
    nbs = sub.add_parser("notebooks", help="copy the teaching notebooks into DIR",
                         description="Copy the teaching notebooks (.ipynb) into DIR, to open with "
                                     "Jupyter. Existing files are kept unless --overwrite.")
    nbs.set_defaults(parser=nbs)
    nbs.add_argument("dir", metavar="DIR", help="the folder to copy them into (made if missing)")
    nbs.add_argument("--overwrite", action="store_true", help="replace notebooks of the same name in DIR")


def _notebooks(args):
    from flowattn_np.teaching.course import CourseError, copy_notebooks

    try:
        copied = copy_notebooks(args.dir, overwrite=args.overwrite)
    except CourseError as exc:
        args.parser.error(str(exc))  # one line in argparse's form, exit status 2
    except OSError as exc:  # e.g. a folder that cannot be written
        args.parser.error(f"DIR: {exc}")
    print(f"Copied {len(copied)} notebooks into {args.dir}: {', '.join(p.name for p in copied)}.\n"
          f"Open them with: jupyter lab {args.dir}  (pip install \"flowattn-np[notebooks]\")")
    return 0


def _preflight_reproduce(args):
    """What can be checked without data or compute; an error message, or None if all is well."""
    from flowattn_np.backend import ENV_VAR, use_backend
    from flowattn_np.experiments.data import FILES

    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out: {args.out} exists and is not a folder; expected a new or existing folder"
    if args.data_dir is not None:
        if not os.path.isdir(args.data_dir):
            return f"--data-dir: {args.data_dir} is not a folder"
        if not os.access(args.data_dir, os.R_OK | os.X_OK):
            return f"--data-dir: {args.data_dir} cannot be read (permission denied); expected a readable folder"
        missing = [f for f in FILES.values() if not os.path.isfile(os.path.join(args.data_dir, f))]
        if missing:
            return (f"--data-dir: {args.data_dir} lacks {', '.join(missing)} "
                    "(a named --data-dir is used alone, never a fallback)")
    flag = "--backend" if args.backend else ENV_VAR
    try:
        with use_backend(args.backend or os.environ.get(ENV_VAR, "numpy").strip() or "numpy"):
            pass
    except Exception as exc:  # ValueError for an unknown name, BackendError without a GPU
        return f"{flag}: {str(exc).removeprefix('backend: ')}"
    return None


# the options of `reproduce` that override a ReproduceConfig field of the same name
REPRODUCE_OPTIONS = ("layers", "max_layers", "noise", "train_noise", "epochs", "seeds", "seed",
                     "optimizer", "lr", "h_units", "parts", "norm_layers", "mlp_widths", "mlp_layers",
                     "mlp_activation", "train_size", "test_size", "norm_variants", "max_epochs", "patience")


def _reproduce(args):
    from flowattn_np.experiments.common import ReproduceConfig
    from flowattn_np.experiments.reproduce import FIGURES_SKIPPED, default_out, markdown_table, reproduce
    from flowattn_np.experiments.plotting import matplotlib_available
    from flowattn_np.training.train import NonFiniteLossError

    overrides = {name: getattr(args, name) for name in REPRODUCE_OPTIONS if getattr(args, name) is not None}
    cfg = ReproduceConfig.quick_run(**overrides) if args.quick else ReproduceConfig(**overrides)
    prog = "python -m flowattn_np" if sys.argv[0].endswith("__main__.py") else "flowattn-np"
    command = " ".join([prog] + list(args.argv))
    log = (lambda msg: None) if args.no_progress else (lambda msg: print(msg, file=sys.stderr))
    figures = not args.no_figures
    if figures and not matplotlib_available():  # one line, even with --no-progress; the numbers still land
        print(f"{args.parser.prog}: {FIGURES_SKIPPED}", file=sys.stderr)
        figures = False
    folder = _run_folder(args, default_out)
    out = folder.path
    try:
        results = reproduce(cfg, out=folder, backend=args.backend, data_dir=args.data_dir,
                            progress=not args.no_progress, figures=figures, command=command, log=log)
    except NonFiniteLossError as exc:  # the settings' fault: say which to change, in one line
        args.parser.exit(2, f"{args.parser.prog}: error: {exc} This run: --lr {cfg.lr:g}, "
                            f"--train-noise {cfg.train_noise:g}; nothing was written.\n")
    finally:
        folder.discard()  # a no-op after the files landed; else what the preparation made goes
    return _print_results(args, out, markdown_table(results) + "\n" + (
        f"Took {results['seconds']:.1f} s on backend {results['backend']}. "
        f"Wrote {os.path.join(out, 'results.json')}, results.md"
        + "".join(f", {f}" for f in results["figures"].values()) + f" in {out}/\n"))


# reproduce's files: results.json and results.md (well under 1 MiB) and up to five figures
NEED_BYTES = 1 * 2 ** 20
NEED_BYTES_FIGURES = 8 * 2 ** 20


def _run_folder(args, default_out):
    """The output folder, created and proven writable with room to spare before any data is
    read; otherwise one --out error line (exit 2) and nothing left behind."""
    from flowattn_np.training.files import DestinationError, RunFolder

    folder = RunFolder(args.out or default_out(), overwrite=args.overwrite, fresh=args.out is None,
                       need_bytes=NEED_BYTES if args.no_figures else NEED_BYTES_FIGURES)
    try:
        return folder.prepare()
    except DestinationError as exc:
        args.parser.error(f"--out: {exc}")


def _print_results(args, out, text):
    """Print the table; a stdout that cannot take it (a full disk, /dev/full, a closed pipe)
    is one error line, since the files are written already."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as exc:
        with open(os.devnull, "w") as null:  # nothing more to flush into the failed stream at exit
            os.dup2(null.fileno(), sys.stdout.fileno())
        print(f"{args.parser.prog}: error: cannot write to standard output ({exc.strerror}); "
              f"the results are in {out}/", file=sys.stderr)
        return 1
    return 0


def _data(args):
    from flowattn_np.experiments.data import download_fashion_mnist, find_fashion_mnist, search_path

    found = find_fashion_mnist(args.data_dir)
    if found is None and args.download:
        found = download_fashion_mnist(args.data_dir)
    if found is None:
        print("Fashion-MNIST not found. Looked in:")
        for p in search_path(args.data_dir):
            print(f"  {p}")
        print("Get it with `sudo apt-get install dataset-fashion-mnist` or `flowattn-np data --download`.")
        return 1
    print(f"Fashion-MNIST found in {found}")
    return 0


def _info(args):
    from flowattn_np.backend import BackendError, cupy_available, get_backend, use_backend
    from flowattn_np.experiments.data import find_fashion_mnist

    import numpy

    print(f"flowattn-np {__version__}, Python {sys.version.split()[0]}, NumPy {numpy.__version__}")
    try:
        print(f"backend: {get_backend()}")
    except (ValueError, BackendError) as exc:
        print(f"backend: problem: {exc}; using numpy until it is fixed")
    if cupy_available():
        print(f"CuPy {sys.modules['cupy'].__version__}: GPU available")
    else:
        try:
            with use_backend("cupy"):  # raises, saying why
                pass
        except BackendError as exc:
            print(f"CuPy: not usable here ({str(exc).split('. ')[0]})")
    found = find_fashion_mnist()
    print(f"Fashion-MNIST: {found if found else 'not found (flowattn-np data --download)'}")
    from flowattn_np.threads import describe

    print("\n".join(describe()))  # the thread policy (or what is wrong with it), CPUs, BLAS
    return 0


def main(argv=None):
    """Run the command line on ``argv`` (default: sys.argv); returns the exit status."""
    from flowattn_np.backend import BackendError
    from flowattn_np.experiments.data import DataError
    from flowattn_np.training.files import signals_as_interrupts

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in results.json as the command that made them
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "reproduce":
        problem = _preflight_reproduce(args)
        if problem:
            args.parser.error(problem)  # argparse's form and exit status 2, before any work
    _apply_threads(args)
    try:
        with signals_as_interrupts():  # SIGTERM and SIGHUP clean up like Ctrl-C
            if args.command == "coursework":
                from flowattn_np.teaching.coursework import run_command

                return run_command(args)
            return {"reproduce": _reproduce, "data": _data, "info": _info,
                    "notebooks": _notebooks}[args.command](args)
    except OSError as exc:  # a file that could not be written or read: one line naming it
        if getattr(args, "debug", False):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{args.parser.prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except (DataError, BackendError, ValueError, TypeError) as exc:
        if getattr(args, "debug", False):
            raise
        hint = "" if isinstance(exc, (DataError, BackendError)) else " (--debug shows the traceback)"
        print(f"{args.parser.prog}: error: {exc}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (files.Terminated)
        signum = getattr(exc, "signum", 2)
        print(f"flowattn-np: {'interrupted' if signum == 2 else f'terminated by signal {signum}'}",
              file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
