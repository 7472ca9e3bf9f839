"""Exercises with self-checks (the pattern is introduced in notebook 00 and used by every chapter).

A chapter module registers a *checker* for each implementable exercise::

    @exercise("01.2")
    def _check_bits_per_pixel(fn):
        assert abs(fn(...) - expected) < 1e-6, "for 64 pixels and ... expected ..."
        return "your conversion matches the definition."

and the notebook calls ``check("01.2", bits_per_pixel)``, which prints a friendly verdict: correct, not yet (with the
checker's hint), or not implemented yet (the student version's stub raises ``NotImplementedError``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

__all__ = ["exercise", "check", "RESULTS", "CHAPTER_MODULES"]

#: Which module holds the checkers of each chapter's exercises.
CHAPTER_MODULES: dict[str, str] = {
    "00": "mmlib.exercises",
    "01": "mmlib.likelihood",
    "02": "mmlib.pcca",
    "03": "mmlib.gan",
    "04": "mmlib.vae",
    "05": "mmlib.aae",
    "06": "mmlib.cgan",
    "07": "mmlib.mvae",
    "08": "mmlib.mmgan",
}

_CHECKERS: dict[str, Callable[[Callable], str]] = {}
#: The last verdict of each exercise checked in this process (``True`` = correct); tests read it.
RESULTS: dict[str, bool] = {}


def exercise(key: str) -> Callable[[Callable[[Callable], str]], Callable[[Callable], str]]:
    """Register the checker of exercise ``key`` ("NN.k"); it raises ``AssertionError(hint)`` on a wrong answer."""

    def decorate(checker: Callable[[Callable], str]) -> Callable[[Callable], str]:
        _CHECKERS[key] = checker
        return checker

    return decorate


def _find_checker(key: str) -> Callable[[Callable], str]:
    if not isinstance(key, str):
        raise TypeError(f"key: expected an exercise key such as '01.2', got {type(key).__name__}")
    if key not in _CHECKERS:
        module = CHAPTER_MODULES.get(key.split(".")[0])
        if module is not None:
            importlib.import_module(module)
    if key not in _CHECKERS:
        raise ValueError(f"key: no exercise {key!r}; known: {sorted(_CHECKERS)}")
    return _CHECKERS[key]


def check(key: str, answer: Callable) -> None:
    """Check the student's ``answer`` to exercise ``key`` and print a verdict (recorded in :data:`RESULTS`)."""
    checker = _find_checker(key)
    if not callable(answer):
        raise TypeError(f"answer: expected your function (its name, not a call of it), got {type(answer).__name__}")
    try:
        message = checker(answer)
    except NotImplementedError:
        RESULTS[key] = False
        print(f"✘ Exercise {key}: not implemented yet — fill in the function above and run both cells again.")
        return
    except AssertionError as err:
        RESULTS[key] = False
        print(f"✘ Exercise {key}: not yet. {err}")
        return
    except Exception as err:  # noqa: BLE001 — a student's bug must give a verdict, not a crash
        RESULTS[key] = False
        print(f"✘ Exercise {key}: your function raised {type(err).__name__}: {err}")
        return
    RESULTS[key] = True
    print(f"✔ Exercise {key}: correct. {message}")


@exercise("00.1")
def _check_gaussian_mle(fn: Callable) -> str:
    """Exercise 00.1: the maximum-likelihood mean and standard deviation of a 1D sample."""
    import torch

    x = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)
    mu, sigma = fn(x)
    mu, sigma = float(mu), float(sigma)
    assert abs(mu - 3.5) < 1e-6, f"for x = [1, 2, 4, 7] the mean should be 3.5, got {mu:.4g}."
    assert abs(sigma - 2.2912878) < 1e-5, (
        f"for x = [1, 2, 4, 7] the ML standard deviation is sqrt(21/4) = 2.2913, got {sigma:.5g}. "
        "Maximum likelihood divides by n, not n − 1."
    )
    return "The ML estimate divides by n: its variance is biased low, by the factor (n − 1)/n."
