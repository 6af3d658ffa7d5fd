"""Old entry point, kept so scripts that run ``python -m rlhf_hgt.lm.ppo_cli ...`` (e.g. under
``accelerate launch -m``) keep working: the same as ``python -m rlhf_hgt.cli lm ppo ...``.
This module imports nothing unless it is run."""

if __name__ == "__main__":
    import sys

    from rlhf_hgt.cli import main  # an entry point may wire; no library module does

    sys.exit(main(["lm", "ppo", *sys.argv[1:]]))
