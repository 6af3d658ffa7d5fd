"""Old entry point, kept so scripts that run ``python -m rlhf_hgt.lm.cli [lm] reward|dpo|ppo|
online ...`` (e.g. under ``accelerate launch -m``) keep working. The command line lives in
:mod:`rlhf_hgt.cli`; use ``python -m rlhf_hgt.cli lm ...``. This module imports nothing
unless it is run."""

if __name__ == "__main__":
    import sys

    from rlhf_hgt.cli import main  # an entry point may wire; no library module does

    argv = sys.argv[1:]
    sys.exit(main(argv if argv[:1] == ["lm"] else ["lm", *argv]))
