"""Names, labels and annotations of the Kubernetes objects of one sandbox.

A sandbox is three objects sharing one name: a Pod, its workspace
PersistentVolumeClaim and (for ``network: "none"``) a NetworkPolicy. The
name is DNS-1123 (a readable slug of the sandbox id plus a hash of the scope
and the id, so two services sharing a namespace never collide) and is the
sandbox's ``provider_object_id``.

Every object carries our selector labels (``sandbox-control.io/managed``,
``.../scope``, ``.../sandbox``) so ``list`` is one label-selected request per
kind. The caller's labels are copied as Kubernetes labels, verbatim when the
pair is a valid Kubernetes label and hashed under our prefix otherwise (keys
with several ``/``, values past 63 characters...), so any label can be
selected server-side; the exact labels and the sandbox id live in
annotations, which hold any text, and are checked again after selection.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

#: Prefix of our labels and annotations. Callers cannot use it: the service
#: reserves every label key starting with ``sandbox-control.``.
PREFIX = "sandbox-control.io/"
MANAGED_LABEL = PREFIX + "managed"
SCOPE_LABEL = PREFIX + "scope"
#: The object name, as a label: the NetworkPolicy's pod selector and kubectl's ``-l``.
SANDBOX_LABEL = PREFIX + "sandbox"
SANDBOX_ID_ANNOTATION = PREFIX + "sandbox-id"
LABELS_ANNOTATION = PREFIX + "labels"
RESOURCES_ANNOTATION = PREFIX + "resources"
IMAGE_ANNOTATION = PREFIX + "image"
#: A random value per ``create`` call: a 409 on a retried create is our own
#: first attempt when the existing object carries the same token.
CREATE_TOKEN_ANNOTATION = PREFIX + "create-token"
#: On the PVC: the pod to recreate on ``start`` (the pod is deleted on ``stop``).
POD_TEMPLATE_ANNOTATION = PREFIX + "pod-template"
#: Prefix of hashed label keys for caller labels Kubernetes cannot hold verbatim.
HASHED_KEY_PREFIX = PREFIX + "l-"

_NAME_PREFIX = "sc-"
_SLUG_LENGTH = 40
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def object_name(scope: str, sandbox_id: str) -> str:
    """The DNS-1123 name of the sandbox's pod, PVC and policy (at most 54 characters)."""
    slug = re.sub(r"[^a-z0-9]+", "-", sandbox_id.lower()).strip("-")[:_SLUG_LENGTH].strip("-")
    suffix = _digest(scope, sandbox_id)[:10]
    return f"{_NAME_PREFIX}{slug}-{suffix}" if slug else f"{_NAME_PREFIX}{suffix}"


def is_object_name(ref: str) -> bool:
    """Whether ``ref`` could name one of our objects (anything else cannot exist)."""
    return ref.startswith(_NAME_PREFIX) and bool(_DNS_LABEL.match(ref))


def is_label_key(key: str) -> bool:
    """A valid Kubernetes label key: ``[prefix/]name``, prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(_LABEL_NAME.match(name))


def is_label_value(value: str) -> bool:
    """A valid Kubernetes label value (empty included)."""
    return bool(_LABEL_VALUE.match(value))


def label_value(text: str) -> str:
    """``text`` when it is a valid label value, else a stable hash of it."""
    return text if is_label_value(text) else "h" + _digest(text)[:40]


def kube_label(key: str, value: str) -> tuple[str, str]:
    """The Kubernetes label standing for the caller's label ``key=value``."""
    if is_label_key(key) and is_label_value(value) and not key.startswith(PREFIX):
        return key, value
    return HASHED_KEY_PREFIX + _digest(key)[:24], _digest(value)[:40]


def selector_labels(scope: str) -> dict[str, str]:
    """The labels every object of this provider instance carries."""
    return {MANAGED_LABEL: "true", SCOPE_LABEL: label_value(scope)}


def object_labels(scope: str, name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """All labels of one sandbox object: the caller's (mapped) and ours."""
    mapped = dict(kube_label(key, value) for key, value in labels.items())
    return {**mapped, **selector_labels(scope), SANDBOX_LABEL: name}


def object_annotations(sandbox_id: str, labels: Mapping[str, str]) -> dict[str, str]:
    """What labels cannot hold: the sandbox id and the caller's exact labels."""
    return {
        SANDBOX_ID_ANNOTATION: sandbox_id,
        LABELS_ANNOTATION: json.dumps(dict(labels), separators=(",", ":"), sort_keys=True),
    }


def label_selector(scope: str, wanted: Mapping[str, str] | None = None) -> str:
    """The ``labelSelector`` query of ``list``: ours plus the wanted labels, mapped."""
    pairs = {**dict(kube_label(key, value) for key, value in (wanted or {}).items()), **selector_labels(scope)}
    return ",".join(f"{key}={value}" for key, value in sorted(pairs.items()))


def caller_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    """The caller's exact labels of an object, from its annotation."""
    raw = (obj.get("metadata") or {}).get("annotations", {}).get(LABELS_ANNOTATION)
    try:
        labels = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def owned_by(obj: Mapping[str, Any], scope: str) -> bool:
    """Whether ``obj`` is one of this provider instance's objects."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector_labels(scope).items())


def matches(obj: Mapping[str, Any], wanted: Mapping[str, str] | None) -> bool:
    """Whether the object's exact caller labels include ``wanted`` (hash collisions excluded)."""
    return (wanted or {}).items() <= caller_labels(obj).items()
