"""The AiFi webhook gateway: authenticate, validate, normalize and publish to RabbitMQ."""
