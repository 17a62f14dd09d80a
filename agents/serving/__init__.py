"""``mara serve``: the aligned model behind an OpenAI-compatible HTTP API, with continuous batching.

- :mod:`agents.serving.protocol`: OpenAI's request, response and error shapes;
- :mod:`agents.serving.batcher`: the decoding thread, where concurrent requests join the running batch;
- :mod:`agents.serving.service`: model names, prompt formatting and limits, requests to answers;
- :mod:`agents.serving.app`: the FastAPI routes;
- :mod:`agents.serving.server`: running it with uvicorn.

FastAPI and uvicorn are the ``serve`` extra (``pip install 'mara-rl[serve]'``); they are imported only when
an application is built. Example::

    >>> from agents import MARAGenerator
    >>> from agents.serving import CompletionService, create_app
    >>> gen = MARAGenerator(agent="runs/mara-default/model.zip")  # doctest: +SKIP
    >>> base = gen.session.replicas[0].name  # doctest: +SKIP
    >>> service = CompletionService(gen, aligned_name="mara-default", base_name=base)  # doctest: +SKIP
    >>> app = create_app(service, api_key=None)  # doctest: +SKIP
"""

from agents.serving.app import create_app
from agents.serving.batcher import BatcherStats, ContinuousBatcher, Job, QueueFull
from agents.serving.protocol import APIError
from agents.serving.server import model_names, serve
from agents.serving.service import CompletionService

__all__ = [
    "APIError",
    "BatcherStats",
    "CompletionService",
    "ContinuousBatcher",
    "Job",
    "QueueFull",
    "create_app",
    "model_names",
    "serve",
]
