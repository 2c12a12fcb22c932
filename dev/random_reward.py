"""Control for demo.sh (CONTROLS=1): GRPO with a random reward of the same mean, to show that a gain is the reward's.

Runs grpo.py unchanged except for one thing: after each rollout is scored, its rewards are permuted at random
across the rank's samples. The step's reward mean and distribution stay exactly those of the real reward, but
which completion earns which reward no longer depends on its answer (Shao et al., "Spurious rewards",
arXiv 2506.10947: such rewards can move a model through clipping bias alone). The logged accuracy is the real one.

    torchrun --standalone --nproc_per_node 2 dev/random_reward.py --model runs/demo/sft --data ... --out ...

Every flag is grpo.py's (python dev/random_reward.py --help).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import grpo  # noqa: E402

real_score = grpo.score


def permuted_score(ro, tok, partial: bool = False):
    """grpo.score, then the rewards shuffled across the rollout's samples (the step's RNG, seeded by grpo.py)."""
    sc = real_score(ro, tok, partial)
    sc.rewards = sc.rewards[torch.randperm(len(sc.rewards))]
    return sc


if __name__ == "__main__":
    grpo.score = permuted_score
    grpo.main(sys.argv[1:])
