"""
Export and import the actor in the MARA authors' checkpoint layout.

The authors release their alignment agent (the actor) as a plain float32 state dict::

    ln.weight             [H]          input LayerNorm
    ln.bias               [H]
    linear1.weight        [1024, H]
    linear1.bias          [1024]
    linear2.weight        [256, 1024]
    linear2.bias          [256]
    output_linear.weight  [2, 256]     softmax over the outputs; index 1 = accept, 0 = reject
    output_linear.bias    [2]

``H`` is the upstream LLM's hidden size (2048 for Llama-3.2-1B, 3072 for 3B, 4096 for 8B and Mistral-7B).
A :class:`~agents.DiscreteSAC` actor built with ``input_layer_norm=True``, a ReLU MLP with two hidden
layers and a flattened vector observation has exactly these tensors; their action index is the
output index, so action 1 is "accept" on both sides.

Files are read with ``torch.load(..., weights_only=True)`` (:func:`load_weights`): a checkpoint from
the internet can carry tensors only, never code.
"""

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import torch as th
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from agents.sac_discrete.policies import DiscreteActor
from agents.sac_discrete.sac_discrete import DiscreteSAC

#: File suffixes read as an actor in the authors' state-dict layout.
AUTHORS_SUFFIXES = (".pt", ".pth", ".bin")

#: Authors' module names, in the order of the corresponding modules of our actor
AUTHORS_MODULES = ("ln", "linear1", "linear2", "output_linear")


class UnsafeFileError(ValueError, pickle.UnpicklingError):
    """A file holds pickled objects other than tensors and plain data: loading them could run code."""


def weights_error(source: str, error: BaseException, what: str = "it") -> ValueError:
    """The error to raise when ``torch.load(weights_only=True)`` of ``source`` failed with ``error``.

    :param source: the file, as shown to the user.
    :param error: what ``torch.load`` raised.
    :param what: the part of ``source`` that was being read (``"its weights"`` for an entry of a zip).
    :return: an :class:`UnsafeFileError` for a refused object, else a ``ValueError`` saying the file is damaged.
    """
    text = str(error)
    if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        held = f"a reference to {found.group(1)}" if found else "objects other than tensors"
        hold = "holds" if what == "it" else "hold"
        return UnsafeFileError(
            f"refusing to load {source}: {what} {hold} {held}, not only tensors and plain data, and loading it could "
            "run code. Use only agent files from sources you trust."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if what == "it":
        return ValueError(f"{source} is damaged or not a PyTorch file ({first}).")
    return ValueError(f"{source} is damaged: {what} cannot be read ({first}).")


def load_weights(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file and the problem.

    :raises FileNotFoundError: no such file.
    :raises UnsafeFileError: the file holds objects other than tensors and plain data.
    :raises ValueError: the file is damaged or not a PyTorch file.
    """
    try:
        return th.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise weights_error(os.fspath(path), error) from error


def _authors_modules(actor: DiscreteActor) -> dict[str, nn.Module]:
    """
    Map each authors' module name to the module of ``actor`` that holds the same tensors.

    :param actor: The actor to map
    :return: ``{"ln": LayerNorm, "linear1": Linear, "linear2": Linear, "output_linear": Linear}``
    """
    if getattr(actor, "reference", None) is not None:
        raise ValueError(
            "The authors' layout has no reference anchor: this actor's logits add log p_ref(a|k) read from "
            "MARA-v1's observation (observation='hidden+ref'), which the authors' actors never see. Train the "
            "model on MARA-v0 (observation='hidden', policy_kwargs reference_logits=None) to use this layout."
        )
    layers = [module for module in actor.latent_pi if not isinstance(module, nn.ReLU)]
    activations = [module for module in actor.latent_pi if not isinstance(module, nn.LayerNorm | nn.Linear)]
    shape_ok = (
        len(layers) == 3
        and isinstance(layers[0], nn.LayerNorm)
        and all(isinstance(layer, nn.Linear) for layer in layers[1:])
        and all(isinstance(activation, nn.ReLU) for activation in activations)
        and isinstance(actor.features_extractor, FlattenExtractor)
    )
    if not shape_ok:
        raise ValueError(
            "The authors' layout needs an actor made of an input LayerNorm and a ReLU MLP with two hidden "
            f"layers on flat vector observations; this actor is {actor.latent_pi} on "
            f"{type(actor.features_extractor).__name__}. Build the model with "
            "policy_kwargs=dict(net_arch=[1024, 256], input_layer_norm=True) (see agents.mara_preset)."
        )
    return dict(zip(AUTHORS_MODULES, [*layers, actor.action_logits], strict=True))


def _actor_of(model: DiscreteSAC | DiscreteActor) -> DiscreteActor:
    """Accept a model or its actor."""
    if isinstance(model, DiscreteSAC):
        return model.actor
    if isinstance(model, DiscreteActor):
        return model
    raise TypeError(f"Expected a DiscreteSAC model or its DiscreteActor, got {type(model).__name__}.")


def export_authors_actor(
    model: DiscreteSAC | DiscreteActor, path: str | os.PathLike | None = None
) -> dict[str, th.Tensor]:
    """
    Convert the actor to the authors' plain state dict (float32, CPU) and optionally save it.

    :param model: A :class:`~agents.DiscreteSAC` model (or its actor) in the authors' network shape
    :param path: If given, write the state dict there with ``torch.save``
    :return: The state dict, keyed ``ln.weight`` ... ``output_linear.bias``
    """
    modules = _authors_modules(_actor_of(model))
    state_dict = {
        f"{name}.{key}": tensor.detach().to("cpu", th.float32).clone()
        for name, module in modules.items()
        for key, tensor in module.state_dict().items()
    }
    if path is not None:
        th.save(state_dict, path)
    return state_dict


def import_authors_actor(
    model: DiscreteSAC | DiscreteActor, source: str | os.PathLike | Mapping[str, th.Tensor]
) -> None:
    """
    Load an actor saved in the authors' layout into ``model``'s actor (critics are left untouched).

    Every key and shape is checked before anything is copied: a mismatching file changes nothing.

    :param model: A :class:`~agents.DiscreteSAC` model (or its actor) in the authors' network shape,
        with the observation size ``H`` of the checkpoint
    :param source: Path of a checkpoint (loaded with ``weights_only=True``) or an already loaded state dict
    """
    if isinstance(source, Mapping):
        state_dict = dict(source)
        origin = "the given state dict"
    else:
        loaded = load_weights(source)
        origin = f"'{os.fspath(source)}'"
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{origin} holds a {type(loaded).__name__}, not a state dict of tensors.")
        state_dict = dict(loaded)

    modules = _authors_modules(_actor_of(model))
    expected = {
        f"{name}.{key}": tensor for name, module in modules.items() for key, tensor in module.state_dict().items()
    }
    problems = []
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for key in [key for key in expected if key in state_dict]:  # layout order
        value = state_dict[key]
        if not isinstance(value, th.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != expected[key].shape:
            problems.append(f"{key} has shape {list(value.shape)}, the actor expects {list(expected[key].shape)}")
    if problems:
        hidden = expected["ln.weight"].shape[0]
        file_ln = state_dict.get("ln.weight")
        if isinstance(file_ln, th.Tensor) and file_ln.ndim == 1 and hidden > file_ln.shape[0]:
            problems.insert(
                0,
                f"the checkpoint observes {file_ln.shape[0]} values but this model {hidden}; if it is a model on "
                "MARA-v1's observation (observation='hidden+ref': the hidden state followed by the reference's "
                "features), it cannot take an authors' actor, which reads hidden states only: build it on MARA-v0 "
                "(observation='hidden')",
            )
        elif isinstance(file_ln, th.Tensor) and file_ln.ndim == 1 and file_ln.shape[0] != hidden:
            problems.insert(
                0,
                f"the checkpoint is for hidden size H={file_ln.shape[0]} but the model observes H={hidden} "
                "(build the model on the environment of the same LLM)",
            )
        raise ValueError(
            f"{origin} does not match the authors' actor layout for this model "
            f"(observation size H={hidden}): "
            + "; ".join(problems)
            + ". Expected keys: "
            + ", ".join(f"{key} {list(tensor.shape)}" for key, tensor in expected.items())
            + "."
        )

    with th.no_grad():
        for key, target in expected.items():
            target.copy_(state_dict[key])
