"""Object storage for inputs and results: one interface, three backends (local, S3/R2, GCS).

    from storage import open_storage
    st = open_storage("s3://bucket/prefix?endpoint_url=https://<acct>.r2.cloudflarestorage.com")
    obj = await st.put_file(st.output_key("face_swap", task_id, "out.mp4"), path)
"""

from storage.base import ObjectInfo, Storage, StoredObject
from storage.config import open_storage
from storage.errors import StorageError

__all__ = ["ObjectInfo", "Storage", "StorageError", "StoredObject", "open_storage"]
