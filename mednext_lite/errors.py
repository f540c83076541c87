"""The one error boundary of every command: a user's error is one line and exit status 2, anything else a bug.

:func:`error_line` is the one place that decides which exceptions are the user's to fix (a bad
value, an unreadable, damaged or missing file, a permission, too little memory, a missing optional
package, a shape PyTorch refuses) and words each as the problem and its fix. :func:`run_command`
runs a command's handler and prints that line as ``<prog>: error: <line>``; the command line
(:func:`mednext_lite.cli.main`) and the standalone data scripts (``data_scripts/*.py``) both run
through it, and ``--debug`` (:func:`add_debug_flag`) lets the exception propagate with its traceback.

Exit statuses, the same for every command:

- 0: done.
- 1: a bug in mednext-lite (the line asks for a report; ``--debug`` shows the traceback).
- 2: the user's to fix: a bad value or flag (argparse's usage errors too), a bad, missing or
  damaged file, a task that fails validation, too little memory, a missing optional package.
- 3: training diverged (:class:`mednext_lite.train.TrainingDiverged`); the last finite checkpoint is kept.
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import errno
import gzip
import re
import sys
import tarfile
import zlib
from collections.abc import Callable

__all__ = ["add_debug_flag", "error_line", "root_cause", "run_command"]


def _one_line(text: object, limit: int = 1000) -> str:
    """``text`` on one line: the parts of a multi-line message (a list of problems, "- " bullets)
    joined by "; ", cut to ``limit`` characters."""
    parts = [part.strip() for part in str(text).splitlines() if part.strip()]
    line = "; ".join(part.removeprefix("- ") for part in parts)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _os_error_line(err: OSError) -> str:
    name = err.filename
    if name is None:
        return f"{err}: check the paths given and the disk"
    if err.errno == errno.ENOSPC:
        return f"no space left on the device while writing {name}: free disk space or choose another folder"
    if isinstance(err, PermissionError):
        return f"permission denied: {name}: check its permissions (and its folder's) or choose another path"
    if isinstance(err, FileNotFoundError):
        return f"no such file or folder: {name}: check the path"
    if isinstance(err, IsADirectoryError):
        return f"{name} is a folder where a file is needed: pass the file itself"
    if isinstance(err, NotADirectoryError):
        return f"{name}: part of this path is a file where a folder is needed: check the path"
    return f"{err.strerror or err}: {name}: check the path, the disk and its permissions"


#: PyTorch and MONAI RuntimeErrors that an input causes (a shape, size, channel count or dtype the
#: model or a transform cannot take); any other RuntimeError is a bug of ours.
_INPUT_RUNTIME_PATTERNS = (
    r"sizes? of tensors? must match", r"size mismatch", r"is invalid for input of size", r"shapes cannot be multiplied",
    r"must match the size of tensor", r"expected .*to have \d+ channels", r"input type .* and \w+ type .* should be the same",
    r"expected scalar type", r"found dtype", r"expected \w+ dtype to be", r"input size per channel",
    r"kernel size can't be greater", r"doesn't match the broadcast shape",
    r"expected \d+d \(unbatched\) or \d+d \(batched\) input", r"class values must be (smaller|non-negative)",
    r"needs more memory than",
)
_INPUT_RUNTIME_ERRORS = re.compile("|".join(_INPUT_RUNTIME_PATTERNS), re.IGNORECASE)

#: pip's name for a module whose import name differs from it, and the modules the notebooks extra installs.
_PIP_NAMES = {"sklearn": "scikit-learn", "skimage": "scikit-image", "PIL": "pillow", "yaml": "pyyaml"}
_NOTEBOOK_EXTRA = {"papermill", "ipykernel", "ipywidgets", "nbformat", "nilearn"}


def _import_error_line(err: ImportError) -> str:
    if "pip install" in str(err):
        return _one_line(err)  # the package's own message already says what to install
    module = (err.name or "").split(".")[0] or "a package"
    package = _PIP_NAMES.get(module, module)
    extra = " (or pip install 'mednext_lite[notebooks]')" if package in _NOTEBOOK_EXTRA else ""
    if isinstance(err, ModuleNotFoundError):
        return f"{_one_line(err)}: the optional package {package} is not installed: pip install {package}{extra}"
    return (f"{_one_line(err)}: the installed {package} does not provide what mednext-lite needs (too old, or "
            f"damaged): pip install -U {package}{extra}")


def _loaded_classes(module: str, *names: str) -> tuple[type, ...]:
    """The exception classes ``names`` of ``module`` if it has been imported, else none.

    An exception of a class exists only once its module has run, so recognising one needs no
    import: importing nibabel or the data package (and MONAI with it) for every error would
    slow the command line down and tie this module to theirs.
    """
    loaded = sys.modules.get(module)
    return tuple(getattr(loaded, name) for name in names) if loaded is not None else ()


def root_cause(err: BaseException) -> BaseException:
    """The exception a plain ``RuntimeError`` wraps, followed through every such wrapper: MONAI wraps
    each failing transform in ``RuntimeError("applying transform ...")`` raised from the real error.
    A subclass of ``RuntimeError`` (CUDA's out-of-memory error, a diverged training) is itself the
    error and is returned as it is."""
    seen = {id(err)}
    while type(err) is RuntimeError and err.__cause__ is not None and id(err.__cause__) not in seen:
        err = err.__cause__
        seen.add(id(err))
    return err


def error_line(err: BaseException) -> tuple[str, int]:
    """The message and exit status (see the module docstring) for an exception that reached a
    command's boundary: 2 with the problem and its fix for anything a user can cause (bad values,
    unreadable, damaged or missing files, permissions, memory, a missing optional package, corrupt
    checkpoints, archives and downloads, a shape or dtype PyTorch refuses), 3 for a training that
    diverged, 130 for an interrupt, 1 with a request to report it for anything else, which is a bug.

    The message is one line, with one exception: a task that fails validation (an error carrying
    a ``problems`` list, such as ``DatasetError``) gets its headline and then every problem on a
    line of its own, so that all of them, each naming its file, can be fixed at once."""
    cause = root_cause(err)  # MONAI's wrapper hides the user's problem
    kind = type(cause).__name__
    if isinstance(cause, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(cause, _loaded_classes("mednext_lite.train", "TrainingDiverged")):
        return _one_line(cause), 3  # its message says where, what was kept and what to change
    if isinstance(cause, MemoryError) or (isinstance(cause, RuntimeError) and (
            kind == "OutOfMemoryError" or "out of memory" in str(cause).lower()
            or "can't allocate memory" in str(cause).lower())):
        where = "GPU" if "cuda" in str(cause).lower() or kind == "OutOfMemoryError" else "RAM"
        return (f"out of memory ({where}, {kind}): lower --sw-batch-size, --patch or --batch, predict fewer or "
                f"smaller images{', or use --device cpu' if where == 'GPU' else ', or use a machine with more memory'}"), 2
    problems = getattr(cause, "problems", None)
    if isinstance(cause, ValueError) and isinstance(problems, list) and problems:
        task = getattr(cause, "task_dir", "")
        listed = "".join(f"\n  - {_one_line(p)}" for p in problems)
        return f"{len(problems)} problem(s) in task {task}, fix each to use it:{listed}", 2
    if isinstance(cause, ImportError) and not (cause.name or "").startswith("mednext_lite"):
        return _import_error_line(cause), 2
    if isinstance(cause, KeyError):
        return _one_line(cause.args[0] if cause.args else repr(cause)), 2
    if isinstance(cause, (ValueError, TypeError, *_loaded_classes("mednext_lite.data.transfer", "DownloadError"))):
        return _one_line(str(cause) or kind), 2
    if isinstance(cause, _loaded_classes("nibabel.filebasedimages", "ImageFileError")
                  + _loaded_classes("nibabel.spatialimages", "HeaderDataError")):
        return f"{_one_line(cause)}: not a readable NIfTI image; check the file or re-export it", 2
    if isinstance(cause, (tarfile.TarError, zlib.error, EOFError, gzip.BadGzipFile)):
        kind = "zlib.error" if isinstance(cause, zlib.error) else kind
        return (f"{kind}: {_one_line(cause)}: a compressed file or archive is truncated or damaged; download or "
                "export it again"), 2
    if isinstance(cause, OSError):
        return _os_error_line(cause), 2
    if isinstance(cause, RuntimeError) and _INPUT_RUNTIME_ERRORS.search(str(cause)):
        return (f"{kind}: {_one_line(cause, 600)}: a shape, size or type the model cannot take; check the inputs "
                "and flags (--patch, --spatial-dims, the images' channels and dtype)"), 2
    return (f"internal error ({kind}: {_one_line(cause, 600)}): this is a bug in mednext-lite; rerun with --debug "
            "for the traceback and report it"), 1


def add_debug_flag(parser: argparse.ArgumentParser, *, top: bool = True) -> None:
    """Add ``--debug`` to ``parser`` and, so that it can also come last, to every subcommand below it
    (where it defaults to "unset", never overriding a ``--debug`` given before the subcommand)."""
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="on an error, show the full traceback instead of the one-line message")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_debug_flag(child, top=False)


def run_command(prog: str, handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
                debug: bool = False) -> int:
    """Run ``handler(args)`` and return its exit status (0 when it returns None). Any exception,
    an interrupt included, is printed as the one line ``<prog>: error: <line>`` on stderr and its
    status (:func:`error_line`) returned; with ``debug`` it propagates with its traceback instead."""
    try:
        return int(handler(args) or 0)
    except (Exception, KeyboardInterrupt) as err:
        if debug:
            raise
        line, status = error_line(err)
        print(f"{prog}: error: {line}", file=sys.stderr)
        return status
