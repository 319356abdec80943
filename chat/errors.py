"""The errors a user can cause, for front ends (CLI, app) that turn them into one-line messages."""
from chat.generate import GenerationError
from chat.models import ModelLoadError
from features.catalog import FeatureNotFound

# ValueError covers SteeringError, PromptError, DictionaryError and bad GenerationSettings.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FeatureNotFound, ModelLoadError, GenerationError)
