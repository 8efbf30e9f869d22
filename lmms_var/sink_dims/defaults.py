"""The finder's and the validator's default thresholds and prompt count, in a module without torch, so that the
`lmms-var` parser can show them without waiting for torch (`lmms-var --help`)."""

# `calibration`: how many built-in or data prompts to run.
DEFAULT_NUM_SAMPLES = 8
# `finder.find_sink_dims` (its module docstring says what each threshold means).
DEFAULT_MIN_CONSISTENCY = 0.5
DEFAULT_MAX_TOKEN_FRACTION = 0.25
DEFAULT_QUIET_FRACTION = 0.25
# `validator.validate_sink_dims` (likewise).
DEFAULT_ATTENTION_FACTOR = 2.0
DEFAULT_MIN_DISTANCE = 4
