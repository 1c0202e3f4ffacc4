"""CLO on a unified model: the toy scene world by default, Janus-Pro with --model. All logic lives
in :mod:`dynamics.runs.full`; see --help."""

from dynamics.runs.full import main

if __name__ == "__main__":
    main()
