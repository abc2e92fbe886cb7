"""File bytes behind the ``Blobs`` protocol: local disk by default."""
