"""The control stack: learn a reward from compared trajectory segments, train policies on it.

Modules (imported on use; this package file imports nothing heavy):

- ``fragments``     collect rollouts (episodes with true rewards, optional frames) and cut
                    fixed-length segments that never cross an episode boundary
- ``reward_net``    RewardNet: r(s, a) per step, an MLP or a CNN chosen from the spaces
- ``reward_model``  RewardEnsemble (fit on the shared Bradley–Terry core, normalised
                    prediction, disagreement, safetensors save/load), RewardModelConfig
- ``queries``       pair selection (random or ensemble disagreement) and the label schedule
- ``config``        ControlConfig, AgentConfig, PolicyDPOConfig (light: no torch)
- ``learner``       the PreferenceLearner role (fit / train / save / restore) and the
                    ``--algo`` registry; ``reward_learner`` (ppo: reward ensemble + RL agent)
                    and ``dpo_learner`` (dpo: the policy learns from the pairs directly)
- ``agents``, ``policy_dpo``, ``lora``: SB3 agents, DPO for policies, LoRA for policies
- ``loop``          gather clips → answers → fit → train policy, in rounds;
                    ``checkpoint`` saves each round so a killed run resumes
"""
