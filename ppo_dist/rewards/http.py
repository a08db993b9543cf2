"""The ``http`` source: a reward service over HTTP, with retries and per-attempt timeouts."""

from __future__ import annotations

import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

from .errors import RewardError, _snippet

logger = logging.getLogger(__name__)


class HttpReward:
    """POSTs ``{"prompts": [...], "completions": [...], <columns>}`` as JSON to ``url``; expects ``{"rewards": [...]}``.

    Each attempt waits at most ``timeout`` seconds. Connection errors, timeouts and HTTP 5xx are
    retried ``retries`` times, sleeping ``backoff * 2**k`` before retry k (k = 0, 1, ...); a 4xx or an
    unparseable answer fails at once. Errors name the URL and the HTTP status / body start. The whole
    call is additionally bounded by ``reward.timeout`` (see the module doc).
    """

    def __init__(self, url: str, timeout: float = 10.0, retries: int = 3, backoff: float = 0.5):
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: object) -> list:
        payload = json.dumps(
            {"prompts": list(prompts), "completions": list(completions), **columns}, ensure_ascii=False
        ).encode()
        body = self._post(payload)
        try:
            answer = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RewardError(f"POST {self.url} answered with invalid JSON ({e}): {_snippet(body, 200)}") from None
        if not isinstance(answer, dict) or "rewards" not in answer:
            raise RewardError(f"POST {self.url} answered without a 'rewards' key: {_snippet(body, 200)}")
        return answer["rewards"]

    def _post(self, payload: bytes) -> bytes:
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(
                self.url, data=payload, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code}: {_snippet(e.read().decode(errors='replace'), 200)}"
                if e.code < 500:
                    raise RewardError(f"POST {self.url} failed with {error} (not retried)") from None
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
                error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                logger.warning("POST %s failed (%s); retry %d/%d", self.url, error, attempt + 1, self.retries)
                time.sleep(self.backoff * 2**attempt)
        raise RewardError(f"POST {self.url} failed after {self.retries + 1} attempts, last: {error}")
