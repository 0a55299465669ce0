"""The ARQ worker: job registry, cron schedule and the in-process runner used by `serve`."""
