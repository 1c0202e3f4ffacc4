"""CLO on the single-token simulator. All logic lives in :mod:`dynamics.runs.sim`; see --help."""

from dynamics.runs.sim import main

if __name__ == "__main__":
    main()
