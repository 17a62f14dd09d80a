"""Running the server: the model names of a run, and uvicorn over :func:`~agents.serving.app.create_app`."""

from __future__ import annotations

from pathlib import Path

from agents.generation import MARAGenerator
from agents.serving.app import create_app
from agents.serving.limits import RequestLimits
from agents.serving.service import CompletionService

__all__ = ["model_names", "serve"]


def model_names(generator: MARAGenerator, run: Path | None, agent: str | None) -> tuple[str, str]:
    """The aligned model's name (the run folder's name, else the agent file's stem) and the base LLM's (its id).

    :param generator: its first replica names the LLM.
    :param run: the training run, if the agent came from one.
    :param agent: the agent file given instead of a run.
    """
    base = generator.session.replicas[0].name
    aligned = Path(run).name if run is not None else Path(agent).stem if agent else "mara"
    if aligned == base:
        aligned = f"{aligned}-mara"
    return aligned, base


def serve(
    generator: MARAGenerator,
    *,
    aligned_name: str,
    base_name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_batch: int = 16,
    queue_size: int = 64,
    max_tokens: int = 512,
    log_level: str = "info",
    limits: RequestLimits | None = None,
) -> None:
    """Serve ``generator`` over HTTP until interrupted (uvicorn; see :mod:`agents.serving`).

    :param limits: body size and time per request (:class:`~agents.serving.limits.RequestLimits`).
    """
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "mara serve needs FastAPI and uvicorn: pip install 'mara-rl[serve]' (fastapi, uvicorn)."
        ) from exc
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}.")
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: give a non-empty key, or none to serve without authentication.")
    service = CompletionService(
        generator,
        aligned_name=aligned_name,
        base_name=base_name,
        max_tokens=max_tokens,
        max_batch=max_batch,
        queue_size=queue_size,
    )
    app = create_app(service, api_key=api_key, limits=limits)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        service.close()
