"""The errors a user can cause, for front ends (CLI, app) that turn them into one-line messages.
Defined here, apart from the modules that raise them, so that a front end can catch them
without importing transformers."""
from features.errors import FeatureNotFound


class ModelLoadError(RuntimeError):
    """A model reference that cannot be loaded; the message says why, in one line."""


class GenerationError(RuntimeError):
    """Generation failed or stalled; the message says why."""


class Cancelled(Exception):
    """A long measurement (a concept search) was cancelled by its user; nothing was kept."""


# ValueError covers SteeringError, PromptError, DictionaryError and bad GenerationSettings.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FeatureNotFound, ModelLoadError, GenerationError)
