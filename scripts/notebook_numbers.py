"""Words follow numbers: no measured number typed into a notebook's prose, every rendered number from its record.

Two checks, run by ``scripts/execute_notebooks.py`` after a run and by ``tests/test_notebook_outputs.py`` on the
stored notebooks:

* :func:`typed_numbers`: a markdown cell (the run-stamp cell aside) may not hold a number with a unit of
  measurement (``%``, ``px``, ``x``, ``s``, ``min``, ``img/s``, ``GFLOP``, ``TFLOP``, ``AUC``, ``points``) unless
  ``tests/allowed_prose_numbers.toml`` lists it for that notebook with a reason: constants of a method (16x16
  patches) and reference numbers of the original project or of papers, each with its source. Anything measured is
  rendered from the run's record by a code cell (``display(Markdown(...))``), so that it cannot go stale.
* :func:`unbacked_numbers`: every number in a rendered Markdown output must equal a value of the record the
  notebook wrote (to the digits shown, as it is or as a percentage), so a rendered sentence cannot quote a number
  the run did not measure. A notebook that quotes another record copies the values it quotes into its own.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_FILE = ROOT / "tests" / "allowed_prose_numbers.toml"
STAMP_CELL = "run-stamp"  # id of the first (markdown) cell of a stored notebook: where its outputs come from

_UNIT = r"(?:\s?(?:%|px\b|img/s\b|images/s\b|s\b|min\b|[GMT]FLOPs?\b|points?\b|AUC\b)|x\d*(?![a-z]))"  # 17.5x, 16x16
_TYPED = re.compile(rf"(?<![\w.])\d+(?:[.,]\d+)*{_UNIT}|\bAUC\s(?:of\s)?\d+(?:\.\d+)?")
# a number standing alone: not part of a name such as CIFAR-10, ViT-B/16, in21k or v1.2 (a trailing x is a ratio)
_RENDERED = re.compile(r"(?<![\w.,/-])(\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?)(?=x(?![a-wyz])|[^\w.]|\.(?!\d)|$)")
_SECTION = re.compile(r"\b[Pp]arts? \d+(?:(?:, | and | to )\d+)*")  # "Parts 4 and 5": names a section, measures nothing


def load_allowed(path: Path = ALLOWED_FILE) -> dict[str, dict[str, str]]:
    """{notebook name: {number as written: reason}} from the whitelist file."""
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def _typed(pieces, name: str, allowed: dict[str, dict[str, str]]) -> list[str]:
    """Measured numbers in ``pieces`` ((where, text) pairs) that the whitelist does not allow for ``name``, and
    whitelist entries that are stale or lack a reason."""
    own = allowed.get(name, {})
    found, used = [], set()
    for where, text in pieces:
        for match in _TYPED.finditer(text):
            token = " ".join(match.group(0).split())
            if token in own:
                used.add(token)
            else:
                found.append(f"{name}: {where} types the number {token!r} into prose; render it from the record "
                             f"(a code cell; scripts/results_table.py for the README), or, if it is a constant or a "
                             f"cited reference number, list it under [\"{name}\"] in "
                             f"{ALLOWED_FILE.relative_to(ROOT)} with its reason")
    for token, reason in own.items():
        if token not in used:
            found.append(f"{name}: {ALLOWED_FILE.name} allows {token!r}, which its prose no longer holds: remove it")
        elif not str(reason).strip():
            found.append(f"{name}: {ALLOWED_FILE.name} allows {token!r} without a reason")
    return found


def typed_numbers(nb, name: str, allowed: dict[str, dict[str, str]]) -> list[str]:
    """Measured numbers typed into the notebook's markdown (the run-stamp cell aside), and whitelist entries that
    are stale or lack a reason."""
    return _typed(((f"markdown cell {i}", c.source) for i, c in enumerate(nb.cells)
                   if c.cell_type == "markdown" and c.get("id") != STAMP_CELL), name, allowed)


RENDERED_BLOCK = re.compile(r"<!-- (\S+):start -->.*?<!-- \1:end -->", re.S)  # written by scripts/results_table.py


def typed_numbers_in_page(path: Path, allowed: dict[str, dict[str, str]]) -> list[str]:
    """The same check on a Markdown page (the README, a docs page), listed in the whitelist by its path in the
    repository (``docs/results.md``): the blocks that results_table.py renders are exempt."""
    text = RENDERED_BLOCK.sub("", path.read_text())
    name = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else path.name
    return _typed([("its prose", text)], name, allowed)


def record_numbers(record) -> list[float]:
    """Every number a record holds (metrics, config, seed, wall time...), lists included."""
    if isinstance(record, bool) or record is None:
        return []
    if isinstance(record, (int, float)):
        return [abs(float(record))]
    values = record.values() if isinstance(record, dict) else record if isinstance(record, list) else []
    return [v for item in values for v in record_numbers(item)]


def _backed(token: str, values: list[float]) -> bool:
    mantissa, _, exponent = token.replace(",", "").partition("e")
    number = float(mantissa) * 10 ** int(exponent or 0)
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    tol = 0.5 * 10 ** (int(exponent or 0) - decimals) * (1 + 1e-9) + 1e-15
    return any(abs(v * scale - number) <= tol for v in values for scale in (1, 100))


def markdown_outputs(nb):
    """(code cell number, text) of every rendered Markdown output."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code):
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown")
            if text:
                yield i + 1, text if isinstance(text, str) else "".join(text)


def unbacked_numbers(nb, name: str, record: dict, record_name: str) -> list[str]:
    """Numbers of rendered Markdown outputs that no value of the record equals (to the digits shown)."""
    values = record_numbers(record)
    return [f"{name}: code cell {i} renders {m.group(1)} in Markdown, which no value of {record_name} equals: render "
            f"numbers from the record (put a derived number into the record first)"
            for i, text in markdown_outputs(nb) for m in _RENDERED.finditer(_SECTION.sub("", text))
            if not _backed(m.group(1), values)]
