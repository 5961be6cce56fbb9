"""The image subsystem: keeping provider images, serving them through signed links, fetching."""
