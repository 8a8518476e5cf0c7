"""Errors a face-swap request can end with; codes reach the consumer and the task unchanged.

``input_too_large`` is ``taskfleet.errors.InputTooLarge``, the same error the consumer raises.
"""

from __future__ import annotations

from taskfleet.errors import InvalidInput, TaskfleetError


class NoSourceFace(InvalidInput):
    code = "no_source_face"


class NoTargetFace(InvalidInput):
    code = "no_target_face"


class UnsupportedMedia(InvalidInput):
    """Neither an image nor a video (text, an archive, audio only)."""

    code = "unsupported_media"


class InvalidMedia(InvalidInput):
    """Looks like an image or video but cannot be decoded (truncated, corrupt)."""

    code = "invalid_media"


class VideoTooLong(InvalidInput):
    code = "video_too_long"


class ImageTooLarge(InvalidInput):
    code = "image_too_large"


class ModelNotInstalled(InvalidInput):
    """The request asks for a model this server does not have (another server may)."""

    code = "model_not_installed"


class MediaToolError(TaskfleetError):
    """ffmpeg failed on input it had accepted: a bug or a resource problem, worth another attempt."""

    code, status, retryable = "media_tool_failed", 500, True


class JobCancelled(TaskfleetError):
    code, status = "cancelled", 499
