"""The control stack: learn a reward from compared trajectory segments, train policies on it.

Modules (imported on use; this package file imports nothing heavy):

- ``fragments``     collect rollouts (episodes with true rewards, optional frames) and cut
                    fixed-length segments that never cross an episode boundary
- ``reward_net``    RewardNet: r(s, a) per step, an MLP or a CNN chosen from the spaces
- ``reward_model``  RewardEnsemble (fit on the shared Bradley–Terry core, normalised
                    prediction, disagreement, safetensors save/load), RewardModelConfig
- ``queries``       pair selection (random or ensemble disagreement) and the label schedule
- ``agents``, ``loop``, ``policy_dpo``, ``lora``, ``checkpoint``: the policy side and the
                    collect → fit reward → train policy loop
"""
