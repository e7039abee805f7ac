"""Images on the Engine: pulls (when ``SANDBOX_DOCKER_PULL`` allows) and repo images made by commit."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from app.errors import BadRequest, ProviderError, ProviderUnavailable
from app.providers.docker.engine import EngineClient, ImageMissing
from app.providers.docker.spec import split_image_reference

log = logging.getLogger(__name__)

#: Label on images made by ``commit_container``.
REPO_IMAGE_LABEL = "sandbox-control.repo-image"
#: Seconds a pull (or a commit) may take.
PULL_TIMEOUT = 900.0


async def pull_image(engine: EngineClient, image: str) -> None:
    repo, tag = split_image_reference(image)
    params = {"fromImage": repo, "tag": tag}
    log.info("docker provider: pulling %s", image)
    try:
        async with (
            asyncio.timeout(PULL_TIMEOUT),
            engine.request("POST", "images/create", params=params) as response,
        ):
            # Progress is a JSON line stream; a failure arrives as {"error": ...} with status 200.
            async for line in response.content:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("error"):
                    raise ProviderError(f"pulling image {image!r} failed: {event['error']}", image=image)
    except (BadRequest, LookupError) as exc:
        raise ProviderError(f"pulling image {image!r} failed: {exc}", image=image) from exc
    except ProviderUnavailable as exc:
        raise ProviderError(f"pulling image {image!r} failed: {exc.message}", image=image) from exc
    except TimeoutError as exc:
        raise ProviderError(f"pulling image {image!r} took over {PULL_TIMEOUT:.0f} s", image=image) from exc


async def commit_container(engine: EngineClient, ref: str, info: dict[str, Any], name: str) -> None:
    """``docker commit`` of container ``ref`` (inspected as ``info``) with its base image's configuration.

    The container's env holds the sandbox's secrets (clone token, user env)
    and its labels our bookkeeping (ids, TTL): neither may live on in the image.
    The Engine fills every env name and label the commit's config leaves out
    from the container's, so each of those is named: env names without ``=``
    (the Engine's "unset": no process sees them) and labels with empty values
    (a commit cannot drop a label).
    """
    container = info.get("Config") or {}
    # The image id the container runs, not its tag: the tag may name a newer build by now.
    base = info.get("Image") or container.get("Image")
    image_info: dict[str, Any] = await engine.call("GET", f"images/{base}/json")
    base_config = image_info.get("Config") or {}
    base_env: list[str] = list(base_config.get("Env") or [])
    base_names = {entry.partition("=")[0] for entry in base_env}
    unset = sorted({entry.partition("=")[0] for entry in container.get("Env") or []} - base_names)
    base_labels: dict[str, str] = base_config.get("Labels") or {}
    blanked = {key: "" for key in container.get("Labels") or {} if key not in base_labels}
    repo, tag = split_image_reference(name)
    config = {
        "Env": base_env + unset,
        "Cmd": base_config.get("Cmd"),
        "Entrypoint": base_config.get("Entrypoint"),
        "WorkingDir": base_config.get("WorkingDir") or "",
        "User": base_config.get("User") or "",
        "Labels": {**blanked, **base_labels, REPO_IMAGE_LABEL: name},
    }
    await engine.call(
        "POST",
        "commit",
        params={"container": ref, "repo": repo, "tag": tag, "pause": "true"},
        body=config,
        ref=ref,
        timeout=PULL_TIMEOUT,
    )


async def remove_image(engine: EngineClient, image: str) -> bool:
    try:
        await engine.call("DELETE", f"images/{image}", params={"force": "1"})
    except ImageMissing:
        return False
    return True
