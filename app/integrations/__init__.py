"""Third-party integrations (audit F8): VideoSDK rooms and FCM pushes, each behind timeouts,
retries, a circuit breaker and a bulkhead (`app.kit.resilience`). `fakes` serves both locally."""
