"""A checkable task generated from the seed, nothing downloaded: arithmetic questions and their answers
("What is 47 + 38?" -> "85"; see `distill.llm.data`, source `arithmetic`)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from distill.errors import DistillError

OPERATIONS = ("+", "-", "*")


def check_arithmetic(num_examples: int, digits: Sequence[int], operations: Sequence[str]) -> None:
    """Refuse settings that cannot give `num_examples` distinct problems, in one line each."""
    low, high = digits
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 3:
        raise DistillError(
            f"num_examples must be an integer >= 3 (train, val and test need one each), got {num_examples}"
        )
    if not 1 <= low <= high <= 18:
        raise DistillError(f"digits must be [min, max] with 1 <= min <= max <= 18, got [{low}, {high}]")
    if not operations or any(op not in OPERATIONS for op in operations) or len(set(operations)) != len(operations):
        raise DistillError(f"operations must be distinct ones of {', '.join(OPERATIONS)}, got {list(operations)}")
    distinct = problem_count(digits, operations)
    if num_examples > distinct:
        raise DistillError(
            f"num_examples={num_examples} is more than the {distinct} distinct problems of {low}-{high} digit "
            f"numbers and operations {' '.join(operations)}: lower it, or allow more digits or operations"
        )


def operand_range(digits: Sequence[int]) -> tuple[int, int]:
    """The smallest and largest operand with between min and max digits (one digit includes 0)."""
    low, high = digits
    return (0 if low == 1 else 10 ** (low - 1)), 10**high - 1


def problem_count(digits: Sequence[int], operations: Sequence[str]) -> int:
    smallest, largest = operand_range(digits)
    return len(operations) * (largest - smallest + 1) ** 2


def answer(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def arithmetic_problems(
    num_examples: int, digits: Sequence[int], operations: Sequence[str], seed: int
) -> list[tuple[str, str]]:
    """`num_examples` distinct (question, answer) pairs, the same for the same arguments.

    Every problem `a op b` with both operands of between digits[0] and digits[1] digits (one digit: 0-9)
    and an operation of `operations` is equally likely; they are drawn without replacement (a seeded
    `random.Random(seed).sample` of their indices), so a question is never in two splits. Subtraction may
    give a negative answer ("What is 12 - 47?" -> "-35").
    """
    check_arithmetic(num_examples, digits, operations)
    smallest, largest = operand_range(digits)
    count = largest - smallest + 1
    problems = []
    for index in random.Random(seed).sample(range(problem_count(digits, operations)), num_examples):
        op_index, rest = divmod(index, count * count)
        a, b = smallest + rest // count, smallest + rest % count
        op = operations[op_index]
        problems.append((f"What is {a} {op} {b}?", str(answer(a, op, b))))
    return problems
