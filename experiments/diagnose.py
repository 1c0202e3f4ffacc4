"""The paper's diagnosis of unified models without training: Non, weak-generation attribution and
understanding FP/FN rates per task and difficulty tier, the cross-model table and figure. All logic
lives in :mod:`dynamics.runs.diagnose` and :mod:`dynamics.diagnose`; see --help."""

from dynamics.runs.diagnose import main

if __name__ == "__main__":
    main()
