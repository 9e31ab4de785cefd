#!/bin/bash
# The official rabbitmq image's contract on Debian's RabbitMQ 3.10: RABBITMQ_DEFAULT_USER,
# _PASS and _VHOST, RABBITMQ_ERLANG_COOKIE, /etc/rabbitmq/conf.d/*.conf, data in
# /var/lib/rabbitmq, the server run as the rabbitmq user.
set -euo pipefail

DATA=/var/lib/rabbitmq
CONF_D=/etc/rabbitmq/conf.d
# Where the node reads its configuration: conf.d as given, less what 3.10 cannot read.
EFFECTIVE=/etc/rabbitmq/effective.d
DEFINITIONS=/etc/rabbitmq/definitions.json
# RabbitMQ 4 keys a 3.10 node does not know and would refuse to boot on.
NEWER_KEYS='^[[:space:]]*(default_queue_type|quorum_queue\.initial_cluster_size)[[:space:]]*='

copy_conf_d() {
    rm -rf "$EFFECTIVE" && mkdir -p "$EFFECTIVE"
    local file
    for file in "$CONF_D"/*.conf; do
        [ -e "$file" ] || continue
        if grep -Eq "$NEWER_KEYS" "$file"; then
            echo "stand-in (RabbitMQ 3.10): left out of the node's configuration" \
                "(default_queue_type goes to the default virtual host) in $file:" \
                "$(grep -E "$NEWER_KEYS" "$file" | tr '\n' ' ')" >&2
        fi
        grep -Ev "$NEWER_KEYS" "$file" > "$EFFECTIVE/$(basename "$file")" || true
    done
}

# RabbitMQ 4's node-wide `default_queue_type`, which 3.10 knows per virtual host only: the
# default virtual host is made by a definitions file instead, with that type. A node that
# imports definitions makes no default user or virtual host itself: the file has both.
default_queue_type() {
    sed -nE 's/^[[:space:]]*default_queue_type[[:space:]]*=[[:space:]]*([a-z]+).*/\1/p' \
        "$CONF_D"/*.conf 2>/dev/null | tail -n 1 || true  # no conf.d file: no type
}

write_definitions() {
    QUEUE_TYPE="$1" python3 - > "$DEFINITIONS" <<'PYTHON'
import json, os
user = os.environ.get("RABBITMQ_DEFAULT_USER", "guest")
vhost = os.environ.get("RABBITMQ_DEFAULT_VHOST", "/")
queue_type = os.environ["QUEUE_TYPE"]
print(json.dumps({
    "users": [{"name": user, "password": os.environ.get("RABBITMQ_DEFAULT_PASS", "guest"),
               "tags": ["administrator"]}],
    "vhosts": [{"name": vhost, "default_queue_type": queue_type,
                "metadata": {"default_queue_type": queue_type}}],
    "permissions": [{"user": user, "vhost": vhost, "configure": ".*", "write": ".*",
                     "read": ".*"}],
}))
PYTHON
    chmod 640 "$DEFINITIONS"
    chown rabbitmq:rabbitmq "$DEFINITIONS"
    echo "load_definitions = $DEFINITIONS" >> "$EFFECTIVE/90-environment.conf"
}

write_environment() {
    local conf="$EFFECTIVE/90-environment.conf"
    : > "$conf"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER" >> "$conf"
    fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        echo "default_pass = $RABBITMQ_DEFAULT_PASS" >> "$conf"
    fi
    if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
        echo "default_vhost = $RABBITMQ_DEFAULT_VHOST" >> "$conf"
    fi
    local queue_type
    queue_type=$(default_queue_type)
    if [ -n "$queue_type" ]; then
        write_definitions "$queue_type"
    fi
    chmod 640 "$conf"
    chown -R rabbitmq:rabbitmq "$EFFECTIVE"
}

write_cookie() {
    local cookie="$DATA/.erlang.cookie"
    if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
        printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie"
    elif [ ! -s "$cookie" ]; then
        head -c 15 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$cookie"
    fi
    chmod 600 "$cookie"
}

prepare() {
    mkdir -p "$DATA"
    write_cookie
    find "$DATA" \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    copy_conf_d
    write_environment
    export RABBITMQ_CONFIG_FILES="$EFFECTIVE"
}

main() {
    if [ "${1:-}" = "" ] || [ "${1:0:1}" = '-' ]; then
        set -- rabbitmq-server "$@"
    fi
    if [ "$1" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
        prepare
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"
    fi
    exec "$@"
}

# Sourced (by the tests), it only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
