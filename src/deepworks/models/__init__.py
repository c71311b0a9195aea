"""Models by name: ``create_model("cnn", input_shape=(1, 28, 28), num_classes=10)``."""

from deepworks.models import cnn, gan, rnn, simple, transformer, zoo  # noqa: F401  (registration)
from deepworks.models.init import INITIALIZERS, apply_init
from deepworks.models.layers import ACTIVATIONS, make_activation
from deepworks.models.registry import MODELS, create_model, list_models

__all__ = ["MODELS", "ACTIVATIONS", "INITIALIZERS", "create_model", "list_models", "make_activation", "apply_init"]

from deepworks.config import bind_choice, bind_component  # noqa: E402

bind_component(("model",), MODELS)
bind_choice(("model", "init"), INITIALIZERS)
