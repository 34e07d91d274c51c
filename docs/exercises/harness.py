"""Running a learner's exercise file without letting it crash the checker (docs/exercises/check.py).

``load`` imports the file, ``need`` takes one of its functions, and every error the learner's code
raises (an import error, ``NotImplementedError``, any exception) becomes a ``Fail`` whose message
names the file and the line it came from, so the checker prints FAIL with a hint instead of a
traceback. Tests: tests/test_exercises.py.
"""

from __future__ import annotations

import importlib.util
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class Fail(Exception):
    """A check failed; the message says what and gives a hint."""


def rel(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load(path: Path):
    if not path.is_file():
        raise Fail(f"no file {rel(path)}")
    spec = importlib.util.spec_from_file_location(f"exercise_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - any error in the student's file is a FAIL, not a crash
        raise Fail(f"could not import {rel(path)}: {type(e).__name__}: {e}{_where(e, path)}") from None
    mod.__checked_path__ = path
    return mod


def _where(e: BaseException, path: Path) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" (at {rel(path)}, line {frames[-1].lineno}: {frames[-1].line})" if frames else ""


def need(mod, name: str):
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise Fail(f"{rel(mod.__checked_path__)} defines no function `{name}`")
    return _Guarded(fn, mod.__checked_path__)


class _Guarded:
    """The student's function; its exceptions become a FAIL with the line they came from."""

    def __init__(self, fn, path):
        self.fn, self.path, self.__name__ = fn, path, fn.__name__

    def __call__(self, *args, **kwargs):
        try:
            return self.fn(*args, **kwargs)
        except NotImplementedError:
            raise Fail(f"`{self.__name__}` in {rel(self.path)} is not implemented yet: "
                       "replace `raise NotImplementedError` with your code") from None
        except Fail:
            raise
        except Exception as e:  # noqa: BLE001
            raise Fail(f"`{self.__name__}` raised {type(e).__name__}: {e}{_where(e, self.path)}") from None


def as_float(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise Fail(f"{what} should be a number, got {value!r}") from None
