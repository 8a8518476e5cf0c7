"""Everything a request handler needs, built once per app by ``create_app`` and passed to routers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from task_api.auth import Authenticator
from task_api.fleet import Fleet
from task_api.metrics import ApiMetrics
from task_api.queue import Queue
from task_api.settings import ApiSettings
from task_api.webhooks import WebhookSender
from taskfleet.urlguard import UrlGuard
from taskfleet.workflows import WorkflowRegistry


@dataclass
class Services:
    settings: ApiSettings
    queue: Queue
    auth: Authenticator
    workflows: WorkflowRegistry
    metrics: ApiMetrics
    url_guard: UrlGuard
    webhooks: WebhookSender
    fleet: Fleet
    storage: Any  # storage.Storage; typed loosely so the API imports without the storage extras
