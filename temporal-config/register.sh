#!/usr/bin/env bash
# Register Quanto's namespace and search attributes on a Temporal server. Idempotent: safe to run
# on every `docker compose up` and against a server that already has everything.
#
# Environment (all optional):
#   TEMPORAL_ADDRESS               host:port of the frontend            (default 127.0.0.1:7233)
#   TEMPORAL_NAMESPACE             namespace to create if missing       (default default)
#   TEMPORAL_NAMESPACE_RETENTION   retention of closed workflows        (default 168h = 7 days)
#   REGISTER_WAIT_SECONDS          how long to wait for the server and  (default 180)
#                                  for a new namespace to be usable
#   QUANTO_SEARCH_ATTRIBUTES_FILE  NAME=TYPE lines                      (default search-attributes.env
#                                                                        beside this script)
#   TEMPORAL_BIN                   the Temporal CLI                     (default temporal)
# TLS / API-key settings are read by the Temporal CLI itself (TEMPORAL_TLS_*, TEMPORAL_API_KEY).
set -euo pipefail

: "${TEMPORAL_ADDRESS:=127.0.0.1:7233}"
: "${TEMPORAL_NAMESPACE:=default}"
: "${TEMPORAL_NAMESPACE_RETENTION:=168h}"
: "${REGISTER_WAIT_SECONDS:=180}"
: "${TEMPORAL_BIN:=temporal}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${QUANTO_SEARCH_ATTRIBUTES_FILE:=${SCRIPT_DIR}/search-attributes.env}"

log() {
    printf '[register] %s\n' "$*" >&2
}

die() {
    log "ERROR: $*"
    exit 1
}

tcli() {
    "${TEMPORAL_BIN}" "$@" --address "${TEMPORAL_ADDRESS}"
}

deadline=$((SECONDS + REGISTER_WAIT_SECONDS))

time_left() {
    ((SECONDS < deadline))
}

# Read NAME=TYPE pairs; blank lines and '#' comments are skipped.
read_search_attributes() {
    local line name type
    [[ -r ${QUANTO_SEARCH_ATTRIBUTES_FILE} ]] || die "cannot read ${QUANTO_SEARCH_ATTRIBUTES_FILE}"
    while IFS= read -r line || [[ -n ${line} ]]; do
        line="${line%%#*}"
        line="${line//[[:space:]]/}"
        [[ -z ${line} ]] && continue
        [[ ${line} == *=* ]] || die "${QUANTO_SEARCH_ATTRIBUTES_FILE}: expected NAME=TYPE, got '${line}'"
        name="${line%%=*}"
        type="${line#*=}"
        [[ ${name} =~ ^[A-Za-z][A-Za-z0-9_]*$ ]] || die "${QUANTO_SEARCH_ATTRIBUTES_FILE}: bad name '${name}'"
        case ${type} in
        Keyword | Text | Int | Double | Bool | Datetime | KeywordList) ;;
        *) die "${QUANTO_SEARCH_ATTRIBUTES_FILE}: ${name}: unknown type '${type}'" ;;
        esac
        SA_NAMES+=("${name}")
        SA_TYPES+=("${type}")
    done <"${QUANTO_SEARCH_ATTRIBUTES_FILE}"
    ((${#SA_NAMES[@]} > 0)) || die "${QUANTO_SEARCH_ATTRIBUTES_FILE}: no search attributes"
}

wait_for_server() {
    local out
    log "waiting for Temporal at ${TEMPORAL_ADDRESS} (up to ${REGISTER_WAIT_SECONDS}s)"
    while true; do
        if out="$(tcli operator cluster health 2>&1)" && grep -q SERVING <<<"${out}"; then
            log "server is serving"
            return 0
        fi
        time_left || die "Temporal at ${TEMPORAL_ADDRESS} not healthy after ${REGISTER_WAIT_SECONDS}s: ${out}"
        sleep 2
    done
}

namespace_exists() {
    tcli operator namespace describe --namespace "${TEMPORAL_NAMESPACE}" >/dev/null 2>&1
}

ensure_namespace() {
    if namespace_exists; then
        log "namespace ${TEMPORAL_NAMESPACE} exists"
        return 0
    fi
    log "creating namespace ${TEMPORAL_NAMESPACE} (retention ${TEMPORAL_NAMESPACE_RETENTION})"
    if ! tcli operator namespace create --namespace "${TEMPORAL_NAMESPACE}" \
        --retention "${TEMPORAL_NAMESPACE_RETENTION}" --description "Quanto"; then
        # Another process may have created it in the meantime.
        namespace_exists || die "could not create namespace ${TEMPORAL_NAMESPACE}"
        log "namespace ${TEMPORAL_NAMESPACE} was created concurrently"
    fi
}

# Prints the current search attribute list; waits while a new namespace is not yet usable.
list_search_attributes() {
    local out
    while true; do
        if out="$(tcli operator search-attribute list --namespace "${TEMPORAL_NAMESPACE}" 2>&1)"; then
            printf '%s\n' "${out}"
            return 0
        fi
        time_left || die "cannot list search attributes of ${TEMPORAL_NAMESPACE}: ${out}"
        log "namespace ${TEMPORAL_NAMESPACE} not ready yet; retrying"
        sleep 2
    done
}

has_attribute() { # has_attribute LISTING NAME
    grep -Eq "(^|[^A-Za-z0-9_])$2([^A-Za-z0-9_]|\$)" <<<"$1"
}

ensure_search_attributes() {
    local i name type listing line
    for i in "${!SA_NAMES[@]}"; do
        name="${SA_NAMES[$i]}"
        type="${SA_TYPES[$i]}"
        while true; do
            listing="$(list_search_attributes)"
            if has_attribute "${listing}" "${name}"; then
                line="$(grep -E "(^|[^A-Za-z0-9_])${name}([^A-Za-z0-9_]|\$)" <<<"${listing}" | head -n 1)"
                if grep -qiw -- "${type}" <<<"${line}"; then
                    log "search attribute ${name} (${type}) exists"
                else
                    log "WARNING: search attribute ${name} exists with another type: ${line}"
                fi
                break
            fi
            log "creating search attribute ${name} (${type})"
            if tcli operator search-attribute create --namespace "${TEMPORAL_NAMESPACE}" \
                --name "${name}" --type "${type}"; then
                break
            fi
            time_left || die "could not create search attribute ${name} (${type})"
            sleep 2
        done
    done
}

declare -a SA_NAMES=() SA_TYPES=()
read_search_attributes
command -v "${TEMPORAL_BIN}" >/dev/null 2>&1 || die "Temporal CLI '${TEMPORAL_BIN}' not found"
wait_for_server
ensure_namespace
ensure_search_attributes
log "done: namespace ${TEMPORAL_NAMESPACE}, search attributes ${SA_NAMES[*]}"
