"""Where the time of distill's training steps goes: py-spy's raw samples of `scripts/bench_step.py --arms distill`,
each sample of the training loop attributed to the innermost frame of a known kind (see bench_step.py's docstring).

    python scripts/step_profile.py step.txt
"""

from __future__ import annotations

import collections
import sys

#: kind -> what its frames' file paths contain (the innermost matching frame of a sample decides)
KINDS = {
    "progress bar": ["callbacks/progress/"],
    "metric logging (self.log, result collection)": ["logger_connector/", "connectors/logger_connector", "result.py"],
    "backward": ["backward (torch/_tensor.py", "torch/autograd/"],
    "optimizer step": ["torch/optim/"],
    "student forward": ["distill/nets/", "torch/nn/modules/"],
    "loss terms": ["distill/losses/"],
    "distill module step (views, cached teacher outputs, terms' sum)": ["distill/modules/"],
    "batch iteration (TensorBatches)": ["distill/data/"],
    "the bare arm's own step (loss_of, in bench_step.py)": ["bench_step.py"],
    "Lightning: loop, hooks, callbacks, strategy": ["lightning/"],
}
IN_TRAINING = "advance (lightning/pytorch/loops/training_epoch_loop"


def kind_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for kind, keys in KINDS.items():
            if any(key in frame for key in keys):
                return kind
    return "other"


def main() -> None:
    counts: collections.Counter[str] = collections.Counter()
    for line in open(sys.argv[1]):
        stack, _, n = line.rstrip().rpartition(" ")
        if IN_TRAINING in stack:
            counts[kind_of(stack.split(";"))] += int(n)
    total = sum(counts.values())
    print(f"{total} samples in training steps\n\n| where | share of the step |\n|---|---|")
    for kind, n in counts.most_common():
        print(f"| {kind} | {100 * n / total:.1f}% |")


if __name__ == "__main__":
    main()
