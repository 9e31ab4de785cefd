"""Developer tools: private RabbitMQ nodes (for development, the tests and fault
injection) and the `make run` stack. Test support lives in `tests/support/`."""
