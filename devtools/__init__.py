"""Developer tooling: local RabbitMQ nodes for development, tests and fault injection."""
