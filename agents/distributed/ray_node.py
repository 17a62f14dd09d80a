"""What Ray gave the process an actor runs in: its GPUs and its node (empty outside Ray)."""

from __future__ import annotations

from typing import Any

__all__ = ["gpu_ids", "node"]


def gpu_ids() -> list[Any]:
    """The GPUs Ray gave this actor (none outside Ray)."""
    try:
        import ray

        return list(ray.get_gpu_ids()) if ray.is_initialized() else []
    except Exception:
        return []


def node() -> dict[str, Any]:
    """The Ray node this process runs on."""
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    except Exception:
        pass
    return {"node_id": None, "node_ip": None}
